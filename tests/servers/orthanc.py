"""A private Orthanc (Debian build) started on free ports in a temp folder, for tests and benchmarks.

Why a real server: the PACS quirks we guard against (no URL-decoding of QIDO values, gzip on
/instances/{id}/file, Nagle, case-sensitive DIMSE) only show on the real thing.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import requests

ORTHANC_BIN = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def die_with_parent() -> None:
    """Runs in the child before exec: ask Linux to SIGTERM it when the test process dies, so a
    killed pytest run leaves no server behind."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def free_port() -> int:
    """A TCP port nobody listens on right now (bind port 0 and let the kernel choose)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orthanc_available() -> str | None:
    """None when Orthanc and its DICOMweb plugin are installed, else what is missing."""
    missing = [p for p in (ORTHANC_BIN, DICOMWEB_PLUGIN) if not os.path.exists(p)]
    return None if not missing else "missing " + ", ".join(missing) + " (apt-get install orthanc orthanc-dicomweb)"


@dataclass
class OrthancServer:
    """One running Orthanc. `scu_aet`/`scu_port` is the test SCU it knows (C-FIND/C-MOVE/C-GET allowed)."""

    root: Path
    url: str
    username: str
    password: str
    dicom_port: int
    http_port: int
    aet: str
    scu_aet: str
    scu_port: int
    proc: subprocess.Popen | None = None
    http: requests.Session = field(default_factory=requests.Session)

    # -- data ----------------------------------------------------------------
    def upload(self, paths) -> list[str]:
        """Store DICOM files (one zip request per 200 files); returns Orthanc instance IDs."""
        paths = [Path(p) for p in paths]
        ids: list[str] = []
        for i in range(0, len(paths), 200):
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
                for j, p in enumerate(paths[i : i + 200]):
                    zf.write(p, f"{j}.dcm")
            r = self.http.post(f"{self.url}/instances", data=buf.getvalue(),
                               headers={"Content-Type": "application/zip"}, timeout=120)
            if r.status_code >= 400:  # one bad file spoils the zip: send them one by one, skip rejects
                for p in paths[i : i + 200]:
                    r1 = self.http.post(f"{self.url}/instances", data=p.read_bytes(), timeout=60)
                    if r1.status_code < 400:
                        ids.append(r1.json()["ID"])
                continue
            body = r.json()
            for item in body if isinstance(body, list) else [body]:
                ids.append(item["ID"])
        return ids

    def clear(self) -> None:
        """Delete every patient (the database is then empty; the server keeps running)."""
        for pid in self.http.get(f"{self.url}/patients", timeout=30).json():
            self.http.delete(f"{self.url}/patients/{pid}", timeout=60).raise_for_status()

    def study_count(self) -> int:
        return len(self.http.get(f"{self.url}/studies", timeout=30).json())

    # -- lifecycle -------------------------------------------------------------
    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        self.http.close()

    def log_tail(self, n: int = 40) -> str:
        out = self.root / "stdout.log"
        return "\n".join(out.read_text(errors="replace").splitlines()[-n:]) if out.exists() else ""


def start_orthanc(
    root: Path | None = None,
    *,
    username: str = "rtlake-test",
    password: str = "rtlake-secret",
    aet: str = "ORTHANCTEST",
    scu_aet: str = "RTLAKE",
    scu_port: int | None = None,
    extra_modalities: dict | None = None,
    extra_config: dict | None = None,
    tcp_nodelay: bool = True,
) -> OrthancServer:
    """Start Orthanc with auth on, DICOMweb on, our SCU registered, and test-friendly settings.

    Raises:
        RuntimeError: the binary is missing, or the server did not answer within 15 s (log tail attached).
    """
    missing = orthanc_available()
    if missing:
        raise RuntimeError(missing)
    root = Path(root) if root else Path(tempfile.mkdtemp(prefix="rtlake-orthanc-"))
    (root / "db").mkdir(parents=True, exist_ok=True)
    (root / "logs").mkdir(exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    scu_port = scu_port or free_port()
    modalities = {
        "rtlake": {"AET": scu_aet, "Host": "127.0.0.1", "Port": scu_port, "AllowEcho": True, "AllowFind": True,
                   "AllowMove": True, "AllowGet": True, "AllowStore": True},
        "self": [aet, "127.0.0.1", dicom_port],
    }
    modalities.update(extra_modalities or {})
    cfg = {
        "Name": "RTLAKE_TEST_PACS",
        "StorageDirectory": str(root / "db"),
        "IndexDirectory": str(root / "db"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {username: password},
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomModalities": modalities,
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado"},
        "DefaultEncoding": "Utf8",
        "StableAge": 2,
        "SaveJobs": False,
        "SyncStorageArea": False,
        "WebDavEnabled": False,
        "LimitFindResults": 0,
        "LimitFindInstances": 0,
        "HttpTimeout": 60,
        "DicomScuTimeout": 30,
    }
    cfg.update(extra_config or {})
    cfg_path = root / "orthanc.json"
    cfg_path.write_text(json.dumps(cfg, indent=2))
    env = {**os.environ}
    if tcp_nodelay:
        env["TCP_NODELAY"] = "1"
    with open(root / "stdout.log", "wb") as out:
        proc = subprocess.Popen([ORTHANC_BIN, f"--logdir={root / 'logs'}", str(cfg_path)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=die_with_parent)
    url = f"http://127.0.0.1:{http_port}"
    srv = OrthancServer(root=root, url=url, username=username, password=password, dicom_port=dicom_port,
                        http_port=http_port, aet=aet, scu_aet=scu_aet, scu_port=scu_port, proc=proc)
    srv.http.auth = (username, password)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if srv.http.get(f"{url}/system", timeout=1).status_code == 200:
                return srv
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    tail = srv.log_tail()
    srv.stop()
    raise RuntimeError(f"Orthanc did not start on {url}:\n{tail}")


def stop_and_remove(srv: OrthancServer) -> None:
    srv.stop()
    shutil.rmtree(srv.root, ignore_errors=True)
