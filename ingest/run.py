"""The periodic update run: check → harvest → select → ingest → report, resumable and idempotent.

All state lives in the catalog and every step is keyed by StudyInstanceUID, so a run killed
at any point is finished by the next one: studies whose session is not `stored` are simply
taken again; files already in the store are recognised and not copied twice; a session label
is fixed before its first file is written. A second run with nothing new changes nothing but
its own `runs` row and the patients' harvest cursors.

Change detection does not follow StudyDate (studies arrive late with old dates): by default each
living patient's studies are listed in full and diffed against the catalog; on Orthanc REST the
change log narrows that to the patients whose studies changed. Every run ends with an outcome
(`done`, `partial`, `failed`, `interrupted`) that the CLI turns into a distinct exit code.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import duckdb
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from criteria.normalise import normalise
from reporting.sanitise import terminal
from criteria.review import effective_lists

from .catalog import Catalog
from .config import Config
from . import failpoints
from .errors import ConfigError, RtlakeError, SourceUnavailable, StoreUnavailable, TransientError
from .atomic import probe_write
from .lock import run_lock
from .logsetup import set_run_id
from .security import loose, private_umask, share_outbox, walk
from .pseudo.redact import looks_like_path, pseudonymous_logs, public_paths
from .naming import base_label, unique_label
from .patients import read_cohort, read_deceased
from .records import RetrievedStudy, SessionPlan, StoredSession, StudyRecord
from .sources import open_source
from .sources.base import ChangeFeed, Source
from .stores import open_store
from .stores.base import Store

log = logging.getLogger(__name__)

#: What each outcome means and the exit code `rtlake update` gives it (README "Exit codes").
OUTCOMES = {
    "done": (0, "every selected study is stored"),
    "partial": (3, "the run finished, but some patient queries, files or studies failed (listed)"),
    "failed": (4, "the source or store could not be used, so the run could not do its job"),
    "interrupted": (130, "stopped by Ctrl-C or SIGTERM; the next run resumes"),
}
EXIT_CONFIG = 2
EXIT_LOCKED = 5
#: Failure stages that make a run `partial`: something real (a patient, a file, a study) was not done.
WORK_STAGES = ("index", "harvest", "retrieve", "store", "pseudo", "relabel")

# This run's counts, then the lake's totals (the summary prints them as two tables).
RUN_KEYS = ("patients", "patients_queried", "deceased_skipped", "harvested", "new_studies", "changed_studies",
            "verification_skipped_new", "placeholder_skipped_new", "ingested", "files", "failed",
            "new_failures", "relabelled")
TOTAL_KEYS = ("included", "excluded", "review", "verification_skipped", "placeholder_skipped",
              "lake_subjects", "lake_sessions", "lake_files", "open_failures")
COUNT_KEYS = RUN_KEYS + TOTAL_KEYS
_SKIP_KEYS = {"skip_verification": "verification_skipped", "skip_placeholder": "placeholder_skipped"}


class RunFailed(RtlakeError):
    """The run cannot do its job (source or store unusable): stop now, change nothing downstream."""


@dataclass
class RunSummary:
    run_id: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNT_KEYS, 0))
    outputs: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    status: str = "done"
    message: str = ""
    harvest_mode: str = ""
    #: (stage, reason with identifiers folded, count) of the failures this run met and left open
    failure_groups: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return OUTCOMES.get(self.status, (1, ""))[0]

    def print(self, console: Console) -> None:
        head = f"rtlake update {self.run_id}: {self.status.upper()}"
        if self.message:
            head += f" — {self.message}"
        console.print(escape(head), style={"done": "green", "partial": "yellow"}.get(self.status, "red"),
                      soft_wrap=True)
        this = Table(title=f"this run{' (' + self.harvest_mode + ')' if self.harvest_mode else ''}")
        this.add_column("step")
        this.add_column("count", justify="right")
        for k in RUN_KEYS:
            this.add_row(k.replace("_", " "), str(self.counts.get(k, 0)))
        totals = Table(title="lake totals (all runs)")
        totals.add_column("what")
        totals.add_column("count", justify="right")
        for k in TOTAL_KEYS:
            totals.add_row(k.replace("_", " "), str(self.counts.get(k, 0)))
        console.print(this)
        console.print(totals)
        if self.failure_groups:
            t = Table(title="failures this run (open)")
            for c in ("stage", "reason", "count"):
                t.add_column(c, overflow="fold")
            for stage, reason, n in self.failure_groups:
                t.add_row(stage, escape(reason), str(n))
            console.print(t)
            console.print("see them: rtlake failures list  ·  rtlake status", soft_wrap=True)
        for w in self.warnings:
            console.print(f"[yellow]warning:[/yellow] {escape(w)}", soft_wrap=True)
        for p in self.outputs:
            console.print(f"wrote {p}", soft_wrap=True)


_UIDISH = re.compile(r"\b\d+(?:\.\d+){3,}\b|\b[0-9a-f]{8}(?:-[0-9a-f]{8}){4}\b|\b\d{5,}\b")


def reason_group(reason: str) -> str:
    """A failure reason with its identifiers folded, so the same problem on many studies is one line."""
    text = _UIDISH.sub("<id>", reason)
    return text if len(text) <= 120 else text[:117] + "..."


def _progress(show: bool) -> Progress:
    from .logsetup import bars_wanted, err_console

    # stderr, and only to a terminal: stdout carries the summary, a log file wants no bars
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        disable=not bars_wanted(show), transient=False, console=err_console,
    )


_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _storable(st: StudyRecord) -> StudyRecord:
    """The record with lone surrogates (a PACS answer decoded with errors) replaced by U+FFFD.

    Why: DuckDB refuses them, and one bad description must not stop the whole harvest. Control
    characters stay as the PACS sent them (the catalog keeps raw values; writers sanitise).
    """
    fields = {k: _LONE_SURROGATE.sub("\ufffd", v) for k, v in
              (("study_uid", st.study_uid), ("patient_id", st.patient_id), ("accession", st.accession),
               ("description", st.description), ("study_id", st.study_id)) if _LONE_SURROGATE.search(v or "")}
    return replace(st, **fields) if fields else st


def uid_has_root(uid: str, root: str) -> bool:
    """True when `uid` is `root` or continues it with '.', component by component.

    Why not str.startswith: '1.2.246.352.71.1.' (every Varian UID) or '…658820455611' would also
    match '…6588204556112.x', a different root.
    """
    root = root.rstrip(".")
    return uid == root or uid.startswith(root + ".")


class UpdateRun:
    def __init__(self, cfg: Config, catalog: Catalog, progress: Progress, *, today: dt.date | None = None) -> None:
        self.cfg = cfg
        self.cat = catalog
        self.progress = progress
        self.source: Source | None = None
        self.store: Store | None = None
        self.run_id = catalog.start_run(cfg.source.kind, cfg.store.kind)
        set_run_id(self.run_id)  # every log line from here on names this run
        self.summary = RunSummary(self.run_id)
        self.today = today or dt.date.today()
        self._placeholders = {dt.date.fromisoformat(d) for d in cfg.harvest.placeholder_dates}

    # -- helpers ----------------------------------------------------------------
    def fail(self, stage: str, target: str, reason: str, study_uid: str | None = None,
             exc: BaseException | None = None, hospital_id: str | None = None, log_text: str | None = None) -> None:
        """Record a failure in the catalog (identified side); the log line names no patient.

        `log_text` replaces the reason in the log when the reason itself carries identifiers
        (e.g. a cohort row's conflicting NHS numbers)."""
        said = log_text or reason
        shown = study_uid or ("a patient" if hospital_id else target)
        if not self.cfg.logging.identifiers_in_logs:  # folders may be named by patient: the catalog keeps paths
            said = public_paths(said)
            if not (study_uid or hospital_id) and looks_like_path(target):
                shown = public_paths(target) if stage in ("inputs", "report") else "a file"
        if self.cat.record_failure(self.run_id, stage, target, reason, study_uid,
                                   type(exc).__name__ if exc else None, hospital_id=hospital_id):
            self.summary.counts["new_failures"] += 1
            log.warning("%s %s: %s", stage, terminal(shown), terminal(said))
        else:  # already on file from an earlier run
            log.debug("%s %s (again): %s", stage, terminal(shown), terminal(said))

    # -- start-up checks ----------------------------------------------------------
    def _probe(self, what: str, fn) -> list[str] | str:
        """Run one check with a short retry budget: a dead PACS must stop the run in seconds."""
        attempts = self.cfg.harvest.check_retries + 1
        for attempt in range(attempts):
            try:
                return fn()
            except TransientError as exc:
                if attempt + 1 >= attempts:
                    raise RunFailed(f"{what} does not answer: {exc}") from None
                time.sleep(1.0)
            except NotImplementedError:
                return []
            except RtlakeError as exc:
                raise RunFailed(f"{what} refused: {exc}") from None
        return []  # pragma: no cover

    def preflight(self, source: Source, store: Store, outbox: Path | None) -> list[str]:
        """Source answers, store reachable with the configured credentials, outbox writable.

        Raises:
            RunFailed: naming what does not work (nothing has been changed yet).
        """
        lines = [str(self._probe("source", source.check))]
        lines += list(self._probe("store", store.check))
        if outbox is not None:
            lines.append(check_writable(outbox, "[report] outbox"))
        return lines

    # -- inputs -----------------------------------------------------------------
    def load_patients(self) -> list[str]:
        """Upsert the cohort; returns the hospital IDs to harvest (deceased left out)."""
        cohort = read_cohort(self.cfg.inputs.cohort)
        for p in cohort.problems:  # `public`: the same problem without the NHS numbers it names
            self.fail("inputs", f"{p.path}:{p.line}", p.message, log_text=getattr(p, "public", "") or p.message)
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
                        "INSERT INTO patients (hospital_id, nhs_number, subject, deceased, first_seen_run, "
                        "needs_harvest) VALUES (?, ?, ?, ?, ?, TRUE)", [hid, *row, self.run_id])
                elif tuple(existing[hid]) != row:
                    old_subject = existing[hid][1]
                    con.execute("UPDATE patients SET nhs_number = ?, subject = ?, deceased = ? WHERE hospital_id = ?",
                                [*row, hid])
                    if old_subject != pat.subject:
                        con.execute("INSERT INTO relabels VALUES (?, ?, ?, ?, NULL, NULL, 'patient', ?, ?)",
                                    [self.run_id, hid, old_subject, pat.subject,
                                     "subject label changed in the cohort file", dt.datetime.now()])
        alive = [h for h in cohort.patients if h not in deceased]
        self.summary.counts["patients"] = len(cohort.patients)
        self.summary.counts["deceased_skipped"] = len(cohort.patients) - len(alive)
        return alive

    # -- cohort changes -----------------------------------------------------------
    def relabel_sessions(self) -> None:
        """Move sessions whose patient's subject label changed (NHS number found or corrected).

        Reconciles catalog against cohort every run, so a move the store could not do yet (or a run
        killed between the store's move and the catalog update) is finished by a later run.
        """
        rows = self.cat.query_dicts(
            "SELECT s.study_uid, s.project, s.subject AS old_subject, p.subject AS new_subject, s.label, s.state, "
            "s.location, s.hospital_id, coalesce(s.store_label, s.label) AS store_label "
            "FROM sessions s JOIN patients p USING (hospital_id) "
            "WHERE s.subject <> p.subject ORDER BY s.study_uid")
        now = dt.datetime.now
        for r in rows:
            uid, old, new = r["study_uid"], r["old_subject"], r["new_subject"]
            taken = self.cat.execute("SELECT 1 FROM sessions WHERE project = ? AND subject = ? AND label = ?",
                                     [r["project"], new, r["label"]]).fetchone()
            if taken:
                # sessions are named as the store names them (a pseudonym when pseudonymised, never the accession)
                self.fail("relabel", uid, f"cannot move session {r['store_label']} to its corrected subject: a session "
                                          "with that label is already there", uid, hospital_id=r["hospital_id"])
                continue
            if r["state"] != "stored":  # not in the store yet: the catalog alone says where it will go
                self.cat.execute("UPDATE sessions SET subject = ? WHERE study_uid = ?", [new, uid])
                self.cat.execute("INSERT INTO relabels VALUES (?, ?, ?, ?, ?, ?, 'planned', NULL, ?)",
                                 [self.run_id, r["hospital_id"], old, new, uid, r["label"], now()])
                continue
            if self.cfg.pseudo.enabled:
                detail = ("pseudonymised sessions carry the subject pseudonym inside every file: delete the old "
                          "session from the store and run `rtlake update --patient <hospital id>` to store it again")
                self.fail("relabel", uid, f"session {r['store_label']} not moved: {detail}", uid,
                          hospital_id=r["hospital_id"])
                continue
            try:
                loc = self.store.move_session(r["project"], old, new, r["label"])
            except NotImplementedError as exc:
                self.fail("relabel", uid, f"session {r['label']} not moved: {exc}", uid, hospital_id=r["hospital_id"])
                continue
            except RtlakeError as exc:
                self.fail("relabel", uid, f"session {r['label']} not moved: {exc}", uid, exc,
                          hospital_id=r["hospital_id"])
                continue
            with self.cat.transaction() as con:
                old_loc = r["location"] or ""
                new_loc = loc or old_loc
                con.execute("UPDATE sessions SET subject = ?, location = ? WHERE study_uid = ?", [new, new_loc, uid])
                if loc and old_loc and loc != old_loc:
                    con.execute("UPDATE files SET path = ? || substr(path, ?) WHERE study_uid = ? AND "
                                "starts_with(path, ?)", [new_loc, len(old_loc) + 1, uid, old_loc])
                con.execute("INSERT INTO relabels VALUES (?, ?, ?, ?, ?, ?, 'moved', ?, ?)",
                            [self.run_id, r["hospital_id"], old, new, uid, r["label"], new_loc, now()])
            self.cat.resolve_failures(self.run_id, uid, ("relabel",))
            self.summary.counts["relabelled"] += 1
            log.info("moved session %s to its corrected subject", r["label"])

    # -- harvest ----------------------------------------------------------------
    def _targets(self, alive: list[str], full: bool, only: list[str] | None
                 ) -> tuple[list[str], ChangeFeed | None, str]:
        """Which patients to list this run, and the change-log position to keep afterwards."""
        if only:
            return [h for h in alive if h in set(only)], None, "targeted: " + str(len(only)) + " patient(s)"
        feed: ChangeFeed | None = None
        if self.cfg.harvest.use_change_log and self.cfg.harvest.window_days is None:
            cursor = None if full else self.cat.get_cursor(self.source.name, "changes")
            try:
                feed = self.source.changes(cursor, set(alive))
            except RtlakeError as exc:  # the change log is an optimisation: list everyone instead
                log.warning("change log unavailable (%s); listing every patient", exc)
                feed = None
        if full:
            return alive, feed, "full listing (--full)"
        if self.cfg.harvest.window_days is not None:
            return alive, None, f"StudyDate window of {self.cfg.harvest.window_days} days (opt-in)"
        if feed is None or feed.patients is None:
            why = f": {feed.note}" if feed is not None and feed.note else ""
            return alive, feed, "full listing" + why
        pending = {r[0] for r in self.cat.execute("SELECT hospital_id FROM patients WHERE needs_harvest").fetchall()}
        targets = [h for h in alive if h in feed.patients or h in pending]
        return targets, feed, f"change log: {len(targets)} of {len(alive)} patients changed or pending"

    def harvest(self, patient_ids: list[str], *, full: bool = False, only: list[str] | None = None) -> None:
        refresh = getattr(self.source, "refresh_index", None)
        if refresh is not None:  # the folder source reads new files' headers first, with its own bar
            refresh(self.progress)
        targets, feed, mode = self._targets(patient_ids, full, only)
        self.summary.harvest_mode = mode
        log.info("harvest: %s", mode)
        cursors = dict(self.cat.execute("SELECT hospital_id, harvested_until FROM patients").fetchall())
        lists = effective_lists(self.cfg.criteria.lists, self.cat)
        window = self.cfg.harvest.window_days
        task = self.progress.add_task("harvest", total=len(targets))
        unreachable_in_a_row = 0
        for n, hid in enumerate(targets):
            until = cursors.get(hid)
            since = until - dt.timedelta(days=window) if (window is not None and until and not full and not only) \
                else None
            target = f"patient:{hid}"
            try:
                studies = list(self.source.query_patient(hid, since))
            except RtlakeError as exc:
                # Not harvested: listed again next run whatever the change log says.
                self.fail("harvest", target, f"patient query failed: {exc}", exc=exc, hospital_id=hid)
                self.cat.execute("UPDATE patients SET needs_harvest = TRUE WHERE hospital_id = ?", [hid])
                self.progress.advance(task)
                unreachable_in_a_row = unreachable_in_a_row + 1 if isinstance(exc, TransientError) else 0
                if unreachable_in_a_row >= self.cfg.harvest.max_consecutive_query_failures:
                    self._probe(f"source (after {unreachable_in_a_row} failed patient queries in a row, "
                                f"{n + 1} of {len(targets)} patients done)", self.source.check)
                    unreachable_in_a_row = 0
                continue
            unreachable_in_a_row = 0
            with self.cat.transaction():
                for st in studies:
                    self._upsert_study(hid, _storable(st), lists)
                self.cat.execute("UPDATE patients SET harvested_until = ?, harvested_run = ?, needs_harvest = FALSE "
                                 "WHERE hospital_id = ?", [self.today, self.run_id, hid])
            self.cat.resolve_target(self.run_id, "harvest", target)
            self.summary.counts["harvested"] += len(studies)
            self.summary.counts["patients_queried"] += 1
            failpoints.hit("harvest.patient")
            self.progress.advance(task)
        if feed is not None:
            # Read before the listing began, so whatever arrived during it is read again next time.
            self.cat.set_cursor(self.source.name, "changes", feed.cursor, self.run_id)
        problems = self.source.failures()
        for target, reason in problems:
            self.fail("index", target, reason)
        self.cat.resolve_missing(self.run_id, "index", {t for t, _ in problems})

    def _decide(self, st: StudyRecord, lists) -> tuple[str, str]:
        for root in self.cfg.harvest.skip_uid_prefixes:
            if uid_has_root(st.study_uid, root):
                return "skip_verification", f"RT verification study (UID root {root.rstrip('.')})"
        if st.study_date in self._placeholders:
            return "skip_placeholder", f"placeholder StudyDate {st.study_date.isoformat()} (scheduled, not performed)"
        return lists.decide(st.description)

    def _upsert_study(self, hid: str, st: StudyRecord, lists) -> None:
        """Insert a new study, or diff a known one against what the PACS says now.

        A known study is taken again when new instances or series arrived (stored files are kept);
        a changed description, accession or date is re-decided (a placeholder date corrected, a
        description renamed onto the include list); nothing already stored is removed.
        """
        decision, reason = self._decide(st, lists)
        mods = "\\".join(st.modalities)
        row = self.cat.execute(
            "SELECT accession, study_date, description, modalities, n_instances, state, decision, decision_reason "
            "FROM studies_seen WHERE study_uid = ?", [st.study_uid]).fetchone()
        wanted = decision in ("include", "review")
        if row is None:
            state = "new" if wanted else "skipped"
            self.cat.execute(
                "INSERT INTO studies_seen VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [st.study_uid, hid, st.accession, st.study_id, st.study_date, st.description,
                 normalise(st.description), mods, st.n_instances, st.source, decision, reason, state,
                 self.run_id, self.run_id])
            self.summary.counts["new_studies"] += 1
            if decision in _SKIP_KEYS:
                self.summary.counts[_SKIP_KEYS[decision] + "_new"] += 1
            return
        acc, date, desc, old_mods, n_old, state, old_decision, old_reason = row
        grew = st.n_instances is not None and n_old is not None and st.n_instances > n_old
        new_mods = bool(set(st.modalities) - set((old_mods or "").split("\\")))
        fields_changed = (acc, date, desc) != (st.accession, st.study_date, st.description)
        redecided = (decision, reason) != (old_decision, old_reason) and (
            old_decision in _SKIP_KEYS or decision in _SKIP_KEYS or fields_changed)
        if not (fields_changed or grew or new_mods or redecided):
            return
        new_state = state
        if state == "ingested" and (grew or new_mods) and wanted:
            new_state = "new"  # new series/instances in a stored study: take it again, stored files are kept
        elif state == "skipped" and wanted:
            new_state = "new"
        elif state in ("new", "failed") and not wanted:
            new_state = "skipped"
        if not redecided:
            decision, reason = old_decision, old_reason  # the list decision is select()'s to revisit
        self.cat.execute(
            "UPDATE studies_seen SET accession=?, study_date=?, description=?, description_norm=?, modalities=?, "
            "n_instances=?, state=?, decision=?, decision_reason=?, updated_run=? WHERE study_uid=?",
            [st.accession, st.study_date, st.description, normalise(st.description), mods,
             st.n_instances if st.n_instances is not None else n_old, new_state, decision, reason, self.run_id,
             st.study_uid])
        self.summary.counts["changed_studies"] += 1

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
        return todo

    def totals(self) -> None:
        """Lake totals for the summary: every decision on record, and what the store holds."""
        counts = dict(self.cat.execute("SELECT decision, count(*) FROM studies_seen GROUP BY 1").fetchall())
        for k, key in (("include", "included"), ("exclude", "excluded"), ("review", "review"),
                       ("skip_verification", "verification_skipped"), ("skip_placeholder", "placeholder_skipped")):
            self.summary.counts[key] = int(counts.get(k, 0))
        subj, sess = self.cat.execute(
            "SELECT count(DISTINCT subject), count(*) FROM sessions WHERE state = 'stored'").fetchone()
        self.summary.counts["lake_subjects"] = int(subj or 0)
        self.summary.counts["lake_sessions"] = int(sess or 0)
        self.summary.counts["lake_files"] = int(self.cat.execute("SELECT count(*) FROM files").fetchone()[0] or 0)
        self.summary.counts["open_failures"] = int(self.cat.execute(
            "SELECT count(*) FROM failures WHERE resolved_run IS NULL").fetchone()[0] or 0)

    def failures_this_run(self) -> list[tuple[str, str, int]]:
        """This run's open failures grouped by stage and reason (identifiers folded)."""
        groups: dict[tuple[str, str], int] = {}
        for stage, reason in self.cat.execute(
                "SELECT stage, reason FROM failures WHERE last_seen_run = ? AND resolved_run IS NULL", [self.run_id]
        ).fetchall():
            key = (stage, reason_group(reason))
            groups[key] = groups.get(key, 0) + 1
        return sorted(((st, r, n) for (st, r), n in groups.items()), key=lambda g: (-g[2], g[0], g[1]))

    def outcome(self) -> str:
        """`partial` when this run left a patient query, file or study failed; else `done`."""
        marks = ", ".join("?" for _ in WORK_STAGES)
        n = self.cat.execute(
            f"SELECT count(*) FROM failures WHERE last_seen_run = ? AND resolved_run IS NULL AND stage IN ({marks})",
            [self.run_id, *WORK_STAGES]).fetchone()[0]
        return "partial" if n else "done"

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

    @property
    def scratch(self) -> Path:
        """Where retrieved studies wait for the store (one folder per study; emptied every run)."""
        return self.cfg.state_dir / "scratch"

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
        scratch = self.scratch
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True, exist_ok=True)
        self.store.scratch = scratch  # what the store may move rather than copy (its files are ours)
        task = self.progress.add_task("ingest", total=len(todo))
        plans = []
        with self.cat.transaction():
            for study, hid in todo:
                plans.append(self.plan(study, hid))
        batch = max(1, self.store.batch_size)
        workers = max(1, self.cfg.source.transfer.concurrency)
        pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch")
        self._unreachable = {"retrieve": 0, "store": 0}
        try:
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
                    self._unreachable["retrieve"] = 0
                except Exception as exc:  # noqa: BLE001 - every failure is recorded, none aborts the run
                    for path, reason in getattr(exc, "problems", []):  # e.g. PseudoFailed: one row per file
                        self.fail("pseudo", path, reason, original.study.study_uid)
                    self._failed(original, "retrieve", exc)
                    self.progress.advance(task)
                    self._breaker("retrieve", exc, "source", self.source.check)
                if len(ready) >= batch or (exhausted and not pending and ready):
                    self._store_batch(ready, task)
                    ready = []
            if ready:
                self._store_batch(ready, task)
        except BaseException:
            # Ctrl-C or a dead source/store: do not wait for transfers in flight; the next run resumes.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        shutil.rmtree(scratch, ignore_errors=True)

    def _breaker(self, stage: str, exc: BaseException, what: str, check) -> None:
        """After several unreachable errors in a row, check the peer once; stop the run if it is gone.

        Raises:
            RunFailed: the source/store does not answer its check any more.
        """
        if not isinstance(exc, TransientError):
            self._unreachable[stage] = 0
            return
        self._unreachable[stage] += 1
        if self._unreachable[stage] >= self.cfg.harvest.max_consecutive_query_failures:
            n = self._unreachable[stage]
            self._unreachable[stage] = 0
            self._probe(f"{what} (after {n} failed studies in a row)", check)

    def _store_batch(self, items: list[tuple[SessionPlan, SessionPlan, list[Path], RetrievedStudy | None]],
                     task) -> None:
        to_put = []
        for plan, store_plan, files, got in items:
            if self.store.needs_files and not files:
                self._record_integrity(plan, got, None)
                self._failed(plan, "retrieve", RtlakeError(
                    f"study {plan.study.study_uid}: source {self.source.name} delivered no files"))
                self.progress.advance(task)
                continue
            to_put.append((plan, store_plan, files, got))
        if not to_put:
            return
        scratch = self.scratch
        try:
            results = self.store.put_studies([(sp, f) for _, sp, f, _ in to_put])
        except Exception as exc:  # noqa: BLE001
            results = [exc] * len(to_put)
        for (plan, _store_plan, files, got), res in zip(to_put, results):
            if isinstance(res, Exception):
                self._failed(plan, "store", res)
                self._breaker("store", res, "store", self.store.check)
            else:
                self._unreachable["store"] = 0
                failpoints.hit("ingest.stored")
                self._stored(plan, res, got)
                failpoints.hit("ingest.recorded")
            self.progress.advance(task)
            uid = plan.study.study_uid  # its scratch folders (the folder source's own files are elsewhere)
            for d in (scratch / uid, scratch / f"{uid}-pseudo"):
                shutil.rmtree(d, ignore_errors=True)  # whatever the store did not move in

    def _failed(self, plan: SessionPlan, stage: str, exc: BaseException) -> None:
        uid = plan.study.study_uid
        kind = "transient" if isinstance(exc, (TransientError, SourceUnavailable)) else "permanent"
        self.fail(stage, uid, f"{kind}: {exc}", uid, exc, hospital_id=plan.hospital_id or None)
        self.cat.execute("UPDATE studies_seen SET state = 'failed', updated_run = ? WHERE study_uid = ? "
                         "AND state <> 'failed'", [self.run_id, uid])
        self.summary.counts["failed"] += 1

    def _record_integrity(self, plan: SessionPlan, got: RetrievedStudy | None, res: StoredSession | None) -> int:
        """Damaged files the source refused and conflicting duplicates: failure rows (+ `conflicts`).

        Returns how many there were; any makes the study incomplete (retried next run).
        """
        from . import conflicts as cf_

        uid = plan.study.study_uid
        refused = got.refused if got is not None else []
        found = cf_.against_stored((got.conflicts if got is not None else []), self.store.stored_instances) + \
            (res.conflicts if res is not None else [])
        for r in refused:
            self.fail("retrieve", r.target, r.reason, uid, hospital_id=plan.hospital_id or None)
        named = [replace(c, source_a=self._origin(c.source_a, c.sop_uid, c.study_uid_a),
                         source_b=self._origin(c.source_b, c.sop_uid, c.study_uid_b)) for c in found]
        for c in named:
            self.fail("store", c.source_b, c.reason, uid, hospital_id=plan.hospital_id or None)
        cf_.record(self.cat, self.run_id, named)
        return len(refused) + len(named)

    def _origin(self, where: str, sop: str, study: str) -> str:
        """A conflict source as a person can find it: scratch copies are named by the PACS instance."""
        if where and Path(where).is_relative_to(self.scratch):
            return f"{self.source.name}: SOPInstanceUID {sop} of study {study}"
        return where

    def _stored(self, plan: SessionPlan, res: StoredSession, got: RetrievedStudy | None) -> None:
        uid = plan.study.study_uid
        for target, reason in res.problems:
            self.fail("store", target, reason, uid)
        damaged = self._record_integrity(plan, got, res)
        if damaged and not res.files:  # every file was refused or in conflict: nothing to call stored
            self._failed(plan, "store", RtlakeError(f"study {uid}: nothing stored ({damaged} damaged or "
                                                    "conflicting files, listed separately)"))
            return
        from .conflicts import resolve_stored

        resolve_stored(self.cat, self.run_id, {f.sop_uid for f in res.files})
        partial = (got is not None and got.partial) or damaged > 0
        with self.cat.transaction() as con:
            # subject/label stay as planned (identifiable) even when the store holds a pseudonymised copy:
            # a later re-ingest must start from the original names, and `location` says where the copy is.
            con.execute("UPDATE sessions SET state='stored', location=?, n_scans=?, n_files=?, stored_run=? "
                        "WHERE study_uid=?", [res.location, len(res.scans), len(res.files), self.run_id, uid])
            sp = res.plan  # the names the store holds (pseudonyms when pseudonymised): the link to the lake
            con.execute("UPDATE sessions SET store_subject=?, store_label=?, store_study_uid=?, store_study_date=?, "
                        "store_description=? WHERE study_uid=?", [sp.subject, sp.label, sp.study.study_uid,
                                                                  sp.study.study_date, sp.study.description, uid])
            for s in res.scans:
                con.execute("INSERT OR REPLACE INTO scans VALUES (?,?,?,?,?,?)",
                            [uid, s.series_uid, s.scan_id, s.modality, s.description, s.n_files])
            new_files = _insert_files(con, uid, res.files)
            if partial:
                con.execute("UPDATE studies_seen SET state='failed', updated_run=? WHERE study_uid=?", [self.run_id, uid])
            else:
                con.execute("UPDATE studies_seen SET state='ingested', updated_run=? WHERE study_uid=? "
                            "AND state <> 'ingested'", [self.run_id, uid])
        if partial and damaged:
            self.fail("retrieve", uid, f"incomplete: {len(res.files)} instances stored; {damaged} damaged or "
                                       "conflicting files (listed separately); will retry", uid,
                      hospital_id=plan.hospital_id or None)
            self.summary.counts["failed"] += 1
        elif partial:
            self.fail("retrieve", uid, f"partial transfer: received {len(got.files)} of {got.expected} instances; "
                                       "stored what arrived, will retry", uid, hospital_id=plan.hospital_id or None)
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


