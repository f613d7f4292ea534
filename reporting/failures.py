"""Failure lists from XNAT / CSC as typed records, each with its source file and first line.

The reading goes in three steps, each for a shape people really send:

1. **JSON** (the text starts with `[` or `{`): XNAT DQR query answers
   `{criteria, relabelMap, studies: [...]}`, bare lists of study objects, one object; minified or
   pretty; integer IDs and dates, Jackson epoch-millisecond and `[y, m, d]` dates, UK dates.
2. **A spreadsheet paste** (anything else) is read as a grid first (`paste_grid`: TAB, comma or
   semicolon separated, cells CSV-quoted with doubled quotes, cells over several lines). Each row
   is one JSON study object per cell, or a set of `"key": value` cells making up one study (keys
   in any order, `id` / `patient.id` for the hospital ID, extra keys, empty trailing cells).
   The separator that reads the most records with the fewest unreadable fragments wins.
3. **Free text**: rows the grid cannot read (broken quoting, prose, JSON typed over several
   lines without cell quotes) are read again, run by run, as text in which JSON objects are
   looked for with a forgiving parser (`lenient_json`).

Nothing is dropped silently: every piece of text that is not a record is a problem naming its
file, line and length (never its content, which may hold identifiers), and reading resumes
after it. A record cut off part-way is never "repaired" into one with a truncated accession.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.errors import InputFileError
from ingest.patients import NN_PREFIX, InputProblem, normalise_hospital_id, read_text

from .dates import parse_date
from .lenient_json import LenientJSONError, LenientParser, undouble_quotes
from .nhs import read_nhs
from .paste_grid import GridRow, looks_like_header, read_grid
from .subjects import normalise_subject

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

#: Epoch-millisecond dates (Jackson's default for java.util.Date) are a moment in time; the
#: hospital's day is taken in its own zone, so a midnight in British Summer Time (23:00 UTC the
#: day before) stays on its day.
LOCAL_ZONE = "Europe/London"

GRID_DELIMITERS = ("\t", ",", ";")


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
    "subject": "subject",
}
_IGNORED_KEYS = {"patientname", "name", "sex", "patientsex", "birthdate", "patientbirthdate", "referringphysicianname",
                 "relabelmap", "criteria", "pacsid", "session", "projectid"}
_STUDY_MARKERS = {"study_uid", "accession", "study_id"}
_EMPTY_WORDS = {"nan", "none", "null", "nat", "undefined", "n/a"}


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
    subject: str = ""  # a subject the list itself names (DQR relabelMap.Subject); the cohort still decides

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
    notes: list[str] = field(default_factory=list)  # harmless oddities (unknown keys, a header row), not data loss

    def extend(self, other: ParseResult) -> None:
        self.records.extend(other.records)
        self.problems.extend(other.problems)
        self.notes.extend(other.notes)


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
    parse_failure_text(text, str(path), result)
    return result


def parse_failure_text(text: str, where: str, result: ParseResult | None = None) -> ParseResult:
    """Records and problems from the text of one file (`where` names it in every problem)."""
    result = result if result is not None else ParseResult()
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    if text.lstrip()[:1] in ("[", "{"):
        _scan(undouble_quotes(text), where, 0, result)
        return result
    best: ParseResult | None = None
    for delimiter in GRID_DELIMITERS:
        got = _parse_grid(text, where, delimiter)
        if best is None or (len(got.records), -len(got.problems)) > (len(best.records), -len(best.problems)):
            best = got
    assert best is not None
    result.extend(best)
    return result


# -- the grid ------------------------------------------------------------------------------------

_KV_CELL = re.compile(r"""\s*(["']?)[A-Za-z_][\w.\-]*\1\s*[:=]\s*\S""", re.S)


def _parse_grid(text: str, where: str, delimiter: str, allow_header: bool = True) -> ParseResult:
    lines = text.split("\n")
    rows = read_grid(text, delimiter)
    out = ParseResult()
    run: list[GridRow] = []  # rows waiting to be read again as free text
    header: GridRow | None = None
    seen_content = False

    def flush() -> None:
        content = [r for r in run if r.error is not None or r.filled]
        if content:
            a, b = content[0].first_line, content[-1].last_line
            _scan(undouble_quotes("\n".join(lines[a - 1:b])), where, a - 1, out)
        run.clear()

    for row in rows:
        if row.error is None and not row.filled:
            if run:
                run.append(row)  # a blank row does not end a run of text (pretty JSON has blank lines)
            continue
        if not seen_content:
            seen_content = True
            if allow_header and looks_like_header(row):
                header = row
                continue
        got = _grid_row(row, where) if row.error is None else None
        if got is None:
            run.append(row)
            continue
        flush()
        out.extend(got)
    flush()
    if header is not None:
        if not out.records:  # a file with no records has no header either: its first line is text like the rest
            return _parse_grid(text, where, delimiter, allow_header=False)
        out.notes.append(f"{where}:{header.first_line}: header row skipped")
    return out


def _grid_row(row: GridRow, where: str) -> ParseResult | None:
    """A row read cell by cell, or None when it is not a grid row (then it is read as free text).

    A grid row has at least one cell holding a whole study object, or key/value cells.
    """
    out = ParseResult()
    pairs: list[tuple[Any, Any, int]] = []  # (key, value, line) from key/value cells
    kv_cells: list[str] = []
    other: list[tuple[str, int]] = []  # plain text cells
    objects = 0
    for cell in row.filled:
        text = cell.text.strip()
        if text[:1] in ("{", "["):
            sub = ParseResult()
            _scan(undouble_quotes(cell.text), where, cell.line - 1, sub)
            if sub.records:
                objects += 1
                out.extend(sub)
                continue
            if not sub.problems:  # a readable object that names no study (a queue entry, a criteria block)
                out.notes.append(f"{where}:{cell.line}: object names no study; skipped")
                objects += 1
                continue
            other.append((text, cell.line))
            continue
        kv = _kv_pairs(text) if _KV_CELL.match(text) else None
        if kv is not None:
            kv_cells.append(text)
            pairs.extend((k, v, cell.line) for k, v in kv)
            continue
        other.append((text, cell.line))
    if not objects and not kv_cells:
        return None
    if kv_cells:
        obj: dict[str, Any] = {}
        for k, v, _ in pairs:
            if k in obj and obj[k] != v and v not in (None, ""):
                out.notes.append(f"{where}:{row.first_line}: key {str(k)[:40]!r} given twice; first value kept")
                continue
            if k not in obj or obj[k] in (None, ""):
                obj[k] = v
        if _has_study(obj, kv=True):
            out.records.append(_record(obj, where, row.first_line, out, kv=True))
        elif objects:
            out.notes.append(f"{where}:{row.first_line}: key/value cells beside a study object not used")
        else:
            n = sum(len(c) for c in kv_cells)
            out.problems.append(InputProblem(
                where, row.first_line,
                f"{len(kv_cells)} key/value cells ({n} characters) name no study "
                "(no accessionNumber, studyId or studyInstanceUid); skipped"))
    for text, line in other:
        out.problems.append(InputProblem(where, line, _fragment_message(line, line, len(text))))
    out.problems.sort(key=lambda p: p.line)
    return out


def _kv_pairs(text: str) -> list[tuple[Any, Any]] | None:
    """`"key": value` (one or more pairs) as a list, or None when the cell is not that."""
    body = "{" + text + "}"
    try:
        loc = LenientParser(body).parse_at(0)
    except LenientJSONError:
        return None
    if loc.end != len(body) or not isinstance(loc.value, dict) or not loc.value:
        return None
    return list(loc.value.items())


# -- free text -----------------------------------------------------------------------------------

_PUNCT_ONLY = re.compile(r"""^(\s|[\[\]{}(),:;"'`]|(["'][A-Za-z_][\w ]*["']\s*:))*$""")
_TRIM = " \t\r\n\f\v\ufeff\u00a0\"'"


def _fragment_message(first: int, last: int, n_chars: int, detail: str = "") -> str:
    """The problem text; the problem's own line is `first`, so only a longer span is spelled out."""
    span = f"lines {first}-{last}: " if last > first else ""
    return f"{span}{n_chars} characters that are not a failure record{detail}; skipped"


def _scan(text: str, where: str, line_offset: int, result: ParseResult) -> None:
    """Parse every value in `text`; resume after a failure at the next bracket.

    Successful values that hold study records cover their span; everything else that is not
    punctuation or a bare key is reported with its lines and length, together with the parse
    error met there.
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
    pos = 0
    for a, b in covered + [(n, n)]:
        if a > pos:
            chunk = text[pos:a]
            if not _PUNCT_ONLY.match(chunk) and not _only_non_study_objects(chunk):
                first = pos + (len(chunk) - len(chunk.lstrip(_TRIM)))
                last = pos + len(chunk.rstrip(_TRIM))
                l1, l2 = p.line_of(first) + line_offset, p.line_of(max(first, last - 1)) + line_offset
                errs = [f"line {p.line_of(e) + line_offset}: {m}" for e, m in errors if pos <= e <= a]
                detail = f" ({errs[0]})" if errs else ""
                result.problems.append(InputProblem(where, l1, _fragment_message(l1, l2, last - first, detail)))
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


def _has_study(v: Any, kv: bool = False) -> bool:
    if isinstance(v, dict):
        keys = {_FIELD_KEYS.get(_norm_key(k)) for k in v}
        return bool(keys & _STUDY_MARKERS) or (not kv and any(_has_study(x) for x in v.values()))
    if isinstance(v, list):
        return any(_has_study(x) for x in v)
    return False


def _empty(v: Any) -> bool:
    return v is None or (isinstance(v, str) and (v.strip() == "" or v.strip().casefold() in _EMPTY_WORDS))


def _relabel_subject(norm: dict[str, tuple[str, Any]]) -> str:
    rm = norm.get("relabelmap", (None, None))[1]
    if isinstance(rm, dict):
        for k, v in rm.items():
            if _norm_key(k) == "subject" and not _empty(v):
                return str(v)
    return ""


def _walk(value: Any, p: LenientParser, start: int, where: str, line_offset: int, result: ParseResult,
          subject: str = "") -> None:
    """Find study objects in a parsed value: lists of studies, query results, single studies."""
    line = p.line_of(start) + line_offset
    if isinstance(value, list):
        for item in value:
            _walk(item, p, p.obj_start.get(id(item), start), where, line_offset, result, subject)
        return
    if not isinstance(value, dict):
        return
    norm = {_norm_key(k): (k, v) for k, v in value.items()}
    if "studies" in norm:
        subject = _relabel_subject(norm) or subject
        studies = norm["studies"][1]
        if isinstance(studies, list) and studies:
            _walk(studies, p, start, where, line_offset, result, subject)
            return
        crit = norm.get("criteria", (None, None))[1]
        if isinstance(crit, dict) and _has_study(crit):
            # The classic "accession wrong": the query found nothing. The accession is only in the
            # criteria, the subject only in the relabel map.
            result.records.append(_record(crit, where, line, result, subject=subject))
            result.notes.append(f"{where}:{line}: query returned no studies; recorded from its criteria")
        else:
            result.notes.append(f"{where}:{line}: query returned no studies and its criteria name no study")
        return
    if _has_study({k: v for k, v in value.items()
                   if not isinstance(v, (dict, list)) or _norm_key(k) in ("modalitiesinstudy", "modalities")}):
        result.records.append(_record(value, where, line, result, subject=subject))
        return
    for k, v in value.items():  # a wrapper object: look inside
        if isinstance(v, (dict, list)) and _norm_key(k) not in ("patient", "criteria", "relabelmap"):
            _walk(v, p, p.obj_start.get(id(v), start), where, line_offset, result, subject)


# -- one record ----------------------------------------------------------------------------------

def _clean_id(v: Any) -> str:
    """IDs and UIDs: every whitespace (broken line wraps) removed; floats like 123.0 undone;
    the `nan` / `None` / `null` a spreadsheet or pandas writes for a missing value is empty."""
    if _empty(v) or isinstance(v, (dict, list, bool)):
        return ""
    s = re.sub(r"\s+", "", str(v)).strip("\"'")
    if s.casefold() in _EMPTY_WORDS:
        return ""
    m = re.fullmatch(r"(\d+)\.0+", s)
    return m.group(1) if m else s


def _local_day(millis: int) -> dt.date:
    try:
        from zoneinfo import ZoneInfo

        zone: dt.tzinfo = ZoneInfo(LOCAL_ZONE)
    except Exception:  # noqa: BLE001 - no time-zone database on this machine: UTC is the best guess
        zone = dt.timezone.utc
    return dt.datetime.fromtimestamp(millis / 1000, tz=dt.timezone.utc).astimezone(zone).date()


def study_date(raw: Any) -> dt.date | None:
    """A failure list's study date in any of the spellings met in practice.

    `20240301` (text or integer), ISO, UK `01/03/2024` and the other formats of `dates.parse_date`;
    Jackson's epoch milliseconds (11–13 digits) and `[2024, 3, 1]`.

    Raises:
        ValueError: none of those (the message shows the value's shape, not the value).
    """
    if _empty(raw):
        return None
    if isinstance(raw, list):
        if len(raw) >= 3 and all(re.fullmatch(r"\d+", str(x)) for x in raw[:3]):
            return dt.date(int(raw[0]), int(raw[1]), int(raw[2]))
        raise ValueError("unrecognised date (a list that is not [year, month, day])")
    text = str(raw).strip()
    if re.fullmatch(r"\d{11,13}", text):
        return _local_day(int(text))
    try:
        return parse_date(text)
    except ValueError:
        return parse_date(re.sub(r"\s+", "", text))  # a date broken over two lines


def _record(obj: dict, where: str, line: int, result: ParseResult, kv: bool = False,
            subject: str = "") -> FailureRecord:
    fields: dict[str, Any] = {}
    unknown: list[str] = []
    for k, v in obj.items():
        nk = _norm_key(k)
        if nk == "patient" and isinstance(v, dict):
            for pk, pv in v.items():
                if _norm_key(pk) in ("id", "patientid") and not _empty(pv):
                    fields.setdefault("hospital_id", pv)
            continue
        if nk == "relabelmap" and isinstance(v, dict):
            subject = _relabel_subject({"relabelmap": (k, v)}) or subject
            continue
        if nk == "id" and kv:  # a flattened `patient.id` cell: in key/value pastes `id` is the patient's
            fields.setdefault("hospital_id", v)
            continue
        f = _FIELD_KEYS.get(nk)
        if f is None:
            if nk not in _IGNORED_KEYS and nk != "id":
                unknown.append(re.sub(r"\s+", "", str(k))[:40])
            continue
        if f not in fields or _empty(fields[f]):
            fields[f] = v
    if unknown:
        result.notes.append(f"{where}:{line}: unknown keys kept out of the record: {', '.join(sorted(set(unknown)))}")
    date = None
    try:
        date = study_date(fields.get("study_date"))
    except ValueError as exc:
        result.problems.append(InputProblem(where, line, f"studyDate: {exc}; record kept without a date"))
    mods = fields.get("modalities")
    if isinstance(mods, str):
        mods = [m for m in re.split(r"[\\,/\s]+", mods) if m]
    elif not isinstance(mods, list):
        mods = []
    hid = normalise_hospital_id(_clean_id(fields.get("hospital_id")))
    if hid and not any(ch.isalnum() for ch in hid):
        result.problems.append(InputProblem(where, line, "patient ID has no letter or digit; record kept without one"))
        hid = ""
    given, why = _given_subject(fields.get("subject") or subject)
    if why and not hid:  # the list's own subject is only used when it names no patient ID
        result.problems.append(InputProblem(where, line, f"Subject: {why}; record kept without a subject"))
    return FailureRecord(
        study_uid=_clean_id(fields.get("study_uid")),
        accession=_clean_id(fields.get("accession")),
        study_id=_clean_id(fields.get("study_id")),
        hospital_id=hid,
        study_date=date,
        description="" if _empty(fields.get("description")) else re.sub(r"\s+", " ", str(fields["description"])).strip(),
        modalities=tuple(str(m).strip().upper() for m in mods if str(m).strip() and not _empty(m)),
        source_file=where,
        source_line=line,
        subject=given,
    )


def _given_subject(raw: Any) -> tuple[str, str]:
    """(subject label, "") for an NHS number or NN_<id>; ("", why not) for anything else."""
    if _empty(raw):
        return "", ""
    text = str(raw).strip()
    if text.upper().startswith(NN_PREFIX):
        return normalise_subject(text), ""
    nhs, why = read_nhs(text)
    return (nhs, "") if nhs else ("", why or "not an NHS number or NN_<hospital id>")


def parse_failure_files(paths: Iterable[Path]) -> ParseResult:
    total = ParseResult()
    for path in paths:
        try:
            r = parse_failure_file(path)
        except InputFileError as exc:
            total.problems.append(InputProblem(str(path), 0, str(exc)))
            continue
        total.extend(r)
    return total
