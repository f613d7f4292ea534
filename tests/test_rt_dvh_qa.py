"""Every convert checks its DVHs against the TPS's stored ones, and a periodic convert never
skips a new course.

Scenarios, from how real data misbehaves:
* a structure edited after the dose was calculated: its stored DVH is 5 % too large while the
  others agree → one warning row in the catalog, a "stale" hint, SUCCESS all the same;
* the TPS re-exports the dose with a corrected DVH (a new SOPInstanceUID) → the patient is
  converted again by the next periodic run and the warning is resolved; an unchanged patient
  is skipped and its open warning stays open (never silently dropped);
* a patient whose RT course arrives after a first convert (NO_RT then) is converted;
* the DVHs sit in a separate, pixel-less RTDOSE next to the dose (a companion file);
* the dose is linked by frame of reference only (no plan): the DVHs' ROI numbers cannot be
  mapped, so there is no check, and the notes say why.
Expected values are the hand volumes of tests/fixtures/rt.tps_box_cc and the 30 Gy dose.
"""

from __future__ import annotations

import copy
import csv
import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from ingest.cli import app
from ingest.rt.convert import ConvertOptions, PatientJob, convert_patient
from tests.fixtures.rt import QA_BOXES, add_stored_dvhs, qa_course, small_phantom, stored_dvh_item


def _cli(*args):
    return CliRunner().invoke(app, list(args))


def _failures(state: Path):
    con = duckdb.connect(str(state / "catalog.duckdb"), read_only=True)
    try:
        return con.execute("SELECT target, reason, error_type, resolved_run FROM failures WHERE stage = 'rt' "
                           "ORDER BY target").fetchall()
    finally:
        con.close()


def test_qa_warnings_fingerprints_and_late_courses(tmp_path):
    root = tmp_path / "in"
    course = qa_course(root / "QA", "QA")
    late = small_phantom(tmp_path / "late-src", "LATE")
    (root / "LATE").mkdir(parents=True)
    for f in late.files["CT"]:
        shutil.copy(f, root / "LATE" / f.name)  # only the diagnostic CT so far
    cfg = tmp_path / "rtlake.toml"
    cfg.write_text('[project]\nstate_dir = "state"\n[rt]\noutput = "out"\n')
    out = tmp_path / "out"

    r1 = _cli("rt", "convert", "-c", str(cfg), "--input", str(root), "--serial", "--no-progress")
    assert r1.exit_code == 0, r1.output
    assert "1 converted" in r1.output and "1 without RT data" in r1.output
    assert "1 structure(s) outside tolerance" in r1.output
    notes = json.loads((out / "QA" / "notes.json").read_text())
    assert notes["status"] == "SUCCESS" and notes["patientimagingfilesready"] is True  # a warning, not a failure
    qa = notes["dvh_qa"]
    assert qa["method"] == "tps" and qa["stated_scale"] == "% of the 60 Gy prescription"
    assert qa["compared"] == 5 and qa["failed"] == 1 and "stale" in qa["hint"] and "Stale" in qa["hint"]
    by = {r["roi"]: r for r in qa["structures"]}
    for name, _c, _a, _b, _p in QA_BOXES:
        r = by[name]
        if name == "Stale":
            assert r["status"] == "fail" and r["passed"]["volume_cc"] is False
            assert abs(r["diff_pct"]["volume_cc"] - 100 * (1 / 1.05 - 1)) < 0.1
            assert all(r["passed"][m] for m in ("mean_gy", "d95_gy", "d2_gy", "max_gy"))
        else:
            assert r["status"] == "pass", (name, r)
            assert abs(r["ours"]["volume_cc"] / course["truth"][name] - 1) < 1e-3  # the hand volume
        assert abs(r["ours"]["mean_gy"] - 30.0) < 1e-4 and abs(r["tps"]["mean_gy"] - 30.0) < 1e-9
    assert any("ROI 9" in x for x in qa["not_compared"]) and any("composite" in x for x in qa["not_compared"])
    assert [n["code"] for n in notes["notes"] if n["roi"] == "Stale"] == ["DVH_WARN_001"]
    plan = notes["linkage"]["plan"]
    assert plan["prescription_gy"] == 60.0 and plan["fractions"] == 30 and plan["name"] == "Boost"

    with open(out / "dvh_qa.csv", newline="") as fh:  # the cohort file
        rows = list(csv.DictReader(fh))
    assert [(r["patient"], r["roi"], r["status"]) for r in rows] == [
        ("QA", n, "fail" if n == "Stale" else "pass") for n, *_ in QA_BOXES]
    page = (out / "QA" / "report.html").read_text()
    assert "60 Gy (DoseReferenceSequence: PTV)" in page and "30 × 2 Gy" in page and "APPROVED" in page
    assert "Dose summation</th><td style='text-align:left'>PLAN" in page
    assert "<td class='EXCLUDE'>fail</td>" in page and page.count("<td class='PROCEED'>pass</td>") == 4

    fails = _failures(tmp_path / "state")
    warn = [f for f in fails if f[2] == "DVH_WARN_001"]
    assert len(warn) == 1 and warn[0][0].endswith(":Stale") and warn[0][3] is None
    assert "volume_cc ours" in warn[0][1]
    assert not any(f[0].startswith("QA") or "LATE" in f[0] for f in fails)  # NO_RT is not a failure

    # The course arrives for LATE; QA is unchanged: LATE converts, QA is skipped, its warning stays open.
    for key in ("RTSTRUCT", "RTPLAN", "RTDOSE"):
        for f in late.files[key]:
            shutil.copy(f, root / "LATE" / f.name)
    r2 = _cli("rt", "convert", "-c", str(cfg), "--input", str(root), "--serial", "--no-progress")
    assert r2.exit_code == 0, r2.output
    assert "1 converted" in r2.output and "1 skipped" in r2.output
    assert json.loads((out / "LATE" / "notes.json").read_text())["status"] == "SUCCESS"
    assert [f for f in _failures(tmp_path / "state") if f[2] == "DVH_WARN_001"] == warn

    # The TPS re-exports the dose with the corrected DVH: a new instance, so QA is converted again.
    rd = Path(course["set"].files["RTDOSE"][0])
    items = [stored_dvh_item(k + 1, course["truth"][n], 30.0, 60.0) for k, (n, *_r) in enumerate(QA_BOXES)]
    add_stored_dvhs(rd, items, new_uid=generate_uid())
    r3 = _cli("rt", "convert", "-c", str(cfg), "--input", str(root), "--serial", "--no-progress")
    assert r3.exit_code == 0, r3.output
    assert "1 converted" in r3.output and "1 skipped" in r3.output and "outside tolerance" not in r3.output
    notes = json.loads((out / "QA" / "notes.json").read_text())
    assert notes["dvh_qa"]["failed"] == 0 and notes["inputs"]["changed"] is True
    assert any(n["code"] == "DVH_SUCC_002" for n in notes["notes"])
    after = [f for f in _failures(tmp_path / "state") if f[2] == "DVH_WARN_001"]
    assert len(after) == 1 and after[0][3] is not None  # resolved by the third run


