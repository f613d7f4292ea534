"""A small stateful XNAT REST emulator for tests: exactly the calls the real `xnat` client
(xnatpy 0.8.1) and rtlake's stores make, on a free localhost port.

No XNAT server can be installed on the test machines, so the stores are tested by running the
real client against this. It follows XNAT's documented REST protocol where there is
documentation, and xnatpy's own source where the client is the only specification. Every
place where the emulator has to guess how a real server answers is marked `GUESS:`.

Sources, per endpoint (see /work/shared/notes/xnat.md for the extracted facts):
  * login/logout  `PUT /data/services/auth`, `GET|DELETE /data/JSESSION`, `GET /data/auth`
      - XNAT wiki "XNAT REST API: Authentication" (wiki.xnat.org/xnat-api/authentication-api)
      - xnatpy `__init__.py` (`_create_jsession`, `check_auth`, `_wipe_jsession`)
  * version       `GET /xapi/siteConfig/buildInfo` (XNAT 1.7+ site config API; `/data/version` is 404
                  on 1.7+, which is what makes xnatpy fall back to it)
  * schemas       `GET /xapi/schemas`, `/xapi/schemas/{name}` (XNAT 1.7+ schema API); the bodies are
                  the real xnat.xsd/xdat.xsd vendored from xnatpy's sdist (tests/servers/xnat_schemas)
  * search elements `GET /data/search/elements[/{type}]` (xnatpy `inspect.py`)
  * listings      `/data/[archive/]projects`, `.../subjects`, `.../experiments`, `/data/experiments`
      - XNAT wiki "Project API", "Subject API", "Experiment API": ResultSet JSON, `format=csv`,
        `columns=`, shortcuts (`UID`, `modality`, `scanner`, `subject_label`, `insert_user`), `xsiType=`
  * single objects `GET {uri}?format=json` (items/meta/data_fields/children, as xnatpy parses it)
  * create        `PUT /data/projects/{P}`, `PUT .../subjects/{S}`, `PUT .../experiments/{E}` with
                  `req_format=qs` (XNAT wiki "Subject API"/"Experiment API": 201 + new ID)
  * import        `POST /data/services/import` (XNAT wiki "Image Session Import Service API"):
                  raw zip body, `project`, `subject`, `session`, `overwrite=none|append|delete`,
                  `dest=/archive`; answers 200 with the archived session URI
  * DQR           `/xapi/dqr/query/batch`, `/xapi/dqr/import`, `/xapi/dqr/import/history/{id}`
                  GUESS: the DICOM query-retrieve plugin's API is only known from third-party client
                  code (notes/xnat.md §7), not from its source or documentation.

Fault injection (for the "bad input" tests): `add_fault` answers matching requests with a
status/body (or delays them) a number of times; `expire_sessions` invalidates every JSESSION
(as a server-side session timeout does); `forbidden_projects` answers 403 to writes; the DQR
side has failing studies, "There was a problem" answers and non-JSON answers.
"""

from __future__ import annotations

import csv
import email.parser
import email.policy
import fnmatch
import io
import json
import re
import secrets
import threading
import time
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import pydicom

SCHEMA_DIR = Path(__file__).parent / "xnat_schemas"

#: Session and scan data types by DICOM modality (xnat.xsd names them; the choice of type from
#: the modality mirrors XNAT's DICOM importer: a PET-CT study is a PET session).
SESSION_TYPES = {
    "PT": "xnat:petSessionData", "MR": "xnat:mrSessionData", "CT": "xnat:ctSessionData",
    "CR": "xnat:crSessionData", "DX": "xnat:dxSessionData", "RF": "xnat:rfSessionData",
    "SR": "xnat:srSessionData", "XA": "xnat:xaSessionData", "NM": "xnat:nmSessionData",
    "US": "xnat:usSessionData", "MG": "xnat:mgSessionData",
}
_SESSION_PRIORITY = ("PT", "MR", "CT", "NM", "XA", "RF", "DX", "CR", "MG", "US", "SR")
SCAN_TYPES = {
    "PT": "xnat:petScanData", "MR": "xnat:mrScanData", "CT": "xnat:ctScanData", "CR": "xnat:crScanData",
    "DX": "xnat:dxScanData", "RF": "xnat:rfScanData", "SR": "xnat:srScanData", "XA": "xnat:xaScanData",
    "NM": "xnat:nmScanData", "US": "xnat:usScanData", "MG": "xnat:mgScanData",
}
OTHER_SESSION = "xnat:otherDicomSessionData"
OTHER_SCAN = "xnat:otherDicomScanData"