def check_writable(folder: Path, what: str, create: bool = True) -> str:
    """Create and remove a probe file in `folder` (made if missing, unless `create` is off).

    With `create` off (`rtlake check` changes nothing), a missing folder passes when the nearest
    existing parent lets us create it.

    Raises:
        RunFailed: the folder cannot be created or written.
    """
    folder = Path(folder)
    if not create and not folder.exists():
        parent = next((p for p in folder.parents if p.exists()), None)
        if parent is None or not os.access(parent, os.W_OK | os.X_OK):
            raise RunFailed(f"{what} {folder} does not exist and cannot be created")
        return f"{what}: {folder} does not exist yet; it will be created"
    try:
        probe_write(folder)
    except OSError as exc:
        raise RunFailed(f"{what} {folder} is not writable ({exc.strerror or exc})") from None
    return f"{what}: {folder} is writable"


def run_checks(cfg: Config) -> list[tuple[str, bool, str]]:
    """What `rtlake check` prints: each check's name, whether it passed, and what it found.

    Runs the same probes as the start of an update run (source answers, store reachable with the
    configured credentials, lake/outbox/state writable, inputs readable), without changing anything.
    """
    from .patients import read_cohort

    results: list[tuple[str, bool, str]] = []

    def attempt(name: str, fn) -> None:
        try:
            out = fn()
            for line in (out if isinstance(out, list) else [out]):
                results.append((name, True, str(line)))
        except NotImplementedError as exc:
            results.append((name, True, str(exc)))
        except (RtlakeError, OSError, ValueError) as exc:
            results.append((name, False, str(exc)))

    attempt("state", lambda: check_writable(cfg.state_dir, "[project] state_dir", create=False))
    attempt("outbox", lambda: check_writable(Path(cfg.report.outbox), "[report] outbox", create=False))

    def cohort() -> str:
        c = read_cohort(cfg.inputs.cohort)
        return f"[inputs] cohort {cfg.inputs.cohort}: {len(c.patients)} patients, {len(c.problems)} row problems"

    attempt("cohort", cohort)
    if cfg.inputs.deceased is not None:
        attempt("deceased", lambda: f"[inputs] deceased {cfg.inputs.deceased}: "
                                    f"{len(read_deceased(cfg.inputs.deceased)[0])} patients")
    src_holder: list[Source] = []

    def source() -> str:
        src = open_source(cfg)
        src_holder.append(src)
        return src.check()

    attempt("source", source)
    results.extend(_permission_checks(cfg))
    for src in src_holder:
        src.close()

    def store() -> list[str]:
        st = open_store(cfg)
        try:
            return st.check()
        finally:
            st.close()

    attempt("store", store)
    return results