def test_voxel_method_is_checked_too_and_misses_the_tps_volumes(tmp_path):
    course = qa_course(tmp_path / "in", "V", stale_factor=1.0)
    res = convert_patient(PatientJob("V", course["files"], str(tmp_path / "out")),
                          ConvertOptions(previews=False, html=False, dvh_method="voxel"))
    notes = json.loads((tmp_path / "out" / "V" / "notes.json").read_text())
    assert res.status == "SUCCESS" and notes["dvh_qa"]["method"] == "voxel"
    # the slab convention counts half a slab too much at each end: the few-plane boxes fail the TPS check
    failed = {r["roi"] for r in notes["dvh_qa"]["structures"] if r["status"] == "fail"}
    assert {"BoxA", "BoxC", "BoxD"} <= failed  # +6 … +67 % against the TPS solid
    with open(tmp_path / "out" / "V" / "dvh.csv", newline="") as fh:
        assert {r["dvh_method"] for r in csv.DictReader(fh)} == {"voxel"}


def test_dvhs_in_a_companion_rtdose(tmp_path):
    """Some exports put the DVHs in a second RTDOSE without a dose grid: it is used, and it is
    not a second dose competing for the course."""
    course = qa_course(tmp_path / "in", "C", stale_factor=1.0)
    rd = Path(course["set"].files["RTDOSE"][0])
    ds = pydicom.dcmread(rd)
    companion = copy.deepcopy(ds)
    del ds.DVHSequence
    ds.save_as(rd)
    for tag in ("PixelData", "Rows", "Columns", "NumberOfFrames", "GridFrameOffsetVector", "FrameIncrementPointer",
                "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
                "PhotometricInterpretation", "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient"):
        if tag in companion:
            delattr(companion, tag)
    companion.SOPInstanceUID = companion.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    companion.save_as(tmp_path / "in" / "RD_DVH.dcm")
    res = convert_patient(PatientJob("C", course["files"] + [str(tmp_path / "in" / "RD_DVH.dcm")], str(tmp_path / "out")),
                          ConvertOptions(previews=False, html=False))
    notes = json.loads((tmp_path / "out" / "C" / "notes.json").read_text())
    assert res.status == "SUCCESS", res.failures
    assert notes["linkage"]["images_summary"]["number_of_DVH_only_RTDOSE_instances"] == 1
    assert notes["dvh_qa"]["source_rtdose"] == companion.SOPInstanceUID
    assert notes["dvh_qa"]["compared"] == 5 and notes["dvh_qa"]["failed"] == 0


