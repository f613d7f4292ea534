"""A spreadsheet paste read as the grid it is: rows of cells, each cell with its first line.

Copying cells out of Excel or LibreOffice gives TAB-separated text in which every cell that holds
a quote, a separator or a line break is wrapped in quotes with its inner quotes doubled — the
"csv file of json code" the SOP describes. Reading such text with a regex loses records; here
Python's own CSV reader does the quoting (doubled quotes, cells over several lines,
skip-initial-space) in strict mode, so a row whose quoting is broken is *known* to be broken
instead of being read as something else. Broken rows come back as errors with their line span;
the caller reads those lines again as free text.

Two slips that strict CSV would refuse but people paste all the time are undone first: spaces
between a closing quote and the next separator (`"…"  <TAB> "…"`), and spaces after the last
closing quote of a line. Spaces before an opening quote are the reader's skip-initial-space.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Cell:
    text: str  # the cell's value with the spreadsheet's quoting undone
    line: int  # the line the cell starts on


@dataclass
class GridRow:
    first_line: int
    last_line: int
    cells: list[Cell] = field(default_factory=list)
    error: str | None = None  # set when the row's quoting is broken (cells then empty)

    @property
    def filled(self) -> list[Cell]:
        return [c for c in self.cells if c.text.strip()]


def _tidy(text: str, delimiter: str) -> str:
    """Drop spaces between a closing quote and the separator or the line end."""
    sep = re.escape(delimiter)
    return re.sub(rf'"[ ]+(?={sep}|$)', '"', text, flags=re.M)


def read_grid(text: str, delimiter: str) -> list[GridRow]:
    """Every row of `text` (newlines already `\\n`), blank rows included, in file order."""
    reader = csv.reader(io.StringIO(_tidy(text, delimiter)), delimiter=delimiter, quotechar='"',
                        doublequote=True, skipinitialspace=True, strict=True)
    rows: list[GridRow] = []
    done = 0  # lines consumed so far
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            rows.append(GridRow(done + 1, max(reader.line_num, done + 1), error=str(exc)))
            done = reader.line_num
            continue
        first = done + 1
        cells, line = [], first
        for v in values:
            cells.append(Cell(v, line))
            line += v.count("\n")
        rows.append(GridRow(first, max(reader.line_num, first), cells))
        done = reader.line_num
    return rows


_HEADER_CELL = re.compile(r"[A-Za-z][A-Za-z0-9 _\-./#()]*")


def looks_like_header(row: GridRow) -> bool:
    """Short column names (`json`, `Study JSON`, `Note`): no quotes, braces, colons or commas,
    at most three words each."""
    cells = row.filled
    return row.error is None and bool(cells) and all(
        len(c.text.strip()) <= 40 and _HEADER_CELL.fullmatch(c.text.strip()) and len(c.text.split()) <= 3
        for c in cells)
