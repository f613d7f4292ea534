"""Rows out of a command: a table that fits the terminal, or CSV / JSON for scripts.

Every list-like command (`failures list`, `failures rates`, `status`, …) prints through `emit`,
so they all behave the same way:

- `table` (default): a table when its narrowest layout fits the terminal width; otherwise one
  block of `Header: value` lines per row (the record layout). Identifiers — UIDs, accessions,
  run ids — are never cut with an ellipsis, in either layout; only free text wraps at spaces.
- `csv`: a header of column keys, then one line per row (Python's csv dialect, "\\n" endings).
- `json`: a list of objects keyed by column key, values as they came (dates as ISO strings).

Output goes to stdout: it is the result. Messages about it belong on stderr.

    from ingest.output import Column, emit
    emit(rows, [Column("run_id", "Run"), Column("failed", "Failed", numeric=True)], fmt, title="Rates")
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

import typer

from reporting.sanitise import csv_value

FORMATS = ("table", "csv", "json")

CsvOpt = typer.Option(False, "--csv", help="Print CSV (header of column keys) instead of a table.")
JsonOpt = typer.Option(False, "--json", help="Print a JSON list of objects instead of a table.")


@dataclass(frozen=True)
class Column:
    """One output column. `key` reads the row and names the CSV/JSON field; `header` is shown in
    tables; `show` turns a value into table text (CSV/JSON keep the raw value); `numeric`
    right-aligns; `wrap` marks free text that may wrap at spaces (identifiers never do)."""

    key: str
    header: str | None = None
    numeric: bool = False
    wrap: bool = False
    show: Callable[[Any], str] | None = None

    @property
    def title(self) -> str:
        return self.header or self.key


def fmt_from_flags(as_csv: bool, as_json: bool) -> str:
    """The format chosen by `--csv` / `--json` (both at once is a usage error)."""
    if as_csv and as_json:
        raise typer.BadParameter("give --csv or --json, not both")
    return "csv" if as_csv else "json" if as_json else "table"


def emit(rows: Iterable[Mapping[str, Any]], columns: Sequence[Column | str], fmt: str = "table",
         title: str | None = None, file: IO[str] | None = None, width: int | None = None) -> None:
    """Print `rows` (mappings) in `fmt`; `width` defaults to the terminal's (or $COLUMNS)."""
    cols = [c if isinstance(c, Column) else Column(c) for c in columns]
    rows = list(rows)
    out = file or sys.stdout
    if fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow([c.key for c in cols])
        for r in rows:
            w.writerow([csv_value(_plain(r.get(c.key))) for c in cols])  # values from files: no raw controls
    elif fmt == "json":
        out.write(json.dumps([{c.key: _jsonable(r.get(c.key)) for c in cols} for r in rows], indent=2) + "\n")
    elif fmt == "table":
        _table(rows, cols, title, out, width)
    else:
        raise ValueError(f"unknown output format {fmt!r}; one of {', '.join(FORMATS)}")
    out.flush()


def _plain(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (dt.date, dt.datetime)):
        return v.isoformat()
    return str(v)


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (dt.date, dt.datetime)):
        return v.isoformat()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)


def _cell(c: Column, v: Any) -> str:
    if c.show is not None:
        return c.show(v)
    return _plain(v)


def _min_width(c: Column, cells: list[str]) -> int:
    """Narrowest a column may be: its longest unbreakable piece (a whole cell unless free text)."""
    header = max((len(w) for w in c.title.split()), default=1)  # headers may wrap at spaces
    if c.wrap:
        return max([header, *(len(w) for x in cells for w in x.split())])
    return max([header, *(len(x) for x in cells)])


def _table(rows: list[Mapping[str, Any]], cols: list[Column], title: str | None, out: IO[str],
           width: int | None) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=out, width=width, highlight=False, soft_wrap=False)
    width = console.width
    cells = [[_cell(c, r.get(c.key)) for c in cols] for r in rows]
    if not rows:
        out.write(f"{title + ': ' if title else ''}(none)\n")
        return
    # simple box: one space of padding each side, one separator between columns
    needed = sum(_min_width(c, [row[i] for row in cells]) for i, c in enumerate(cols)) + 3 * len(cols) + 1
    if needed <= width:
        t = Table(title=Text(title) if title else None, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for i, c in enumerate(cols):
            # identifiers: no_wrap keeps rich from narrowing them (the fit check above leaves room)
            t.add_column(Text(c.title), justify="right" if c.numeric else "left", no_wrap=not c.wrap,
                         overflow="fold")
        for row in cells:
            t.add_row(*(Text(x) for x in row))
        console.print(t)
        return
    # record layout: one "Header: value" line per field, a blank line between rows
    label = max(len(c.title) for c in cols) + 1
    if title:
        out.write(f"{title}\n\n")
    for n, row in enumerate(cells):
        if n:
            out.write("\n")
        for c, x in zip(cols, row):
            out.write(f"{(c.title + ':').ljust(label)} {x}\n")
