"""`rtlake update --store xnat|xnat-dqr` on the demo cohort, against the XNAT emulator.

  * import store: every selected study stored under its subject/label; a second run uploads nothing
  * a site anonymisation script that hashes UIDs, identity = 'label': every study once, then nothing
  * a wrong password: the run stops at its start-up check after one login, outcome `failed`, exit 4
  * DQR store, the whole path — batch query → import → queue → history → archived — with a
    dequeue delay and series arriving one by one; every third study fails its C-MOVE
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from ingest.catalog import Catalog

REPO = Path(__file__).resolve().parents[1]


def _configure(demo, url: str, extra: str = "") -> Path:
    cfg = Path(demo.config)
    cfg.write_text(cfg.read_text() + f'\n[store.xnat]\nurl = "{url}"\ndqr_wait_seconds = 20.0\ndqr_retries = 2\n'
                   f'dqr_backoff_seconds = 0.01\ndqr_ae_title = "XNAT"\ndqr_port = 8104\ndqr_poll_seconds = 0.05\n'
                   f'{extra}\n[source.transfer]\nretries = 2\nbackoff_seconds = 0.01\n')
    return cfg


def _update(cfg: Path, store: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ingest.cli", "update", "-c", str(cfg), "--store", store,
                           "--no-progress", "--no-report"], capture_output=True, text=True, cwd=REPO, timeout=600)


def _cohort(demo) -> dict[str, str]:
    with open(demo.cohort, newline="") as fh:
        return {r["HospitalID"]: (r["NHSNumber"] or "").strip() for r in csv.DictReader(fh)}


def _blank_one_nhs_number(demo) -> str:
    """Make sure a living patient with studies has no NHS number (subject NN_<hospital id>)."""
    living = [p for p in demo.patients if not p.deceased and p.studies]
    pick = next((p for p in living if not p.nhs_number), max(living, key=lambda p: len(p.studies))).hospital_id
    with open(demo.cohort, newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(demo.cohort, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["HospitalID", "NHSNumber"])
        w.writeheader()
        for r in rows:
            w.writerow({"HospitalID": r["HospitalID"], "NHSNumber": "" if r["HospitalID"] == pick else r["NHSNumber"]})
    return pick


def test_update_into_xnat_and_second_run_uploads_nothing(fresh_demo, xnat_server, xnat_env):
    nn = _blank_one_nhs_number(fresh_demo)
    cfg = _configure(fresh_demo, xnat_server.url)
    proc = _update(cfg, "xnat")
    assert proc.returncode == 3, proc.stderr[-3000:]  # 3 = partial: the demo PACS has two broken files

    cat = Catalog(Path(fresh_demo.root) / "state" / "catalog.duckdb", read_only=True)
    try:
        stored = cat.query_dicts("SELECT study_uid, subject, label, hospital_id, accession, location FROM sessions "
                                 "WHERE state = 'stored'")
        store_failures = cat.query_dicts("SELECT target, reason FROM failures WHERE stage = 'store'")
    finally:
        cat.close()
    assert stored, "the demo cohort should put sessions into XNAT"
    assert store_failures == []
    cohort = _cohort(fresh_demo)
    for s in stored:
        e = xnat_server.find_experiment("HNC_DEMO", s["label"])
        assert e is not None, s["label"]
        assert e.uid == s["study_uid"] and s["location"].endswith(f"/data/experiments/{e.id}")
        nhs = cohort[s["hospital_id"]]
        assert xnat_server.subject_label(e.subject_id) == (nhs or f"NN_{s['hospital_id']}") == s["subject"]
        if "_RT_" not in s["label"] and s["accession"]:
            assert s["label"] == s["accession"]
    assert any(s["subject"] == f"NN_{nn}" for s in stored)
    assert len(xnat_server.experiments) == len(stored)
    uploads = xnat_server.count("POST", r"^/data/services/import$")
    assert uploads == len(stored)

    proc = _update(cfg, "xnat")
    assert proc.returncode == 3, proc.stderr[-3000:]  # 3 = partial: the demo PACS has two broken files
    assert xnat_server.count("POST", r"^/data/services/import$") == uploads
    assert len(xnat_server.experiments) == len(stored)


def _demo_studies(demo) -> dict[str, tuple[pydicom.Dataset, int]]:
    """The demo PACS's studies: first header and number of series, by StudyInstanceUID."""
    seen: dict[str, pydicom.Dataset] = {}
    series: dict[str, set[str]] = {}
    for f in sorted(Path(demo.pacs).rglob("*")):
        if not f.is_file():
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - the demo's deliberately broken files
            continue
        uid = str(ds.StudyInstanceUID)
        seen.setdefault(uid, ds)
        series.setdefault(uid, set()).add(str(ds.SeriesInstanceUID))
    return {uid: (ds, len(series[uid])) for uid, ds in seen.items()}


