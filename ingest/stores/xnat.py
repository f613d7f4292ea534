"""XNAT as the store, through the `xnat` package (xnatpy) and XNAT's import service.

One study becomes one image session: the files are zipped and posted to
`/data/services/import` with project, subject (NHS number or NN_<hospital id>) and session
label (accession number), straight into the archive. A session is "already there" when the
project holds that label with the same StudyInstanceUID; a label holding another study is a
conflict the overwrite policy decides (`none`: refuse, `append`: merge, `delete`: replace).

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
from ._xnat_client import XnatClient, XnatSettings, scratch_dir
from ._xnat_zip import pack_study
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


@dataclasses.dataclass
class _Known:
    id: str
    uid: str
    subject: str


class XnatStore(Store):
    name = "xnat"

    def __init__(self, client: XnatClient, project: str, overwrite: str = "none", create_project: bool = True,
                 import_timeout: float = 900.0, scratch: Path | None = None) -> None:
        self.client = client
        self.project = project
        self.overwrite = overwrite
        self.create_project = create_project
        self.import_timeout = import_timeout
        self.scratch = scratch
        self._project_ok = False
        self._sessions: dict[str, _Known] | None = None  # label -> what XNAT holds
        self._subjects: set[str] | None = None
        self.uploads = 0

    @classmethod
    def from_config(cls, cfg: Config) -> "XnatStore":
        x = cfg.store.xnat
        return cls(XnatClient(XnatSettings.from_config(cfg)), cfg.project.name, overwrite=x.overwrite,
                   create_project=x.create_project, import_timeout=x.import_timeout, scratch=scratch_dir(cfg))

    @property
    def url(self) -> str:
        return self.client.url

    # -- what XNAT holds ---------------------------------------------------------------------
    def ensure_project(self) -> None:
        if self._project_ok:
            return
        pid = self.project

        def check(session: Any) -> bool:
            rows = self.client.get_rows(session, "/data/archive/projects", {"columns": "ID,name", "ID": pid})
            return any(r.get("ID") == pid for r in rows)

        if not self.client.call(check, f"project {pid}"):
            if not self.create_project:
                raise StoreError(f"XNAT {self.url}: project {pid} does not exist (create_project is off)")

            def create(session: Any) -> None:
                # XNAT wiki, Project API: PUT /data/projects/{ID} with the fields as query parameters.
                session.put(f"/data/projects/{pid}", query={
                    "xsiType": "xnat:projectData", "req_format": "qs",
                    "xnat:projectData/name": pid, "xnat:projectData/secondary_ID": pid})

            self.client.call(create, f"creating project {pid}")
            if not self.client.call(check, f"project {pid}"):
                raise StoreError(f"XNAT {self.url}: project {pid} still missing after creating it")
            log.info("XNAT %s: created project %s", self.url, pid)
        self._project_ok = True

    def _load_sessions(self) -> dict[str, _Known]:
        if self._sessions is None:
            self.ensure_project()
            rows = self.client.call(
                lambda s: self.client.get_rows(s, f"/data/projects/{self.project}/experiments",
                                               {"columns": "ID,label,UID,subject_label,xsiType"}),
                f"listing sessions of project {self.project}")
            self._sessions = {r["label"]: _Known(r.get("ID", ""), r.get("UID", ""), r.get("subject_label", ""))
                              for r in rows if r.get("label")}
        return self._sessions

    def _refresh_label(self, label: str) -> _Known | None:
        rows = self.client.call(
            lambda s: self.client.get_rows(s, f"/data/projects/{self.project}/experiments",
                                           {"columns": "ID,label,UID,subject_label,xsiType", "label": label}),
            f"session {label}")
        known = self._load_sessions()
        for r in rows:
            if r.get("label") == label:
                known[label] = _Known(r.get("ID", ""), r.get("UID", ""), r.get("subject_label", ""))
                return known[label]
        known.pop(label, None)
        return None

    def _ensure_subject(self, plan: SessionPlan) -> None:
        if self._subjects is None:
            rows = self.client.call(
                lambda s: self.client.get_rows(s, f"/data/projects/{self.project}/subjects", {"columns": "ID,label"}),
                f"listing subjects of project {self.project}")
            self._subjects = {r["label"] for r in rows if r.get("label")}
        if plan.subject in self._subjects:
            return

        def create(session: Any) -> None:
            project = session.projects[self.project]
            session.classes.SubjectData(parent=project, label=plan.subject)

        self.client.call(create, f"creating the subject of study {plan.study.study_uid}", scrub=_idents(plan))
        self._subjects.add(plan.subject)

    def has_session(self, plan: SessionPlan) -> bool:
        k = self._load_sessions().get(plan.label)
        return k is not None and k.uid == plan.study.study_uid

    # -- upload ------------------------------------------------------------------------------
    def put_study(self, plan: SessionPlan, files: list[Path]) -> StoredSession:
        """Zip and import one study under project/subject/label.

        Raises:
            StoreError: refused (403, wrong project, label taken by another study, bad files).
            StoreUnavailable: timeouts / 5xx still failing after retries.
        """
        uid = plan.study.study_uid
        what = f"study {uid} (session {plan.label})"
        if plan.project != self.project:
            raise StoreError(f"XNAT {self.url}: {what}: planned for project {plan.project}, store writes {self.project}")
        self.ensure_project()
        existing = self._load_sessions().get(plan.label)
        overwrite = self.overwrite
        if existing is not None:
            if existing.uid == uid and overwrite == "none":
                return self._stored(plan, existing, None)
            if existing.uid != uid and overwrite != "delete":
                raise StoreError(f"XNAT {self.url}: {what}: label already used in project {self.project} "
                                 f"by study {existing.uid or '<unknown>'} (overwrite={overwrite})")
        else:
            overwrite = "none"  # nothing to overwrite: never let a retry merge into a half-made session
        self._ensure_subject(plan)

        if self.scratch is not None:
            self.scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="rtlake-xnat-", dir=self.scratch) as tmp:
            packed = pack_study(uid, files, Path(tmp) / f"{plan.label or 'session'}.zip")

            def upload(session: Any) -> _Known:
                with open(packed.zip_path, "rb") as fh:
                    answer = session.services.import_(
                        data=fh, content_type="application/zip", project=self.project, subject=plan.subject,
                        experiment=plan.label, overwrite=overwrite, destination="/archive",
                        timeout=(min(self.client.s.timeout, 30.0), self.import_timeout))
                if type(answer).__name__ == "PrearchiveSession":
                    raise StoreError(f"XNAT {self.url}: {what}: XNAT left the session in the prearchive, not the "
                                     f"archive (check project {self.project}'s prearchive/auto-archive settings)")
                return _Known("", uid, plan.subject)

            def finished_anyway() -> _Known | None:
                # A timed-out or 5xx'd import may still have been archived: don't upload it twice.
                k = self._refresh_label(plan.label)
                return k if (k is not None and k.uid == uid and existing is None) else None

            self.client.call(upload, what, scrub=_idents(plan), on_retry=finished_anyway)
        self.uploads += 1
        k = self._refresh_label(plan.label)
        if k is None:
            raise StoreError(f"XNAT {self.url}: {what}: import answered OK but the session is not in the archive")
        if k.uid and k.uid != uid:
            raise StoreError(f"XNAT {self.url}: {what}: archived session holds study {k.uid}")
        log.info("XNAT %s: stored %s as %s", self.url, what, k.id)
        return self._stored(plan, k, packed)

    def _stored(self, plan: SessionPlan, k: _Known, packed: Any) -> StoredSession:
        location = f"{self.url}/data/experiments/{k.id}" if k.id else f"{self.url}/data/projects/{self.project}"
        if packed is None:
            return StoredSession(plan=plan, location=location, scans=self._scans_of(k))
        scan_of = {s.series_uid: s.scan_id for s in packed.scans}
        files = [StoredFile(f.sop_uid, f.series_uid, f"{location}/scans/{scan_of.get(f.series_uid, '')}/"
                            f"{Path(f.path).name}", f.size) for f in packed.files]
        return StoredSession(plan=plan, location=location, scans=packed.scans, files=files)

    def _scans_of(self, k: _Known) -> list[StoredScan]:
        """What XNAT holds for a session we did not upload in this run (file counts unknown: 0)."""
        if not k.id:
            return []
        rows = self.client.call(
            lambda s: self.client.get_rows(s, f"/data/experiments/{k.id}/scans",
                                           {"columns": "ID,type,UID,series_description,xsiType"}),
            f"scans of session {k.id}")
        return [StoredScan(series_uid=r.get("UID", ""), scan_id=r.get("ID", ""),
                           modality=XSI_MODALITY.get(r.get("xsiType", "").replace("ScanData", "SessionData"), ""),
                           description=r.get("series_description") or r.get("type", ""), n_files=0)
                for r in rows if r.get("ID")]

    # -- listings ------------------------------------------------------------------------------
    def session_rows(self, xsi_type: str | None = None, with_scans: bool = True) -> list[dict]:
        """The project's sessions (optionally of one data type) with subject, date, UID, scanner,
        creator and scan count: XNAT's experiment search, one row per scan folded per session."""
        cols = ["ID", "label", "project", "xsiType", "date", "subject_label", "UID", "scanner", "insert_user",
                "session_type"]
        query = {"project": self.project}
        if xsi_type:
            query["xsiType"] = xsi_type
        if with_scans:
            cols.append("xnat:imageSessionData/scans/scan/ID")
        query["columns"] = ",".join(cols)
        rows = self.client.call(lambda s: self.client.get_rows(s, "/data/experiments", query),
                                f"experiment search ({xsi_type or 'all types'})")
        out: dict[str, dict] = {}
        for r in rows:
            eid = r.get("ID", "")
            if not eid:
                continue
            row = out.setdefault(eid, {
                "id": eid, "project": r.get("project", ""), "subject": r.get("subject_label", ""),
                "label": r.get("label", ""), "xsi_type": r.get("xsiType", ""), "date": r.get("date", ""),
                "study_uid": r.get("UID", ""), "scanner": r.get("scanner", ""), "creator": r.get("insert_user", ""),
                "session_type": r.get("session_type", ""),
                "modality": XSI_MODALITY.get(r.get("xsiType", ""), ""), "_scans": set(),
            })
            scan = r.get("xnat:imageSessionData/scans/scan/ID", "")
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
    return tuple(x for x in (plan.subject, plan.hospital_id, plan.study.patient_id) if x)


__all__ = ["XnatStore", "SESSION_XSI", "XSI_MODALITY"]
