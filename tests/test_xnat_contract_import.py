"""Contract: the emulator's import service against the expectations of NRG's own server tests.

Each case below restates a case of NrgXnat/xnat-rest-tests `TestImport.java` (our own code, same
expectation) or a rule of the XNAT source the case exercises (xnat-web `SessionImporter`,
`PrearcSessionArchiver.checkForConflicts`), and runs it against tests/servers/xnat_emulator.py
with plain HTTP — no rtlake code — so the emulator is held to the server's behaviour, not to ours.

Cases (name of the NRG test in brackets):
  1. new session at dest=/archive/projects/P/subjects/S/experiments/L is archived [testDataProjectExperimentNew]
  2. dest=/archive/projects/P only: subject from PatientName, session from PatientID [testDataProject]
  3. append into an existing empty session adds the scan and keeps the session's date [...OldRes]
  4. MR data into a PET session: 409; with overwrite=delete 409 while cross-modality merging is
     prevented, accepted (PET session, MR scan "1") once allowed [...NewExptXSIOverwrite{F,T}DeleteF]
  5. the same files again: no overwrite 409, append 409, append+overwrite_files ok, delete ok
     [testDataDuplicateScanFiles*]
  6. a scan in two parts: disjoint with append → all files; overlapping with delete → all files;
     overlapping with append → 409 [testDataScan2parts*]
  7. a file with another SeriesInstanceUID but the same SeriesNumber becomes scan "1-MR1"
     [testModifiedSeriesUIDs]
  8. DICOM-zip with a non-DICOM file: 400 naming it, accepted with Ignore-Unparsable [testUploadIgnoreUnparsable*]
  9. sites whose default importer is DICOM-zip answer conflicts with 400 [setupImportEnvironment]
 10. another StudyInstanceUID under the label: append 409 (UID_MOD), delete merges and keeps the
     session (it never replaces) [checkForConflicts]
 11. the label under another subject: 409 "... Already Exists for another Subject", and the refused
     upload is left in the prearchive as CONFLICT [checkForConflicts, SessionImporter]
 12. subject labels are cleaned and matched case-insensitively [fixSubject, retrieveMatchingSubject]
 13. a site anon script that hashes UIDs: the archived session's UID is not the one sent
"""

from __future__ import annotations

import io
import zipfile

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from tests.servers.xnat_emulator import XnatEmulator, login_session

P = "IMPORTS"


@pytest.fixture
def emu():
    e = XnatEmulator(users={"admin": "pw"}).start()
    e.add_project(P)
    yield e
    e.stop()


@pytest.fixture
def http(emu):
    s = login_session(emu)
    yield s
    s.close()


def mr_files(n: int, study_uid: str | None = None, series_uid: str | None = None, series_number: int = 1,
             patient_name: str = "SPP^0x220790", patient_id: str = "SPP_0x220790_MR2", date: str = "20110101"):
    """n MR instances of one series, as (name, bytes) — like the rest-tests' scan1 zips."""
    template = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    study_uid, series_uid = study_uid or generate_uid(), series_uid or generate_uid()
    out = []
    for i in range(n):
        ds = template.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesNumber, ds.InstanceNumber = series_number, i + 1
        ds.PatientName, ds.PatientID, ds.StudyDate, ds.Modality = patient_name, patient_id, date, "MR"
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append((f"{i:06d}.dcm", buf.getvalue()))
    return out


def zipped(files) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files:
            zf.writestr(name, data)
    return buf.getvalue()


def do_import(emu, http, files, **params):
    return http.post(emu.url + "/data/services/import", params=params, data=zipped(files),
                     headers={"Content-Type": "application/zip"})


def dest(subject: str, label: str) -> str:
    return f"/archive/projects/{P}/subjects/{subject}/experiments/{label}"


def scans(emu, http, label):
    r = http.get(f"{emu.url}/data/projects/{P}/experiments/{label}/scans", params={"format": "json"})
    assert r.status_code == 200
    return r.json()["ResultSet"]["Result"]


def scan_files(emu, http, label, scan="1"):
    r = http.get(f"{emu.url}/data/projects/{P}/experiments/{label}/scans/{scan}/resources/DICOM/files",
                 params={"format": "json"})
    assert r.status_code == 200
    return r.json()["ResultSet"]["Result"]


