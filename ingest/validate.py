"""Is this file a whole, well-formed DICOM instance? One answer per file, naming the check that failed.

Why a walker of our own and not `pydicom.dcmread`: pydicom is built to read what it can, so it
quietly accepts a file cut inside its Pixel Data, a transfer syntax that lies about the encoding
(it switches VR mode with a warning), out-of-order tags and UIDs full of control characters. A
research lake must refuse exactly those. The walk below reads every element header of every
(nested) data set without decoding values, so it also costs a fraction of a full parse (it runs on
every instance a source delivers).

The checks, in the order they run (the first that fails is the answer):

  preamble         128-byte preamble + 'DICM' (PS3.10 7.1): anything else is not a Part 10 file
  file_meta        group 0002 readable, Transfer Syntax and Media Storage UIDs present, and the
                   Media Storage SOP Class/Instance UIDs equal the data set's (PS3.10 7.1)
  transfer_syntax  the Transfer Syntax UID is one the standard defines (PS3.6 Annex A)
  encoding         the data set is encoded as the transfer syntax says (explicit vs implicit VR,
                   byte order, deflate, native vs encapsulated Pixel Data, codec of the fragments)
  truncated        the data ends inside an element, item, fragment or before a delimiter
  parse            any other structural fault: unknown VR, tags out of order, a stray or bad item,
                   an undefined length where none is allowed, sequences nested absurdly deep
  uid              SOP Class, SOP Instance, Study and Series Instance UIDs present and valid VR UI
                   (digits and dots, no leading zero in a component except '0', at most 64 chars)
  pixel_data       native Pixel Data length = Rows x Columns x SamplesPerPixel x NumberOfFrames x
                   BitsAllocated / 8 (bits packed for BitsAllocated 1; padded to even); image
                   attributes without pixel data (a file cut on an element boundary)
  fragments        encapsulated Pixel Data: Basic Offset Table, item tags, fragments per frame,
                   codec header of each frame (RLE segment table, JPEG/JPEG-LS SOI, J2K SOC)

What is deliberately tolerated (found in real archives, harmless for storage): odd value lengths
outside the Pixel Data, unknown private elements, trailing spaces as UI padding, any preamble
content (TIFF headers live there), values that are merely unusual (dates, character sets).
"""

from __future__ import annotations

import mmap
import os
import re
import struct
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import uid as _uid
from pydicom._dicom_dict import DicomDictionary

from .errors import PermanentError

CHECKS = ("preamble", "file_meta", "transfer_syntax", "encoding", "truncated", "parse", "uid", "pixel_data",
          "fragments")

# -- transfer syntaxes (PS3.6 Annex A) --------------------------------------------------------------
# codec: what the encapsulated fragments hold (None = native pixel data)
@dataclass(frozen=True)
class Syntax:
    uid: str
    name: str
    explicit: bool = True
    little: bool = True
    deflated: bool = False
    codec: str | None = None  # jpeg | jpegls | j2k | jxl | rle | raw | video | jpip | other

    @property
    def encapsulated(self) -> bool:
        return self.codec is not None and self.codec != "jpip"


def _known_syntaxes() -> dict[str, Syntax]:
    """pydicom's list (kept current with the standard) plus the few it leaves out."""
    families = {}
    for codec, uids in (("jpeg", _uid.JPEGTransferSyntaxes), ("jpegls", _uid.JPEGLSTransferSyntaxes),
                        ("j2k", _uid.JPEG2000TransferSyntaxes), ("rle", _uid.RLETransferSyntaxes),
                        ("video", _uid.MPEGTransferSyntaxes)):
        families.update({str(u): codec for u in uids})
    out: dict[str, Syntax] = {}
    for u in _uid.AllTransferSyntaxes:
        s = str(u)
        codec = families.get(s)
        if codec is None and u.is_encapsulated:
            codec = "jpip" if "JPIP" in u.name else "other"
        out[s] = Syntax(s, u.name, explicit=not u.is_implicit_VR, little=u.is_little_endian,
                        deflated=u.is_deflated, codec=codec)
    extra = [
        Syntax("1.2.840.10008.1.20", "Papyrus 3 Implicit VR Little Endian (retired)", explicit=False),
        Syntax("1.2.840.10008.1.2.1.98", "Encapsulated Uncompressed Explicit VR Little Endian", codec="raw"),
        Syntax("1.2.840.10008.1.2.4.94", "JPIP Referenced", codec="jpip"),
        Syntax("1.2.840.10008.1.2.4.95", "JPIP Referenced Deflate", deflated=True, codec="jpip"),
        Syntax("1.2.840.10008.1.2.4.110", "JPEG XL Lossless", codec="jxl"),
        Syntax("1.2.840.10008.1.2.4.111", "JPEG XL JPEG Recompression", codec="jxl"),
        Syntax("1.2.840.10008.1.2.4.112", "JPEG XL", codec="jxl"),
        Syntax("1.2.840.10008.1.2.8.1", "Deflated Image Frame Compression", codec="other"),
    ]
    # retired JPEG processes (PS3.6 Annex A lists them; old archives still hold them)
    extra += [Syntax(f"1.2.840.10008.1.2.4.{n}", f"JPEG process (retired, .{n})", codec="jpeg")
              for n in (52, 53, 54, 55, 56, 58, 59, 60, 61, 62, 63, 64, 65, 66)]
    for s in extra:
        out.setdefault(s.uid, s)
    for s in ("1.2.840.10008.1.2.4.204", "1.2.840.10008.1.2.4.205"):  # JPIP HTJ2K referenced (+ deflate)
        if s in out:
            out[s] = Syntax(s, out[s].name, deflated=s.endswith("205"), codec="jpip")
    return out