def test_update_in_dqr_mode_end_to_end(fresh_demo, xnat_server, xnat_env):
    """query → import → queue → history → archived, for the demo cohort; every third study fails."""
    emu = xnat_server
    emu.add_project("HNC_DEMO", dqr=True)
    emu.dqr_dequeue_delay, emu.dqr_arrival_delay, emu.dqr_scan_interval = 0.1, 0.05, 0.05
    studies = _demo_studies(fresh_demo)
    for uid, (ds, n_series) in studies.items():
        emu.add_pacs_study(uid, str(ds.get("AccessionNumber", "")), str(ds.PatientID), str(ds.get("StudyDate", "")),
                           str(ds.get("StudyDescription", "")), (str(ds.get("Modality", "")),),
                           study_id=str(ds.get("StudyID", "")), n_series=n_series)
    failing = set(sorted(studies)[::3])  # XNAT cannot pull every third study
    emu.dqr_fail_uids.update(failing)
    cfg = _configure(fresh_demo, emu.url, "import_batch = 3\n")
    proc = _update(cfg, "xnat-dqr")
    assert proc.returncode == 3, proc.stderr[-3000:]  # partial: failures (and the demo PACS's broken files)
    queued = [u for call in emu.dqr_import_calls for u in call]
    assert queued and all(len(c) <= 3 for c in emu.dqr_import_calls)
    state = Path(fresh_demo.root) / "state"
    cat = Catalog(state / "catalog.duckdb", read_only=True)
    try:
        stored = {r["study_uid"]: r for r in cat.query_dicts(
            "SELECT study_uid, label, subject, n_scans, location FROM sessions WHERE state='stored'")}
        fails = {r["study_uid"]: r["reason"] for r in cat.query_dicts(
            "SELECT study_uid, reason FROM failures WHERE stage = 'store'")}
    finally:
        cat.close()
    expected_fail = set(queued) & failing
    assert expected_fail, "the cohort should select at least one failing study"
    assert set(stored) == set(queued) - failing
    assert set(fails) == expected_fail
    assert all("status FAILED" in r and "C-MOVE" in r for r in fails.values())
    for uid, row in stored.items():
        e = emu.find_experiment("HNC_DEMO", row["label"])
        assert e is not None and e.uid == uid and emu.subject_label(e.subject_id) == row["subject"]
        assert row["n_scans"] == studies[uid][1] == len(e.scans)  # all series, not the first to arrive
        assert row["location"].endswith(f"/data/experiments/{e.id}")
    # the store followed the queue until its entries were gone, then the history
    assert emu.count("GET", r"^/xapi/dqr/import/queue$") > len(emu.dqr_import_calls)
    assert emu.count("GET", r"^/xapi/dqr/import/history$") >= len(emu.dqr_import_calls)
    records = [r for p in sorted((state / "dqr-failures").glob("*.json")) for r in json.loads(p.read_text())]
    assert {r["studyInstanceUid"] for r in records} == expected_fail

    # a second run queues nothing new
    calls = len(emu.dqr_import_calls)
    proc = _update(cfg, "xnat-dqr")
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert [u for c in emu.dqr_import_calls[calls:] for u in c if u not in failing] == []


def test_update_with_site_anonymisation_stores_every_study_once(fresh_demo, xnat_server, xnat_env):
    xnat_server.site_anon_hash = True
    cfg = _configure(fresh_demo, xnat_server.url, 'identity = "label"\n')
    proc = _update(cfg, "xnat")
    assert proc.returncode == 3, proc.stderr[-3000:]  # 3 = partial: the demo PACS has two broken files
    cat = Catalog(Path(fresh_demo.root) / "state" / "catalog.duckdb", read_only=True)
    try:
        stored = cat.query_dicts("SELECT study_uid, label FROM sessions WHERE state = 'stored'")
        store_failures = cat.query_dicts("SELECT target, reason FROM failures WHERE stage = 'store'")
    finally:
        cat.close()
    assert stored and store_failures == []
    uploads = xnat_server.count("POST", r"^/data/services/import$")
    assert uploads == len(stored) == len(xnat_server.experiments)
    for s in stored:  # XNAT holds each under our label, with a UID its site script made
        e = xnat_server.find_experiment("HNC_DEMO", s["label"])
        assert e is not None and e.uid != s["study_uid"]
    proc = _update(cfg, "xnat")
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert xnat_server.count("POST", r"^/data/services/import$") == uploads
    assert len(xnat_server.experiments) == len(stored)


