"""Read an RTSTRUCT into plain arrays: one Roi per structure, each with its closed contours.

ContourData is parsed from the raw bytes of the element (one split and one float conversion
per contour) instead of through pydicom's DS objects, about five times faster on a
head-and-neck set (notes/rt.md §6). Nothing is rasterised here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from .verify import RtConversionError

log = logging.getLogger(__name__)

_CONTOUR_DATA = Tag(0x3006, 0x0050)
_GEOMETRIC_TYPE = Tag(0x3006, 0x0042)
_CONTOUR_IMAGES = Tag(0x3006, 0x0016)
_REF_SOP_EXPLICIT = b"\x08\x00\x55\x11UI"
_REF_SOP_IMPLICIT = b"\x08\x00\x55\x11"


@dataclass
class Contour:
    points: np.ndarray  # (N, 3) mm, patient space
    geometric_type: str
    image_uids: tuple[str, ...] = ()


@dataclass
class Roi:
    number: int
    name: str
    frame_of_reference: str = ""
    interpreted_type: str = ""
    contours: list[Contour] = field(default_factory=list)
    #: problems found while reading (two-point contours, open contours...), for the notes.
    warnings: list[str] = field(default_factory=list)

    @property
    def closed(self) -> list[Contour]:
        return [c for c in self.contours if c.geometric_type == "CLOSED_PLANAR" and len(c.points) >= 3]


@dataclass
class StructureSet:
    path: Path
    sop_uid: str
    frame_of_reference: str
    referenced_series: tuple[str, ...]
    rois: list[Roi]
    label: str = ""


class _Ragged:
    """ContourData whose value count is not a multiple of 3 (kept for the warning)."""

    def __init__(self, points: np.ndarray, n_values: int) -> None:
        self.points = points
        self.n_values = n_values


def _triplets(flat: np.ndarray):
    if flat.size % 3:
        return _Ragged(flat[: flat.size - flat.size % 3].reshape(-1, 3), int(flat.size))
    return flat.reshape(-1, 3)


def parse_contour_data(item) -> np.ndarray:
    """ContourData of one ContourSequence item as an (N, 3) float array."""
    elem = item.get_item(_CONTOUR_DATA)
    if elem is None:
        return np.empty((0, 3))
    value = elem.value
    if isinstance(elem, RawDataElement) and isinstance(value, (bytes, bytearray)):
        text = bytes(value).decode("ascii", "replace").strip(" \x00")
        if not text:
            return np.empty((0, 3))
        flat = np.fromstring(text, dtype=np.float64, sep="\\")
        if flat.size != text.count("\\") + 1:  # a value numpy could not parse: let Python say which
            flat = np.array(text.split("\\"), dtype=np.float64)
    else:
        seq = value if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") else [value]
        flat = np.array([float(v) for v in seq], dtype=np.float64)
    return _triplets(flat)


def _raw_text(item, tag) -> str | None:
    """A string element without pydicom's value conversion (it dominates on 1000s of contours)."""
    elem = item.get_item(tag)
    if elem is None:
        return None
    if isinstance(elem, RawDataElement) and isinstance(elem.value, (bytes, bytearray)):
        return bytes(elem.value).decode("ascii", "replace").strip(" \x00")
    return str(elem.value)


def image_uids(item) -> tuple[str, ...]:
    """ReferencedSOPInstanceUIDs of a contour's ContourImageSequence.

    Little-endian raw sequences are scanned for the (0008,1155) elements directly, which
    avoids building a Dataset per referenced image; anything else goes through pydicom.
    """
    elem = item.get_item(_CONTOUR_IMAGES)
    if elem is None:
        return ()
    raw = elem.value
    if isinstance(elem, RawDataElement) and isinstance(raw, (bytes, bytearray)) and elem.is_little_endian:
        raw = bytes(raw)
        out = []
        marker = _REF_SOP_IMPLICIT if elem.is_implicit_VR else _REF_SOP_EXPLICIT
        head = 8 if elem.is_implicit_VR else 8  # tag(4) + VR(2) + len(2)  |  tag(4) + len(4)
        pos = raw.find(marker)
        while pos >= 0:
            if elem.is_implicit_VR:
                n = int.from_bytes(raw[pos + 4 : pos + 8], "little")
            else:
                n = int.from_bytes(raw[pos + 6 : pos + 8], "little")
            out.append(raw[pos + head : pos + head + n].decode("ascii", "replace").strip(" \x00"))
            pos = raw.find(marker, pos + head + n)
        return tuple(out)
    return tuple(str(ci.get("ReferencedSOPInstanceUID", "")) for ci in (item.get("ContourImageSequence", []) or []))


def _points(text: bytes | str) -> np.ndarray:
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("ascii", "replace")
    text = text.strip(" \x00")
    if not text:
        return np.empty((0, 3))
    flat = np.fromstring(text, dtype=np.float64, sep="\\")
    if flat.size != text.count("\\") + 1:  # a value numpy could not parse: let Python say which
        flat = np.array(text.split("\\"), dtype=np.float64)
    return _triplets(flat)


