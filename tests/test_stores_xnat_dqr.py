"""XNAT DQR mode: rtlake hands XNAT the selected studies; XNAT pulls them from its PACS."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from ingest.catalog import Catalog
from ingest.errors import StoreError, StoreUnavailable
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


def _on_pacs(emu, plans):
    for p in plans:
        s = p.study
        emu.add_pacs_study(s.study_uid, s.accession, s.patient_id, s.study_date.strftime("%Y%m%d"),
                           s.description, s.modalities, study_id=s.study_id)


def test_batches_failures_and_flaky_answers(xnat_server, xnat_cfg):
    plans = _plans(6)
    _on_pacs(xnat_server, plans[:5])  # plans[5] is not on the PACS (cancelled / never acquired)
    xnat_server.dqr_fail_uids.add(plans[2].study.study_uid)  # XNAT cannot pull this one
    xnat_server.dqr_problem_answers = 1  # first DQR call: "There was a problem ..."
    xnat_server.dqr_non_json_answers = 1  # second: an HTML error page
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
    assert "status FAILED" in str(results[2]) and plans[2].study.study_uid in str(results[2])
    assert "status NOT_FOUND" in str(results[5]) and plans[5].study.study_uid in str(results[5])
    for r in (results[2], results[5]):
        assert isinstance(r, StoreError) and xnat_server.url in str(r)
        assert "94347659" not in str(r)
    # sessions land under our subject and label
    e = xnat_server.find_experiment("RTLAKE", "DQ0001")
    assert xnat_server.subject_label(e.subject_id) == "NN_H0001" and e.uid == plans[1].study.study_uid
    assert results[1].location.endswith(f"/data/experiments/{e.id}")
    # batch limits held, flaky answers were retried
    assert xnat_server.dqr_query_calls == [4, 2]
    assert [len(c) for c in xnat_server.dqr_import_calls] == [2, 2, 1]
    assert xnat_server.dqr_problem_answers == 0 and xnat_server.dqr_non_json_answers == 0

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


def test_second_run_queues_nothing(xnat_server, xnat_cfg):
    plans = _plans(3)
    _on_pacs(xnat_server, plans)
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
    assert len(xnat_server.dqr_import_calls) == 1 and len(xnat_server.dqr_query_calls) == 1


def test_persistent_problem_answers_fail_each_study_transiently(xnat_server, xnat_cfg):
    plans = _plans(2)
    _on_pacs(xnat_server, plans)
    xnat_server.dqr_problem_answers = 100
    cfg = xnat_cfg("xnat-dqr", **{"store.xnat.dqr_retries": 3})  # DQR's own retry budget
    store = open_store(cfg)
    try:
        results = store.put_studies([(p, []) for p in plans])
    finally:
        store.close()
    for p, r in zip(plans, results):
        assert isinstance(r, StoreUnavailable)
        assert p.study.study_uid in str(r) and "There was a problem" in str(r) and xnat_server.url in str(r)
    assert len(xnat_server.dqr_query_calls) == 0  # never got past the retries
    assert xnat_server.count("POST", r"^/xapi/dqr/query/batch$") == 4  # 1 + 3 retries
    recs = json.loads(next((cfg.state_dir / "dqr-failures").glob("*.json")).read_text())
    assert [r["studyInstanceUid"] for r in recs] == [p.study.study_uid for p in plans]


def test_queue_that_does_not_settle_is_transient(xnat_server, xnat_cfg):
    plans = _plans(2)
    _on_pacs(xnat_server, plans)
    xnat_server.dqr_stuck_uids.add(plans[0].study.study_uid)
    store = open_store(xnat_cfg("xnat-dqr", **{"store.xnat.dqr_wait_seconds": 0.3}))
    store.poll_seconds = 0.05
    try:
        results = store.put_studies([(p, []) for p in plans])
    finally:
        store.close()
    assert isinstance(results[0], StoreUnavailable) and "status QUEUED" in str(results[0])
    assert isinstance(results[1], StoredSession)


def test_server_error_on_import_and_expired_session(xnat_server, xnat_cfg):
    plans = _plans(2)
    _on_pacs(xnat_server, plans)
    xnat_server.add_fault("POST", r"^/xapi/dqr/import$", status=502, body="bad gateway", times=1)
    store = open_store(xnat_cfg("xnat-dqr"))
    try:
        store.archive.ensure_project()
        xnat_server.expire_sessions()
        results = store.put_studies([(p, []) for p in plans])
        assert store.client.logins == 2
    finally:
        store.close()
    assert all(isinstance(r, StoredSession) for r in results)


def test_put_study_raises_the_failure(xnat_server, xnat_cfg):
    plans = _plans(1)
    store = open_store(xnat_cfg("xnat-dqr"))
    try:
        with pytest.raises(StoreError, match="NOT_FOUND"):
            store.put_study(plans[0], [])
    finally:
        store.close()
