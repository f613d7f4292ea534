"""Linkage (CT → RTSTRUCT → RTPLAN → RTDOSE), CT slice ordering, and per-patient bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pydicom
import pytest

from ingest.rt import phantoms as P
from ingest.rt.convert import ConvertOptions, PatientJob, convert_patient
from ingest.rt.ctseries import read_ct_series
from ingest.rt.linkage import inventory, select_course
from ingest.rt.verify import CODES, RtConversionError
from tests.fixtures.rt import small_phantom


def files_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.dcm"))


def _copy_with_uid(src: Path, dst: Path, **changes) -> pydicom.Dataset:
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID[:60] + ".7"
    for k, v in changes.items():
        setattr(ds, k, v)
    ds.save_as(dst)
    return ds


def test_complete_course_is_linked(tmp_path):
    ps = small_phantom(tmp_path, "P")
    c = select_course(inventory(files_of(tmp_path)))
    assert c.status == "LINKED" and c.code == "II_SUCC_001"
    assert c.struct.sop_uid == ps.uids["rtstruct"] and c.plan.sop_uid == ps.uids["rtplan"]
    assert c.dose is not None and c.dose_code is None


def test_approved_plan_preferred_over_unapproved(tmp_path):
    ps = small_phantom(tmp_path, "P")
    extra = _copy_with_uid(ps.files["RTPLAN"][0], tmp_path / "RP_draft.dcm", ApprovalStatus="UNAPPROVED")
    c = select_course(inventory(files_of(tmp_path)))
    assert c.status == "LINKED" and c.plan.sop_uid == ps.uids["rtplan"] != extra.SOPInstanceUID
    assert any("approved plan" in m for _, m in c.warnings)


def test_two_unapproved_plans_go_to_quarantine(tmp_path):
    ps = small_phantom(tmp_path, "P", plan_approval="UNAPPROVED")
    _copy_with_uid(ps.files["RTPLAN"][0], tmp_path / "RP2.dcm")
    c = select_course(inventory(files_of(tmp_path)))
    assert c.status == "QUARANTINE" and c.code == "II_REV_003" and "2 candidate plans" in c.reason


def test_two_studies_with_courses_go_to_quarantine(tmp_path):
    small_phantom(tmp_path / "a", "P")
    small_phantom(tmp_path / "b", "P2")  # another study (and frame of reference) for the same patient
    c = select_course(inventory(files_of(tmp_path)))
    assert c.status == "QUARANTINE" and c.code == "I_REV_001" and "2 studies" in c.reason


def test_beam_doses_are_not_summed(tmp_path):
    ps = small_phantom(tmp_path, "P", dose_summation="BEAM")
    _copy_with_uid(ps.files["RTDOSE"][0], tmp_path / "RD2.dcm")
    c = select_course(inventory(files_of(tmp_path)))
    assert c.status == "LINKED" and c.dose is None
    assert c.dose_code == "XVI_EXEC_003" and "not summed" in c.dose_reason and "BEAM" in c.dose_reason


def test_two_plan_doses_go_to_quarantine(tmp_path):
    ps = small_phantom(tmp_path, "P")
    _copy_with_uid(ps.files["RTDOSE"][0], tmp_path / "RD2.dcm")
    c = select_course(inventory(files_of(tmp_path)))
    assert c.status == "QUARANTINE" and "plan-summed doses" in c.reason


def test_missing_modalities_and_mismatched_frames(tmp_path):
    ps = small_phantom(tmp_path / "p", "P")
    assert select_course(inventory([])).status == "NO_RT"
    ct_only = select_course(inventory(ps.files["CT"]))  # a diagnostic-only patient: nothing wrong
    assert ct_only.status == "NO_RT" and ct_only.code == "I_EXEC_003"
    no_ct = select_course(inventory(ps.files["RTSTRUCT"] + ps.files["RTPLAN"]))
    assert no_ct.status == "EXCLUDED" and no_ct.code == "I_EXEC_005" and "CT" in no_ct.reason
    rs = pydicom.dcmread(ps.files["RTSTRUCT"][0])
    rs.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = "1.2.3.999"
    rs.save_as(ps.files["RTSTRUCT"][0])
    c = select_course(inventory(files_of(tmp_path)))
    assert c.status == "EXCLUDED" and c.code == "II_EXEC_002" and "differs from CT series" in c.reason


def test_ct_slices_sorted_along_normal_whatever_the_file_order(tmp_path):
    ps = small_phantom(tmp_path, "P")
    shuffled = list(ps.files["CT"])
    random.Random(1).shuffle(shuffled)
    ct = read_ct_series(shuffled)
    assert ct.sop_uids == [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in ps.files["CT"]]


def test_duplicate_slices_flagged_and_missing_slices_refused(tmp_path):
    ps = small_phantom(tmp_path, "P")
    dup = tmp_path / "dup.dcm"
    _copy_with_uid(ps.files["CT"][5], dup)
    ct = read_ct_series(ps.files["CT"] + [dup])
    assert ct.duplicates == 1 and ct.grid.shape[0] == len(ps.files["CT"]) and "duplicate" in ct.warnings[0]
    with pytest.raises(RtConversionError) as e:
        read_ct_series([f for n, f in enumerate(ps.files["CT"]) if n not in (7, 8)])
    assert e.value.code == "XI_EXEC_001" and "missing slice" in str(e.value)


def _convert(tmp_path: Path, folder: Path, name: str, **opts):
    res = convert_patient(PatientJob(name, [str(p) for p in files_of(folder)], str(tmp_path / "out")),
                          ConvertOptions(previews=False, html=False, **opts))
    notes = json.loads((tmp_path / "out" / name / "notes.json").read_text())
    return res, notes


def test_bad_structures_are_skipped_with_reasons_and_the_rest_converted(tmp_path):
    g = P.ct_grid(shape=(20, 48, 48), spacing=(1.0, 1.0, 2.0))
    on_slice = g.to_physical(P.np.array([[24.0, 24.0, 10.0]]))[0]
    line = P.Shape("TwoPoints", [P.np.array([[0.0, 0.0, on_slice[2]], [5.0, 5.0, on_slice[2]]])], 0, 0)
    shapes = [P.sphere(g, "Good", [0.3, 0.2, 0.1], 8.0), line, P.cylinder(g, "OnePlane", on_slice, 5.0, 0.5)]
    ps = P.write_phantom(tmp_path / "in", g, shapes, dose_grid=P.standard_dose_grid(g, margin=5.0),
                         dose_fn=P.linear_dose([10, 0, 0, 0], [0.1, 0, 0]))
    # A contour that references an image not in the series.
    rs = pydicom.dcmread(ps.files["RTSTRUCT"][0])
    rs.ROIContourSequence[0].ContourSequence[0].ContourImageSequence[0].ReferencedSOPInstanceUID = "1.2.3.404"
    rs.save_as(ps.files["RTSTRUCT"][0])
    res, notes = _convert(tmp_path, tmp_path / "in", "BAD")
    assert res.status == "SUCCESS" and notes["patientimagingfilesready"] is True
    assert notes["structures"]["TwoPoints"]["voxels"] == 0
    by_roi = {(n["roi"], n["code"]) for n in notes["notes"]}
    assert ("TwoPoints", "XIV_REV_001") in by_roi
    assert ("OnePlane", "XIV_WARN_001") in by_roi and ("Good", "XIV_WARN_001") in by_roi
    assert any(f.target.endswith(":TwoPoints") and f.code == "XIV_REV_001" for f in res.failures)
    assert (tmp_path / "out" / "BAD" / "masks" / "Good.nii.gz").is_file()
    assert not (tmp_path / "out" / "BAD" / "masks" / "TwoPoints.nii.gz").exists()
    rows = (tmp_path / "out" / "BAD" / "dvh.csv").read_text().splitlines()
    assert len(rows) == 3 and "images not in the CT series" in rows[1]


@pytest.mark.parametrize(
    "name,make,status,code",
    [
        ("NODOSE", lambda d: [f.unlink() for f in small_phantom(d, "A").files["RTDOSE"]], "PARTIAL", "XVI_EXEC_001"),
        ("NOSCALE", lambda d: small_phantom(d, "B", dose_scaling=None), "PARTIAL", "XVI_EXEC_002"),
        ("NOPLAN", lambda d: small_phantom(d, "C", plan=False), "SUCCESS", "XV_WARN_001"),
    ],
)
def test_dose_problems_give_partial_patients(tmp_path, name, make, status, code):
    make(tmp_path / "in")
    res, notes = _convert(tmp_path, tmp_path / "in", name)
    assert res.status == status == notes["status"]
    assert code in {n["code"] for n in notes["notes"]}
    assert notes["patientimagingfilesready"] is (status == "SUCCESS")
    assert (tmp_path / "out" / name / "ct.nii.gz").is_file()
    assert (tmp_path / "out" / name / "masks" / "Sphere.nii.gz").is_file()


def test_structure_set_without_contours_excludes_the_patient(tmp_path):
    ps = small_phantom(tmp_path / "in", "E")
    rs = pydicom.dcmread(ps.files["RTSTRUCT"][0])
    for item in rs.ROIContourSequence:
        del item.ContourSequence
    rs.save_as(ps.files["RTSTRUCT"][0])
    res, notes = _convert(tmp_path, tmp_path / "in", "EMPTY")
    assert res.status == "EXCLUDED" and notes["patientimagingfilesready"] is False
    assert res.failures[0].code == "XIII_EXEC_001" and "no contours" in res.failures[0].reason


def test_every_code_in_notes_is_documented():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "rt.md").read_text()
    for code in CODES:
        assert code in doc, code


def test_ragged_contour_data_is_warned_per_structure(tmp_path):
    ps = small_phantom(tmp_path / "in", "R")
    rs = pydicom.dcmread(ps.files["RTSTRUCT"][0])
    for c in rs.ROIContourSequence[0].ContourSequence:
        c.ContourData = list(c.ContourData) + ["1.5"]
    rs.save_as(ps.files["RTSTRUCT"][0])
    res, notes = _convert(tmp_path, tmp_path / "in", "RAGGED")
    assert res.status == "SUCCESS"
    warned = [n for n in notes["notes"] if n["roi"] == "Sphere" and "not a multiple of 3" in n["message"]]
    assert len(warned) == 1 and warned[0]["code"] == "XIV_WARN_001"
    assert notes["structures"]["Sphere"]["voxels"] > 0


def test_dose_without_frame_offsets_is_refused(tmp_path):
    ps = small_phantom(tmp_path / "in", "G")
    rd = pydicom.dcmread(ps.files["RTDOSE"][0])
    del rd.GridFrameOffsetVector
    rd.save_as(ps.files["RTDOSE"][0])
    res, notes = _convert(tmp_path, tmp_path / "in", "NOGFOV")
    assert res.status == "PARTIAL"
    assert any(f.code == "XVI_EXEC_002" and "GridFrameOffsetVector" in f.reason for f in res.failures)


def test_beam_doses_summed_only_on_request(tmp_path):
    fn = P.linear_dose([30.0, 0.0, 0.0, 0.0], [0.4, 0.1, 0.0])
    half = lambda p: 0.5 * fn(p)  # noqa: E731 - two beams of half the plan dose each
    small_phantom(tmp_path / "plan", "S")  # the same course with a PLAN dose, for reference
    ps = small_phantom(tmp_path / "beams", "S", dose_summation="BEAM", dose_fn=half)
    _copy_with_uid(ps.files["RTDOSE"][0], tmp_path / "beams" / "RD_beam2.dcm")
    ref, _ = _convert(tmp_path, tmp_path / "plan", "PLAN")
    refused, notes = _convert(tmp_path, tmp_path / "beams", "BEAMS")
    assert refused.status == "PARTIAL" and "XVI_EXEC_003" in {n["code"] for n in notes["notes"]}
    summed, notes = _convert(tmp_path, tmp_path / "beams", "SUMMED", sum_beam_doses=True, force=True)
    assert summed.status == "SUCCESS" and "XVI_WARN_001" in {n["code"] for n in notes["notes"]}
    a = (tmp_path / "out" / "PLAN" / "dvh.csv").read_text().splitlines()[1:]
    b = (tmp_path / "out" / "SUMMED" / "dvh.csv").read_text().splitlines()[1:]
    for ra, rb in zip(a, b):
        va, vb = ra.split(",")[3:8], rb.split(",")[3:8]  # volume, Dmean, Dmin, Dmax, D2
        assert all(abs(float(x) - float(y)) < 2e-3 for x, y in zip(va, vb)), (ra, rb)
