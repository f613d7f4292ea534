"""Orthanc as a store: each file is posted to Orthanc's REST `POST /instances`.

Orthanc has no project/subject/label hierarchy, so a session is the Orthanc study with the
plan's StudyInstanceUID; subject and label stay in rtlake's catalog. Posting the same instance
twice is harmless (Orthanc answers `AlreadyStored`), which is what makes a resumed or repeated
put safe, and why POST may be retried like an idempotent call.

Every file is validated before the first POST (ingest.validate): a damaged file, or a file of
another study, stops the study before anything is written. After the last POST the study is read back from Orthanc
and counted: a put that returns has really landed.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from ..config import Config, secret_from_env
from ..errors import StoreError, StoreUnavailable
from ..conflicts import same_instance, sha256
from ..records import Conflict, SessionPlan, StoredFile, StoredScan, StoredSession
from ..validate import show, validate_file
from .base import Store

log = logging.getLogger(__name__)



class OrthancStore(Store):
    name = "orthanc"

    def __init__(self, url: str, auth: tuple[str, str] | None = None, verify: bool | str = True,
                 retries: int = 4, backoff: float = 1.0, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = (min(timeout, 30.0), timeout)
        self.http = requests.Session()
        self.http.auth = auth
        # passed per request: a session-level verify loses to REQUESTS_CA_BUNDLE in the environment
        self.verify = verify
        # POST /instances is idempotent in Orthanc, so it is retried like a GET.
        retry = Retry(total=retries, connect=retries, read=retries, status=retries, backoff_factor=backoff,
                      status_forcelist=(500, 502, 503, 504), allowed_methods=None, raise_on_status=False)
        adapter = HTTPAdapter(max_retries=retry)
        self.http.mount("http://", adapter)
        self.http.mount("https://", adapter)

    @classmethod
    def from_config(cls, cfg: Config) -> "OrthancStore":
        o = cfg.store.orthanc
        user = secret_from_env(o.username_env, "Orthanc user")
        password = secret_from_env(o.password_env, "Orthanc password")
        verify: bool | str = str(o.ca_bundle) if (o.verify_tls and o.ca_bundle) else o.verify_tls
        t = cfg.source.transfer
        # no env credentials: requests consults ~/.netrc by itself
        return cls(o.url, (user, password or "") if user else None, verify, t.retries, t.backoff_seconds,
                   t.read_timeout)

    # -- HTTP ---------------------------------------------------------------------------------
    def _request(self, method: str, path: str, what: str, **kw: Any) -> Any:
        try:
            resp = self.http.request(method, self.url + path, timeout=self.timeout, verify=self.verify, **kw)
        except requests.RequestException as exc:
            raise StoreUnavailable(f"Orthanc {self.url}: {what}: {type(exc).__name__} (no answer)") from None
        if resp.status_code >= 500:
            raise StoreUnavailable(f"Orthanc {self.url}: {what}: server error {resp.status_code}")
        if resp.status_code in (401, 403):
            raise StoreError(f"Orthanc {self.url}: {what}: refused ({resp.status_code}); check the credentials "
                             f"in the environment variables named in [store.orthanc]")
        if resp.status_code >= 400:
            detail = " ".join(resp.text.split())[:200]
            raise StoreError(f"Orthanc {self.url}: {what}: refused ({resp.status_code}): {detail}")
        try:
            return resp.json()
        except ValueError:
            raise StoreError(f"Orthanc {self.url}: {what}: answer is not JSON") from None

    def _find_study(self, uid: str) -> str | None:
        ids = self._request("POST", "/tools/find", f"study {uid}",
                            json={"Level": "Study", "Query": {"StudyInstanceUID": uid}})
        return ids[0] if ids else None

    # -- Store ----------------------------------------------------------------------------------
    def has_session(self, plan: SessionPlan) -> bool:
        oid = self._find_study(plan.study.study_uid)
        if oid is None:
            return False
        if plan.study.n_instances:
            stats = self._request("GET", f"/studies/{oid}/statistics", f"study {plan.study.study_uid}")
            return int(stats.get("CountInstances", 0)) >= plan.study.n_instances
        return True

    def put_study(self, plan: SessionPlan, files: list[Path]) -> StoredSession:
        """Post every whole file, then read the study back.

        A damaged file (ingest.validate) stops the study before anything is posted; two different valid versions of
        one instance are both held back, and a version Orthanc already holds with other content, or
        an instance stored under another study, is left as it is (`conflicts`, ingest/conflicts.py).

        Raises:
            StoreError: a file of another study (named by path), refusal, or fewer instances in Orthanc
                than sent.
            StoreUnavailable: connection errors or 5xx after retries.
        """
        uid = plan.study.study_uid
        what = f"study {uid} (session {plan.label})"
        if not files:
            raise StoreError(f"Orthanc {self.url}: {what}: no files to store")
        sops: dict[str, Path] = {}
        problems: list[tuple[str, str]] = []
        conflicts: list[Conflict] = []
        held: set[str] = set()
        for f in files:
            try:
                v = validate_file(f)
            except OSError as exc:
                raise StoreError(f"Orthanc {self.url}: {what}: {f}: cannot read ({exc.strerror or exc})") from None
            if not v.ok:  # stops the study before anything is written, naming the file and the check
                raise StoreError(f"Orthanc {self.url}: {what}: {f}: {v.reason}")
            if v.study_uid != uid:
                raise StoreError(f"Orthanc {self.url}: {what}: {f}: belongs to study {show(v.study_uid)}")
            sop, prev = v.sop_uid, sops.get(v.sop_uid)
            if sop in held or (prev is not None and same_instance(prev, f)):
                continue
            if prev is not None:  # two valid versions in one delivery: neither is posted
                held.add(sop)
                del sops[sop]
                conflicts.append(Conflict(sop, uid, "neither_stored", str(prev), str(f), uid, uid, sha256(prev),
                                          sha256(f)))
                continue
            sops[sop] = f
        elsewhere = self.stored_instances(set(sops)) if self.stored_instances else {}
        for sop, (study, location) in elsewhere.items():
            if study != uid:
                f = sops.pop(sop)
                conflicts.append(Conflict(sop, uid, "kept_stored", location, str(f), study, uid, "", sha256(f)))

        oid = None
        for sop, f in sops.items():
            data = f.read_bytes()
            answer = self._request("POST", "/instances", f"{what}: {f}", data=data,
                                   headers={"Content-Type": "application/dicom"})
            if not isinstance(answer, dict) or answer.get("Status") not in ("Success", "AlreadyStored"):
                status = answer.get("Status") if isinstance(answer, dict) else answer
                raise StoreError(f"Orthanc {self.url}: {what}: {f}: not stored (status {status})")
            if answer.get("Status") == "AlreadyStored":
                held_md5 = self._md5(answer.get("ID", ""))
                if held_md5 and held_md5 != hashlib.md5(data).hexdigest():  # Orthanc keeps what it had
                    conflicts.append(Conflict(sop, uid, "kept_stored", f"{self.url}/instances/{answer.get('ID')}",
                                              str(f), uid, uid, "", sha256(data)))
            oid = answer.get("ParentStudy", oid)
        if not sops:
            return StoredSession(plan=plan, location="", problems=problems, conflicts=conflicts)
        oid = oid or self._find_study(uid)
        if oid is None:
            raise StoreError(f"Orthanc {self.url}: {what}: study not found after storing")
        res = self._read_back(plan, oid, expected=set(sops))
        res.problems, res.conflicts = problems, conflicts
        return res

    def _md5(self, instance_id: str) -> str:
        """MD5 Orthanc recorded for an instance's file ('' when it keeps none: StoreMD5ForAttachments off)."""
        try:
            r = self.http.get(f"{self.url}/instances/{instance_id}/attachments/dicom/md5", timeout=self.timeout,
                              verify=self.verify)
        except requests.RequestException:
            return ""
        return r.text.strip().strip('"') if r.status_code == 200 else ""

    def _read_back(self, plan: SessionPlan, oid: str, expected: set[str] | None = None) -> StoredSession:
        what = f"study {plan.study.study_uid}"
        series = self._request("GET", f"/studies/{oid}/series", what)
        scans: list[StoredScan] = []
        stored: list[StoredFile] = []
        for n, se in enumerate(series, start=1):
            tags = se.get("MainDicomTags", {})
            instances = self._request("GET", f"/series/{se['ID']}/instances", what)
            se_uid = tags.get("SeriesInstanceUID", "")
            scans.append(StoredScan(series_uid=se_uid, scan_id=str(tags.get("SeriesNumber") or n),
                                    modality=tags.get("Modality", ""), description=tags.get("SeriesDescription", ""),
                                    n_files=len(instances)))
            for inst in instances:
                stored.append(StoredFile(sop_uid=inst.get("MainDicomTags", {}).get("SOPInstanceUID", ""),
                                         series_uid=se_uid, path=f"{self.url}/instances/{inst['ID']}",
                                         size=int(inst.get("FileSize", 0) or 0)))
        if expected is not None:
            missing = expected - {f.sop_uid for f in stored}
            if missing:
                raise StoreError(f"Orthanc {self.url}: {what}: {len(missing)} of {len(expected)} instances "
                                 f"missing after storing")
        return StoredSession(plan=plan, location=f"{self.url}/studies/{oid}", scans=scans, files=stored)

    def check(self) -> list[str]:
        info = self._request("GET", "/system", "GET /system")
        return [f"orthanc store: Orthanc {info.get('Version', '?')} at {self.url} answered"]

    def move_session(self, project: str, old_subject: str, new_subject: str, label: str) -> str:
        """Nothing to move: Orthanc files studies by their DICOM PatientID, not by rtlake's subject label.

        Returns "" (the location does not change)."""
        return ""

    def list_sessions(self) -> list[dict]:
        """One row per Orthanc study: (subject = PatientID, label = AccessionNumber as in the lake)."""
        rows = []
        for st in self._request("GET", "/studies?expand", "listing studies"):
            tags, ptags = st.get("MainDicomTags", {}), st.get("PatientMainDicomTags", {})
            d = tags.get("StudyDate", "")
            rows.append({"id": st.get("ID", ""), "subject": ptags.get("PatientID", ""),
                         "label": tags.get("AccessionNumber", ""), "study_uid": tags.get("StudyInstanceUID", ""),
                         "date": f"{d[:4]}-{d[4:6]}-{d[6:8]}" if len(d) == 8 else "",
                         "description": tags.get("StudyDescription", ""), "n_scans": len(st.get("Series", []))})
        return rows

    def close(self) -> None:
        self.http.close()