PROBLEM_TEXT = "There was a problem processing your request"


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
    sop_uids: set[str] = field(default_factory=set)


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

    def __init__(self, users: dict[str, str] | None = None, version: str = "1.8.10") -> None:
        self.users = dict(users or {"rtlake": "secret"})
        self.version = version
        self.lock = threading.RLock()
        self.projects: dict[str, dict] = {}
        self.subjects: dict[str, dict] = {}  # ID -> {ID, label, project}
        self.experiments: dict[str, Experiment] = {}
        self.sessions: dict[str, str] = {}  # JSESSIONID -> user
        self.faults: list[Fault] = []
        self.forbidden_projects: set[str] = set()
        self.prearchive_projects: set[str] = set()  # imports into these stop in the prearchive
        self.admin_users: set[str] = set(self.users)  # may create projects
        self.log: list[tuple[str, str, dict]] = []  # (method, path, query) of every request
        self._next_subject = 0
        self._next_experiment = 0
        # --- DQR side: the PACS XNAT pulls from, and how the plugin misbehaves -------------
        self.dqr_pacs: dict[str, dict] = {}  # studyInstanceUid -> study object (plugin's JSON shape)
        self.dqr_fail_uids: set[str] = set()  # studies whose import ends FAILED
        self.dqr_stuck_uids: set[str] = set()  # studies whose queue entry never leaves QUEUED
        self.dqr_problem_answers = 0  # next N DQR POSTs answer 200 "There was a problem..."
        self.dqr_non_json_answers = 0  # next N DQR POSTs answer 200 with an HTML page
        self.dqr_history: dict[int, dict] = {}
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
    def add_project(self, pid: str, name: str | None = None) -> None:
        with self.lock:
            self.projects.setdefault(pid, {"ID": pid, "name": name or pid, "secondary_ID": pid})

    def add_fault(self, method: str, path: str, status: int | None = 500, body: str = "Internal Server Error",
                  times: int = 1, delay: float = 0.0, after: bool = False, content_type: str = "text/plain") -> Fault:
        f = Fault(method.upper(), path, status, body, times, delay, after, content_type)
        with self.lock:
            self.faults.append(f)
        return f

    def add_pacs_study(self, uid: str, accession: str, patient_id: str, study_date: str = "20230517",
                       description: str = "CT HEAD", modalities: tuple[str, ...] = ("CT",), study_id: str = "1",
                       sex: str = "F") -> None:
        """Put a study on the PACS the DQR plugin queries (the plugin's study JSON shape)."""
        with self.lock:
            self.dqr_pacs[uid] = {
                "studyInstanceUid": uid, "studyId": study_id, "accessionNumber": accession,
                "studyDate": study_date, "studyDescription": description, "modalitiesInStudy": list(modalities),
                "referringPhysicianName": "", "patient": {"id": patient_id, "name": "SYNTH^DQR", "sex": sex},
            }

    def expire_sessions(self) -> None:
        """Forget every JSESSION, as XNAT does when a session times out."""
        with self.lock:
            self.sessions.clear()

    def count(self, method: str, path_regex: str) -> int:
        with self.lock:
            return sum(1 for m, p, _ in self.log if m == method and re.search(path_regex, p))

    def subject_label(self, sid: str) -> str:
        return self.subjects[sid]["label"]

    def find_experiment(self, project: str, label: str) -> Experiment | None:
        with self.lock:
            for e in self.experiments.values():
                if e.project == project and e.label == label:
                    return e
        return None

    # -- state changes (under lock) -------------------------------------------------------
    def _subject(self, project: str, key: str, create: bool) -> dict | None:
        for s in self.subjects.values():
            if s["project"] == project and key in (s["ID"], s["label"]):
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