def _permission_checks(cfg: Config) -> list[tuple[str, bool | None, str]]:
    """Warn about existing files looser than owner-only where rtlake keeps identifiers."""
    out: list[tuple[str, bool | None, str]] = []
    outbox = Path(cfg.report.outbox)
    places = [("state", Path(cfg.state_dir), {}), ("outbox", outbox, {})]
    if cfg.security.outbox_group:
        places[1] = ("outbox", outbox, {outbox: cfg.security.outbox_mode_bits & 0o070 | 0o050})
    if cfg.store.kind == "lake":
        places.append(("lake", Path(cfg.store.lake.path), {}))
    for name, root, allowed in places:
        bad = loose(walk(root), allowed)
        if bad:
            p, m = bad[0]
            out.append(("perms", None, f"{len(bad)} file(s)/folder(s) under {name} {root} are readable by other "
                                       f"accounts (e.g. {p.name} is {m:04o}); chmod -R go-rwx {root}"))
        elif root.exists():
            out.append(("perms", True, f"{name} {root}: owner-only"))
    return out


def run_update(cfg: Config, show_progress: bool = True, build_report: bool = True, *, full: bool = False,
               patients: list[str] | None = None, today: dt.date | None = None) -> RunSummary:
    """One whole update run under the state-folder lock; always returns its summary with an outcome.

    `summary.status` is `done`, `partial`, `failed` (source/store unusable: nothing downstream is
    changed, the outbox is left as it was) or `interrupted` (Ctrl-C; the next run resumes).

    Raises:
        RunLocked: another run holds the lock.
        ConfigError: the configuration cannot work (checked before anything is touched).
    """
    check_preconditions(cfg)
    with private_umask(), pseudonymous_logs(cfg), run_lock(cfg.state_dir):
        cat = Catalog(cfg.catalog_path)
        try:
            with _progress(show_progress) as progress:
                run = UpdateRun(cfg, cat, progress, today=today)
                summary = run.summary
                try:
                    _run_steps(run, cfg, build_report, full, patients)
                except RunFailed as exc:
                    summary.status, summary.message = "failed", str(exc)
                    log.error("run failed: %s", exc)
                    # kept like every other failure (and cleared by the next run that gets past this point)
                    run.fail("run", str(exc).split(" ", 1)[0] or "run", str(exc), exc=exc)
                except KeyboardInterrupt:
                    summary.status, summary.message = "interrupted", "stopped by the operator; run again to resume"
                except (duckdb.InterruptException, RuntimeError) as exc:
                    if "interrupt" not in str(exc).lower():  # Ctrl-C inside a DuckDB query arrives as this
                        summary.status = "failed"
                        cat.finish_run(run.run_id, "failed", summary.counts, f"crashed: {type(exc).__name__}")
                        raise
                    summary.status, summary.message = "interrupted", "stopped by the operator; run again to resume"
                except ConfigError:
                    summary.status = "failed"
                    cat.finish_run(run.run_id, "failed", summary.counts, "configuration error")
                    raise
                except BaseException as exc:
                    summary.status = "failed"
                    cat.finish_run(run.run_id, "failed", summary.counts, f"crashed: {type(exc).__name__}")
                    raise
                finally:
                    for peer in (run.store, run.source):
                        if peer is not None:
                            try:
                                peer.close()
                            except Exception:  # noqa: BLE001 - closing must not hide the outcome
                                log.debug("closing %s failed", peer, exc_info=True)
                try:
                    run.totals()
                    summary.failure_groups = run.failures_this_run()
                except Exception:  # noqa: BLE001 - a summary detail must not change the outcome
                    log.debug("summary totals failed", exc_info=True)
                cat.finish_run(run.run_id, summary.status, summary.counts, summary.message or None)
                return summary
        finally:
            cat.close()