def test_new_session_at_a_full_destination_is_archived(emu, http):
    r = do_import(emu, http, mr_files(3), dest=dest("SUBJ2", "MR0"))
    assert r.status_code == 200
    assert r.text.strip() == f"/data/archive/projects/{P}/subjects/SUBJ2/experiments/MR0"
    assert http.get(f"{emu.url}/data/archive/projects/{P}/subjects/SUBJ2/experiments/MR0",
                    params={"format": "json"}).status_code == 200


def test_project_destination_files_subject_by_name_and_session_by_patient_id(emu, http):
    assert do_import(emu, http, mr_files(2), dest=f"/archive/projects/{P}").status_code == 200
    e = emu.find_experiment(P, "SPP_0x220790_MR2")
    assert e is not None and emu.subject_label(e.subject_id) == "SPP_0x220790"  # cleanValue: '^' → '_'


def test_append_into_an_existing_session_keeps_its_date(emu, http):
    assert http.put(f"{emu.url}/data/projects/{P}/subjects/SUBJ_0002").status_code in (200, 201)
    r = http.put(f"{emu.url}/data/projects/{P}/subjects/SUBJ_0002/experiments/MR1",
                 params={"xsiType": "xnat:mrSessionData", "xnat:mrSessionData/date": "2000-01-01"})
    assert r.status_code == 201
    assert do_import(emu, http, mr_files(2, date="20110101"), dest=dest("SUBJ_0002", "MR1"),
                     overwrite="append").status_code == 200
    assert len(scans(emu, http, "MR1")) == 1
    listed = http.get(f"{emu.url}/data/projects/{P}/subjects/SUBJ_0002/experiments",
                      params={"format": "json"}).json()["ResultSet"]["Result"]
    assert [r["date"] for r in listed if r["label"] == "MR1"] == ["2000-01-01"]


def test_mr_data_into_a_pet_session(emu, http):
    http.put(f"{emu.url}/data/projects/{P}/subjects/SUBJ3")
    http.put(f"{emu.url}/data/projects/{P}/subjects/SUBJ3/experiments/PET1", params={"xsiType": "xnat:petSessionData"})
    files = mr_files(2)
    assert do_import(emu, http, files, dest=dest("SUBJ3", "PET1")).status_code == 409
    assert do_import(emu, http, files, dest=dest("SUBJ3", "PET1"), overwrite="delete").status_code == 409
    emu.prevent_cross_modality_merge = False
    assert do_import(emu, http, files, dest=dest("SUBJ3", "PET1"), overwrite="delete").status_code == 200
    e = emu.find_experiment(P, "PET1")
    assert e.xsi_type == "xnat:petSessionData"
    assert [(r["ID"], r["xsiType"]) for r in scans(emu, http, "PET1")] == [("1", "xnat:mrScanData")]


@pytest.mark.parametrize("params,status", [
    ({}, 409),
    ({"overwrite": "append"}, 409),
    ({"overwrite": "append", "overwrite_files": "true"}, 200),
    ({"overwrite": "delete"}, 200),
])
def test_the_same_files_again(emu, http, params, status):
    files = mr_files(3)
    assert do_import(emu, http, files, dest=dest("SUBJ5", "MR5")).status_code == 200
    assert do_import(emu, http, files, dest=dest("SUBJ5", "MR5"), **params).status_code == status
    assert len(scan_files(emu, http, "MR5")) == 3


def test_a_scan_in_two_parts(emu, http):
    study, series = generate_uid(), generate_uid()
    whole = mr_files(8, study, series)
    assert do_import(emu, http, whole[:5], dest=dest("SUBJ6", "A")).status_code == 200
    assert do_import(emu, http, whole[5:], dest=dest("SUBJ6", "A"), overwrite="append").status_code == 200
    assert len(scan_files(emu, http, "A")) == 8

    study, series = generate_uid(), generate_uid()
    whole = mr_files(8, study, series)
    assert do_import(emu, http, whole[:5], dest=dest("SUBJ6", "B")).status_code == 200
    assert do_import(emu, http, whole[4:], dest=dest("SUBJ6", "B"), overwrite="delete").status_code == 200
    assert len(scan_files(emu, http, "B")) == 8

    study, series = generate_uid(), generate_uid()
    whole = mr_files(8, study, series)
    assert do_import(emu, http, whole[:5], dest=dest("SUBJ6", "C")).status_code == 200
    assert do_import(emu, http, whole[4:], dest=dest("SUBJ6", "C"), overwrite="append").status_code == 409
    assert len(scan_files(emu, http, "C")) == 5


