"""Failure lists from XNAT / CSC as typed records, each with its source file and line.

Accepted shapes (all give the same records):
  * XNAT query-retrieve JSON: a list of query results `{criteria, relabelMap, studies: [...]}`
    (a result with no studies becomes one record from its criteria: the accession found nothing),
    or a bare list of study objects, or one object;
  * a CSV whose cells hold JSON (quotes doubled by CSV escaping);
  * the messy pasted text the SOP describes: doubled quotes, line breaks inside keys and values,
    extra keys, fields in any order, trailing or missing commas.

Nothing is dropped silently: text that could not be read as a record comes back as a problem
naming the file and lines.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.errors import InputFileError
from ingest.patients import InputProblem, normalise_hospital_id, read_text

from .dates import parse_date
from .lenient_json import LenientJSONError, LenientParser, undouble_quotes

STATUS_NO_STUDY_ID = "accession number wrong or not attached to images"
STATUS_NO_UID = "no images found"
STATUS_BOTH = "should have been ingested"
STATUSES = (STATUS_NO_STUDY_ID, STATUS_NO_UID, STATUS_BOTH)

#: Investigation categories the admin sets through the xlsx round trip.
CATEGORIES = (
    "Cancelled",
    "No images on PACS",
    "Scheduled but not completed",
    "Images under another study",
    "Available on PACS",
)


def _norm_key(k: str) -> str:
    return re.sub(r"[\s_\-\.]", "", str(k)).casefold()


# Normalised key → record field. Patient names and sex are read past, never kept.
_FIELD_KEYS = {
    "studyinstanceuid": "study_uid",
    "studyuid": "study_uid",
    "uid": "study_uid",
    "accessionnumber": "accession",
    "accession": "accession",
    "accessionno": "accession",
    "studyid": "study_id",
    "studydate": "study_date",
    "date": "study_date",
    "studydescription": "description",
    "description": "description",
    "modalitiesinstudy": "modalities",
    "modalities": "modalities",
    "modality": "modalities",
    "patientid": "hospital_id",
    "hospitalid": "hospital_id",
}
_IGNORED_KEYS = {"patientname", "name", "sex", "patientsex", "birthdate", "patientbirthdate", "referringphysicianname"}
_STUDY_MARKERS = {"study_uid", "accession", "study_id"}


@dataclass(frozen=True)
class FailureRecord:
    """One study XNAT could not ingest, as the failure list describes it."""

    study_uid: str = ""
    accession: str = ""
    study_id: str = ""
    hospital_id: str = ""
    study_date: dt.date | None = None
    description: str = ""
    modalities: tuple[str, ...] = ()
    source_file: str = ""
    source_line: int = 0

    @property
    def status(self) -> str:
        if not self.study_id:
            return STATUS_NO_STUDY_ID
        if not self.study_uid:
            return STATUS_NO_UID
        return STATUS_BOTH

    @property
    def key(self) -> str:
        """De-duplication key: the StudyInstanceUID, else the accession, else the study ID."""
        if self.study_uid:
            return f"uid:{self.study_uid}"
        if self.accession:
            return f"acc:{self.accession}"
        if self.study_id:
            return f"sid:{self.study_id}"
        return f"row:{self.hospital_id}:{self.study_date}:{self.description}"

    def same_study(self) -> tuple:
        """Everything but the provenance, for comparing parses of different file shapes."""
        return (self.study_uid, self.accession, self.study_id, self.hospital_id, self.study_date,
                self.description, self.modalities)


@dataclass
class ParseResult:
    records: list[FailureRecord] = field(default_factory=list)
    problems: list[InputProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # harmless oddities (unknown keys), not data loss


def parse_failure_file(path: Path) -> ParseResult:
    """Read any of the accepted shapes from a file.

    Raises:
        InputFileError: the file is missing. An empty file is a problem in the result, not a raise,
            so one bad file in a batch does not stop the others.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "file not found")
    raw = path.read_bytes()
    result = ParseResult()
    try:
        raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        result.notes.append(f"{path}: not UTF-8; read as Windows-1252")
    text = read_text(path)
    if not text.strip():
        result.problems.append(InputProblem(str(path), 1, "file is empty: no failure records"))
        return result
    parse_failure_text(text, str(path), result, csv_hint=path.suffix.lower() == ".csv")
    return result


