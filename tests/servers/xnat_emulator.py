"""A stateful XNAT emulator for tests: the REST calls the `xnat` client (xnatpy) and rtlake's stores
make, answered the way XNAT's own source answers them, on a free localhost port.

No XNAT can run on our machines, so the stores are tested against this. Each endpoint follows
a named file of XNAT's source (NrgXnat/xnat-web), of the DICOM query-retrieve plugin
(NrgXnat/dicom-query-retrieve) or of NRG's server test suite (NrgXnat/xnat-rest-tests), and the
contract tests in tests/test_xnat_contract_*.py port that suite's cases against it. What the
source did not settle is marked `GUESS:` where it is decided. Short names used below:

  xnat-web/   = NrgXnat/xnat-web  src/main/java/org/nrg/...
  dqr/        = NrgXnat/dicom-query-retrieve  src/main/java/org/nrg/xnatx/dqr/...
  rest-tests/ = NrgXnat/xnat-rest-tests  src/test/java/org/nrg/testing/xnat/tests/...

Endpoints and what they follow:
  * login `PUT /data/services/auth` (xnatpy `_create_jsession`): a wrong password answers 500 —
    xnat-web/xnat/security/XnatProviderManager.java rethrows the authentication exception (the
    lead's reading, notes/xnat.md §8; the exact page is a GUESS). `GET /data/JSESSION` with Basic
    auth answers 401 on bad credentials. A call with an expired or missing session answers 401 +
    `WWW-Authenticate: Basic` (non-browser client); with `guest_access` on it is served as the
    guest user instead, who sees no private project (404) and may not write (403) — GUESS for the
    exact statuses.
  * version, schemas, search elements, listings and single objects: as xnatpy 0.8 parses them
    (notes/xnat.md §1–2); xpath columns come back with lower-cased keys
    (rest-tests/TestAdvancedSearch.getScanCountFromDataApi reads `xnat:mrsessiondata/scans/scan/id`).
  * import service `POST /data/services/import`:
      - overwrite parameter: xnat-web/xnat/restlet/actions/SessionImporter.java constructor —
        absent: no merge; `append` or any other value (`none` included): merge; `delete`/`override`:
        merge and override exceptions (UID check skipped, files overwritten).
      - conflicts: xnat-web/xnat/archive/PrearcSessionArchiver.checkForConflicts — 409 PRE_EXISTS
        when merging is off, MODALITY_MOD for another data type (preventCrossModalityMerge, default
        true), SUBJECT_MOD for the label under another subject, UID_MOD for another
        StudyInstanceUID unless overridden. The status is 409, or 400 on sites whose default
        compressed importer is DICOM-zip (rest-tests/TestImport.setupImportEnvironment).
      - duplicate files: 409 unless `overwrite_files=true` or `delete`
        (rest-tests/TestImport testDataDuplicateScanFiles*); the message is XNAT's
        "Session already exists with matching files." (CONFLICT-14 as the prearchive shows it).
      - a refused session is left in the project's prearchive as CONFLICT (409) or ERROR
        (SessionImporter.call catch block).
      - labels: subject and session labels go through `XnatImagesessiondata.cleanValue`
        (xnat-web/xdat/om/base/BaseXnatImagesessiondata.java: space and `~@#$%^&*()+=[]{}|\\/?:;"',.<>
        → `_`); subjects are matched case-insensitively (PrearcSessionArchiver.retrieveMatchingSubject,
        XNAT-2865).
      - session data type from the SOP classes: PET+MR → xnat:petmrSessionData (the default
        "separate PET/MR" setting is off), RT objects only → xnat:rtSessionData; GUESS: the priority
        order among the other image modalities.
      - site-wide anonymisation (SessionImporter: SiteWideAnonymizer, then the session is rebuilt
        from the rewritten files): `site_anon_hash` hashes StudyInstanceUID, StudyID,
        AccessionNumber and PatientID like the source SOP's site script. GUESS: the hash itself.
      - scan IDs: SeriesNumber; another series with the same number becomes `<n>-<MODALITY><k>`
        (rest-tests/TestImport.testModifiedSeriesUIDs: "1-MR1"); merged data keeps the session's
        own fields (testDataProjectExperimentOldRes). Files keep the zip entry's base name
        (testPrearcMergeNewScan reads `.../resources/DICOM/files/000000.dcm`); GUESS: the numeric
        resource ID in file URIs.
      - answer: 200, the archived session's URI and CRLF; `dest=/archive` always archives
        (FinishImageUpload), `dest=/prearchive...` stops in the prearchive.
  * experiments: `DELETE /data/experiments/{id}` answers 200 (rest-tests/TestContextlessExperiments);
    `PUT .../experiments/{id}?subject_ID=S` moves the session to subject S when S exists (by ID or
    label) and silently keeps the old subject when it does not
    (xnat-web/xnat/restlet/resources/ExperimentResource.setSubject).
  * writable projects: `GET /data/projects?permissions=edit` (NrgXnat/xnat-desktop-client lists
    upload targets this way). GUESS: which users may edit (every user in `users` but not `readonly_users`).
  * DQR plugin (dqr/rest/DicomQueryRetrieveApi.java):
      - `POST /xapi/dqr/query/batch`: multipart part `csv_to_store` and `pacsId`, else 400 (Spring's
        missing-part answer; GUESS: the plugin's own UI expects a 500 mentioning csv_to_store).
        Rows per dqr/services/impl/basic/BasicDicomQueryRetrieveService._extractImportRequestFromCsv:
        headers `Study Instance UID`, `Accession Number`, `Patient ID`, `Study Date` (a date or a
        range `a-b`), `Modality`, `DOB`, `Last Name`/`First Name`; a row with none of them is dropped
        silently; `Subject`, `Session` and `Relabel …` columns make the relabelMap. GUESS: the
        1,000-row limit's answer (notes/xnat.md §8 gives the limit, not the status).
      - `POST /xapi/dqr/import` (dqr/dto/PacsImportRequest.java): 403 unless the project is
        DQR-enabled (or all projects are allowed); the receiver `aeTitle`:`port` must be an enabled
        SCP with custom processing when a relabel script is asked for and `forceImport` is false
        (validateDicomScpInstance; GUESS: 400 for that). A study whose series query finds nothing is
        left out of the answer (queueStudyImport → Optional.empty()). The answer lists the queue
        entries (dqr/domain/entities/PacsRequest.java fields), status QUEUED.
      - dequeue (dqr/events/PacsDequeueThread.java): after `dqr_dequeue_delay` the queue entry goes
        PROCESSING, a history entry with its own ID is made ISSUED, then the queue entry is deleted
        (GET import/queue/{id} → 404). A failed C-MOVE makes the history entry FAILED and re-queues
        up to `dqr_max_attempts`. RECEIVED is set when the first object arrives
        (dqr/processors/UpdateRequestStatusArchiveProcessor.java) — not when it is archived.
      - arrival: the relabel script rewrites PatientName/PatientID (Subject) and StudyID/
        AccessionNumber (Session); the DQR receiver files the subject by PatientName and the session
        by StudyID (dqr DicomImportConfig: TextExtractor(PatientName), OverrideStudyIdExtractor).
        Without custom processing on the receiver no relabelling happens. GUESS: series reach the
        archive one every `dqr_scan_interval` seconds (auto-archive and later merges), so the
        session's scan count grows before it is final.
      - "There was a problem …" answers and HTML error pages: GUESS, from operators' scripts that
        retry on them (notes/xnat.md §7).

Fault injection for the bad-input tests: `add_fault` answers matching requests with a status/body
(or delays them); `expire_sessions` drops every JSESSION; `forbidden_projects` answers 403 to writes.
Clocks are inputs: pass `clock=` to drive the DQR queue by hand.
"""

from __future__ import annotations

import base64
import csv
import email.parser
import email.policy
import fnmatch
import hashlib
import io
import json
import re
import secrets
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import pydicom

SCHEMA_DIR = Path(__file__).parent / "xnat_schemas"

