"""Received DICOM files in a scratch folder: validated, named by SOPInstanceUID, counted.

Why name by SOPInstanceUID: a retried or resumed transfer then overwrites instead of
duplicating, and the set of names is exactly the set of instances received (the partial-
transfer check compares it with what the query promised).
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from ..atomic import TMP_PREFIX
from ..errors import SourceError


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
            raise SourceError(f"{self.pacs}: {what} for study {self.study_uid} has no SOPInstanceUID (malformed dataset)")
        got = str(ds.get("StudyInstanceUID", "") or "")
        if got and got != self.study_uid:
            raise SourceError(f"{self.pacs}: {what} belongs to study {got}, not the requested {self.study_uid}")
        return sop

    def add_bytes(self, data: bytes, what: str = "response part") -> str:
        """Validate one DICOM object held in memory and write it as <SOPInstanceUID>.dcm."""
        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError) as exc:
            raise SourceError(f"{self.pacs}: {what} for study {self.study_uid} is not a DICOM file ({exc})") from None
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
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError) as exc:
            path.unlink(missing_ok=True)
            raise SourceError(f"{self.pacs}: {what} for study {self.study_uid} is not a DICOM file ({exc})") from None
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
