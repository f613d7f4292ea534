"""Cohort runs: `rtlake rt convert` on Dask over good and bad patients, the catalog record,
resuming, and patient discovery from the lake."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb

from ingest.catalog import Catalog
from ingest.records import SessionPlan, StudyRecord
from ingest.rt.cohort import jobs_from_lake, run_serial, write_cohort_dvh
from ingest.rt.convert import ConvertOptions
from tests.fixtures.rt import small_phantom

REPO = Path(__file__).resolve().parents[1]


def _rtlake(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "ingest.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=400)


def _in_process(*args: str):
    from typer.testing import CliRunner

    from ingest.cli import app

    return CliRunner().invoke(app, list(args))


def _patients(out: Path) -> dict[str, dict]:
    with open(out / "patients.csv", newline="") as fh:
        return {r["patient"]: r for r in csv.DictReader(fh)}


def test_cli_convert_cohort_on_dask(rt_cohort_input, tmp_path):
    root, expect = rt_cohort_input["root"], rt_cohort_input["expect"]
    cfg = tmp_path / "rtlake.toml"
    cfg.write_text('[project]\nstate_dir = "state"\n[rt]\noutput = "rt-out"\n')
    out = tmp_path / "rt-out"
    r = _rtlake("rt", "convert", "-c", str(cfg), "--input", str(root), "--workers", "2", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    pts = _patients(out)
    assert {p: row["status"] for p, row in pts.items()} == expect
    assert pts["NOCONTOURS"]["first_problem"].startswith("XIII_EXEC_001")
    assert "XVI_EXEC_002" in pts["NOSCALE"]["first_problem"] and "DoseGridScaling" in pts["NOSCALE"]["first_problem"]
    for p, status in expect.items():
        notes = json.loads((out / p / "notes.json").read_text())
        assert notes["status"] == status and notes["patientimagingfilesready"] is (status == "SUCCESS")
    for p in ("GOOD0", "PHANTOM"):
        for f in ("ct.nii.gz", "dose.nii.gz", "dvh.csv", "report.html"):
            assert (out / p / f).is_file(), (p, f)
    # Cohort DVH: one row per patient × converted ROI with a dose.
    with open(out / "dvh.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    n_expected = sum(int(pts[p]["rois"]) for p, s in expect.items() if s == "SUCCESS")
    assert len(rows) == n_expected > 0
    assert {r["patient"] for r in rows} == {p for p, s in expect.items() if s == "SUCCESS"}

    con = duckdb.connect(str(tmp_path / "state" / "catalog.duckdb"), read_only=True)
    fails = con.execute("SELECT target, reason, error_type FROM failures WHERE stage = 'rt'").fetchall()
    runs = con.execute("SELECT status, counts FROM runs WHERE source = 'rt'").fetchall()
    con.close()
    codes = {e for _, _, e in fails}
    assert {"XVI_EXEC_001", "XVI_EXEC_002", "II_REV_003", "XIII_EXEC_001", "II_EXEC_002"} <= codes
    assert all(reason for _, reason, _ in fails)
    assert runs[0][0] == "done" and json.loads(runs[0][1])["rt_success"] == 4

    # Re-run (serial, in-process): complete conversions with unchanged inputs are skipped; PARTIAL, quarantined and
    # excluded patients are looked at again (the missing dose or decision may have arrived) and give the same
    # failures, which are not new catalog rows.
    r2 = _in_process("rt", "convert", "-c", str(cfg), "--input", str(root), "--no-progress", "--serial")
    assert r2.exit_code == 0, r2.output[-3000:]
    done = sum(1 for s in expect.values() if s == "SUCCESS")
    assert f"{done} skipped" in r2.output and "2 partial, 1 quarantined, 2 excluded" in r2.output
    con = duckdb.connect(str(tmp_path / "state" / "catalog.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM failures WHERE stage = 'rt'").fetchone()[0] == len(fails)
    con.close()
    # --force on one patient converts it again (in this process: the Dask path ran above).
    before = (out / "GOOD0" / "notes.json").stat().st_mtime_ns
    r3 = _in_process("rt", "convert", "-c", str(cfg), "--input", str(root), "--force", "-p", "GOOD0", "--serial",
                     "--masks", "bitmask")
    assert r3.exit_code == 0, r3.output[-3000:]
    assert "1 converted" in r3.output
    assert (out / "GOOD0" / "notes.json").stat().st_mtime_ns > before
    assert (out / "GOOD0" / "masks_bitmask.nii.gz").is_file()


def test_patients_found_in_the_lake_and_catalog(tmp_path):
    from ingest.stores.lake import LakeStore

    lake = LakeStore(tmp_path / "lake")
    cat = Catalog(tmp_path / "catalog.duckdb")
    for n in range(2):
        ps = small_phantom(tmp_path / f"src{n}", f"S{n}")
        study = StudyRecord(ps.uids["study"], f"S{n}", modalities=("CT", "RTSTRUCT", "RTPLAN", "RTDOSE"))
        plan = SessionPlan("RTLAKE", f"SUBJ{n}", f"SUBJ{n}_RT_1", study)
        stored = lake.put_study(plan, [p for fs in ps.files.values() for p in fs])
        if n == 0:  # only the first is in the catalog: discovery must prefer it when present
            cat.execute("INSERT INTO sessions (study_uid, project, subject, label, state) VALUES (?,?,?,?, 'stored')",
                        [study.study_uid, "RTLAKE", "SUBJ0", plan.label])
            for f in stored.files:
                cat.execute("INSERT INTO files VALUES (?,?,?,?,?)", [f.sop_uid, study.study_uid, f.series_uid, f.path, f.size])
    from_catalog = jobs_from_lake(tmp_path / "lake", "RTLAKE", tmp_path / "out", cat)
    assert [j.patient for j in from_catalog] == ["SUBJ0"]
    from_tree = jobs_from_lake(tmp_path / "lake", "RTLAKE", tmp_path / "out", None)
    assert [j.patient for j in from_tree] == ["SUBJ0", "SUBJ1"]
    assert all(len(j.files) == 20 + 3 for j in from_tree)
    cat.close()
    summary = run_serial(from_tree, ConvertOptions(previews=False, html=False, mask_mode="labelmap"))
    assert [r.status for r in summary.results] == ["SUCCESS", "SUCCESS"]
    assert (tmp_path / "out" / "SUBJ1" / "masks_labelmap.nii.gz").is_file()
    dvh = write_cohort_dvh(tmp_path / "out", from_tree)
    assert dvh is not None and len(dvh.read_text().splitlines()) == 1 + 2 * 3


def test_existing_scheduler_address_is_used(tmp_path):
    """`--scheduler ADDRESS`: the cohort goes to a running distributed cluster (here an in-process one)."""
    from dask.distributed import LocalCluster

    from ingest.rt.cohort import jobs_from_folder, run_cohort

    for n in range(2):
        small_phantom(tmp_path / "in" / f"P{n}", f"P{n}")
    jobs = jobs_from_folder(tmp_path / "in", tmp_path / "out")
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        seen = []
        summary = run_cohort(jobs, ConvertOptions(previews=False, html=False), scheduler=cluster.scheduler_address,
                             on_result=lambda r: seen.append(r.patient), progress=True)
        assert "rt" in cluster.scheduler.task_prefixes  # the tasks ran on this cluster's scheduler
    assert sorted(seen) == ["P0", "P1"]
    assert [r.status for r in summary.results] == ["SUCCESS", "SUCCESS"]
