"""UID remapping that keeps every reference resolvable, and a check that it did.

A UID is remapped by its value alone, wherever it appears (SOPInstanceUID in one file,
ReferencedSOPInstanceUID in another, FrameOfReferenceUID in a registration...), so any
reference that resolved before resolves after. Well-known UIDs (SOP classes, transfer
syntaxes, coding schemes: everything in pydicom's UID dictionary) name standard things, not
patients, and are left alone, as are the elements that can only hold such class UIDs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID_dictionary

from .keys import PseudoKey

#: Elements that hold class or syntax UIDs, never instance UIDs: not remapped even when the
#: value is a private (vendor) class UID absent from the dictionary.
NEVER_REMAP = frozenset({
    0x00020002,  # MediaStorageSOPClassUID
    0x00020010,  # TransferSyntaxUID
    0x00020012,  # ImplementationClassUID
    0x00080016,  # SOPClassUID
    0x00081150,  # ReferencedSOPClassUID
    0x0008010C,  # CodingSchemeUID
    0x00041510,  # ReferencedSOPClassUIDInFile
    0x00041512,  # ReferencedTransferSyntaxUIDInFile
    0x0008001A,  # RelatedGeneralSOPClassUID
    0x0008001B,  # OriginalSpecializedSOPClassUID
    0x00000002,  # AffectedSOPClassUID
    0x00000003,  # RequestedSOPClassUID
})


def is_well_known(uid: str) -> bool:
    return uid in UID_dictionary


@dataclass
class UidRemapper:
    """Remaps instance UIDs under `root`; remembers what it mapped for the mapping table."""

    key: PseudoKey
    root: str
    seen: dict[str, str] = field(default_factory=dict)

    def __call__(self, uid: str) -> str:
        uid = str(uid).strip().rstrip("\x00")
        if not uid or is_well_known(uid):
            return uid
        new = self.seen.get(uid)
        if new is None:
            new = self.key.uid(uid, self.root)
            self.seen[uid] = new
        return new


# -- reference check ------------------------------------------------------------------------------

#: Where an object says who it is (defined) and whom it points at (referenced).
_DEFINES = {"SOPInstanceUID": "sop", "SeriesInstanceUID": "series", "FrameOfReferenceUID": "for",
            "StudyInstanceUID": "study"}
_REFERS = {"ReferencedSOPInstanceUID": "sop", "ReferencedFrameOfReferenceUID": "for",
           "RelatedFrameOfReferenceUID": "for"}


@dataclass
class References:
    defined: dict[str, set[str]] = field(default_factory=lambda: {k: set() for k in ("sop", "series", "for", "study")})
    # (kind, uid, file that refers)
    referenced: list[tuple[str, str, str]] = field(default_factory=list)

    def unresolved(self) -> list[tuple[str, str, str]]:
        return [r for r in self.referenced if r[1] not in self.defined[r[0]]]


_STUDY_CLASSES = {"1.2.840.10008.3.1.2.3.1"}  # Detached Study Management: the "instance" is a study
_EXTERNAL_CLASSES = {"1.2.840.10008.3.1.2.3.3"}  # Modality Performed Procedure Step: lives in the RIS


def _walk_refs(ds: Dataset, where: str, refs: References, top: bool, parent: str = "") -> None:
    for elem in ds:
        kw = elem.keyword
        if elem.VR == "SQ":
            for item in elem.value:
                if kw in ("ReferencedSeriesSequence", "RTReferencedSeriesSequence") and item.get("SeriesInstanceUID"):
                    refs.referenced.append(("series", str(item.SeriesInstanceUID), where))
                _walk_refs(item, where, refs, top=False, parent=kw)
        elif top and kw in _DEFINES and elem.value:
            refs.defined[_DEFINES[kw]].add(str(elem.value))
        elif kw == "ReferencedSOPInstanceUID" and elem.value:
            cls = str(ds.get("ReferencedSOPClassUID", ""))
            if cls in _EXTERNAL_CLASSES:
                continue
            refs.referenced.append(("study" if cls in _STUDY_CLASSES else "sop", str(elem.value), where))
        elif kw in _REFERS and elem.value:
            refs.referenced.append((_REFERS[kw], str(elem.value), where))


def collect_references(files: Iterable[Path]) -> References:
    """Every object's own UIDs and every UID it points at, over a set of files.

    Used to show that remapping kept the links: a reference that resolved among the originals
    must resolve among the pseudonymised copies.
    """
    refs = References()
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        _walk_refs(ds, str(path), refs, top=True)
    return refs


def iter_uid_values(ds: Dataset) -> Iterator[tuple[int, str]]:
    """(tag, value) for every UI value anywhere in a dataset, sequences included."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield from iter_uid_values(item)
        elif elem.VR == "UI" and elem.value:
            values = elem.value if isinstance(elem.value, (list, tuple, pydicom.multival.MultiValue)) else [elem.value]
            for v in values:
                yield elem.tag, str(v)
