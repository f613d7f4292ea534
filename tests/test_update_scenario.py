"""The periodic update against a real Orthanc, over Orthanc REST, DICOMweb and DIMSE: two batches of
realistic arrivals (see tests/scenario_pacs.py for the scenario and its hand-written outcomes).

The clock is an input: run 1 is "2024-06-01", run 2 "2024-07-01" (passed to the run; the CLI test
below fixes it with faketime instead).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ingest.catalog import Catalog
from ingest.config import load_config
from ingest.run import run_update
from tests import scenario_pacs as S
from tests.fixtures.pacs import source_overrides
from tests.servers.faultproxy import FaultProxy
from tests.servers.orthanc import orthanc_available, start_orthanc, stop_and_remove

RUN1, RUN2 = dt.date(2024, 6, 1), dt.date(2024, 7, 1)


@pytest.fixture(scope="module")
def scenario_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenario-files")
    first = S.batch1()
    return first, S.write_files(first, root / "b1"), S.write_files(S.batch2(first), root / "b2")


@pytest.fixture(scope="module")
def scenario_orthanc(tmp_path_factory):
    missing = orthanc_available()
    if missing:
        pytest.skip(f"!!! PACS TESTS SKIPPED: {missing}")
    srv = start_orthanc(tmp_path_factory.mktemp("scenario-orthanc"))
    yield srv
    stop_and_remove(srv)


def _fresh_pacs(srv, files, root: Path, stage: int) -> None:
    """An Orthanc holding exactly `files`, and the trust's inputs as they stand at `stage`."""
    srv.clear()
    srv.upload(files)
    S.write_inputs(root, stage=stage)


def _names(first) -> dict[str, str]:
    """StudyInstanceUID → scenario name."""
    return {s.uid: s.name for s in first + S.batch2(first)}


def _state(cfg):
    cat = Catalog(cfg.catalog_path, read_only=True)
    try:
        seen = dict(cat.execute("SELECT study_uid, decision FROM studies_seen").fetchall())
        stored = dict(cat.execute("SELECT study_uid, subject FROM sessions WHERE state = 'stored'").fetchall())
        files = dict(cat.execute("SELECT study_uid, count(*) FROM files GROUP BY 1").fetchall())
        locations = dict(cat.execute("SELECT study_uid, location FROM sessions WHERE state = 'stored'").fetchall())
        open_work = cat.execute("SELECT stage, reason FROM failures WHERE resolved_run IS NULL AND stage IN "
                                "('harvest', 'retrieve', 'store', 'index', 'relabel')").fetchall()
    finally:
        cat.close()
    return seen, stored, files, locations, open_work


def _cfg(root: Path, kind: str, srv, extra: dict | None = None):
    os.environ["RTLAKE_TEST_PACS_USER"] = srv.username
    os.environ["RTLAKE_TEST_PACS_PASSWORD"] = srv.password
    over = source_overrides(kind, srv, root)
    over.pop("source.name")  # one name per protocol would do, keep the default
    return load_config(S.write_config(root), {**over, **(extra or {})})


@pytest.mark.parametrize("kind", ["orthanc", "orthanc-paged", "dicomweb", "dimse-get"])
def test_two_batches_find_exactly_the_new_studies(kind, scenario_orthanc, scenario_files, tmp_path):
    srv = scenario_orthanc
    first, b1, b2 = scenario_files
    names = _names(first)
    _fresh_pacs(srv, b1, tmp_path, stage=1)
    extra = {}
    if kind == "orthanc-paged":  # the change log read three entries a request: paging must not lose any
        kind, extra = "orthanc", {"harvest.change_log_page": 3}
    cfg = _cfg(tmp_path, kind, srv, extra)

    one = run_update(cfg, show_progress=False, build_report=False, today=RUN1)
    seen, stored, files, _, open_work = _state(cfg)
    assert one.status == "done", (one.message, open_work)
    assert {names[u]: d for u, d in seen.items()} == S.DECISIONS_AFTER_1
    assert {names[u] for u in stored} == S.STORED_AFTER_1
    assert stored[next(s.uid for s in first if s.name == "S11")] == "NN_SCN0005"
    assert one.counts["verification_skipped"] == 2 and one.counts["placeholder_skipped"] == 1

    srv.upload(b2)
    S.write_inputs(tmp_path, stage=2)
    two = run_update(cfg, show_progress=False, build_report=False, today=RUN2)
    seen2, stored2, files2, loc2, open_work = _state(cfg)
    assert two.status == "done", (two.message, open_work)
    if kind == "orthanc":  # P1 (S12, S13, S16), P2 (new series), P3 (S17), P6 (new member); not P5 or P4
        assert two.harvest_mode == "change log: 4 of 5 patients changed or pending", two.harvest_mode
    new = {names[u] for u in set(seen2) - set(seen)}
    assert new == S.NEW_IN_2
    assert two.counts["new_studies"] == len(S.NEW_IN_2)
    assert two.counts["ingested"] == len(S.INGESTED_IN_2)
    assert {names[u] for u in stored2} == S.STORED_AFTER_2
    assert not ({names[u] for u in seen2} & S.NEVER_SEEN)  # the deceased patient's new study
    s3 = next(s.uid for s in first if s.name == "S3")
    assert files2[s3] == S.FILES_AFTER_2["S3"]
    # the corrected NHS number: catalog and lake agree on the new subject, nothing left under NN_
    s11 = next(s.uid for s in first if s.name == "S11")
    assert stored2[s11] == S.NHS["P5"] and two.counts["relabelled"] == 1
    lake = Path(cfg.store.lake.path)
    assert Path(loc2[s11]).parent.name == S.NHS["P5"] and (Path(loc2[s11]) / "session.json").is_file()
    assert not (lake / "SCN" / "NN_SCN0005").exists()
    cat = Catalog(cfg.catalog_path, read_only=True)
    try:
        paths = [r[0] for r in cat.execute("SELECT path FROM files WHERE study_uid = ?", [s11]).fetchall()]
    finally:
        cat.close()
    assert paths and all(Path(p).is_file() and S.NHS["P5"] in p for p in paths)

    # a third run with nothing new changes nothing
    three = run_update(cfg, show_progress=False, build_report=False, today=RUN2)
    assert three.status == "done" and three.counts["new_studies"] == 0 and three.counts["ingested"] == 0
    assert _state(cfg)[:3] == (seen2, stored2, files2)