#: Session data type per modality (xnat.xsd names them).
SESSION_TYPES = {
    "PT": "xnat:petSessionData", "MR": "xnat:mrSessionData", "CT": "xnat:ctSessionData",
    "CR": "xnat:crSessionData", "DX": "xnat:dxSessionData", "RF": "xnat:rfSessionData",
    "SR": "xnat:srSessionData", "XA": "xnat:xaSessionData", "NM": "xnat:nmSessionData",
    "US": "xnat:usSessionData", "MG": "xnat:mgSessionData",
}
#: GUESS: the order among image modalities when a study mixes them (PET beats CT as in a PET-CT).
_SESSION_PRIORITY = ("PT", "MR", "CT", "NM", "XA", "RF", "DX", "CR", "MG", "US", "SR")
RT_MODALITIES = frozenset({"RTSTRUCT", "RTPLAN", "RTDOSE", "RTIMAGE", "RTRECORD"})
PETMR_SESSION = "xnat:petmrSessionData"
RT_SESSION = "xnat:rtSessionData"
SCAN_TYPES = {
    "PT": "xnat:petScanData", "MR": "xnat:mrScanData", "CT": "xnat:ctScanData", "CR": "xnat:crScanData",
    "DX": "xnat:dxScanData", "RF": "xnat:rfScanData", "SR": "xnat:srScanData", "XA": "xnat:xaScanData",
    "NM": "xnat:nmScanData", "US": "xnat:usScanData", "MG": "xnat:mgScanData", "RTIMAGE": "xnat:rtImageScanData",
}
OTHER_SESSION = "xnat:otherDicomSessionData"
OTHER_SCAN = "xnat:otherDicomScanData"

PROBLEM_TEXT = "There was a problem processing your request"

# PrearcSessionArchiver's messages, word for word.
PRE_EXISTS = "Session already exists, retry with overwrite enabled"
SUBJECT_MOD = "Invalid modification of session subject via archive process."
UID_MOD = "Invalid modification of session UID via archive process."
MODALITY_MOD = "Invalid modification of session modality via archive process.  Data may require a manual merge."
MATCHING_FILES = "Session already exists with matching files."

#: BaseXnatImagesessiondata.cleanValue: every one of these becomes `_`.
_CLEAN_CHARS = " `~@#$%^&*()+=[]{}|\\/?:;\"',.<>"
_CLEAN_TABLE = str.maketrans({c: "_" for c in _CLEAN_CHARS})


def clean_value(value: str) -> str:
    """XNAT's label cleaning (`XnatImagesessiondata.cleanValue`)."""
    return value.translate(_CLEAN_TABLE)


def site_hash(kind: str, value: str) -> str:
    """What a site anonymisation script that hashes identifiers makes of one. GUESS: the function."""
    if not value:
        return value
    digest = hashlib.sha256(f"rtlake-site-anon:{kind}:{value}".encode()).hexdigest()
    if kind == "uid":
        return "2.25." + str(int(digest[:30], 16))
    return digest[:16].upper()


@dataclass
class Fault:
    """Answer requests matching `method` and the `path` regex with `status`/`body`, `times` times.

    status None = only delay, then answer normally; `after` = do the work first, then delay
    (an import the server finishes although the client has stopped waiting).
    """

    method: str
    path: str
    status: int | None = 500
    body: str = "Internal Server Error"
    times: int = 1
    delay: float = 0.0
    after: bool = False
    content_type: str = "text/plain"
    hits: int = 0


@dataclass
class Scan:
    id: str
    series_uid: str
    modality: str
    description: str
    files: dict[str, dict] = field(default_factory=dict)  # file name -> {sop, size}
    resource_id: int = 0

    @property
    def sop_uids(self) -> set[str]:
        return {f["sop"] for f in self.files.values()}


@dataclass
class Experiment:
    id: str
    label: str
    project: str
    subject_id: str
    xsi_type: str
    date: str = ""
    uid: str = ""
    modality: str = ""
    scanner: str = ""
    accession: str = ""
    insert_user: str = ""
    session_type: str = ""  # XNAT's DICOM import fills it from StudyDescription
    scans: dict[str, Scan] = field(default_factory=dict)


