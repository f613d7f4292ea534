"""XNAT as the store, through XNAT's import service, following what XNAT's source does.

One study becomes one image session: the files are zipped and posted to
`/data/services/import?dest=/archive` with project, subject (NHS number or NN_<hospital id>) and
session label (accession number). The rules below are XNAT's own (xnat-web SessionImporter and
PrearcSessionArchiver.checkForConflicts; see tests/servers/xnat_emulator.py for the citations):

* A new session is imported with *no* `overwrite` parameter: if the label exists after all, XNAT
  answers 409 instead of merging into it, and we re-read the label before deciding anything.
* "Already there" means the project holds the label with the same StudyInstanceUID
  (`identity = "uid"`) or, on sites whose anonymisation script rewrites UIDs, the label under
  the same subject (`identity = "label"`).
* `overwrite = "none"`: a session already there is left as it is. `"append"`: new files are merged
  into it (`overwrite=append&overwrite_files=true`; XNAT's `none` would merge too). `"delete"`: the
  session is deleted (`DELETE /data/experiments/{id}?removeFiles=true`) and imported afresh —
  XNAT's own `overwrite=delete` only merges without the UID check, it never replaces.
* Subject and session labels are cleaned the way XNAT cleans them (`XnatImagesessiondata.cleanValue`)
  before they are compared or sent, and XNAT matches subjects case-insensitively; so do we.
* Scan IDs and file URLs are read back from XNAT after the upload, not predicted.

The project's sessions and subjects are listed once per run (one request each) and kept up to
date as we upload, so checking thousands of studies does not cost thousands of requests.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import StoreError
from ..records import SessionPlan, StoredFile, StoredScan, StoredSession
from ._xnat_client import XnatClient, XnatConflict, XnatSettings, scratch_dir
from ._xnat_zip import PackedStudy, pack_study
from .base import Store

log = logging.getLogger(__name__)

#: XNAT session data type per primary modality (xnat.xsd; PT sessions are petSessionData).
SESSION_XSI = {
    "MR": "xnat:mrSessionData", "CT": "xnat:ctSessionData", "PT": "xnat:petSessionData",
    "CR": "xnat:crSessionData", "DX": "xnat:dxSessionData", "RF": "xnat:rfSessionData",
    "SR": "xnat:srSessionData", "XA": "xnat:xaSessionData", "NM": "xnat:nmSessionData",
    "US": "xnat:usSessionData", "MG": "xnat:mgSessionData",
}
XSI_MODALITY = {v: k for k, v in SESSION_XSI.items()}
XSI_MODALITY.update({"xnat:petmrSessionData": "PT", "xnat:rtSessionData": "RT"})
_SCAN_MODALITY = {v.replace("SessionData", "ScanData"): k for k, v in SESSION_XSI.items()}
_SCAN_MODALITY["xnat:rtImageScanData"] = "RTIMAGE"

#: BaseXnatImagesessiondata.cleanValue (xnat-web): each of these characters becomes `_`.
_CLEAN = str.maketrans({c: "_" for c in " `~@#$%^&*()+=[]{}|\\/?:;\"',.<>"})


def clean_label(value: str) -> str:
    """A subject or session label as XNAT will file it."""
    return value.strip().translate(_CLEAN)


@dataclasses.dataclass
class _Known:
    id: str
    uid: str
    subject: str  # the subject label XNAT holds the session under
    xsi: str = ""


class XnatStore(Store):
    name = "xnat"

    def __init__(self, client: XnatClient, project: str, overwrite: str = "none", create_project: bool = True,
                 import_timeout: float = 900.0, scratch: Path | None = None, identity: str = "uid") -> None:
        self.client = client
        self.project = project
        self.overwrite = overwrite
        self.create_project = create_project
        self.import_timeout = import_timeout
        self.scratch = scratch
        self.identity = identity
        self._project_ok = False
        self._sessions: dict[str, _Known] | None = None  # label -> what XNAT holds
        self._subjects: dict[str, str] | None = None  # lower-cased subject label -> subject ID
        self.uploads = 0

    @classmethod
    def from_config(cls, cfg: Config) -> "XnatStore":
        x = cfg.store.xnat
        return cls(XnatClient(XnatSettings.from_config(cfg)), cfg.project.name, overwrite=x.overwrite,
                   create_project=x.create_project, import_timeout=x.import_timeout, scratch=scratch_dir(cfg),
                   identity=x.identity)

    @property
    def url(self) -> str:
        return self.client.url

    # -- check ---------------------------------------------------------------------------------
    def check(self) -> list[str]:
        """Log in once, then ask whether the project exists and this user may write to it.

        Raises:
            StoreError: credentials refused (names the environment variables), the project missing
                with create_project off, or no edit rights on it.
            StoreUnavailable: XNAT cannot be reached.
        """
        session = self.client.session
        try:
            version = session.xnat_version or "?"
        except Exception:  # noqa: BLE001 - only for the report line
            version = "?"
        lines = [f"XNAT {self.url}: logged in as {self.client.user} (XNAT {version})"]
        pid = self.project
        if not self._project_exists():
            if not self.create_project:
                raise StoreError(f"XNAT {self.url}: project {pid} does not exist and [store.xnat] create_project "
                                 f"is false; create it in XNAT or set [project] name")
            lines.append(f"project {pid} does not exist yet; it is created at the first upload "
                         f"(needs XNAT admin rights; [store.xnat] create_project = true)")
            return lines
        editable = self.client.call(
            lambda s: self.client.get_rows(s, "/data/projects", {"permissions": "edit",
                                                                   "dataType": "xnat:subjectData",
                                                                   "columns": "ID"}),
            "projects this user may edit")
        if not any(r.get("ID") == pid for r in editable):
            raise StoreError(f"XNAT {self.url}: user {self.client.user} may not add data to project {pid}; "
                             f"ask an XNAT admin to make them a member or owner of it")
        lines.append(f"project {pid} exists and {self.client.user} may add subjects and sessions to it")
        lines.append(f"a session counts as already stored when its label matches and "
                     + ("its StudyInstanceUID matches ([store.xnat] identity = 'uid')" if self.identity == "uid"
                        else "its subject matches ([store.xnat] identity = 'label')"))
        return lines

    # -- what XNAT holds ---------------------------------------------------------------------
    def _project_exists(self) -> bool:
        pid = self.project
        rows = self.client.call(
            lambda s: self.client.get_rows(s, "/data/archive/projects", {"columns": "ID,name", "ID": pid}),
            f"project {pid}")
        return any(r.get("ID") == pid for r in rows)

    def ensure_project(self) -> None:
        if self._project_ok:
            return
        pid = self.project
        if not self._project_exists():
            if not self.create_project:
                raise StoreError(f"XNAT {self.url}: project {pid} does not exist (create_project is off)")

            def create(session: Any) -> None:
                # XNAT wiki, Project API: PUT /data/projects/{ID} with the fields as query parameters.
                session.put(f"/data/projects/{pid}", query={
                    "xsiType": "xnat:projectData", "req_format": "qs",
                    "xnat:projectData/name": pid, "xnat:projectData/secondary_ID": pid})

            self.client.call(create, f"creating project {pid}")
            if not self._project_exists():
                raise StoreError(f"XNAT {self.url}: project {pid} still missing after creating it")
            log.info("XNAT %s: created project %s", self.url, pid)
        self._project_ok = True

    @staticmethod
    def _known(r: dict) -> _Known:
        return _Known(r.get("ID", ""), r.get("UID", ""), r.get("subject_label", ""), r.get("xsiType", ""))

    def _load_sessions(self) -> dict[str, _Known]:
        if self._sessions is None:
            self.ensure_project()
            rows = self.client.call(
                lambda s: self.client.get_rows(s, f"/data/projects/{self.project}/experiments",
                                               {"columns": "ID,label,UID,subject_label,xsiType"}),
                f"listing sessions of project {self.project}")
            self._sessions = {r["label"]: self._known(r) for r in rows if r.get("label")}
        return self._sessions

    def _refresh_label(self, label: str) -> _Known | None:
        """Ask XNAT again about one label (exact match: the label has no wildcards once cleaned)."""
        rows = self.client.call(
            lambda s: self.client.get_rows(s, f"/data/projects/{self.project}/experiments",
                                           {"columns": "ID,label,UID,subject_label,xsiType", "label": label}),
            f"session {label}")
        known = self._load_sessions()
        for r in rows:
            if r.get("label") == label:
                known[label] = self._known(r)
                return known[label]
        known.pop(label, None)
        return None

    def _subject_id(self, subject: str, plan: SessionPlan | None = None) -> str:
        """XNAT's ID of the subject (matched case-insensitively, as XNAT does), created when missing."""
        if self._subjects is None:
            rows = self.client.call(
                lambda s: self.client.get_rows(s, f"/data/projects/{self.project}/subjects", {"columns": "ID,label"}),
                f"listing subjects of project {self.project}")
            self._subjects = {r["label"].lower(): r.get("ID", "") for r in rows if r.get("label")}
        sid = self._subjects.get(subject.lower())
        if sid:
            return sid

        def create(session: Any) -> str:
            # XNAT wiki, Subject API: PUT /data/projects/{P}/subjects/{label} answers the new ID.
            r = session.put(f"/data/projects/{self.project}/subjects/{subject}",
                            query={"xsiType": "xnat:subjectData"})
            return (r.text or "").strip()

        what = f"creating the subject of study {plan.study.study_uid}" if plan else "creating a subject"
        sid = self.client.call(create, what, scrub=(subject,) + (_idents(plan) if plan else ()))
        self._subjects[subject.lower()] = sid
        return sid

    def _is_this_study(self, k: _Known, plan: SessionPlan, subject: str) -> bool:
        if self.identity == "label":
            return k.subject.lower() == subject.lower()
        return k.uid == plan.study.study_uid

    def has_session(self, plan: SessionPlan) -> bool:
        subject, label = clean_label(plan.subject), clean_label(plan.label)
        k = self._load_sessions().get(label)
        return k is not None and self._is_this_study(k, plan, subject)

    # -- upload ------------------------------------------------------------------------------
    def put_study(self, plan: SessionPlan, files: list[Path]) -> StoredSession:
        """Zip and import one study under project/subject/label.

        Raises:
            StoreError: refused (403, wrong project, label taken by another study, bad files).
            StoreUnavailable: timeouts / 5xx still failing after retries.
        """
        uid = plan.study.study_uid
        subject, label = clean_label(plan.subject), clean_label(plan.label)
        what = f"study {uid} (session {label})"
        if plan.project != self.project:
            raise StoreError(f"XNAT {self.url}: {what}: planned for project {plan.project}, store writes {self.project}")
        if subject != plan.subject.strip() or label != plan.label.strip():
            log.info("XNAT %s: %s: labels cleaned the way XNAT cleans them (characters XNAT does not allow "
                     "become '_')", self.url, what)
        self.ensure_project()
        if self.scratch is not None:
            self.scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="rtlake-xnat-", dir=self.scratch) as tmp:
            packed = pack_study(uid, files, Path(tmp) / f"{label or 'session'}.zip")
            uploads = self.uploads
            k = self._put(plan, packed, subject, label, what, self._load_sessions().get(label), retried=False)
            return self._stored(plan, k, packed, subject, label, uploaded=self.uploads > uploads)

    def _put(self, plan: SessionPlan, packed: PackedStudy, subject: str, label: str, what: str,
             existing: _Known | None, retried: bool) -> _Known:
        """Decide from what XNAT holds under the label, upload, and return what XNAT then holds."""
        uid = plan.study.study_uid
        overwrite: str | None = None  # absent: XNAT refuses (409) rather than merge into an existing session
        overwrite_files = False
        if existing is not None:
            mine = self._is_this_study(existing, plan, subject)
            if mine and existing.subject.lower() != subject.lower() and self.overwrite != "delete":
                raise StoreError(
                    f"XNAT {self.url}: {what}: XNAT holds this session under another subject than planned "
                    f"(the patient's subject changed, e.g. an NHS number was found); it needs moving between "
                    f"subjects, not uploading again")
            if not mine and self.overwrite != "delete":
                raise StoreError(f"XNAT {self.url}: {what}: label already used in project {self.project} by "
                                 f"{self._describe(existing)} (overwrite={self.overwrite}){self._uid_hint(existing)}")
            if mine and self.overwrite == "none":
                return existing
            if self.overwrite == "delete":
                self._delete(existing, what)
                existing = None
            else:  # append: merge this study's files into the session, replacing copies already there
                overwrite, overwrite_files = "append", True
        try:
            self._import(plan, packed, subject, label, what, overwrite, overwrite_files, new=existing is None)
        except XnatConflict as exc:
            # XNAT holds something under this label after all (another run, a stale listing, a session of
            # another type or subject): look again before deciding.
            now = self._refresh_label(label)
            if not retried and now is not None and now != existing:
                return self._put(plan, packed, subject, label, what, now, retried=True)
            raise StoreError(f"{exc}; XNAT holds under label {label}: "
                             f"{self._describe(now) if now else 'nothing'}{self._uid_hint(now)}") from None
        self.uploads += 1
        k = self._refresh_label(label)
        if k is None:
            raise StoreError(f"XNAT {self.url}: {what}: import answered OK but the session is not in the archive")
        if not self._is_this_study(k, plan, subject):
            raise StoreError(f"XNAT {self.url}: {what}: after the upload the archived session holds "
                             f"{self._describe(k)}{self._uid_hint(k)}")
        log.info("XNAT %s: stored %s as %s", self.url, what, k.id)
        return k

    def _describe(self, k: _Known) -> str:
        return f"session {k.id or '?'} of study {k.uid or '<no UID>'} ({k.xsi or 'unknown type'})"

    def _uid_hint(self, k: _Known | None) -> str:
        if k is None or self.identity != "uid":
            return ""
        return ("; if this XNAT rewrites StudyInstanceUIDs on import (a site anonymisation script), set "
                "[store.xnat] identity = 'label'")

    def _import(self, plan: SessionPlan, packed: PackedStudy, subject: str, label: str, what: str,
                overwrite: str | None, overwrite_files: bool, new: bool) -> str:
        query = {"dest": "/archive", "project": self.project, "subject": subject, "session": label}
        if overwrite:
            query["overwrite"] = overwrite
        if overwrite_files:
            query["overwrite_files"] = "true"

        def upload(session: Any) -> str:
            with open(packed.zip_path, "rb") as fh:
                resp = self.client.request(session, "POST", "/data/services/import", params=query, data=fh,
                                           headers={"Content-Type": "application/zip"},
                                           timeout=(min(self.client.s.timeout, 30.0), self.import_timeout))
            answer = resp.text.strip()
            if answer.startswith("/data/prearchive"):
                raise StoreError(f"XNAT {self.url}: {what}: XNAT left the session in the prearchive, not the "
                                 f"archive (check project {self.project}'s prearchive settings)")
            return answer

        def finished_anyway() -> str | None:
            # A timed-out or 5xx'd import of a new session may still have been archived: not twice.
            if not new:
                return None  # a merge repeated with overwrite_files=true does no harm
            k = self._refresh_label(label)
            return k.id if (k is not None and self._is_this_study(k, plan, subject)) else None

        return self.client.call(upload, what, scrub=_idents(plan), on_retry=finished_anyway)

    def _delete(self, k: _Known, what: str) -> None:
        # Experiment API: DELETE /data/experiments/{ID} (xnat-rest-tests TestContextlessExperiments).
        self.client.call(lambda s: s.delete(f"/data/experiments/{k.id}", query={"removeFiles": "true"}),
                         f"{what}: deleting session {k.id} (overwrite = delete)")
        sessions = self._load_sessions()
        for lab, v in list(sessions.items()):
            if v.id == k.id:
                sessions.pop(lab)

    # -- what was stored, read back ----------------------------------------------------------------
    def _stored(self, plan: SessionPlan, k: _Known, packed: PackedStudy | None, subject: str,
                label: str, uploaded: bool) -> StoredSession:
        location = f"{self.url}/data/experiments/{k.id}"
        scans, listed = self._read_back(k)
        files: list[StoredFile] = []
        problems: list[tuple[str, str]] = []
        if packed is not None:
            by_name = {name: (uri, size) for name, uri, size in listed}
            for f in packed.files:
                name = packed.names.get(f.sop_uid, "")
                hit = by_name.get(name)
                if hit is None:
                    if not uploaded:
                        continue  # stored earlier, perhaps under another file name: nothing to say
                    problems.append((f.path, f"XNAT {self.url}: session {k.id} lists no file {name} after the upload"))
                    continue
                files.append(StoredFile(f.sop_uid, f.series_uid, f"{self.url}{hit[0]}", hit[1] or f.size))
        stored_plan = dataclasses.replace(plan, subject=subject, label=label)  # the labels XNAT filed it under
        return StoredSession(plan=stored_plan, location=location, scans=scans, files=files, problems=problems)

    def _read_back(self, k: _Known) -> tuple[list[StoredScan], list[tuple[str, str, int]]]:
        """XNAT's scans of the session and every DICOM file it lists: (scans, [(name, URI, size)])."""
        rows = self.client.call(
            lambda s: self.client.get_rows(s, f"/data/experiments/{k.id}/scans",
                                           {"columns": "ID,type,UID,series_description,xsiType"}),
            f"scans of session {k.id}")
        scans: list[StoredScan] = []
        listed: list[tuple[str, str, int]] = []
        for r in rows:
            sid = r.get("ID", "")
            if not sid:
                continue
            frows = self.client.call(
                lambda s, sid=sid: self.client.get_rows(s, f"/data/experiments/{k.id}/scans/{sid}/resources/DICOM/files",
                                                        {}),
                f"files of scan {sid} of session {k.id}")
            for fr in frows:
                try:
                    size = int(fr.get("Size") or 0)
                except ValueError:
                    size = 0
                listed.append((fr.get("Name", ""), fr.get("URI", ""), size))
            scans.append(StoredScan(series_uid=r.get("UID", ""), scan_id=sid,
                                    modality=_SCAN_MODALITY.get(r.get("xsiType", ""), ""),
                                    description=r.get("series_description") or r.get("type", ""),
                                    n_files=len(frows)))
        return scans, listed

    # -- moving a session to another subject -------------------------------------------------------
    def move_session(self, project: str, old_subject: str, new_subject: str, label: str) -> str:
        """Refile a session under another subject of the project.

        XNAT's ExperimentResource takes `PUT .../experiments/{ID}?subject_ID=<subject>` and keeps the
        old subject, silently, when the new one does not exist; so the subject is made first and the
        session read back afterwards. The DICOM headers keep the old PatientID/PatientName unless the
        site re-runs the project anonymisation on relabel (XNAT's `rerunProjectAnonOnRename`).

        Raises:
            StoreError: the session is not there, is under a third subject, or did not move.
        """
        if project != self.project:
            raise StoreError(f"XNAT {self.url}: cannot move a session of project {project}; this store writes "
                             f"{self.project}")
        old_c, new_c, label_c = clean_label(old_subject), clean_label(new_subject), clean_label(label)
        what = f"session {label_c} of project {project}"
        k = self._refresh_label(label_c)
        if k is None:
            raise StoreError(f"XNAT {self.url}: {what} does not exist; nothing to move")
        location = f"{self.url}/data/experiments/{k.id}"
        if k.subject.lower() == new_c.lower():
            return location  # already there (a repeated move)
        if k.subject.lower() != old_c.lower():
            raise StoreError(f"XNAT {self.url}: {what} is not under the subject it should be moved from; "
                             f"left as it is")
        self._subjects = None  # the import service creates subjects we have not seen
        sid = self._subject_id(new_c)
        self.client.call(lambda s: s.put(f"/data/projects/{self.project}/experiments/{k.id}",
                                         query={"subject_ID": sid}),
                         f"moving {what} to another subject", scrub=(old_c, new_c))
        moved = self._refresh_label(label_c)
        if moved is None or moved.subject.lower() != new_c.lower():
            raise StoreError(f"XNAT {self.url}: {what}: XNAT answered the move but kept the session under its "
                             f"old subject")
        log.info("XNAT %s: moved %s to another subject", self.url, what)
        return location

    # -- listings ------------------------------------------------------------------------------
    def session_rows(self, xsi_type: str | None = None, with_scans: bool = True) -> list[dict]:
        """The project's sessions (optionally of one data type) with subject, date, UID, scanner,
        creator and scan count: XNAT's experiment search, one row per scan folded per session.
        XNAT answers xpath columns under lower-cased keys (xnat-rest-tests TestAdvancedSearch)."""
        cols = ["ID", "label", "project", "xsiType", "date", "subject_label", "UID", "scanner", "insert_user",
                "session_type"]
        query = {"project": self.project}
        if xsi_type:
            query["xsiType"] = xsi_type
        scan_col = "xnat:imageSessionData/scans/scan/ID"
        if with_scans:
            cols.append(scan_col)
        query["columns"] = ",".join(cols)
        rows = self.client.call(lambda s: self.client.get_rows(s, "/data/experiments", query),
                                f"experiment search ({xsi_type or 'all types'})")
        out: dict[str, dict] = {}
        for raw in rows:
            r = {k.lower(): v for k, v in raw.items()}
            eid = r.get("id", "")
            if not eid:
                continue
            row = out.setdefault(eid, {
                "id": eid, "project": r.get("project", ""), "subject": r.get("subject_label", ""),
                "label": r.get("label", ""), "xsi_type": r.get("xsitype", ""), "date": r.get("date", ""),
                "study_uid": r.get("uid", ""), "scanner": r.get("scanner", ""), "creator": r.get("insert_user", ""),
                "session_type": r.get("session_type", ""),
                "modality": XSI_MODALITY.get(r.get("xsitype", ""), ""), "_scans": set(),
            })
            scan = r.get(scan_col.lower(), "")
            if scan:
                row["_scans"].add(scan)
        result = []
        for row in out.values():
            row["n_scans"] = len(row.pop("_scans"))
            result.append(row)
        return result

    def list_sessions(self) -> list[dict]:
        return self.session_rows()

    def close(self) -> None:
        self.client.close()


def _idents(plan: SessionPlan) -> tuple[str, ...]:
    """Patient identifiers a server message might echo back (they are blanked out of errors)."""
    return tuple(x for x in (plan.subject, clean_label(plan.subject), plan.hospital_id, plan.study.patient_id) if x)


__all__ = ["XnatStore", "SESSION_XSI", "XSI_MODALITY", "clean_label"]
