"""A seeded corpus of damaged DICOM files made from the synthetic cohort, placed beside the good files.

    python -m tests.damaged_corpus OUT [--patients 24] [--seed 19] [--damaged 100]

writes a demo cohort (ingest/demo.py) into OUT, then damaged copies of its files inside its folder
PACS, next to the files they were made from, and OUT/damaged.json describing each one.

Each kind of damage is how real files break (the list in issue #19), and each carries the outcome
rtlake must reach, written here from the rule of the damage, never from running rtlake:

  expect = a check of ingest/validate.py (`truncated`, `uid`, ...): the file is refused, naming it
           and that check;
  expect = "duplicate": a byte-identical copy: stored once, no failure;
  expect = "conflict": a *valid* file under the SOPInstanceUID of another one, with other content:
           never first-wins; the conflict is recorded with both sources.

Damage is only made in studies an update run ingests (included or RT, of living patients, with a
real date), so every source is asked for every damaged file. Element positions come from pydicom's
raw element reader, not from rtlake's validator. Extra *good* files are added too: RLE-compressed
copies of some CT images (new series), so damage inside encapsulated Pixel Data has something to
break and the good path sees fragments.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import random
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filereader import data_element_generator
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from ingest.demo import PLACEHOLDER_DATE, DemoPaths, generate

# every VR of PS3.5 6.2 (our own list: a flipped VR must become none of these)
VRS = {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV", "OW",
       "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV"}
LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"}
PIXEL_DATA = 0x7FE00010
UID_TAGS = {"StudyInstanceUID": 0x0020000D, "SeriesInstanceUID": 0x0020000E, "SOPInstanceUID": 0x00080018}
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


@dataclass
class Damaged:
    path: Path
    kind: str
    expect: str
    what: str
    original: Path | None = None
    sop_uid: str = ""
    study_uid: str = ""  # the study the file claims (or whose folder it sits in when unreadable)
    original_study_uid: str = ""

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["path"] = str(self.path)
        d["original"] = str(self.original) if self.original else None
        return d


@dataclass
class Corpus:
    demo: DemoPaths
    damaged: list[Damaged]
    good: list[Path]  # every whole file of the PACS that is not a damaged copy (RLE extras included)
    extra_good: list[Path] = field(default_factory=list)
    ingested_studies: set[str] = field(default_factory=set)  # the studies an update run stores

    @property
    def ingested_good(self) -> list[Path]:
        """Good files of the studies an update run stores (study folder = StudyInstanceUID)."""
        return [f for f in self.good if f.parent.parent.name in self.ingested_studies]

    def by_kind(self) -> dict[str, list[Damaged]]:
        out: dict[str, list[Damaged]] = {}
        for d in self.damaged:
            out.setdefault(d.kind, []).append(d)
        return out


# -- byte layout of a good file (explicit VR little endian, as the synthetic cohort writes) -------------
@dataclass(frozen=True)
class Element:
    tag: int
    vr: str
    start: int  # first byte of the element header
    value: int  # first byte of the value
    length: int  # declared length (0xFFFFFFFF = undefined)


def meta_end(data: bytes) -> int:
    """End of the file meta group, from its group length (0002,0000), which pydicom always writes."""
    assert data[128:132] == b"DICM" and data[132:136] == b"\x02\x00\x00\x00" and data[136:138] == b"UL"
    return 144 + struct.unpack_from("<I", data, 140)[0]


def elements(data: bytes) -> list[Element]:
    """Top-level data set elements, read by pydicom's raw element generator."""
    start = meta_end(data)
    fp = io.BytesIO(data)
    fp.seek(start)
    out = []
    for raw in data_element_generator(fp, False, True, defer_size=64):
        header = 12 if raw.VR in LONG_VRS else 8
        out.append(Element(int(raw.tag), raw.VR, raw.value_tell - header, raw.value_tell, raw.length))
    return out