SYNTAXES = _known_syntaxes()
EXPLICIT_LE = SYNTAXES["1.2.840.10008.1.2.1"]

# -- VRs (PS3.5 6.2 and 7.1.2) -------------------------------------------------------------------------
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"})
_SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN",
                        b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})
_VR_KIND = {**dict.fromkeys(_SHORT_VRS, 0), **dict.fromkeys(_LONG_VRS, 1)}  # 1 = 32-bit length after 2 reserved bytes
_SQ_TAGS = frozenset(t for t, e in DicomDictionary.items() if e[0] == "SQ")
UNDEFINED = 0xFFFFFFFF
MAX_DEPTH = 200

ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_PIXEL_DATA = 0x7FE00010, 0x7FE00008, 0x7FE00009
# the UIDs every instance needs: tag -> (name in messages, Verdict field)
_REQUIRED_UIDS = {0x00080016: ("SOPClassUID", "sop_class_uid"), 0x00080018: ("SOPInstanceUID", "sop_uid"),
                  0x0020000D: ("StudyInstanceUID", "study_uid"), 0x0020000E: ("SeriesInstanceUID", "series_uid")}
_UID_VRS = frozenset({b"UI", b"UN", None})  # UN: written by converters that lost the VR; None: implicit VR
_PIXEL_ATTRS = {0x00280002: "SamplesPerPixel", 0x00280004: "PhotometricInterpretation", 0x00280008: "NumberOfFrames",
                0x00280010: "Rows", 0x00280011: "Columns", 0x00280100: "BitsAllocated"}
# image attributes without Pixel Data are fine when one of these carries the data instead
_OTHER_DATA = {0x00287FE0, 0x56000020, FLOAT_PIXEL_DATA, DOUBLE_PIXEL_DATA}  # provider URL, spectroscopy
# Also kept (raw, top level only) for the stores: what a lake needs to file an instance without
# parsing it a second time (issue 18: a pydicom header read cost ~3 ms of a ~4 ms store per slice).
SERIES_TAGS = {0x00080005: "SpecificCharacterSet", 0x00080060: "Modality", 0x0008103E: "SeriesDescription",
               0x00200011: "SeriesNumber"}
_WANTED = frozenset({*_REQUIRED_UIDS, *_PIXEL_ATTRS, *_OTHER_DATA, PIXEL_DATA, *SERIES_TAGS})

_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


# UIDs already found valid: a study's Study/Series/SOP Class UIDs repeat in each of its instances,
# and a dict look-up is ~30x cheaper than the regex (bounded; cleared when full)
_KNOWN_VALID: dict[str, None] = {}


def valid_uid(text: str) -> bool:
    """VR UI (PS3.5 9.1): components of digits without leading zeros ('0' itself allowed), dots, <= 64 chars."""
    if text in _KNOWN_VALID:
        return True
    if 0 < len(text) <= 64 and _UID_RE.fullmatch(text) is not None:
        if len(_KNOWN_VALID) >= 4096:
            _KNOWN_VALID.clear()
        _KNOWN_VALID[text] = None
        return True
    return False


def show(value: object, limit: int = 80) -> str:
    """A value as safe, printable text for a message: control characters and stray bytes escaped."""
    text = value.decode("latin-1") if isinstance(value, (bytes, bytearray, memoryview)) else str(value)
    out = repr(text)[1:-1] if not text.isprintable() else text
    return out if len(out) <= limit else out[:limit] + "…"


