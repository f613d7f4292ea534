"""`rtlake update` with [pseudo] enabled on the demo cohort: the lake holds pseudonyms only,
and the mapping table leads back to the patients."""

from __future__ import annotations

import json
import os
import shutil
import stat

import duckdb
import pydicom
import pytest

from ingest.config import load_config
from ingest.pseudo.keys import PseudoKey
from ingest.pseudo.mapping import MappingTable
from ingest.run import run_update

KEY = "rtlake-update-test-key-0123456789"


def _identifiers(patients) -> list[str]:
    out = []
    for p in patients:
        out += [p.hospital_id, p.birth_date.strftime("%Y%m%d")]
        out += [part for part in p.name.split("^") if len(part) >= 3]
        if p.nhs_number:
            out.append(p.nhs_number)
    return out


@pytest.fixture(scope="module")
def pseudo_run(demo_cohort, tmp_path_factory):
    """One update with [pseudo] enabled on a private copy of the demo cohort."""
    root = tmp_path_factory.mktemp("pseudo-update") / "demo"
    shutil.copytree(demo_cohort.root, root, symlinks=True)
    demo = demo_cohort.relocated(root)
    old = os.environ.get("RTLAKE_PSEUDO_KEY")
    os.environ["RTLAKE_PSEUDO_KEY"] = KEY
    try:
        cfg = load_config(demo.config, {"pseudo.enabled": True})
        summary = run_update(cfg, show_progress=False, build_report=False)
        yield demo, cfg, summary
    finally:
        if old is None:
            os.environ.pop("RTLAKE_PSEUDO_KEY", None)
        else:
            os.environ["RTLAKE_PSEUDO_KEY"] = old


def test_update_with_pseudonymisation_fills_the_lake_with_pseudonyms(pseudo_run):
    demo, cfg, summary = pseudo_run
    assert summary.counts["ingested"] > 0 and summary.counts["failed"] == 0
    lake = cfg.store.lake.path
    files = [p for p in lake.rglob("*") if p.is_file()]
    assert any(p.suffix == ".dcm" for p in files)
    idents = _identifiers(demo.patients)
    for p in files:
        rel = str(p.relative_to(lake))
        raw = p.read_bytes()
        for ident in idents:
            assert ident not in rel, f"{ident} in lake path {rel}"
            assert ident.encode() not in raw, f"{ident} in {rel}"
        if p.suffix == ".dcm":
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            assert ds.PatientIdentityRemoved == "YES"
            assert ds.StudyInstanceUID.startswith("2.25.")

    key = PseudoKey(KEY.encode())
    assert stat.S_IMODE(cfg.pseudo.mapping.stat().st_mode) == 0o600
    sessions = [json.loads(p.read_text(encoding="utf-8")) for p in lake.rglob("session.json")]
    assert len(sessions) == summary.counts["ingested"]
    by_subject = {p.subject: p for p in demo.patients}
    with MappingTable(cfg.pseudo.mapping, key.fingerprint, read_only=True) as table:
        for sess in sessions:
            rows = {r["kind"]: r["original"] for r in table.lookup(sess["subject"])}
            assert rows["subject"] in by_subject  # re-identified to the lake's subject label
            assert rows["hospital_id"] == by_subject[rows["subject"]].hospital_id
            assert table.lookup(sess["study_uid"])[0]["kind"] == "uid"


def test_catalog_records_the_pseudonymised_sessions_as_stored(pseudo_run):
    _, cfg, summary = pseudo_run
    con = duckdb.connect(str(cfg.catalog_path), read_only=True)
    states = dict(con.execute("SELECT state, count(*) FROM sessions GROUP BY 1").fetchall())
    con.close()
    assert states.get("planned", 0) == 0
    assert states.get("stored", 0) == summary.counts["ingested"]
