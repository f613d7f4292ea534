"""A run that could not do its job says so: exit codes a cron job can tell apart, and no outbox change.

Documented codes (README "Exit codes"): 0 done, 3 partial, 4 failed, 130 interrupted, 2 config error,
5 another run holds the lock.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ingest.catalog import Catalog
from tests.servers.orthanc import free_port

RTLAKE = [sys.executable, "-m", "ingest.cli"]


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(*args, env=None, cwd=None):
    return subprocess.run([*RTLAKE, *args], capture_output=True, text=True, env={**os.environ, **(env or {})},
                          cwd=cwd, timeout=300)


def _last_run(cfg_root: Path) -> tuple[str, str]:
    cat = Catalog(cfg_root / "state" / "catalog.duckdb", read_only=True)
    try:
        return cat.execute("SELECT status, coalesce(message, '') FROM runs ORDER BY started_at DESC, run_id DESC "
                           "LIMIT 1").fetchone()
    finally:
        cat.close()


def test_dead_pacs_fails_fast_and_leaves_the_outbox(fresh_demo):
    cfg = fresh_demo.config
    good = _run("update", "-c", str(cfg), "--no-progress")
    assert good.returncode == 3, good.stderr[-2000:]  # partial: the demo PACS has two broken files
    outbox = fresh_demo.root / "outbox"
    before = _tree(outbox)
    assert before
    dead = free_port()  # nothing listens there
    Path(cfg).write_text(Path(cfg).read_text() + f'\n[source.orthanc]\nurl = "http://127.0.0.1:{dead}"\n')
    t0 = time.monotonic()
    r = _run("update", "-c", str(cfg), "--source", "orthanc", "--no-progress")
    seconds = time.monotonic() - t0
    assert r.returncode == 4, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "FAILED" in r.stdout and "source does not answer" in r.stdout
    assert "Traceback" not in r.stderr
    assert _tree(outbox) == before
    status, message = _last_run(fresh_demo.root)
    assert status == "failed" and "source does not answer" in message
    # stopped at the start-up check, not after retrying every patient (generous bound for a loaded 2-core box)
    assert seconds < 60, seconds
    # `rtlake check` says the same on demand, with the same exit code
    c = _run("check", "-c", str(cfg))
    assert c.returncode == 0, c.stdout  # the configured source (folder) is fine...
    c = subprocess.run([*RTLAKE, "check", "-c", str(cfg)], capture_output=True, text=True, timeout=120,
                       env={**os.environ})
    assert "ok" in c.stdout and "source" in c.stdout


def test_check_names_what_is_broken(fresh_demo, tmp_path):
    cfg = Path(fresh_demo.config)
    dead = free_port()
    cfg.write_text(cfg.read_text().replace('kind = "folder"', 'kind = "orthanc"', 1)
                   + f'\n[source.orthanc]\nurl = "http://127.0.0.1:{dead}"\n')
    r = _run("check", "-c", str(cfg))
    assert r.returncode == 4
    lines = {ln.split()[1]: ln for ln in r.stdout.splitlines() if ln.strip()}
    assert lines["source"].startswith("FAIL") and lines["store"].startswith("ok") and lines["outbox"].startswith("ok")
    assert not (fresh_demo.root / "state" / "catalog.duckdb").exists()  # a check changes nothing


def test_ctrl_c_is_one_line_exit_130_and_resumable(fresh_demo):
    cfg = fresh_demo.config
    p = subprocess.Popen([*RTLAKE, "-v", "update", "-c", str(cfg), "--no-progress"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    err = ""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the run is harvesting, then press Ctrl-C
        line = p.stderr.readline()
        err += line
        if "harvest:" in line or not line:
            break
    p.send_signal(signal.SIGINT)
    out, rest = p.communicate(timeout=120)
    err += rest
    if p.returncode == 3:  # the run finished before the signal landed: nothing to test this time
        return
    assert p.returncode == 130, (p.returncode, err[-2000:])
    assert "Traceback" not in err and "interrupted" in err
    assert _last_run(fresh_demo.root)[0] == "interrupted"
    again = _run("update", "-c", str(cfg), "--no-progress")
    assert again.returncode == 3, again.stderr[-2000:]
    cat = Catalog(fresh_demo.root / "state" / "catalog.duckdb", read_only=True)
    try:
        left = cat.execute("SELECT count(*) FROM studies_seen WHERE decision = 'include' AND state <> 'ingested'"
                           ).fetchone()[0]
    finally:
        cat.close()
    assert left == 0


def test_wrong_xnat_password_is_failed_with_outbox_untouched(fresh_demo, xnat_server, xnat_env, monkeypatch):
    cfg = Path(fresh_demo.config)
    good = _run("update", "-c", str(cfg), "--no-progress")
    assert good.returncode == 3
    outbox = fresh_demo.root / "outbox"
    before = _tree(outbox)
    cfg.write_text(cfg.read_text() + f'\n[store.xnat]\nurl = "{xnat_server.url}"\n')
    env = {k: v for k, v in os.environ.items()}
    env["RTLAKE_XNAT_PASSWORD"] = "not-the-password"
    r = subprocess.run([*RTLAKE, "update", "-c", str(cfg), "--store", "xnat", "--no-progress"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 4, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "not-the-password" not in r.stdout + r.stderr
    assert _tree(outbox) == before
    assert _last_run(fresh_demo.root)[0] == "failed"
