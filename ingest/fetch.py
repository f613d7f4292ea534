"""Batch retrieval from a CSV list (pydicom-batch parity): query each row, pull the studies, and
file them under templated names, resumable after Ctrl-C or SIGKILL.

State is a JSON-lines manifest beside the output (`.rtlake-fetch.jsonl`). Each line is one
fsync'd append, so a kill leaves at worst a torn last line, which is ignored on load. A row
that was queried is never queried again (its study list is in the manifest); a study that was
filed is never pulled again. Rows are keyed by their content, so re-ordering the CSV is safe.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from . import failpoints
from .atomic import atomic_path, sweep_temp
from .errors import InputFileError, RtlakeError, SourceError
from .records import StudyRecord
from .sources._query import StudyQuery, parse_dicom_date

log = logging.getLogger(__name__)

MANIFEST = ".rtlake-fetch.jsonl"
SCRATCH_PREFIX = ".scratch-fetch-"
DEFAULT_DIR_TEMPLATE = "{PatientID}/{StudyDate}_{AccessionNumber}/{SeriesNumber}_{Modality}"
DEFAULT_NAME_TEMPLATE = "{InstanceNumber:04d}"
_COLUMNS = {
    "patientid": "patient_id", "accessionnumber": "accession", "studyinstanceuid": "study_uid",
    "studydate": "study_date", "datefrom": "date_from", "dateto": "date_to", "studydescription": "description",
}
_UNSAFE = re.compile(r"[^A-Za-z0-9._^+-]+")


@dataclass
class FetchRow:
    line: int
    query: StudyQuery

    @property
    def key(self) -> str:
        q = self.query
        raw = "|".join(str(x or "") for x in (q.patient_id, q.accession, q.study_uid, q.date_from, q.date_to,
                                               q.description))
        return hashlib.sha1(raw.encode()).hexdigest()[:16]


@dataclass
class FetchSummary:
    rows: int = 0
    rows_skipped: int = 0  # finished in an earlier run
    studies: int = 0
    files: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (row/study reference, reason)
    manifest: Path | None = None


def _date_range(text: str) -> tuple[dt.date | None, dt.date | None]:
    """'YYYYMMDD', 'YYYY-MM-DD', or a DICOM range 'YYYYMMDD-YYYYMMDD' (either end may be open)."""
    text = text.strip()
    if not text:
        return None, None
    if "-" in text and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        a, _, b = text.partition("-")
        da = parse_dicom_date(a) if a else None
        db = parse_dicom_date(b) if b else None
        if (a and da is None) or (b and db is None) or not (a or b):
            raise ValueError(f"bad date range {text!r}")
        return da, db
    d = parse_dicom_date(text)
    if d is None:
        raise ValueError(f"bad date {text!r}")
    return d, d


def read_fetch_list(path: Path) -> tuple[list[FetchRow], list[tuple[int, str]]]:
    """Rows of the CSV and the problems found (line, message); bad rows are left out, not fatal.

    Columns (header names as DICOM keywords, any case): PatientID, AccessionNumber,
    StudyInstanceUID, StudyDate (YYYYMMDD or a YYYYMMDD-YYYYMMDD range), DateFrom, DateTo,
    StudyDescription (wildcards * and ?).

    Raises:
        InputFileError: the file is missing, unreadable, or has none of the known columns.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(path, f"cannot read: {exc}") from None
    reader = csv.DictReader(text.splitlines())
    cols = {c: _COLUMNS.get(re.sub(r"[^a-z]", "", (c or "").lower())) for c in (reader.fieldnames or [])}
    known = "PatientID, AccessionNumber, StudyInstanceUID, StudyDate, DateFrom, DateTo, StudyDescription"
    unknown = [c for c, v in cols.items() if v is None and (c or "").strip()]
    if unknown:  # a column we would silently ignore could be the one that narrows the query
        raise InputFileError(path, f"unknown column(s) {', '.join(repr(c) for c in unknown)}; known: {known}",
                             line=1)
    if not any(cols.values()):
        raise InputFileError(path, f"no known column ({known})", line=1)
    rows, problems = [], []
    for i, raw in enumerate(reader, start=2):
        vals = {cols[k]: (v or "").strip() for k, v in raw.items() if k in cols and cols[k]}
        if not any(vals.values()):
            continue
        try:
            lo, hi = _date_range(vals.get("study_date", ""))
            if vals.get("date_from"):
                lo = _date_range(vals["date_from"])[0]
            if vals.get("date_to"):
                hi = _date_range(vals["date_to"])[1]
            q = StudyQuery(patient_id=vals.get("patient_id") or None, accession=vals.get("accession") or None,
                           study_uid=vals.get("study_uid") or None, date_from=lo, date_to=hi,
                           description=vals.get("description") or None)
        except ValueError as exc:
            problems.append((i, str(exc)))
            continue
        rows.append(FetchRow(i, q))
    return rows, problems


