"""Hospital ID → NHS number → subject label, on top of `ingest.patients`.

The cohort CSV is the authority; the catalog's `patients` table is what earlier runs filed. Both
are read as text (leading zeros kept, floats undone), NHS numbers are validated with mod-11, and
a patient without a valid number is `NN_<hospital id>`. Disagreements are reported, never
resolved silently: one hospital ID with two NHS numbers, one NHS number on two hospital IDs, and
the cohort file disagreeing with what the catalog already holds.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ingest.catalog import Catalog
from ingest.errors import InputFileError
from ingest.patients import (
    InputProblem,
    Patient,
    _find_column,
    normalise_hospital_id,
    normalise_nhs,
    read_cohort,
    read_csv_rows,
    subject_label,
)


@dataclass
class NhsMapping:
    patients: dict[str, Patient] = field(default_factory=dict)
    problems: list[InputProblem] = field(default_factory=list)

    def subject_for(self, hospital_id: str) -> str:
        """The subject label for a hospital ID; `NN_<id>` when it has no (valid) NHS number."""
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
    cohort = read_cohort(path)
    mapping = NhsMapping(patients=dict(cohort.patients), problems=list(cohort.problems))
    mapping.problems.extend(_row_checks(path))
    return mapping


def _row_checks(path: Path) -> list[InputProblem]:
    """What read_cohort lets pass quietly: short rows, and one NHS number on two hospital IDs
    (a merge or a typo; both kept, reported)."""
    header, rows = read_csv_rows(path)
    hid_col = _find_column(header, "HospitalID", "Hospital ID", "PatientID", "MRN")
    nhs_col = _find_column(header, "NHSNumber", "NHS Number", "NHS", "NHSNo")
    if hid_col is None or nhs_col is None:
        return []
    first: dict[str, tuple[str, int]] = {}
    out: list[InputProblem] = []
    for line, cells in rows:
        if len(cells) < len(header):
            out.append(InputProblem(str(path), line,
                                    f"row has {len(cells)} of {len(header)} columns; missing values taken as blank"))
        if max(hid_col, nhs_col) >= len(cells):
            continue
        hid = normalise_hospital_id(cells[hid_col])
        try:
            nhs = normalise_nhs(cells[nhs_col])
        except ValueError:
            continue
        if not hid or not nhs:
            continue
        seen = first.setdefault(nhs, (hid, line))
        if seen[0] != hid:
            out.append(InputProblem(str(path), line, f"NHS number also given to another hospital ID (line {seen[1]})"))
    return out


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
