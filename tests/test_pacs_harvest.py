"""Harvest queries against the real Orthanc 1.10: modalities and instance counts with the study, exact patients.

Scenarios (written before the code, from how Orthanc 1.10.1 answers — see scripts/bench/bench_harvest.py):
- a study with a CT series of 3 and an MR series of 2 is one study with modalities CT+MR and 5 instances;
  the counts must be the PACS's, because the update run re-takes a stored study whose count grew and
  the pull checks what arrived against them;
- an instance added to a known study shows in the next listing's count;
- a cohort ID that differs from a PACS patient's only in case gets none of that patient's studies
  (Orthanc's /tools/find folds case on PatientID: `rtp1` finds `RTP1`);
- a patient the PACS does not know is an empty answer, not an error;
- on Orthanc 1.10 a patient with studies costs two look-ups (studies, series), one without details.
"""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest

from ingest.sources._query import StudyQuery
from tests.test_pacs_sources import make_config

PID = "HarvestMix1"  # mixed case on purpose: the lower-case twin below must not match it


def _oid(pid: str) -> str:
    h = hashlib.sha1(pid.encode()).hexdigest()
    return "-".join(h[i:i + 8] for i in range(0, 40, 8))


def _write(tmp_path, pid: str, study_uid: str, series: list[tuple[str, int]], date="19990304", first: int = 0):
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    templates = {"CT": get_testdata_file("CT_small.dcm"), "MR": get_testdata_file("MR_small.dcm")}
    paths = []
    for n_series, (modality, count) in enumerate(series, start=1):
        series_uid = generate_uid(entropy_srcs=[study_uid, str(n_series)])
        for i in range(first, first + count):
            ds = pydicom.dcmread(templates[modality])
            ds.PatientID, ds.PatientName = pid, "HARVEST^TEST"
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(
                entropy_srcs=[series_uid, str(i)])
            ds.AccessionNumber, ds.StudyDescription, ds.StudyDate = "HVACC1", "Mixed series study", date
            ds.SeriesNumber, ds.InstanceNumber, ds.Modality = n_series, i + 1, modality
            p = tmp_path / f"{pid}-{ds.SOPInstanceUID}.dcm"
            ds.save_as(p, enforce_file_format=True)
            paths.append(p)
    return paths


@pytest.fixture
def mixed_study(orthanc, tmp_path):
    """One study: 3 CT + 2 MR instances, dated outside the shared cohort's dates; removed afterwards."""
    from pydicom.uid import generate_uid

    uid = generate_uid(entropy_srcs=[PID, "mixed"])
    files = _write(tmp_path, PID, uid, [("CT", 3), ("MR", 2)])
    orthanc.upload(files)
    yield uid, files
    orthanc.http.delete(f"{orthanc.url}/patients/{_oid(PID)}", timeout=30)


def _source(kind, orthanc, tmp_path, monkeypatch, **orthanc_section):
    from ingest.sources import open_source

    cfg = make_config(kind, orthanc, tmp_path, monkeypatch)
    if orthanc_section:
        cfg.source.orthanc = cfg.source.orthanc.model_copy(update=orthanc_section)
    return open_source(cfg)


def _counted(src):
    n = [0]
    src.client.session.hooks["response"].append(lambda r, *a, **k: n.__setitem__(0, n[0] + 1))
    return n


@pytest.mark.parametrize("kind", ["orthanc-wado", "dicomweb-raw", "dimse-orthanc-get"])
def test_modalities_and_counts_come_with_the_study(kind, orthanc, mixed_study, tmp_path, monkeypatch):
    uid, _files = mixed_study
    with _source(kind, orthanc, tmp_path, monkeypatch) as src:
        (rec,) = src.query_patient(PID)
        assert rec.study_uid == uid
        assert set(rec.modalities) == {"CT", "MR"} and rec.n_instances == 5
        assert rec.primary_modality == "MR"  # MR outranks CT when a study holds both
        # the same figures through the non-patient look-ups (accession, UID)
        assert [(r.n_instances, set(r.modalities)) for r in src.find_accession("HVACC1")] == [(5, {"CT", "MR"})]
        assert [r.n_instances for r in src.find_study(uid)] == [5]


def test_a_new_instance_shows_in_the_next_count(orthanc, mixed_study, tmp_path, monkeypatch):
    uid, _files = mixed_study
    with _source("orthanc-wado", orthanc, tmp_path, monkeypatch) as src:
        assert [r.n_instances for r in src.query_patient(PID)] == [5]
        orthanc.upload(_write(tmp_path, PID, uid, [("CT", 1)], first=3))  # a 4th slice of the CT series
        assert [r.n_instances for r in src.query_patient(PID)] == [6]


def test_patient_ids_are_exact_not_case_folded(orthanc, mixed_study, tmp_path, monkeypatch):
    # what the PACS itself does with a Study-level /tools/find: case folded (the reason for the rule)
    folded = orthanc.http.post(f"{orthanc.url}/tools/find",
                               json={"Level": "Study", "Query": {"PatientID": PID.lower()}}, timeout=30).json()
    assert len(folded) == 1
    with _source("orthanc-wado", orthanc, tmp_path, monkeypatch) as src:
        assert list(src.query_patient(PID.lower())) == []
        assert list(src.find(StudyQuery(patient_id=PID.lower(), accession="HVACC1"))) == []  # /tools/find path
        assert len(list(src.query_patient(PID))) == 1


