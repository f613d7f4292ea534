"""Orthanc as a store, against a real Orthanc (Debian build) of our own."""

from __future__ import annotations

import pytest

from ingest.config import load_config
from ingest.errors import StoreError, StoreUnavailable, TransientError
from ingest.records import SessionPlan, StudyRecord
from ingest.stores import open_store
from tests.servers.orthanc import free_port, orthanc_available, start_orthanc, stop_and_remove


@pytest.fixture(scope="module")
def orthanc_target(tmp_path_factory):
    """An Orthanc used only as a destination (the PACS fixture's Orthanc is a source for others)."""
    missing = orthanc_available()
    if missing:
        pytest.skip(f"!!! ORTHANC STORE TESTS SKIPPED: {missing}")
    srv = start_orthanc(tmp_path_factory.mktemp("orthanc-store"), username="store", password="store-secret")
    yield srv
    stop_and_remove(srv)


@pytest.fixture
def orthanc_cfg(orthanc_target, tmp_path, monkeypatch):
    monkeypatch.setenv("RTLAKE_STORE_USER", "store")
    monkeypatch.setenv("RTLAKE_STORE_PASSWORD", "store-secret")

    def make(**over):
        base = {"project.state_dir": str(tmp_path / "state"), "store.kind": "orthanc",
                "store.orthanc.url": orthanc_target.url, "store.orthanc.username_env": "RTLAKE_STORE_USER",
                "store.orthanc.password_env": "RTLAKE_STORE_PASSWORD", "source.transfer.retries": 1,
                "source.transfer.backoff_seconds": 0.01, "source.transfer.read_timeout": 10.0}
        base.update(over)
        return load_config(None, base)

    return make


def _plan(st, n_instances=None):
    rec = StudyRecord(study_uid=st.study_uid, patient_id=st.patient_id, accession=st.accession,
                      study_date=st.study_date, modalities=(st.modality,), n_instances=n_instances)
    return SessionPlan(project="RTLAKE", subject="9434765919", label=st.accession, study=rec, hospital_id="H1")


def test_round_trip(orthanc_target, orthanc_cfg, xnat_study):
    st = xnat_study("H1", "ORTH001", n_series=2, n_instances=2)
    store = open_store(orthanc_cfg())
    try:
        assert not store.has_session(_plan(st))
        stored = store.put_study(_plan(st), st.files)
        assert store.has_session(_plan(st, n_instances=4))
        assert not store.has_session(_plan(st, n_instances=5))  # a partial study is not "there"
        again = store.put_study(_plan(st), st.files)  # repeat: AlreadyStored, nothing doubled
        rows = store.list_sessions()
    finally:
        store.close()
    assert again.location == stored.location
    assert sorted(s.n_files for s in stored.scans) == [2, 2]
    assert {s.series_uid for s in stored.scans} == set(st.series_uids)
    assert len(stored.files) == 4
    http = orthanc_target.http
    oid = stored.location.rsplit("/", 1)[1]
    assert http.get(f"{orthanc_target.url}/studies/{oid}/statistics").json()["CountInstances"] == 4
    # the bytes Orthanc gives back are the bytes we sent
    import pydicom

    by_sop = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in st.files}
    f0 = stored.files[0]
    assert http.get(f"{f0.path}/file").content == by_sop[f0.sop_uid].read_bytes()
    row = next(r for r in rows if r["study_uid"] == st.study_uid)
    assert (row["label"], row["subject"], row["date"], row["n_scans"]) == ("ORTH001", "H1", "2023-05-17", 2)


def test_bad_file_stops_the_study_before_any_write(orthanc_target, orthanc_cfg, xnat_study, tmp_path):
    st = xnat_study("H2", "ORTH002")
    junk = tmp_path / "not-dicom.dcm"
    junk.write_text("hello")
    store = open_store(orthanc_cfg())
    try:
        with pytest.raises(StoreError, match="not-dicom.dcm"):
            store.put_study(_plan(st), st.files + [junk])
        assert not store.has_session(_plan(st))
    finally:
        store.close()


def test_wrong_credentials_are_permanent(orthanc_cfg, xnat_study, monkeypatch):
    monkeypatch.setenv("RTLAKE_STORE_PASSWORD", "nope")
    st = xnat_study("H3", "ORTH003")
    store = open_store(orthanc_cfg())
    try:
        with pytest.raises(StoreError, match="401") as ei:
            store.put_study(_plan(st), st.files)
    finally:
        store.close()
    assert not isinstance(ei.value, TransientError) and st.study_uid in str(ei.value)


def test_unreachable_orthanc_is_transient(orthanc_cfg, xnat_study):
    st = xnat_study("H4", "ORTH004")
    store = open_store(orthanc_cfg(**{"store.orthanc.url": f"http://127.0.0.1:{free_port()}"}))
    try:
        with pytest.raises(StoreUnavailable) as ei:
            store.put_study(_plan(st), st.files)
    finally:
        store.close()
    assert "127.0.0.1" in str(ei.value) and st.study_uid in str(ei.value)


def test_update_into_orthanc(orthanc_target, fresh_demo, monkeypatch):
    import subprocess
    import sys
    from pathlib import Path

    from ingest.catalog import Catalog

    monkeypatch.setenv("RTLAKE_STORE_USER", "store")
    monkeypatch.setenv("RTLAKE_STORE_PASSWORD", "store-secret")
    cfg = Path(fresh_demo.config)
    cfg.write_text(cfg.read_text() + f'\n[store.orthanc]\nurl = "{orthanc_target.url}"\n'
                   'username_env = "RTLAKE_STORE_USER"\npassword_env = "RTLAKE_STORE_PASSWORD"\n')
    cmd = [sys.executable, "-m", "ingest.cli", "update", "-c", str(cfg), "--store", "orthanc", "--no-progress",
           "--no-report"]
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=repo, timeout=600)
    assert proc.returncode == 3, proc.stderr[-3000:]
    cat = Catalog(Path(fresh_demo.root) / "state" / "catalog.duckdb", read_only=True)
    try:
        stored = cat.query_dicts("SELECT study_uid, location, n_files FROM sessions WHERE state = 'stored'")
        fails = cat.query_dicts("SELECT reason FROM failures WHERE stage = 'store'")
    finally:
        cat.close()
    assert stored and fails == []
    http = orthanc_target.http
    for s in stored:
        stats = http.get(f"{s['location']}/statistics").json()
        assert int(stats["CountInstances"]) == s["n_files"]
    before = http.get(f"{orthanc_target.url}/statistics").json()["CountInstances"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=repo, timeout=600)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert http.get(f"{orthanc_target.url}/statistics").json()["CountInstances"] == before