# -- the answer ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    """What `validate_*` found. `check` is None for a whole, well-formed instance, else one of CHECKS.

    The UIDs are as read (text, possibly invalid; empty when they could not be read), so a caller
    can name a refused file by its instance.
    """

    check: str | None
    detail: str = ""
    sop_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""
    sop_class_uid: str = ""
    transfer_syntax: str = ""
    #: raw top-level values of SERIES_TAGS found in a whole instance (for the stores; see SERIES_TAGS)
    series_values: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def ok(self) -> bool:
        return self.check is None

    @property
    def reason(self) -> str:
        """The failure text for the catalog: `damaged DICOM (<check>): <detail>`."""
        return "" if self.ok else f"damaged DICOM ({self.check}): {self.detail}"


class DamagedDicom(PermanentError):
    """A file failed validation; `.verdict` says which check."""

    def __init__(self, verdict: Verdict, where: str = "") -> None:
        super().__init__(f"{where}: {verdict.reason}" if where else verdict.reason)
        self.verdict = verdict


class _Bad(Exception):
    def __init__(self, check: str, detail: str) -> None:
        super().__init__(detail)
        self.check, self.detail = check, detail


def _tag(t: int) -> str:
    return f"({t >> 16:04X},{t & 0xFFFF:04X})"


# -- the walk ------------------------------------------------------------------------------------------
class _Level:
    """What one data set (top level or an item) said about its pixels."""

    __slots__ = ("values", "pixel", "encapsulated", "other_data")

    def __init__(self, values: dict | None = None, pixel: tuple[int, int] | None = None,
                 encapsulated: tuple | None = None, other_data: bool = False) -> None:
        self.values: dict[int, tuple[bytes | None, bytes]] = {} if values is None else values  # tag -> (VR, raw)
        self.pixel = pixel  # native Pixel Data (offset, length)
        self.encapsulated: tuple[tuple[int, int], list[tuple[int, int, int]]] | None = encapsulated
        self.other_data = other_data


class _Walker:
    """Reads every element header of a data set, in one encoding; raises _Bad on the first fault."""

    def __init__(self, buf, explicit: bool, little: bool) -> None:
        self.buf = buf
        self.explicit = explicit
        self.little = little
        e = "<" if little else ">"
        self.head = struct.Struct(e + "HH2sH")  # tag, and (explicit VR) VR + 16-bit length
        self.hhi = struct.Struct(e + "HHI")
        self.i = struct.Struct(e + "I")
        self.levels: list[_Level] = []

    def dataset(self, pos: int, end: int, depth: int = 0, until_item_end: bool = False) -> int:
        """Walk elements from `pos` to `end` (or to an Item Delimitation Item); returns where it stopped."""
        if depth > MAX_DEPTH:
            raise _Bad("parse", f"sequences nested deeper than {MAX_DEPTH} levels at byte {pos}")
        # locals: this loop runs once per element of every instance a source delivers
        buf, explicit = self.buf, self.explicit
        head = self.head.unpack_from
        long_len = self.i.unpack_from
        kinds, wanted, sq_tags = _VR_KIND, _WANTED, _SQ_TAGS
        level = _Level()
        self.levels.append(level)
        values = level.values
        last = -1
        while pos < end:
            if pos + 8 > end:
                raise _Bad("truncated", f"the data ends inside an element header at byte {pos}")
            group, elem, vr, short = head(buf, pos)
            tag = group << 16 | elem
            if tag <= last or group == 0xFFFE:
                if tag == ITEM_END and until_item_end:
                    return pos + 8
                if group == 0xFFFE:
                    raise _Bad("parse", f"unexpected item tag {_tag(tag)} at byte {pos}")
                raise _Bad("parse", f"element {_tag(tag)} at byte {pos} is out of order (after {_tag(last)})")
            last = tag
            if explicit:
                kind = kinds.get(vr)
                if kind == 0:  # the common case: a short VR with a 16-bit length, never a sequence
                    stop = pos + 8 + short
                    if stop > end:
                        raise _Bad("truncated", f"element {_tag(tag)} at byte {pos} needs {short} bytes; "
                                                f"only {end - pos - 8} remain")
                    if tag in wanted:
                        values[tag] = (vr, bytes(buf[pos + 8:stop]))
                    pos = stop
                    continue
                if kind is None:
                    raise _Bad("parse", f"element {_tag(tag)} at byte {pos} has no valid VR ({show(vr)!r})")
                if pos + 12 > end:
                    raise _Bad("truncated", f"the data ends inside the header of {_tag(tag)} at byte {pos}")
                length = long_len(buf, pos + 8)[0]
                start = pos + 12
            else:
                vr = None
                length = long_len(buf, pos + 4)[0]
                start = pos + 8
            if length == UNDEFINED:
                if tag == PIXEL_DATA:
                    pos = self._encapsulated(start, end, level)
                elif vr == b"UN":  # PS3.5 6.2.2: an undefined-length UN holds an implicit VR LE sequence
                    pos = _Walker(buf, False, True)._sequence_from(self, start, None, end, depth)
                elif vr == b"SQ" or vr is None:
                    pos = self._sequence(start, None, end, depth)
                else:
                    raise _Bad("parse", f"element {_tag(tag)} at byte {pos} has an undefined length but VR "
                                        f"{show(vr)}")
                continue
            stop = start + length
            if stop > end:
                raise _Bad("truncated", f"element {_tag(tag)} at byte {pos} needs {length} bytes; "
                                        f"only {end - start} remain")
            if vr == b"SQ" or (vr is None and tag in sq_tags):
                self._sequence(start, stop, stop, depth)
            elif tag in wanted:
                if tag == PIXEL_DATA:
                    level.pixel = (start, length)
                elif tag in _OTHER_DATA:
                    level.other_data = True
                else:
                    values[tag] = (vr, bytes(buf[start:stop]))
            pos = stop
        if until_item_end:
            raise _Bad("truncated", f"the data ends inside an item of undefined length (no item delimiter "
                                    f"before byte {end})")
        return pos

    def _sequence_from(self, parent: "_Walker", pos: int, stop: int | None, end: int, depth: int) -> int:
        self.levels = parent.levels
        return self._sequence(pos, stop, end, depth)

    def _sequence(self, pos: int, stop: int | None, end: int, depth: int) -> int:
        """Items of a sequence; `stop` is its end for a defined length, None for an undefined one."""
        buf = self.buf
        limit = stop if stop is not None else end
        while True:
            if stop is not None and pos == stop:
                return pos
            if pos + 8 > limit:
                if stop is None:
                    raise _Bad("truncated", f"the data ends inside a sequence of undefined length (no sequence "
                                            f"delimiter before byte {limit})")
                raise _Bad("parse", f"sequence item header at byte {pos} runs past the sequence's end")
            group, elem, length = self.hhi.unpack_from(buf, pos)
            tag = group << 16 | elem
            if tag == SEQ_END:
                if stop is not None:
                    raise _Bad("parse", f"sequence delimiter inside a sequence of defined length at byte {pos}")
                return pos + 8
            if tag != ITEM:
                raise _Bad("parse", f"expected a sequence item at byte {pos}, found {_tag(tag)}")
            if length == UNDEFINED:
                pos = self.dataset(pos + 8, limit, depth + 1, until_item_end=True)
            else:
                item_end = pos + 8 + length
                if item_end > limit:
                    raise _Bad("truncated" if stop is None or limit == len(buf) else "parse",
                               f"sequence item at byte {pos} needs {length} bytes; only {limit - pos - 8} remain")
                self.dataset(pos + 8, item_end, depth + 1)
                pos = item_end

    def _encapsulated(self, pos: int, end: int, level: _Level) -> int:
        """Basic Offset Table, fragments, sequence delimiter (PS3.5 A.4); records the fragments."""
        buf = self.buf
        first = True
        bot = (pos, 0)
        base = 0
        frags: list[tuple[int, int, int]] = []  # (offset from the first fragment's item tag, data start, length)
        while True:
            if pos + 8 > end:
                raise _Bad("truncated", f"the data ends inside the encapsulated Pixel Data after {len(frags)} "
                                        "fragments (no sequence delimiter)")
            group, elem, length = self.hhi.unpack_from(buf, pos)
            tag = group << 16 | elem
            if tag == SEQ_END:
                if length != 0:
                    raise _Bad("fragments", f"sequence delimiter of the Pixel Data has length {length}, not 0")
                pos += 8
                break
            if tag != ITEM:
                raise _Bad("fragments", f"expected an item tag in the encapsulated Pixel Data at byte {pos}, "
                                        f"found {_tag(tag)}")
            if length == UNDEFINED:
                raise _Bad("fragments", f"fragment at byte {pos} has an undefined length")
            if pos + 8 + length > end:
                what = "the Basic Offset Table" if first else f"fragment {len(frags) + 1}"
                raise _Bad("truncated", f"{what} at byte {pos} needs {length} bytes; only {end - pos - 8} remain")
            if first:
                bot = (pos + 8, length)
                base = pos + 8 + length
                first = False
            else:
                frags.append((pos - base, pos + 8, length))
            pos += 8 + length
        level.encapsulated = (bot, frags)
        return pos


# -- values --------------------------------------------------------------------------------------------
def _text(raw: bytes) -> str:
    return raw.decode("latin-1").rstrip("\x00 ")


def _us(raw: bytes, little: bool, name: str) -> int:
    if len(raw) != 2:
        raise _Bad("pixel_data", f"{name} has {len(raw)} bytes, not one US value")
    return int.from_bytes(raw, "little" if little else "big")


def _check_uids(top: _Level, ids: dict[str, str]) -> None:
    """The four required UIDs are present, VR UI and valid; `ids` holds their texts (by Verdict field)."""
    for tag, (name, key) in _REQUIRED_UIDS.items():
        got = top.values.get(tag)
        if got is None:
            raise _Bad("uid", f"{name} {_tag(tag)} is missing")
        vr, _raw = got
        if vr not in _UID_VRS:
            raise _Bad("uid", f"{name} has VR {show(vr)}, not UI")
        text = ids[key]
        if not valid_uid(text):
            raise _Bad("uid", f"{name} {show(text)!r} is not a valid UID (digits and dots, no leading zeros, "
                              f"at most 64 characters; {len(text)} here)")


def _frame_bytes(level: _Level, little: bool) -> tuple[int, int, int, int, str]:
    """(rows, columns, samples, bits allocated, photometric) of a level holding pixel data."""
    v = level.values
    missing = [n for t, n in _PIXEL_ATTRS.items() if t in (0x00280010, 0x00280011, 0x00280100) and t not in v]
    if missing:
        raise _Bad("pixel_data", f"Pixel Data without {', '.join(missing)}")
    rows = _us(v[0x00280010][1], little, "Rows")
    cols = _us(v[0x00280011][1], little, "Columns")
    bits = _us(v[0x00280100][1], little, "BitsAllocated")
    samples = _us(v[0x00280002][1], little, "SamplesPerPixel") if 0x00280002 in v else 1
    photometric = _text(v[0x00280004][1]).strip() if 0x00280004 in v else ""
    if bits != 1 and bits % 8:
        raise _Bad("pixel_data", f"BitsAllocated {bits} is neither 1 nor a multiple of 8")
    if rows == 0 or cols == 0 or samples == 0:
        raise _Bad("pixel_data", f"Rows {rows} x Columns {cols} x SamplesPerPixel {samples} holds no pixels")
    return rows, cols, samples, bits, photometric


def _frames(level: _Level) -> int:
    raw = level.values.get(0x00280008)
    if raw is None:
        return 1
    text = _text(raw[1]).strip()
    try:
        n = int(text) if text else 1
    except ValueError:
        raise _Bad("pixel_data", f"NumberOfFrames {show(text)!r} is not a number") from None
    if n < 1:
        raise _Bad("pixel_data", f"NumberOfFrames is {n}")
    return n


def _native_length(rows: int, cols: int, samples: int, bits: int, photometric: str, frames: int) -> int:
    """Bytes of native pixel data without padding (PS3.5 8.1.1; YBR_FULL_422 holds 2 samples a pixel)."""
    if photometric == "YBR_FULL_422" and samples == 3:
        samples = 2
    total_bits = rows * cols * samples * frames * bits
    return (total_bits + 7) // 8 if bits == 1 else total_bits // 8


# Pixel Data lengths already found whole, by the raw values they follow from: the instances of a
# series share them, and the look-up is ~10x cheaper than decoding them again (bounded)
_WHOLE_LENGTHS: dict[tuple, None] = {}
_IMAGE_TAGS = (0x00280002, 0x00280004, 0x00280008, 0x00280010, 0x00280011, 0x00280100)


def _check_native(level: _Level, little: bool) -> None:
    start, length = level.pixel  # type: ignore[misc]
    v = level.values
    key = (length, little, *[v.get(t) for t in _IMAGE_TAGS])
    if key in _WHOLE_LENGTHS:
        return
    rows, cols, samples, bits, photometric = _frame_bytes(level, little)
    frames = _frames(level)
    want = _native_length(rows, cols, samples, bits, photometric, frames)
    padded = want + (want & 1)
    # an odd byte count is padded to even (PS3.5 7.1.1); the unpadded odd length some writers leave
    # still holds every pixel, so it is whole
    if length == padded or (want & 1 and length == want):
        if len(_WHOLE_LENGTHS) >= 1024:
            _WHOLE_LENGTHS.clear()
        _WHOLE_LENGTHS[key] = None
    else:
        raise _Bad("pixel_data", f"Pixel Data has {length} bytes; Rows {rows} x Columns {cols} x SamplesPerPixel "
                                 f"{samples} x {frames} frame(s) at {bits} bits needs {padded}")


_JPEG_SOI = b"\xff\xd8"
_J2K_SOC = b"\xff\x4f\xff\x51"
_JP2_BOX = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_JXL = (b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")
_STARTS = {"jpeg": (_JPEG_SOI,), "jpegls": (_JPEG_SOI,), "j2k": (_J2K_SOC, _JP2_BOX), "jxl": _JXL}


def _sniff(head: bytes) -> str | None:
    if head.startswith(_JPEG_SOI):
        return "JPEG"
    if head.startswith(_J2K_SOC) or head.startswith(_JP2_BOX):
        return "JPEG 2000"
    return None


def _check_fragments(level: _Level, buf, syntax: Syntax) -> None:
    (bot_start, bot_len), frags = level.encapsulated  # type: ignore[misc]
    frames = _frames(level)
    if not frags:
        raise _Bad("fragments", "encapsulated Pixel Data without any fragment")
    if bot_len % 4:
        raise _Bad("fragments", f"Basic Offset Table of {bot_len} bytes is not a list of 32-bit offsets")
    firsts: list[int] = []  # index of each frame's first fragment
    offsets = {off: i for i, (off, _s, _l) in enumerate(frags)}
    if bot_len:
        table = struct.unpack_from(f"<{bot_len // 4}I", buf, bot_start)
        if len(table) != frames:
            raise _Bad("fragments", f"Basic Offset Table lists {len(table)} frames; NumberOfFrames is {frames}")
        for k, off in enumerate(table):
            if off not in offsets or (k and off <= table[k - 1]):
                raise _Bad("fragments", f"Basic Offset Table entry {k + 1} ({off}) does not point at a fragment")
            firsts.append(offsets[off])
    elif syntax.codec != "video":
        if len(frags) < frames:
            raise _Bad("fragments", f"{len(frags)} fragments for {frames} frames")
        firsts = list(range(frames)) if len(frags) == frames else [0]
    codec = syntax.codec
    if codec in ("rle", "raw") and len(frags) != frames:
        raise _Bad("fragments", f"{syntax.name} needs one fragment per frame: {len(frags)} fragments, {frames} frames")
    if codec == "raw":
        rows, cols, samples, bits, photometric = _frame_bytes(level, True)
        want = _native_length(rows, cols, samples, bits, photometric, 1)
        for k, (_o, _s, length) in enumerate(frags):
            if length not in (want, want + (want & 1)):
                raise _Bad("fragments", f"frame {k + 1} has {length} bytes; an uncompressed frame needs {want}")
    elif codec == "rle":
        rows, cols, samples, bits, _p = _frame_bytes(level, True)
        segments = samples * ((bits + 7) // 8)
        for k, (_o, start, length) in enumerate(frags):
            _check_rle(bytes(buf[start:start + min(length, 64)]), length, segments, k + 1)
    elif codec in _STARTS:
        for k in firsts:
            _o, start, length = frags[k]
            head = bytes(buf[start:start + 12])
            if not any(head.startswith(s) for s in _STARTS[codec]):
                other = _sniff(head)
                if other:
                    raise _Bad("encoding", f"transfer syntax {syntax.name} but frame fragment {k + 1} holds {other} data")
                raise _Bad("fragments", f"fragment {k + 1} does not start with the {syntax.name} marker "
                                        f"({head[:4].hex()})")


def _check_rle(head: bytes, length: int, segments: int, k: int) -> None:
    """PS3.5 G.5: a 64-byte header of 16 little-endian uint32 (segment count, then offsets)."""
    if length < 64:
        other = _sniff(head)
        raise _Bad("encoding" if other else "fragments",
                   f"RLE fragment {k} holds {other} data" if other else f"RLE fragment {k} is {length} bytes, shorter "
                                                                        "than its 64-byte header")
    values = struct.unpack("<16I", head)
    n, offs = values[0], values[1:]
    if n != segments or not all(offs[i] for i in range(n)) or offs[0] != 64 or any(offs[n:]) or \
            any(offs[i] >= offs[i + 1] for i in range(n - 1)) or offs[n - 1] >= length:
        other = _sniff(head)
        if other:
            raise _Bad("encoding", f"transfer syntax RLE Lossless but fragment {k} holds {other} data")
        raise _Bad("fragments", f"RLE fragment {k}: header says {n} segments at offsets "
                                f"{list(offs[:max(n, 1)])}; {segments} segments expected within {length} bytes")


# -- entry points --------------------------------------------------------------------------------------
def _meta(buf) -> tuple[int, dict[int, bytes]]:
    """File meta group (always explicit VR little endian); returns (data set start, values)."""
    if _fast is not None:
        got = _fast.meta(buf)
        if got is not None:
            return got
    pos, end = 132, len(buf)
    values: dict[int, bytes] = {}
    while pos + 8 <= end:
        group, elem = struct.unpack_from("<HH", buf, pos)
        if group != 0x0002:
            break
        vr = bytes(buf[pos + 4:pos + 6])
        if vr in _LONG_VRS:
            if pos + 12 > end:
                raise _Bad("truncated", "the file ends inside the file meta group")
            length = struct.unpack_from("<I", buf, pos + 8)[0]
            start = pos + 12
        elif vr in _SHORT_VRS:
            length = struct.unpack_from("<H", buf, pos + 6)[0]
            start = pos + 8
        else:
            raise _Bad("file_meta", f"file meta element (0002,{elem:04X}) has no valid VR ({show(vr)!r})")
        if length == UNDEFINED or start + length > end:
            raise _Bad("truncated", f"file meta element (0002,{elem:04X}) runs past the end of the file")
        values[elem] = bytes(buf[start:start + length])
        pos = start + length
    if pos + 8 > end:
        raise _Bad("truncated", "the file ends in or right after the file meta group (no data set)")
    for elem, name in ((0x0010, "TransferSyntaxUID"), (0x0002, "MediaStorageSOPClassUID"),
                       (0x0003, "MediaStorageSOPInstanceUID")):
        if elem not in values:
            raise _Bad("file_meta", f"file meta has no {name} (0002,{elem:04X})")
    return pos, values


def _walk(buf, start: int, syntax: Syntax) -> _Walker:
    data = buf
    if syntax.deflated:
        d = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            data = d.decompress(bytes(buf[start:]))
        except zlib.error as exc:
            raise _Bad("encoding", f"transfer syntax {syntax.name} but the data set does not inflate ({exc})") from None
        if not d.eof:
            raise _Bad("truncated", "the deflated data set ends before its deflate stream does")
        if len(d.unused_data) > 8:  # up to 8: a zlib/gzip trailer some early writers left (D. Clunie's samples)
            raise _Bad("parse", f"{len(d.unused_data)} bytes after the end of the deflated data set")
        start = 0
    if _fast is not None:
        levels = _fast.walk(data, start, len(data), syntax.explicit, syntax.little)
        if levels is not None:
            return _Walked(data, [_Level(*lv) for lv in levels])
    w = _Walker(data, syntax.explicit, syntax.little)  # a fault (or no C): the walk that names it
    w.dataset(start, len(data))
    return w


class _Walked:
    """What the C walk returned, shaped like a finished _Walker (buf, levels)."""

    __slots__ = ("buf", "levels")

    def __init__(self, buf, levels: list[_Level]) -> None:
        self.buf, self.levels = buf, levels


def _load_fast():
    """The C walk (ingest/_dicomwalk.c), configured with this module's tables; None when it is not
    built (a pure-Python install) or RTLAKE_PURE_VALIDATOR=1 asks for the Python walk alone."""
    if os.environ.get("RTLAKE_PURE_VALIDATOR") == "1":
        return None
    try:
        from . import _dicomwalk
    except ImportError:
        return None
    _dicomwalk.configure(sorted(_SHORT_VRS), sorted(_LONG_VRS), sorted(_WANTED), sorted(_SQ_TAGS),
                         sorted(_OTHER_DATA), MAX_DEPTH)
    return _dicomwalk


_fast = _load_fast()
#: which walk runs on the happy path: "c" (built extension) or "python"
WALKER = "c" if _fast is not None else "python"


_ALTERNATIVES = [SYNTAXES["1.2.840.10008.1.2.1"], SYNTAXES["1.2.840.10008.1.2"], SYNTAXES["1.2.840.10008.1.2.2"],
                 SYNTAXES["1.2.840.10008.1.2.1.99"]]


def _describe(s: Syntax) -> str:
    return ("deflated " if s.deflated else "") + ("explicit" if s.explicit else "implicit") + " VR " + \
        ("little" if s.little else "big") + " endian"


def validate_bytes(buf) -> Verdict:
    """Check one Part 10 object held in memory (bytes, bytearray or mmap: slices must be bytes)."""
    ids: dict[str, str] = {}
    ts = ""
    try:
        if len(buf) < 132 or bytes(buf[128:132]) != b"DICM":
            size = len(buf)
            head = bytes(buf[128:132]) if size >= 132 else b""
            raise _Bad("preamble", f"no 'DICM' after a 128-byte preamble ({size} bytes; found {show(head)!r} at 128)"
                       if size >= 132 else f"{size} bytes: too short for a preamble and 'DICM'")
        start, meta = _meta(buf)
        ts = _text(meta[0x0010])
        meta_sop, meta_class = _text(meta[0x0003]), _text(meta[0x0002])
        ids = {"sop_uid": meta_sop, "sop_class_uid": meta_class}
        syntax = SYNTAXES.get(ts)
        if syntax is None:
            raise _Bad("transfer_syntax", f"transfer syntax {show(ts)!r} is not one the DICOM standard defines")
        try:
            walker = _walk(buf, start, syntax)
        except _Bad as exc:
            if exc.check not in ("parse", "truncated", "encoding"):
                raise
            for alt in _ALTERNATIVES:
                if (alt.explicit, alt.little, alt.deflated) == (syntax.explicit, syntax.little, syntax.deflated):
                    continue
                try:
                    _walk(buf, start, alt)
                except _Bad:
                    continue
                raise _Bad("encoding", f"transfer syntax {syntax.name} but the data set is {_describe(alt)}") from None
            raise
        top = walker.levels[0]
        values = top.values
        whole = True
        for tag, (_name, key) in _REQUIRED_UIDS.items():
            got = values.get(tag)
            if got is None:
                whole = False
                continue
            text = ids[key] = _text(got[1])
            whole = whole and got[0] in _UID_VRS and valid_uid(text)
        if not whole:
            _check_uids(top, ids)  # something is wrong: find what, in the order the checks are listed
        # A Media Storage UID that differs from the data set's is a known quirk of tools that rewrite
        # data sets (anonymisers, old converters): harmless, since rtlake names files by the data set.
        # One that is not even a UID is damage.
        for name, value, same in (("MediaStorageSOPInstanceUID", meta_sop, ids["sop_uid"]),
                                  ("MediaStorageSOPClassUID", meta_class, ids["sop_class_uid"])):
            if value != same and not valid_uid(value):  # equal to the data set's: just checked
                raise _Bad("file_meta", f"{name} {show(value)!r} is not a valid UID")
        data = walker.buf
        for level in walker.levels:
            if level.pixel is not None:
                if syntax.encapsulated and level is top:
                    raise _Bad("encoding", f"transfer syntax {syntax.name} is encapsulated but Pixel Data is native "
                                           f"({level.pixel[1]} bytes of defined length)")
                _check_native(level, syntax.little)
            elif level.encapsulated is not None:
                if not syntax.encapsulated:
                    raise _Bad("encoding", f"transfer syntax {syntax.name} is native but Pixel Data is encapsulated")
                _check_fragments(level, data, syntax)
            elif level is top and 0x00280010 in level.values and 0x00280011 in level.values \
                    and not level.other_data and syntax.codec != "jpip":
                raise _Bad("pixel_data", "Rows and Columns are present but there is no Pixel Data "
                                         "(the file may have been cut at an element boundary)")
    except _Bad as exc:
        return Verdict(exc.check, exc.detail, transfer_syntax=ts, **ids)
    series = {tag: values[tag][1] for tag in SERIES_TAGS if tag in values}
    # a frozen dataclass's __init__ sets each field through object.__setattr__ (~3 us, a sixth of
    # this whole check); filling the instance's __dict__ at once gives the same object in ~0.5 us
    ok = object.__new__(Verdict)
    ok.__dict__.update(_OK_FIELDS, transfer_syntax=ts, series_values=series, **ids)
    return ok


_OK_FIELDS = {"check": None, "detail": "", "sop_uid": "", "study_uid": "", "series_uid": "", "sop_class_uid": ""}


# Verdicts of files rtlake itself has just written from bytes it had validated in memory (the pulls,
# ingest/sources/_files.py), keyed by what pins that content on disk: path, device, inode, size and
# mtime (the path too: a freed inode can be reused within one timestamp tick by a file of equal size).
# Why: a pulled instance is validated on arrival, written once to scratch, and then handed to the
# store, which validates every file it is given; without this each pulled instance was walked twice
# (~0.35 ms per CT slice, a third of the ingest: scripts/bench/bench_pull.py). Used once, then dropped.
_WRITTEN: dict[tuple[str, int, int, int, int], Verdict] = {}
_WRITTEN_LOCK = threading.Lock()
_WRITTEN_MAX = 100_000


def _stat_key(path: Path | str, st: os.stat_result | None = None, normal: bool = False
              ) -> tuple[str, int, int, int, int]:
    st = st or os.stat(path)
    return path if normal else os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def remember_written(path: Path | str, verdict: Verdict, st: os.stat_result | None = None,
                     normal: bool = False) -> None:
    """Record the verdict of bytes just written to `path` unchanged (see _WRITTEN); `st` is the
    file's stat taken after its last write (an fstat before close), when the caller has it;
    `normal`: `path` is already an absolute, normalised str (what os.path.abspath would return)."""
    key = _stat_key(path, st, normal)
    with _WRITTEN_LOCK:
        if len(_WRITTEN) >= _WRITTEN_MAX:
            _WRITTEN.clear()
        _WRITTEN[key] = verdict


def validate_file(path: Path | str) -> Verdict:
    """Check one file on disk (memory-mapped: pixel data pages are not read unless fragments are).

    A file this process wrote itself from validated bytes, untouched since, is not walked again.

    Raises:
        OSError: the file cannot be opened.
    """
    if _WRITTEN:
        with _WRITTEN_LOCK:
            known = _WRITTEN.pop(_stat_key(path), None)
        if known is not None:
            return known
    with open(path, "rb") as fh:
        size = fh.seek(0, 2)
        if size == 0:
            return validate_bytes(b"")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return validate_bytes(mm)