def test_unknown_patient_is_no_studies(orthanc_loaded, tmp_path, monkeypatch):
    with _source("orthanc-wado", orthanc_loaded, tmp_path, monkeypatch) as src:
        list(src.query_patient("NOBODY-HERE-1"))  # the one-off check of how Orthanc names patients
        n = _counted(src)
        assert list(src.query_patient("NOBODY-HERE-2")) == []
        assert n[0] == 1  # one look-up, answered 404 "Unknown resource"


def test_requests_per_patient_on_orthanc_1_10(orthanc, mixed_study, tmp_path, monkeypatch):
    with _source("orthanc-wado", orthanc, tmp_path, monkeypatch) as full, \
            _source("orthanc-wado", orthanc, tmp_path / "lean", monkeypatch, series_details=False) as lean:
        for src in (full, lean):
            list(src.query_patient(PID))  # includes the one-off naming check
        n_full, n_lean = _counted(full), _counted(lean)
        (rec,) = full.query_patient(PID)
        (bare,) = lean.query_patient(PID)
        assert n_full[0] == 2 and rec.n_instances == 5  # 1.10 ignores requestedTags: studies, then series
        assert n_lean[0] == 1 and bare.n_instances is None and bare.modalities == ()


def test_since_window_is_applied_to_the_listing(orthanc, mixed_study, tmp_path, monkeypatch):
    with _source("orthanc-wado", orthanc, tmp_path, monkeypatch) as src:
        assert len(list(src.query_patient(PID, since=dt.date(1999, 3, 4)))) == 1
        assert list(src.query_patient(PID, since=dt.date(1999, 3, 5))) == []


def test_orthanc_1_11_requested_tags_replace_the_series_listing():
    """From Orthanc 1.11 the answer carries the computed tags (ServerContext::ComputeStudyTags joins the
    series modalities with a backslash; NumberOfStudyRelatedInstances is a decimal string, human format)."""
    from ingest.sources._http import HttpClient
    from ingest.sources.orthanc import OrthancSource
    from ingest.transfer import Transfer

    import requests

    src = OrthancSource("http://127.0.0.1:9", HttpClient(requests.Session(), Transfer("t"), "t"))
    item = {"ID": "x", "MainDicomTags": {"StudyInstanceUID": "1.2.3", "StudyDate": "20240102"},
            "PatientMainDicomTags": {"PatientID": "P1"},
            "RequestedTags": {"ModalitiesInStudy": "CT\\RTSTRUCT", "NumberOfStudyRelatedInstances": "12"}}
    rec = src._record(item, "test")
    assert rec.modalities == ("CT", "RTSTRUCT") and rec.n_instances == 12
    item["RequestedTags"] = {}
    assert src._record(item, "test").n_instances is None  # 1.10: asked, not answered


@pytest.fixture
def uncommon_study(orthanc, dcmqrscp, tmp_path):
    """2 CT slices + 2 instances of a storage class outside C-GET's first-asked set (VL Photographic)."""
    import pydicom
    from pydicom.uid import generate_uid
    from pynetdicom.sop_class import VLPhotographicImageStorage

    from ingest.sources import dimse

    assert VLPhotographicImageStorage not in dimse._COMMON_STORAGE  # the scenario needs the fallback
    pid = "HarvestOdd1"
    uid = generate_uid(entropy_srcs=[pid, "odd"])
    files = _write(tmp_path, pid, uid, [("CT", 2), ("MR", 2)])
    for p in files[2:]:
        ds = pydicom.dcmread(p)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = VLPhotographicImageStorage
        ds.save_as(p, enforce_file_format=True)
    orthanc.upload(files)
    dcmqrscp.upload(files)
    yield pid, uid, files
    orthanc.http.delete(f"{orthanc.url}/patients/{_oid(pid)}", timeout=30)


@pytest.mark.parametrize("kind", ["dimse-orthanc-get", "dimse-dcmqrscp-get"])
def test_c_get_falls_back_to_every_storage_class(kind, uncommon_study, orthanc, dcmqrscp, tmp_path, monkeypatch):
    """C-GET first proposes the common storage classes only (cheaper negotiation); a study holding
    another class must still arrive whole, not end as a partial transfer."""
    from ingest.sources import open_source

    pid, uid, files = uncommon_study
    srv = dcmqrscp if "dcmqrscp" in kind else orthanc
    with open_source(make_config(kind, srv, tmp_path, monkeypatch)) as src:
        rec = next(r for r in src.find_study(uid))
        levels = []
        real = src._c_get
        src._c_get = lambda ident, *a, **k: levels.append(str(ident.QueryRetrieveLevel)) or real(ident, *a, **k)
        got = src.retrieve(rec, tmp_path / "scratch")
    assert not got.partial and len(got.files) == 4
    assert levels == ["STUDY", "STUDY"]  # the common classes, then all of them: no instance-by-instance pass
    assert {p.stem for p in got.files} == {pydicom_sop(p) for p in files}


def pydicom_sop(path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
