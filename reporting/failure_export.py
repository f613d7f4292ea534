"""`rtlake failures export`: the whole failure history as one CSV or xlsx, every value traceable.

One row per failed study ever imported (placeholders included and flagged, so nothing is
hidden), with the subject as the cohort file maps it today, and `SourceFile` listing every
`file:line` the study was seen at, so a row can be traced back to the e-mail it came in.
Empty values are empty cells — never the `nan`, `None` or `NaT` that a DataFrame would write.
The file holds patient identifiers (Subject, HospitalID), so it is written owner-only.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
from pathlib import Path

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter

from ingest.atomic import atomic_path, write_text
from ingest.catalog import Catalog

from .history import source_files
from .master import failure_modality
from .nhs import NhsMapping
from . import sanitise

FORMATS = ("csv", "xlsx")

#: (header, what it holds) — the README lists the same.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("Subject", "NHS number, or NN_<hospital id> when there is no trusted one (from the cohort file today)"),
    ("HospitalID", "the patient ID the failure list gives"),
    ("StudyDate", "YYYY-MM-DD"),
    ("AccessionNumber", ""),
    ("StudyID", "DICOM StudyID (empty: the accession found no study)"),
    ("StudyDescription", ""),
    ("StudyInstanceUid", ""),
    ("Modality", "main modality (PT+CT → PET)"),
    ("Status", "accession number wrong or not attached to images | no images found | should have been ingested"),
    ("Category", "the admin's investigation category"),
    ("Note", "the admin's note"),
    ("Origin", "csc | dqr"),
    ("SourceFile", "every file:line the study was seen at, `; `-separated, in import order"),
    ("Placeholder", "yes for a scheduled-date placeholder (2099-01-01), left out of the sheets"),
    ("FirstSeenRun", ""),
    ("FirstSeenAt", ""),
    ("LastSeenRun", ""),
    ("LastSeenAt", ""),
)
HEADERS = [c for c, _ in COLUMNS]
_DATE_COLUMNS = {"StudyDate"}
_TIME_COLUMNS = {"FirstSeenAt", "LastSeenAt"}


def export_rows(catalog: Catalog, mapping: NhsMapping | None = None) -> list[dict]:
    """Every history row as export columns (typed values: dates, datetimes, bool, text)."""
    sources = source_files(catalog)
    rows = catalog.query_dicts(
        "SELECT * FROM failure_history ORDER BY subject NULLS LAST, study_date NULLS LAST, record_key")
    out = []
    for r in rows:
        subject = r.get("subject")
        if r.get("hospital_id") and mapping is not None:
            subject = mapping.subject_for(r["hospital_id"])
        out.append({
            "Subject": subject, "HospitalID": r.get("hospital_id"), "StudyDate": r.get("study_date"),
            "AccessionNumber": r.get("accession"), "StudyID": r.get("study_id"),
            "StudyDescription": r.get("description"), "StudyInstanceUid": r.get("study_uid"),
            "Modality": failure_modality(r) if r.get("modalities") else None,
            "Status": r.get("status"), "Category": r.get("category"), "Note": r.get("category_note"),
            "Origin": r.get("origin"),
            "SourceFile": "; ".join(sources.get(r["record_key"], [])) or (
                f"{r['source_file']}:{r['source_line']}" if r.get("source_file") else None),
            "Placeholder": bool(r.get("placeholder")),
            "FirstSeenRun": r.get("first_seen_run"), "FirstSeenAt": r.get("first_seen_at"),
            "LastSeenRun": r.get("last_seen_run"), "LastSeenAt": r.get("last_seen_at"),
        })
    return out


def is_missing(v: object) -> bool:
    """None, NaN, NaT and pandas' NA: all the ways a missing value reaches us."""
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    try:
        import pandas as pd

        return v is pd.NaT or v is pd.NA
    except ImportError:  # pragma: no cover - pandas is a dependency
        return False


def text_cell(v: object) -> str:
    """The CSV text of a value: empty for missing, ISO dates, yes/no, no float noise."""
    if is_missing(v):
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, dt.datetime):
        return v.replace(microsecond=0).isoformat(sep=" ")
    if isinstance(v, dt.date):
        return v.isoformat()
    return str(v)


def write_export(rows: list[dict], target: Path, fmt: str | None = None) -> Path:
    """Write the rows as CSV or xlsx (format from `fmt`, else the file suffix, else CSV)."""
    target = Path(target)
    fmt = (fmt or target.suffix.lstrip(".") or "csv").lower()
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (use {' or '.join(FORMATS)})")
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(HEADERS)
        for r in rows:
            w.writerow([sanitise.csv_value(text_cell(r.get(h))) for h in HEADERS])
        write_text(target, buf.getvalue(), mode=0o600)
        return target
    wb = Workbook(write_only=True)
    ws = wb.create_sheet("Failures")
    widths = {h: max(len(h) + 2, 12) for h in HEADERS}
    for r in rows[:200]:
        for h in HEADERS:
            widths[h] = min(max(widths[h], len(text_cell(r.get(h))) + 2), 60)
    for j, h in enumerate(HEADERS, start=1):
        ws.column_dimensions[get_column_letter(j)].width = widths[h]
    ws.freeze_panes = "B2"
    ws.auto_filter.ref = f"A1:{get_column_letter(len(HEADERS))}{len(rows) + 1}"
    bold = Font(bold=True)
    header = []
    for h in HEADERS:
        c = WriteOnlyCell(ws, value=h)
        c.font = bold
        header.append(c)
    ws.append(header)
    for r in rows:
        cells = []
        for h in HEADERS:
            v = r.get(h)
            if is_missing(v):
                cells.append(None)
            elif h in _DATE_COLUMNS or h in _TIME_COLUMNS:
                c = WriteOnlyCell(ws, value=v)
                c.number_format = "yyyy-mm-dd" if h in _DATE_COLUMNS else "yyyy-mm-dd hh:mm:ss"
                cells.append(c)
            else:
                cells.append(sanitise.xlsx_cell(ws, text_cell(v)))  # values come from files: never a formula
        ws.append(cells)
    with atomic_path(target, mode=0o600) as tmp:
        wb.save(tmp)
    return target