class Manifest:
    """Append-only JSON lines; the last state per (row, study) wins."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, dict] = {}
        self.studies: dict[tuple[str, str], dict] = {}
        if path.exists():
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("%s:%d: torn manifest line ignored (killed mid-write)", path, n)
                    continue
                self._apply(rec)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a", encoding="utf-8")

    def _apply(self, rec: dict) -> None:
        if "study" in rec:
            self.studies[(rec["row"], rec["study"])] = rec
        else:
            self.rows[rec["row"]] = {**self.rows.get(rec["row"], {}), **rec}

    def write(self, rec: dict) -> None:
        rec = {**rec, "at": dt.datetime.now().isoformat(timespec="seconds")}
        self._fh.write(json.dumps(rec, sort_keys=True) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._apply(rec)

    def close(self) -> None:
        self._fh.close()


def _safe(value: object) -> str:
    text = _UNSAFE.sub("_", str(value)).strip("._")
    return text[:64] or "NA"


class _Keywords(dict):
    """Template values from a dataset: DICOM keywords, sanitised; missing ones become NA (or 0 for numbers)."""

    def __init__(self, ds: pydicom.Dataset) -> None:
        super().__init__()
        self.ds = ds

    def __missing__(self, key: str):
        v = self.ds.get(key, None)
        if v is None or v == "":
            return _Missing()
        if isinstance(v, (int, float)) or type(v).__name__ in ("IS", "DSfloat", "DSdecimal"):
            try:
                return int(v)
            except (TypeError, ValueError):
                return _safe(v)
        return _safe(v)


class _Missing(str):
    def __new__(cls):
        return super().__new__(cls, "NA")

    def __format__(self, spec: str) -> str:
        return "NA"


def render(template: str, ds: pydicom.Dataset) -> str:
    """Fill a template like '{PatientID}/{SeriesNumber:03d}' from a dataset.

    Raises:
        ValueError: the template is malformed.
    """
    try:
        return template.format_map(_Keywords(ds))
    except (ValueError, IndexError, KeyError) as exc:
        raise ValueError(f"bad template {template!r}: {exc}") from None


def place_file(src: Path, out: Path, dir_template: str, name_template: str, decompress: bool) -> Path:
    """Copy a received file to its templated place; a different instance already there gets a
    SOPInstanceUID suffix, the same instance is left alone (idempotent).

    Raises:
        SourceError: the file cannot be read or decompressed.
    """
    try:
        ds = pydicom.dcmread(src, stop_before_pixels=not decompress)
    except Exception as exc:  # noqa: BLE001 - any parse failure means the PACS sent a bad object
        raise SourceError(f"{src}: unreadable DICOM ({exc})") from None
    sop = str(ds.get("SOPInstanceUID", "") or src.stem)
    rel = Path(*[_clean_part(p) for p in render(dir_template, ds).split("/") if p.strip()])
    stem = _clean_part(render(name_template, ds))
    target = out / rel / f"{stem}.dcm"
    if target.exists():
        try:
            other = str(pydicom.dcmread(target, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
                        .get("SOPInstanceUID", ""))
        except Exception:  # noqa: BLE001
            other = ""
        if other == sop:
            return target
        target = out / rel / f"{stem}_{_safe(sop)}.dcm"
        if target.exists():
            return target
    if decompress and ds.file_meta.TransferSyntaxUID.is_compressed:
        try:
            ds.decompress()
        except Exception as exc:  # noqa: BLE001 - missing pixel handler or corrupt pixel data
            raise SourceError(f"{src}: cannot decompress {ds.file_meta.TransferSyntaxUID.name}: {exc}") from None
        with atomic_path(target) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
    else:
        with atomic_path(target) as tmp:
            shutil.copyfile(src, tmp)
    return target


def _clean_part(part: str) -> str:
    part = part.strip().replace("\\", "_")
    return "NA" if part in ("", ".", "..") else part


def run_fetch(source, rows: list[FetchRow], out: Path, *, dir_template: str = DEFAULT_DIR_TEMPLATE,
              name_template: str = DEFAULT_NAME_TEMPLATE, decompress: bool = False,
              manifest_path: Path | None = None,
              on_progress: Callable[[str], None] | None = None) -> FetchSummary:
    """Fetch every row; resumable. Failures are recorded per row/study in the manifest and returned.

    Raises:
        ValueError: a template is malformed (checked before anything is fetched).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for leftover in out.glob(f"{SCRATCH_PREFIX}*"):  # scratch of a killed run
        shutil.rmtree(leftover, ignore_errors=True)
    sweep_temp(out)
    probe = pydicom.Dataset()
    render(dir_template, probe), render(name_template, probe)
    man = Manifest(manifest_path or out / MANIFEST)
    summary = FetchSummary(rows=len(rows), manifest=man.path)
    say = on_progress or (lambda _m: None)
    try:
        for row in rows:
            ref = f"row {row.line}"
            state = man.rows.get(row.key, {})
            if state.get("state") == "done":
                summary.rows_skipped += 1
                continue
            if "studies" in state:
                studies = [StudyRecord(**_study_from_json(s)) for s in state["studies"]]
            else:
                try:
                    studies = _find(source, row.query)
                except RtlakeError as exc:
                    man.write({"row": row.key, "line": row.line, "state": "failed", "reason": str(exc)})
                    summary.failed.append((ref, str(exc)))
                    continue
                man.write({"row": row.key, "line": row.line, "state": "queried",
                           "studies": [_study_to_json(s) for s in studies]})
            if not studies:
                reason = f"no study matches ({row.query.describe()})"
                man.write({"row": row.key, "line": row.line, "state": "failed", "reason": reason})
                summary.failed.append((ref, reason))
                continue
            row_ok = True
            for st in studies:
                if man.studies.get((row.key, st.study_uid), {}).get("state") == "done":
                    continue
                say(f"{ref}: study {st.study_uid}")
                ok, reason, n = _fetch_study(source, st, out, dir_template, name_template, decompress)
                summary.studies += ok
                summary.files += n
                man.write({"row": row.key, "study": st.study_uid, "state": "done" if ok else "failed",
                           "files": n, **({"reason": reason} if reason else {})})
                if not ok:
                    row_ok = False
                    summary.failed.append((f"{ref} study {st.study_uid}", reason))
            if row_ok:
                man.write({"row": row.key, "line": row.line, "state": "done"})
    finally:
        man.close()
    return summary


