"""The embedded default store: an XNAT-shaped folder tree beside the DuckDB catalog.

`<root>/<project>/<subject>/<session>/scans/<scan id>/<SOPInstanceUID>.dcm`, plus a
`session.json` manifest written last. Each file is copied under a temp name and renamed, and
a file already present with the same size is left alone, so repeating a put (after a crash,
or on a re-run) neither duplicates nor rewrites anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections import defaultdict
from pathlib import Path

import pydicom

from .. import failpoints
from ..atomic import copy_unsynced, make_durable, sweep_temp, write_text
from ..errors import StoreError, StoreUnavailable
from ..naming import safe
from ..records import SessionPlan, StoredFile, StoredScan, StoredSession
from .base import Store

log = logging.getLogger(__name__)

_TAGS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SeriesNumber", "Modality", "SeriesDescription"]


def scan_ids(series: dict[str, tuple[str, str]]) -> dict[str, str]:
    """Scan folder per series: its SeriesNumber, made unique (and stable) with a UID hash on clashes."""
    by_number: dict[str, list[str]] = defaultdict(list)
    for uid, (number, _mod) in series.items():
        by_number[number].append(uid)
    out = {}
    for number, uids in by_number.items():
        for uid in uids:
            h = hashlib.sha1(uid.encode()).hexdigest()[:6]
            if not number:
                out[uid] = f"S{h}"
            elif len(uids) > 1:
                out[uid] = f"{safe(number)}_{h}"
            else:
                out[uid] = safe(number)
    return out


class LakeStore(Store):
    name = "lake"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        sweep_temp(self.root)

    def session_dir(self, plan: SessionPlan) -> Path:
        return self.root / safe(plan.project) / safe(plan.subject) / safe(plan.label)

    def has_session(self, plan: SessionPlan) -> bool:
        manifest = self.session_dir(plan) / "session.json"
        if not manifest.is_file():
            return False
        try:
            return json.loads(manifest.read_text())["study_uid"] == plan.study.study_uid
        except (ValueError, KeyError):
            return False

    def put_study(self, plan: SessionPlan, files: list[Path]) -> StoredSession:
        sdir = self.session_dir(plan)
        headers = []
        problems: list[tuple[str, str]] = []
        for f in files:
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=_TAGS)
                sop = str(ds.SOPInstanceUID)
                study_uid = str(ds.get("StudyInstanceUID", ""))
            except Exception as exc:  # noqa: BLE001 - any unreadable file is a per-file problem
                problems.append((str(f), f"unreadable DICOM: {type(exc).__name__}"))
                continue
            if study_uid != plan.study.study_uid:
                problems.append((str(f), f"belongs to study {study_uid}, not {plan.study.study_uid}"))
                continue
            headers.append((f, sop, str(ds.get("SeriesInstanceUID", "")), str(ds.get("SeriesNumber", "") or ""),
                            str(ds.get("Modality", "") or ""), str(ds.get("SeriesDescription", "") or "")))
        if not headers:
            raise StoreError(f"study {plan.study.study_uid}: no storable DICOM files ({len(files)} offered)")
        series = {h[2]: (h[3], h[4]) for h in headers}
        scan_of = scan_ids(series)
        stored: list[StoredFile] = []
        counts: dict[str, int] = defaultdict(int)
        desc_of: dict[str, str] = {}
        seen_sops: set[str] = set()
        written: list[Path] = []
        made: set[Path] = set()
        for f, sop, series_uid, _num, _mod, sdesc in headers:
            if sop in seen_sops:
                problems.append((str(f), f"duplicate SOPInstanceUID {sop} in study; kept the first"))
                continue
            seen_sops.add(sop)
            target = sdir / "scans" / scan_of[series_uid] / f"{safe(sop)}.dcm"
            size = f.stat().st_size
            if not (target.is_file() and target.stat().st_size == size):
                try:
                    if target.parent not in made:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        made.add(target.parent)
                    copy_unsynced(f, target)
                except OSError as exc:
                    raise StoreError(f"study {plan.study.study_uid}: cannot write {target}: {exc}") from exc
                failpoints.hit("ingest.file")
            written.append(target)  # also one found from a killed run: it may not be on disk yet
            stored.append(StoredFile(sop, series_uid, str(target), size))
            counts[series_uid] += 1
            desc_of[series_uid] = sdesc
        scans = [StoredScan(uid, scan_of[uid], series[uid][1], desc_of.get(uid, ""), counts[uid])
                 for uid in sorted(counts, key=lambda u: scan_of[u])]
        manifest = {
            "project": plan.project, "subject": plan.subject, "label": plan.label,
            "study_uid": plan.study.study_uid, "accession": plan.study.accession,
            "date": plan.study.study_date.isoformat() if plan.study.study_date else None,
            "modalities": list(plan.study.modalities),
            "scans": [{"id": s.scan_id, "series_uid": s.series_uid, "modality": s.modality,
                       "description": s.description, "files": s.n_files} for s in scans],
        }
        try:
            make_durable(written)  # one flush for the study, before anything records it as stored
        except OSError as exc:
            raise StoreError(f"study {plan.study.study_uid}: cannot flush its files to disk: {exc}") from exc
        write_text(sdir / "session.json", json.dumps(manifest, indent=1, sort_keys=True))
        return StoredSession(plan=plan, location=str(sdir), scans=scans, files=stored, problems=problems)

    def check(self) -> list[str]:
        """The lake root exists and a file can be created and removed in it."""
        probe = self.root / f".rtlake-check-{uuid.uuid4().hex[:8]}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StoreUnavailable(f"lake {self.root}: cannot write ({exc.strerror or exc}); "
                                   f"check [store.lake] path and its permissions") from None
        return [f"lake: {self.root} is writable"]

    def move_session(self, project: str, old_subject: str, new_subject: str, label: str) -> str:
        """One rename of the session folder (atomic on one file system), then its manifest is rewritten.

        A session that is already at the new place (a re-run after a crash between the rename and the
        catalog update) is found there and reported as moved.
        """
        src = self.root / safe(project) / safe(old_subject) / safe(label)
        dst = self.root / safe(project) / safe(new_subject) / safe(label)
        if not src.exists():
            if dst.exists():
                return str(dst)
            raise StoreError(f"lake: session {label} is not under subject folder {src.parent.name}")
        if dst.exists():
            raise StoreError(f"lake: cannot move session {label}: the new subject already has a session of that name")
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.rename(src, dst)
        manifest = dst / "session.json"
        if manifest.is_file():
            try:
                data = json.loads(manifest.read_text())
                data["subject"] = new_subject
                write_text(manifest, json.dumps(data, indent=1, sort_keys=True))
            except ValueError:
                log.warning("lake: session %s has an unreadable manifest; moved as it was", label)
        try:
            src.parent.rmdir()  # the old subject folder, when that was its last session
        except OSError:
            pass
        return str(dst)

    def list_sessions(self) -> list[dict]:
        out = []
        for manifest in sorted(self.root.glob("*/*/*/session.json")):
            try:
                out.append(json.loads(manifest.read_text()))
            except ValueError:
                log.warning("%s: unreadable session manifest", manifest)
        return out
