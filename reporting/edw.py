"""The EDW outbox: the master sheet as xlsx and CSV with a dated name, written atomically.

The EDW polls a shared folder; it must never pick up half a file, so each file is written to a
temp name beside the target and renamed (ingest.atomic). The xlsx carries real date cells, a
frozen header, filters, sensible column widths and a Provenance sheet saying which run and
inputs produced it, so a number in the EDW can be traced back.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter

from ingest.atomic import atomic_path, write_text

from . import sanitise

MASTER_STEM = "master-availability"
DATE_FORMAT = "yyyy-mm-dd"


def dated_name(stem: str, day: dt.date, suffix: str) -> str:
    return f"{stem}-{day.isoformat()}{suffix}"


def write_csv(table: pd.DataFrame, target: Path) -> Path:
    """UTF-8 CSV, dates as ISO text; markers and IDs exactly as in the table (never floats)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([sanitise.csv_value(str(c)) for c in table.columns])
    for row in table.itertuples(index=False, name=None):
        w.writerow([sanitise.csv_value(_csv_cell(v)) for v in row])
    write_text(target, buf.getvalue())
    return target


def _csv_cell(v: object) -> object:
    if v is None or v is pd.NaT or v is pd.NA or (isinstance(v, float) and v != v):
        return ""  # a missing value is an empty cell, never `nan` / `NaT`
    if isinstance(v, dt.datetime):
        return v.isoformat(sep=" ")
    if isinstance(v, dt.date):
        return v.isoformat()
    return v


def write_xlsx(
    sheets: Sequence[tuple[str, pd.DataFrame]],
    target: Path,
    provenance: Mapping[str, object] | None = None,
    int_columns: Sequence[str] = (),
) -> Path:
    """One workbook; each table gets a bold frozen header, filters and widths; then Provenance.

    Written in openpyxl's streaming mode so a 100k-row sheet does not hold every cell object.
    Columns named in `int_columns` turn digit strings into numbers.
    """
    wb = Workbook(write_only=True)
    bold = Font(bold=True)
    as_int = set(int_columns)
    for title, table in sheets:
        ws = wb.create_sheet(title[:31])
        cols = list(table.columns)
        widths = [min(max(len(str(c)), 10) + 2, 60) for c in cols]
        sample = table.head(200)
        for j, c in enumerate(cols):
            for v in sample[c]:
                widths[j] = min(max(widths[j], len(_text(v)) + 2), 60)
        for j, wdt in enumerate(widths, start=1):
            ws.column_dimensions[get_column_letter(j)].width = wdt
        ws.freeze_panes = "B2" if len(cols) > 1 else "A2"
        if cols:
            ws.auto_filter.ref = f"A1:{get_column_letter(len(cols))}{max(len(table), 0) + 1}"
        header = []
        for c in cols:
            cell = WriteOnlyCell(ws, value=sanitise.xlsx_text(str(c)))
            cell.font = bold
            header.append(cell)
        ws.append(header)
        int_idx = [j for j, c in enumerate(cols) if c in as_int]
        for row in table.itertuples(index=False, name=None):
            values = [_xlsx_value(v) for v in row]
            for j in int_idx:
                v = values[j]
                if isinstance(v, str) and v.isdigit() and len(v) < 10:
                    values[j] = int(v)
            ws.append(sanitise.xlsx_row(ws, values))
    if provenance is not None:
        ws = wb.create_sheet("Provenance")
        ws.column_dimensions["A"].width = 28
        ws.column_dimensions["B"].width = 90
        ws.append([WriteOnlyCell(ws, value="key"), WriteOnlyCell(ws, value="value")])
        for k, v in provenance.items():
            ws.append(sanitise.xlsx_row(ws, [str(k), _xlsx_value(v) if not isinstance(v, (list, tuple, dict))
                                             else _text(v)]))
    with atomic_path(target) as tmp:
        wb.save(tmp)
    return target


def _xlsx_value(v: object) -> object:
    if v is None:
        return None
    if isinstance(v, float) and v != v:
        return None
    if isinstance(v, pd.Timestamp):
        return v.to_pydatetime()
    return v


def _text(v: object) -> str:
    if isinstance(v, (list, tuple)):
        return "; ".join(str(x) for x in v)
    if isinstance(v, dict):
        return "; ".join(f"{k}={x}" for k, x in v.items())
    if isinstance(v, dt.date):
        return v.isoformat()
    return "" if v is None else str(v)