def with_meta(data: bytes, transfer_syntax: str, dataset: bytes | None = None) -> bytes:
    """The same file with another Transfer Syntax UID in a rewritten meta group (data set bytes as given)."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    meta = FileMetaDataset(ds.file_meta)
    meta.TransferSyntaxUID = transfer_syntax
    buf = io.BytesIO()
    write_file_meta_info(buf, meta, enforce_standard=True)
    body = data[meta_end(data):] if dataset is None else dataset
    return data[:128] + b"DICM" + buf.getvalue() + body


def dataset_bytes(ds: pydicom.Dataset, implicit: bool = False, little: bool = True) -> bytes:
    """The data set alone (no preamble, no meta) in the given encoding."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = little, implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# -- the damage ----------------------------------------------------------------------------------------
class _Maker:
    def __init__(self, demo: DemoPaths, seed: int) -> None:
        self.demo = demo
        self.rng = random.Random(f"rtlake-damaged:{seed}")
        self.uid_n = 0
        self.seed = seed
        self.out: list[Damaged] = []
        self.rle_files: set[Path] = set()  # the RLE copies (good files), once make_rle ran
        self.k = 0
        studies = {s.study_uid: (p, s) for p in demo.patients for s in p.studies}
        self.eligible: dict[str, list[Path]] = {}
        self.study_of: dict[Path, str] = {}
        for f in sorted(demo.pacs.rglob("*.dcm")):
            if f in demo.broken:
                continue
            study = f.parent.parent.name
            if study not in studies:
                continue
            p, s = studies[study]
            if p.deceased or s.category not in ("include", "rt") or s.study_date == PLACEHOLDER_DATE:
                continue
            self.eligible.setdefault(study, []).append(f)
            self.study_of[f] = study

    def new_uid(self) -> str:
        self.uid_n += 1
        return f"2.25.{int(hashlib.sha256(f'damaged:{self.seed}:{self.uid_n}'.encode()).hexdigest()[:30], 16)}"

    def pick(self, want=None) -> Path:
        files = [f for fs in self.eligible.values() for f in fs if want is None or want(f)]
        return self.rng.choice(files)

    def place(self, original: Path, data: bytes, kind: str, expect: str, what: str, *, sop: str = "",
              study: str = "", folder: Path | None = None) -> Damaged:
        self.k += 1
        target = (folder or original.parent) / f"{original.stem[:24]}-d{self.k:03d}.dcm"
        target.write_bytes(data)
        d = Damaged(target, kind, expect, what, original, sop, study or self.study_of.get(original, ""),
                    self.study_of.get(original, ""))
        self.out.append(d)
        return d

    @staticmethod
    def ids(path_or_data) -> tuple[str, str]:
        src = io.BytesIO(path_or_data) if isinstance(path_or_data, bytes) else path_or_data
        ds = pydicom.dcmread(src, stop_before_pixels=True)
        return str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)

    # truncation --------------------------------------------------------------------------------
    def truncated_random(self) -> None:
        f = self.pick()
        data = f.read_bytes()
        bounds = {e.start for e in elements(data)} | {len(data)}
        lo = meta_end(data) + 1
        while True:
            cut = self.rng.randrange(lo, len(data))
            if cut not in bounds:
                break
        sop, study = self.ids(f)
        self.place(f, data[:cut], "truncated_random", "truncated",
                   f"cut at byte {cut} of {len(data)}, inside an element", sop=sop, study=study)

    def truncated_in_pixels(self, rle: bool = False) -> None:
        f = self.pick(lambda p: (p in self.rle_files) == rle and self._has_pixels(p))
        data = f.read_bytes()
        px = next(e for e in elements(data) if e.tag == PIXEL_DATA)
        cut = self.rng.randrange(px.value + 1, len(data) - 1)
        sop, study = self.ids(f)
        self.place(f, data[:cut], "truncated_in_rle_pixels" if rle else "truncated_in_pixels", "truncated",
                   f"cut inside the {'encapsulated ' if rle else ''}Pixel Data (byte {cut} of {len(data)})",
                   sop=sop, study=study)

    def cut_before_pixels(self) -> None:
        f = self.pick(lambda p: p not in self.rle_files and self._has_pixels(p))
        data = f.read_bytes()
        px = next(e for e in elements(data) if e.tag == PIXEL_DATA)
        assert px.value + px.length == len(data), "Pixel Data is the last element of the synthetic images"
        sop, study = self.ids(f)
        self.place(f, data[:px.start], "cut_before_pixels", "pixel_data",
                   "cut exactly where Pixel Data starts: image attributes without pixels", sop=sop, study=study)

    def pixels_short(self) -> None:
        """Pixel Data shorter than Rows x Columns needs, its length field rewritten to agree."""
        f = self.pick(lambda p: p not in self.rle_files and self._has_pixels(p))
        data = f.read_bytes()
        px = next(e for e in elements(data) if e.tag == PIXEL_DATA)
        drop = 2 * self.rng.randrange(1, px.length // 4)
        out = bytearray(data[:len(data) - drop])
        struct.pack_into("<I", out, px.start + 8, px.length - drop)
        sop, study = self.ids(f)
        self.place(f, bytes(out), "pixels_short", "pixel_data",
                   f"Pixel Data {drop} bytes short, its length field agreeing", sop=sop, study=study)

    # flipped bytes ---------------------------------------------------------------------------------
    def flip_uid(self, name: str) -> None:
        """A character of a required UID XOR 0x20: digits become control characters 0x10-0x19."""
        f = self.pick()
        data = bytearray(f.read_bytes())
        e = next(e for e in elements(bytes(data)) if e.tag == UID_TAGS[name])
        text = bytes(data[e.value:e.value + e.length]).rstrip(b"\x00")
        i = self.rng.randrange(len(text))
        data[e.value + i] ^= 0x20
        sop, study = self.ids(f)
        flipped = bytes(data[e.value:e.value + len(text)]).decode("latin-1")
        if name == "SOPInstanceUID":
            sop = flipped
        elif name == "StudyInstanceUID":
            study = flipped
        self.place(f, bytes(data), f"flip_uid_{name}", "uid",
                   f"{name} character {i + 1} flipped to {data[e.value + i]:#04x}", sop=sop, study=study)

    def flip_vr(self) -> None:
        f = self.pick()
        data = bytearray(f.read_bytes())
        cands = [e for e in elements(bytes(data)) if e.tag not in UID_TAGS.values()]
        while True:
            e = self.rng.choice(cands)
            i = self.rng.randrange(2)
            bit = 1 << self.rng.randrange(5)  # low bits: stays a letter-ish byte
            vr = bytearray(data[e.start + 4:e.start + 6])
            vr[i] ^= bit
            if vr.decode("latin-1") not in VRS:
                break
        data[e.start + 4:e.start + 6] = vr
        sop, study = self.ids(f)
        self.place(f, bytes(data), "flip_vr", "parse", f"VR of ({e.tag >> 16:04X},{e.tag & 0xFFFF:04X}) "
                   f"flipped from {e.vr} to {vr.decode('latin-1')!r}", sop=sop, study=study)

    def flip_tag(self) -> None:
        """The high bit of an element number flipped: the element now sorts after its successor."""
        f = self.pick()
        data = bytearray(f.read_bytes())
        els = elements(bytes(data))
        while True:
            k = self.rng.randrange(len(els) - 1)
            e, nxt = els[k], els[k + 1]
            new = e.tag ^ 0x8000
            if new > nxt.tag and e.tag & 0x8000 == 0 and e.tag not in UID_TAGS.values():
                break
        struct.pack_into("<H", data, e.start + 2, new & 0xFFFF)
        sop, study = self.ids(f)
        self.place(f, bytes(data), "flip_tag", "parse",
                   f"element ({e.tag >> 16:04X},{e.tag & 0xFFFF:04X}) renumbered to ({new & 0xFFFF:04X}): "
                   "out of order", sop=sop, study=study)

    def flip_length(self) -> None:
        """Bit 15 of a 16-bit length flipped: the element now claims more bytes than the file has."""
        while True:
            f = self.pick()
            data = bytearray(f.read_bytes())
            cands = [e for e in elements(bytes(data)) if e.vr not in LONG_VRS and e.length < 0x8000
                     and e.value + (e.length | 0x8000) > len(data)]
            if cands:
                break
        e = self.rng.choice(cands)
        struct.pack_into("<H", data, e.start + 6, e.length | 0x8000)
        sop, study = self.ids(f)
        self.place(f, bytes(data), "flip_length", "truncated",
                   f"length of ({e.tag >> 16:04X},{e.tag & 0xFFFF:04X}) flipped from {e.length} to "
                   f"{e.length | 0x8000}", sop=sop, study=study)

    def flip_rows(self) -> None:
        """A bit of Rows flipped: the Pixel Data no longer matches the image size."""
        f = self.pick(lambda p: p not in self.rle_files and self._has_pixels(p))
        data = bytearray(f.read_bytes())
        e = next(e for e in elements(bytes(data)) if e.tag == 0x00280010)
        data[e.value] ^= 1 << self.rng.randrange(8)
        sop, study = self.ids(f)
        self.place(f, bytes(data), "flip_rows", "pixel_data", "a bit of Rows flipped", sop=sop, study=study)

    # preambles -------------------------------------------------------------------------------------
    def zeroed_head(self) -> None:
        f = self.pick()
        data = f.read_bytes()
        self.place(f, bytes(132) + data[132:], "zeroed_head", "preamble", "preamble and 'DICM' zeroed")

    def garbage_head(self) -> None:
        f = self.pick()
        data = f.read_bytes()
        while True:
            head = bytes(self.rng.randrange(256) for _ in range(132))
            if head[128:132] != b"DICM":
                break
        self.place(f, head + data[132:], "garbage_head", "preamble", "preamble and 'DICM' overwritten with random bytes")

    def flip_dicm(self) -> None:
        f = self.pick()
        data = bytearray(f.read_bytes())
        data[128 + self.rng.randrange(4)] ^= 1 << self.rng.randrange(8)
        self.place(f, bytes(data), "flip_dicm", "preamble", "a bit of the 'DICM' magic flipped")

    # transfer syntax -------------------------------------------------------------------------------
    def unknown_ts(self) -> None:
        f = self.pick(lambda p: p not in self.rle_files)
        data = f.read_bytes()
        sop, study = self.ids(f)
        self.place(f, with_meta(data, "1.2.826.0.1.3680043.10.999.1"), "unknown_ts", "transfer_syntax",
                   "Transfer Syntax UID no standard defines", sop=sop, study=study)

    def garbage_ts(self) -> None:
        f = self.pick(lambda p: p not in self.rle_files)
        data = bytearray(f.read_bytes())
        i = data.index(b"1.2.840.10008.1.2.1\x00", 132) + self.rng.randrange(19)
        data[i] ^= 0x20
        sop, study = self.ids(f)
        self.place(f, bytes(data), "garbage_ts", "transfer_syntax",
                   "a character of the Transfer Syntax UID flipped to a control character", sop=sop, study=study)

    def lying_ts(self, choice: str) -> None:
        """A known transfer syntax that does not describe the data."""
        if choice == "native_for_rle":
            f = self.pick(lambda p: p in self.rle_files)
        else:
            f = self.pick(lambda p: p not in self.rle_files and (choice != "jpeg" or self._has_pixels(p)))
        data = f.read_bytes()
        sop, study = self.ids(f)
        if choice == "explicit_for_implicit":
            ds = pydicom.dcmread(f)
            out = with_meta(data, ExplicitVRLittleEndian, dataset_bytes(ds, implicit=True))
            what = "data set re-encoded implicit VR; meta still says Explicit VR Little Endian"
        else:
            ts = {"implicit": ImplicitVRLittleEndian, "big": ExplicitVRBigEndian, "deflate": DEFLATED,
                  "jpeg": JPEG_BASELINE, "native_for_rle": ExplicitVRLittleEndian}[choice]
            out = with_meta(data, ts)
            what = f"meta says {pydicom.uid.UID(ts).name}; the data set is unchanged"
        self.place(f, out, f"lying_ts_{choice}", "encoding", what, sop=sop, study=study)

    # encapsulated pixel data -------------------------------------------------------------------------
    def make_rle(self, n: int) -> list[Path]:
        """RLE copies of CT images of included studies, as a new series each (good files)."""
        out = []
        by_study: dict[str, list[Path]] = {}
        for study, files in sorted(self.eligible.items()):
            cts = [f for f in files if self._modality(f) == "CT"]
            if cts:
                by_study[study] = cts
        for study in sorted(by_study)[:n]:
            series = self.new_uid()
            for number, f in enumerate(by_study[study][:2], start=1):
                ds = pydicom.dcmread(f)
                ds.SeriesInstanceUID = series
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = self.new_uid()
                ds.SeriesNumber = 90
                ds.SeriesDescription = "RLE copy"
                ds.InstanceNumber = number
                ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
                target = f.parent.parent / series / f"{ds.SOPInstanceUID}.dcm"
                target.parent.mkdir(parents=True, exist_ok=True)
                ds.save_as(target, enforce_file_format=True)
                out.append(target)
                self.eligible[study].append(target)
                self.study_of[target] = study
        return out

    def _fragments(self, data: bytes) -> tuple[int, list[tuple[int, int]]]:
        """(position of the sequence delimiter, [(item tag position, length)]) of encapsulated Pixel Data."""
        px = next(e for e in elements(data) if e.tag == PIXEL_DATA)
        pos, items = px.value, []
        while True:
            tag = struct.unpack_from("<HH", data, pos)
            length = struct.unpack_from("<I", data, pos + 4)[0]
            if tag == (0xFFFE, 0xE0DD):
                return pos, items
            items.append((pos, length))
            pos += 8 + length

    def rle(self, choice: str) -> None:
        f = self.pick(lambda p: p in self.rle_files)
        data = bytearray(f.read_bytes())
        sop, study = self.ids(f)
        delim, items = self._fragments(bytes(data))
        if choice == "no_delimiter":
            out, expect, what = bytes(data[:delim]), "truncated", "sequence delimiter of the Pixel Data cut off"
        elif choice == "item_tag":
            pos = items[1][0]  # the first fragment (items[0] is the Basic Offset Table)
            data[pos + 3] ^= 0x01
            out, expect, what = bytes(data), "fragments", "item tag of the first fragment flipped"
        elif choice == "segments":
            pos = items[1][0] + 8
            struct.pack_into("<I", data, pos, struct.unpack_from("<I", data, pos)[0] + 1)
            out, expect, what = bytes(data), "fragments", "RLE header claims one segment more than it has"
        else:
            ds = pydicom.dcmread(io.BytesIO(bytes(data)))
            frames = [bytes(data[p + 8:p + 8 + n]) for p, n in items[1:]]
            enc = bytearray(encapsulate(frames, has_bot=True))
            struct.pack_into("<I", enc, 8, 8)  # the one offset should be 0: it points nowhere now
            ds.PixelData = bytes(enc)
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            out, expect, what = buf.getvalue(), "fragments", "Basic Offset Table entry points into a fragment"
        self.place(f, out, f"rle_{choice}", expect, what, sop=sop, study=study)

    # duplicates and conflicts ----------------------------------------------------------------------------
    def exact_duplicate(self) -> None:
        f = self.pick(lambda p: not self._taken(p))
        sop, study = self.ids(f)
        self.place(f, f.read_bytes(), "exact_duplicate", "duplicate", "a byte-identical copy under another name",
                   sop=sop, study=study)

    def conflict_same_study(self) -> None:
        """A valid file with the SOPInstanceUID of another, other content, in the same study and series."""
        f = self.pick(lambda p: p not in self.rle_files and self._has_pixels(p) and not self._taken(p))
        ds = pydicom.dcmread(f)
        arr = bytearray(ds.PixelData)
        arr[0] ^= 0xFF  # other pixel values; everything still consistent
        ds.PixelData = bytes(arr)
        ds.SeriesDescription = (ds.get("SeriesDescription", "") or "") + " (re-sent)"
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        self.place(f, buf.getvalue(), "conflict_same_study", "conflict",
                   "valid, same UIDs, other pixel values and series description", sop=str(ds.SOPInstanceUID),
                   study=str(ds.StudyInstanceUID))

    def conflict_other_study(self) -> None:
        """A valid file with the SOPInstanceUID of another, filed under another included study."""
        f = self.pick(lambda p: p not in self.rle_files and not self._taken(p))
        own = self.study_of[f]
        other_study = self.rng.choice(sorted(s for s in self.eligible if s != own))
        host = self.rng.choice([p for p in self.eligible[other_study] if p not in self.rle_files])
        h = pydicom.dcmread(host, stop_before_pixels=True)
        ds = pydicom.dcmread(f)
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "PatientID", "PatientName", "PatientBirthDate",
                   "PatientSex", "AccessionNumber", "StudyDate", "StudyTime", "StudyDescription", "StudyID",
                   "SeriesNumber", "Modality"):
            if kw in h:
                setattr(ds, kw, h.data_element(kw).value)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        self.place(f, buf.getvalue(), "conflict_other_study", "conflict",
                   "valid, the SOPInstanceUID of a file of another study", sop=str(ds.SOPInstanceUID),
                   study=other_study, folder=host.parent)

    # helpers -------------------------------------------------------------------------------------------
    def _taken(self, f: Path) -> bool:
        """Already the original of a duplicate or conflict (one twin per instance keeps expectations simple)."""
        return any(d.original == f and d.expect in ("conflict", "duplicate") for d in self.out)

    @staticmethod
    def _modality(f: Path) -> str:
        return str(pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["Modality"]).get("Modality", ""))

    @staticmethod
    def _has_pixels(f: Path) -> bool:
        return b"\xe0\x7f\x10\x00" in f.read_bytes()[-200000:]


