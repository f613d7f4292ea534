"""Hospital ID → NHS number → subject label, with every doubt reported and none guessed.

The cohort CSV is the authority; the catalog's `patients` table is what earlier runs filed. Both
are read as text (leading zeros kept, floats undone), NHS numbers are validated with mod-11, and
a patient without a trusted NHS number is `NN_<hospital id>` — the SOP's own answer for "no
trusted number". The rules (`resolve_cohort_rows`, usable by any reader of the cohort file):

* a hospital ID needs at least one letter or digit (`,,` or `-` is a spreadsheet slip, not an ID);
* one hospital ID with two *different* valid NHS numbers is a conflict: it could be someone
  else's number, so the patient is filed as `NN_<hospital id>` and the problem names both lines
  and both numbers; the same number spelled twice (`943 476 5919` / `9434765919`) is one mapping;
* a number Excel turned into scientific notation with digits lost (`9.99689E+9`) gets its own
  message (re-export the column as text); one with all ten digits (`4.857773457E+09`) is exact;
* one NHS number on two hospital IDs is reported (both kept: it may be one person with two IDs).

Problems that name NHS numbers carry a `public` text without them for logs and the console.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ingest.catalog import Catalog
from ingest.errors import InputFileError
from ingest.patients import (
    NN_PREFIX,
    Cohort,
    InputProblem,
    Patient,
    _find_column,
    normalise_hospital_id,
    normalise_nhs,
    read_csv_rows,
    subject_label,
)

EXCEL_CORRUPTED = ("Excel has corrupted this number (scientific notation, digits lost); "
                   "re-export the column as text")
_SCI = re.compile(r"(\d)(?:\.(\d+))?[eE]\+?(\d+)")
_BLANK = {"", "nan", "none", "null", "n/a", "na"}


@dataclass
class MappingProblem(InputProblem):
    """An input problem whose message names identifiers; `public` is the same without them."""

    public: str = ""


def public_text(p: InputProblem) -> str:
    """What a log line or the console may show for a problem."""
    return f"{p.path}:{p.line}: {getattr(p, 'public', '') or p.message}"


def hospital_id_ok(hospital_id: str) -> bool:
    return any(ch.isalnum() for ch in hospital_id)


def read_nhs(raw: object) -> tuple[str | None, str | None]:
    """(NHS number as 10 digits or None, problem message or None) for one cell."""
    text = "" if raw is None else str(raw).strip()
    if text.casefold() in _BLANK:
        return None, None
    compact = re.sub(r"[\s\-]", "", text)
    m = _SCI.fullmatch(compact)
    if m:
        digits, exp = m.group(1) + (m.group(2) or ""), int(m.group(3))
        if len(digits) != exp + 1 or exp != 9:
            return None, EXCEL_CORRUPTED
        compact = digits
    try:
        return normalise_nhs(compact), None
    except ValueError as exc:
        return None, str(exc)


def resolve_cohort_rows(path: str, rows: Iterable[tuple[int, object, object]]) -> Cohort:
    """The cohort from (line, hospital id cell, NHS number cell) triples, by the rules above."""
    problems: list[InputProblem] = []
    entries: dict[str, list[tuple[int, str | None, str | None]]] = defaultdict(list)  # hid → (line, nhs, problem)
    for line, raw_hid, raw_nhs in rows:
        hid = normalise_hospital_id(raw_hid)
        if not hid:
            problems.append(InputProblem(path, line, "blank HospitalID; row skipped"))
            continue
        if not hospital_id_ok(hid):
            problems.append(InputProblem(path, line, "HospitalID has no letter or digit; row skipped"))
            continue
        nhs, msg = read_nhs(raw_nhs)
        entries[hid].append((line, nhs, msg))
    cohort = Cohort(problems=problems)
    for hid, rows_of in entries.items():
        numbers: dict[str, int] = {}  # distinct valid numbers → first line
        for line, nhs, _ in rows_of:
            if nhs:
                numbers.setdefault(nhs, line)
        for line, _, msg in rows_of:
            if msg:
                kept = (f"the number on line {next(iter(numbers.values()))} is used" if len(numbers) == 1
                        else f"patient filed as {NN_PREFIX}<hospital id>")
                problems.append(InputProblem(path, line, f"{msg}; {kept}"))
        if len(numbers) > 1:
            (a, la), (b, lb) = list(numbers.items())[:2]
            more = f" and {len(numbers) - 2} more" if len(numbers) > 2 else ""
            problems.append(MappingProblem(
                path, lb,
                f"hospital ID has two different valid NHS numbers: {a} (line {la}) and {b} (line {lb}){more}; "
                f"neither is trusted: filed as {subject_label(hid, None)} until the cohort file is corrected",
                public=f"hospital ID has two different valid NHS numbers (lines {la} and {lb}){more}; "
                       f"filed as {NN_PREFIX}<hospital id> until the cohort file is corrected"))
            cohort.patients[hid] = Patient(hid, None)
        else:
            cohort.patients[hid] = Patient(hid, next(iter(numbers), None))
    holders: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for hid, p in cohort.patients.items():
        if p.nhs_number:
            line = min(ln for ln, nhs, _ in entries[hid] if nhs == p.nhs_number)
            holders[p.nhs_number].append((line, hid))
    for nhs, held in holders.items():
        held.sort()
        for line, _ in held[1:]:
            problems.append(MappingProblem(
                path, line, f"NHS number {nhs} also given to another hospital ID (line {held[0][0]}); both kept",
                public=f"NHS number also given to another hospital ID (line {held[0][0]}); both kept"))
    problems.sort(key=lambda p: p.line)
    return cohort


@dataclass
class NhsMapping:
    patients: dict[str, Patient] = field(default_factory=dict)
    problems: list[InputProblem] = field(default_factory=list)

    def subject_for(self, hospital_id: str) -> str:
        """The subject label for a hospital ID; `NN_<id>` when it has no (trusted) NHS number."""
        hid = normalise_hospital_id(hospital_id)
        p = self.patients.get(hid)
        return p.subject if p is not None else subject_label(hid, None)

    def nhs_for(self, hospital_id: str) -> str | None:
        p = self.patients.get(normalise_hospital_id(hospital_id))
        return p.nhs_number if p else None


def read_mapping(path: Path) -> NhsMapping:
    """Read HospitalID-NHSNumber.csv with every problem named by file and line.

    Raises:
        InputFileError: missing or empty file, or no HospitalID column.
    """
    header, rows = read_csv_rows(path)
    hid_col = _find_column(header, "HospitalID", "Hospital ID", "PatientID", "MRN")
    nhs_col = _find_column(header, "NHSNumber", "NHS Number", "NHS", "NHSNo")
    if hid_col is None:
        raise InputFileError(path, f"no HospitalID column (columns: {', '.join(header)})", 1)
    short = [InputProblem(str(path), line, f"row has {len(cells)} of {len(header)} columns; missing values taken as blank")
             for line, cells in rows if len(cells) < len(header)]

    def cell(cells: list[str], i: int | None) -> str:
        return cells[i] if i is not None and i < len(cells) else ""

    cohort = resolve_cohort_rows(str(path), ((line, cell(c, hid_col), cell(c, nhs_col)) for line, c in rows))
    problems = sorted(short + cohort.problems, key=lambda p: p.line)
    return NhsMapping(patients=dict(cohort.patients), problems=problems)


def load_mapping(cohort_path: Path | None, catalog: Catalog | None = None) -> NhsMapping:
    """The cohort file merged with the catalog's patients; the file wins, disagreements are problems."""
    mapping = NhsMapping()
    if cohort_path is not None and Path(cohort_path).is_file():
        try:
            mapping = read_mapping(Path(cohort_path))
        except InputFileError as exc:
            mapping.problems.append(InputProblem(str(cohort_path), exc.line or 0, str(exc).split(": ", 1)[-1]))
    if catalog is not None:
        for hid, nhs in catalog.execute("SELECT hospital_id, nhs_number FROM patients").fetchall():
            hid = normalise_hospital_id(hid)
            have = mapping.patients.get(hid)
            if have is None:
                mapping.patients[hid] = Patient(hid, nhs or None)
            elif nhs and have.nhs_number and nhs != have.nhs_number:
                mapping.problems.append(
                    InputProblem(str(cohort_path), 0, "cohort file and catalog give a hospital ID different NHS numbers; file used")
                )
    return mapping


def conflicts_by_nhs(mapping: NhsMapping) -> dict[str, list[str]]:
    """NHS numbers held by more than one hospital ID (for the report)."""
    by: dict[str, list[str]] = defaultdict(list)
    for p in mapping.patients.values():
        if p.nhs_number:
            by[p.nhs_number].append(p.hospital_id)
    return {k: sorted(v) for k, v in by.items() if len(v) > 1}
