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
from collections import defaultdict
from pathlib import Path

from pydicom.charset import convert_encodings, decode_bytes

from .. import failpoints
from ..atomic import copy_unsynced, make_durable, move_unsynced, probe_write, sweep_temp, write_text
from ..errors import StoreError, StoreUnavailable
from ..conflicts import against_stored, same_instance, sha256
from ..naming import safe
from ..records import Conflict, SessionPlan, StoredFile, StoredScan, StoredSession
from ..validate import show, validate_file
from .base import Store

log = logging.getLogger(__name__)



def _series_keys(raw: dict[int, bytes]) -> tuple[str, str, str]:
    """(SeriesNumber, Modality, SeriesDescription) from the values the validator kept while it walked
    the file (ingest.validate.SERIES_TAGS), so the file is not parsed a second time; the description
    is decoded with the instance's SpecificCharacterSet, as pydicom would."""
    def text(tag: int) -> str:
        return raw.get(tag, b"").decode("ascii", "replace").strip("\x00 ")

    desc = raw.get(0x0008103E, b"")
    if desc:
        charsets = [c.strip() for c in raw.get(0x00080005, b"").decode("ascii", "replace").split("\\")]
        try:
            desc_text = decode_bytes(desc, convert_encodings(charsets if any(charsets) else ["ISO_IR 6"]), set())
        except (LookupError, ValueError):
            desc_text = desc.decode("latin-1")
        desc_text = desc_text.rstrip("\x00 ")
    else:
        desc_text = ""
    number = text(0x00200011)
    try:  # as `str(ds.SeriesNumber or "")` read it before: an IS of 0 counted as none (scan folder S<hash>)
        if number and float(number) == 0:
            number = ""
    except ValueError:
        pass
    return number, text(0x00080060), desc_text


def scan_ids(series: dict[str, tuple[str, str]], previous: dict[str, str] | None = None) -> dict[str, str]:
    """Scan folder per series: its SeriesNumber, made unique (and stable) with a UID hash on clashes.

    `previous` (series UID -> scan folder) is what the session already holds: those folders never
    change. Why: a series that arrives later with a SeriesNumber already used in the session (a
    re-export, a second reconstruction) must not rename the stored scan's folder on re-ingest,
    which would store its files a second time under the new name while the catalog keeps the old.
    """
    previous = previous or {}
    out = {uid: sid for uid, sid in previous.items() if uid in series}
    used = set(previous.values())
    by_number: dict[str, list[str]] = defaultdict(list)
    for uid, (number, _mod) in series.items():
        if uid not in out:
            by_number[number].append(uid)
    for number, uids in by_number.items():
        for uid in uids:
            h = hashlib.sha1(uid.encode()).hexdigest()[:6]
            if not number:
                out[uid] = f"S{h}"
            elif len(uids) > 1 or safe(number) in used:
                out[uid] = f"{safe(number)}_{h}"
            else:
                out[uid] = safe(number)
    return out


def _manifest(sdir: Path, study_uid: str) -> dict | None:
    """The session's manifest in the lake when it is there, parses and is this study's (a manifest
    that exists but cannot be read raises: neither "not stored" nor "no scans yet" would be true)."""
    try:
        manifest = json.loads((sdir / "session.json").read_text())
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("study_uid") == study_uid else None


def _held_manifest_scans(sdir: Path, study_uid: str) -> list[dict]:
    """The scan entries of the session's manifest in the lake (this study's), if there is one."""
    manifest = _manifest(sdir, study_uid) or {}
    return [e for e in manifest.get("scans", []) if isinstance(e, dict) and e.get("series_uid") and e.get("id")]


def _digest(path: str) -> str:
    try:
        return sha256(Path(path))
    except OSError:  # listed in the catalog but gone from the lake: the conflict row says so
        return ""


def _one_version_each(headers: list[tuple], study_uid: str) -> tuple[list[tuple], list[Conflict]]:
    """Files of one delivery sharing a SOPInstanceUID: identical ones are one, different ones a conflict.

    Sources already do this (a folder's duplicates, a pull that got two versions); this is the
    store's own guard, so no store ever holds "whichever came first".
    """
    by_sop: dict[str, list[tuple]] = defaultdict(list)
    for h in headers:
        by_sop[h[1]].append(h)
    keep, held = [], []
    for sop, group in by_sop.items():
        first = group[0]
        differ = [h for h in group[1:] if not same_instance(first[0], h[0])]
        if not differ:
            keep.append(first)
            continue
        digest = sha256(first[0])
        held += [Conflict(sop, study_uid, "neither_stored", str(first[0]), str(h[0]), study_uid, study_uid,
                          digest, sha256(h[0])) for h in differ]
    return keep, held