def parse_failure_text(text: str, where: str, result: ParseResult | None = None, csv_hint: bool = False) -> ParseResult:
    result = result or ParseResult()
    text = text.lstrip("\ufeff")
    # A .csv name is only a hint: JSON saved under that name is still read as JSON.
    if (csv_hint and not text.lstrip()[:1] in ("[", "{")) or _looks_like_json_csv(text):
        _parse_csv(text, where, result)
    else:
        _scan(undouble_quotes(text), where, 0, result)
    return result


def _looks_like_json_csv(text: str) -> bool:
    """A CSV of JSON cells: a cell that opens with `"{` or `"[` and doubled quotes inside."""
    return bool(re.search(r'(^|,)\s*"\s*[\[{]\s*""', text, re.M))


def _parse_csv(text: str, where: str, result: ParseResult) -> None:
    reader = csv.reader(io.StringIO(text))
    prev_end = 0
    for row in reader:
        start_line = prev_end + 1
        prev_end = reader.line_num
        cells = [c for c in row if c.strip()]
        if not cells:
            continue
        json_cells = [c for c in cells if "{" in c or "[" in c]
        if not json_cells:
            if start_line == 1 and len(result.records) == 0:
                continue  # a header row
            result.problems.append(
                InputProblem(where, start_line, "CSV row holds no JSON object; row skipped")
            )
            continue
        for cell in json_cells:
            # Inside a CSV cell the quoting is already undone; undouble again for double-escaped pastes.
            _scan(undouble_quotes(cell), where, start_line - 1, result)


_PUNCT_ONLY = re.compile(r"""^(\s|[\[\]{}(),:;"'`]|(["'][A-Za-z_][\w ]*["']\s*:))*$""")


def _scan(text: str, where: str, line_offset: int, result: ParseResult) -> None:
    """Parse every value in `text`; resume after a failure at the next bracket.

    Successful values that hold study records cover their span; everything else that is not
    punctuation or a bare key is reported with its lines, together with the parse error met there.
    """
    p = LenientParser(text)
    covered: list[tuple[int, int]] = []
    errors: list[tuple[int, str]] = []
    i, n = 0, len(text)
    while i < n:
        j = _next_open(text, i)
        if j < 0:
            break
        try:
            loc = p.parse_at(j)
        except LenientJSONError as exc:
            errors.append((exc.pos, str(exc)))
            i = j + 1
            continue
        before = len(result.records)
        _walk(loc.value, p, loc.start, where, line_offset, result)
        if len(result.records) > before:
            covered.append((loc.start, loc.end))
        i = loc.end
    # Report uncovered text that carries data.
    pos = 0
    for a, b in covered + [(n, n)]:
        if a > pos:
            chunk = text[pos:a]
            if not _PUNCT_ONLY.match(chunk) and not _only_non_study_objects(chunk):
                first = pos + (len(chunk) - len(chunk.lstrip()))
                last = pos + len(chunk.rstrip())
                l1, l2 = p.line_of(first) + line_offset, p.line_of(max(first, last - 1)) + line_offset
                errs = [f"line {p.line_of(e) + line_offset}: {m}" for e, m in errors if pos <= e <= a]
                span = f"lines {l1}-{l2}" if l2 > l1 else f"line {l1}"
                detail = f" ({errs[0]})" if errs else ""
                result.problems.append(
                    InputProblem(where, l1, f"could not read a failure record from {span}{detail}; text kept out of the import")
                )
        pos = max(pos, b)


def _next_open(text: str, i: int) -> int:
    a, b = text.find("{", i), text.find("[", i)
    if a < 0:
        return b
    if b < 0:
        return a
    return min(a, b)


def _only_non_study_objects(chunk: str) -> bool:
    """True when the chunk parses fully into values that hold no study keys (e.g. `criteria`)."""
    try:
        p = LenientParser(chunk)
        i = _next_open(chunk, 0)
        rest = chunk
        values = []
        while i >= 0:
            loc = p.parse_at(i)
            values.append(loc.value)
            rest = rest.replace(chunk[loc.start:loc.end], " ", 1)
            i = _next_open(chunk, loc.end)
        return bool(values) and bool(_PUNCT_ONLY.match(rest)) and not any(_has_study(v) for v in values)
    except LenientJSONError:
        return False