def test_orthanc_no_op_run_costs_a_handful_of_requests(scenario_orthanc, scenario_files, tmp_path, monkeypatch):
    """With the change log, a run with nothing new reads /system and /changes, not one query per patient.

    Requests are counted at the HTTP client (every requests.Session.send of this process)."""
    import requests

    srv = scenario_orthanc
    first, b1, b2 = scenario_files
    _fresh_pacs(srv, b1 + b2, tmp_path, stage=2)
    sent = {"n": 0}
    real_send = requests.Session.send

    def counting_send(self, request, **kw):
        sent["n"] += 1
        return real_send(self, request, **kw)

    monkeypatch.setattr(requests.Session, "send", counting_send)
    cfg = _cfg(tmp_path, "orthanc", srv)
    first_run = run_update(cfg, show_progress=False, build_report=False, today=RUN2)
    assert first_run.status == "done" and "full listing" in first_run.harvest_mode
    before = sent["n"]
    again = run_update(cfg, show_progress=False, build_report=False, today=RUN2)
    used = sent["n"] - before
    assert again.status == "done" and again.counts["patients_queried"] == 0
    assert used < 10, used
    assert again.harvest_mode.startswith("change log: 0 of")
    # a new study for one patient: only that patient is listed
    extra = S.write_files([S._study("SX", "P2", "2016-01-01", "CT Other Hospital")], tmp_path / "bx")
    srv.upload(extra)
    after = run_update(cfg, show_progress=False, build_report=False, today=RUN2)
    assert after.counts["patients_queried"] == 1 and after.counts["new_studies"] == 1
    # --full lists everyone again
    full = run_update(cfg, show_progress=False, build_report=False, today=RUN2, full=True)
    assert full.counts["patients_queried"] == 5 and full.counts["new_studies"] == 0  # P4 is deceased
    # --patient lists only that one
    one = run_update(cfg, show_progress=False, build_report=False, today=RUN2, patients=[S.PATIENTS["P1"]])
    assert one.counts["patients_queried"] == 1 and one.harvest_mode.startswith("targeted")


def test_orthanc_reset_falls_back_to_full_listing(scenario_orthanc, scenario_files, tmp_path):
    """A cursor beyond Orthanc's log (a reset or new database) must not hide anything."""
    srv = scenario_orthanc
    first, b1, _ = scenario_files
    _fresh_pacs(srv, b1, tmp_path, stage=1)
    cfg = _cfg(tmp_path, "orthanc", srv)
    run_update(cfg, show_progress=False, build_report=False, today=RUN1)
    cat = Catalog(cfg.catalog_path)
    cat.execute("UPDATE source_cursors SET cursor = '99999999'")
    cat.close()
    again = run_update(cfg, show_progress=False, build_report=False, today=RUN1)
    assert "restarted" in again.harvest_mode and again.counts["patients_queried"] == 5


def _cli(args, env, cwd, fake: str | None = None):
    cmd = [sys.executable, "-m", "ingest.cli", *args]
    if fake:
        if not shutil.which("faketime"):
            pytest.skip("!!! faketime not installed (apt-get install faketime)")
        cmd = ["faketime", fake, *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, cwd=cwd, timeout=300)


