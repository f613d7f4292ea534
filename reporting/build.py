"""Everything `rtlake update` / `rtlake report` hand over at the end of a run.

`build_reports` is the one entry point: it imports any failure JSON the XNAT DQR store left in
`[store.xnat].dqr_failures_dir` (default `<state_dir>/dqr-failures/`), reads the cohort and reference dates, builds the master
availability sheet from the catalog (failures as their own block), checks failure rates against
the baseline, and writes:

  <outbox>/master-availability-<date>.xlsx   Master, Failures, Problems, Provenance sheets
  <outbox>/master-availability-<date>.csv    the Master sheet
  <outbox>/failures-<date>.csv               the failure list for the EDW record
  <state_dir>/reports/failure-report-<date>.html   the admin's investigation report

Input problems (bad reference-date rows, unreadable failure fragments) are recorded as catalog
failures with stage `report` and listed in the Problems sheet; the build goes on.
`build_from_folder` does the same from the SOP's folder of hand-downloaded XNAT CSVs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ingest.catalog import Catalog
from ingest.config import Config
from ingest.errors import InputFileError
from ingest.patients import InputProblem

from . import edw
from .catalog_source import cohort_notes, cohort_subjects, pseudonymised, sessions_from_catalog
from .dates import parse_date
from .history import history_rows, import_failure_file, source_files
from .html import write_report
from .master import FAILURE_COLUMNS, MasterSheet, build_master, failure_modality
from .nhs import NhsMapping, load_mapping, public_text
from .own_failures import OwnFailure, own_failures
from .rates import RunRate, failure_rates, rate_warnings
from .refdates import read_reference_dates

log = logging.getLogger(__name__)

DQR_FAILURE_DIR = "dqr-failures"
FAILURES_STEM = "failures"
REPORT_STEM = "failure-report"

FAILURE_SHEET_COLUMNS = [
    ("Subject", "subject"), ("Study Date", "study_date"), ("Accession", "accession"),
    ("Study Description", "description"), ("StudyInstanceUID", "study_uid"), ("Study ID", "study_id"),
    ("Modality", "_modality"), ("Status", "status"), ("Category", "category"), ("Note", "category_note"),
    ("First Seen Run", "first_seen_run"), ("Last Seen Run", "last_seen_run"), ("Origin", "origin"),
    ("Source File", "_sources"),
]


@dataclass
class ReportData:
    """What the outputs are made of, whichever way it was gathered."""

    sessions: pd.DataFrame
    reference_dates: dict[str, dt.date]
    failures: list[dict]
    subjects: list[str] = field(default_factory=list)
    problems: list[InputProblem] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)
    own: list[OwnFailure] = field(default_factory=list)  # rtlake's own failures (catalog), for the report
    notes: dict[str, str] = field(default_factory=dict)  # subject → why its row may be empty


def _sha(path: Path | None) -> str:
    if path is None or not Path(path).is_file():
        return "(none)"
    return f"{path} sha256={hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]}"


def _read_refdates(path: Path | None, problems: list[InputProblem]) -> dict[str, dt.date]:
    if path is None:
        return {}
    try:
        ref = read_reference_dates(path)
    except InputFileError as exc:
        problems.append(InputProblem(str(path), exc.line or 0, str(exc).split(": ", 1)[-1]))
        return {}
    problems.extend(ref.problems)
    return ref.dates


def _placeholders(cfg: Config) -> list[dt.date]:
    return [d for d in (parse_date(x) for x in cfg.harvest.placeholder_dates) if d is not None]


def _failure_rows(rows: list[dict], mapping: NhsMapping, stored_uids: set[str],
                  sources: dict[str, list[str]] | None = None) -> list[dict]:
    """History rows for reports: placeholders already out; studies since stored are resolved."""
    out = []
    sources = sources or {}
    for r in rows:
        if r.get("study_uid") and r["study_uid"] in stored_uids:
            continue
        r = dict(r)
        if r.get("hospital_id"):
            r["subject"] = mapping.subject_for(r["hospital_id"])
        r["_modality"] = failure_modality(r)
        r["_sources"] = "; ".join(sources.get(r.get("record_key", ""), [])) or (
            f"{r['source_file']}:{r['source_line']}" if r.get("source_file") else None)
        out.append(r)
    return out


def _failures_long(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"subject": r.get("subject"), "date": r.get("study_date"), "modality": r.get("_modality"),
          "accession": r.get("accession"), "uid": r.get("study_uid"), "description": r.get("description"),
          "status": r.get("category") or r.get("status")} for r in rows if r.get("subject")],
        columns=list(FAILURE_COLUMNS),
    )


def gather_from_catalog(cfg: Config, catalog: Catalog, run_id: str) -> ReportData:
    problems: list[InputProblem] = []
    mapping = load_mapping(cfg.inputs.cohort, catalog)
    dqr_dir = getattr(cfg.store.xnat, "dqr_failures_dir", None) or Path(cfg.state_dir) / DQR_FAILURE_DIR
    dqr_files = sorted(dqr_dir.glob("*.json")) if dqr_dir.is_dir() else []
    for p in dqr_files:
        res = import_failure_file(catalog, p, run_id, origin="dqr",
                                  placeholder_dates=cfg.harvest.placeholder_dates, mapping=mapping)
        problems.extend(res.problems)
    refdates = _read_refdates(cfg.inputs.reference_dates, problems)
    sessions = sessions_from_catalog(catalog)
    stored = set(sessions["uid"].dropna())
    failures = _failure_rows(history_rows(catalog), mapping, stored, source_files(catalog))
    problems.extend(mapping.problems)
    inputs = {
        "catalog": str(catalog.path),
        "cohort": _sha(cfg.inputs.cohort),
        "reference_dates": _sha(cfg.inputs.reference_dates),
        "dqr_failure_files": str(len(dqr_files)),
    }
    return ReportData(sessions, refdates, failures, cohort_subjects(catalog), problems, inputs,
                      own=own_failures(catalog), notes=cohort_notes(catalog, _placeholders(cfg)))


def build_reports(cfg: Config, catalog: Catalog, run_id: str | None = None) -> list[Path]:
    """Build every report for the catalog; returns the files written (outbox first)."""
    run = run_id or _latest_run(catalog) or "report-" + dt.date.today().strftime("%Y%m%d")
    data = gather_from_catalog(cfg, catalog, run)
    cohort = str(cfg.inputs.cohort)
    for p in data.problems:
        if p.path != cohort:  # cohort rows are the harvest stage's to record; listed in Problems here
            catalog.record_failure(run, "report", f"{p.path}:{p.line}", p.message, error_type="InputProblem")
    rates = failure_rates(catalog, cfg.report.baseline_failure_rate)
    return write_outputs(cfg, data, run, rates, Path(cfg.report.outbox), Path(cfg.state_dir) / "reports")


def run_warnings(cfg: Config, catalog: Catalog, run_id: str) -> list[str]:
    """Failure-rate warnings for one run (for the CLI summary of `rtlake update`)."""
    return rate_warnings(failure_rates(catalog, cfg.report.baseline_failure_rate), run_id)


def build_from_folder(cfg: Config, folder: Path, out: Path | None = None, run_id: str | None = None,
                      catalog: Catalog | None = None) -> list[Path]:
    """The master sheet from the SOP's dated folder of XNAT CSVs (no PACS run needed).

    Failure files in the folder go through the history when a catalog is given (so they are
    kept for next time), else they are parsed for this sheet only.
    """
    from .failures import parse_failure_files
    from .nhs import read_mapping
    from .xnat_folder import read_xnat_folder

    folder = Path(folder)
    run = run_id or "folder-" + dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    fin = read_xnat_folder(folder)
    problems = list(fin.problems)
    mapping = NhsMapping()
    if fin.cohort is not None:
        try:
            mapping = read_mapping(fin.cohort)
        except InputFileError as exc:
            problems.append(InputProblem(str(fin.cohort), exc.line or 0, str(exc).split(": ", 1)[-1]))
        problems.extend(mapping.problems)
    refdates = _read_refdates(fin.reference_dates, problems)
    placeholders = {dt.date.fromisoformat(d) for d in cfg.harvest.placeholder_dates}
    own = own_failures(catalog) if catalog is not None else []
    if catalog is not None:
        for p in fin.failure_files:
            problems.extend(import_failure_file(catalog, p, run, mapping=mapping,
                                                placeholder_dates=cfg.harvest.placeholder_dates).problems)
        rows = history_rows(catalog)
        sources = source_files(catalog)
    else:
        sources = {}
        parsed = parse_failure_files(fin.failure_files)
        problems.extend(parsed.problems)
        rows = [{"record_key": r.key, "study_uid": r.study_uid or None, "accession": r.accession or None,
                 "study_id": r.study_id or None, "hospital_id": r.hospital_id or None,
                 "subject": mapping.subject_for(r.hospital_id) if r.hospital_id else None,
                 "study_date": r.study_date, "description": r.description, "modalities": "\\".join(r.modalities),
                 "status": r.status, "source_file": r.source_file, "source_line": r.source_line, "origin": "csc"}
                for r in {rec.key: rec for rec in parsed.records}.values() if r.study_date not in placeholders]
    stored = set(fin.sessions["uid"].dropna())
    data = ReportData(fin.sessions, refdates, _failure_rows(rows, mapping, stored, sources), [], problems,
                      {"folder": str(folder), "reference_dates": _sha(fin.reference_dates),
                       "cohort": _sha(fin.cohort), "failure_files": "; ".join(_sha(p) for p in fin.failure_files)},
                      own=own, notes={s: "no sessions or failures in the folder's XNAT listings" for s in refdates})
    rates = failure_rates(catalog, cfg.report.baseline_failure_rate) if catalog is not None else []
    out = Path(out) if out is not None else Path(cfg.report.outbox)
    return write_outputs(cfg, data, run, rates, out, out)


def write_outputs(cfg: Config, data: ReportData, run: str, rates: Sequence[RunRate],
                  outbox: Path, report_dir: Path) -> list[Path]:
    today = dt.date.today()
    for p in data.problems:
        log.warning("%s", public_text(p))  # no NHS numbers in logs; the Problems sheet has the full text
    # The store's names only exist for sessions read from the catalog (not from XNAT folder listings).
    linked = "store_uid" in data.sessions.columns and (cfg.pseudo.enabled or pseudonymised(data.sessions))
    sheet: MasterSheet = build_master(
        data.sessions, data.reference_dates, failures=_failures_long(data.failures),
        slots_per_modality=cfg.report.slots_per_modality, subjects=data.subjects,
        placeholder_dates=_placeholders(cfg), notes=data.notes,
        pseudonymised=linked,
    )
    # Memory at trust scale (issue 18, bench_master.py: 2 M sessions): the long session table and
    # the sheet's typed grids are not needed once the sheet is rendered; letting them go before the
    # writers run keeps the report's peak near the rendered table's size, not the sum of all three.
    data.sessions = data.sessions.iloc[:0]
    table = sheet.rendered()
    sheet.grids = {}
    fail_table = pd.DataFrame([[r.get(c) for _, c in FAILURE_SHEET_COLUMNS] for r in data.failures],
                              columns=[h for h, _ in FAILURE_SHEET_COLUMNS])
    problem_table = pd.DataFrame([[p.path, p.line, p.message] for p in data.problems],
                                 columns=["File", "Line", "Problem"])
    warnings = rate_warnings(list(rates))
    for w in rate_warnings(list(rates), run):
        log.warning("%s", w)
    provenance = {
        "run_id": run,
        "built_at": dt.datetime.now().replace(microsecond=0).isoformat(),
        "project": cfg.project.name,
        **{f"input_{k}": v for k, v in data.inputs.items()},
        **{f"count_{k}": v for k, v in sheet.counts.items()},
        "count_failures_listed": len(fail_table),
        "slots": "; ".join(f"{b.prefix}={sheet.slots[b.key]}" for b in sheet.blocks),
        "input_problems": len(data.problems),
        "rate_warnings": "; ".join(warnings) or "none",
        "markers": "null = no session in this slot / no value (a session without a date has a null Difference); "
                   "not applicable = no reference date; Notes = why a subject has nothing to show",
        "own_failures": f"{sum(1 for f in data.own if f.open)} open, {sum(1 for f in data.own if not f.open)} resolved",
        "pseudonymised": ("yes: Subject, {MOD} ID and {MOD} UID are the identified (PACS) values; Subject Pseudonym "
                          "and {MOD} Pseudonymised Session / UID are what the store holds") if linked else "no",
    }
    scans_cols = [c for c in table.columns if " Scans " in c]
    xlsx = edw.write_xlsx(
        [("Master", table), ("Failures", fail_table), ("Problems", problem_table)],
        outbox / edw.dated_name(edw.MASTER_STEM, today, ".xlsx"), provenance, scans_cols,
    )
    master_csv = edw.write_csv(table, outbox / edw.dated_name(edw.MASTER_STEM, today, ".csv"))
    fail_csv = edw.write_csv(fail_table, outbox / edw.dated_name(FAILURES_STEM, today, ".csv"))
    html_path = write_report(
        report_dir / edw.dated_name(REPORT_STEM, today, ".html"),
        failures=data.failures, rates=list(rates), warnings=warnings,
        problems=[str(p) for p in data.problems], run_id=run, own=data.own,
    )
    log.info("master sheet: %d subjects, %d failures → %s", len(table), len(fail_table), xlsx)
    return [xlsx, master_csv, fail_csv, html_path]


def _latest_run(catalog: Catalog) -> str | None:
    # The latest *update* run: `rtlake rt convert` also writes runs rows (source "rt"), which are not PACS runs.
    row = catalog.execute("SELECT run_id FROM runs WHERE coalesce(source, '') <> 'rt' "
                          "ORDER BY started_at DESC, run_id DESC LIMIT 1").fetchone()
    return row[0] if row else None