class XnatEmulator:
    """Holds the server state; `start()` serves it on 127.0.0.1 at a free port."""

    def __init__(self, users: dict[str, str] | None = None, version: str = "1.8.10",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.users = dict(users or {"rtlake": "secret"})
        self.version = version
        self.clock = clock
        self.lock = threading.RLock()
        self.projects: dict[str, dict] = {}
        self.subjects: dict[str, dict] = {}  # ID -> {ID, label, project}
        self.experiments: dict[str, Experiment] = {}
        self.sessions: dict[str, str] = {}  # JSESSIONID -> user
        self.faults: list[Fault] = []
        self.forbidden_projects: set[str] = set()
        self.prearchive_projects: set[str] = set()  # imports without dest=/archive stop in the prearchive
        self.admin_users: set[str] = set(self.users)  # may create projects
        self.readonly_users: set[str] = set()  # may read but not edit (projects?permissions=edit leaves them out)
        self.log: list[tuple[str, str, dict]] = []  # (method, path, query) of every request
        # --- server configuration the source reads ------------------------------------------
        self.login_failure_status = 500  # XnatProviderManager rethrows: a wrong password is a 500
        self.guest_access = False  # unauthenticated calls become the guest user instead of a 401
        self.site_anon_hash = False  # a site anon script hashing StudyInstanceUID/StudyID/Accession/PatientID
        self.default_importer = "SI"  # "DICOM-zip": conflicts answer 400, unparsable files refuse the upload
        self.prevent_cross_modality_merge = True  # site setting, default true
        self.prearchive: list[dict] = []  # entries the import service left behind (CONFLICT / ERROR / READY)
        self._next_subject = 0
        self._next_experiment = 0
        self._next_resource = 100
        # --- DQR side -----------------------------------------------------------------------
        self.dqr_pacs: dict[str, dict] = {}  # studyInstanceUid -> study object (+ "_series")
        self.dqr_pacs_ids: set[int] = {1}
        self.dqr_enabled_projects: set[str] = set()
        self.dqr_allow_all_projects = False  # DqrPreferences.allowAllProjectsToUseDqr
        self.dqr_receivers: dict[tuple[str, int], dict] = {("XNAT", 8104): {"enabled": True, "custom_processing": True}}
        self.dqr_dequeue_delay = 0.0
        self.dqr_arrival_delay = 0.0
        self.dqr_scan_interval = 0.0
        self.dqr_max_attempts = 1  # DqrPreferences.dqrMaxPacsRequestAttempts as NRG's own test sets it
        self.dqr_fail_uids: set[str] = set()  # the C-MOVE of these fails
        self.dqr_stuck_uids: set[str] = set()  # never dequeued (PACS unavailable / oversubscribed)
        self.dqr_problem_answers = 0  # next N DQR POSTs answer 200 "There was a problem..."
        self.dqr_non_json_answers = 0  # next N DQR POSTs answer 200 with an HTML page
        self.dqr_queue: dict[int, dict] = {}
        self.dqr_history: dict[int, dict] = {}
        self._dqr_transfers: list[dict] = []
        # queue and history IDs come from separate tables (QueuedPacsRequest / ExecutedPacsRequest);
        # distinct ranges so a client that confuses them fails in tests.
        self._next_queue_id = 1
        self._next_history_id = 5001
        self.dqr_import_calls: list[list[str]] = []  # studyInstanceUids per import call
        self.dqr_query_calls: list[int] = []  # CSV rows per batch query
        self._httpd: ThreadingHTTPServer | None = None
        self.scheme = "http"
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, tls: tuple[Path, Path] | None = None) -> "XnatEmulator":
        """Serve on a free port; `tls` = (certificate, key) PEM files serves HTTPS instead."""
        handler = type("Handler", (_Handler,), {"emu": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.scheme = "http"
        if tls is not None:
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
            self.scheme = "https"
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="xnat-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    # -- test controls ------------------------------------------------------------------
    def add_project(self, pid: str, name: str | None = None, dqr: bool = False) -> None:
        with self.lock:
            self.projects.setdefault(pid, {"ID": pid, "name": name or pid, "secondary_ID": pid})
            if dqr:
                self.dqr_enabled_projects.add(pid)

    def add_fault(self, method: str, path: str, status: int | None = 500, body: str = "Internal Server Error",
                  times: int = 1, delay: float = 0.0, after: bool = False, content_type: str = "text/plain") -> Fault:
        f = Fault(method.upper(), path, status, body, times, delay, after, content_type)
        with self.lock:
            self.faults.append(f)
        return f

    def add_pacs_study(self, uid: str, accession: str, patient_id: str, study_date: str = "20230517",
                       description: str = "CT HEAD", modalities: tuple[str, ...] = ("CT",), study_id: str = "1",
                       sex: str = "F", patient_name: str = "SYNTH^DQR", n_series: int | None = None) -> None:
        """Put a study on the PACS the DQR plugin queries (the plugin's Study JSON shape)."""
        mods = [m for m in modalities if m] or ["OT"]
        n = n_series or len(mods)
        series = [{"seriesInstanceUid": f"{uid}.{k + 1}", "seriesNumber": str(k + 1),
                   "modality": mods[k % len(mods)], "seriesDescription": f"{description} {k + 1}",
                   "instances": 2} for k in range(n)]
        with self.lock:
            self.dqr_pacs[uid] = {
                "studyInstanceUid": uid, "studyId": study_id, "accessionNumber": accession,
                "studyDate": study_date, "studyDescription": description, "modalitiesInStudy": list(mods),
                "referringPhysicianName": "", "patient": {"id": patient_id, "name": patient_name, "sex": sex},
                "_series": series,
            }

    def expire_sessions(self) -> None:
        """Forget every JSESSION, as XNAT does when a session times out."""
        with self.lock:
            self.sessions.clear()

    def count(self, method: str, path_regex: str) -> int:
        with self.lock:
            return sum(1 for m, p, _ in self.log if m == method and re.search(path_regex, p))

    @property
    def login_attempts(self) -> int:
        """Password logins tried (`PUT /data/services/auth`), whatever their outcome."""
        return self.count("PUT", r"^/data/services/auth$")

    def subject_label(self, sid: str) -> str:
        return self.subjects[sid]["label"]

    def find_experiment(self, project: str, label: str) -> Experiment | None:
        with self.lock:
            for e in self.experiments.values():
                if e.project == project and e.label == label:
                    return e
        return None

    def tick(self) -> None:
        """Let the DQR dequeue thread and the receiver catch up with the clock."""
        with self.lock:
            self._dqr_tick(self.clock())

    # -- state changes (under lock) -------------------------------------------------------
    def _subject(self, project: str, key: str, create: bool) -> dict | None:
        """By ID, else by label case-insensitively (XnatSubjectdata.GetSubjectByProjectIdentifierCaseInsensitive)."""
        for s in self.subjects.values():
            if s["project"] == project and s["ID"] == key:
                return s
        for s in self.subjects.values():
            if s["project"] == project and s["label"].lower() == key.lower():
                return s
        if not create:
            return None
        self._next_subject += 1
        sid = f"XNAT_S{self._next_subject:05d}"
        s = {"ID": sid, "label": key, "project": project}
        self.subjects[sid] = s
        return s

    def _experiment(self, project: str, key: str) -> Experiment | None:
        for e in self.experiments.values():
            if e.project == project and key in (e.id, e.label):
                return e
        return None

    def _new_experiment(self, project: str, subject_id: str, label: str, xsi_type: str, user: str) -> Experiment:
        self._next_experiment += 1
        eid = f"XNAT_E{self._next_experiment:05d}"
        e = Experiment(id=eid, label=label, project=project, subject_id=subject_id, xsi_type=xsi_type,
                       insert_user=user)
        self.experiments[eid] = e
        return e

    def _scan_for(self, e: Experiment, series_uid: str, number: str, modality: str, description: str) -> Scan:
        """The scan a series goes to: by series UID, else a new one numbered by SeriesNumber;
        another series with that number becomes `<n>-<MODALITY><k>` (TestImport.testModifiedSeriesUIDs)."""
        for s in e.scans.values():
            if s.series_uid == series_uid:
                return s
        sid = number or str(len(e.scans) + 1)  # GUESS: no SeriesNumber → the next free number
        if sid in e.scans:
            k = 1
            while f"{number or sid}-{modality}{k}" in e.scans:
                k += 1
            sid = f"{number or sid}-{modality}{k}"
        self._next_resource += 1
        scan = Scan(sid, series_uid, modality, description, resource_id=self._next_resource)
        e.scans[sid] = scan
        return scan

    # -- DQR dequeue thread and receiver, advanced lazily by the clock ----------------------
    def _dqr_tick(self, now: float) -> None:
        # Events happen at the time they were due (the dequeue thread does not wait for a client to
        # ask); a retried entry may come due again within the same tick.
        while True:
            due = [qid for qid, q in sorted(self.dqr_queue.items()) if q["status"] == "QUEUED"
                   and q["studyInstanceUid"] not in self.dqr_stuck_uids and q["_due"] <= now]
            if not due:
                break
            self._dqr_dequeue(due[0])
        self._dqr_receive(now)

    def _dqr_dequeue(self, qid: int) -> None:
        q = self.dqr_queue[qid]
        at = q["_due"]
        uid = q["studyInstanceUid"]
        h = {k: v for k, v in q.items() if not k.startswith("_")}
        h.update(id=self._next_history_id, status="ISSUED", executedTime=_ms(), created=_ms(), timestamp=_ms())
        self._next_history_id += 1
        self.dqr_history[h["id"]] = h
        if uid in self.dqr_fail_uids or uid not in self.dqr_pacs:
            h["status"] = "FAILED"
            h["errorMessage"] = f"C-MOVE of study {uid} failed: the PACS refused the move"
            q["_attempts"] += 1
            if q["_attempts"] < self.dqr_max_attempts:
                q["_due"] = at + max(self.dqr_dequeue_delay, 1e-6)
            else:
                del self.dqr_queue[qid]
            return
        del self.dqr_queue[qid]  # PacsDequeueThread.closeRequest after the C-MOVE was issued
        self._dqr_transfers.append({"history": h["id"], "uid": uid, "project": q["xnatProject"],
                                    "relabel": q["_relabel"], "relabelled": q["_relabelled"],
                                    "user": q["username"], "start": at + self.dqr_arrival_delay, "done": 0})

    def _dqr_receive(self, now: float) -> None:
        for t in list(self._dqr_transfers):
            if now < t["start"]:
                continue
            h = self.dqr_history[t["history"]]
            if h["status"] == "ISSUED":
                h["status"] = "RECEIVED"  # UpdateRequestStatusArchiveProcessor: the first object arrived
            series = self.dqr_pacs[t["uid"]]["_series"]
            due = len(series) if self.dqr_scan_interval <= 0 else min(
                len(series), int((now - t["start"]) / self.dqr_scan_interval) + 1)
            while t["done"] < due:
                self._dqr_archive_series(t, series[t["done"]])
                t["done"] += 1
            if t["done"] >= len(series):
                self._dqr_transfers.remove(t)

    def _dqr_archive_series(self, t: dict, series: dict) -> None:
        src = self.dqr_pacs[t["uid"]]
        relabel = t["relabel"] if t["relabelled"] else {}
        # The relabel script rewrites PatientName/PatientID (Subject) and StudyID/AccessionNumber
        # (Session); the DQR receiver files by PatientName and StudyID (else AccessionNumber).
        patient_name = relabel.get("Subject") or src["patient"]["name"]
        study_id = relabel.get("Session") or src.get("studyId") or src.get("accessionNumber") or ""
        uid = t["uid"]
        if self.site_anon_hash:
            # GUESS: the site script runs after the relabel script (NRG's own CSV test disables it because
            # "these two can interfere with each other"), so StudyID, hence the label, is hashed too.
            uid, study_id = site_hash("uid", uid), site_hash("id", study_id)
        pid = t["project"]
        subj = self._subject(pid, clean_value(patient_name), create=True)
        label = clean_value(study_id or uid)
        e = self._experiment(pid, label)
        if e is None:
            mods = set(src.get("modalitiesInStudy") or [])
            e = self._new_experiment(pid, subj["ID"], label, _session_type(mods), t["user"])
            e.uid, e.date = uid, _iso_date(src.get("studyDate", ""))
            e.accession = study_id if relabel.get("Session") else src.get("accessionNumber", "")
            e.session_type = src.get("studyDescription", "")
            e.modality = _modality_of(e.xsi_type)
        scan = self._scan_for(e, series["seriesInstanceUid"], series["seriesNumber"], series["modality"],
                              series["seriesDescription"])
        for i in range(series.get("instances", 1)):
            scan.files[f"{series['seriesInstanceUid']}-{i + 1}.dcm"] = {"sop": f"{series['seriesInstanceUid']}.{i + 1}",
                                                                      "size": 1024}


def _ms() -> int:
    return int(time.time() * 1000)


def _iso_date(da: str) -> str:
    return f"{da[:4]}-{da[4:6]}-{da[6:8]}" if len(da) == 8 and da.isdigit() else ""


def _modality_of(xsi_type: str) -> str:
    name = xsi_type.split(":", 1)[-1].replace("SessionData", "")
    return name.upper()


def _session_type(modalities: set[str]) -> str:
    """Session data type from what the SOP classes say the study holds."""
    mods = {m.upper() for m in modalities if m}
    if "PT" in mods and "MR" in mods:
        return PETMR_SESSION
    for m in _SESSION_PRIORITY:
        if m in mods:
            return SESSION_TYPES[m]
    if mods and mods <= RT_MODALITIES:
        return RT_SESSION
    return OTHER_SESSION


def _result_set(rows: list[dict]) -> dict:
    return {"ResultSet": {"Result": rows, "totalRecords": str(len(rows))}}


class _Reply(Exception):
    """Raised inside a handler to answer at once."""

    def __init__(self, status: int, body: str | bytes | dict | list = "", content_type: str | None = None,
                 headers: dict | list | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers or {}


class _Conflict(Exception):
    """An import refused by checkForConflicts (or a duplicate-file check)."""


class _Handler(BaseHTTPRequestHandler):
    emu: XnatEmulator
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, a keep-alive client waits ~40 ms
    # (delayed ACK) on every answer.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    # -- plumbing ---------------------------------------------------------------------------
    def _body(self) -> bytes:
        if hasattr(self, "_cached_body"):
            return self._cached_body
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            data = self.rfile.read(n)
        elif "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            data = b"".join(chunks)
        else:
            data = b""
        self._cached_body = data
        return data

    def _send(self, status: int, body: str | bytes | dict | list = "", content_type: str | None = None,
              headers: dict | list | None = None) -> None:
        if isinstance(body, (dict, list, bool, int)):
            payload = json.dumps(body).encode()
            content_type = content_type or "application/json"
        elif isinstance(body, str):
            payload = body.encode("utf-8")
        else:
            payload = body
        self.send_response(status)
        self.send_header("Content-Type", content_type or "text/plain;charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (headers.items() if isinstance(headers, dict) else (headers or [])):
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _basic(self) -> tuple[str, str] | None:
        auth = self.headers.get("Authorization") or ""
        if not auth.startswith("Basic "):
            return None
        user, _, pw = base64.b64decode(auth[6:]).decode(errors="replace").partition(":")
        return user, pw

    def _user(self) -> str | None:
        cookie = self.headers.get("Cookie") or ""
        m = re.search(r"JSESSIONID=([^;\s]+)", cookie)
        with self.emu.lock:
            if m and m.group(1) in self.emu.sessions:
                return self.emu.sessions[m.group(1)]
        basic = self._basic()
        if basic and self.emu.users.get(basic[0]) == basic[1]:
            return basic[0]
        return None

    def _dispatch(self, method: str) -> None:
        # One handler object serves every request of a keep-alive connection: reset per request.
        self.__dict__.pop("_cached_body", None)
        url = urlparse(self.path)
        path = unquote(url.path).rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        emu = self.emu
        with emu.lock:
            emu.log.append((method, path, query))
            emu._dqr_tick(emu.clock())
            fault = next((f for f in emu.faults if f.method == method and f.times > 0
                          and re.search(f.path, path)), None)
            if fault is not None:
                fault.times -= 1
                fault.hits += 1
        if fault is not None and not fault.after:
            self._body()  # drain the upload so the client sees our answer, not a reset
            if fault.delay:
                time.sleep(fault.delay)
            if fault.status is not None:
                self._send(fault.status, fault.body, fault.content_type)
                return
        try:
            self._route(method, path, query)
        except _Reply as r:
            if fault is not None and fault.after and fault.delay:
                time.sleep(fault.delay)
            try:
                self._send(r.status, r.body, r.content_type, r.headers)
            except (BrokenPipeError, ConnectionResetError):
                pass
        except Exception as exc:  # noqa: BLE001 - a bug in the emulator is a 500, visible to the test
            self._send(500, f"emulator error: {type(exc).__name__}: {exc}")

    # -- routing ----------------------------------------------------------------------------
    def _route(self, method: str, path: str, q: dict) -> None:
        emu = self.emu
        if path == "/" and method in ("GET", "HEAD"):
            raise _Reply(200, "<html><body>XNAT emulator</body></html>", "text/html")
        if path == "/data/services/auth" and method == "PUT":
            return self._login()
        if path == "/data/JSESSION" and method == "DELETE":
            m = re.search(r"JSESSIONID=([^;\s]+)", self.headers.get("Cookie") or "")
            with emu.lock:
                if m:
                    emu.sessions.pop(m.group(1), None)
            raise _Reply(200, "")

        user = self._user()
        if user is None:
            basic = self._basic()
            if basic is not None or not emu.guest_access:
                # Non-browser client with a dead or missing session (or refused Basic credentials).
                raise _Reply(401, "<html><body><h3>Login attempt failed. Please try again.</h3></body></html>",
                             "text/html", {"WWW-Authenticate": 'Basic realm="XNAT"'})
            user = "guest"
        if path == "/data/JSESSION" and method == "GET":
            m = re.search(r"JSESSIONID=([^;\s]+)", self.headers.get("Cookie") or "")
            raise _Reply(200, m.group(1) if m else secrets.token_hex(16).upper())
        if path == "/data/auth" and method == "GET":
            raise _Reply(200, f"User '{user}' is logged in")
        if path == "/data/version":
            raise _Reply(404, "Not Found")  # XNAT 1.7+: version lives under /xapi/siteConfig
        if path == "/xapi/siteConfig/buildInfo":
            raise _Reply(200, {"version": emu.version, "buildNumber": "emulator", "commit": "emulator"})
        if path == "/xapi/schemas":
            raise _Reply(200, ["xnat", "xdat"])
        m = re.fullmatch(r"/xapi/schemas/(xnat|xdat)", path)
        if m:
            raise _Reply(200, (SCHEMA_DIR / f"{m.group(1)}.xml").read_bytes(), "application/xml")
        if path == "/data/search/elements":
            types = sorted(set(SESSION_TYPES.values()) | {PETMR_SESSION, RT_SESSION, OTHER_SESSION})
            rows = [{"ELEMENT_NAME": t, "PLURAL": t, "SINGULAR": t, "IS_EXPERIMENT": "true"} for t in types]
            rows.append({"ELEMENT_NAME": "xnat:subjectData", "IS_EXPERIMENT": "false"})
            raise _Reply(200, _result_set(rows))
        if path.startswith("/data/search/elements/"):
            # GUESS: a short field list; xnatpy only turns FIELD_IDs into search attributes.
            raise _Reply(200, _result_set([{"FIELD_ID": f, "HEADER": f, "SUMMARY": f, "TYPE": "string"}
                                           for f in ("LABEL", "DATE", "UID")]))
        if user == "guest" and (method != "GET" or path.startswith("/xapi/dqr")):
            raise _Reply(403, "The guest user cannot do that")  # GUESS: the exact status
        if path == "/data/services/import" and method == "POST":
            return self._import(user, q)
        if path.startswith("/xapi/dqr/"):
            return self._dqr(method, path, user, q)
        if path == "/data/experiments" and method == "GET":
            return self._experiments_listing(q, project=None, user=user)
        if path.startswith("/data/prearchive/projects"):
            return self._prearchive(method, path, q, user)

        # Archive paths: /data/archive/... is the same as /data/...
        if path.startswith("/data/archive/"):
            path = "/data/" + path[len("/data/archive/"):]
        parts = path.split("/")[2:]  # after /data
        if parts == ["projects"] and method == "GET":
            with emu.lock:
                rows = [{"ID": p["ID"], "name": p["name"], "secondary_ID": p["secondary_ID"],
                         "URI": f"/data/projects/{p['ID']}"} for p in emu.projects.values()
                        if self._can_read(user, p["ID"])]
                if q.get("permissions") == "edit":
                    rows = [r for r in rows if self._can_edit(user, r["ID"])]
            raise _Reply(200, self._listing(rows, {k: v for k, v in q.items() if k not in ("permissions", "dataType")}))
        if parts and parts[0] == "projects" and len(parts) >= 2:
            return self._project_path(method, parts[1], parts[2:], q, user)
        if parts and parts[0] == "experiments" and len(parts) >= 2:
            with emu.lock:
                e = emu.experiments.get(parts[1])
            if e is None or not self._can_read(user, e.project):
                raise _Reply(404, f"experiment {parts[1]} not found")
            return self._experiment_path(method, e, parts[2:], q, user)
        raise _Reply(404, f"emulator: no route for {method} {path}")

    # -- permissions (GUESS: a private-project model with editors and read-only users) ----------
    def _can_read(self, user: str, pid: str) -> bool:
        return user != "guest"

    def _can_edit(self, user: str, pid: str) -> bool:
        return user != "guest" and user not in self.emu.readonly_users and pid not in self.emu.forbidden_projects

    # -- login ------------------------------------------------------------------------------
    def _login(self) -> None:
        form = {k: v[-1] for k, v in parse_qs(self._body().decode()).items()}
        user, pw = form.get("username"), form.get("password")
        if user is None or self.emu.users.get(user) != pw:
            status = self.emu.login_failure_status
            raise _Reply(status, "<html><body><h3>Login attempt failed. Please try again.</h3>"
                                 "<p>org.springframework.security.authentication.BadCredentialsException</p>"
                                 "</body></html>", "text/html")
        token = secrets.token_hex(16).upper()
        with self.emu.lock:
            self.emu.sessions[token] = user
        expiry_ms = int(time.time() * 1000)
        raise _Reply(200, token, headers=[
            ("Set-Cookie", f"JSESSIONID={token}; Path=/; HttpOnly"),
            # XNAT sends the session timeout as "<epoch ms>,<interval ms>" (xnatpy reads it for keep-alive).
            ("Set-Cookie", f'SESSION_EXPIRATION_TIME="{expiry_ms},900000"; Path=/'),
        ])

    # -- listings -----------------------------------------------------------------------------
    def _listing(self, rows: list[dict], q: dict) -> dict | str:
        """Apply `columns=` and shortcut filters (exact unless `*`/`%`), then format as asked."""
        fmt = q.get("format", "json")
        filters = {k: v for k, v in q.items()
                   if k not in ("format", "columns", "limit", "offset", "xsiType", "req_format", "sortBy", "all")}
        out = []
        for r in rows:
            ok = True
            for k, pattern in filters.items():
                if k in r and not fnmatch.fnmatchcase(str(r[k]), pattern.replace("%", "*")):
                    ok = False
            if ok:
                out.append(r)
        if "columns" in q:
            cols = [c for c in q["columns"].split(",") if c]
            # xpath columns come back with lower-cased keys (TestAdvancedSearch reads
            # "xnat:mrsessiondata/scans/scan/id"); shortcut columns keep their case.
            keys = {c: (c.lower() if ("/" in c or ":" in c) else c) for c in cols}
            keep = list(dict.fromkeys(["ID", "URI", *cols]))
            out = [{keys.get(c, c): r.get(c, r.get(c.lower(), "")) for c in keep} for r in out]
        if fmt == "csv":
            buf = io.StringIO()
            keys_ = list(out[0].keys()) if out else (["ID", "URI"] + q.get("columns", "").split(","))
            w = csv.DictWriter(buf, fieldnames=keys_, extrasaction="ignore")
            w.writeheader()
            w.writerows(out)
            raise _Reply(200, buf.getvalue(), "text/csv")
        return _result_set(out)

    def _experiment_rows(self, es: list[Experiment], with_scans: bool) -> list[dict]:
        emu = self.emu
        rows = []
        for e in es:
            subj = emu.subjects[e.subject_id]
            base = {
                "ID": e.id, "label": e.label, "project": e.project, "xsiType": e.xsi_type, "date": e.date,
                "subject_ID": e.subject_id, "subject_label": subj["label"], "UID": e.uid,
                "modality": e.modality, "scanner": e.scanner, "insert_user": e.insert_user,
                "dcmAccessionNumber": e.accession, "session_type": e.session_type,
                "URI": f"/data/experiments/{e.id}",
            }
            for k, v in list(base.items()):
                if k not in ("ID", "URI"):
                    base[f"{e.xsi_type}/{k}".lower()] = v
            if not with_scans:
                rows.append(base)
                continue
            # GUESS: asking for a scan xpath column returns one row per scan (XNAT's search joins child
            # rows); sessions without scans keep one row with blanks.
            scans = list(e.scans.values()) or [None]
            for s in scans:
                r = dict(base)
                for kind in ("ID", "type", "UID"):
                    val = "" if s is None else {"ID": s.id, "type": s.description, "UID": s.series_uid}[kind]
                    r[f"{e.xsi_type}/scans/scan/{kind}".lower()] = val
                    r[f"xnat:imagesessiondata/scans/scan/{kind}".lower()] = val
                rows.append(r)
        return rows

    def _experiments_listing(self, q: dict, project: str | None, subject: dict | None = None,
                             user: str = "") -> None:
        emu = self.emu
        with emu.lock:
            es = [e for e in emu.experiments.values()
                  if (project is None or e.project == project)
                  and (subject is None or e.subject_id == subject["ID"])
                  and self._can_read(user, e.project)]
            if "xsiType" in q:
                es = [e for e in es if fnmatch.fnmatchcase(e.xsi_type, q["xsiType"])]
            if "label" in q:  # exact unless wildcards (filter before building rows, as a database would)
                es = [e for e in es if fnmatch.fnmatchcase(e.label, q["label"].replace("%", "*"))]
            with_scans = "/scans/scan/" in q.get("columns", "").lower()
            rows = self._experiment_rows(es, with_scans)
        raise _Reply(200, self._listing(rows, q))

    # -- project / subject / experiment paths -------------------------------------------------
    def _project_path(self, method: str, pid: str, rest: list[str], q: dict, user: str) -> None:
        emu = self.emu
        with emu.lock:
            project = emu.projects.get(pid)
        if not rest:
            if method == "PUT":
                # Project creation: 200 (GUESS: XNAT answers 200 with no body; notes/xnat.md §8); 403 for non-admins.
                if user not in emu.admin_users:
                    raise _Reply(403, "insufficient privileges to create projects")
                if project is None:
                    emu.add_project(pid, q.get("xnat:projectData/name"))
                raise _Reply(200, "")
            if project is None or not self._can_read(user, pid):
                raise _Reply(404, f"project {pid} not found")
            if method == "GET":
                raise _Reply(200, {"items": [{"meta": {"xsi:type": "xnat:projectData", "isHistory": False},
                                              "data_fields": dict(project), "children": []}]})
            raise _Reply(405, "method not allowed")
        if project is None or not self._can_read(user, pid):
            raise _Reply(404, f"project {pid} not found")
        if method in ("PUT", "POST", "DELETE") and not self._can_edit(user, pid):
            raise _Reply(403, f"user {user} cannot write to project {pid}")
        if rest == ["subjects"] and method == "GET":
            with emu.lock:
                rows = [{"ID": s["ID"], "label": s["label"], "project": s["project"],
                         "URI": f"/data/subjects/{s['ID']}"} for s in emu.subjects.values() if s["project"] == pid]
            raise _Reply(200, self._listing(rows, q))
        if rest == ["experiments"] and method == "GET":
            return self._experiments_listing(q, project=pid, user=user)
        if rest[0] == "experiments" and len(rest) >= 2:
            with emu.lock:
                e = emu._experiment(pid, rest[1])
            if e is None:
                raise _Reply(404, f"experiment {rest[1]} not found in {pid}")
            return self._experiment_path(method, e, rest[2:], q, user)
        if rest[0] == "subjects" and len(rest) >= 2:
            return self._subject_path(method, pid, rest[1], rest[2:], q, user)
        raise _Reply(404, "no such resource")

    def _subject_path(self, method: str, pid: str, key: str, rest: list[str], q: dict, user: str) -> None:
        emu = self.emu
        with emu.lock:
            subj = emu._subject(pid, key, create=False)
            if not rest and method == "PUT":
                created = subj is None
                subj = emu._subject(pid, q.get("xnat:subjectData/label", key), create=True)
                raise _Reply(201 if created else 200, subj["ID"])
        if subj is None:
            raise _Reply(404, "subject not found")
        if not rest and method == "GET":
            raise _Reply(200, {"items": [{"meta": {"xsi:type": "xnat:subjectData", "isHistory": False},
                                          "data_fields": dict(subj), "children": []}]})
        if rest == ["experiments"] and method == "GET":
            return self._experiments_listing(q, project=pid, subject=subj, user=user)
        if rest[0] == "experiments" and len(rest) >= 2:
            label = rest[1]
            with emu.lock:
                e = emu._experiment(pid, label)
                if e is None and method == "PUT" and len(rest) == 2:
                    xsi = q.get("xsiType", "xnat:ctSessionData")
                    e = emu._new_experiment(pid, subj["ID"], q.get(f"{xsi}/label", label), xsi, user)
                    e.date = q.get(f"{xsi}/date", "")
                    raise _Reply(201, e.id)
            if e is None:
                raise _Reply(404, "experiment not found")
            return self._experiment_path(method, e, rest[2:], q, user)
        raise _Reply(404, "no such resource")

    def _experiment_path(self, method: str, e: Experiment, rest: list[str], q: dict, user: str) -> None:
        emu = self.emu
        if method in ("PUT", "POST", "DELETE") and not self._can_edit(user, e.project):
            raise _Reply(403, f"user {user} cannot write to project {e.project}")
        if not rest and method == "GET":
            with emu.lock:
                fields = {"ID": e.id, "label": e.label, "project": e.project, "subject_ID": e.subject_id,
                          "date": e.date, "UID": e.uid, "modality": e.modality, "scanner": e.scanner,
                          "dcmAccessionNumber": e.accession}
                children = [{"field": "scans/scan", "items": [
                    {"meta": {"xsi:type": SCAN_TYPES.get(s.modality, OTHER_SCAN), "isHistory": False},
                     "data_fields": {"ID": s.id, "type": s.description, "UID": s.series_uid,
                                     "series_description": s.description, "modality": s.modality,
                                     "image_session_ID": e.id, "frames": len(s.files)},
                     "children": []} for s in e.scans.values()]}] if e.scans else []
            raise _Reply(200, {"items": [{"meta": {"xsi:type": e.xsi_type, "isHistory": False},
                                          "data_fields": {k: v for k, v in fields.items() if v != ""},
                                          "children": children}]})
        if not rest and method == "PUT":
            # ExperimentResource.handlePut → setSubject: subject_ID names the subject by ID or label in
            # the project; an unknown one leaves the existing experiment under its old subject.
            new = q.get("subject_ID", "").strip()
            if new:
                with emu.lock:
                    subj = None
                    for s in emu.subjects.values():
                        if s["ID"] == new or (s["project"] == e.project and s["label"] == new):
                            subj = s
                            break
                    if subj is not None:
                        e.subject_id = subj["ID"]
            raise _Reply(200, e.id)
        if not rest and method == "DELETE":
            with emu.lock:
                emu.experiments.pop(e.id, None)
            raise _Reply(200, "")
        if rest == ["scans"] and method == "GET":
            with emu.lock:
                rows = [{"ID": s.id, "type": s.description, "UID": s.series_uid, "xsiType":
                         SCAN_TYPES.get(s.modality, OTHER_SCAN), "series_description": s.description,
                         "quality": "usable", "note": "", "URI": f"/data/experiments/{e.id}/scans/{s.id}"}
                        for s in e.scans.values()]
            raise _Reply(200, self._listing(rows, q))
        if (len(rest) == 3 and rest[0] == "scans" and rest[2] == "files") or (
                len(rest) == 5 and rest[0] == "scans" and rest[2] == "resources" and rest[4] == "files"):
            with emu.lock:
                scan = e.scans.get(rest[1])
                if scan is None or (len(rest) == 5 and rest[3] not in ("DICOM", str(scan.resource_id))):
                    raise _Reply(404, "no such scan resource")
                rows = [{"Name": name, "Size": str(f["size"]), "collection": "DICOM", "file_format": "DICOM",
                         "file_content": "RAW", "file_tags": "", "cat_ID": str(scan.resource_id), "digest": "",
                         "URI": f"/data/experiments/{e.id}/scans/{scan.id}/resources/{scan.resource_id}/files/{name}"}
                        for name, f in scan.files.items()]
            raise _Reply(200, self._listing(rows, q))
        raise _Reply(404, "no such resource")

    # -- prearchive listing ---------------------------------------------------------------------
    def _prearchive(self, method: str, path: str, q: dict, user: str) -> None:
        if method != "GET":
            raise _Reply(405, "method not allowed")
        parts = path.split("/")[4:]  # after /data/prearchive/projects
        with self.emu.lock:
            rows = [dict(r) for r in self.emu.prearchive if not parts or r["project"] == parts[0]]
        raise _Reply(200, _result_set(rows))

    # -- import service -----------------------------------------------------------------------
    def _import(self, user: str, q: dict) -> None:
        """SessionImporter + PrearcSessionArchiver (see the module docstring)."""
        emu = self.emu
        body = self._body()
        q = dict(q)
        overwrite = q.pop("overwrite", None)
        allow_merge = overwrite is not None
        override = overwrite is not None and overwrite.lower() in ("delete", "override")
        overwrite_files = override or q.get("overwrite_files", "").lower() == "true"
        zip_importer = q.get("import-handler", "").upper() == "DICOM-ZIP" or (
            not q.get("import-handler") and emu.default_importer == "DICOM-zip")
        conflict_status = 400 if zip_importer else 409
        dest = q.get("dest", "")
        pid, subject_label, label = q.get("project"), q.get("subject"), q.get("session")
        m = re.match(r"^/archive(?:/projects/([^/]+)(?:/subjects/([^/]+)(?:/experiments/([^/]+))?)?)?/?$", dest)
        to_archive = bool(m) if dest else None
        if m:
            pid, subject_label, label = m.group(1) or pid, m.group(2) or subject_label, m.group(3) or label
        elif dest.startswith("/prearchive"):
            to_archive = False
            pm = re.match(r"^/prearchive/projects/([^/]+)", dest)
            pid = pm.group(1) if pm else pid
        if not pid:
            raise _Reply(400, "unable to identify destination project")
        with emu.lock:
            if pid not in emu.projects:
                # GUESS: XNAT answers an unknown destination project with 404 and a short message.
                raise _Reply(404, f"import: project {pid} does not exist")
            if not self._can_edit(user, pid):
                raise _Reply(403, f"import: user {user} cannot write to project {pid}")
        if to_archive is None:
            to_archive = pid not in emu.prearchive_projects
        try:
            zf = zipfile.ZipFile(io.BytesIO(body))
        except zipfile.BadZipFile:
            raise _Reply(400, "import: the upload is not a zip archive") from None
        datasets: list[tuple[str, pydicom.Dataset, int]] = []
        ignore_unparsable = q.get("Ignore-Unparsable", "").lower() == "true"
        for name in zf.namelist():
            if name.endswith("/"):
                continue
            data = zf.read(name)
            try:
                ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
                _ = ds.SOPInstanceUID, ds.StudyInstanceUID
            except Exception:  # noqa: BLE001 - SI skips what it cannot parse; DICOM-zip refuses it
                if zip_importer and not ignore_unparsable:
                    raise _Reply(400, f"unable to read DICOM object {Path(name).name}") from None
                continue
            datasets.append((Path(name).name, ds, len(data)))
        if not datasets:
            raise _Reply(400, "Upload did not include parsable files for session generation.")
        if emu.site_anon_hash:
            for _, ds, _ in datasets:
                ds.StudyInstanceUID = site_hash("uid", str(ds.StudyInstanceUID))
                for kw, kind in (("StudyID", "id"), ("AccessionNumber", "id"), ("PatientID", "id")):
                    if kw in ds:
                        setattr(ds, kw, site_hash(kind, str(ds.get(kw, ""))))
        uids = {str(ds.StudyInstanceUID) for _, ds, _ in datasets}
        if len(uids) != 1:
            raise _Reply(400, "Upload included files for multiple imaging sessions.")
        uid = uids.pop()
        first = datasets[0][1]
        # No subject/session given: XNAT's default identifier (ClassicDicomObjectIdentifier) files the
        # subject by PatientName and the session by PatientID (TestImport.testDataProject expects the
        # zip's patient name and ID as subject and session).
        subject_label = clean_value(subject_label or str(first.get("PatientName", "")) or "")
        label = clean_value(label or str(first.get("PatientID", "")) or uid)
        if not subject_label:
            raise _Reply(400, "Unable to identify subject.")
        xsi = _session_type({str(ds.get("Modality", "OT")) for _, ds, _ in datasets})
        if not to_archive:
            # GUESS: a prearchive session URI with a fresh timestamp; nothing is archived.
            stamp = time.strftime("%Y%m%d_%H%M%S") + "000"
            with emu.lock:
                emu.prearchive.append({"project": pid, "timestamp": stamp, "name": label, "folderName": label,
                                       "subject": subject_label, "status": "READY", "tag": uid,
                                       "url": f"/prearchive/projects/{pid}/{stamp}/{label}"})
            raise _Reply(200, f"/data/prearchive/projects/{pid}/{stamp}/{label}\r\n", "text/uri-list")
        with emu.lock:
            try:
                uri = self._archive(pid, subject_label, label, uid, xsi, datasets, user, allow_merge, override,
                                    overwrite_files)
            except _Conflict as c:
                stamp = time.strftime("%Y%m%d_%H%M%S") + "000"
                emu.prearchive.append({"project": pid, "timestamp": stamp, "name": label, "folderName": label,
                                       "subject": subject_label, "status": "CONFLICT", "tag": uid,
                                       "url": f"/prearchive/projects/{pid}/{stamp}/{label}"})
                raise _Reply(conflict_status, str(c)) from None
        raise _Reply(200, uri + "\r\n", "text/uri-list")

    def _archive(self, pid: str, subject_label: str, label: str, uid: str, xsi: str,
                 datasets: list[tuple[str, pydicom.Dataset, int]], user: str, allow_merge: bool, override: bool,
                 overwrite_files: bool) -> str:
        """PrearcSessionArchiver.call: find the existing session, check conflicts, merge or create."""
        emu = self.emu
        subj = emu._subject(pid, subject_label, create=False)
        existing = emu._experiment(pid, label)
        if existing is not None:
            if not allow_merge:
                raise _Conflict(PRE_EXISTS)
            if emu.prevent_cross_modality_merge and existing.xsi_type != xsi:
                raise _Conflict(MODALITY_MOD)
            if subj is None or existing.subject_id != subj["ID"]:
                raise _Conflict(f"{SUBJECT_MOD}: {existing.label} Already Exists for another Subject")
            if not override and existing.uid and uid and existing.uid != uid:
                raise _Conflict(UID_MOD)
            if not overwrite_files:
                held = {sop for s in existing.scans.values() for sop in s.sop_uids}
                if any(str(ds.SOPInstanceUID) in held for _, ds, _ in datasets):
                    raise _Conflict(MATCHING_FILES)
            e = existing
        else:
            subj = subj or emu._subject(pid, subject_label, create=True)
            e = emu._new_experiment(pid, subj["ID"], label, xsi, user)
            first = datasets[0][1]
            e.uid = uid
            e.date = _iso_date(str(first.get("StudyDate", "")))
            e.modality = _modality_of(xsi)
            e.scanner = str(first.get("StationName", "") or first.get("ManufacturerModelName", ""))
            e.accession = str(first.get("AccessionNumber", ""))
            e.session_type = str(first.get("StudyDescription", ""))
        for name, ds, size in datasets:
            modality = str(ds.get("Modality", "OT"))
            scan = emu._scan_for(e, str(ds.SeriesInstanceUID), str(ds.get("SeriesNumber", "") or ""), modality,
                                 str(ds.get("SeriesDescription", "")))
            sop = str(ds.SOPInstanceUID)
            for old, f in list(scan.files.items()):
                if f["sop"] == sop:
                    del scan.files[old]  # overwritten
            fname = name
            if fname in scan.files:  # GUESS: a different instance under a name already taken
                fname = f"{sop}.dcm"
            scan.files[fname] = {"sop": sop, "size": size}
        subject = emu.subjects[e.subject_id]["label"]
        return f"/data/archive/projects/{pid}/subjects/{subject}/experiments/{e.label}"

    # -- DQR plugin -----------------------------------------------------------------------------
    def _dqr_misbehave(self) -> None:
        emu = self.emu
        with emu.lock:
            if emu.dqr_problem_answers > 0:
                emu.dqr_problem_answers -= 1
                raise _Reply(200, f"{PROBLEM_TEXT}. Please contact your administrator.", "text/plain")
            if emu.dqr_non_json_answers > 0:
                emu.dqr_non_json_answers -= 1
                raise _Reply(200, "<html><body>Proxy error</body></html>", "text/html")

    def _dqr_project_enabled(self, pid: str | None) -> bool:
        emu = self.emu
        return emu.dqr_allow_all_projects or (pid is not None and pid in emu.dqr_enabled_projects)

    def _dqr(self, method: str, path: str, user: str, q: dict) -> None:
        emu = self.emu
        m = re.fullmatch(r"/xapi/dqr/settings/project/([^/]+)/enabled", path)
        if m and method == "GET":
            with emu.lock:
                if m.group(1) not in emu.projects:
                    raise _Reply(404, f"project {m.group(1)} not found")
                raise _Reply(200, self._dqr_project_enabled(m.group(1)))
        if path == "/xapi/dqr/query/batch" and method == "POST":
            self._dqr_misbehave()
            return self._dqr_batch_query(q)
        if path == "/xapi/dqr/import" and method == "POST":
            self._dqr_misbehave()
            return self._dqr_import(user)
        for table, name in (("queue", "dqr_queue"), ("history", "dqr_history")):
            base = f"/xapi/dqr/import/{table}"
            if method != "GET":
                continue
            if path == base or path == base + "/count":
                with emu.lock:
                    rows = [self._public(r) for r in getattr(emu, name).values()
                            if q.get("all", "false") == "true" or r.get("username") == user]
                if path.endswith("/count"):
                    raise _Reply(200, len(rows))
                rows.sort(key=lambda r: r["id"], reverse=q.get("sort", "desc").lower() != "asc")
                page, size = int(q.get("page", 1)), int(q.get("pageSize", 100))
                raise _Reply(200, rows[(page - 1) * size: page * size])
            m = re.fullmatch(base + r"/(\d+)", path)
            if m:
                with emu.lock:
                    entry = getattr(emu, name).get(int(m.group(1)))
                if entry is None:
                    kind = "queued" if table == "queue" else "executed"
                    raise _Reply(404, f"No {kind} PACS request with ID {m.group(1)} found")
                raise _Reply(200, self._public(entry))
        raise _Reply(404, "no such DQR endpoint")

    @staticmethod
    def _public(entry: dict) -> dict:
        return {k: v for k, v in entry.items() if not k.startswith("_")}

    def _dqr_batch_query(self, q: dict) -> None:
        emu = self.emu
        fields = self._multipart()
        if "csv_to_store" not in fields:
            raise _Reply(400, "Required request part 'csv_to_store' is not present")
        pacs = (fields.get("pacsId", b"").decode() or q.get("pacsId", "")).strip()
        if not pacs:
            raise _Reply(400, "Required Long parameter 'pacsId' is not present")
        if int(pacs) not in emu.dqr_pacs_ids:
            raise _Reply(404, f"No PACS with ID {pacs} is configured on this system.")  # GUESS: the status
        text = fields["csv_to_store"].decode("utf-8-sig")
        rows = [r for r in csv.reader(io.StringIO(text)) if r]
        if not rows:
            raise _Reply(200, [])
        headers, data = rows[0], rows[1:]
        if len(data) > 1000:
            raise _Reply(400, f"The CSV has {len(data)} rows; at most 1000 are allowed")  # GUESS: the answer
        with emu.lock:
            emu.dqr_query_calls.append(len(data))
        relabel_cols = [h for h in headers if h in ("Subject", "Session") or h.startswith("Relabel ")]
        out = []
        for row in data:
            def col(name: str) -> str:
                i = headers.index(name) if name in headers else -1
                return row[i].strip() if 0 <= i < len(row) else ""

            crit: dict = {"pacsId": int(pacs)}
            for header, key in (("Study Instance UID", "studyInstanceUid"), ("Accession Number", "accessionNumber"),
                                ("Patient ID", "patientId"), ("DOB", "dob"), ("Modality", "modality")):
                if col(header):
                    crit[key] = col(header)
            name = ",".join(x for x in (col("Last Name"), col("First Name")) if x)
            if name:
                crit["patientName"] = name
            if col("Study Date"):
                start, _, end = col("Study Date").partition("-")
                if "-" not in col("Study Date"):
                    end = start
                if start or end:
                    crit["studyDateRange"] = {"start": start, "end": end}
            if len(crit) == 1:
                continue  # no search criteria: the plugin drops the row (returns null, filtered out)
            relabel = {h: col(h) for h in relabel_cols if col(h)}
            with emu.lock:
                hits = [self._public(s) for s in emu.dqr_pacs.values() if _matches(s, crit)]
            out.append({"criteria": crit, "relabelMap": relabel, "studies": hits})
        headers_out = {} if any(r["relabelMap"] for r in out) else {"Warning": "The generated JSON has no anon script."}
        raise _Reply(200, out, headers=headers_out)

    def _dqr_import(self, user: str) -> None:
        emu = self.emu
        try:
            req = json.loads(self._body() or b"{}")
        except json.JSONDecodeError:
            raise _Reply(400, "request body is not JSON") from None
        pid = req.get("projectId")
        with emu.lock:
            if not self._dqr_project_enabled(pid) or not self._can_edit(user, pid or ""):
                raise _Reply(403, f"User {user} has insufficient privileges for project {pid}")
            if int(req.get("pacsId") or 0) not in emu.dqr_pacs_ids:
                raise _Reply(404, f"No PACS with ID {req.get('pacsId')} is configured on this system.")
            studies = req.get("studies") or []
            ae, port = str(req.get("aeTitle") or ""), int(req.get("port") or 0)
            receiver = emu.dqr_receivers.get((ae, port))
            wants_relabel = any((s.get("relabelMap") or s.get("anonScript")) for s in studies)
            if wants_relabel and not req.get("forceImport"):
                # validateDicomScpInstance. GUESS: 400 for an unknown or unsuited receiver.
                if receiver is None or not receiver.get("enabled"):
                    raise _Reply(400, f"Unknown DICOM SCP instance {ae}:{port}")
                if not receiver.get("custom_processing"):
                    raise _Reply(400, f"The DICOM receiver {ae}:{port} does not have custom processing enabled")
            relabelled = bool(receiver and receiver.get("enabled") and receiver.get("custom_processing"))
            emu.dqr_import_calls.append([s.get("studyInstanceUid") for s in studies])
            out = []
            multi = len(studies) > 1
            for s in studies:
                uid = s.get("studyInstanceUid", "")
                src = emu.dqr_pacs.get(uid)
                if src is None or not src["_series"]:
                    continue  # queueStudyImport: no series found → nothing queued, nothing said
                relabel = {k: v for k, v in (s.get("relabelMap") or {}).items() if v}
                qid = emu._next_queue_id
                emu._next_queue_id += 1
                entry = {
                    "id": qid, "created": _ms(), "timestamp": _ms(), "enabled": True, "disabled": 0,
                    "username": user, "userDefinedId": req.get("requestId"), "pacsId": int(req["pacsId"]),
                    "xnatProject": pid, "studyInstanceUid": uid,
                    "seriesIds": [x["seriesInstanceUid"] for x in src["_series"]],
                    "remappingScript": _relabel_script(relabel) if relabel else None,
                    "destinationAeTitle": f"{ae}:{port}" if port else ae, "status": "QUEUED",
                    "priority": 10 if multi else 1, "queuedTime": _ms(), "studyDate": src.get("studyDate"),
                    "studyId": src.get("studyId"), "accessionNumber": src.get("accessionNumber"),
                    "patientId": src["patient"]["id"], "patientName": src["patient"]["name"],
                    "_due": emu.clock() + emu.dqr_dequeue_delay, "_attempts": 0, "_relabel": relabel,
                    "_relabelled": relabelled,
                }
                emu.dqr_queue[qid] = entry
                out.append(self._public(entry))
        raise _Reply(200, out)

    def _multipart(self) -> dict[str, bytes]:
        ctype = self.headers.get("Content-Type") or ""
        body = self._body()
        if "multipart/form-data" not in ctype:
            raise _Reply(400, "Current request is not a multipart request")
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {ctype}\r\n\r\n".encode() + body)
        out: dict[str, bytes] = {}
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if name:
                out[name] = part.get_payload(decode=True) or b""
        return out


def _matches(study: dict, crit: dict) -> bool:
    """A study-level C-FIND with every given criterion (exact values; a date range inclusive)."""
    if "studyInstanceUid" in crit and study["studyInstanceUid"] != crit["studyInstanceUid"]:
        return False
    if "accessionNumber" in crit and study.get("accessionNumber") != crit["accessionNumber"]:
        return False
    if "patientId" in crit and study["patient"]["id"] != crit["patientId"]:
        return False
    if "modality" in crit and crit["modality"] not in (study.get("modalitiesInStudy") or []):
        return False
    rng = crit.get("studyDateRange")
    if rng:
        d = study.get("studyDate", "")
        if (rng.get("start") and d < rng["start"]) or (rng.get("end") and d > rng["end"]):
            return False
    return True


_RELABEL_TAGS = {"Subject": ("(0010,0010)", "(0010,0020)"), "Session": ("(0020,0010)", "(0008,0050)"),
                 "Relabel Accession Number": ("(0008,0050)",), "Relabel Study Date": ("(0008,0020)",),
                 "Relabel Study ID": ("(0020,0010)",), "Relabel Patient ID": ("(0010,0020)",),
                 "Relabel Patient Name": ("(0010,0010)",), "Relabel Patient Birth Date": ("(0010,0030)",)}


def _relabel_script(relabel: dict) -> str:
    """The DicomEdit script BasicDicomQueryRetrieveService.getAnonScript builds from a relabelMap."""
    lines = ['version "6.1"']
    for key, value in relabel.items():
        for tag in _RELABEL_TAGS.get(key, ()):
            lines.append(f'{tag} := "{value}"')
    return "\n".join(lines)


def login_session(emu: "XnatEmulator", user: str = "admin", pw: str = "pw"):
    """A requests session logged in to the emulator the way xnatpy does (`PUT /data/services/auth`,
    the answer is the JSESSIONID), for the contract tests that speak REST directly."""
    import requests

    s = requests.Session()
    r = s.put(emu.url + "/data/services/auth", data={"username": user, "password": pw})
    assert r.status_code == 200, r.status_code
    s.cookies.set("JSESSIONID", r.text.strip())
    return s
