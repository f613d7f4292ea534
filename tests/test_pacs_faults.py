"""Fault injection: ~10 % of requests reset, stall, truncated, 500/503 (HTTP) or dropped/stalled
associations (DIMSE), seeded. Every selected study must end stored complete or recorded with a
reason; nothing is stored twice; the run stays bounded (small idle timeouts and backoff)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ingest.catalog import Catalog
from tests.fixtures.pacs import demo_sops_by_study, run_with_source, sops_by_study
from tests.servers.faultproxy import FaultProxy

FAST = {"source.transfer.retries": 4, "source.transfer.backoff_seconds": 0.05,
        "source.transfer.read_timeout": 1.0, "source.transfer.concurrency": 2}


def _check_outcome(state, demo, proxy):
    assert proxy.injected > 0, proxy.counters
    have = demo_sops_by_study(demo.pacs)
    stored = sops_by_study(state)
    cat = Catalog(state / "state" / "catalog.duckdb", read_only=True)
    try:
        included = [r[0] for r in cat.execute(
            "SELECT study_uid FROM studies_seen WHERE decision = 'include'").fetchall()]
        sessions = dict(cat.execute("SELECT study_uid, state FROM sessions").fetchall())
        failed = {r[0]: r[1] for r in cat.execute(
            "SELECT study_uid, reason FROM failures WHERE study_uid IS NOT NULL AND resolved_run IS NULL").fetchall()}
        unharvested = cat.execute("SELECT count(*) FROM patients WHERE harvested_until IS NULL "
                                  "AND NOT deceased").fetchone()[0]
        harvest_failures = cat.execute("SELECT count(*) FROM failures WHERE stage = 'harvest'").fetchone()[0]
        n_files, n_distinct = cat.execute("SELECT count(*), count(DISTINCT path) FROM files").fetchone()
    finally:
        cat.close()
    assert included
    for uid in included:
        if sessions.get(uid) == "stored":
            assert stored.get(uid) == have.get(uid), f"study {uid} stored incomplete"
        else:
            assert failed.get(uid), f"study {uid} neither stored nor recorded as failed"
    if unharvested:
        assert harvest_failures > 0
    assert n_files == n_distinct == sum(len(v) for v in stored.values())
    lake_files = [p for p in (state / "lake").rglob("*.dcm")]
    assert len(lake_files) == n_files


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind,seed", [("orthanc", 3), ("dicomweb", 5)])
def test_http_faults_lose_no_study(kind, seed, demo_orthanc, tmp_path):
    demo, srv = demo_orthanc
    proxy = FaultProxy()
    port = proxy.start("127.0.0.1", srv.http_port, fault_rate=0.10, seed=seed, stall_seconds=3)
    try:
        via = SimpleNamespace(**{**vars(srv), "url": f"http://127.0.0.1:{port}"})
        state, summary = run_with_source(kind, demo, via, tmp_path, FAST)
    finally:
        proxy.stop()
    _check_outcome(state, demo, proxy)


@pytest.mark.timeout(240)
def test_dimse_faults_lose_no_study(demo_orthanc, tmp_path):
    demo, srv = demo_orthanc
    proxy = FaultProxy()
    port = proxy.start("127.0.0.1", srv.dicom_port, fault_rate=0.10, seed=2, mode="tcp", stall_seconds=3)
    try:
        via = SimpleNamespace(**{**vars(srv), "dicom_port": port})
        state, summary = run_with_source("dimse-get", demo, via, tmp_path, FAST)
    finally:
        proxy.stop()
    _check_outcome(state, demo, proxy)
