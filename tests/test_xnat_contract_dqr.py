"""Contract: the emulator's DQR plugin against NRG's own test of it and the plugin's source.

Ported (our own code) from NrgXnat/xnat-rest-tests `TestDicomQueryRetrieve.java` and checked
against NrgXnat/dicom-query-retrieve (`DicomQueryRetrieveApi`, `BasicDicomQueryRetrieveService`,
`PacsDequeueThread`, `UpdateRequestStatusArchiveProcessor`), with plain HTTP and a hand-driven
clock, so the queue is watched step by step.

Cases (NRG test or source in brackets):
  1. a DQR-enabled project reads as enabled; an import into one that is not is refused 403
     [testProjectSettings; importFromPacs]
  2. the batch query takes the CSV only as the multipart part `csv_to_store`, the plugin's headers
     make the criteria and the Subject/Session/Relabel columns the relabelMap; a row with no
     criteria is dropped without a word [testImportUsingCSVMethod; _extractImportRequestFromCsv]
  3. one study: queued, gone from the queue once dequeued, history RECEIVED, the session in the
     archive [testBasicDQRImport: runUntilImportNoLongerInQueue, waitForImportsReceivedStatus,
     checkAllStudiesArePresent]
  4. two studies at once: both present; queued with the multi-study priority [testImportMultipleStudies]
  5. relabelling: the sessions are filed under the relabelled subject and label [testImportWithRelabeling]
  6. history entries have their own IDs, not the queue's; the queue time is copied [PacsDequeueThread]
  7. RECEIVED comes with the first object, before the session is complete [UpdateRequestStatusArchiveProcessor]
  8. a receiver without custom processing: a relabelling import is refused unless forceImport, which
     then imports without relabelling [validateDicomScpInstance]
  9. a study with no series on the PACS is left out of the import answer [queueStudyImport]
 10. a failed C-MOVE: history FAILED with a reason; retried up to the attempts setting, each
     attempt its own history entry; then gone from the queue [PacsDequeueThread]
"""

from __future__ import annotations

import pytest

from tests.servers.xnat_emulator import XnatEmulator, login_session

P = "DQRPROJ"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def emu(clock):
    e = XnatEmulator(users={"admin": "pw"}, clock=clock).start()
    e.add_project(P, dqr=True)
    e.dqr_dequeue_delay, e.dqr_arrival_delay, e.dqr_scan_interval = 5.0, 2.0, 1.0
    e.add_pacs_study("2.25.101", "ACC101", "PAT1", "20110101", "MR BRAIN", ("MR",), study_id="S101",
                     patient_name="Weaver^Frank", n_series=3)
    e.add_pacs_study("2.25.102", "ACC102", "PAT2", "20120202", "CT NECK", ("CT",), study_id="S102", n_series=2)
    yield e
    e.stop()


@pytest.fixture
def http(emu):
    s = login_session(emu)
    yield s
    s.close()


def import_request(uids, relabel=None, ae="XNAT", port=8104, force=True, project=P):
    return {"pacsId": 1, "aeTitle": ae, "port": port, "projectId": project, "forceImport": force,
            "studies": [{"studyInstanceUid": u, "seriesInstanceUids": [], "seriesDescriptions": [],
                         "relabelMap": (relabel or {}).get(u, {})} for u in uids]}


def queue_ids(emu, http):
    return {e["id"] for e in http.get(emu.url + "/xapi/dqr/import/queue").json()}


def history(emu, http):
    return http.get(emu.url + "/xapi/dqr/import/history").json()


def labels(emu):
    emu.tick()  # what the next request would see
    return {e.label for e in emu.experiments.values() if e.project == P}


def test_project_settings_and_refusal_of_other_projects(emu, http):
    assert http.get(f"{emu.url}/xapi/dqr/settings/project/{P}/enabled").json() is True
    emu.add_project("PLAIN")
    assert http.get(f"{emu.url}/xapi/dqr/settings/project/PLAIN/enabled").json() is False
    r = http.post(emu.url + "/xapi/dqr/import", json=import_request(["2.25.101"], project="PLAIN"))
    assert r.status_code == 403


def test_batch_query_contract(emu, http):
    csv_text = ("Accession Number,Study Date,Patient ID,DOB,Modality,Study Instance UID,Subject,Session,"
                "Relabel Accession Number\r\n"
                "ACC101,,,,,,subject_relabel_one,,123456789\r\n"
                ",20120101-20121231,PAT2,,CT,,,,\r\n"
                ",,,,,,only_a_subject,only_a_session,\r\n"
                ",,,,,2.25.999,,,\r\n")
    r = http.post(emu.url + "/xapi/dqr/query/batch", data={"pacsId": "1"},
                  files={"file": ("q.csv", csv_text.encode(), "text/csv")})
    assert r.status_code == 400  # the part must be called csv_to_store
    r = http.post(emu.url + "/xapi/dqr/query/batch", data={"pacsId": "1"},
                  files={"csv_to_store": ("q.csv", csv_text.encode(), "text/csv")})
    assert r.status_code == 200
    rows = r.json()
    assert len(rows) == 3  # the row with only relabel columns has no criteria: dropped
    assert rows[0]["criteria"] == {"pacsId": 1, "accessionNumber": "ACC101"}
    assert rows[0]["relabelMap"] == {"Subject": "subject_relabel_one", "Relabel Accession Number": "123456789"}
    assert [s["studyInstanceUid"] for s in rows[0]["studies"]] == ["2.25.101"]
    assert rows[1]["criteria"] == {"pacsId": 1, "patientId": "PAT2", "modality": "CT",
                                   "studyDateRange": {"start": "20120101", "end": "20121231"}}
    assert [s["studyInstanceUid"] for s in rows[1]["studies"]] == ["2.25.102"]
    assert rows[1]["relabelMap"] == {}
    assert rows[2]["studies"] == []  # a study the PACS does not have


