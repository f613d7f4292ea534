"""Failure history in the catalog: every failure list ever imported, de-duplicated, never lost.

The SOP's failure list was a text file someone had to concatenate by hand; forgetting once lost
the earlier failures. Here each imported file is remembered by its content hash (importing it
again adds nothing), each failed study is one `failure_history` row keyed by StudyInstanceUID
(else accession) with the first and last run that saw it, and each sighting (file, line, run) is
appended to `failure_sightings` (so a row can say every file it was seen in). Scheduled-date
placeholders (2099-01-01) are kept but flagged, so reports can leave them out as the SOP asks.

A failure list answers a batch of studies someone sent; its failure rate needs that batch's size.
Each import remembers the run whose selection it answers (`batch_run`, given or inferred from the
studies it names) and/or how many studies were sent (`attempted`, from `--attempted`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ingest.catalog import Catalog
from ingest.patients import InputProblem

from .dates import parse_date
from .failures import STATUS_BOTH, STATUS_NO_STUDY_ID, STATUS_NO_UID, FailureRecord, parse_failure_file
from .master import sheet_modality
from .nhs import NhsMapping

log = logging.getLogger(__name__)


@dataclass
class ImportResult:
    path: Path
    import_id: str = ""
    already_imported: bool = False
    n_records: int = 0
    n_new: int = 0
    n_seen_again: int = 0
    problems: list[InputProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    batch_run: str | None = None
    batch_note: str = ""
    attempted: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        if self.already_imported:
            return f"{self.path}: already imported (same content); nothing added"
        return (f"{self.path}: {self.n_records} records, {self.n_new} new, {self.n_seen_again} seen before, "
                f"{len(self.problems)} problems")


def _now() -> dt.datetime:
    return dt.datetime.now().replace(microsecond=0)


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def import_failure_file(
    catalog: Catalog,
    path: Path,
    run_id: str,
    origin: str = "csc",
    placeholder_dates: Sequence[str] = ("2099-01-01",),
    mapping: NhsMapping | None = None,
    batch_run: str | None = None,
    attempted: Mapping[str, int] | None = None,
) -> ImportResult:
    """Parse one failure file into the history; problems go to the catalog's failures table too.

    `batch_run`: the update run whose selection this list answers; `attempted`: studies sent, per
    modality (`{"CT": 40}`) or all together (`{"*": 120}`). With neither, the batch is inferred: the
    run that selected most of the studies the list names (none when it names none rtlake selected).
    """
    path = Path(path)
    result = ImportResult(path=path)
    if not path.is_file():
        result.problems.append(InputProblem(str(path), 0, "file not found"))
        _record_problems(catalog, run_id, result.problems)
        return result
    result.import_id = file_hash(path)
    seen = catalog.execute("SELECT 1 FROM failure_imports WHERE import_id = ?", [result.import_id]).fetchone()
    if seen is not None:
        result.already_imported = True
        return result
    parsed = parse_failure_file(path)
    result.problems = parsed.problems
    result.notes = parsed.notes
    result.n_records = len(parsed.records)
    placeholders = {parse_date(d) for d in placeholder_dates}
    now = _now()
    with catalog.transaction() as con:
        for rec in parsed.records:
            key, new = _upsert(con, rec, run_id, origin, rec.study_date in placeholders, mapping, now)
            if new:
                result.n_new += 1
            else:
                result.n_seen_again += 1
            con.execute(
                "INSERT INTO failure_sightings VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [key, result.import_id, run_id, str(path), rec.source_line],
            )
        result.attempted = {k if k == "*" else sheet_modality(k): int(v) for k, v in (attempted or {}).items()}
        result.batch_run = batch_run
        if batch_run is None and not result.attempted:
            result.batch_run, matched = _infer_batch(con, parsed.records)
            if result.batch_run:
                result.batch_note = (f"answers the selection of run {result.batch_run} "
                                     f"({matched} of {len(parsed.records)} records are studies it selected)")
        con.execute(
            "INSERT INTO failure_imports (import_id, path, run_id, imported_at, origin, n_records, n_new, n_problems,"
            " batch_run, attempted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [result.import_id, str(path), run_id, now, origin, result.n_records, result.n_new, len(result.problems),
             result.batch_run, json.dumps(result.attempted, sort_keys=True) if result.attempted else None],
        )
    _record_problems(catalog, run_id, result.problems)
    log.info("%s", result.describe())
    return result


def _infer_batch(con, records: Sequence[FailureRecord]) -> tuple[str | None, int]:
    """The run that selected most of these studies (by UID, else accession), and how many it selected."""
    runs: Counter[str] = Counter()
    for rec in records:
        row = None
        if rec.study_uid:
            row = con.execute("SELECT updated_run FROM studies_seen WHERE study_uid = ? AND decision = 'include'",
                              [rec.study_uid]).fetchone()
        if row is None and rec.accession:
            row = con.execute("SELECT updated_run FROM studies_seen WHERE accession = ? AND decision = 'include' "
                              "ORDER BY updated_run DESC LIMIT 1", [rec.accession]).fetchone()
        if row is not None and row[0]:
            runs[row[0]] += 1
    if not runs:
        return None, 0
    run, n = max(runs.items(), key=lambda kv: (kv[1], kv[0]))
    return run, n


def _existing_key(con, rec: FailureRecord) -> str | None:
    """The history row for this study: same UID, or same accession where one side has no UID.

    A list may name a study by accession before XNAT knows its UID; when a later list adds the
    UID it is the same failed study, not a new one.
    """
    row = con.execute("SELECT record_key FROM failure_history WHERE record_key = ?", [rec.key]).fetchone()
    if row is None and rec.study_uid:
        row = con.execute("SELECT record_key FROM failure_history WHERE study_uid = ? LIMIT 1", [rec.study_uid]).fetchone()
    if row is None and rec.accession:
        row = con.execute(
            "SELECT record_key FROM failure_history WHERE accession = ? AND (study_uid IS NULL OR ? = '')"
            " ORDER BY record_key LIMIT 1", [rec.accession, rec.study_uid]).fetchone()
    return row[0] if row else None


def _upsert(con, rec: FailureRecord, run_id: str, origin: str, placeholder: bool,
            mapping: NhsMapping | None, now: dt.datetime) -> tuple[str, bool]:
    if rec.hospital_id:
        subject = mapping.subject_for(rec.hospital_id) if mapping is not None else f"NN_{rec.hospital_id}"
    else:  # e.g. a DQR query that found nothing: only its relabel map names the subject
        subject = rec.subject or None
    key = _existing_key(con, rec)
    values = [rec.study_uid or None, rec.accession or None, rec.study_id or None, rec.hospital_id or None, subject,
              rec.study_date, rec.description or None, "\\".join(rec.modalities) or None]
    if key is None:
        con.execute(
            "INSERT INTO failure_history (record_key, study_uid, accession, study_id, hospital_id, subject, study_date,"
            " description, modalities, status, placeholder, origin, source_file, source_line, first_seen_run,"
            " last_seen_run, first_seen_at, last_seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [rec.key, *values, rec.status, placeholder, origin, rec.source_file, rec.source_line, run_id, run_id, now, now],
        )
        return rec.key, True
    # Seen before: newer lists may know more (a StudyID assigned later); fill gaps, keep what we had.
    con.execute(
        """UPDATE failure_history SET
             study_uid = coalesce(study_uid, ?), accession = coalesce(accession, ?), study_id = coalesce(study_id, ?),
             hospital_id = coalesce(hospital_id, ?), subject = coalesce(?, subject), study_date = coalesce(study_date, ?),
             description = coalesce(description, ?), modalities = coalesce(modalities, ?),
             last_seen_run = ?, last_seen_at = ?
           WHERE record_key = ?""",
        [*values, run_id, now, key],
    )
    # Status from what is now known about the study (the same rule as FailureRecord.status).
    con.execute(
        """UPDATE failure_history SET status = CASE
               WHEN coalesce(study_id, '') = '' THEN ? WHEN coalesce(study_uid, '') = '' THEN ? ELSE ? END
           WHERE record_key = ?""",
        [STATUS_NO_STUDY_ID, STATUS_NO_UID, STATUS_BOTH, key],
    )
    return key, False


def _record_problems(catalog: Catalog, run_id: str, problems: Iterable[InputProblem]) -> None:
    for p in problems:
        catalog.record_failure(run_id, "report", f"{p.path}:{p.line}", p.message, error_type="FailureFileProblem")


def import_failure_files(catalog: Catalog, paths: Iterable[Path], run_id: str, **kw) -> list[ImportResult]:
    return [import_failure_file(catalog, p, run_id, **kw) for p in paths]


def history_rows(catalog: Catalog, include_placeholders: bool = False) -> list[dict]:
    where = "" if include_placeholders else "WHERE NOT placeholder"
    return catalog.query_dicts(f"SELECT * FROM failure_history {where} ORDER BY subject, study_date, record_key")


def source_files(catalog: Catalog) -> dict[str, list[str]]:
    """record_key → every `file:line` it was seen at, in the order the files were imported."""
    rows = catalog.execute("""
        SELECT s.record_key, s.source_file, s.source_line
        FROM failure_sightings s LEFT JOIN failure_imports i USING (import_id)
        ORDER BY s.record_key, i.imported_at NULLS LAST, s.rowid""").fetchall()
    out: dict[str, list[str]] = defaultdict(list)
    for key, path, line in rows:
        entry = f"{path}:{line}" if line else str(path)
        if entry not in out[key]:
            out[key].append(entry)
    return dict(out)
