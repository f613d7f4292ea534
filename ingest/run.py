"""The periodic update run: harvest → select → ingest → report, resumable and idempotent.

All state lives in the catalog and every step is keyed by StudyInstanceUID, so a run killed
at any point is finished by the next one: studies whose session is not `stored` are simply
taken again; files already in the store are recognised and not copied twice; a session label
is fixed before its first file is written. A second run with nothing new changes nothing but
its own `runs` row and the patients' harvest cursors.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from criteria.normalise import normalise
from criteria.review import effective_lists

from .catalog import Catalog
from .config import Config
from . import failpoints
from .errors import ConfigError, RtlakeError, SourceUnavailable, TransientError
from .lock import run_lock
from .logsetup import set_run_id
from .naming import base_label, unique_label
from .patients import read_cohort, read_deceased
from .records import RetrievedStudy, SessionPlan, StoredSession, StudyRecord
from .sources import open_source
from .sources.base import Source
from .stores import open_store
from .stores.base import Store

log = logging.getLogger(__name__)

COUNT_KEYS = ("patients", "deceased_skipped", "harvested", "new_studies", "included", "excluded", "review",
              "verification_skipped", "ingested", "files", "failed", "new_failures")


@dataclass
class RunSummary:
    run_id: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNT_KEYS, 0))
    outputs: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    status: str = "done"

    def print(self, console: Console) -> None:
        t = Table(title=f"rtlake update {self.run_id} — {self.status}")
        t.add_column("stage")
        t.add_column("count", justify="right")
        for k in COUNT_KEYS:
            t.add_row(k.replace("_", " "), str(self.counts.get(k, 0)))
        console.print(t)
        for w in self.warnings:
            console.print(f"[yellow]warning:[/yellow] {w}")
        for p in self.outputs:
            console.print(f"wrote {p}")


def _progress(show: bool) -> Progress:
    from .logsetup import bars_wanted, err_console

    # stderr, and only to a terminal: stdout carries the summary, a log file wants no bars
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        disable=not bars_wanted(show), transient=False, console=err_console,
    )


class UpdateRun:
    def __init__(self, cfg: Config, catalog: Catalog, source: Source, store: Store, progress: Progress) -> None:
        self.cfg = cfg
        self.cat = catalog
        self.source = source
        self.store = store
        self.progress = progress
        self.run_id = catalog.start_run(cfg.source.kind, cfg.store.kind)
        set_run_id(self.run_id)  # every log line from here on names this run
        self.summary = RunSummary(self.run_id)
        self.today = dt.date.today()

    # -- helpers ----------------------------------------------------------------
    def fail(self, stage: str, target: str, reason: str, study_uid: str | None = None,
             exc: BaseException | None = None) -> None:
        if self.cat.record_failure(self.run_id, stage, target, reason, study_uid,
                                   type(exc).__name__ if exc else None):
            self.summary.counts["new_failures"] += 1
            log.warning("%s %s: %s", stage, study_uid or target, reason)
        else:  # already on file from an earlier run
            log.debug("%s %s (again): %s", stage, study_uid or target, reason)

    # -- inputs -----------------------------------------------------------------
    def load_patients(self) -> list[str]:
        """Upsert the cohort; returns the hospital IDs to harvest (deceased left out)."""
        cohort = read_cohort(self.cfg.inputs.cohort)
        for p in cohort.problems:
            self.fail("inputs", f"{p.path}:{p.line}", p.message)
        deceased: set[str] = set()
        if self.cfg.inputs.deceased is not None:
            deceased, problems = read_deceased(self.cfg.inputs.deceased)
            for p in problems:
                self.fail("inputs", f"{p.path}:{p.line}", p.message)
        existing = {r[0]: r[1:] for r in self.cat.execute(
            "SELECT hospital_id, nhs_number, subject, deceased FROM patients").fetchall()}
        with self.cat.transaction() as con:
            for hid, pat in cohort.patients.items():
                row = (pat.nhs_number, pat.subject, hid in deceased)
                if hid not in existing:
                    con.execute(
                        "INSERT INTO patients (hospital_id, nhs_number, subject, deceased, first_seen_run) "
                        "VALUES (?, ?, ?, ?, ?)", [hid, *row, self.run_id])
                elif tuple(existing[hid]) != row:
                    con.execute("UPDATE patients SET nhs_number = ?, subject = ?, deceased = ? WHERE hospital_id = ?",
                                [*row, hid])
        alive = [h for h in cohort.patients if h not in deceased]
        self.summary.counts["patients"] = len(cohort.patients)
        self.summary.counts["deceased_skipped"] = len(cohort.patients) - len(alive)
        return alive

    # -- harvest ----------------------------------------------------------------
    def harvest(self, patient_ids: list[str]) -> None:
        refresh = getattr(self.source, "refresh_index", None)
        if refresh is not None:  # the folder source reads new files' headers first, with its own bar
            refresh(self.progress)
        cursors = dict(self.cat.execute("SELECT hospital_id, harvested_until FROM patients").fetchall())
        lists = effective_lists(self.cfg.criteria.lists, self.cat)
        task = self.progress.add_task("harvest", total=len(patient_ids))
        for hid in patient_ids:
            until = cursors.get(hid)
            since = until - dt.timedelta(days=self.cfg.harvest.overlap_days) if until else None
            try:
                studies = list(self.source.query_patient(hid, since))
            except RtlakeError as exc:
                # The cursor is not advanced, so the next run asks again for this patient.
                self.fail("harvest", f"patient-query:{self.source.name}", f"query failed: {exc}", exc=exc)
                self.progress.advance(task)
                continue
            with self.cat.transaction():
                for st in studies:
                    self._upsert_study(hid, st, lists)
                if until != self.today:
                    self.cat.execute("UPDATE patients SET harvested_until = ?, harvested_run = ? WHERE hospital_id = ?",
                                     [self.today, self.run_id, hid])
            self.summary.counts["harvested"] += len(studies)
            failpoints.hit("harvest.patient")
            self.progress.advance(task)
        for target, reason in self.source.failures():
            self.fail("index", target, reason)

    def _decide(self, st: StudyRecord, lists) -> tuple[str, str]:
        if any(st.study_uid.startswith(p) for p in self.cfg.harvest.skip_uid_prefixes):
            return "skip_verification", "RT verification study (UID prefix)"
        return lists.decide(st.description)

    def _upsert_study(self, hid: str, st: StudyRecord, lists) -> None:
        decision, reason = self._decide(st, lists)
        mods = "\\".join(st.modalities)
        row = self.cat.execute(
            "SELECT accession, study_date, description, modalities, n_instances, state FROM studies_seen "
            "WHERE study_uid = ?", [st.study_uid]).fetchone()
        if row is None:
            state = "new" if decision in ("include", "review") else "skipped"
            self.cat.execute(
                "INSERT INTO studies_seen VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [st.study_uid, hid, st.accession, st.study_id, st.study_date, st.description,
                 normalise(st.description), mods, st.n_instances, st.source, decision, reason, state,
                 self.run_id, self.run_id])
            self.summary.counts["new_studies"] += 1
            return
        acc, date, desc, old_mods, n_old, state = row
        grew = st.n_instances is not None and n_old is not None and st.n_instances > n_old
        if (acc, date, desc, old_mods) != (st.accession, st.study_date, st.description, mods) or grew:
            # New images arrived (or the PACS corrected the study): take it again; stored files are kept.
            new_state = "new" if state == "ingested" and grew else state
            self.cat.execute(
                "UPDATE studies_seen SET accession=?, study_date=?, description=?, description_norm=?, modalities=?, "
                "n_instances=?, state=?, updated_run=? WHERE study_uid=?",
                [st.accession, st.study_date, st.description, normalise(st.description), mods, st.n_instances,
                 new_state, self.run_id, st.study_uid])

    # -- select -----------------------------------------------------------------
    def select(self) -> list[tuple[StudyRecord, str]]:
        """Re-decide studies not yet ingested (review decisions may have arrived) and list the work."""
        lists = effective_lists(self.cfg.criteria.lists, self.cat)
        rows = self.cat.query_dicts(
            "SELECT * FROM studies_seen WHERE state IN ('new', 'failed') "
            "AND decision IN ('include', 'review', 'exclude') ORDER BY study_date NULLS FIRST, study_uid")
        todo = []
        with self.cat.transaction():
            for r in rows:
                decision, reason = lists.decide(r["description"])
                if (decision, reason) != (r["decision"], r["decision_reason"]):
                    state = r["state"] if decision != "exclude" else "skipped"
                    self.cat.execute("UPDATE studies_seen SET decision=?, decision_reason=?, state=?, updated_run=? "
                                     "WHERE study_uid=?", [decision, reason, state, self.run_id, r["study_uid"]])
                if decision == "include":
                    todo.append((_record(r), r["hospital_id"]))
        counts = dict(self.cat.execute("SELECT decision, count(*) FROM studies_seen GROUP BY 1").fetchall())
        for k, key in (("include", "included"), ("exclude", "excluded"), ("review", "review"),
                       ("skip_verification", "verification_skipped")):
            self.summary.counts[key] = int(counts.get(k, 0))
        return todo

    # -- ingest -----------------------------------------------------------------
    def plan(self, study: StudyRecord, hid: str) -> SessionPlan:
        """The session this study goes to; fixed in the catalog before any file is written."""
        project = self.cfg.project.name
        row = self.cat.execute("SELECT subject, label FROM sessions WHERE study_uid = ?", [study.study_uid]).fetchone()
        if row is not None:
            return SessionPlan(project, row[0], row[1], study, hid)
        subject = self.cat.execute("SELECT subject FROM patients WHERE hospital_id = ?", [hid]).fetchone()[0]
        taken = {r[0] for r in self.cat.execute(
            "SELECT label FROM sessions WHERE project = ? AND subject = ?", [project, subject]).fetchall()}
        label = unique_label(base_label(study, hid), taken)
        self.cat.execute(
            "INSERT INTO sessions (study_uid, project, subject, label, hospital_id, accession, study_date, modality, "
            "store, state, planned_run) VALUES (?,?,?,?,?,?,?,?,?, 'planned', ?)",
            [study.study_uid, project, subject, label, hid, study.accession, study.study_date,
             study.primary_modality, self.store.name, self.run_id])
        return SessionPlan(project, subject, label, study, hid)

    def _fetch(self, plan: SessionPlan, scratch: Path) -> tuple[SessionPlan, SessionPlan, list[Path],
                                                                RetrievedStudy | None]:
        """Runs in a worker thread: retrieve (one retry for a partial transfer) and pseudonymise.

        Returns the original plan (the catalog's key) and the plan the store gets, which differs
        when pseudonymisation renames subject, label and UIDs.
        """
        original = plan
        if not self.store.needs_files:
            return original, plan, [], None
        dest = scratch / plan.study.study_uid
        got = self.source.retrieve(plan.study, dest)
        if got.partial:
            log.info("study %s: partial transfer (%d of %d); retrying", plan.study.study_uid,
                     len(got.files), got.expected)
            got = self.source.retrieve(plan.study, dest)
        files = got.files
        if self.cfg.pseudo.enabled and files:
            from .pseudo.apply import pseudonymise_for_store

            plan, files = pseudonymise_for_store(self.cfg, plan, files, scratch / (plan.study.study_uid + "-pseudo"))
        return original, plan, files, got

    def ingest(self, todo: list[tuple[StudyRecord, str]]) -> None:
        if not todo:
            return
        scratch = self.cfg.state_dir / "scratch"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True, exist_ok=True)
        task = self.progress.add_task("ingest", total=len(todo))
        plans = []
        with self.cat.transaction():
            for study, hid in todo:
                plans.append(self.plan(study, hid))
        batch = max(1, self.store.batch_size)
        workers = max(1, self.cfg.source.transfer.concurrency)
        with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch") as pool:
            # Fetch ahead in a bounded window; store and record in submission order on this thread,
            # which alone touches the catalog.
            window = workers * 2
            pending: list[tuple[SessionPlan, cf.Future]] = []
            ready: list[tuple[SessionPlan, SessionPlan, list[Path], RetrievedStudy | None]] = []
            it = iter(plans)
            exhausted = False
            while pending or not exhausted:
                while not exhausted and len(pending) < window:
                    p = next(it, None)
                    if p is None:
                        exhausted = True
                        break
                    pending.append((p, pool.submit(self._fetch, p, scratch)))
                if not pending:
                    break
                original, fut = pending.pop(0)
                try:
                    ready.append(fut.result())
                except Exception as exc:  # noqa: BLE001 - every failure is recorded, none aborts the run
                    for path, reason in getattr(exc, "problems", []):  # e.g. PseudoFailed: one row per file
                        self.fail("pseudo", path, reason, original.study.study_uid)
                    self._failed(original, "retrieve", exc)
                    self.progress.advance(task)
                if len(ready) >= batch or (exhausted and not pending and ready):
                    self._store_batch(ready, task)
                    ready = []
            if ready:
                self._store_batch(ready, task)
        shutil.rmtree(scratch, ignore_errors=True)

    def _store_batch(self, items: list[tuple[SessionPlan, SessionPlan, list[Path], RetrievedStudy | None]],
                     task) -> None:
        to_put = []
        for plan, store_plan, files, got in items:
            if self.store.needs_files and not files:
                self._failed(plan, "retrieve", RtlakeError(
                    f"study {plan.study.study_uid}: source {self.source.name} delivered no files"))
                self.progress.advance(task)
                continue
            to_put.append((plan, store_plan, files, got))
        if not to_put:
            return
        try:
            results = self.store.put_studies([(sp, f) for _, sp, f, _ in to_put])
        except Exception as exc:  # noqa: BLE001
            results = [exc] * len(to_put)
        for (plan, _store_plan, files, got), res in zip(to_put, results):
            if isinstance(res, Exception):
                self._failed(plan, "store", res)
            else:
                failpoints.hit("ingest.stored")
                self._stored(plan, res, got)
                failpoints.hit("ingest.recorded")
            self.progress.advance(task)
            for f in files:  # scratch copies only; the folder source hands out its own files
                if self.cfg.state_dir in f.parents:
                    f.unlink(missing_ok=True)

    def _failed(self, plan: SessionPlan, stage: str, exc: BaseException) -> None:
        uid = plan.study.study_uid
        kind = "transient" if isinstance(exc, (TransientError, SourceUnavailable)) else "permanent"
        self.fail(stage, uid, f"{kind}: {exc}", uid, exc)
        self.cat.execute("UPDATE studies_seen SET state = 'failed', updated_run = ? WHERE study_uid = ? "
                         "AND state <> 'failed'", [self.run_id, uid])
        self.summary.counts["failed"] += 1

    def _stored(self, plan: SessionPlan, res: StoredSession, got: RetrievedStudy | None) -> None:
        uid = plan.study.study_uid
        for target, reason in res.problems:
            self.fail("store", target, reason, uid)
        partial = got is not None and got.partial
        with self.cat.transaction() as con:
            # subject/label stay as planned (identifiable) even when the store holds a pseudonymised copy:
            # a later re-ingest must start from the original names, and `location` says where the copy is.
            con.execute("UPDATE sessions SET state='stored', location=?, n_scans=?, n_files=?, stored_run=? "
                        "WHERE study_uid=?", [res.location, len(res.scans), len(res.files), self.run_id, uid])
            for s in res.scans:
                con.execute("INSERT OR REPLACE INTO scans VALUES (?,?,?,?,?,?)",
                            [uid, s.series_uid, s.scan_id, s.modality, s.description, s.n_files])
            new_files = _insert_files(con, uid, res.files)
            if partial:
                con.execute("UPDATE studies_seen SET state='failed', updated_run=? WHERE study_uid=?", [self.run_id, uid])
            else:
                con.execute("UPDATE studies_seen SET state='ingested', updated_run=? WHERE study_uid=? "
                            "AND state <> 'ingested'", [self.run_id, uid])
        if partial:
            self.fail("retrieve", uid, f"partial transfer: received {len(got.files)} of {got.expected} instances; "
                                       "stored what arrived, will retry", uid)
            self.summary.counts["failed"] += 1
        else:
            self.cat.resolve_failures(self.run_id, uid)
            self.summary.counts["ingested"] += 1
        for path, other in new_files[1]:
            self.fail("store", path, f"SOPInstanceUID also stored under study {other}", uid)
        self.summary.counts["files"] += len(new_files[0])


def _insert_files(con, study_uid: str, files) -> tuple[list, list[tuple[str, str]]]:
    """Add the study's new files in one statement; returns (added, clashes with other studies)."""
    import pandas as pd

    if not files:
        return [], []
    # DuckDB reads `df` by name in the statements below.
    df = pd.DataFrame([(f.sop_uid, study_uid, f.series_uid, f.path, f.size) for f in files],  # noqa: F841
                      columns=["sop_uid", "study_uid", "series_uid", "path", "size"])
    clashes = con.execute("SELECT df.path, files.study_uid FROM df JOIN files USING (sop_uid) "
                          "WHERE files.study_uid <> df.study_uid").fetchall()
    added = con.execute("SELECT df.sop_uid FROM df ANTI JOIN files USING (sop_uid)").fetchall()
    con.execute("INSERT INTO files SELECT * FROM df ANTI JOIN files USING (sop_uid)")
    return added, clashes


def _record(r: dict) -> StudyRecord:
    return StudyRecord(
        study_uid=r["study_uid"], patient_id=r["hospital_id"], accession=r["accession"] or "",
        study_date=r["study_date"], description=r["description"] or "",
        modalities=tuple(m for m in (r["modalities"] or "").split("\\") if m),
        n_instances=r["n_instances"], study_id=r["study_id"] or "", source=r["source"] or "",
    )


def check_preconditions(cfg: Config) -> None:
    """Refuse, before touching anything, a run that would fail every study the same way.

    Raises:
        ConfigError: pseudonymisation asked for without its key, or with a store that pulls
            studies itself (XNAT DQR), which would bypass it.
    """
    if cfg.pseudo.enabled:
        if cfg.store.kind == "xnat-dqr":
            raise ConfigError("[pseudo] enabled = true cannot be combined with [store] kind = 'xnat-dqr': "
                              "XNAT pulls those studies itself, so they would reach it unpseudonymised")
        from .pseudo.keys import load_key

        load_key(cfg.pseudo.key_env)


def run_update(cfg: Config, show_progress: bool = True, build_report: bool = True) -> RunSummary:
    """One whole update run under the state-folder lock.

    Raises:
        RunLocked: another run holds the lock.
        RtlakeError: the cohort list cannot be read or the store cannot be opened
            (per-study problems never raise; they are recorded).
    """
    check_preconditions(cfg)
    with run_lock(cfg.state_dir):
        cat = Catalog(cfg.catalog_path)
        try:
            with _progress(show_progress) as progress, open_source(cfg) as source:
                store = open_store(cfg)
                run = UpdateRun(cfg, cat, source, store, progress)
                try:
                    alive = run.load_patients()
                    run.harvest(alive)
                    todo = run.select()
                    run.ingest(todo)
                    if build_report:
                        from reporting.build import build_reports, run_warnings

                        from .atomic import sweep_temp

                        # a run killed while writing the outbox left a temp file the EDW could pick up
                        sweep_temp(Path(cfg.report.outbox))
                        failpoints.hit("report.write")
                        run.summary.outputs = list(build_reports(cfg, cat, run.run_id))
                        # Failure rates out of line with the historic baseline: a pipeline fault, not bad luck.
                        run.summary.warnings = run_warnings(cfg, cat, run.run_id)
                except BaseException:
                    run.summary.status = "failed"
                    cat.finish_run(run.run_id, "failed", run.summary.counts)
                    raise
                finally:
                    store.close()
                cat.finish_run(run.run_id, "done", run.summary.counts)
                return run.summary
        finally:
            cat.close()
