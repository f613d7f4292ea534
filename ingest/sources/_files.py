"""Received DICOM files in a scratch folder: validated, named by SOPInstanceUID, counted.

Why name by SOPInstanceUID: a retried or resumed transfer then overwrites instead of
duplicating, and the set of names is exactly the set of instances received (the partial-
transfer check compares it with what the query promised).
"""

from __future__ import annotations

import io
import struct
import os
import threading
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.tag import Tag

_WANTED = [Tag("SOPInstanceUID"), Tag("StudyInstanceUID")]
_LAST_WANTED = 0x0020000D  # StudyInstanceUID: nothing after it is needed to name and check a file


def _stop_after_study_uid(tag, vr, length) -> bool:
    return tag > _LAST_WANTED


def read_ids(fp) -> pydicom.Dataset:
    """Read just enough of a DICOM stream to name and check it.

    Why: a full header parse costs ~2 ms per CT slice and was the bottleneck of study pulls;
    stopping at (0020,000D) keeps the DICM/meta validation and costs a fraction of that.
    """
    return read_partial(fp, stop_when=_stop_after_study_uid, specific_tags=_WANTED)

from ..atomic import TMP_PREFIX
from ..errors import SourceError


_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UN", b"UR", b"UT"}


def quick_sop_uid(data: bytes) -> str | None:
    """MediaStorageSOPInstanceUID from the file meta group (always explicit VR little endian),
    without building a Dataset; None when the bytes do not look like a well-formed Part 10 file
    (the caller then falls back to pydicom for a proper diagnosis).
    """
    if len(data) < 140 or data[128:132] != b"DICM":
        return None
    pos, end = 132, len(data)
    while pos + 8 <= end:
        group, elem = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            return None
        vr = data[pos + 4: pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > end:
                return None
            length = struct.unpack_from("<I", data, pos + 8)[0]
            pos += 12
        else:
            length = struct.unpack_from("<H", data, pos + 6)[0]
            pos += 8
        if elem == 0x0003:
            uid = data[pos: pos + length].rstrip(b"\x00 ").decode("ascii", "replace")
            return uid or None
        pos += length
    return None


class ReceivedStudy:
    """Collects the instances of one study under `dest` (thread-safe)."""

    def __init__(self, dest: Path, study_uid: str, pacs: str) -> None:
        self.dest = Path(dest)
        self.dest.mkdir(parents=True, exist_ok=True)
        self.study_uid = study_uid
        self.pacs = pacs
        self._lock = threading.Lock()
        self.sops: dict[str, Path] = {}
        for p in self.dest.glob("*.dcm"):  # a re-try into the same scratch folder keeps what arrived
            self.sops[p.stem] = p

    def _check(self, ds: pydicom.Dataset, what: str) -> str:
        sop = str(ds.get("SOPInstanceUID", "") or "")
        if not sop:
            raise SourceError(f"{self.pacs}: {what}: an instance has no SOPInstanceUID (malformed dataset; "
                              f"study {self.study_uid})")
        got = str(ds.get("StudyInstanceUID", "") or "")
        if got and got != self.study_uid:
            raise SourceError(f"{self.pacs}: {what} belongs to study {got}, not the requested {self.study_uid}")
        return sop

    def add_bytes(self, data: bytes, what: str = "response part") -> str:
        """Validate one DICOM object held in memory and write it as <SOPInstanceUID>.dcm."""
        sop = quick_sop_uid(data)
        if sop is None or self.study_uid.encode() not in data:
            # slow path: a proper parse says what is wrong (or that the meta header was just unusual)
            try:
                ds = read_ids(io.BytesIO(data))
            except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError) as exc:
                raise SourceError(f"{self.pacs}: {what}: not a DICOM object ({exc}; study {self.study_uid})") from None
            sop = self._check(ds, what)
        target = self.dest / f"{sop}.dcm"
        tmp = self.dest / f"{TMP_PREFIX}{sop}.{threading.get_ident()}"
        tmp.write_bytes(data)
        os.replace(tmp, target)
        with self._lock:
            self.sops[sop] = target
        return sop

    def add_file(self, path: Path, what: str = "received file") -> str:
        """Validate a file already on disk (e.g. from a C-STORE) and move it to <SOPInstanceUID>.dcm."""
        try:
            with open(path, "rb") as fh:
                ds = read_ids(fh)
        except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError) as exc:
            path.unlink(missing_ok=True)
            raise SourceError(f"{self.pacs}: {what}: not a DICOM object ({exc}; study {self.study_uid})") from None
        sop = self._check(ds, what)
        target = self.dest / f"{sop}.dcm"
        os.replace(path, target)
        with self._lock:
            self.sops[sop] = target
        return sop

    @property
    def files(self) -> list[Path]:
        with self._lock:
            return sorted(self.sops.values())