def _parse_many(texts: list[bytes]) -> list[np.ndarray]:
    """ContourData of many contours in one C-level float parse (pandas), split back per contour.

    One call for the whole structure set instead of one per contour; any irregularity (an
    empty value, a number the C parser rejects) falls back to the per-contour parser.
    """
    import io

    import pandas as pd

    clean = [t.strip(b" \x00") for t in texts]
    counts = [t.count(b"\\") + 1 if t else 0 for t in clean]
    body = b"\n".join(t for t in clean if t).replace(b"\\", b"\n")
    values = None
    if body:
        try:
            values = pd.read_csv(io.BytesIO(body), header=None, dtype=np.float64, engine="c").to_numpy().ravel()
        except (ValueError, pd.errors.ParserError):
            values = None
        if values is not None and values.size != sum(counts):
            values = None
    if values is None:
        return [_points(t) for t in clean]
    out = []
    pos = 0
    for n in counts:
        flat = values[pos : pos + n]
        pos += n
        out.append(_triplets(flat))
    return out


def _contours(roi_contour_item):
    """(points, geometric type, image UIDs) per contour: raw-bytes fast path, pydicom otherwise."""
    from . import rawseq

    elem = roi_contour_item.get_item(Tag(0x3006, 0x0040))
    if elem is None:
        return []
    if isinstance(elem, RawDataElement) and isinstance(elem.value, (bytes, bytearray)) and elem.is_little_endian:
        try:
            return [(d, g.upper(), u) for d, g, u in rawseq.contour_items(bytes(elem.value), elem.is_implicit_VR)]
        except ValueError:
            log.debug("raw contour walk failed; using pydicom", exc_info=True)
    out = []
    for c in roi_contour_item.get("ContourSequence", []) or []:
        out.append((parse_contour_data(c), (_raw_text(c, _GEOMETRIC_TYPE) or "CLOSED_PLANAR").upper(), image_uids(c)))
    return out  # points already parsed (arrays); the fast path returns bytes


def read_structure_set(path: Path) -> StructureSet:
    """Parse an RTSTRUCT file.

    Raises:
        RtConversionError: XIII_EXEC_001 when the file cannot be read or is not an RTSTRUCT.
    """
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001
        raise RtConversionError("XIII_EXEC_001", f"{path}: cannot read RTSTRUCT: {exc}") from None
    if str(ds.get("Modality", "")) != "RTSTRUCT":
        raise RtConversionError("XIII_EXEC_001", f"{path}: not an RTSTRUCT (Modality {ds.get('Modality')})")
    for_uid = ""
    series: list[str] = []
    for fr in ds.get("ReferencedFrameOfReferenceSequence", []) or []:
        for_uid = for_uid or str(fr.get("FrameOfReferenceUID", ""))
        for st in fr.get("RTReferencedStudySequence", []) or []:
            for se in st.get("RTReferencedSeriesSequence", []) or []:
                series.append(str(se.get("SeriesInstanceUID", "")))
    rois: dict[int, Roi] = {}
    for item in ds.get("StructureSetROISequence", []) or []:
        num = int(item.get("ROINumber", -1))
        rois[num] = Roi(
            number=num,
            name=str(item.get("ROIName", f"ROI_{num}")).strip() or f"ROI_{num}",
            frame_of_reference=str(item.get("ReferencedFrameOfReferenceUID", "")),
        )
    for obs in ds.get("RTROIObservationsSequence", []) or []:
        num = int(obs.get("ReferencedROINumber", -1))
        if num in rois:
            rois[num].interpreted_type = str(obs.get("RTROIInterpretedType", "") or "")
    pending: list[tuple[Roi, object, str, tuple[str, ...]]] = []
    try:
        rc_items = list(ds.get("ROIContourSequence", []) or [])
    except Exception as exc:  # noqa: BLE001
        raise RtConversionError("XIII_EXEC_001", f"{path}: unreadable ROIContourSequence ({exc})") from None
    for rc in rc_items:
        num = int(rc.get("ReferencedROINumber", -1))
        roi = rois.get(num)
        if roi is None:
            roi = rois[num] = Roi(number=num, name=f"ROI_{num}")
            roi.warnings.append(f"ROI number {num} has contours but no StructureSetROISequence entry")
        for data, gtype, uids in _contours(rc):
            pending.append((roi, data, gtype, uids))
    raw = [d for _, d, _, _ in pending if isinstance(d, (bytes, bytearray))]
    try:
        parsed = iter(_parse_many(raw)) if raw else iter(())
    except ValueError as exc:
        raise RtConversionError("XIII_EXEC_001", f"{path}: ContourData is not a list of numbers ({exc})") from None
    short: dict[int, int] = {}
    ragged: dict[int, int] = {}
    for roi, data, gtype, uids in pending:
        pts = next(parsed) if isinstance(data, (bytes, bytearray)) else data
        if isinstance(pts, _Ragged):
            ragged[id(roi)] = ragged.get(id(roi), 0) + 1
            pts = pts.points
        if gtype == "CLOSED_PLANAR" and len(pts) < 3:
            short[id(roi)] = short.get(id(roi), 0) + 1
        roi.contours.append(Contour(points=pts, geometric_type=gtype, image_uids=uids))
    for roi in rois.values():
        if id(roi) in ragged:
            roi.warnings.append(f"{ragged[id(roi)]} contour(s) have a ContourData count that is not a multiple of 3; "
                                "the incomplete last point was dropped")
        if id(roi) in short:
            roi.warnings.append(f"{short[id(roi)]} closed contour(s) with fewer than 3 points were ignored")
    label = str(ds.get("StructureSetLabel", "") or "")
    return StructureSet(
        path=Path(path),
        sop_uid=str(ds.get("SOPInstanceUID", "")),
        frame_of_reference=for_uid,
        referenced_series=tuple(s for s in series if s),
        rois=sorted(rois.values(), key=lambda r: r.number),
        label=label,
    )
