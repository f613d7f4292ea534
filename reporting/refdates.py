"""The reference dates CSV: one RT start date per subject (`Subject,Reference Date`).

Subjects are NHS numbers or `NN_<hospital id>`; spreadsheet round trips turn the former into
floats (`9434765919.0`) or add spaces, so each is normalised the same way as the cohort list.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from ingest.errors import InputFileError
from ingest.patients import InputProblem, _find_column, read_csv_rows

from .subjects import normalise_subject


@dataclass
class ReferenceDates:
    dates: dict[str, dt.date] = field(default_factory=dict)
    problems: list[InputProblem] = field(default_factory=list)


def read_reference_dates(path: Path) -> ReferenceDates:
    """Read the reference dates; bad rows become problems naming file and line.

    Raises:
        InputFileError: file missing or empty, or no Subject / Reference Date column.
    """
    from .dates import parse_date

    header, rows = read_csv_rows(path)
    subj_col = _find_column(header, "Subject", "NHSNumber", "NHS Number")
    date_col = _find_column(header, "Reference Date", "ReferenceDate", "RT Start", "RT Start Date")
    if subj_col is None or date_col is None:
        raise InputFileError(path, f"need columns Subject and Reference Date (found: {', '.join(header)})", 1)
    out = ReferenceDates()
    for line, cells in rows:
        if max(subj_col, date_col) >= len(cells):
            out.problems.append(InputProblem(str(path), line, f"row has {len(cells)} cells, expected {len(header)}"))
            if subj_col >= len(cells):
                continue
        try:
            subject = normalise_subject(cells[subj_col])
        except ValueError as exc:
            out.problems.append(InputProblem(str(path), line, f"{exc}; subject kept as written"))
            subject = cells[subj_col].strip()
        if not subject:
            out.problems.append(InputProblem(str(path), line, "blank Subject; row skipped"))
            continue
        raw = cells[date_col] if date_col < len(cells) else ""
        try:
            date = parse_date(raw)
        except ValueError as exc:
            out.problems.append(InputProblem(str(path), line, f"Reference Date: {exc}"))
            continue
        if date is None:
            out.problems.append(InputProblem(str(path), line, "blank Reference Date"))
            continue
        prev = out.dates.get(subject)
        if prev is not None and prev != date:
            out.problems.append(
                InputProblem(str(path), line, f"second Reference Date for a subject ({date} vs {prev}); earliest kept")
            )
            date = min(prev, date)
        out.dates[subject] = date
    return out
