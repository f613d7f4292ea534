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


def test_pacs_dying_mid_harvest_stops_the_run(orthanc_loaded, pacs_cohort, tmp_path, monkeypatch):
    """The PACS goes away after the first patient: the run does not retry every patient in turn; after
    `max_consecutive_query_failures` it checks the source once more and stops as failed."""
    from ingest import failpoints
    from ingest.config import load_config
    from ingest.run import run_update
    from tests.servers.faultproxy import FaultProxy

    srv = orthanc_loaded
    pids = sorted({s.patient_id for s in pacs_cohort})
    (tmp_path / "cohort.csv").write_text("HospitalID,NHSNumber\n" + "".join(f"{p},\n" for p in pids))
    proxy = FaultProxy()
    port = proxy.start("127.0.0.1", srv.http_port, fault_rate=0.0)
    monkeypatch.setenv("RTLAKE_TEST_PACS_USER", srv.username)
    monkeypatch.setenv("RTLAKE_TEST_PACS_PASSWORD", srv.password)
    (tmp_path / "rtlake.toml").write_text(
        f'[project]\nstate_dir = "state"\n[source]\nkind = "orthanc"\n[source.orthanc]\n'
        f'url = "http://127.0.0.1:{port}"\nusername_env = "RTLAKE_TEST_PACS_USER"\n'
        f'password_env = "RTLAKE_TEST_PACS_PASSWORD"\n[source.transfer]\nretries = 0\n'
        f'[harvest]\nmax_consecutive_query_failures = 2\n[inputs]\ncohort = "cohort.csv"\n'
        f'[store.lake]\npath = "lake"\n[report]\noutbox = "outbox"\n')
    real_hit = failpoints.hit

    def hit(name: str) -> None:  # the PACS stops answering (503 to everything) once the first patient is done
        if name == "harvest.patient":
            proxy.faults, proxy.fault_rate = ("http503",), 1.0
        real_hit(name)

    monkeypatch.setattr(failpoints, "hit", hit)
    try:
        summary = run_update(load_config(tmp_path / "rtlake.toml"), show_progress=False)
    finally:
        proxy.stop()
    assert summary.status == "failed" and summary.exit_code == 4, (summary.status, summary.message, summary.counts,
                                                                    dict(proxy.counters))
    assert "after 2 failed patient queries in a row" in summary.message, summary.message
    assert summary.counts["patients_queried"] == 1
    assert not (tmp_path / "outbox").exists() or not any((tmp_path / "outbox").iterdir())