def test_window_is_opt_in_and_misses_back_dated_arrivals(scenario_orthanc, scenario_files, tmp_path):
    """The documented risk of `harvest.window_days`, under a fixed clock (faketime): a study imported
    after run 1 with a 2015 date is missed by the window, found by the default and by `--full`."""
    srv = scenario_orthanc
    first, b1, b2 = scenario_files
    names = _names(first)
    _fresh_pacs(srv, b1, tmp_path, stage=1)
    cfg_path = S.write_config(tmp_path)
    cfg_path.write_text(cfg_path.read_text() + f'\n[source]\nkind = "orthanc"\n\n[source.orthanc]\nurl = "{srv.url}"\n'
                        'username_env = "RTLAKE_TEST_PACS_USER"\npassword_env = "RTLAKE_TEST_PACS_PASSWORD"\n\n'
                        '[harvest]\nwindow_days = 30\n')
    env = {"RTLAKE_TEST_PACS_USER": srv.username, "RTLAKE_TEST_PACS_PASSWORD": srv.password}
    r1 = _cli(["update", "-c", str(cfg_path), "--no-progress", "--no-report"], env, tmp_path, "2024-06-01 10:00:00")
    assert r1.returncode == 0, r1.stderr[-2000:]
    cat = Catalog(tmp_path / "state" / "catalog.duckdb", read_only=True)
    assert {str(d) for (d,) in cat.execute("SELECT DISTINCT harvested_until FROM patients WHERE NOT deceased"
                                           ).fetchall()} == {"2024-06-01"}
    cat.close()
    srv.upload(b2)
    r2 = _cli(["update", "-c", str(cfg_path), "--no-progress", "--no-report"], env, tmp_path, "2024-07-01 10:00:00")
    assert r2.returncode == 0, r2.stderr[-2000:]
    cat = Catalog(tmp_path / "state" / "catalog.duckdb", read_only=True)
    seen = {names.get(u, u) for (u,) in cat.execute("SELECT study_uid FROM studies_seen").fetchall()}
    cat.close()
    assert "S12" in seen and "S13" not in seen  # the follow-up is in the window, the back-dated import is not
    r3 = _cli(["update", "-c", str(cfg_path), "--no-progress", "--no-report", "--full"], env, tmp_path,
              "2024-07-01 11:00:00")
    assert r3.returncode == 0, r3.stderr[-2000:]
    cat = Catalog(tmp_path / "state" / "catalog.duckdb", read_only=True)
    seen = {names.get(u, u) for (u,) in cat.execute("SELECT study_uid FROM studies_seen").fetchall()}
    cat.close()
    assert "S13" in seen


def test_failed_patient_queries_name_the_patient_and_clear_when_fixed(scenario_orthanc, scenario_files, tmp_path):
    """Under injected faults a patient query that fails is a failure row naming that patient (identified
    side: the catalog; the log names no one), and the run that harvests that patient cleanly resolves it."""
    srv = scenario_orthanc
    first, b1, _ = scenario_files
    _fresh_pacs(srv, b1, tmp_path, stage=1)
    proxy = FaultProxy()
    port = proxy.start("127.0.0.1", srv.http_port, fault_rate=0.5, seed=3, faults=("http503",))
    try:
        url = srv.url.replace(str(srv.http_port), str(port))
        # retries 0 so faults reach the run; the start-up check gets a few tries of its own
        cfg = _cfg(tmp_path, "orthanc", srv, {"source.orthanc.url": url, "source.transfer.retries": 0,
                                              "harvest.check_retries": 8, "harvest.use_change_log": False,
                                              "harvest.max_consecutive_query_failures": 50})
        faulty = run_update(cfg, show_progress=False, build_report=False, today=RUN1)
    finally:
        proxy.stop()
    cat = Catalog(cfg.catalog_path, read_only=True)
    try:
        rows = cat.execute("SELECT target, hospital_id FROM failures WHERE stage = 'harvest' "
                           "AND resolved_run IS NULL").fetchall()
    finally:
        cat.close()
    assert rows, "no patient query failed at 50 % faults (pick another seed)"
    assert faulty.status == "partial"
    assert all(t == f"patient:{h}" and h in S.PATIENTS.values() for t, h in rows)
    clean = run_update(_cfg(tmp_path, "orthanc", srv, {"harvest.use_change_log": False}), show_progress=False,
                       build_report=False, today=RUN1)
    cat = Catalog(cfg.catalog_path, read_only=True)
    try:
        still = cat.execute("SELECT count(*) FROM failures WHERE stage = 'harvest' AND resolved_run IS NULL"
                            ).fetchone()[0]
    finally:
        cat.close()
    assert still == 0 and clean.status == "done"