def test_wrong_password_stops_the_run_after_one_login(fresh_demo, xnat_server, xnat_env, monkeypatch):
    monkeypatch.setenv("RTLAKE_XNAT_PASSWORD", "not-the-password")
    cfg = _configure(fresh_demo, xnat_server.url)
    proc = _update(cfg, "xnat")
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]  # failed: the store refuses us
    out = proc.stdout + proc.stderr
    assert "login refused" in out and "RTLAKE_XNAT_PASSWORD" in out and "not-the-password" not in out
    assert xnat_server.login_attempts == 1
    assert xnat_server.count("POST", r"^/data/services/import$") == 0


@pytest.mark.slow
def test_update_in_dqr_mode_failures_land_in_catalog_and_json(fresh_demo, xnat_server, xnat_env):
    # Nothing is on XNAT's PACS: every selected study fails NOT_FOUND.
    xnat_server.add_project("HNC_DEMO", dqr=True)
    cfg = _configure(fresh_demo, xnat_server.url)
    xnat_server.dqr_problem_answers = 1
    proc = _update(cfg, "xnat-dqr")
    assert proc.returncode == 3, proc.stderr[-3000:]  # 3 = partial: the demo PACS has two broken files
    state = Path(fresh_demo.root) / "state"
    cat = Catalog(state / "catalog.duckdb", read_only=True)
    try:
        planned = cat.query_dicts("SELECT study_uid FROM sessions")
        fails = cat.query_dicts("SELECT target, study_uid, reason FROM failures WHERE stage = 'store'")
    finally:
        cat.close()
    assert planned and len(fails) == len(planned)
    assert all("NOT_FOUND" in f["reason"] and f["study_uid"] in f["reason"] for f in fails)
    assert all(xnat_server.url in f["reason"] for f in fails)
    records = [r for p in sorted((state / "dqr-failures").glob("*.json")) for r in json.loads(p.read_text())]
    assert sorted(r["studyInstanceUid"] for r in records) == sorted(f["study_uid"] for f in fails)
    assert xnat_server.dqr_import_calls == []


def test_corrected_nhs_number_moves_the_xnat_sessions(fresh_demo, xnat_server, xnat_env):
    """Issue 12: a patient filed as NN_<id> whose NHS number arrives later: the next run moves that patient's
    XNAT sessions to the new subject through the store, and the catalog follows."""
    original = _cohort(fresh_demo)
    p = max((p for p in fresh_demo.patients if not p.deceased and p.nhs_number and p.studies),
            key=lambda p: len(p.studies))
    nn, nhs = p.hospital_id, original[p.hospital_id]

    def write_cohort(value: str) -> None:
        with open(fresh_demo.cohort, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["HospitalID", "NHSNumber"])
            w.writeheader()
            for hid, number in original.items():
                w.writerow({"HospitalID": hid, "NHSNumber": value if hid == nn else number})

    write_cohort("")  # run 1: the number is not known yet
    cfg = _configure(fresh_demo, xnat_server.url)
    assert _update(cfg, "xnat").returncode == 3
    assert any(xnat_server.subject_label(e.subject_id) == f"NN_{nn}" for e in xnat_server.experiments.values())
    write_cohort(nhs)  # run 2: the EDW found it
    uploads = xnat_server.count("POST", r"^/data/services/import$")
    proc = _update(cfg, "xnat")
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert xnat_server.count("POST", r"^/data/services/import$") == uploads  # moved, not uploaded again
    cat = Catalog(Path(fresh_demo.root) / "state" / "catalog.duckdb", read_only=True)
    try:
        moved = cat.query_dicts("SELECT label, subject FROM sessions WHERE hospital_id = ? AND state = 'stored'", [nn])
        relabels = cat.query_dicts("SELECT status FROM relabels WHERE hospital_id = ? AND study_uid IS NOT NULL", [nn])
    finally:
        cat.close()
    assert moved and all(m["subject"] == nhs for m in moved)
    assert relabels and {r["status"] for r in relabels} == {"moved"}
    for m in moved:
        e = xnat_server.find_experiment("HNC_DEMO", m["label"])
        assert e is not None and xnat_server.subject_label(e.subject_id) == nhs