def test_one_study_queue_then_history_then_archive(emu, http, clock):
    queued = http.post(emu.url + "/xapi/dqr/import", json=import_request(["2.25.101"])).json()
    assert [(q["studyInstanceUid"], q["status"], q["priority"]) for q in queued] == [("2.25.101", "QUEUED", 1)]
    ids = {q["id"] for q in queued}
    assert ids <= queue_ids(emu, http) and history(emu, http) == []
    assert http.get(f"{emu.url}/xapi/dqr/import/queue/{queued[0]['id']}").status_code == 200
    clock.t += 5  # the dequeue thread takes it
    assert not ids & queue_ids(emu, http)
    assert http.get(f"{emu.url}/xapi/dqr/import/queue/{queued[0]['id']}").status_code == 404
    [h] = history(emu, http)
    assert h["status"] == "ISSUED" and h["id"] not in ids  # its own ID
    assert h["studyInstanceUid"] == "2.25.101" and h["queuedTime"] == queued[0]["queuedTime"]
    clock.t += 10
    assert [x["status"] for x in history(emu, http)] == ["RECEIVED"]
    assert labels(emu) == {"S101"}  # no relabelling asked: the receiver files it by StudyID


def test_two_studies_with_relabelling(emu, http, clock):
    relabel = {u: {"Subject": f"subject_relabel_{u}".replace(".", "_"), "Session": f"session_relabel_{u}".replace(".", "_")}
               for u in ("2.25.101", "2.25.102")}
    queued = http.post(emu.url + "/xapi/dqr/import", json=import_request(list(relabel), relabel, force=False)).json()
    assert sorted(q["priority"] for q in queued) == [10, 10]
    assert all(q["remappingScript"].startswith('version "6.1"') for q in queued)
    clock.t += 20
    assert labels(emu) == {"session_relabel_2_25_101", "session_relabel_2_25_102"}
    e = emu.find_experiment(P, "session_relabel_2_25_101")
    assert emu.subject_label(e.subject_id) == "subject_relabel_2_25_101"


def test_received_before_the_session_is_complete(emu, http, clock):
    http.post(emu.url + "/xapi/dqr/import", json=import_request(["2.25.101"]))
    clock.t += 5 + 2  # dequeued, and the first object has arrived
    assert [x["status"] for x in history(emu, http)] == ["RECEIVED"]
    assert len(emu.find_experiment(P, "S101").scans) == 1
    clock.t += 2
    emu.tick()
    assert len(emu.find_experiment(P, "S101").scans) == 3


def test_receiver_without_custom_processing(emu, http, clock):
    emu.dqr_receivers[("XNAT", 8104)]["custom_processing"] = False
    relabel = {"2.25.102": {"Subject": "NEWSUBJ", "Session": "NEWLABEL"}}
    r = http.post(emu.url + "/xapi/dqr/import", json=import_request(["2.25.102"], relabel, force=False))
    assert r.status_code == 400 and "custom processing" in r.text
    r = http.post(emu.url + "/xapi/dqr/import", json=import_request(["2.25.102"], relabel, force=True))
    assert r.status_code == 200
    clock.t += 20
    assert labels(emu) == {"S102"}  # forced through, not relabelled


def test_study_without_series_on_the_pacs_is_left_out(emu, http):
    queued = http.post(emu.url + "/xapi/dqr/import", json=import_request(["2.25.101", "2.25.555"])).json()
    assert [q["studyInstanceUid"] for q in queued] == ["2.25.101"]


def test_failed_move_is_retried_then_dropped_from_the_queue(emu, http, clock):
    emu.dqr_fail_uids.add("2.25.102")
    emu.dqr_max_attempts = 2
    [q] = http.post(emu.url + "/xapi/dqr/import", json=import_request(["2.25.102"])).json()
    clock.t += 5
    assert q["id"] in queue_ids(emu, http)  # back in the queue for its second attempt
    assert [h["status"] for h in history(emu, http)] == ["FAILED"]
    clock.t += 5
    assert q["id"] not in queue_ids(emu, http)
    hs = history(emu, http)
    assert [h["status"] for h in hs] == ["FAILED", "FAILED"] and len({h["id"] for h in hs}) == 2
    assert all("C-MOVE" in h["errorMessage"] for h in hs)
    assert labels(emu) == set()
