"""A private dcmtk `dcmqrscp` (a second, case-sensitive DIMSE peer) on a free port.

Why: Orthanc is forgiving; dcmqrscp is strict (case-sensitive matching, needs its config file,
only moves to peers in its HostTable), which is closer to what a hospital PACS does.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .orthanc import die_with_parent, free_port

DCMQRSCP_BIN = shutil.which("dcmqrscp") or "/usr/bin/dcmqrscp"


def dcmqrscp_available() -> str | None:
    return None if os.path.exists(DCMQRSCP_BIN) else "missing dcmqrscp (apt-get install dcmtk)"


@dataclass
class DcmqrscpServer:
    root: Path
    port: int
    aet: str
    scu_aet: str
    scu_port: int
    proc: subprocess.Popen | None = None

    def upload(self, paths) -> int:
        """C-STORE files into the archive with pynetdicom; returns how many were accepted."""
        import pydicom
        from pynetdicom import AE, StoragePresentationContexts

        ae = AE(ae_title=self.scu_aet)
        ae.requested_contexts = StoragePresentationContexts
        assoc = ae.associate("127.0.0.1", self.port, ae_title=self.aet)
        if not assoc.is_established:
            raise RuntimeError(f"dcmqrscp on port {self.port} refused the association")
        ok = 0
        try:
            for p in paths:
                status = assoc.send_c_store(pydicom.dcmread(p))
                if status and status.Status == 0x0000:
                    ok += 1
        finally:
            assoc.release()
        return ok

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None


def start_dcmqrscp(
    root: Path | None = None,
    *,
    aet: str = "DCMQRSCP",
    scu_aet: str = "RTLAKE",
    scu_port: int | None = None,
    tcp_nodelay: bool = True,
) -> DcmqrscpServer:
    """Write a config (our SCU in the HostTable, one RW storage area) and start dcmqrscp.

    Raises:
        RuntimeError: binary missing or the port did not open within 10 s.
    """
    missing = dcmqrscp_available()
    if missing:
        raise RuntimeError(missing)
    root = Path(root) if root else Path(tempfile.mkdtemp(prefix="rtlake-dcmqrscp-"))
    db = root / "db"
    db.mkdir(parents=True, exist_ok=True)
    port = free_port()
    scu_port = scu_port or free_port()
    cfg = root / "dcmqrscp.cfg"
    cfg.write_text(
        f"""NetworkTCPPort  = {port}
MaxPDUSize      = 65536
MaxAssociations = 16

HostTable BEGIN
rtlake = ({scu_aet}, 127.0.0.1, {scu_port})
HostTable END

VendorTable BEGIN
VendorTable END

AETable BEGIN
{aet} {db} RW (500, 1024mb) ANY
AETable END
"""
    )
    env = {**os.environ}
    if tcp_nodelay:
        env["TCP_NODELAY"] = "1"
    with open(root / "stdout.log", "wb") as out:
        proc = subprocess.Popen([DCMQRSCP_BIN, "-c", str(cfg), str(port)], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=root, start_new_session=True, preexec_fn=die_with_parent)
    srv = DcmqrscpServer(root=root, port=port, aet=aet, scu_aet=scu_aet, scu_port=scu_port, proc=proc)
    deadline = time.monotonic() + 10
    import socket

    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return srv
        except OSError:
            time.sleep(0.05)
    srv.stop()
    raise RuntimeError(f"dcmqrscp did not start: {(root / 'stdout.log').read_text(errors='replace')[-2000:]}")
