"""Agreement with Eclipse on two public Eclipse exports (tests/data/rt_eclipse).

Eclipse's figures come from its own outputs, read independently of the code under test
(tests/fixtures/rt.py: the prostate's exported DVH table, the breast's DVHSequence). The
targets are the issue's: structures ≥ 1 cc within 1 % volume and 0.5 % mean dose, sub-cc
within 10 % volume. The measured figures (docs/rt.md) are tighter; the assertions below also
hold the method to them within a margin, so a regression shows before a target is missed.
The voxel method (plastimatch's masks) is checked to miss the volume target on several
structures: that is why the TPS method is the default.
"""

from __future__ import annotations

import pytest

from ingest.rt.dvh import DoseSamples  # noqa: F401 - documents what the rows hold
from ingest.rt.dvh_qa import QaTolerances, compare_structure
from ingest.rt.dvh_tps import tps_samples
from ingest.rt.contours import read_structure_set
from ingest.rt.tps_reference import read_stored_dvhs
from tests.fixtures.rt import eclipse_agreement, eclipse_breast


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return eclipse_agreement("prostate", tmp_path_factory.mktemp("p")) + eclipse_agreement("breast", tmp_path_factory.mktemp("b"))


def _pct(a, b):
    return 100 * (a / b - 1)


def test_tps_method_meets_the_eclipse_targets(rows):
    assert len(rows) == 6 + 9
    for r in rows:
        e, t = r["eclipse"], r["tps"]
        dv, dm = _pct(t["volume_cc"], e["volume_cc"]), _pct(t["mean_gy"], e["mean_gy"])
        if e["volume_cc"] >= 1.0:
            assert abs(dv) <= 1.0 and abs(dm) <= 0.5, (r["case"], r["roi"], dv, dm)
            assert abs(dv) <= 0.5 and abs(dm) <= 0.25, (r["case"], r["roi"], dv, dm)  # measured: 0.37 % / 0.17 %
        else:
            assert abs(dv) <= 10.0 and abs(dm) <= 10.0, (r["case"], r["roi"], dv, dm)
            assert abs(dv) <= 4.0, (r["case"], r["roi"], dv)  # measured: −1.7 … +2.6 %
        rel = 0.01 if e["volume_cc"] >= 1.0 else 0.10
        for m in ("d95_gy", "d2_gy"):
            assert abs(t[m] - e[m]) <= max(rel * abs(e[m]), 0.05 + e["bin_gy"]), (r["roi"], m, t[m], e[m])
        limit = 2.0 if e["volume_cc"] >= 1.0 else 10.0
        assert abs(_pct(t["max_gy"], e["max_gy"])) <= limit, (r["roi"], t["max_gy"], e["max_gy"])


def test_voxel_method_misses_the_volume_target_where_the_tps_method_does_not(rows):
    big = [r for r in rows if r["eclipse"]["volume_cc"] >= 1.0]
    voxel_misses = [r["roi"] for r in big if abs(_pct(r["voxel"]["volume_cc"], r["eclipse"]["volume_cc"])) > 1.0]
    assert {"PTV", "Rectum", "Tumor Bed", "Tumor Bed Block", "Breast"} <= set(voxel_misses)
    small = [r for r in rows if r["eclipse"]["volume_cc"] < 1.0]
    assert all(_pct(r["voxel"]["volume_cc"], r["eclipse"]["volume_cc"]) > 15 for r in small)  # +17 … +76 %


def test_default_qa_tolerances_pass_every_structure_of_the_real_plan(tmp_path):
    """Defaults must be safe on real data: the breast plan's own DVHs raise no warning."""
    import pydicom

    case = eclipse_breast(tmp_path)
    stored = read_stored_dvhs(pydicom.dcmread(case["rtdose_header"]), [14.0])
    tol = QaTolerances()
    rows = []
    for roi in read_structure_set(case["rtss"]).rois:
        if roi.number not in stored.dvhs:
            continue
        ts = tps_samples(roi, case["grid"], case["dose"])
        mx = max(x for x in (ts.grid_max_gy, ts.dose_samples().hi) if x is not None)
        rows.append(compare_structure(roi.name, roi.number, ts.dose_samples(), stored.dvhs[roi.number], tol, mx))
    assert len(rows) == 9
    assert [r.roi for r in rows if r.status != "pass"] == [], [(r.roi, r.summary()) for r in rows if r.status != "pass"]
    # and a tolerance tightened far below what two correct calculations can agree to does fail, naming the metric
    strict = QaTolerances(volume_pct=0.01, mean_pct=0.01, dose_pct=0.01, max_pct=0.01, small_pct=0.01, dose_abs_gy=0.0)
    lung = next(r for r in read_structure_set(case["rtss"]).rois if r.name == "Lt Lung")
    ts = tps_samples(lung, case["grid"], case["dose"])
    row = compare_structure(lung.name, lung.number, ts.dose_samples(), stored.dvhs[lung.number], strict, ts.grid_max_gy)
    assert row.status == "fail" and "volume_cc" in row.failed and "ours" in row.summary()


def test_rt_convert_on_the_real_eclipse_plan_checks_itself_against_eclipse(tmp_path):
    """The whole `rtlake rt convert` on the breast plan (its CT rebuilt from the plan's geometry):
    the course links, the DVHs come from the TPS method, and every structure passes the check
    against the DVHs Eclipse stored in the RTDOSE (~10 s: uncompressed, no previews)."""
    import csv
    import json

    from typer.testing import CliRunner

    from ingest.cli import app
    from tests.fixtures.rt import write_eclipse_breast_course

    write_eclipse_breast_course(tmp_path / "in" / "BREAST")
    cfg = tmp_path / "rtlake.toml"
    cfg.write_text('[project]\nstate_dir = "state"\n[rt]\noutput = "out"\n')
    r = CliRunner().invoke(app, ["rt", "convert", "-c", str(cfg), "--input", str(tmp_path / "in"), "--serial",
                                 "--no-progress", "--no-previews", "--no-compress"])
    assert r.exit_code == 0, r.output
    notes = json.loads((tmp_path / "out" / "BREAST" / "notes.json").read_text())
    assert notes["status"] == "SUCCESS", [n for n in notes["notes"] if n["outcome"] != "PROCEED"]
    # Eclipse rounds contour z to 0.01 mm (168.56 vs the CT's 168.5593): within the plane tolerance, so no warning
    assert [n["roi"] for n in notes["notes"] if n["outcome"] == "WARN"] == []
    qa = notes["dvh_qa"]
    assert qa["stated_scale"] == "% of the 14 Gy prescription" and qa["compared"] == 9 and qa["failed"] == 0, qa
    assert notes["linkage"]["plan"]["label"] == "B1" and notes["linkage"]["plan"]["fractions"] == 7
    with open(tmp_path / "out" / "dvh_qa.csv", newline="") as fh:
        assert {row["status"] for row in csv.DictReader(fh)} == {"pass"}
