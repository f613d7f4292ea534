"""The EDW outbox: the master sheet as xlsx and CSV with a dated name, written atomically.

The EDW polls a shared folder; it must never pick up half a file, so each file is written to a
temp name beside the target and renamed (ingest.atomic). The xlsx carries real date cells, a
frozen header, filters, sensible column widths and a Provenance sheet saying which run and
inputs produced it, so a number in the EDW can be traced back.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from ingest.atomic import atomic_path

from . import sanitise
from .xlsx_stream import ROWS_PER_BLOCK, Sheet, encoded, flagged, write_workbook

MASTER_STEM = "master-availability"
DATE_FORMAT = "yyyy-mm-dd"


def dated_name(stem: str, day: dt.date, suffix: str) -> str:
    return f"{stem}-{day.isoformat()}{suffix}"


def write_csv(table: pd.DataFrame, target: Path) -> Path:
    """UTF-8 CSV, dates as ISO text; markers and IDs exactly as in the table (never floats).

    Quoting as the csv module's QUOTE_MINIMAL does it. Written a block of rows at a time with each
    column factorised, so a distinct value is formatted once (see reporting/xlsx_stream.py for why).
    """
    cols = list(table.columns)
    with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8", newline="") as out:
        out.write(",".join(_csv_text(str(c)) for c in cols) + "\n")  # sanitised in _csv_text
        if cols:
            texts = encoded(table).texts(lambda _j, v: _csv_value(v), "", _csv_column)
            for start in range(0, len(table), ROWS_PER_BLOCK):
                rows = texts.block(start, min(start + ROWS_PER_BLOCK, len(table))).tolist()
                out.write("".join(",".join(r) + "\n" for r in rows))
    return target


def _csv_value(v: object) -> str:
    """One distinct value as CSV text (exact types first: this runs once per distinct value)."""
    t = type(v)
    if t is dt.date:
        return v.isoformat()
    if t is int:
        return str(v)
    if t is str:
        return _csv_text(v)
    return _csv_text(_csv_cell(v))


def _csv_cell(v: object) -> object:
    if v is None or v is pd.NaT or v is pd.NA or (isinstance(v, float) and v != v):
        return ""  # a missing value is an empty cell, never `nan` / `NaT`
    if isinstance(v, pd.Timestamp):
        v = v.to_pydatetime()
    if isinstance(v, dt.datetime):
        return v.isoformat(sep=" ")
    if isinstance(v, dt.date):
        return v.isoformat()
    return v


def _csv_column(_j: int, col, _repeated):
    """Rows a..b of a text column: the table's own strings; the few a regex scan flags (control
    characters, lone surrogates, `,` or `"`) are sanitised and quoted."""
    items = col.tolist()
    fixes = {int(i): _csv_text(items[i]) for i in flagged(items, _CSV_SPECIAL)}
    rows = sorted(fixes)

    def cells(a: int, b: int):
        out = col[a:b].reshape(-1, 1).copy() if rows else col[a:b].reshape(-1, 1)
        for i in rows:
            if a <= i < b:
                out[i - a, 0] = fixes[i]
        return out

    return cells


# what `_csv_text` changes: quoting, and sanitise's control characters (NUL is found by flagged itself)
_CSV_SPECIAL = re.compile(r'[,"\r\n\x01-\x08\x0b-\x1f\x7f\ufffe\uffff\ud800-\udfff]')


def _csv_text(v: object) -> str:
    """One field as the csv module writes it after `sanitise.csv_value` (control characters and lone
    surrogates replaced; floats as repr; quoted when it holds , or ")."""
    s = repr(v) if isinstance(v, float) else sanitise.csv_value(str(v))
    if _CSV_SPECIAL.search(s):
        return '"' + s.replace('"', '""') + '"'
    return s


def write_xlsx(
    sheets: Sequence[tuple[str, pd.DataFrame]],
    target: Path,
    provenance: Mapping[str, object] | None = None,
    int_columns: Sequence[str] = (),
) -> Path:
    """One workbook; each table gets a bold frozen header, filters and widths; then Provenance.

    Written by reporting/xlsx_stream.py (a column at a time, distinct values formatted once):
    100,000 rows × 500 columns in seconds, where openpyxl's write-only mode took half an hour.
    Columns named in `int_columns` turn digit strings into numbers.
    """
    out = []
    for title, table in sheets:
        cols = list(table.columns)
        widths = [min(max(len(str(c)), 10) + 2, 60) for c in cols]
        sample = table.head(200)
        for j, c in enumerate(cols):
            for v in sample[c]:
                widths[j] = min(max(widths[j], len(_text(v)) + 2), 60)
        out.append(Sheet(title, table, number_columns=int_columns, widths=widths))
    if provenance is not None:
        rows = [[str(k), _xlsx_value(v) if not isinstance(v, (list, tuple, dict)) else _text(v)]
                for k, v in provenance.items()]
        out.append(Sheet("Provenance", pd.DataFrame(rows, columns=["key", "value"], dtype=object), freeze=False,
                         autofilter=False, widths=[28, 90]))
    with atomic_path(target) as tmp:
        write_workbook(tmp, out)
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
