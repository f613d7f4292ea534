"""XNAT DQR mode: rtlake hands XNAT the selected studies; XNAT pulls them from its PACS.

Scenarios (expected outcomes from the DQR plugin's rules; see tests/servers/xnat_emulator.py):
  * a mixed batch: studies XNAT's PACS lacks are NOT_FOUND, a study whose C-MOVE fails is FAILED,
    flaky "There was a problem" / HTML answers are retried, batch limits hold, the rest is stored
    under our subject and label, and the failure JSON lists exactly the failures
  * the plugin's contract: multipart part `csv_to_store` with its headers, `aeTitle`/`port` of the
    receiver, relabelMap, `forceImport` false
  * a slow XNAT: the queue entry takes a while to go, RECEIVED comes with the first series and the
    session keeps growing: stored only once its scan count is stable, with every scan
  * a queue that never moves: transient, names the status
  * XNAT finds no series of a study: NOT_QUEUED
  * the project is not DQR-enabled (403), the receiver is not configured, or cannot relabel
  * a second run queues nothing; a site anon script rewrites UIDs: the identity hint
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from ingest.catalog import Catalog
from ingest.errors import StoreError, StoreUnavailable, TransientError
from ingest.records import SessionPlan, StoredSession, StudyRecord
from ingest.stores import open_store


def _plans(n: int, prefix: str = "DQ") -> list[SessionPlan]:
    out = []
    for k in range(n):
        rec = StudyRecord(study_uid=f"1.2.826.0.1.3680043.10.999.{k + 1}", patient_id=f"H{k:04d}",
                          accession=f"{prefix}{k:04d}", study_date=dt.date(2022, 1, 1 + k),
                          description="CT NECK", modalities=("CT",), study_id=str(k))
        subject = f"NN_H{k:04d}" if k % 2 else f"94347659{k:02d}"
        out.append(SessionPlan(project="RTLAKE", subject=subject, label=rec.accession, study=rec,
                               hospital_id=rec.patient_id))
    return out


def _on_pacs(emu, plans, n_series: int = 1):
    for p in plans:
        s = p.study
        emu.add_pacs_study(s.study_uid, s.accession, s.patient_id, s.study_date.strftime("%Y%m%d"),
                           s.description, s.modalities, study_id=s.study_id, n_series=n_series)


@pytest.fixture
def dqr_server(xnat_server):
    xnat_server.add_project("RTLAKE", dqr=True)
    return xnat_server


def test_batches_failures_and_flaky_answers(dqr_server, xnat_cfg):
    emu = dqr_server
    plans = _plans(6)
    _on_pacs(emu, plans[:5])  # plans[5] is not on the PACS (cancelled / never acquired)
    emu.dqr_fail_uids.add(plans[2].study.study_uid)  # XNAT cannot pull this one
    emu.dqr_problem_answers = 1  # first DQR call: "There was a problem ..."
    emu.dqr_non_json_answers = 1  # second: an HTML error page
    cfg = xnat_cfg("xnat-dqr", **{"store.xnat.query_batch": 4, "store.xnat.import_batch": 2})
    store = open_store(cfg)
    assert store.needs_files is False and store.batch_size == 2
    try:
        results = store.put_studies([(p, []) for p in plans])
        stored_ok = [store.has_session(p) for p in plans]
    finally:
        store.close()

    ok = [i for i, r in enumerate(results) if isinstance(r, StoredSession)]
    assert ok == [0, 1, 3, 4]
    assert stored_ok == [True, True, False, True, True, False]
    assert "status FAILED" in str(results[2]) and "C-MOVE" in str(results[2])
    assert "status NOT_FOUND" in str(results[5])
    for i in (2, 5):
        r = results[i]
        assert isinstance(r, StoreError) and not isinstance(r, TransientError)
        assert emu.url in str(r) and plans[i].study.study_uid in str(r) and "94347659" not in str(r)
    # sessions land under our subject and label, with their scans read back
    e = emu.find_experiment("RTLAKE", "DQ0001")
    assert emu.subject_label(e.subject_id) == "NN_H0001" and e.uid == plans[1].study.study_uid
    assert results[1].location.endswith(f"/data/experiments/{e.id}")
    assert [(s.scan_id, s.n_files) for s in results[1].scans] == [("1", 2)]
    # batch limits held, flaky answers were retried
    assert emu.dqr_query_calls == [4, 2]
    assert [len(c) for c in emu.dqr_import_calls] == [2, 2, 1]
    assert emu.dqr_problem_answers == 0 and emu.dqr_non_json_answers == 0

    # raw failure records for the reporting importer
    files = sorted((cfg.state_dir / "dqr-failures").glob("*.json"))
    assert len(files) == 1 and (files[0].stat().st_mode & 0o777) == 0o600
    recs = json.loads(files[0].read_text())
    assert [r["studyInstanceUid"] for r in recs] == [plans[2].study.study_uid, plans[5].study.study_uid]
    assert sorted(recs[0]) == sorted(["accessionNumber", "modalitiesInStudy", "patient", "studyDate",
                                      "studyDescription", "studyId", "studyInstanceUid"])
    assert recs[0]["patient"] == {"id": "H0002", "name": "SYNTH^DQR", "sex": "F"}  # XNAT's own record
    assert recs[1]["patient"]["id"] == "H0005" and recs[1]["accessionNumber"] == "DQ0005"  # ours

    # what the update run does with the per-item exceptions: one failure row each
    cat = Catalog(cfg.catalog_path)
    try:
        run = cat.start_run("pacs", "xnat-dqr")
        for p, r in zip(plans, results):
            if isinstance(r, Exception):
                cat.record_failure(run, "store", p.study.study_uid, str(r), p.study.study_uid, type(r).__name__)
        rows = cat.query_dicts("SELECT target, reason FROM failures WHERE stage = 'store' ORDER BY target")
    finally:
        cat.close()
    assert [r["target"] for r in rows] == sorted([plans[2].study.study_uid, plans[5].study.study_uid])


def test_requests_follow_the_plugins_contract(dqr_server, xnat_cfg):
    emu = dqr_server
    plans = _plans(2)
    _on_pacs(emu, plans)
    store = open_store(xnat_cfg("xnat-dqr"))
    try:
        store.put_studies([(p, []) for p in plans])
    finally:
        store.close()
    # the emulator refuses anything else (400 without csv_to_store; rows without known headers are dropped),
    # so what it recorded is what the plugin would have read
    assert emu.dqr_query_calls == [2]
    queued = [q for q in emu.dqr_history.values()]
    assert {q["destinationAeTitle"] for q in queued} == {"XNAT:8104"}
    assert all('(0020,0010) := "DQ000' in q["remappingScript"] for q in queued)  # Session → StudyID
    assert {emu.subject_label(e.subject_id) for e in emu.experiments.values()} == {"9434765900", "NN_H0001"}


def test_slow_arrival_is_followed_until_the_session_is_complete(dqr_server, xnat_cfg):
    emu = dqr_server
    emu.dqr_dequeue_delay, emu.dqr_arrival_delay, emu.dqr_scan_interval = 0.1, 0.05, 0.08
    plans = _plans(1)
    _on_pacs(emu, plans, n_series=4)
    store = open_store(xnat_cfg("xnat-dqr", **{"store.xnat.dqr_stable_polls": 3}))
    try:
        [res] = store.put_studies([(plans[0], [])])
    finally:
        store.close()
    assert isinstance(res, StoredSession), res
    assert sorted(s.scan_id for s in res.scans) == ["1", "2", "3", "4"]  # not the partial session seen on RECEIVED
    # it polled the queue until the entry was gone, then the history
    queue_polls = emu.count("GET", r"^/xapi/dqr/import/queue$")
    assert queue_polls >= 2 and emu.count("GET", r"^/xapi/dqr/import/history$") >= 1


def test_queue_that_does_not_move_is_transient(dqr_server, xnat_cfg):
    emu = dqr_server
    plans = _plans(2)
    _on_pacs(emu, plans)
    emu.dqr_stuck_uids.add(plans[0].study.study_uid)
    store = open_store(xnat_cfg("xnat-dqr", **{"store.xnat.dqr_wait_seconds": 0.3}))
    try:
        results = store.put_studies([(p, []) for p in plans])
    finally:
        store.close()
    assert isinstance(results[0], StoreUnavailable) and "status QUEUED" in str(results[0])
    assert isinstance(results[1], StoredSession)


def test_study_xnat_finds_no_series_of_is_not_queued(dqr_server, xnat_cfg):
    emu = dqr_server
    plans = _plans(2)
    _on_pacs(emu, plans)
    emu.dqr_pacs[plans[1].study.study_uid]["_series"] = []  # the series query comes back empty
    store = open_store(xnat_cfg("xnat-dqr"))
    try:
        results = store.put_studies([(p, []) for p in plans])
    finally:
        store.close()
    assert isinstance(results[0], StoredSession)
    assert isinstance(results[1], StoreError) and "NOT_QUEUED" in str(results[1])


def test_project_not_dqr_enabled(xnat_server, xnat_cfg):
    xnat_server.add_project("RTLAKE")  # not DQR-enabled
    plans = _plans(1)
    _on_pacs(xnat_server, plans)
    store = open_store(xnat_cfg("xnat-dqr"))
    try:
        with pytest.raises(StoreError, match="not DQR-enabled"):
            store.check()
        [res] = store.put_studies([(plans[0], [])])
    finally:
        store.close()
    assert isinstance(res, StoreError) and "403" in str(res) and not isinstance(res, TransientError)


def test_receiver_not_configured_or_unable_to_relabel(dqr_server, xnat_cfg):
    plans = _plans(1)
    _on_pacs(dqr_server, plans)
    store = open_store(xnat_cfg("xnat-dqr", **{"store.xnat.dqr_port": 0}))
    try:
        with pytest.raises(StoreError, match="dqr_ae_title and dqr_port"):
            store.check()
        [res] = store.put_studies([(plans[0], [])])
    finally:
        store.close()
    assert isinstance(res, StoreError) and "dqr_port" in str(res)
    assert dqr_server.dqr_import_calls == []
    dqr_server.dqr_receivers[("XNAT", 8104)]["custom_processing"] = False
    store = open_store(xnat_cfg("xnat-dqr"))
    try:
        [res] = store.put_studies([(plans[0], [])])
    finally:
        store.close()
    assert isinstance(res, StoreError) and "custom processing" in str(res)
    assert dqr_server.experiments == {}  # refused rather than imported without our labels


def test_check_passes_on_a_dqr_project(dqr_server, xnat_cfg):
    store = open_store(xnat_cfg("xnat-dqr"))
    try:
        lines = store.check()
    finally:
        store.close()
    assert any("DQR-enabled" in ln and "XNAT:8104" in ln for ln in lines)


def test_second_run_queues_nothing(dqr_server, xnat_cfg):
    emu = dqr_server
    plans = _plans(3)
    _on_pacs(emu, plans)
    store = open_store(xnat_cfg("xnat-dqr"))
    try:
        assert all(isinstance(r, StoredSession) for r in store.put_studies([(p, []) for p in plans]))
    finally:
        store.close()
    store = open_store(xnat_cfg("xnat-dqr"))
    try:
        assert all(store.has_session(p) for p in plans)
        again = store.put_studies([(p, []) for p in plans])  # a fresh catalog: nothing is queued twice
    finally:
        store.close()
    assert all(isinstance(r, StoredSession) for r in again)
    assert len(emu.dqr_import_calls) == 1 and len(emu.dqr_query_calls) == 1


def test_persistent_problem_answers_fail_each_study_transiently(dqr_server, xnat_cfg):
    emu = dqr_server
    plans = _plans(2)
    _on_pacs(emu, plans)
    emu.dqr_problem_answers = 100
    cfg = xnat_cfg("xnat-dqr", **{"store.xnat.dqr_retries": 3})  # DQR's own retry budget
    store = open_store(cfg)
    try:
        results = store.put_studies([(p, []) for p in plans])
    finally:
        store.close()
    for p, r in zip(plans, results):
        assert isinstance(r, StoreUnavailable)
        assert p.study.study_uid in str(r) and "There was a problem" in str(r) and emu.url in str(r)
    assert len(emu.dqr_query_calls) == 0  # never got past the retries
    assert emu.count("POST", r"^/xapi/dqr/query/batch$") == 4  # 1 + 3 retries
    recs = json.loads(next((cfg.state_dir / "dqr-failures").glob("*.json")).read_text())
    assert [r["studyInstanceUid"] for r in recs] == [p.study.study_uid for p in plans]


def test_server_error_on_import_and_expired_session(dqr_server, xnat_cfg):
    emu = dqr_server
    plans = _plans(2)
    _on_pacs(emu, plans)
    emu.add_fault("POST", r"^/xapi/dqr/import$", status=502, body="bad gateway", times=1)
    store = open_store(xnat_cfg("xnat-dqr"))
    try:
        store.archive.ensure_project()
        emu.expire_sessions()
        results = store.put_studies([(p, []) for p in plans])
        assert store.client.logins == 2
    finally:
        store.close()
    assert all(isinstance(r, StoredSession) for r in results)


def test_site_anonymisation_in_dqr_mode_names_the_identity_setting(dqr_server, xnat_cfg):
    emu = dqr_server
    emu.site_anon_hash = True
    plans = _plans(1)
    _on_pacs(emu, plans)
    store = open_store(xnat_cfg("xnat-dqr", **{"store.xnat.dqr_wait_seconds": 1.0}))
    try:
        [res] = store.put_studies([(plans[0], [])])
    finally:
        store.close()
    # the hashed StudyID becomes the label: rtlake cannot find the session, and says so
    assert isinstance(res, StoreUnavailable) and "DEQUEUED" not in str(res) and "RECEIVED" in str(res)


def test_put_study_raises_the_failure(dqr_server, xnat_cfg):
    plans = _plans(1)
    store = open_store(xnat_cfg("xnat-dqr"))
    try:
        with pytest.raises(StoreError, match="NOT_FOUND"):
            store.put_study(plans[0], [])
    finally:
        store.close()


def test_without_a_series_list_a_stable_scan_count_decides(dqr_server, xnat_cfg):
    """A plugin version whose queue entries list no series: the scan count must stop growing."""
    emu = dqr_server
    emu.dqr_dequeue_delay, emu.dqr_arrival_delay, emu.dqr_scan_interval = 0.05, 0.0, 0.15
    plans = _plans(1)
    _on_pacs(emu, plans, n_series=3)
    store = open_store(xnat_cfg("xnat-dqr", **{"store.xnat.dqr_poll_seconds": 0.05, "store.xnat.dqr_stable_polls": 5}))
    original = store._import

    def without_series(batch, results):
        pending = original(batch, results)
        for w in pending:
            w.expected = 0
        return pending

    store._import = without_series
    try:
        [res] = store.put_studies([(plans[0], [])])
    finally:
        store.close()
    assert isinstance(res, StoredSession), res
    assert len(res.scans) == 3
