"""The admin's investigation round trip: failures out to an xlsx, categories back in.

XNAT cannot tell a cancelled order from a study with no images, so the admin looks each
failure up on PACS and writes down what she found. The workbook carries the history key in
column A; on import only the Category and Note columns are read, the category must be one of
the agreed five, and each bad row is reported by its row number instead of being guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from openpyxl import Workbook, load_workbook
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.datavalidation import DataValidation

from ingest.atomic import atomic_path
from ingest.catalog import Catalog
from ingest.errors import InputFileError
from ingest.patients import InputProblem

from .failures import CATEGORIES
from .sanitise import xlsx_row

SHEET = "Failures"
COLUMNS = [
    ("Key", "record_key", 34),
    ("Subject", "subject", 14),
    ("Hospital ID", "hospital_id", 12),
    ("Study Date", "study_date", 12),
    ("Accession", "accession", 14),
    ("Study ID", "study_id", 10),
    ("StudyInstanceUID", "study_uid", 40),
    ("Modalities", "modalities", 10),
    ("Description", "description", 36),
    ("Status", "status", 40),
    ("Category", "category", 28),
    ("Note", "category_note", 40),
    ("First Seen Run", "first_seen_run", 24),
    ("Last Seen Run", "last_seen_run", 24),
]


def export_investigation(catalog: Catalog, out: Path, include_placeholders: bool = False) -> int:
    """Write the failure history (placeholders left out unless asked) with a Category drop-down."""
    where = "" if include_placeholders else "WHERE NOT placeholder"
    rows = catalog.query_dicts(
        f"SELECT * FROM failure_history {where} ORDER BY category NULLS FIRST, subject, study_date, record_key"
    )
    wb = Workbook()
    ws = wb.active
    ws.title = SHEET
    ws.append([c[0] for c in COLUMNS])
    for cell in ws[1]:
        cell.font = Font(bold=True)
    for r in rows:
        ws.append(xlsx_row(ws, [r.get(col) for _, col, _ in COLUMNS]))
    for j, (_, col, width) in enumerate(COLUMNS, start=1):
        ws.column_dimensions[get_column_letter(j)].width = width
        if col == "study_date":
            for (cell,) in ws.iter_rows(min_row=2, min_col=j, max_col=j):
                cell.number_format = "yyyy-mm-dd"
    ws.freeze_panes = "B2"
    ws.auto_filter.ref = f"A1:{get_column_letter(len(COLUMNS))}{len(rows) + 1}"
    cat_col = get_column_letter(next(j for j, c in enumerate(COLUMNS, 1) if c[1] == "category"))
    dv = DataValidation(type="list", formula1='"' + ",".join(CATEGORIES) + '"', allow_blank=True,
                        showErrorMessage=True, error="Pick one of the investigation categories")
    ws.add_data_validation(dv)
    dv.add(f"{cat_col}2:{cat_col}{max(len(rows) + 1, 2)}")
    help_ws = wb.create_sheet("Categories")
    help_ws.append(["Category", "Meaning"])
    meanings = {
        "Cancelled": "The order was cancelled; there will never be images.",
        "No images on PACS": "The accession exists but PACS holds no images for it.",
        "Scheduled but not completed": "Booked, never performed (often a 2099-01-01 date).",
        "Images under another study": "The images were filed under another accession/study (say which in Note).",
        "Available on PACS": "Images exist on PACS but XNAT did not ingest them: worth a manual pull.",
    }
    for c in CATEGORIES:
        help_ws.append([c, meanings[c]])
    help_ws.column_dimensions["A"].width = 30
    help_ws.column_dimensions["B"].width = 80
    with atomic_path(Path(out)) as tmp:
        wb.save(tmp)
    return len(rows)


@dataclass
class InvestigationImport:
    updated: int = 0
    unchanged: int = 0
    problems: list[InputProblem] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.updated} categories updated, {self.unchanged} unchanged, {len(self.problems)} problems"


def _canonical_category(text: str) -> str | None:
    key = " ".join(text.split()).casefold()
    for c in CATEGORIES:
        if c.casefold() == key:
            return c
    return None


def import_investigation(catalog: Catalog, workbook: Path) -> InvestigationImport:
    """Read Category / Note back by Key; unknown keys or categories are problems naming the row.

    Raises:
        InputFileError: not an xlsx, or no Failures sheet with Key and Category columns.
    """
    path = Path(workbook)
    try:
        wb = load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001 - openpyxl raises many types for a bad file
        raise InputFileError(path, f"cannot open as xlsx ({type(exc).__name__})") from None
    if SHEET not in wb.sheetnames:
        raise InputFileError(path, f"no sheet named {SHEET!r}")
    rows = wb[SHEET].iter_rows(values_only=True)
    header = [str(h).strip() if h is not None else "" for h in next(rows, ())]
    try:
        k_i, c_i = header.index("Key"), header.index("Category")
    except ValueError:
        raise InputFileError(path, "sheet Failures needs Key and Category columns", 1) from None
    n_i = header.index("Note") if "Note" in header else None
    result = InvestigationImport()
    with catalog.transaction() as con:
        for rownum, row in enumerate(rows, start=2):
            key = row[k_i] if k_i < len(row) else None
            if key is None or str(key).strip() == "":
                if any(v not in (None, "") for v in row):
                    result.problems.append(InputProblem(str(path), rownum, "row has no Key; skipped"))
                continue
            key = str(key).strip()
            raw_cat = row[c_i] if c_i < len(row) else None
            note = row[n_i] if n_i is not None and n_i < len(row) else None
            note = None if note is None or str(note).strip() == "" else str(note).strip()
            cat = None
            if raw_cat is not None and str(raw_cat).strip():
                cat = _canonical_category(str(raw_cat))
                if cat is None:
                    result.problems.append(InputProblem(
                        str(path), rownum, f"unknown Category {str(raw_cat)[:40]!r} (allowed: {', '.join(CATEGORIES)})"))
                    continue
            have = con.execute(
                "SELECT category, category_note FROM failure_history WHERE record_key = ?", [key]).fetchone()
            if have is None:
                result.problems.append(InputProblem(str(path), rownum, "Key not in the failure history; skipped"))
                continue
            if (have[0], have[1]) == (cat, note):
                result.unchanged += 1
                continue
            con.execute("UPDATE failure_history SET category = ?, category_note = ? WHERE record_key = ?",
                        [cat, note, key])
            result.updated += 1
    wb.close()
    return result


def investigation_frame(catalog: Catalog) -> pd.DataFrame:
    return pd.DataFrame(catalog.query_dicts("SELECT * FROM failure_history WHERE NOT placeholder"))
