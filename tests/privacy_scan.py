"""The research-side scan: every original identifier of a cohort, looked for everywhere.

Used by tests/test_privacy_*.py. What counts as an identifier is collected from the *input*
(the PACS files and the cohort's own records), never from rtlake's outputs: patient names (each
part of three letters or more, as written and upper-cased), hospital IDs (PatientID), NHS
numbers, birth dates (YYYYMMDD, YYYY-MM-DD, DD/MM/YYYY), accession numbers, and every instance
UID in the PACS files (Study/Series/SOP Instance UIDs, frames of reference, references; the
well-known class and syntax UIDs, which name standards and not patients, are left out).

Where it looks: every file and folder name below a root; the text of every file (CSV, JSON,
HTML, …); every element of every DICOM file, file meta, nested sequences and private tags
included (pixel data left out: it is not text); NIfTI headers and extensions; PNG text chunks;
and any console or log text handed to `scan_text`.

Matching is by whole token (a hospital ID inside a longer word, or an NHS number inside a
longer number or a UID, is not that identifier), so random pseudonyms and pixel bytes do not
make false hits, while `9434765919`, `NN_RJZ1234567` or `SMITH^John` do.
"""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from ingest.pseudo.uids import NEVER_REMAP, is_well_known

_UID_TOKEN = re.compile(r"(?<![\d.])\d+(?:\.\d+)+(?!\d|\.\d)")  # "…study 1.2.3." ends at the full stop
_ALNUM_TOKEN = re.compile(r"[A-Za-z0-9]+")
_WORD_TOKEN = re.compile(r"[^\W\d_]+")
_NHS_SPACED = re.compile(r"(?<!\d)(\d{3})[ -](\d{3})[ -](\d{4})(?!\d)")
_DATES = re.compile(r"(?<!\d)(?:(\d{4})-(\d{2})-(\d{2})|(\d{2})/(\d{2})/(\d{4}))(?!\d)")
PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}


@dataclass
class Hit:
    kind: str
    value: str
    where: str
    excerpt: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.value!r} in {self.where}: …{self.excerpt}…"


@dataclass
class Identifiers:
    uids: dict[str, str] = field(default_factory=dict)  # uid -> what it is
    tokens: dict[str, str] = field(default_factory=dict)  # hospital IDs, NHS numbers, accessions, dates (digits)
    words: dict[str, str] = field(default_factory=dict)  # name parts

    def add_uid(self, uid: str, what: str = "uid") -> None:
        uid = str(uid).strip().rstrip("\x00")
        if uid and not is_well_known(uid):
            self.uids.setdefault(uid, what)

    def add_token(self, value: str | None, kind: str) -> None:
        value = str(value or "").strip()
        if len(value) >= 4:
            self.tokens.setdefault(value, kind)

    def add_name(self, name: str | None) -> None:
        for part in re.split(r"[\^\s,'’-]+", str(name or "")):
            part = part.strip()
            if len(part) >= 3 and not part.isdigit():
                self.words.setdefault(part, "name")
                self.words.setdefault(part.upper(), "name")

    def add_birth_date(self, ymd: str | None) -> None:
        ymd = re.sub(r"\D", "", str(ymd or ""))
        if len(ymd) == 8:
            self.tokens.setdefault(ymd, "birth_date")

    def add_dicom(self, ds: pydicom.Dataset) -> None:
        """Everything identifying in one original file (its header, file meta included)."""
        self.add_token(ds.get("PatientID", ""), "hospital_id")
        self.add_name(str(ds.get("PatientName", "") or ""))
        self.add_birth_date(ds.get("PatientBirthDate", ""))
        self.add_token(ds.get("AccessionNumber", ""), "accession")
        for elem in _elements(ds):
            if elem.VR == "UI" and elem.tag not in NEVER_REMAP:
                for v in _values(elem.value):
                    self.add_uid(v, elem.keyword or str(elem.tag))

    def add_dicom_files(self, paths: Iterable[Path]) -> int:
        n = 0
        for p in paths:
            try:
                ds = pydicom.dcmread(p, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError, EOFError, struct.error):
                continue
            self.add_dicom(ds)
            n += 1
        return n

    def __len__(self) -> int:
        return len(self.uids) + len(self.tokens) + len(self.words)


