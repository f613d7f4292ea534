"""Who is in the cohort: hospital IDs, NHS numbers, subject labels, the deceased.

Spreadsheet tools mangle these inputs (NHS numbers as floats like `9434765919.0`, leading
zeros dropped from IDs, BOMs, Windows code pages), and the old scripts broke on blank NHS
numbers. Here every value is read as text, NHS numbers are normalised and checked with the
mod-11 check digit, and a patient without a valid number becomes `NN_<hospital id>` — the
subject label the lake already uses for them. Each problem names the file and row.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputFileError

NN_PREFIX = "NN_"


@dataclass(frozen=True)
class Patient:
    hospital_id: str
    nhs_number: str | None

    @property
    def subject(self) -> str:
        return subject_label(self.hospital_id, self.nhs_number)


@dataclass
class InputProblem:
    """A row that could not be used as given; kept so nothing is dropped silently."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass
class Cohort:
    patients: dict[str, Patient] = field(default_factory=dict)
    problems: list[InputProblem] = field(default_factory=list)


def nhs_check_digit_ok(digits: str) -> bool:
    """Modulus-11 check used by NHS numbers (weights 10..2; 11 → 0; 10 → never valid)."""
    if len(digits) != 10 or not digits.isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1)))
    check = 11 - total % 11
    if check == 11:
        check = 0
    return check != 10 and check == int(digits[9])


_FLOATY = re.compile(r"^(\d+)\.0+$")
_SCI = re.compile(r"^\d(\.\d+)?[eE]\+?\d+$")


def normalise_nhs(raw: object) -> str | None:
    """Text of an NHS number without spaces/dashes, or None when blank.

    Raises:
        ValueError: the value is not 10 digits or fails the check digit (message says which).
    """
    if raw is None:
        return None
    text = str(raw).strip()
    if text == "" or text.lower() in {"nan", "none", "null", "n/a", "na"}:
        return None
    text = re.sub(r"[\s\-]", "", text)
    m = _FLOATY.match(text)
    if m:
        text = m.group(1)
    elif _SCI.match(text):
        text = str(int(float(text)))
    if not text.isdigit():
        raise ValueError("NHS number has characters other than digits, spaces and dashes")
    if len(text) != 10:
        raise ValueError(f"NHS number has {len(text)} digits, expected 10")
    if not nhs_check_digit_ok(text):
        raise ValueError("NHS number fails the mod-11 check digit")
    return text


def normalise_hospital_id(raw: object) -> str:
    text = "" if raw is None else str(raw).strip()
    m = _FLOATY.match(text)
    return m.group(1) if m else text


def subject_label(hospital_id: str, nhs_number: str | None) -> str:
    return nhs_number if nhs_number else f"{NN_PREFIX}{hospital_id}"


def read_text(path: Path) -> str:
    """Decode a CSV the way Excel users produce them: UTF-8 (BOM or not), else Windows-1252."""
    data = Path(path).read_bytes()
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):  # Excel's "Unicode Text" export is UTF-16 with a BOM
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            pass
    for enc in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(enc)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def _find_column(header: list[str], *names: str) -> int | None:
    norm = [re.sub(r"[\s_\-]", "", h).casefold() for h in header]
    for name in names:
        key = re.sub(r"[\s_\-]", "", name).casefold()
        if key in norm:
            return norm.index(key)
    return None


def read_csv_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, cells) pairs; blank lines skipped; raises InputFileError when empty."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "file not found")
    text = read_text(path)
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text), dialect)
    try:
        rows = [(reader.line_num, r) for r in reader]
    except csv.Error as exc:  # binary data, a workbook saved as .csv, a stray quote...
        raise InputFileError(path, f"not a readable CSV text file ({exc})", reader.line_num + 1) from None
    rows = [(n, r) for n, r in rows if any(c.strip() for c in r)]
    if not rows:
        raise InputFileError(path, "file is empty")
    header = [c.strip() for c in rows[0][1]]
    return header, rows[1:]


def read_cohort(path: Path) -> Cohort:
    """Read `HospitalID-NHSNumber.csv` (columns HospitalID, NHSNumber in any order/case).

    Raises:
        InputFileError: missing file, empty file or no HospitalID column.
    """
    header, rows = read_csv_rows(path)
    hid_col = _find_column(header, "HospitalID", "Hospital ID", "PatientID", "MRN")
    nhs_col = _find_column(header, "NHSNumber", "NHS Number", "NHS", "NHSNo")
    if hid_col is None:
        raise InputFileError(path, f"no HospitalID column (columns: {', '.join(header)})", 1)
    # One rule for the cohort everywhere (lake subjects and the master sheet alike): two different valid
    # NHS numbers for one hospital ID are never resolved by guessing; see reporting.nhs.
    from reporting.nhs import resolve_cohort_rows

    return resolve_cohort_rows(str(path), ((ln, c[hid_col] if hid_col < len(c) else "",
                                            c[nhs_col] if nhs_col is not None and nhs_col < len(c) else "")
                                           for ln, c in rows))


def read_id_list(path: Path, *column_names: str) -> tuple[set[str], list[InputProblem]]:
    """A set of hospital IDs from one column of a CSV (e.g. the EDW deceased extract)."""
    header, rows = read_csv_rows(path)
    col = _find_column(header, *(column_names or ("HospitalID",)))
    if col is None:
        raise InputFileError(path, f"no {column_names[0] if column_names else 'HospitalID'} column", 1)
    ids: set[str] = set()
    problems: list[InputProblem] = []
    for line, cells in rows:
        value = normalise_hospital_id(cells[col] if col < len(cells) else "")
        if value:
            ids.add(value)
        else:
            problems.append(InputProblem(str(path), line, "blank ID; row skipped"))
    return ids, problems


def read_deceased(path: Path) -> tuple[set[str], list[InputProblem]]:
    return read_id_list(path, "HospitalID", "Hospital ID", "PatientID", "MRN")
