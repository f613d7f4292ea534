"""Segmentation fix-ups and segmentation ↔ source linking (what DAMS did by hand).

Masks exported by some segmentation tools carry one SOPInstanceUID for every slice, the same
InstanceNumber on every slice, the SeriesNumber of the CT they were drawn on, and no reference
to that CT. These are repaired on the originals, before pseudonymisation, so the repaired
values are then remapped like any other and the mask links to its CT in the lake. Every repair
is deterministic: derived from the files themselves, never random.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

log = logging.getLogger(__name__)

SEGMENTATION_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
IMAGE_MODALITIES = {"CT", "MR", "PT"}
#: Patch key: the new SOPInstanceUID is the remap of this seed (an original UID plus a suffix,
#: not itself a valid UID, so it is applied after remapping rather than set on the original).
SOP_SEED = "__sop_seed__"


@dataclass(frozen=True)
class Header:
    """The few attributes the fix-ups look at, read without pixel data."""

    path: Path
    modality: str
    sop_class: str
    sop_uid: str
    series_uid: str
    study_uid: str
    for_uid: str
    series_number: int | None
    instance_number: int | None
    z: float | None
    has_refs: bool

    @property
    def is_segmentation(self) -> bool:
        return self.modality == "SEG" or self.sop_class == SEGMENTATION_CLASS

    @classmethod
    def of(cls, path: Path, ds: Dataset) -> "Header":
        def _int(v: Any) -> int | None:
            try:
                return int(v)
            except (TypeError, ValueError):
                return None

        ipp = ds.get("ImagePositionPatient")
        z = None
        if ipp is not None and len(ipp) == 3:
            try:
                z = float(ipp[2])
            except (TypeError, ValueError):
                z = None
        return cls(
            path=path,
            modality=str(ds.get("Modality", "") or "").upper(),
            sop_class=str(ds.get("SOPClassUID", "") or ""),
            sop_uid=str(ds.get("SOPInstanceUID", "") or ""),
            series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
            study_uid=str(ds.get("StudyInstanceUID", "") or ""),
            for_uid=str(ds.get("FrameOfReferenceUID", "") or ""),
            series_number=_int(ds.get("SeriesNumber")),
            instance_number=_int(ds.get("InstanceNumber")),
            z=z,
            has_refs=any(k in ds for k in ("ReferencedSeriesSequence", "SourceImageSequence")),
        )


def _ref_item(h: Header) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = h.sop_class
    item.ReferencedSOPInstanceUID = h.sop_uid
    return item


def plan_fixes(headers: list[Header]) -> dict[Path, dict[str, Any]]:
    """Per-file attribute patches (keyword → new value) for the segmentation series found."""
    patches: dict[Path, dict[str, Any]] = defaultdict(dict)
    series: dict[str, list[Header]] = defaultdict(list)
    for h in headers:
        series[h.series_uid].append(h)
    numbers_by_study: dict[str, set[int]] = defaultdict(set)
    for h in headers:
        if h.series_number is not None:
            numbers_by_study[h.study_uid].add(h.series_number)

    for series_uid in sorted(series):
        members = series[series_uid]
        if not all(h.is_segmentation for h in members):
            continue
        members = sorted(members, key=lambda h: (h.z if h.z is not None else 0.0, h.path.name))
        n = len(members)
        # one SOPInstanceUID shared by several files: give each its own
        if len({h.sop_uid for h in members}) < n:
            for i, h in enumerate(members, start=1):
                patches[h.path][SOP_SEED] = f"{h.sop_uid}#{i}"
            log.info("segmentation series %s: %d files shared SOPInstanceUIDs; made distinct", series_uid, n)
        if n > 1 and len({h.instance_number for h in members}) < n:
            for i, h in enumerate(members, start=1):
                patches[h.path]["InstanceNumber"] = i
        # source image series: same frame of reference, imaging modality
        sources = sorted(
            {s for s, hs in series.items() if s != series_uid and hs[0].modality in IMAGE_MODALITIES
             and hs[0].for_uid and hs[0].for_uid == members[0].for_uid}
        )
        source_numbers = {series[s][0].series_number for s in sources}
        seg_number = members[0].series_number
        if seg_number is None or seg_number in source_numbers:
            taken = numbers_by_study[members[0].study_uid]
            new = max(taken | {0}) + 1
            taken.add(new)
            for h in members:
                patches[h.path]["SeriesNumber"] = new
        if len(sources) == 1 and not any(h.has_refs for h in members):
            src = sorted(series[sources[0]], key=lambda h: (h.z if h.z is not None else 0.0, h.path.name))
            for h in members:
                ref_series = Dataset()
                ref_series.SeriesInstanceUID = sources[0]
                ref_series.ReferencedInstanceSequence = Sequence([_ref_item(s) for s in src])
                patches[h.path]["ReferencedSeriesSequence"] = Sequence([ref_series])
                same_plane = [s for s in src if h.z is not None and s.z is not None and abs(s.z - h.z) < 0.01]
                chosen = same_plane or src
                patches[h.path]["SourceImageSequence"] = Sequence([_ref_item(s) for s in chosen])
            log.info("segmentation series %s linked to source series %s", series_uid, sources[0])
    return dict(patches)


def apply_patch(ds: Dataset, patch: dict[str, Any]) -> None:
    for keyword, value in patch.items():
        if keyword != SOP_SEED:
            setattr(ds, keyword, value)