def _elements(ds: pydicom.Dataset):
    """Every element, nested sequences and file meta included (pydicom's iterall skips file meta)."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        yield from meta.iterall()
    yield from ds.iterall()


def _values(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return [str(v) for v in value]
    if isinstance(value, bytes):
        return [value.decode("latin-1")]
    return [str(value)]


def _excerpt(text: str, start: int, end: int) -> str:
    return text[max(0, start - 40):end + 40].replace("\n", " ")


def scan_text(text: str, ids: Identifiers, where: str) -> list[Hit]:
    """Whole-token hits of any identifier in `text`."""
    hits: list[Hit] = []
    for m in _UID_TOKEN.finditer(text):
        if m.group(0) in ids.uids:
            hits.append(Hit(ids.uids[m.group(0)], m.group(0), where, _excerpt(text, m.start(), m.end())))
    for m in _ALNUM_TOKEN.finditer(text):
        tok = m.group(0)
        kind = ids.tokens.get(tok)  # NN_<hospital id> splits at "_", so its hospital ID is a token too
        if kind is not None:
            hits.append(Hit(kind, tok, where, _excerpt(text, m.start(), m.end())))
    for m in _NHS_SPACED.finditer(text):
        tok = "".join(m.groups())
        if ids.tokens.get(tok) == "nhs_number":
            hits.append(Hit("nhs_number", m.group(0), where, _excerpt(text, m.start(), m.end())))
    for m in _DATES.finditer(text):
        g = m.groups()
        ymd = "".join(g[0:3]) if g[0] else g[5] + g[4] + g[3]
        if ids.tokens.get(ymd) == "birth_date":
            hits.append(Hit("birth_date", m.group(0), where, _excerpt(text, m.start(), m.end())))
    for m in _WORD_TOKEN.finditer(text):
        if m.group(0) in ids.words:
            hits.append(Hit("name", m.group(0), where, _excerpt(text, m.start(), m.end())))
    return hits


def scan_dicom(path: Path, ids: Identifiers, where: str) -> list[Hit]:
    """Every element's value (private and nested included), keywords named in the hit."""
    ds = pydicom.dcmread(path)
    hits: list[Hit] = []
    for elem in _elements(ds):
        if elem.tag in PIXEL_TAGS or elem.VR == "SQ":
            continue
        for v in _values(elem.value):
            for h in scan_text(v, ids, f"{where} {elem.tag} {elem.keyword or 'private'}"):
                hits.append(h)
    return hits


def _nifti_text(raw: bytes) -> str:
    """The NIfTI-1 header's text fields and any extension (the image data is numbers, not text)."""
    head = raw[:348]
    fields = [head[148:228], head[228:252], head[328:344]]  # descrip, aux_file, intent_name
    text = " ".join(f.split(b"\x00", 1)[0].decode("latin-1") for f in fields)
    if len(raw) >= 352 and raw[348] == 1:  # extensions follow
        offset = int(struct.unpack("<f", head[108:112])[0])
        text += " " + raw[352:offset].decode("latin-1")
    return text


def _png_text(raw: bytes) -> str:
    out, pos = [], 8
    while pos + 8 <= len(raw):
        length, kind = struct.unpack(">I4s", raw[pos:pos + 8])
        data = raw[pos + 8:pos + 8 + length]
        if kind in (b"tEXt", b"iTXt"):
            out.append(data.decode("latin-1"))
        elif kind == b"zTXt":
            key, _, rest = data.partition(b"\x00")
            out.append(key.decode("latin-1") + " " + zlib.decompress(rest[1:]).decode("latin-1"))
        pos += 12 + length
    return " ".join(out)


def scan_file(path: Path, ids: Identifiers, where: str) -> list[Hit]:
    name = path.name.lower()
    raw = path.read_bytes()
    if name.endswith(".dcm") or raw[128:132] == b"DICM":
        return scan_dicom(path, ids, where)
    if name.endswith(".nii.gz"):
        return scan_text(_nifti_text(gzip.decompress(raw)), ids, where)
    if name.endswith(".nii"):
        return scan_text(_nifti_text(raw), ids, where)
    if name.endswith(".png"):
        return scan_text(_png_text(raw), ids, where)
    return scan_text(raw.decode("utf-8", "replace"), ids, where)


def scan_tree(root: Path, ids: Identifiers) -> tuple[list[Hit], int]:
    """Hits in every file and folder name below `root` and in every file; also how many files were read."""
    root = Path(root)
    hits: list[Hit] = []
    n = 0
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        hits += scan_text(p.name, ids, f"name {root.name}/{rel}")
        if p.is_file():
            hits += scan_file(p, ids, f"{root.name}/{rel}")
            n += 1
    return hits, n