class LakeStore(Store):
    name = "lake"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        sweep_temp(self.root)

    def session_dir(self, plan: SessionPlan) -> Path:
        return self.root / safe(plan.project) / safe(plan.subject) / safe(plan.label)

    def has_session(self, plan: SessionPlan) -> bool:
        return _manifest(self.session_dir(plan), plan.study.study_uid) is not None

    def put_study(self, plan: SessionPlan, files: list[Path]) -> StoredSession:
        """Copy the study's whole, valid files into its session folder; never replace a stored file.

        Each file is checked again here (ingest.validate): the lake is the last gate before research
        use. A file whose instance is already stored with other content, here or under another study
        (`stored_instances`, set by the update run from the catalog), is not stored: it is a conflict
        (ingest/conflicts.py), returned in `conflicts`; the stored file stays as it is.
        """
        uid = plan.study.study_uid
        sdir = self.session_dir(plan)
        headers = []
        problems: list[tuple[str, str]] = []
        conflicts: list[Conflict] = []
        for f in files:
            try:
                verdict = validate_file(f)
            except OSError as exc:
                problems.append((str(f), f"unreadable file: {exc.strerror or exc}"))
                continue
            if not verdict.ok:
                problems.append((str(f), verdict.reason))
                continue
            if verdict.study_uid != uid:
                problems.append((str(f), f"belongs to study {show(verdict.study_uid)}, not {uid}"))
                continue
            number, modality, description = _series_keys(verdict.series_values)
            headers.append((f, verdict.sop_uid, verdict.series_uid, number, modality, description))
        headers, held = _one_version_each(headers, uid)
        conflicts += against_stored(held, self.stored_instances)
        elsewhere = self.stored_instances({h[1] for h in headers}) if self.stored_instances else {}
        keep = []
        for h in headers:
            other = elsewhere.get(h[1])
            if other is not None and other[0] != uid:
                conflicts.append(Conflict(h[1], uid, "kept_stored", other[1], str(h[0]), other[0], uid,
                                          _digest(other[1]), sha256(h[0])))
                continue
            keep.append(h)
        headers = keep
        if not headers and not conflicts:
            raise StoreError(f"study {uid}: no storable DICOM files ({len(files)} offered)")
        series = {h[2]: (h[3], h[4]) for h in headers}
        held = _held_manifest_scans(sdir, uid)
        scan_of = scan_ids(series, {e["series_uid"]: e["id"] for e in held})
        stored: list[StoredFile] = []
        counts: dict[str, int] = defaultdict(int)
        desc_of: dict[str, str] = {}
        written: list[Path] = []
        made: set[Path] = set()
        scratch = f"{os.path.abspath(self.scratch)}{os.sep}" if self.scratch else None

        def disposable(f: Path) -> bool:  # the run's scratch copy (never a folder source's own file)
            return scratch is not None and os.path.abspath(f).startswith(scratch)

        for f, sop, series_uid, _num, _mod, sdesc in headers:
            target = sdir / "scans" / scan_of[series_uid] / f"{safe(sop)}.dcm"
            size = f.stat().st_size
            if target.is_file():
                if not same_instance(target, f):  # stored files are whole and valid: never replaced
                    conflicts.append(Conflict(sop, uid, "kept_stored", str(target), str(f), uid, uid,
                                              sha256(target), sha256(f)))
                    size = target.stat().st_size
            else:
                try:
                    if target.parent not in made:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        made.add(target.parent)
                    (move_unsynced if disposable(f) else copy_unsynced)(f, target)
                except OSError as exc:
                    raise StoreError(f"study {uid}: cannot write {target}: {exc}") from exc
                failpoints.hit("ingest.file")
            written.append(target)  # also one found from a killed run: it may not be on disk yet
            stored.append(StoredFile(sop, series_uid, str(target), size))
            counts[series_uid] += 1
            desc_of[series_uid] = sdesc
        scans = [StoredScan(s_uid, scan_of[s_uid], series[s_uid][1], desc_of.get(s_uid, ""), counts[s_uid])
                 for s_uid in sorted(counts, key=lambda u: scan_of[u])]
        manifest = {
            "project": plan.project, "subject": plan.subject, "label": plan.label,
            "study_uid": uid, "accession": plan.study.accession,
            "date": plan.study.study_date.isoformat() if plan.study.study_date else None,
            "modalities": list(plan.study.modalities),
            "scans": [{"id": s.scan_id, "series_uid": s.series_uid, "modality": s.modality,
                       "description": s.description, "files": s.n_files} for s in scans],
        }
        # scans stored earlier and not offered now (gone from the PACS, say) are still in the lake
        manifest["scans"] += [e for e in held if e["series_uid"] not in counts]
        manifest["scans"].sort(key=lambda e: e["id"])
        try:
            make_durable(written)  # one flush for the study, before anything records it as stored
        except OSError as exc:
            raise StoreError(f"study {uid}: cannot flush its files to disk: {exc}") from exc
        if stored:
            write_text(sdir / "session.json", json.dumps(manifest, indent=1, sort_keys=True))
        return StoredSession(plan=plan, location=str(sdir), scans=scans, files=stored, problems=problems,
                             conflicts=conflicts)

    def check(self) -> list[str]:
        """The lake root exists and a file can be created and removed in it."""
        try:
            probe_write(self.root)
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