def _session_type(modalities: set[str]) -> str:
    for m in _SESSION_PRIORITY:
        if m in modalities:
            return SESSION_TYPES[m]
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


class _Handler(BaseHTTPRequestHandler):
    emu: XnatEmulator
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, a keep-alive client waits ~40 ms
    # (delayed ACK) on every answer.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    # Every verb goes through one dispatcher.
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
        if isinstance(body, (dict, list)):
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

    def _user(self) -> str | None:
        cookie = self.headers.get("Cookie") or ""
        m = re.search(r"JSESSIONID=([^;\s]+)", cookie)
        with self.emu.lock:
            if m and m.group(1) in self.emu.sessions:
                return self.emu.sessions[m.group(1)]
        auth = self.headers.get("Authorization") or ""
        if auth.startswith("Basic "):
            import base64

            user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
            if self.emu.users.get(user) == pw:
                return user
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
            # XNAT answers an unauthenticated REST call with 401 and its login page.
            raise _Reply(401, "<html><body><h3>Login attempt failed. Please try again.</h3></body></html>",
                         "text/html")
        if path == "/data/JSESSION" and method == "GET":
            m = re.search(r"JSESSIONID=([^;\s]+)", self.headers.get("Cookie") or "")
            raise _Reply(200, m.group(1) if m else "")
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
            rows = [{"ELEMENT_NAME": t, "PLURAL": t, "SINGULAR": t, "IS_EXPERIMENT": "true"}
                    for t in sorted(set(SESSION_TYPES.values()))]
            rows.append({"ELEMENT_NAME": "xnat:subjectData", "IS_EXPERIMENT": "false"})
            raise _Reply(200, _result_set(rows))
        if path.startswith("/data/search/elements/"):
            # GUESS: a short field list; xnatpy only turns FIELD_IDs into search attributes.
            raise _Reply(200, _result_set([{"FIELD_ID": f, "HEADER": f, "SUMMARY": f, "TYPE": "string"}
                                           for f in ("LABEL", "DATE", "UID")]))
        if path == "/data/services/import" and method == "POST":
            return self._import(user, q)
        if path.startswith("/xapi/dqr/"):
            return self._dqr(method, path, user)
        if path == "/data/experiments" and method == "GET":
            return self._experiments_listing(q, project=None)

        # Archive paths: /data/archive/... is the same as /data/...
        if path.startswith("/data/archive/"):
            path = "/data/" + path[len("/data/archive/"):]
        parts = path.split("/")[2:]  # after /data
        if parts == ["projects"] and method == "GET":
            with emu.lock:
                rows = [{"ID": p["ID"], "name": p["name"], "secondary_ID": p["secondary_ID"],
                         "URI": f"/data/projects/{p['ID']}"} for p in emu.projects.values()]
            raise _Reply(200, self._listing(rows, q))
        if parts and parts[0] == "projects" and len(parts) >= 2:
            return self._project_path(method, parts[1], parts[2:], q, user)
        if parts and parts[0] == "experiments" and len(parts) >= 2:
            with emu.lock:
                e = emu.experiments.get(parts[1])
            if e is None:
                raise _Reply(404, f"experiment {parts[1]} not found")
            return self._experiment_path(method, e, parts[2:], q)
        raise _Reply(404, f"emulator: no route for {method} {path}")

    # -- login ------------------------------------------------------------------------------
    def _login(self) -> None:
        form = {k: v[-1] for k, v in parse_qs(self._body().decode()).items()}
        user, pw = form.get("username"), form.get("password")
        if user is None or self.emu.users.get(user) != pw:
            raise _Reply(401, "<html><body><h3>Login attempt failed. Please try again.</h3></body></html>",
                         "text/html")
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
        """Apply `columns=` and shortcut filters (with wildcards), then format as asked."""
        fmt = q.get("format", "json")
        filters = {k: v for k, v in q.items()
                   if k not in ("format", "columns", "limit", "offset", "xsiType", "req_format", "sortBy")}
        out = []
        for r in rows:
            ok = True
            for k, pattern in filters.items():
                if k in r and not fnmatch.fnmatchcase(str(r[k]), pattern):
                    ok = False
            if ok:
                out.append(r)
        if "columns" in q:
            cols = [c for c in q["columns"].split(",") if c]
            keep = list(dict.fromkeys(["ID", "URI", *cols]))
            out = [{c: r.get(c, "") for c in keep} for r in out]
        if fmt == "csv":
            buf = io.StringIO()
            keys = list(out[0].keys()) if out else (["ID", "URI"] + q.get("columns", "").split(","))
            w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
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
            # GUESS: asking for a scan xpath column (`xnat:ctSessionData/scans/scan/ID`) returns one row per
            # scan, as XNAT's search joins child rows; sessions without scans keep one row with blanks.
            scans = list(e.scans.values()) or [None]
            for s in scans:
                r = dict(base)
                for kind in ("ID", "type", "UID"):
                    val = "" if s is None else {"ID": s.id, "type": s.description, "UID": s.series_uid}[kind]
                    r[f"{e.xsi_type}/scans/scan/{kind}"] = val
                    r[f"xnat:imageSessionData/scans/scan/{kind}"] = val
                rows.append(r)
        return rows

    def _experiments_listing(self, q: dict, project: str | None, subject: dict | None = None) -> None:
        emu = self.emu
        with emu.lock:
            es = [e for e in emu.experiments.values()
                  if (project is None or e.project == project)
                  and (subject is None or e.subject_id == subject["ID"])]
            if "xsiType" in q:
                es = [e for e in es if fnmatch.fnmatchcase(e.xsi_type, q["xsiType"])]
            if "label" in q:  # filter before building rows, as a database would (applied again in _listing)
                es = [e for e in es if fnmatch.fnmatchcase(e.label, q["label"])]
            with_scans = "/scans/scan/" in q.get("columns", "")
            rows = self._experiment_rows(es, with_scans)
        raise _Reply(200, self._listing(rows, q))

    # -- project / subject / experiment paths -------------------------------------------------
    def _project_path(self, method: str, pid: str, rest: list[str], q: dict, user: str) -> None:
        emu = self.emu
        with emu.lock:
            project = emu.projects.get(pid)
        if not rest:
            if method == "PUT":
                # XNAT wiki Project API: PUT /data/projects/{ID} creates it (201); GUESS: 403 for non-admins.
                if user not in emu.admin_users:
                    raise _Reply(403, "insufficient privileges to create projects")
                if project is None:
                    emu.add_project(pid, q.get("xnat:projectData/name"))
                    raise _Reply(201, pid)
                raise _Reply(200, pid)
            if project is None:
                raise _Reply(404, f"project {pid} not found")
            if method == "GET":
                raise _Reply(200, {"items": [{"meta": {"xsi:type": "xnat:projectData", "isHistory": False},
                                              "data_fields": dict(project), "children": []}]})
            raise _Reply(405, "method not allowed")
        if project is None:
            raise _Reply(404, f"project {pid} not found")
        if method in ("PUT", "POST", "DELETE") and pid in emu.forbidden_projects:
            raise _Reply(403, f"user {user} cannot write to project {pid}")
        if rest == ["subjects"] and method == "GET":
            with emu.lock:
                rows = [{"ID": s["ID"], "label": s["label"], "project": s["project"],
                         "URI": f"/data/subjects/{s['ID']}"} for s in emu.subjects.values() if s["project"] == pid]
            raise _Reply(200, self._listing(rows, q))
        if rest == ["experiments"] and method == "GET":
            return self._experiments_listing(q, project=pid)
        if rest[0] == "experiments" and len(rest) >= 2:
            with emu.lock:
                e = emu._experiment(pid, rest[1])
            if e is None:
                raise _Reply(404, f"experiment {rest[1]} not found in {pid}")
            return self._experiment_path(method, e, rest[2:], q)
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
            return self._experiments_listing(q, project=pid, subject=subj)
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
            return self._experiment_path(method, e, rest[2:], q)
        raise _Reply(404, "no such resource")

    def _experiment_path(self, method: str, e: Experiment, rest: list[str], q: dict) -> None:
        emu = self.emu
        if not rest and method == "GET":
            with emu.lock:
                fields = {"ID": e.id, "label": e.label, "project": e.project, "subject_ID": e.subject_id,
                          "date": e.date, "UID": e.uid, "modality": e.modality, "scanner": e.scanner,
                          "dcmAccessionNumber": e.accession}
                children = [{"field": "scans/scan", "items": [
                    {"meta": {"xsi:type": SCAN_TYPES.get(s.modality, OTHER_SCAN), "isHistory": False},
                     "data_fields": {"ID": s.id, "type": s.description, "UID": s.series_uid,
                                     "series_description": s.description, "modality": s.modality,
                                     "image_session_ID": e.id, "frames": len(s.sop_uids)},
                     "children": []} for s in e.scans.values()]}] if e.scans else []
            raise _Reply(200, {"items": [{"meta": {"xsi:type": e.xsi_type, "isHistory": False},
                                          "data_fields": {k: v for k, v in fields.items() if v != ""},
                                          "children": children}]})
        if not rest and method == "PUT":
            raise _Reply(200, e.id)
        if not rest and method == "DELETE":
            if e.project in emu.forbidden_projects:
                raise _Reply(403, "forbidden")
            with emu.lock:
                emu.experiments.pop(e.id, None)
            raise _Reply(200, "")
        if rest == ["scans"] and method == "GET":
            with emu.lock:
                rows = [{"ID": s.id, "type": s.description, "UID": s.series_uid, "xsiType":
                         SCAN_TYPES.get(s.modality, OTHER_SCAN), "series_description": s.description,
                         "URI": f"/data/experiments/{e.id}/scans/{s.id}"} for s in e.scans.values()]
            raise _Reply(200, self._listing(rows, q))
        raise _Reply(404, "no such resource")

    # -- import service -----------------------------------------------------------------------
    def _import(self, user: str, q: dict) -> None:
        """XNAT wiki "Image Session Import Service API": zip body, archived under project/subject/session."""
        emu = self.emu
        body = self._body()
        pid, subject_label, label = q.get("project"), q.get("subject"), q.get("session")
        overwrite = q.get("overwrite", "none")
        if not pid:
            raise _Reply(400, "import: the project parameter is required")
        with emu.lock:
            if pid not in emu.projects:
                # GUESS: XNAT answers an unknown destination project with 404 and a short message.
                raise _Reply(404, f"import: project {pid} does not exist")
            if pid in emu.forbidden_projects:
                raise _Reply(403, f"import: user {user} cannot write to project {pid}")
        try:
            zf = zipfile.ZipFile(io.BytesIO(body))
        except zipfile.BadZipFile:
            raise _Reply(400, "import: the upload is not a zip archive") from None
        datasets = []
        for name in zf.namelist():
            if name.endswith("/"):
                continue
            try:
                datasets.append(pydicom.dcmread(io.BytesIO(zf.read(name)), stop_before_pixels=True))
            except Exception:  # noqa: BLE001 - XNAT skips files it cannot parse
                continue
        if not datasets:
            raise _Reply(400, "import: no DICOM files in the upload")
        uids = {str(ds.StudyInstanceUID) for ds in datasets}
        if len(uids) != 1:
            # GUESS: real XNAT would file separate sessions; a label can only name one study, so refuse.
            raise _Reply(400, f"import: upload holds {len(uids)} studies; session label {label} needs exactly one")
        uid = uids.pop()
        first = datasets[0]
        if pid in emu.prearchive_projects:
            # XNAT wiki (import service): when the project does not auto-archive, the session is
            # left in the prearchive and its prearchive URI is returned. GUESS: nothing is archived.
            raise _Reply(200, f"/data/prearchive/projects/{pid}/20240101_120000000/{label or uid}\r\n")
        subject_label = subject_label or str(first.get("PatientID", ""))
        label = label or str(first.get("AccessionNumber", "")) or uid
        modalities = {str(ds.get("Modality", "OT")) for ds in datasets}
        with emu.lock:
            subj = emu._subject(pid, subject_label, create=True)
            e = emu._experiment(pid, label)
            if e is not None:
                if e.uid and e.uid != uid and overwrite != "delete":
                    raise _Reply(409, f"import: session {label} in {pid} holds another study ({e.uid})")
                if overwrite == "none":
                    # GUESS: XNAT refuses to merge into an archived session unless overwrite is append/delete.
                    raise _Reply(409, f"import: session {label} already exists in {pid}; use overwrite=append")
                if overwrite == "delete":
                    emu.experiments.pop(e.id)
                    e = None
            if e is None:
                e = emu._new_experiment(pid, subj["ID"], label, _session_type(modalities), user)
            e.uid = uid
            da = str(first.get("StudyDate", ""))
            e.date = f"{da[:4]}-{da[4:6]}-{da[6:8]}" if len(da) == 8 else ""
            e.modality = _session_type(modalities).split(":")[1].replace("SessionData", "").upper()
            e.scanner = str(first.get("StationName", "") or first.get("ManufacturerModelName", ""))
            e.accession = str(first.get("AccessionNumber", ""))
            e.session_type = str(first.get("StudyDescription", ""))
            for ds in datasets:
                series = str(ds.SeriesInstanceUID)
                scan = next((s for s in e.scans.values() if s.series_uid == series), None)
                if scan is None:
                    sid = str(ds.get("SeriesNumber", "") or len(e.scans) + 1)
                    while sid in e.scans:
                        sid = f"{sid}-{len(e.scans) + 1}"
                    scan = Scan(sid, series, str(ds.get("Modality", "OT")), str(ds.get("SeriesDescription", "")))
                    e.scans[sid] = scan
                scan.sop_uids.add(str(ds.SOPInstanceUID))
            uri = f"/data/archive/projects/{pid}/subjects/{subj['label']}/experiments/{e.label}"
        raise _Reply(200, uri + "\r\n")

    # -- DQR plugin (GUESS throughout: shapes from third-party client code, notes/xnat.md §7) -----
    def _dqr_misbehave(self) -> None:
        emu = self.emu
        with emu.lock:
            if emu.dqr_problem_answers > 0:
                emu.dqr_problem_answers -= 1
                raise _Reply(200, f"{PROBLEM_TEXT}. Please contact your administrator.", "text/plain")
            if emu.dqr_non_json_answers > 0:
                emu.dqr_non_json_answers -= 1
                raise _Reply(200, "<html><body>Proxy error</body></html>", "text/html")

    def _dqr(self, method: str, path: str, user: str) -> None:
        emu = self.emu
        if path == "/xapi/dqr/query/batch" and method == "POST":
            self._dqr_misbehave()
            fields = self._multipart()
            csv_text = fields.get("file", b"").decode("utf-8-sig")
            rows = list(csv.DictReader(io.StringIO(csv_text)))
            with emu.lock:
                emu.dqr_query_calls.append(len(rows))
            out = []
            for row in rows:
                acc = (row.get("accessionNumber") or row.get("AccessionNumber") or "").strip()
                pat = (row.get("patientId") or row.get("PatientID") or "").strip()
                with emu.lock:
                    hits = [dict(s) for s in emu.dqr_pacs.values()
                            if (acc and s.get("accessionNumber") == acc)
                            or (not acc and pat and s.get("patient", {}).get("id") == pat)]
                crit = {"pacsId": int(fields.get("pacsId", b"1") or 1)}
                crit.update({"accessionNumber": acc} if acc else {"patientId": pat})
                out.append({"criteria": crit,
                            "relabelMap": {"Subject": row.get("Subject", ""), "Session": row.get("Session", "")},
                            "studies": hits})
            raise _Reply(200, out)
        if path == "/xapi/dqr/import" and method == "POST":
            self._dqr_misbehave()
            try:
                req = json.loads(self._body() or b"{}")
            except json.JSONDecodeError:
                raise _Reply(400, "request body is not JSON") from None
            pid = req.get("projectId")
            with emu.lock:
                if pid not in emu.projects:
                    raise _Reply(404, f"project {pid} not found")
                emu.dqr_import_calls.append([s.get("studyInstanceUid") for s in req.get("studies", [])])
                out = []
                for s in req.get("studies", []):
                    qid = len(emu.dqr_history) + 1
                    uid = s.get("studyInstanceUid", "")
                    relabel = s.get("relabelMap") or {}
                    status = "FAILED" if (uid in emu.dqr_fail_uids or uid not in emu.dqr_pacs) else "RECEIVED"
                    if uid in emu.dqr_stuck_uids:
                        status = "QUEUED"
                    entry = {"id": qid, "pacsId": req.get("pacsId"), "status": "QUEUED",
                             "accessionNumber": s.get("accessionNumber", ""), "studyInstanceUid": uid,
                             "queuedTime": int(time.time() * 1000), "created": int(time.time() * 1000),
                             "priority": 0, "xnatProject": pid, "subject": relabel.get("Subject", ""),
                             "session": relabel.get("Session", "")}
                    out.append(dict(entry))
                    # The emulator's "PACS transfer" happens at once: the history holds the final status.
                    entry["status"] = status
                    emu.dqr_history[qid] = entry
                    if status == "RECEIVED":
                        src = emu.dqr_pacs[uid]
                        subj = emu._subject(pid, relabel.get("Subject") or src["patient"]["id"], create=True)
                        label = relabel.get("Session") or src.get("accessionNumber") or uid
                        e = emu._experiment(pid, label)
                        if e is None:
                            mods = set(src.get("modalitiesInStudy") or [])
                            e = emu._new_experiment(pid, subj["ID"], label, _session_type(mods), user)
                        e.uid, e.date = uid, src.get("studyDate", "")
                        e.accession = src.get("accessionNumber", "")
                        e.session_type = src.get("studyDescription", "")
            raise _Reply(200, out)
        m = re.fullmatch(r"/xapi/dqr/import/history/(\d+)", path)
        if m and method == "GET":
            with emu.lock:
                entry = emu.dqr_history.get(int(m.group(1)))
            if entry is None:
                raise _Reply(404, "no such queue entry")
            raise _Reply(200, entry)
        if path == "/xapi/dqr/import/history" and method == "GET":
            with emu.lock:
                raise _Reply(200, list(emu.dqr_history.values()))
        raise _Reply(404, "no such DQR endpoint")

    def _multipart(self) -> dict[str, bytes]:
        ctype = self.headers.get("Content-Type") or ""
        body = self._body()
        if "multipart/form-data" not in ctype:
            raise _Reply(400, "expected multipart/form-data")
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {ctype}\r\n\r\n".encode() + body)
        out: dict[str, bytes] = {}
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if name:
                out[name] = part.get_payload(decode=True) or b""
        return out
