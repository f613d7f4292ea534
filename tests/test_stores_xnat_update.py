"""`rtlake update --store xnat|xnat-dqr` on the demo cohort, against the XNAT emulator."""

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
    cfg.write_text(cfg.read_text() + f'\n[store.xnat]\nurl = "{url}"\ndqr_wait_seconds = 5.0\ndqr_retries = 2\ndqr_backoff_seconds = 0.01\n{extra}'
                   '\n[source.transfer]\nretries = 2\nbackoff_seconds = 0.01\n')
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


def test_update_in_dqr_mode_records_xnat_failures(fresh_demo, xnat_server, xnat_env):
    # XNAT's PACS holds the demo studies; two of them XNAT cannot pull.
    seen: dict[str, pydicom.Dataset] = {}
    for f in sorted(Path(fresh_demo.pacs).rglob("*")):
        if not f.is_file():
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - the demo's deliberately broken files
            continue
        seen.setdefault(str(ds.StudyInstanceUID), ds)
    for uid, ds in seen.items():
        xnat_server.add_pacs_study(uid, str(ds.get("AccessionNumber", "")), str(ds.PatientID),
                                   str(ds.get("StudyDate", "")), str(ds.get("StudyDescription", "")),
                                   (str(ds.get("Modality", "")),), study_id=str(ds.get("StudyID", "")))
    failing = set(sorted(seen)[::3])  # XNAT cannot pull every third study
    xnat_server.dqr_fail_uids.update(failing)
    cfg = _configure(fresh_demo, xnat_server.url, "import_batch = 3\n")
    proc = _update(cfg, "xnat-dqr")
    assert proc.returncode == 3, proc.stderr[-3000:]  # 3 = partial: the demo PACS has two broken files
    queued = [u for call in xnat_server.dqr_import_calls for u in call]
    assert queued and all(len(c) <= 3 for c in xnat_server.dqr_import_calls)
    state = Path(fresh_demo.root) / "state"
    cat = Catalog(state / "catalog.duckdb", read_only=True)
    try:
        stored = {r["study_uid"] for r in cat.query_dicts("SELECT study_uid FROM sessions WHERE state='stored'")}
        fails = {r["study_uid"]: r["reason"] for r in cat.query_dicts(
            "SELECT study_uid, reason FROM failures WHERE stage = 'store'")}
    finally:
        cat.close()
    expected_fail = set(queued) & failing
    assert expected_fail, "the cohort should select at least one failing study"
    assert stored == set(queued) - failing
    assert set(fails) == expected_fail
    assert all("status FAILED" in r for r in fails.values())
    for uid in stored:
        assert any(e.uid == uid for e in xnat_server.experiments.values())
    records = [r for p in sorted((state / "dqr-failures").glob("*.json")) for r in json.loads(p.read_text())]
    assert {r["studyInstanceUid"] for r in records} == expected_fail

    # a second run queues nothing new
    calls = len(xnat_server.dqr_import_calls)
    proc = _update(cfg, "xnat-dqr")
    assert proc.returncode == 3, proc.stderr[-3000:]  # 3 = partial: the demo PACS has two broken files
    assert [u for c in xnat_server.dqr_import_calls[calls:] for u in c if u not in failing] == []


@pytest.mark.slow
def test_update_in_dqr_mode_failures_land_in_catalog_and_json(fresh_demo, xnat_server, xnat_env):
    # Nothing is on XNAT's PACS except one study: every other selected study fails NOT_FOUND,
    # and that one fails during the transfer.
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
