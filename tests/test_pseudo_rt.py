"""RT linkage and DVH (ingest/rt) still work on pseudonymised data, with the same numbers."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import pytest

from ingest.pseudo.apply import Pseudonymiser
from ingest.pseudo.keys import PseudoKey
from ingest.pseudo.profile import load_profile

rt_convert = pytest.importorskip("ingest.rt.convert")
rt_linkage = pytest.importorskip("ingest.rt.linkage")
rtset = pytest.importorskip("ingest.synth.rtset")
synth_dicom = pytest.importorskip("ingest.synth.dicom")

KEY = PseudoKey(b"unit-test-key-0123456789abcdef")


def _dvh_rows(folder: Path) -> dict[str, dict[str, str]]:
    with open(folder / "dvh.csv", newline="", encoding="utf-8") as fh:
        return {r["roi"]: r for r in csv.DictReader(fh)}


def test_linkage_and_dvh_identical_on_pseudonymised_copy(tmp_path):
    patient = synth_dicom.PatientInfo("HOSP7781", "Grey^Jean", dt.date(1949, 5, 2), "F")
    info = rtset.write_rt_set(tmp_path / "orig", patient, shape=(12, 32, 32), spacing=(3.0, 4.0, 4.0), seed=3,
                              layout="flat")
    pz = Pseudonymiser(KEY, load_profile(None), "2.25")
    outcome = pz.process(info.paths, lambda ds: tmp_path / "pseudo" / f"{ds.SOPInstanceUID}.dcm")
    assert outcome.problems == []

    course = rt_linkage.select_course(rt_linkage.inventory(sorted(outcome.written.values())))
    assert course.status == "LINKED", course.reason
    assert course.ct.study_uid == pz.remapper(info.study_uid)
    assert course.struct.sop_uid == pz.remapper(info.rtstruct_uid)
    assert course.plan.sop_uid == pz.remapper(info.rtplan_uid)
    assert course.dose.sop_uid == pz.remapper(info.rtdose_uid)

    opts = rt_convert.ConvertOptions(previews=False, html=False, compress=False)
    orig = rt_convert.convert_patient(
        rt_convert.PatientJob("orig", [str(p) for p in info.paths], str(tmp_path / "rt")), opts)
    pseu = rt_convert.convert_patient(
        rt_convert.PatientJob("pseudo", [str(p) for p in outcome.written.values()], str(tmp_path / "rt")), opts)
    assert orig.status == "SUCCESS" and pseu.status == "SUCCESS", (orig.failures, pseu.failures)
    a, b = _dvh_rows(tmp_path / "rt" / "orig"), _dvh_rows(tmp_path / "rt" / "pseudo")
    assert set(a) == set(b) == {r.name for r in info.rois}  # ROI names kept
    for roi in a:
        for col, value in a[roi].items():
            if col not in ("patient", "study_uid"):
                assert b[roi][col] == value, (roi, col)