def test_modified_series_uid_makes_a_second_scan(emu, http):
    study, series_a, series_b = generate_uid(), generate_uid(), generate_uid()
    f1 = mr_files(1, study, series_a)
    f2, f3 = mr_files(1, study, series_b), mr_files(1, study, series_b)
    f45 = mr_files(2, study, series_a)
    d = dest("SUB5", "MOD")
    assert do_import(emu, http, f1, dest=d, **{"Ignore-Unparsable": "true"}).status_code == 200
    assert do_import(emu, http, f2, dest=d, overwrite="delete").status_code == 200
    assert [s["ID"] for s in scans(emu, http, "MOD")] == ["1", "1-MR1"]
    assert do_import(emu, http, f3, dest=d, overwrite="delete").status_code == 200
    assert do_import(emu, http, f45, dest=d, overwrite="delete").status_code == 200
    assert len(scan_files(emu, http, "MOD", "1-MR1")) == 2
    assert len(scan_files(emu, http, "MOD", "1")) == 3
    assert len(scans(emu, http, "MOD")) == 2


def test_dicom_zip_refuses_unparsable_files_unless_told_to_ignore_them(emu, http):
    files = mr_files(2) + [("non_dicom_text_file.dcm", b"I'm actually a text file!")]
    r = do_import(emu, http, files, project=P, **{"import-handler": "DICOM-zip"})
    assert r.status_code == 400 and "unable to read DICOM object non_dicom_text_file.dcm" in r.text
    r = do_import(emu, http, files, project=P, **{"import-handler": "DICOM-zip", "Ignore-Unparsable": "true"})
    assert r.status_code == 200


def test_dicom_zip_site_default_answers_conflicts_with_400(emu, http):
    emu.default_importer = "DICOM-zip"
    files = mr_files(2)
    assert do_import(emu, http, files, dest=dest("S9", "Z1")).status_code == 200
    assert do_import(emu, http, files, dest=dest("S9", "Z1")).status_code == 400


def test_another_study_under_the_label(emu, http):
    assert do_import(emu, http, mr_files(2), dest=dest("S10", "L10")).status_code == 200
    first_uid = emu.find_experiment(P, "L10").uid
    other = mr_files(2)
    r = do_import(emu, http, other, dest=dest("S10", "L10"), overwrite="append")
    assert r.status_code == 409 and "Invalid modification of session UID" in r.text
    assert do_import(emu, http, other, dest=dest("S10", "L10"), overwrite="delete").status_code == 200
    e = emu.find_experiment(P, "L10")
    assert e.uid == first_uid and len(e.scans) == 2  # merged, not replaced


def test_label_under_another_subject_is_refused_and_left_in_the_prearchive(emu, http):
    files = mr_files(2)
    assert do_import(emu, http, files, dest=dest("ALICE", "L11")).status_code == 200
    r = do_import(emu, http, files, dest=dest("BOB", "L11"), overwrite="append", overwrite_files="true")
    assert r.status_code == 409 and "L11 Already Exists for another Subject" in r.text
    pre = http.get(f"{emu.url}/data/prearchive/projects/{P}", params={"format": "json"}).json()["ResultSet"]["Result"]
    assert [(x["name"], x["status"]) for x in pre] == [("L11", "CONFLICT")]


def test_subject_labels_cleaned_and_matched_case_insensitively(emu, http):
    assert do_import(emu, http, mr_files(1), project=P, subject="nn h.12@x", session="S12A").status_code == 200
    e = emu.find_experiment(P, "S12A")
    assert emu.subject_label(e.subject_id) == "nn_h_12_x"
    assert do_import(emu, http, mr_files(1), project=P, subject="NN_H_12_X", session="S12B").status_code == 200
    assert emu.find_experiment(P, "S12B").subject_id == e.subject_id
    assert len([s for s in emu.subjects.values() if s["project"] == P]) == 1


def test_site_anon_script_rewrites_the_uid(emu, http):
    emu.site_anon_hash = True
    files = mr_files(2)
    sent = pydicom.dcmread(io.BytesIO(files[0][1])).StudyInstanceUID
    assert do_import(emu, http, files, dest=dest("S13", "L13")).status_code == 200
    e = emu.find_experiment(P, "L13")
    assert e.uid and e.uid != sent and e.uid.startswith("2.25.")