def _has_study(v: Any) -> bool:
    if isinstance(v, dict):
        keys = {_FIELD_KEYS.get(_norm_key(k)) for k in v}
        return bool(keys & _STUDY_MARKERS) or any(_has_study(x) for x in v.values())
    if isinstance(v, list):
        return any(_has_study(x) for x in v)
    return False


def _walk(value: Any, p: LenientParser, start: int, where: str, line_offset: int, result: ParseResult) -> None:
    """Find study objects in a parsed value: lists of studies, query results, single studies."""
    line = p.line_of(start) + line_offset
    if isinstance(value, list):
        for item in value:
            _walk(item, p, p.obj_start.get(id(item), start), where, line_offset, result)
        return
    if not isinstance(value, dict):
        return
    norm = {_norm_key(k): (k, v) for k, v in value.items()}
    if "studies" in norm:
        studies = norm["studies"][1]
        if isinstance(studies, list) and studies:
            _walk(studies, p, start, where, line_offset, result)
            return
        crit = norm.get("criteria", (None, None))[1]
        if isinstance(crit, dict) and _has_study(crit):
            result.records.append(_record(crit, where, line, result))
            result.notes.append(f"{where}:{line}: query returned no studies; recorded from its criteria")
        return
    if _has_study({k: v for k, v in value.items() if not isinstance(v, (dict, list)) or _norm_key(k) in ("modalitiesinstudy", "modalities")}):
        result.records.append(_record(value, where, line, result))
        return
    for k, v in value.items():  # a wrapper object: look inside
        if isinstance(v, (dict, list)) and _norm_key(k) not in ("patient", "criteria", "relabelmap"):
            _walk(v, p, start, where, line_offset, result)


def _clean_id(v: Any) -> str:
    """IDs and UIDs: every whitespace (broken line wraps) removed; floats like 123.0 undone."""
    if v is None:
        return ""
    s = re.sub(r"\s+", "", str(v)).strip("\"'")
    m = re.fullmatch(r"(\d+)\.0+", s)
    return m.group(1) if m else s


def _record(obj: dict, where: str, line: int, result: ParseResult) -> FailureRecord:
    fields: dict[str, Any] = {}
    unknown: list[str] = []
    for k, v in obj.items():
        nk = _norm_key(k)
        if nk == "patient" and isinstance(v, dict):
            for pk, pv in v.items():
                if _norm_key(pk) in ("id", "patientid") and pv not in (None, ""):
                    fields.setdefault("hospital_id", pv)
            continue
        f = _FIELD_KEYS.get(nk)
        if f is None:
            if nk not in _IGNORED_KEYS and nk not in ("relabelmap", "criteria", "pacsid"):
                unknown.append(re.sub(r"\s+", "", str(k))[:40])
            continue
        fields[f] = v
    if unknown:
        result.notes.append(f"{where}:{line}: unknown keys kept out of the record: {', '.join(sorted(set(unknown)))}")
    date = None
    raw_date = fields.get("study_date")
    if raw_date not in (None, ""):
        try:
            date = parse_date(re.sub(r"\s+", "", str(raw_date)))
        except ValueError as exc:
            result.problems.append(InputProblem(where, line, f"studyDate: {exc}; record kept without a date"))
    mods = fields.get("modalities")
    if isinstance(mods, str):
        mods = [m for m in re.split(r"[\\,/\s]+", mods) if m]
    elif not isinstance(mods, list):
        mods = []
    return FailureRecord(
        study_uid=_clean_id(fields.get("study_uid")),
        accession=_clean_id(fields.get("accession")),
        study_id=_clean_id(fields.get("study_id")),
        hospital_id=normalise_hospital_id(_clean_id(fields.get("hospital_id"))),
        study_date=date,
        description=re.sub(r"\s+", " ", str(fields.get("description") or "")).strip(),
        modalities=tuple(str(m).strip().upper() for m in mods if str(m).strip()),
        source_file=where,
        source_line=line,
    )


def parse_failure_files(paths: Iterable[Path]) -> ParseResult:
    total = ParseResult()
    for path in paths:
        try:
            r = parse_failure_file(path)
        except InputFileError as exc:
            total.problems.append(InputProblem(str(path), 0, str(exc)))
            continue
        total.records.extend(r.records)
        total.problems.extend(r.problems)
        total.notes.extend(r.notes)
    return total