ALL_KINDS = ("truncated_random", "truncated_in_pixels", "truncated_in_rle_pixels", "cut_before_pixels",
             "pixels_short", "flip_uid_StudyInstanceUID", "flip_uid_SeriesInstanceUID", "flip_uid_SOPInstanceUID",
             "flip_vr", "flip_tag", "flip_length", "flip_rows", "zeroed_head", "garbage_head", "flip_dicm",
             "unknown_ts", "garbage_ts", "lying_ts_implicit", "lying_ts_big", "lying_ts_deflate", "lying_ts_jpeg",
             "lying_ts_explicit_for_implicit", "lying_ts_native_for_rle", "rle_no_delimiter", "rle_item_tag",
             "rle_segments", "rle_bot", "exact_duplicate", "conflict_same_study", "conflict_other_study")


def _make(m: "_Maker", kind: str) -> None:
    for prefix in ("flip_uid_", "lying_ts_", "rle_"):
        if kind.startswith(prefix):
            getattr(m, prefix.rstrip("_"))(kind[len(prefix):])
            return
    if kind == "truncated_in_rle_pixels":
        m.truncated_in_pixels(rle=True)
    else:
        getattr(m, kind)()


def make_corpus(out: Path, n_patients: int = 5, seed: int = 19, n_damaged: int | None = None,
                demo_seed: int = 7) -> Corpus:
    """A demo cohort in `out` with damaged copies among its files; every kind at least once.

    `n_damaged` (default: one of each kind) is reached by drawing further kinds at random.
    """
    demo = generate(out, n_patients=n_patients, seed=demo_seed)
    m = _Maker(demo, seed)
    m.rle_files = set(m.make_rle(3))
    kinds = list(ALL_KINDS)
    while len(kinds) < (n_damaged or 0) - 2:  # the demo's own two broken files count too
        kinds.append(m.rng.choice(ALL_KINDS))
    for kind in kinds:
        _make(m, kind)
    # the demo's own two broken files (see ingest/demo.py _write_broken) are damaged files too
    trunc, text = demo.broken
    m.out.append(Damaged(trunc, "demo_truncated", "truncated", "demo: extra instance cut inside the Pixel Data "
                         "element header", study_uid=trunc.parent.parent.name))
    m.out.append(Damaged(text, "demo_text", "preamble", "demo: a text file named .dcm"))
    damaged_paths = {d.path for d in m.out}
    good = [f for f in sorted(demo.pacs.rglob("*.dcm")) if f not in damaged_paths]
    corpus = Corpus(demo, m.out, good, sorted(m.rle_files), set(m.eligible))
    (out / "damaged.json").write_text(json.dumps([d.to_json() for d in m.out], indent=1) + "\n")
    return corpus


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--patients", type=int, default=24)
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--damaged", type=int, default=100)
    a = ap.parse_args(argv)
    c = make_corpus(a.out, a.patients, a.seed, a.damaged)
    print(f"{a.out}: {len(c.good)} good files, {len(c.damaged)} damaged ({len(c.by_kind())} kinds)")


if __name__ == "__main__":
    main()
