"""Every reference resolves after remapping; segmentation fix-ups and linking (DAMS parity);
same key → byte-identical output, another key → other pseudonyms."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pydicom

from ingest.pseudo.apply import Pseudonymiser
from ingest.pseudo.keys import PseudoKey
from ingest.pseudo.profile import load_profile
from ingest.pseudo.uids import collect_references
from tests.fixtures.pseudo import make_rt_set

KEY = PseudoKey(b"unit-test-key-0123456789abcdef")
OTHER = PseudoKey(b"another-key-fedcba9876543210xyz")


def _run(files, out: Path, key=KEY, root="2.25"):
    pz = Pseudonymiser(key, load_profile(None), root)
    outcome = pz.process(files, lambda ds: out / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm")
    assert outcome.problems == []
    return pz, outcome


def test_every_reference_resolves_after_remapping(tmp_path):
    s = make_rt_set(tmp_path / "in")
    before = collect_references(s.all_dicom)
    # The DAMS-style masks have no references before the fix-up; everything else resolves.
    assert before.unresolved() == []
    kinds = {k for k, _, _ in before.referenced}
    assert kinds == {"sop", "series", "for", "study"}
    pz, outcome = _run(s.all_dicom, tmp_path / "out")
    after = collect_references(list(outcome.written.values()))
    assert after.unresolved() == []
    # the same references, remapped: nothing dropped on the way
    mapped = {(k, pz.remapper(u)) for k, u, _ in before.referenced}
    assert mapped <= {(k, u) for k, u, _ in after.referenced}
    # RT chain explicitly: dose → plan → structure set → CT slices
    rd = pydicom.dcmread(outcome.written[s.files["rtdose"][0]])
    rp = pydicom.dcmread(outcome.written[s.files["rtplan"][0]])
    rs = pydicom.dcmread(outcome.written[s.files["rtstruct"][0]])
    cts = [pydicom.dcmread(outcome.written[p]) for p in s.files["ct"]]
    assert rd.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == rp.SOPInstanceUID
    assert rp.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == rs.SOPInstanceUID
    contour_refs = [c.ContourImageSequence[0].ReferencedSOPInstanceUID for c in rs.ROIContourSequence[0].ContourSequence]
    assert contour_refs == [ct.SOPInstanceUID for ct in cts]
    assert rs.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == cts[0].FrameOfReferenceUID
    assert rs.StructureSetROISequence[0].ReferencedFrameOfReferenceUID == cts[0].FrameOfReferenceUID
    assert {rd.FrameOfReferenceUID, rp.FrameOfReferenceUID} == {cts[0].FrameOfReferenceUID}
    seg = pydicom.dcmread(outcome.written[s.files["seg"][0]])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == cts[0].SeriesInstanceUID
    assert seg.SourceImageSequence[0].ReferencedSOPInstanceUID == cts[0].SOPInstanceUID
    # well-known UIDs untouched
    assert rd.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.2"
    assert rd.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"


def test_uids_stay_under_the_root_and_valid(tmp_path):
    s = make_rt_set(tmp_path / "in")
    root = "1.2.826.0.1.3680043.10.999"
    _, outcome = _run(s.all_dicom, tmp_path / "out", root=root)
    for out in outcome.written.values():
        ds = pydicom.dcmread(out)
        for uid in (ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID):
            assert uid.startswith(root + ".") and len(uid) <= 64 and uid.is_valid


def test_segmentation_fix_up_and_linking(tmp_path):
    s = make_rt_set(tmp_path / "in")
    _, outcome = _run(s.all_dicom, tmp_path / "out")
    masks = [pydicom.dcmread(outcome.written[p]) for p in s.files["masks"]]
    cts = [pydicom.dcmread(outcome.written[p]) for p in s.files["ct"]]
    assert len({m.SOPInstanceUID for m in masks}) == len(masks)  # were all one UID
    assert sorted(int(m.InstanceNumber) for m in masks) == list(range(1, len(masks) + 1))
    taken = {int(pydicom.dcmread(p).SeriesNumber) for p in outcome.written.values() if p not in
             {outcome.written[m] for m in s.files["masks"]}}
    assert int(masks[0].SeriesNumber) not in taken  # no longer the CT's series number
    for m in masks:
        assert m.file_meta.MediaStorageSOPInstanceUID == m.SOPInstanceUID
        assert m.ReferencedSeriesSequence[0].SeriesInstanceUID == cts[0].SeriesInstanceUID
        same_z = [ct for ct in cts if float(ct.ImagePositionPatient[2]) == float(m.ImagePositionPatient[2])]
        assert [r.ReferencedSOPInstanceUID for r in m.SourceImageSequence] == [same_z[0].SOPInstanceUID]


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_key_byte_identical_other_key_different(tmp_path):
    s = make_rt_set(tmp_path / "in")
    originals = _tree_digest(tmp_path / "in")
    pz1, _ = _run(s.all_dicom, tmp_path / "a")
    pz2, _ = _run(s.all_dicom, tmp_path / "b")
    a, b = _tree_digest(tmp_path / "a"), _tree_digest(tmp_path / "b")
    assert a == b and len(a) == len(s.all_dicom)
    pz3, _ = _run(s.all_dicom, tmp_path / "c", key=OTHER)
    c = _tree_digest(tmp_path / "c")
    assert set(a).isdisjoint(c)  # every series and SOP UID differs
    assert pz1.patient_pseudonym(s.patient_id) == pz2.patient_pseudonym(s.patient_id)
    assert pz1.patient_pseudonym(s.patient_id) != pz3.patient_pseudonym(s.patient_id)
    assert set(pz1.remapper.seen.values()).isdisjoint(pz3.remapper.seen.values())
    assert _tree_digest(tmp_path / "in") == originals  # originals never modified


def test_dcmtk_reads_every_pseudonymised_file(tmp_path):
    import shutil
    import subprocess

    import pytest

    dcmdump = shutil.which("dcmdump")
    if dcmdump is None:
        pytest.skip("dcmtk not installed (make system-deps)")
    s = make_rt_set(tmp_path / "in")
    _, outcome = _run(s.all_dicom, tmp_path / "out")
    for out in outcome.written.values():
        res = subprocess.run([dcmdump, "-q", "+E", str(out)], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and not res.stderr.strip(), (out.name, res.stderr)
        assert "PatientIdentityRemoved" in subprocess.run(
            [dcmdump, str(out)], capture_output=True, text=True, timeout=60).stdout


def test_2_25_uids_are_uuid_sized():
    from ingest.pseudo.keys import PseudoKey

    key = PseudoKey(b"unit-test-key-0123456789abcdef")
    values = [key.uid(f"1.2.3.{i}", "2.25") for i in range(2000)]
    assert all(int(v.split(".")[2]) < 2**128 for v in values)
    assert len(set(values)) == len(values)
    assert max(len(v) for v in values) <= 44
