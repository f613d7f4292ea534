"""Received DICOM files in a scratch folder: validated, named by SOPInstanceUID, counted.

Why name by SOPInstanceUID: a retried or resumed transfer then overwrites instead of
duplicating, and the set of names is exactly the set of instances received (the partial-
transfer check compares it with what the query promised).

Why validate here: this is the one place every network source (Orthanc REST, DICOMweb, DIMSE
C-GET and the C-MOVE storage SCP) hands its bytes to, so a damaged instance is refused before it
is written anywhere, and named (`refused`), whatever protocol brought it. Two different valid
versions of one instance in one delivery are both held back (`conflicts`, see ingest/conflicts.py).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ..conflicts import same_instance, sha256
from ..errors import SourceError
from ..records import Conflict, Refusal
from ..validate import DamagedDicom, Verdict, remember_written, show, valid_uid, validate_bytes, validate_file


def check_study_uid(study_uid: str, pacs: str) -> None:
    """Refuse to retrieve a study whose UID is not a valid UID (a PACS holding a damaged file lists it).

    Raises:
        DamagedDicom: with check `uid`, before any request is sent.
    """
    if not valid_uid(study_uid):
        raise DamagedDicom(Verdict("uid", f"StudyInstanceUID {show(study_uid)!r} is not a valid UID (digits and "
                                          f"dots, no leading zeros, at most 64 characters)", study_uid=study_uid),
                           f"{pacs}: study {show(study_uid)!r}")


class ReceivedStudy:
    """Collects the instances of one study under `dest` (thread-safe)."""

    def __init__(self, dest: Path, study_uid: str, pacs: str) -> None:
        check_study_uid(study_uid, pacs)
        self.dest = Path(dest)
        self.dest.mkdir(parents=True, exist_ok=True)
        self._dir = os.path.abspath(self.dest)
        self.study_uid = study_uid
        self.pacs = pacs
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._writing: set[str] = set()  # SOPs being written by one thread (see _claim)
        self.sops: dict[str, Path] = {}
        self._origin: dict[str, str] = {}  # SOP -> where its bytes came from (for conflict rows)
        self._refused: dict[str, Refusal] = {}
        self._conflicts: dict[tuple[str, str, str], Conflict] = {}
        self._held: set[str] = set()  # SOPs held back: two valid versions arrived
        self._arrivals = 0
        for p in self.dest.glob("*.dcm"):  # a re-try into the same scratch folder keeps what arrived
            self.sops[p.stem] = p
            self._origin[p.stem] = f"{pacs}: SOPInstanceUID {p.stem} (earlier attempt)"

    # -- what did not make it -----------------------------------------------------------------
    @property
    def refused(self) -> list[Refusal]:
        with self._lock:
            return list(self._refused.values())

    @property
    def conflicts(self) -> list[Conflict]:
        with self._lock:
            return list(self._conflicts.values())

    def _refuse(self, v: Verdict, what: str, n: int) -> None:
        # named by instance when the file says which one it is (stable across retries and runs)
        if v.sop_uid:
            target = f"{self.pacs}: SOPInstanceUID {show(v.sop_uid)} of study {self.study_uid}"
        else:
            target = f"{self.pacs}: {what} (#{n} of this pull)"
        with self._lock:  # a repeat (the same file fetched again one by one) is one refusal
            self._refused.setdefault(f"{target}\x00{v.reason}", Refusal(target, v.check or "", v.reason, v.sop_uid))

    def _check(self, v: Verdict, what: str) -> str:
        if v.study_uid != self.study_uid:
            raise SourceError(f"{self.pacs}: {what} belongs to study {show(v.study_uid)}, not the requested "
                              f"{self.study_uid}")
        return v.sop_uid

    def _claim(self, sop: str, data: bytes | Path, origin: str) -> bool:
        """Keep one version per SOP: True when the caller is to write this one (then `_settle`
        it), False when it is not kept (a copy, or a conflict). One writer per SOP at a time:
        a second arrival waits for the first to be written, then is compared with it."""
        with self._cond:
            while sop in self._writing:
                self._cond.wait()
            if sop in self._held:
                return False
            prev = self.sops.get(sop)
            if prev is None:
                self._writing.add(sop)
                return True
        if same_instance(prev, data):
            return False
        c = Conflict(sop, self.study_uid, "neither_stored", self._origin.get(sop, str(prev)), origin,
                     self.study_uid, self.study_uid, sha256(prev), sha256(data))
        with self._cond:
            self._held.add(sop)
            self.sops.pop(sop, None)
            self._conflicts[(sop, c.sha256_a, c.sha256_b)] = c
        Path(prev).unlink(missing_ok=True)
        return False

    def _settle(self, sop: str, path: Path | None, origin: str) -> None:
        """The claimed SOP is written (`path`) or not (None, the write failed)."""
        with self._cond:
            self._writing.discard(sop)
            if path is not None:
                self.sops[sop] = path
                self._origin[sop] = origin
            self._cond.notify_all()

    # -- arrivals --------------------------------------------------------------------------------
    def add_bytes(self, data: bytes, what: str = "response part", verdict: Verdict | None = None) -> str | None:
        """Validate one DICOM object held in memory and write it as <SOPInstanceUID>.dcm.

        Returns its SOPInstanceUID (also when it is a copy of one already here, or held back as a
        conflict: see `conflicts`), or None when it was refused as damaged (see `refused`).
        `verdict` is the caller's own validation of these bytes, when it already has one.

        Written in place, not under a temp name and renamed (the extra rename cost ~5-10 % of a
        39 KB slice's raw transfer, bench_pull.py): `dest` is always a folder private to this
        process and new for this transfer (the update run's scratch, emptied at its start;
        `rtlake fetch`'s temp folder), a SOP is listed in `sops` only once its write completed,
        and a failed write removes its file, so a torn file is never taken for a received one.
        The lake, the copy people use, is still written under a temp name and renamed.

        Raises:
            SourceError: a whole instance of another study (the PACS answered for the wrong study).
            OSError: the scratch folder cannot be written (disk full); nothing is left behind.
        """
        with self._lock:
            self._arrivals += 1
            n = self._arrivals
        v = verdict or validate_bytes(data)
        if not v.ok:
            self._refuse(v, what, n)
            return None
        sop = self._check(v, what)
        origin = f"{self.pacs}: {what} (#{n} of this pull)"
        if not self._claim(sop, data, origin):
            return sop
        target = f"{self._dir}/{sop}.dcm"
        path = None
        try:
            # os-level calls and string paths: this runs once per instance, and pathlib plus a
            # buffered file object cost about a tenth of a 39 KB slice's raw transfer
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                st = os.fstat(fd)
            except BaseException:
                os.close(fd)
                os.unlink(target)
                raise
            os.close(fd)
            # the store's own check of this file is then a look-up (target: abspath'd folder + UID)
            remember_written(target, v, st, normal=True)
            path = Path(target)
        finally:
            self._settle(sop, path, origin)
        return sop

    def add_file(self, path: Path, what: str = "received file") -> str | None:
        """Validate a file already on disk (e.g. from a C-STORE) and move it to <SOPInstanceUID>.dcm."""
        with self._lock:
            self._arrivals += 1
            n = self._arrivals
        v = validate_file(path)
        if not v.ok:
            path.unlink(missing_ok=True)
            self._refuse(v, what, n)
            return None
        try:
            sop = self._check(v, what)
        except SourceError:
            path.unlink(missing_ok=True)
            raise
        origin = f"{self.pacs}: {what} (#{n} of this pull)"
        if not self._claim(sop, path, origin):
            path.unlink(missing_ok=True)
            return sop
        target = self.dest / f"{sop}.dcm"
        placed = None
        try:
            os.replace(path, target)
            placed = target
        finally:
            self._settle(sop, placed, origin)
        return sop

    @property
    def files(self) -> list[Path]:
        with self._lock:
            return sorted(self.sops.values(), key=str)

    @property
    def settled(self) -> set[str]:
        """SOPs received or held back (a held-back conflict is not fetched again one by one)."""
        with self._lock:
            return set(self.sops) | self._held

    def nothing(self) -> bool:
        """True when not one instance arrived, whole or damaged (the pull itself failed)."""
        with self._lock:
            return not self.sops and not self._refused and not self._conflicts