def test_no_plan_no_mapping_no_check(tmp_path):
    course = qa_course(tmp_path / "in", "N", stale_factor=1.0)
    files = [f for f in course["files"] if not f.endswith("RP.dcm")]
    res = convert_patient(PatientJob("N", files, str(tmp_path / "out")), ConvertOptions(previews=False, html=False))
    notes = json.loads((tmp_path / "out" / "N" / "notes.json").read_text())
    assert res.status == "SUCCESS" and notes["dvh_qa"] == {}
    msgs = [n["message"] for n in notes["notes"] if n["code"] == "DVH_WARN_003"]
    assert msgs and "cannot be mapped" in msgs[0]


def test_a_removed_structure_leaves_no_stale_mask(tmp_path):
    ps = small_phantom(tmp_path / "in", "R")
    files = [str(p) for fs in ps.files.values() for p in fs]
    opts = ConvertOptions(html=False)
    assert convert_patient(PatientJob("R", files, str(tmp_path / "out")), opts).status == "SUCCESS"
    folder = tmp_path / "out" / "R"
    assert (folder / "masks" / "Box.nii.gz").is_file() and (folder / "previews" / "Box.png").is_file()
    rs = pydicom.dcmread(ps.files["RTSTRUCT"][0])  # the structure set is re-approved without "Box"
    keep = [r for r in rs.StructureSetROISequence if r.ROIName != "Box"]
    num = {int(r.ROINumber) for r in keep}
    rs.StructureSetROISequence = keep
    rs.ROIContourSequence = [c for c in rs.ROIContourSequence if int(c.ReferencedROINumber) in num]
    rs.RTROIObservationsSequence = [o for o in rs.RTROIObservationsSequence if int(o.ReferencedROINumber) in num]
    rs.save_as(ps.files["RTSTRUCT"][0])
    assert convert_patient(PatientJob("R", files, str(tmp_path / "out")), opts).status == "SUCCESS"
    notes = json.loads((folder / "notes.json").read_text())
    assert not (folder / "masks" / "Box.nii.gz").exists() and not (folder / "previews" / "Box.png").exists()
    assert sorted(notes["outputs"]["removed_stale"]) == ["masks/Box.nii.gz", "previews/Box.png"]
    assert (folder / "masks" / "Sphere.nii.gz").is_file()


def test_preview_shows_the_dose():
    from ingest.rt import phantoms as P
    from ingest.rt.previews import preview_png
    from ingest.rt.rasterise import rasterise_roi
    from tests.test_rt_tps_analytic import roi_of

    g = P.ct_grid(shape=(10, 48, 48), spacing=(1.0, 1.0, 2.0))
    sh = P.sphere(g, "S", [0.0, 0.0, 0.0], 8.0, n_points=64)
    roi = roi_of(sh)
    m = rasterise_roi(roi, g)
    hu = np.zeros(g.shape, np.int16)
    jj = np.arange(48)[np.newaxis, np.newaxis, :]
    dose = np.broadcast_to(60.0 * jj / 47.0, g.shape).astype(np.float32)  # 0 … 60 Gy left to right
    import io

    from matplotlib.image import imread

    plain = imread(io.BytesIO(preview_png(hu, g, roi, m)))
    washed = imread(io.BytesIO(preview_png(hu, g, roi, m, dose_on_ct=dose, ref_gy=60.0)))
    # without dose: grey CT and a red mask only; with it, the jet colour wash (blue/green/yellow) appears
    bluish = lambda img: np.mean((img[..., 2] > img[..., 0] + 0.15) & (img[..., 2] > img[..., 1]))  # noqa: E731
    assert bluish(plain) < 0.001 and bluish(washed) > 0.02


def test_cli_dvh_method_choices_match_the_converter():
    import typing

    from ingest.rt.cli import DvhMethod
    from ingest.rt.convert import DVH_METHODS

    assert typing.get_args(DvhMethod) == DVH_METHODS
    bad = _cli("rt", "convert", "--dvh-method", "slab")
    assert bad.exit_code == 2