def _find(source, q: StudyQuery) -> list[StudyRecord]:
    if hasattr(source, "find"):
        return list(source.find(q))
    if q.patient_id:
        return [s for s in source.query_patient(q.patient_id, q.date_from) if q.date_ok(s.study_date)]
    if q.accession:
        return source.find_accession(q.accession)
    raise SourceError(f"{getattr(source, 'name', 'source')} cannot answer {q.describe()}")


def _fetch_study(source, st: StudyRecord, out: Path, dir_t: str, name_t: str, decompress: bool
                 ) -> tuple[bool, str, int]:
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=out))
    try:
        try:
            got = source.retrieve(st, scratch)
        except RtlakeError as exc:
            return False, str(exc), 0
        placed = 0
        for f in got.files:
            try:
                place_file(f, out, dir_t, name_t, decompress)
                placed += 1
                failpoints.hit("fetch.file")  # kill-and-resume tests
            except SourceError as exc:
                return False, str(exc), placed
        if got.partial:
            why = "".join(f"; {r.target}: {r.reason}" for r in got.refused[:5])  # damaged instances (issue 19)
            why += "".join(f"; {c.reason}" for c in got.conflicts[:5])
            return False, f"partial transfer: received {len(got.files)} of {got.expected} instances{why}", placed
        return True, "", placed
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _study_to_json(s: StudyRecord) -> dict:
    return {"study_uid": s.study_uid, "patient_id": s.patient_id, "accession": s.accession,
            "study_date": s.study_date.isoformat() if s.study_date else None, "description": s.description,
            "modalities": list(s.modalities), "n_instances": s.n_instances, "study_id": s.study_id,
            "source": s.source}


def _study_from_json(d: dict) -> dict:
    return {**d, "study_date": dt.date.fromisoformat(d["study_date"]) if d.get("study_date") else None,
            "modalities": tuple(d.get("modalities") or ())}