def test_status_shows_lake_runs_failures_and_review(fresh_demo):
    cfg = fresh_demo.config
    r = _run("status", "-c", str(cfg))
    assert r.returncode == 1 and "run `rtlake update` first" in r.stderr  # no catalog yet: nothing created
    assert not (fresh_demo.root / "state" / "catalog.duckdb").exists()
    assert _run("update", "-c", str(cfg), "--no-progress").returncode == 3
    r = _run("status", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    cat = Catalog(fresh_demo.root / "state" / "catalog.duckdb", read_only=True)
    try:
        subj, sess = cat.execute("SELECT count(DISTINCT subject), count(*) FROM sessions WHERE state='stored'"
                                 ).fetchone()
        files = cat.execute("SELECT count(*) FROM files").fetchone()[0]
        review = cat.execute("SELECT count(DISTINCT description_norm) FROM studies_seen WHERE decision='review'"
                             ).fetchone()[0]
    finally:
        cat.close()
    assert f"lake: {subj} subjects, {sess} sessions, {files} files" in r.stdout
    assert f"review queue: {review} descriptions" in r.stdout
    assert "partial" in r.stdout  # the last run's outcome
    assert "open failures: 2" in r.stdout and "index" in r.stdout  # the demo's two broken files
    j = _run("status", "-c", str(cfg), "--json")
    import json

    st = json.loads(j.stdout)
    assert st["lake"] == {"subjects": subj, "sessions": sess, "files": files, "sessions_pending": 0}
    assert st["runs"][0]["status"] == "partial" and sum(g["count"] for g in st["open_failures"]) == 2


def test_everything_created_is_owner_only_and_the_outbox_can_be_shared(fresh_demo):
    """Catalog, lake and outbox name patients: files 0600, folders 0700; `[security] outbox_group` opens the
    outbox (only) to one group. `rtlake check` warns about anything looser."""
    import grp
    import stat

    cfg = Path(fresh_demo.config)
    assert _run("update", "-c", str(cfg), "--no-progress").returncode == 3
    root = fresh_demo.root
    made = [p for d in ("state", "lake", "outbox") for p in [root / d, *(root / d).rglob("*")]]
    assert len(made) > 100
    loose = [(str(p.relative_to(root)), oct(stat.S_IMODE(p.stat().st_mode))) for p in made
             if stat.S_IMODE(p.stat().st_mode) & 0o077]
    assert loose == []
    c = _run("check", "-c", str(cfg))
    assert "warn" not in c.stdout and "owner-only" in c.stdout
    group = grp.getgrgid(os.getgid()).gr_name
    cfg.write_text(cfg.read_text() + f'\n[security]\noutbox_group = "{group}"\noutbox_mode = "0640"\n')
    assert _run("report", "-c", str(cfg)).returncode == 0
    outbox = root / "outbox"
    assert stat.S_IMODE(outbox.stat().st_mode) == 0o750
    for f in outbox.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o640 and f.stat().st_gid == os.getgid(), f
    assert not any(stat.S_IMODE(p.stat().st_mode) & 0o077 for p in (root / "lake").rglob("*"))
    (root / "lake").chmod(0o755)
    c = _run("check", "-c", str(cfg))
    assert "warn" in c.stdout and "chmod -R go-rwx" in c.stdout and c.returncode == 0


def test_conflicting_nhs_numbers_are_never_guessed(fresh_demo):
    """A hospital ID listed twice with two different valid NHS numbers is filed as NN_<id> (the SOP's answer
    for 'no trusted number'); the conflict is a failure row naming both, and the console names neither."""
    import csv

    from tests.scenario_pacs import _nhs

    cfg = fresh_demo.config
    p = next(p for p in fresh_demo.patients if p.nhs_number and not p.deceased and p.studies)
    other = next(n for n in (_nhs(k) for k in range(1, 50)) if n != p.nhs_number)
    with open(fresh_demo.cohort, "a", newline="") as fh:
        csv.writer(fh).writerow([p.hospital_id, other])
    r = _run("update", "-c", str(cfg), "--no-progress")
    assert r.returncode == 3, r.stderr[-2000:]
    assert p.nhs_number not in r.stderr + r.stdout and other not in r.stderr + r.stdout
    cat = Catalog(fresh_demo.root / "state" / "catalog.duckdb", read_only=True)
    try:
        subjects = {s for (s,) in cat.execute("SELECT DISTINCT subject FROM sessions WHERE hospital_id = ?",
                                              [p.hospital_id]).fetchall()}
        reasons = [r for (r,) in cat.execute("SELECT reason FROM failures WHERE stage = 'inputs'").fetchall()]
    finally:
        cat.close()
    assert subjects == {f"NN_{p.hospital_id}"}
    assert any(p.nhs_number in x and other in x for x in reasons), reasons


def test_missing_xnat_credentials_is_failed_not_done(fresh_demo, xnat_server, xnat_env, monkeypatch):
    cfg = Path(fresh_demo.config)
    cfg.write_text(cfg.read_text() + f'\n[store.xnat]\nurl = "{xnat_server.url}"\n')
    env = {k: v for k, v in os.environ.items() if k not in ("RTLAKE_XNAT_USER", "RTLAKE_XNAT_PASSWORD")}
    env["HOME"] = str(fresh_demo.root)  # no ~/.netrc to fall back on
    r = subprocess.run([*RTLAKE, "update", "-c", str(cfg), "--store", "xnat", "--no-progress"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 4, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "RTLAKE_XNAT_USER" in r.stdout + r.stderr
    assert not xnat_server.experiments


def test_a_pacs_answer_with_a_lone_surrogate_does_not_stop_the_harvest(tmp_path):
    """A PACS answer decoded with errors can carry a lone surrogate, which DuckDB refuses: the study is
    kept with U+FFFD in its place, the rest of the patient's studies too."""
    from rich.progress import Progress

    from criteria.lists import CriteriaLists
    from ingest.config import load_config
    from ingest.records import StudyRecord
    from ingest.run import UpdateRun, _storable

    cfg = load_config(None, {"project.state_dir": str(tmp_path / "state")})
    cat = Catalog(cfg.catalog_path)
    try:
        run = UpdateRun(cfg, cat, Progress(disable=True))
        bad = StudyRecord("1.2.3.4", "H1", accession="A\udc801", description="CT \udcff Thorax")
        good = StudyRecord("1.2.3.5", "H1", accession="A2", description="CT Thorax")
        with cat.transaction():
            for st in (bad, good):
                run._upsert_study("H1", _storable(st), CriteriaLists())
        rows = dict(cat.execute("SELECT study_uid, description FROM studies_seen").fetchall())
    finally:
        cat.close()
    assert rows == {"1.2.3.4": "CT \ufffd Thorax", "1.2.3.5": "CT Thorax"}
