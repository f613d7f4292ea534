"""The synthetic cohort generator (ingest/demo.py, ingest/synth/)."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ingest.config import load_config
from ingest.synth.dicom import patient_folder
from ingest.demo import PLACEHOLDER_DATE, DemoPaths, generate, is_valid_nhs_number, nhs_check_digit
from ingest.errors import PermanentError
from ingest.synth import descriptions as D
from ingest.synth.dicom import RT_VERIFICATION_UID_ROOTS, SOP_CLASS_UIDS, VARIAN_UID_ROOT
from ingest.synth.rtset import write_rt_set

REQUIRED = [
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "SeriesInstanceUID",
    "SOPInstanceUID", "SOPClassUID", "AccessionNumber", "StudyDate", "StudyTime", "StudyDescription", "StudyID",
    "SeriesNumber", "InstanceNumber", "Modality", "SeriesDescription", "SpecificCharacterSet",
]


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def dicom_files(paths: DemoPaths) -> list[Path]:
    broken = set(paths.broken)
    return [p for p in sorted(paths.pacs.rglob("*.dcm")) if p not in broken]


def read_all(paths: DemoPaths) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in dicom_files(paths)]


def by_study(datasets: list[pydicom.Dataset]) -> dict[str, list[pydicom.Dataset]]:
    out: dict[str, list[pydicom.Dataset]] = {}
    for ds in datasets:
        out.setdefault(ds.StudyInstanceUID, []).append(ds)
    return out


@pytest.fixture(scope="module")
def demo_datasets(demo_cohort: DemoPaths) -> list[pydicom.Dataset]:
    return read_all(demo_cohort)


# --- determinism and overwrite -------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", n_patients=4, seed=11)
    b = generate(tmp_path / "b", n_patients=4, seed=11)
    c = generate(tmp_path / "c", n_patients=4, seed=12)
    ta, tb, tc = tree(a.root), tree(b.root), tree(c.root)
    assert ta == tb
    assert set(ta) != set(tc)
    assert {p.hospital_id for p in a.patients} != {p.hospital_id for p in c.patients}
    assert [p.hospital_id for p in a.patients] == [p.hospital_id for p in b.patients]


def test_regenerate_replaces_own_files_and_keeps_others(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    generate(out, n_patients=3, seed=1)
    (out / "state").mkdir()
    (out / "state" / "catalog.duckdb").write_bytes(b"keep me")
    (out / "notes.txt").write_text("mine")
    again = generate(out, n_patients=3, seed=2)
    fresh = generate(tmp_path / "fresh", n_patients=3, seed=2)
    assert (out / "state" / "catalog.duckdb").read_bytes() == b"keep me"
    assert (out / "notes.txt").read_text() == "mine"
    mine = {k: v for k, v in tree(out).items() if not k.startswith("state") and k != "notes.txt"}
    assert mine == tree(fresh.root)
    assert again.pacs == out.resolve() / "pacs"


def test_refuses_to_overwrite_a_foreign_pacs_folder(tmp_path: Path) -> None:
    (tmp_path / "pacs").mkdir()
    (tmp_path / "pacs" / "real.dcm").write_bytes(b"x")
    with pytest.raises(PermanentError):
        generate(tmp_path, n_patients=2)
    assert (tmp_path / "pacs" / "real.dcm").exists()


# --- DICOM validity ------------------------------------------------------------------------------


def test_every_file_but_the_broken_ones_is_valid_dicom(demo_cohort: DemoPaths, demo_datasets) -> None:
    assert len(demo_cohort.broken) == 2
    for p in demo_cohort.broken:
        assert p.is_file() and p.suffix == ".dcm"
        with pytest.raises(Exception):
            pydicom.dcmread(p)
        with pytest.raises(Exception):
            pydicom.dcmread(p, stop_before_pixels=True)
    for ds in demo_datasets:
        missing = [k for k in REQUIRED if k not in ds]
        assert not missing, (ds.filename, missing)
        assert ds.SpecificCharacterSet == "ISO_IR 192"
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == SOP_CLASS_UIDS[ds.Modality]
        assert all(len(u) <= 64 for u in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID))
        if "PixelData" in ds:
            arr = ds.pixel_array
            assert arr.shape[-2:] in ((32, 32), (64, 64))
        # Layout: pacs/PAT<hash>/<study uid>/<series uid>/<sop uid>.dcm — no hospital ID in paths,
        # because paths reach log lines and failure reasons.
        rel = Path(ds.filename).relative_to(demo_cohort.pacs).parts
        assert rel == (patient_folder(ds.PatientID), ds.StudyInstanceUID, ds.SeriesInstanceUID,
                       f"{ds.SOPInstanceUID}.dcm")
        assert ds.PatientID not in str(ds.filename)


def test_patients_and_studies_match_the_files(demo_cohort: DemoPaths, demo_datasets) -> None:
    studies = by_study(demo_datasets)
    pats = {p.hospital_id: p for p in demo_cohort.patients}
    for uid, dss in studies.items():
        p = pats[dss[0].PatientID]
        assert {str(d.PatientName) for d in dss} == {p.name}
        assert {d.PatientBirthDate for d in dss} == {p.birth_date.strftime("%Y%m%d")}
        assert {d.StudyDescription for d in dss} == {next(s.description for s in p.studies if s.study_uid == uid)}
    expected = {s.study_uid for s in demo_cohort.studies if s.in_pacs}
    assert set(studies) == expected
    for s in demo_cohort.studies:
        if s.in_pacs:
            assert len(studies[s.study_uid]) == s.n_instances  # the truncated extra file is not readable
            assert {d.Modality for d in studies[s.study_uid]} == set(s.modalities)


def test_cohort_content(demo_cohort: DemoPaths) -> None:
    studies = [s for s in demo_cohort.studies if s.in_pacs]
    cats = {s.category for s in studies}
    assert {"include", "exclude", "unknown", "empty", "rt", "verification"} <= cats
    assert sum(1 for s in studies if s.study_date == PLACEHOLDER_DATE) == 2
    assert sum(1 for s in studies if s.description == "") == 1
    verification = [s for s in studies if any(s.study_uid.startswith(r + ".") for r in RT_VERIFICATION_UID_ROOTS)]
    assert len(verification) == 2 and {s.category for s in verification} == {"verification"}
    # one under each ARIA verification root; RT courses carry ARIA's general root, which is not verification
    assert {s.study_uid.rsplit(".", 1)[0] for s in verification} == set(RT_VERIFICATION_UID_ROOTS)
    rt = [s for s in studies if s.category == "rt"]
    assert rt and all(s.study_uid.startswith(VARIAN_UID_ROOT) for s in rt)
    assert any(s.study_date > dt.date(2023, 10, 4) for s in studies if not s.placeholder)
    dates = [s.study_date for s in studies if not s.placeholder]
    assert min(dates) >= dt.date(2015, 1, 1) and max(dates) <= dt.date(2024, 12, 31)
    for s in studies:
        if s.category in ("rt", "verification"):
            assert s.accession == ""
        else:
            assert s.accession.startswith("RJZ") and len(s.accession) == 10 and s.accession[3:].isdigit()
    accessions = [s.accession for s in demo_cohort.studies if s.accession]
    assert len(accessions) == len(set(accessions))
    for p in demo_cohort.patients:
        normal = [s for s in p.studies if s.in_pacs and s.category not in ("rt", "verification")]
        assert 3 <= len(normal) <= 8
        rt = [s for s in p.studies if s.category == "rt"]
        assert len(rt) == (1 if p.rt_start else 0)
        if rt:
            assert rt[0].study_id == "RT1" and rt[0].modalities == ("CT", "RTSTRUCT", "RTPLAN", "RTDOSE")
            assert dt.timedelta(days=7) < p.rt_start - rt[0].study_date < dt.timedelta(days=15)
    assert sum(1 for p in demo_cohort.patients if p.rt_start) == len(demo_cohort.patients) // 2
    assert sum(1 for p in demo_cohort.patients if p.deceased) == 2


def test_descriptions_lists() -> None:
    lists = [D.INCLUDE_EXAMPLES, D.EXCLUDE_EXAMPLES, D.UNKNOWN_EXAMPLES]
    everything = [d for lst in lists for d in lst]
    assert len(everything) == len(set(everything))
    norm = [" ".join(d.casefold().split()).rstrip(".") for d in everything]
    assert len(norm) == len(set(norm))
    assert "PET-CT Skull Base – Mid Thigh" in D.INCLUDE_EXAMPLES
    assert set(D.MODALITIES) == set(everything)
    assert D.RT_COURSE_DESCRIPTION in D.INCLUDE_EXAMPLES
    assert D.RT_VERIFICATION_DESCRIPTION not in everything


# --- RT sets -------------------------------------------------------------------------------------


def _rt_studies(datasets):
    for uid, dss in by_study(datasets).items():
        mods = {d.Modality for d in dss}
        if "RTSTRUCT" in mods:
            yield uid, dss


def test_rtstruct_references_resolve_to_ct(demo_datasets) -> None:
    found = 0
    for uid, dss in _rt_studies(demo_datasets):
        found += 1
        cts = [d for d in dss if d.Modality == "CT"]
        (rs,) = [d for d in dss if d.Modality == "RTSTRUCT"]
        ct_uids = {d.SOPInstanceUID: d for d in cts}
        frames = {d.FrameOfReferenceUID for d in cts}
        assert len(frames) == 1
        (frame,) = frames
        assert len({d.SeriesInstanceUID for d in cts}) == 1
        (rfor,) = rs.ReferencedFrameOfReferenceSequence
        assert rfor.FrameOfReferenceUID == frame
        (rstudy,) = rfor.RTReferencedStudySequence
        assert rstudy.ReferencedSOPInstanceUID == uid
        (rseries,) = rstudy.RTReferencedSeriesSequence
        assert rseries.SeriesInstanceUID == cts[0].SeriesInstanceUID
        assert {i.ReferencedSOPInstanceUID for i in rseries.ContourImageSequence} == set(ct_uids)
        names = {r.ROIName for r in rs.StructureSetROISequence}
        assert names == {"BODY", "PTV", "GTV", "Parotid_L", "Parotid_R", "SpinalCord", "Brainstem"}
        assert {r.ReferencedFrameOfReferenceUID for r in rs.StructureSetROISequence} == {frame}
        numbers = {r.ROINumber for r in rs.StructureSetROISequence}
        assert {o.ReferencedROINumber for o in rs.RTROIObservationsSequence} == numbers
        assert {c.ReferencedROINumber for c in rs.ROIContourSequence} == numbers
        for roi in rs.ROIContourSequence:
            assert len(roi.ContourSequence) > 0
            for c in roi.ContourSequence:
                assert c.ContourGeometricType == "CLOSED_PLANAR"
                pts = np.array(c.ContourData, dtype=float).reshape(-1, 3)
                assert len(pts) == c.NumberOfContourPoints
                (ref,) = c.ContourImageSequence
                ct = ct_uids[ref.ReferencedSOPInstanceUID]
                assert ref.ReferencedSOPClassUID == ct.SOPClassUID
                assert np.allclose(pts[:, 2], float(ct.ImagePositionPatient[2]))
                # inside the CT field of view
                x0, y0 = float(ct.ImagePositionPatient[0]), float(ct.ImagePositionPatient[1])
                assert (pts[:, 0] >= x0).all() and (pts[:, 0] <= x0 + ct.Columns * float(ct.PixelSpacing[1])).all()
                assert (pts[:, 1] >= y0).all() and (pts[:, 1] <= y0 + ct.Rows * float(ct.PixelSpacing[0])).all()
        # CT geometry: regular slices, HU via the rescale, dense spine
        zs = sorted(float(d.ImagePositionPatient[2]) for d in cts)
        assert np.allclose(np.diff(zs), float(cts[0].SliceThickness))
        ct = cts[len(cts) // 2]
        hu = ct.pixel_array.astype(float) * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
        assert ct.pixel_array.dtype == np.int16 and float(ct.RescaleIntercept) == -1024
        assert hu.min() < -900 and hu.max() > 500
    assert found >= 1


def test_rtplan_and_rtdose_reference_chain(demo_datasets) -> None:
    for uid, dss in _rt_studies(demo_datasets):
        (rs,) = [d for d in dss if d.Modality == "RTSTRUCT"]
        (rp,) = [d for d in dss if d.Modality == "RTPLAN"]
        (rd,) = [d for d in dss if d.Modality == "RTDOSE"]
        frame = rs.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID
        assert rp.ApprovalStatus == "APPROVED" and rp.RTPlanLabel
        assert rp.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == rs.SOPInstanceUID
        assert rp.FrameOfReferenceUID == rd.FrameOfReferenceUID == frame
        target = [r for r in rp.DoseReferenceSequence if r.DoseReferenceType == "TARGET"][0]
        assert 60 <= float(target.TargetPrescriptionDose) <= 70
        assert rp.FractionGroupSequence[0].NumberOfFractionsPlanned > 0
        assert rd.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == rp.SOPInstanceUID
        assert rd.ReferencedRTPlanSequence[0].ReferencedSOPClassUID == SOP_CLASS_UIDS["RTPLAN"]
        assert (rd.DoseUnits, rd.DoseType, rd.DoseSummationType) == ("GY", "PHYSICAL", "PLAN")
        dose = rd.pixel_array
        assert dose.dtype == np.uint32 and dose.shape[0] == rd.NumberOfFrames == len(rd.GridFrameOffsetVector)
        gy = dose * float(rd.DoseGridScaling)
        assert 60 <= gy.max() <= 70
        assert float(rd.GridFrameOffsetVector[0]) == 0


def test_rt_set_dose_peaks_in_ptv_and_flat_layout(tmp_path: Path) -> None:
    info = write_rt_set(tmp_path / "phantom", "PHANTOM1", layout="flat", shape=(16, 48, 48), spacing=(2.5, 3.0, 3.0))
    assert (tmp_path / "phantom" / "RS.dcm").is_file() and len(info.ct_paths) == 16
    assert all(p.is_file() for p in info.paths)
    ptv = next(r for r in info.rois if r.name == "PTV")
    mask = ptv.mask(info.dose_geometry)
    assert mask.any()
    body = next(r for r in info.rois if r.name == "BODY").mask(info.dose_geometry)
    assert info.dose[mask].min() > 0.9 * info.prescription_gy
    assert info.dose[mask].mean() > info.dose[body & ~mask].mean() * 2
    rd = pydicom.dcmread(info.rtdose_path)
    assert np.allclose(rd.pixel_array * float(rd.DoseGridScaling), info.dose)
    again = write_rt_set(tmp_path / "again", "PHANTOM1", layout="flat", shape=(16, 48, 48), spacing=(2.5, 3.0, 3.0))
    assert again.rtstruct_path.read_bytes() == info.rtstruct_path.read_bytes()


# --- side inputs ---------------------------------------------------------------------------------


def test_nhs_numbers_pass_modulus_11(demo_cohort: DemoPaths) -> None:
    assert is_valid_nhs_number("9434765919")  # the NHS Data Dictionary example
    assert not is_valid_nhs_number("9434765918")
    assert nhs_check_digit("943476591") == 9
    with demo_cohort.cohort.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["HospitalID", "NHSNumber"]
    assert [r["HospitalID"] for r in rows] == [p.hospital_id for p in demo_cohort.patients]
    blank = [r for r in rows if not r["NHSNumber"]]
    assert 1 <= len(blank) <= max(1, round(0.25 * len(rows)))
    for r in rows:
        assert len(r["HospitalID"]) == 7 and r["HospitalID"][0].isalpha() and r["HospitalID"][1:].isdigit()
        if r["NHSNumber"]:
            assert is_valid_nhs_number(r["NHSNumber"]), r


def test_reference_dates_and_deceased(demo_cohort: DemoPaths) -> None:
    with demo_cohort.reference_dates.open(encoding="utf-8", newline="") as f:
        refs = list(csv.DictReader(f))
    assert refs and list(refs[0]) == ["Subject", "Reference Date"]
    subjects = {p.subject: p for p in demo_cohort.patients}
    for r in refs:
        p = subjects[r["Subject"]]
        assert dt.datetime.strptime(r["Reference Date"], "%d/%m/%Y").date() == p.rt_start
    assert any(r["Subject"].startswith("NN_") for r in refs) or all(p.nhs_number for p in demo_cohort.patients
                                                                     if p.rt_start)
    with demo_cohort.deceased.open(encoding="utf-8", newline="") as f:
        dead = list(csv.DictReader(f))
    assert list(dead[0]) == ["HospitalID", "DateOfDeath"] and len(dead) == 2
    ids = {p.hospital_id for p in demo_cohort.patients if p.deceased}
    assert {r["HospitalID"] for r in dead} == ids
    for r in dead:
        dt.datetime.strptime(r["DateOfDeath"], "%d/%m/%Y")


def test_failure_list_shape(demo_cohort: DemoPaths) -> None:
    records = json.loads(demo_cohort.failures.read_text(encoding="utf-8"))
    assert len(records) == 8
    in_pacs = {p.name for p in demo_cohort.pacs.glob("*/*") if p.is_dir()}
    ids = {p.hospital_id for p in demo_cohort.patients}
    for rec in records:
        assert set(rec) == {"criteria", "relabelMap", "studies"}
        assert set(rec["relabelMap"]) == {"Subject", "Session"}
        (study,) = rec["studies"]
        assert list(study) == sorted(study) == [
            "accessionNumber", "modalitiesInStudy", "patient", "studyDate", "studyDescription", "studyId",
            "studyInstanceUid",
        ]
        assert study["patient"]["id"] in ids and set(study["patient"]) == {"id", "name", "sex"}
        assert study["studyInstanceUid"] not in in_pacs
        assert len(study["studyDate"]) == 8 and study["studyDate"].isdigit()
    studies = [r["studies"][0] for r in records]
    assert sum(s["studyDate"] == "20990101" for s in studies) == 1
    assert any(s["studyId"] == "" for s in studies)
    assert any(s["studyInstanceUid"] == "" for s in studies)


def test_config_loads(demo_cohort: DemoPaths) -> None:
    cfg = load_config(demo_cohort.config)
    assert cfg.project.name == "HNC_DEMO"
    assert cfg.source.kind == "folder" and cfg.source.folder.path == demo_cohort.pacs
    assert cfg.store.kind == "lake" and cfg.store.lake.path == demo_cohort.root / "lake"
    assert cfg.inputs.cohort == demo_cohort.cohort
    assert cfg.inputs.deceased == demo_cohort.deceased
    assert cfg.inputs.reference_dates == demo_cohort.reference_dates
    assert cfg.report.outbox == demo_cohort.root / "outbox"
    assert cfg.state_dir == demo_cohort.root / "state"


def test_fresh_demo_is_a_private_copy(fresh_demo: DemoPaths, demo_cohort: DemoPaths, tmp_path: Path) -> None:
    assert fresh_demo.root == tmp_path / "demo"
    assert tree(fresh_demo.root) == tree(demo_cohort.root)
    assert all(p.is_file() for p in fresh_demo.broken)
    assert load_config(fresh_demo.config).source.folder.path == fresh_demo.pacs
    assert fresh_demo.patients is not demo_cohort.patients


def test_default_cohort_covers_every_modality_quickly(tmp_path: Path) -> None:
    import time

    t0 = time.perf_counter()
    paths = generate(tmp_path / "full")
    elapsed = time.perf_counter() - t0
    assert len(paths.patients) == 24
    mods = {m for s in paths.studies if s.in_pacs for m in s.modalities}
    assert {"MR", "CT", "PT", "CR", "DX", "RF", "SR", "XA", "NM", "RTSTRUCT", "RTPLAN", "RTDOSE"} <= mods
    varied = [s for s in paths.studies if s.in_pacs and s.base_description and s.description != s.base_description]
    assert varied, "some descriptions should differ in case/spacing/trailing dots"
    for s in varied:
        assert " ".join(s.description.casefold().split()).rstrip(".") == s.base_description.casefold()
    assert elapsed < 30, f"generation took {elapsed:.1f}s"


def test_pet_ct_series_share_a_frame_of_reference(demo_datasets) -> None:
    pet_ct = [dss for dss in by_study(demo_datasets).values() if {d.Modality for d in dss} == {"PT", "CT"}]
    assert pet_ct
    for dss in pet_ct:
        assert len({d.FrameOfReferenceUID for d in dss}) == 1


def test_folder_source_rejects_exactly_the_broken_files(demo_cohort: DemoPaths) -> None:
    from ingest.sources.folder import read_header

    bad = []
    for p in sorted(demo_cohort.pacs.rglob("*.dcm")):
        try:
            read_header(p)
        except ValueError:
            bad.append(p)
    assert bad == sorted(demo_cohort.broken)


def test_one_off_cases_sit_on_living_patients(demo_cohort: DemoPaths) -> None:
    """A run skips the deceased, so the cases it must see are never on a deceased patient."""
    for p in demo_cohort.patients:
        if p.deceased:
            assert not any(s.category in ("verification", "empty") or s.placeholder for s in p.studies if s.in_pacs)
            assert p.date_of_death > max(s.study_date for s in p.studies if not s.placeholder)


def test_uids_are_valid_2_25_uuids(demo_datasets) -> None:
    import re

    for ds in demo_datasets[:200]:
        for uid in (ds.SeriesInstanceUID, ds.SOPInstanceUID):
            assert re.fullmatch(r"2\.25\.[1-9][0-9]*", uid) and int(uid[5:]) < 2**128
