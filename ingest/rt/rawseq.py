"""A minimal reader for the contour items of an RTSTRUCT, straight from the raw bytes.

pydicom builds a Dataset per ContourSequence item (and per ContourImageSequence item), which
costs more than everything else in mask making on a 50-structure head-and-neck set. Contour
items have a fixed, flat shape, so they are walked here with a few lines of byte arithmetic
(little endian, explicit or implicit VR, defined or undefined lengths). Anything unexpected
raises ValueError and the caller falls back to pydicom, so this is only ever a fast path.
"""

from __future__ import annotations

import struct

_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQ_END = 0xFFFEE0DD
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF

CONTOUR_IMAGES = 0x30060016
GEOMETRIC_TYPE = 0x30060042
CONTOUR_DATA = 0x30060050
REF_SOP_UID = 0x00081155
_SQ_TAGS_IMPLICIT = {CONTOUR_IMAGES}


def _tag(buf: bytes, pos: int) -> int:
    group, elem = struct.unpack_from("<HH", buf, pos)
    return (group << 16) | elem


class _Reader:
    def __init__(self, buf: bytes, implicit: bool) -> None:
        self.buf = buf
        self.implicit = implicit

    def element(self, pos: int) -> tuple[int, bytes | None, int, int]:
        """(tag, VR or None, value start, value length) of the element at pos."""
        buf = self.buf
        tag = _tag(buf, pos)
        if tag in (_ITEM, _ITEM_END, _SEQ_END):
            return tag, None, pos + 8, struct.unpack_from("<I", buf, pos + 4)[0]
        if self.implicit:
            return tag, None, pos + 8, struct.unpack_from("<I", buf, pos + 4)[0]
        vr = buf[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            return tag, vr, pos + 12, struct.unpack_from("<I", buf, pos + 8)[0]
        return tag, vr, pos + 8, struct.unpack_from("<H", buf, pos + 6)[0]

    def skip_undefined_sequence(self, pos: int) -> int:
        """Position after the sequence delimiter of an undefined-length sequence starting at pos."""
        while True:
            tag, _, start, length = self.element(pos)
            if tag == _SEQ_END:
                return start
            if tag != _ITEM:
                raise ValueError("malformed sequence")
            pos = self.skip_item(start, length)

    def skip_item(self, start: int, length: int) -> int:
        if length != _UNDEFINED:
            return start + length
        pos = start
        while True:
            tag, vr, vstart, vlen = self.element(pos)
            if tag == _ITEM_END:
                return vstart
            pos = self.after(tag, vr, vstart, vlen)

    def after(self, tag: int, vr: bytes | None, vstart: int, vlen: int) -> int:
        if vlen == _UNDEFINED:
            if vr in (b"SQ", None) or tag in _SQ_TAGS_IMPLICIT:
                return self.skip_undefined_sequence(vstart)
            raise ValueError("undefined length on a non-sequence element")
        return vstart + vlen

    def items(self, start: int, end: int | None):
        """(item start, item end) of each item in a sequence value."""
        pos = start
        limit = len(self.buf) if end is None else end
        while pos < limit:
            tag, _, istart, ilen = self.element(pos)
            if tag == _SEQ_END:
                return
            if tag != _ITEM:
                raise ValueError("expected an item")
            iend = self.skip_item(istart, ilen)
            yield istart, (iend if ilen != _UNDEFINED else iend - 8)
            pos = iend

    def fields(self, start: int, end: int) -> dict[int, tuple[int, int, bytes | None]]:
        """Top-level elements of one item: tag → (value start, value length, VR)."""
        out = {}
        pos = start
        while pos < end:
            tag, vr, vstart, vlen = self.element(pos)
            if tag == _ITEM_END:
                break
            out[tag] = (vstart, vlen, vr)
            pos = self.after(tag, vr, vstart, vlen)
        return out


_UID_EXPLICIT = b"\x08\x00\x55\x11UI"
_UID_IMPLICIT = b"\x08\x00\x55\x11"


def _ref_uids(raw: bytes, start: int, end: int, implicit: bool) -> tuple[str, ...]:
    """ReferencedSOPInstanceUIDs in raw[start:end] by their tag bytes (no item datasets built).

    Only the ContourImageSequence of one contour is searched: its other elements are UIDs
    and ASCII text, in which the tag bytes 08 00 55 11 cannot occur.
    """
    marker = _UID_IMPLICIT if implicit else _UID_EXPLICIT
    out = []
    pos = raw.find(marker, start, end)
    while pos >= 0:
        if implicit:
            n = struct.unpack_from("<I", raw, pos + 4)[0]
        else:
            n = struct.unpack_from("<H", raw, pos + 6)[0]
        out.append(raw[pos + 8 : pos + 8 + n].decode("ascii", "replace").strip(" \x00"))
        pos = raw.find(marker, pos + 8 + n, end)
    return tuple(out)


def contour_items(raw: bytes, implicit: bool) -> list[tuple[bytes, str, tuple[str, ...]]]:
    """(ContourData bytes, ContourGeometricType, referenced image UIDs) per ContourSequence item.

    Raises:
        ValueError: the bytes are not the expected little-endian item structure.
    """
    r = _Reader(raw, implicit)
    out = []
    try:
        for istart, iend in r.items(0, len(raw)):
            f = r.fields(istart, iend)
            data = b""
            if CONTOUR_DATA in f:
                s, n, _ = f[CONTOUR_DATA]
                data = raw[s : s + n]
            gtype = "CLOSED_PLANAR"
            if GEOMETRIC_TYPE in f:
                s, n, _ = f[GEOMETRIC_TYPE]
                gtype = raw[s : s + n].decode("ascii", "replace").strip(" \x00") or "CLOSED_PLANAR"
            uids: tuple[str, ...] = ()
            if CONTOUR_IMAGES in f:
                s, n, _ = f[CONTOUR_IMAGES]
                uids = _ref_uids(raw, s, iend if n == _UNDEFINED else s + n, implicit)
            out.append((data, gtype, uids))
    except (struct.error, IndexError) as exc:
        raise ValueError(f"cannot walk contour items: {exc}") from None
    return out
