"""The update run end to end on the embedded default: folder PACS → criteria → lake + catalog → outbox.

Runs go through the real `rtlake` CLI in a subprocess where a crash or an exit code matters,
and through `run_update` where the catalog is inspected.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from ingest.config import load_config
from ingest.run import run_update
from tests.run_compare import lake_tree, snapshot

RTLAKE = [sys.executable, "-m", "ingest.cli"]

def rtlake(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*RTLAKE, *args], capture_output=True, text=True, env={**os.environ, **(env or {})},
                          cwd=cwd, timeout=300)


def test_update_builds_lake_catalog_and_outbox(fresh_demo):
    cfg = load_config(fresh_demo.config)
    summary = run_update(cfg, show_progress=False)
    c = summary.counts
    assert c["ingested"] > 0 and c["files"] > 0
    assert c["included"] > 0 and c["excluded"] > 0 and c["review"] > 0
    assert c["verification_skipped"] == 2 and c["placeholder_skipped"] >= 1
    assert summary.status == "partial"  # the demo PACS holds two deliberately broken files
    assert c["deceased_skipped"] == sum(p.deceased for p in fresh_demo.patients)

    con = duckdb.connect(str(cfg.catalog_path), read_only=True)
    # every included study is stored, with a session folder of DICOM files and a manifest
    assert con.execute("SELECT count(*) FROM studies_seen WHERE decision='include' AND state<>'ingested'"
                       ).fetchone()[0] == 0
    for loc, n_files in con.execute("SELECT location, n_files FROM sessions WHERE state='stored'").fetchall():
        assert (Path(loc) / "session.json").is_file()
        assert len(list(Path(loc).glob("scans/*/*.dcm"))) == n_files
    # subjects are NHS numbers or NN_<hospital id>; deceased patients were never queried
    for p in fresh_demo.patients:
        rows = con.execute("SELECT DISTINCT subject FROM sessions WHERE hospital_id = ?", [p.hospital_id]).fetchall()
        if p.deceased:
            assert con.execute("SELECT count(*) FROM studies_seen WHERE hospital_id=?", [p.hospital_id]
                               ).fetchone()[0] == 0
        for (subject,) in rows:
            assert subject == (p.nhs_number or f"NN_{p.hospital_id}")
    # RT sessions carry the RT label; others the accession number
    for label, acc, mod in con.execute("SELECT label, accession, modality FROM sessions").fetchall():
        if mod.startswith("RT") or "_RT_" in label:
            assert "_RT_" in label
        elif acc:
            assert label == acc
    # verification studies were seen and skipped, never stored
    assert con.execute("SELECT count(*) FROM studies_seen WHERE decision='skip_verification' AND state='skipped'"
                       ).fetchone()[0] == 2
    for root in ("1.2.246.352.71.1.658820455611.", "1.2.246.352.71.1.850931706547."):
        assert con.execute("SELECT count(*) FROM sessions WHERE starts_with(study_uid, ?)", [root]).fetchone()[0] == 0
    # ...while the RT planning studies under ARIA's general root are real RT data and are stored
    rt_uids = {s.study_uid for p in fresh_demo.patients for s in p.studies if s.category == "rt" and not p.deceased}
    stored = {r[0] for r in con.execute("SELECT study_uid FROM sessions WHERE state='stored'").fetchall()}
    assert rt_uids and rt_uids <= stored
    # placeholder-dated studies are recorded with their own decision, never stored
    ph = {s.study_uid for p in fresh_demo.patients for s in p.studies if s.placeholder and not p.deceased}
    seen_ph = dict(con.execute("SELECT study_uid, decision FROM studies_seen WHERE study_uid IN "
                               f"({', '.join('?' for _ in ph)})", list(ph)).fetchall())
    assert seen_ph and set(seen_ph.values()) == {"skip_placeholder"}
    assert not ph & stored
    # the two broken files are failures with a reason, naming the file
    bad = con.execute("SELECT target, reason FROM failures WHERE stage='index'").fetchall()
    assert len(bad) == 2 and all(reason for _, reason in bad)
    con.close()
    xlsx = list(Path(cfg.report.outbox).glob("*.xlsx"))
    csvs = list(Path(cfg.report.outbox).glob("*.csv"))
    assert xlsx and csvs


def test_second_run_is_idempotent(fresh_demo):
    cfg = load_config(fresh_demo.config)
    run_update(cfg, show_progress=False)
    before_tables = snapshot(cfg.catalog_path)
    before_lake = lake_tree(cfg.store.lake.path)
    again = run_update(cfg, show_progress=False)
    assert again.counts["new_studies"] == 0
    assert again.counts["files"] == 0 and again.counts["ingested"] == 0
    assert snapshot(cfg.catalog_path) == before_tables
    assert lake_tree(cfg.store.lake.path) == before_lake


def test_new_study_arrives_between_runs(fresh_demo):
    cfg = load_config(fresh_demo.config)
    first = run_update(cfg, show_progress=False)
    # a new MR for an existing patient lands on the PACS (copy a stored study under new UIDs)
    import pydicom
    from pydicom.uid import generate_uid

    con = duckdb.connect(str(cfg.catalog_path), read_only=True)
    loc, hid = con.execute("SELECT location, hospital_id FROM sessions WHERE state='stored' AND modality='MR' "
                           "ORDER BY study_uid LIMIT 1").fetchone()
    con.close()
    new_study = generate_uid()
    import datetime as dt

    for i, f in enumerate(sorted(Path(loc).glob("scans/*/*.dcm"))):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID = new_study
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.AccessionNumber = "NEWACC0001"
        ds.StudyDate = dt.date.today().strftime("%Y%m%d")
        ds.StudyDescription = "MRI Neck"
        (fresh_demo.pacs / "incoming").mkdir(exist_ok=True)
        ds.save_as(fresh_demo.pacs / "incoming" / f"new-{i}.dcm")
    second = run_update(cfg, show_progress=False)
    assert second.counts["new_studies"] == 1
    assert second.counts["ingested"] == 1
    assert first.counts["ingested"] > 1
    con = duckdb.connect(str(cfg.catalog_path), read_only=True)
    assert con.execute("SELECT label FROM sessions WHERE study_uid = ?", [new_study]).fetchone()[0] == "NEWACC0001"
    con.close()


@pytest.fixture(scope="module")
def reference_run(demo_cohort, tmp_path_factory):
    """The demo cohort updated once without interruption: what every resumed run must equal."""
    root = tmp_path_factory.mktemp("reference") / "demo"
    shutil.copytree(demo_cohort.root, root)
    ref = rtlake("update", "-c", str(root / "rtlake.toml"), "--no-progress")
    assert ref.returncode == 3, ref.stderr
    return load_config(root / "rtlake.toml")


KILL_POINTS = ["ingest.file=9", "ingest.stored=4", "ingest.recorded=6", "harvest.patient=3", "report.write=1"]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_and_resume_matches_uninterrupted_run(fresh_demo, reference_run, point):
    killed = rtlake("update", "-c", str(fresh_demo.config), "--no-progress", env={"RTLAKE_FAILPOINTS": point})
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
    resumed = rtlake("update", "-c", str(fresh_demo.config), "--no-progress")
    assert resumed.returncode == 3, resumed.stderr

    cfg = load_config(fresh_demo.config)
    assert snapshot(cfg.catalog_path) == snapshot(reference_run.catalog_path)
    assert lake_tree(cfg.store.lake.path) == lake_tree(reference_run.store.lake.path)  # no temp left, none missing
    out = sorted(p.name for p in Path(cfg.report.outbox).iterdir())
    assert out == sorted(p.name for p in Path(reference_run.report.outbox).iterdir())
    assert not any(n.startswith(".tmp-") for n in out)


def test_corrupt_dicom_recorded_and_run_continues(fresh_demo):
    victim = sorted(fresh_demo.pacs.rglob("*.dcm"))[5]
    victim.write_bytes(victim.read_bytes()[:300])  # truncate a good file
    cfg = load_config(fresh_demo.config)
    summary = run_update(cfg, show_progress=False)
    assert summary.counts["ingested"] > 0
    con = duckdb.connect(str(cfg.catalog_path), read_only=True)
    rows = con.execute("SELECT reason FROM failures WHERE stage='index' AND target = ?", [str(victim)]).fetchall()
    con.close()
    assert len(rows) == 1 and rows[0][0]


def test_blank_and_bad_nhs_rows_become_nn_subjects_and_failures(fresh_demo):
    text = fresh_demo.cohort.read_text().splitlines()
    first = text[1].split(",")
    text[1] = f"{first[0]},123456789"  # 9 digits: wrong
    fresh_demo.cohort.write_text("\n".join(text) + "\n")
    cfg = load_config(fresh_demo.config)
    run_update(cfg, show_progress=False)
    con = duckdb.connect(str(cfg.catalog_path), read_only=True)
    subject = con.execute("SELECT subject FROM patients WHERE hospital_id = ?", [first[0]]).fetchone()[0]
    reasons = [r[0] for r in con.execute("SELECT target || ' ' || reason FROM failures WHERE stage='inputs'"
                                         ).fetchall()]
    con.close()
    assert subject == f"NN_{first[0]}"
    assert any(":2 " in r and "9 digits" in r for r in reasons)
    assert not any("123456789" in r for r in reasons)  # the bad value itself is not echoed


def test_bad_config_names_key_and_file(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[store]\nkind = "lake"\n[store.lake]\npaht = "x"\n[source]\nkind = "ftp"\n')
    r = rtlake("update", "-c", str(cfg), "--no-progress")
    assert r.returncode == 2
    assert "bad.toml" in r.stderr
    assert "store.lake.paht" in r.stderr and "unknown key" in r.stderr
    assert "source.kind" in r.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[project\nname=1")
    r = rtlake("check-config", str(broken))
    assert r.returncode == 2 and "not valid TOML" in r.stderr


def test_second_concurrent_run_is_refused(fresh_demo):
    from ingest.errors import RunLocked
    from ingest.lock import run_lock

    cfg = load_config(fresh_demo.config)
    with run_lock(cfg.state_dir):
        r = rtlake("update", "-c", str(fresh_demo.config), "--no-progress")
        assert r.returncode == 5 and "another rtlake run" in r.stderr
        with pytest.raises(RunLocked):
            run_update(cfg, show_progress=False)


def test_pseudonymisation_preconditions_refused_before_any_work(fresh_demo, tmp_path):
    text = fresh_demo.config.read_text() + '\n[pseudo]\nenabled = true\nkey_env = "RTLAKE_TEST_NO_SUCH_KEY"\n'
    fresh_demo.config.write_text(text)
    r = rtlake("update", "-c", str(fresh_demo.config), "--no-progress", env={"RTLAKE_TEST_NO_SUCH_KEY": ""})
    assert r.returncode == 2 and "RTLAKE_TEST_NO_SUCH_KEY" in r.stderr
    assert not (fresh_demo.root / "lake").exists()  # nothing was touched
    fresh_demo.config.write_text(text.replace('kind = "lake"', 'kind = "xnat-dqr"'))
    r = rtlake("update", "-c", str(fresh_demo.config), "--no-progress",
               env={"RTLAKE_TEST_NO_SUCH_KEY": "k" * 40})
    assert r.returncode == 2 and "xnat-dqr" in r.stderr
