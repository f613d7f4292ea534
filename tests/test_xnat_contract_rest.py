"""Contract: the emulator's login, listing and experiment calls against XNAT's tests and source.

Ported (our own code) from NrgXnat/xnat-rest-tests (`TestAdvancedSearch` data-API counts,
`TestContextlessExperiments`) and checked against xnat-web (`XnatProviderManager`, the
`ExperimentResource` PUT/DELETE handlers), with plain HTTP against tests/servers/xnat_emulator.py.

Cases:
  1. a wrong password at `PUT /data/services/auth` answers 500 (the auth exception is rethrown),
     Basic auth with it on `GET /data/JSESSION` answers 401 [XnatProviderManager]
  2. a call with an expired session: 401 and `WWW-Authenticate: Basic`; on a guest-access site the
     same call is served as the guest: the project is not found, an import is forbidden
  3. `/experiments?columns=xnat:mrSessionData/scans/scan/ID`: one row per scan, the column under
     its lower-cased name; `?xsiType=` counts sessions of a type [TestAdvancedSearch]
  4. `?label=` matches the whole label, not a prefix
  5. `DELETE /data/experiments/{ID}` without a project answers 200 and the session is gone
     [TestContextlessExperiments]
  6. `PUT .../experiments/{ID}?subject_ID=` moves the session to an existing subject and quietly
     keeps it where it was for an unknown one [ExperimentResource.setSubject]
  7. `/data/projects?permissions=edit` leaves out projects the user may only read
"""

from __future__ import annotations

import pytest
import requests

from tests.servers.xnat_emulator import XnatEmulator
from tests.servers.xnat_emulator import login_session as login

P = "RESTPROJ"


@pytest.fixture
def emu():
    e = XnatEmulator(users={"admin": "pw", "reader": "rpw"}).start()
    e.add_project(P)
    with e.lock:
        s1 = e._subject(P, "SUBJ_A", create=True)
        e._subject(P, "SUBJ_B", create=True)
        mr = e._new_experiment(P, s1["ID"], "MR_ONE", "xnat:mrSessionData", "admin")
        for n in ("1", "2", "3"):
            e._scan_for(mr, f"1.2.3.{n}", n, "MR", f"T{n}")
        e._new_experiment(P, s1["ID"], "MR_ONE_B", "xnat:mrSessionData", "admin")
        e._new_experiment(P, s1["ID"], "CT_ONE", "xnat:ctSessionData", "admin")
    yield e
    e.stop()


def rows(resp) -> list[dict]:
    assert resp.status_code == 200, resp.status_code
    return resp.json()["ResultSet"]["Result"]


def test_wrong_password(emu):
    r = requests.put(emu.url + "/data/services/auth", data={"username": "admin", "password": "nope"})
    assert r.status_code == 500
    assert requests.get(emu.url + "/data/JSESSION", auth=("admin", "nope")).status_code == 401
    assert requests.get(emu.url + "/data/JSESSION", auth=("admin", "pw")).status_code == 200


def test_expired_session_and_guest_access(emu):
    s = login(emu)
    emu.expire_sessions()
    r = s.get(f"{emu.url}/data/projects/{P}", params={"format": "json"})
    assert r.status_code == 401 and r.headers.get("WWW-Authenticate", "").startswith("Basic")
    emu.guest_access = True
    assert s.get(f"{emu.url}/data/projects/{P}", params={"format": "json"}).status_code == 404
    assert s.get(emu.url + "/data/auth").text == "User 'guest' is logged in"
    assert s.post(emu.url + "/data/services/import", params={"project": P}, data=b"PK").status_code == 403


def test_scan_rows_and_type_counts(emu):
    s = login(emu)
    scan_rows = rows(s.get(emu.url + "/data/experiments", params={"columns": "xnat:mrSessionData/scans/scan/ID",
                                                                   "format": "json"}))
    assert sum(1 for r in scan_rows if r.get("xnat:mrsessiondata/scans/scan/id")) == 3
    assert "xnat:mrSessionData/scans/scan/ID" not in scan_rows[0]
    assert len(rows(s.get(emu.url + "/data/experiments", params={"xsiType": "xnat:mrSessionData",
                                                                 "format": "json"}))) == 2


def test_label_filter_is_exact(emu):
    s = login(emu)
    got = rows(s.get(f"{emu.url}/data/projects/{P}/experiments", params={"label": "MR_ONE", "format": "json",
                                                                         "columns": "ID,label"}))
    assert [r["label"] for r in got] == ["MR_ONE"]


def test_delete_without_project_context(emu):
    s = login(emu)
    eid = emu.find_experiment(P, "CT_ONE").id
    assert s.delete(f"{emu.url}/data/experiments/{eid}", params={"removeFiles": "true"}).status_code == 200
    assert emu.find_experiment(P, "CT_ONE") is None


def test_moving_a_session_between_subjects(emu):
    s = login(emu)
    e = emu.find_experiment(P, "MR_ONE")
    b = next(x for x in emu.subjects.values() if x["label"] == "SUBJ_B")
    assert s.put(f"{emu.url}/data/projects/{P}/experiments/{e.id}", params={"subject_ID": "NOSUCH"}).status_code == 200
    assert emu.subject_label(emu.find_experiment(P, "MR_ONE").subject_id) == "SUBJ_A"
    assert s.put(f"{emu.url}/data/projects/{P}/experiments/{e.id}", params={"subject_ID": b["ID"]}).status_code == 200
    assert emu.subject_label(emu.find_experiment(P, "MR_ONE").subject_id) == "SUBJ_B"


def test_writable_projects(emu):
    emu.readonly_users.add("reader")
    r = login(emu, "reader", "rpw")
    assert [x["ID"] for x in rows(r.get(emu.url + "/data/projects", params={"format": "json"}))] == [P]
    assert rows(r.get(emu.url + "/data/projects", params={"permissions": "edit", "format": "json"})) == []
    a = login(emu)
    assert [x["ID"] for x in rows(a.get(emu.url + "/data/projects", params={"permissions": "edit",
                                                                            "format": "json"}))] == [P]
