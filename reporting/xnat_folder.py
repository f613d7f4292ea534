"""The SOP's hand-made inputs: a dated folder of eight XNAT session CSVs and side files.

Before rtlake, the admin downloaded MR.csv, CT.csv, PET.csv, CR.csv, DX.csv, RF.csv, SR.csv and
XA.csv from XNAT's search pages (five columns: Subject, Date, then three per-type columns) plus
`reference_dates.csv`, `PACs-failures.txt` and `HospitalID-NHSNumber.csv`. This reads that folder
into the same long table the catalog path produces, so sites can switch over gradually. The
three per-type columns go, by position, to the sheet's ID / UID / Scans fields, as the SOP's own
layout did. Every bad row is a problem with file and line; a row with a usable subject is kept
even when its date is unreadable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ingest.errors import InputFileError
from ingest.patients import InputProblem, read_csv_rows

from .dates import parse_date
from .master import LONG_COLUMNS, SOP_MODALITIES
from .subjects import normalise_subject

FAILURE_FILE_NAMES = ("PACs-failures.txt", "PACS-failures.txt", "failures.json", "failures.csv")


@dataclass
class FolderInputs:
    sessions: pd.DataFrame
    reference_dates: Path | None
    failure_files: list[Path] = field(default_factory=list)
    cohort: Path | None = None
    problems: list[InputProblem] = field(default_factory=list)


def _ci(folder: Path, name: str) -> Path | None:
    """Find a file by name ignoring case (downloads are named by hand)."""
    target = name.casefold()
    for p in folder.iterdir():
        if p.is_file() and p.name.casefold() == target:
            return p
    return None


def read_session_csv(path: Path, modality: str, problems: list[InputProblem]) -> list[dict]:
    try:
        header, rows = read_csv_rows(path)
    except InputFileError as exc:
        problems.append(InputProblem(str(path), exc.line or 1, str(exc).split(": ", 1)[-1]))
        return []
    if len(header) < 2:
        problems.append(InputProblem(str(path), 1, f"expected 5 columns (Subject, Date, ...), found {len(header)}"))
        return []
    out = []
    for line, cells in rows:
        if len(cells) < len(header):
            problems.append(InputProblem(str(path), line,
                                         f"row has {len(cells)} of {len(header)} columns; missing ones left blank"))
        cells = cells + [""] * (5 - len(cells))
        try:
            subject = normalise_subject(cells[0])
        except ValueError as exc:
            problems.append(InputProblem(str(path), line, f"Subject: {exc}; kept as written"))
            subject = cells[0].strip()
        if not subject:
            problems.append(InputProblem(str(path), line, "blank Subject; row skipped"))
            continue
        try:
            date = parse_date(cells[1])
        except ValueError as exc:
            problems.append(InputProblem(str(path), line, f"Date: {exc}; session kept without a date"))
            date = None
        out.append({
            "subject": subject, "modality": modality, "session": cells[2].strip() or None, "date": date,
            "session_id": cells[2].strip() or None, "uid": cells[3].strip() or None,
            "scans": cells[4].strip() or None, "source": f"{path.name}:{line}",
        })
    return out


def read_xnat_folder(folder: Path) -> FolderInputs:
    """Read the SOP folder; missing or unreadable files become problems, never a crash."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileError(folder, "not a folder")
    problems: list[InputProblem] = []
    rows: list[dict] = []
    for mod in SOP_MODALITIES:
        p = _ci(folder, f"{mod}.csv")
        if p is None:
            problems.append(InputProblem(str(folder / f"{mod}.csv"), 0, "file missing; no sessions of this type"))
            continue
        rows.extend(read_session_csv(p, mod, problems))
    sessions = pd.DataFrame(rows, columns=list(LONG_COLUMNS))
    failures = [p for n in FAILURE_FILE_NAMES if (p := _ci(folder, n)) is not None]
    failures = list(dict.fromkeys(failures))
    return FolderInputs(
        sessions=sessions,
        reference_dates=_ci(folder, "reference_dates.csv"),
        failure_files=failures,
        cohort=_ci(folder, "HospitalID-NHSNumber.csv"),
        problems=problems,
    )