def _run_steps(run: UpdateRun, cfg: Config, build_report: bool, full: bool, patients: list[str] | None) -> None:
    """check → cohort → relabel → harvest → select → ingest → report; raises RunFailed to stop."""
    try:
        run.source = open_source(cfg)
        run.store = open_store(cfg)
    except (RtlakeError, OSError) as exc:
        raise RunFailed(f"cannot open the {'source' if run.source is None else 'store'}: {exc}") from None
    from .conflicts import stored_instances

    run.store.stored_instances = lambda sops: stored_instances(run.cat, sops)  # issue 19: never first-wins
    run.preflight(run.source, run.store, Path(cfg.report.outbox) if build_report else None)
    run.cat.execute("UPDATE failures SET resolved_run = ? WHERE stage = 'run' AND resolved_run IS NULL", [run.run_id])
    try:
        alive = run.load_patients()
    except RtlakeError as exc:
        raise RunFailed(f"cannot read the cohort: {exc}") from None
    if patients:
        unknown = [p for p in patients if p not in alive]
        if unknown:
            raise RunFailed(f"--patient: {len(unknown)} of the given IDs are not living members of the cohort "
                            f"({cfg.inputs.cohort})")
    if cfg.pseudo.enabled:  # sessions stored before the catalog kept the store's names (issue 15)
        from .pseudo.store_names import fill_store_names

        fill_store_names(cfg, run.cat)
    run.relabel_sessions()
    run.harvest(alive, full=full, only=patients)
    todo = run.select()
    run.ingest(todo)
    run.summary.status = run.outcome()
    if run.summary.status == "partial":
        run.summary.message = "some patient queries, files or studies failed (listed below)"
    if build_report:
        from reporting.build import build_reports, run_warnings

        from .atomic import sweep_temp

        last_good = run.cat.last_finished_run()
        had = json.loads(last_good["counts"] or "{}").get("lake_sessions", 0) if last_good else 0
        now_stored = run.cat.execute("SELECT count(*) FROM sessions WHERE state = 'stored'").fetchone()[0]
        if now_stored < had:
            run.summary.warnings.append(
                f"outbox left as it was: the catalog lists {now_stored} stored sessions, the last good run had {had}")
            run.summary.status = "partial"
            return
        # a run killed while writing the outbox left a temp file the EDW could pick up
        sweep_temp(Path(cfg.report.outbox))
        failpoints.hit("report.write")
        run.summary.outputs = list(build_reports(cfg, run.cat, run.run_id))
        share_outbox(Path(cfg.report.outbox), run.summary.outputs, cfg.security.outbox_group,
                     cfg.security.outbox_mode_bits)
        # Failure rates out of line with the historic baseline: a pipeline fault, not bad luck.
        run.summary.warnings += run_warnings(cfg, run.cat, run.run_id)
