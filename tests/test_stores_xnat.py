"""The XNAT store, driven through the real `xnat` client against the REST emulator.

Scenarios, from how real XNATs and real data misbehave (expected outcomes by XNAT's rules, see
tests/servers/xnat_emulator.py for the source of each):
  * a new study: imported with no `overwrite` parameter; a second run sees it and uploads nothing
  * scan IDs and file URLs are XNAT's, read back (a second series with the same SeriesNumber is
    "1-CT1"; file URLs carry XNAT's resource ID, which we cannot predict)
  * the session appears between our listing and our upload (another uploader): XNAT says 409,
    we re-read and find our own study: no second upload, no failure
  * the label is held under another subject: XNAT's 409 message reaches the failure row
  * grown study with `overwrite = "append"`: new files merged (`append` + `overwrite_files`)
  * `overwrite = "delete"`: DELETE the old session, then import afresh
  * a site anon script hashes UIDs: with identity = 'uid' a clear error naming the setting, with
    identity = 'label' every study once and nothing on a second run
  * labels XNAT would clean ("NN_H.21 X" → "NN_H_21_X"), subjects differing only by case
  * a wrong password: one login for the whole run, a permanent error naming the variables
  * a session expiring on a guest-access site (403/404 instead of 401): logged in again
  * sites whose default importer is DICOM-zip (conflicts are 400)
  * check(): what it reports, a read-only user, a missing project
  * move_session: NN_<id> → NHS number, repeated, and refused when the session is elsewhere
"""

from __future__ import annotations

import pytest

from ingest.errors import StoreError, StoreUnavailable, TransientError
from ingest.records import SessionPlan, StudyRecord
from ingest.stores import open_store


def plan_for(st, subject: str, label: str | None = None, project: str = "RTLAKE", hospital_id: str = "H0001"):
    rec = StudyRecord(study_uid=st.study_uid, patient_id=st.patient_id, accession=st.accession,
                      study_date=st.study_date, modalities=(st.modality,))
    return SessionPlan(project=project, subject=subject, label=label or st.accession, study=rec,
                       hospital_id=hospital_id)


def test_upload_creates_project_subject_and_session_then_skips(xnat_server, xnat_cfg, xnat_study):
    store = open_store(xnat_cfg())
    st = xnat_study("H0001", "ACC100", n_series=2, n_instances=3)
    plan = plan_for(st, "9434765919")
    try:
        assert not store.has_session(plan)
        stored = store.put_study(plan, st.files)
    finally:
        store.close()

    assert "RTLAKE" in xnat_server.projects
    e = xnat_server.find_experiment("RTLAKE", "ACC100")
    assert e is not None and e.uid == st.study_uid and e.xsi_type == "xnat:ctSessionData"
    assert xnat_server.subject_label(e.subject_id) == "9434765919"
    assert sorted(len(s.sop_uids) for s in e.scans.values()) == [3, 3]
    assert e.date == "2023-05-17"
    assert len(stored.scans) == 2 and len(stored.files) == 6
    assert stored.location.endswith(f"/data/experiments/{e.id}")
    [q] = [q for m, p, q in xnat_server.log if p == "/data/services/import"]
    assert "overwrite" not in q  # a new session: XNAT must refuse, not merge, if the label exists after all
    assert (q["project"], q["subject"], q["session"], q["dest"]) == ("RTLAKE", "9434765919", "ACC100", "/archive")
    # file URLs as XNAT lists them (its resource IDs), one per instance we sent
    held = {f"{xnat_server.url}/data/experiments/{e.id}/scans/{sc.id}/resources/{sc.resource_id}/files/{name}"
            for sc in e.scans.values() for name in sc.files}
    assert {f.path for f in stored.files} == held
    assert {f.sop_uid for f in stored.files} == {f["sop"] for sc in e.scans.values() for f in sc.files.values()}
    assert sorted((sc.scan_id, sc.n_files) for sc in stored.scans) == [("1", 3), ("2", 3)]

    # a new store object (a second run) sees it is there and uploads nothing
    store2 = open_store(xnat_cfg())
    try:
        assert store2.has_session(plan)
        again = store2.put_study(plan, st.files)  # repeating a put is safe too
    finally:
        store2.close()
    assert again.location == stored.location
    assert sorted((s.series_uid, s.scan_id, s.modality) for s in again.scans) == sorted(
        (s.series_uid, s.scan_id, "CT") for s in stored.scans)
    assert xnat_server.count("POST", r"^/data/services/import$") == 1


def test_nn_subject_and_several_sessions_per_subject(xnat_server, xnat_cfg, xnat_study):
    store = open_store(xnat_cfg())
    a = xnat_study("H0002", "ACC201", modality="MR")
    b = xnat_study("H0002", "ACC202")
    try:
        store.put_study(plan_for(a, "NN_H0002", hospital_id="H0002"), a.files)
        store.put_study(plan_for(b, "NN_H0002", hospital_id="H0002"), b.files)
    finally:
        store.close()
    ea, eb = xnat_server.find_experiment("RTLAKE", "ACC201"), xnat_server.find_experiment("RTLAKE", "ACC202")
    assert ea.subject_id == eb.subject_id
    assert xnat_server.subject_label(ea.subject_id) == "NN_H0002"
    assert ea.xsi_type == "xnat:mrSessionData"
    assert len([s for s in xnat_server.subjects.values() if s["label"] == "NN_H0002"]) == 1


def test_expired_server_session_logs_in_again(xnat_server, xnat_cfg, xnat_study):
    store = open_store(xnat_cfg())
    a, b = xnat_study("H0003", "ACC301"), xnat_study("H0003", "ACC302")
    try:
        store.put_study(plan_for(a, "9434765870"), a.files)
        xnat_server.expire_sessions()
        store.put_study(plan_for(b, "9434765870"), b.files)
        assert store.client.logins == 2
    finally:
        store.close()
    assert xnat_server.find_experiment("RTLAKE", "ACC302") is not None


def test_server_errors_are_retried(xnat_server, xnat_cfg, xnat_study):
    xnat_server.add_project("RTLAKE")
    fault = xnat_server.add_fault("POST", r"^/data/services/import$", status=503, body="busy", times=2)
    store = open_store(xnat_cfg())
    st = xnat_study("H0004", "ACC401")
    try:
        store.put_study(plan_for(st, "9434765919"), st.files)
    finally:
        store.close()
    assert fault.hits == 2
    assert xnat_server.count("POST", r"^/data/services/import$") == 3
    assert xnat_server.find_experiment("RTLAKE", "ACC401") is not None


def test_import_timeout_is_not_uploaded_twice(xnat_server, xnat_cfg, xnat_study):
    """XNAT archives the session but answers after our read timeout: the retry finds it archived."""
    xnat_server.add_project("RTLAKE")
    xnat_server.add_fault("POST", r"^/data/services/import$", status=None, delay=3.0, after=True)
    store = open_store(xnat_cfg(**{"store.xnat.import_timeout": 1.0}))
    st = xnat_study("H0005", "ACC501")
    try:
        stored = store.put_study(plan_for(st, "9434765919"), st.files)
    finally:
        store.close()
    assert xnat_server.count("POST", r"^/data/services/import$") == 1
    assert stored.location.endswith(xnat_server.find_experiment("RTLAKE", "ACC501").id)


def test_persistent_server_error_is_transient_and_names_server_and_study(xnat_server, xnat_cfg, xnat_study):
    xnat_server.add_project("RTLAKE")
    xnat_server.add_fault("POST", r"^/data/services/import$", status=500, body="boom", times=10)
    store = open_store(xnat_cfg())
    st = xnat_study("H0006", "ACC601")
    try:
        with pytest.raises(StoreUnavailable) as ei:
            store.put_study(plan_for(st, "9434765919"), st.files)
    finally:
        store.close()
    msg = str(ei.value)
    assert isinstance(ei.value, TransientError)
    assert xnat_server.url in msg and st.study_uid in msg and "500" in msg
    assert "9434765919" not in msg
    assert xnat_server.count("POST", r"^/data/services/import$") == 3  # 1 + 2 retries


def test_forbidden_project_is_a_clear_permanent_error(xnat_server, xnat_cfg, xnat_study):
    xnat_server.add_project("RTLAKE")
    xnat_server.forbidden_projects.add("RTLAKE")
    store = open_store(xnat_cfg())
    st = xnat_study("H0007", "ACC701")
    try:
        with pytest.raises(StoreError) as ei:
            store.put_study(plan_for(st, "9434765919"), st.files)
    finally:
        store.close()
    assert not isinstance(ei.value, TransientError)
    assert "403" in str(ei.value) and xnat_server.url in str(ei.value) and st.study_uid in str(ei.value)
    assert "9434765919" not in str(ei.value)


def test_missing_project_without_create_rights(xnat_server, xnat_cfg, xnat_study):
    store = open_store(xnat_cfg(**{"store.xnat.create_project": False}))
    st = xnat_study("H0008", "ACC801")
    try:
        with pytest.raises(StoreError, match="project RTLAKE does not exist"):
            store.put_study(plan_for(st, "9434765919"), st.files)
    finally:
        store.close()
    # and a non-admin cannot create it: refused, not retried
    xnat_server.admin_users.clear()
    store = open_store(xnat_cfg())
    try:
        with pytest.raises(StoreError, match="403"):
            store.put_study(plan_for(st, "9434765919"), st.files)
    finally:
        store.close()


def test_wrong_credentials_cost_one_login_for_the_whole_run(xnat_server, xnat_cfg, xnat_study, monkeypatch):
    monkeypatch.setenv("RTLAKE_XNAT_PASSWORD", "wrong-pw-123")
    store = open_store(xnat_cfg())
    a, b = xnat_study("H0009", "ACC901"), xnat_study("H0009", "ACC902")
    try:
        with pytest.raises(StoreError, match="login refused") as ei:
            store.check()
        results = store.put_studies([(plan_for(a, "9434765919"), a.files), (plan_for(b, "9434765919"), b.files)])
    finally:
        store.close()
    assert not isinstance(ei.value, TransientError)
    msg = str(ei.value)
    assert "500" in msg and "$RTLAKE_XNAT_USER" in msg and "$RTLAKE_XNAT_PASSWORD" in msg
    assert "wrong-pw-123" not in msg
    assert all(isinstance(r, StoreError) and not isinstance(r, TransientError) and "login refused" in str(r)
               for r in results)
    assert xnat_server.login_attempts == 1  # XNAT answers a wrong password with 500: not retried


def test_label_taken_by_another_study_follows_overwrite_policy(xnat_server, xnat_cfg, xnat_study):
    a = xnat_study("H0010", "ACC1001")
    b = xnat_study("H0010", "ACC1001")  # same accession, another study
    store = open_store(xnat_cfg())
    try:
        store.put_study(plan_for(a, "9434765919"), a.files)
        with pytest.raises(StoreError, match="label already used"):
            store.put_study(plan_for(b, "9434765919"), b.files)
    finally:
        store.close()
    assert xnat_server.find_experiment("RTLAKE", "ACC1001").uid == a.study_uid

    old_id = xnat_server.find_experiment("RTLAKE", "ACC1001").id
    store = open_store(xnat_cfg(**{"store.xnat.overwrite": "delete"}))
    try:
        store.put_study(plan_for(b, "9434765919"), b.files)
        assert store.has_session(plan_for(b, "9434765919"))
    finally:
        store.close()
    e = xnat_server.find_experiment("RTLAKE", "ACC1001")
    assert e.uid == b.study_uid and e.id != old_id  # replaced: XNAT's own overwrite=delete would only merge
    deletes = [q for m, p, q in xnat_server.log if m == "DELETE" and p == f"/data/experiments/{old_id}"]
    assert deletes == [{"removeFiles": "true"}]
    last_import = [q for m, p, q in xnat_server.log if p == "/data/services/import"][-1]
    assert "overwrite" not in last_import


def test_a_file_of_another_study_is_refused_before_upload(xnat_server, xnat_cfg, xnat_study):
    a, b = xnat_study("H0011", "ACC1101"), xnat_study("H0011", "ACC1102")
    store = open_store(xnat_cfg())
    try:
        with pytest.raises(StoreError, match=str(b.files[0].name)):
            store.put_study(plan_for(a, "9434765919"), a.files + b.files[:1])
    finally:
        store.close()
    assert xnat_server.count("POST", r"^/data/services/import$") == 0


def test_put_studies_returns_one_result_per_item(xnat_server, xnat_cfg, xnat_study):
    xnat_server.add_project("RTLAKE")
    xnat_server.add_fault("POST", r"^/data/services/import$", status=403, body="nope", times=1)
    a, b = xnat_study("H0012", "ACC1201"), xnat_study("H0012", "ACC1202")
    store = open_store(xnat_cfg())
    try:
        results = store.put_studies([(plan_for(a, "9434765919"), a.files), (plan_for(b, "9434765919"), b.files)])
    finally:
        store.close()
    assert isinstance(results[0], StoreError) and a.study_uid in str(results[0])
    assert results[1].location.endswith(xnat_server.find_experiment("RTLAKE", "ACC1202").id)


def test_session_listing_by_type(xnat_server, xnat_cfg, xnat_study):
    a = xnat_study("H0013", "ACC1301", modality="MR", n_series=3)
    b = xnat_study("H0013", "ACC1302")
    store = open_store(xnat_cfg())
    try:
        store.put_study(plan_for(a, "NN_H0013"), a.files)
        store.put_study(plan_for(b, "NN_H0013"), b.files)
        mr = store.session_rows("xnat:mrSessionData")
        allrows = store.list_sessions()
    finally:
        store.close()
    assert [(r["label"], r["n_scans"], r["study_uid"], r["subject"], r["modality"]) for r in mr] == [
        ("ACC1301", 3, a.study_uid, "NN_H0013", "MR")]
    assert sorted(r["label"] for r in allrows) == ["ACC1301", "ACC1302"]
    assert all(r["creator"] == "rtlake" and r["date"] == "2023-05-17" for r in allrows)


def test_html_page_instead_of_data_is_retried(xnat_server, xnat_cfg, xnat_study):
    xnat_server.add_project("RTLAKE")
    fault = xnat_server.add_fault("GET", r"^/data/projects/RTLAKE/experiments$", status=200,
                                  body="<html><body>proxy says hello</body></html>", content_type="text/html")
    store = open_store(xnat_cfg())
    st = xnat_study("H0014", "ACC1401")
    try:
        assert not store.has_session(plan_for(st, "9434765919"))
    finally:
        store.close()
    assert fault.hits == 1


def test_no_credentials_is_a_clear_error(xnat_server, xnat_cfg, xnat_study, monkeypatch, tmp_path):
    monkeypatch.delenv("RTLAKE_XNAT_USER")
    monkeypatch.delenv("RTLAKE_XNAT_PASSWORD")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    st = xnat_study("H0015", "ACC1501")
    store = open_store(xnat_cfg())
    try:
        with pytest.raises(StoreError) as ei:
            store.put_study(plan_for(st, "9434765919"), st.files)
    finally:
        store.close()
    assert xnat_server.url in str(ei.value) and "no credentials" in str(ei.value)
    assert xnat_server.count("PUT", r"^/data/services/auth$") == 0


def test_credentials_from_netrc(xnat_server, xnat_cfg, xnat_study, monkeypatch, tmp_path):
    monkeypatch.delenv("RTLAKE_XNAT_USER")
    monkeypatch.delenv("RTLAKE_XNAT_PASSWORD")
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login rtlake password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    st = xnat_study("H0016", "ACC1601")
    store = open_store(xnat_cfg())
    try:
        store.put_study(plan_for(st, "9434765919"), st.files)
    finally:
        store.close()
    assert xnat_server.find_experiment("RTLAKE", "ACC1601") is not None


def test_no_patient_identifiers_in_logs(xnat_server, xnat_cfg, xnat_study, caplog):
    # INFO is what `rtlake -v` shows; at DEBUG (-vv) urllib3 itself logs request URLs.
    caplog.set_level("INFO")
    xnat_server.add_fault("POST", r"^/data/services/import$", status=500,
                          body="failed for subject 9434765919 patient H0017", times=10)
    store = open_store(xnat_cfg())
    st = xnat_study("H0017", "ACC1701")
    try:
        results = store.put_studies([(plan_for(st, "9434765919", hospital_id="H0017"), st.files)])
    finally:
        store.close()
    assert isinstance(results[0], StoreUnavailable)
    assert "9434765919" not in str(results[0]) and "H0017" not in str(results[0])
    assert caplog.records and "9434765919" not in caplog.text and "H0017" not in caplog.text


def test_dest_archive_archives_even_into_a_manual_prearchive_project(xnat_server, xnat_cfg, xnat_study):
    """FinishImageUpload: dest=/archive archives whatever the project's prearchive setting."""
    xnat_server.add_project("RTLAKE")
    xnat_server.prearchive_projects.add("RTLAKE")
    store = open_store(xnat_cfg())
    st = xnat_study("H0018", "ACC1801")
    try:
        stored = store.put_study(plan_for(st, "9434765919"), st.files)
    finally:
        store.close()
    e = xnat_server.find_experiment("RTLAKE", "ACC1801")
    assert e is not None and stored.location.endswith(e.id)
    assert [q.get("dest") for m, p, q in xnat_server.log if p == "/data/services/import"] == ["/archive"]


def test_tls_with_custom_ca_bundle(xnat_env, xnat_study, tmp_path):
    """Verification stays on: a private CA works through ca_bundle, and fails clearly without it."""
    import shutil
    import subprocess

    from ingest.config import load_config
    from tests.servers.xnat_emulator import XnatEmulator

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    ca, ca_key, cert, key, csr = (tmp_path / n for n in ("ca.pem", "ca.key", "cert.pem", "key.pem", "s.csr"))
    ext = tmp_path / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    for cmd in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=rtlake test CA",
         "-keyout", str(ca_key), "-out", str(ca)],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(csr)],
        ["x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "1",
         "-extfile", str(ext), "-out", str(cert)],
    ):
        subprocess.run(["openssl", *cmd], check=True, capture_output=True)
    emu = XnatEmulator().start(tls=(cert, key))
    st = xnat_study("H0019", "ACC1901")
    base = {"project.state_dir": str(tmp_path / "state"), "project.name": "RTLAKE", "store.kind": "xnat",
            "store.xnat.url": emu.url, "source.transfer.retries": 0}
    try:
        store = open_store(load_config(None, base))
        try:
            with pytest.raises(StoreError, match="ca_bundle"):
                store.put_study(plan_for(st, "9434765919"), st.files)
        finally:
            store.close()
        store = open_store(load_config(None, {**base, "store.xnat.ca_bundle": str(ca)}))
        try:
            store.put_study(plan_for(st, "9434765919"), st.files)
        finally:
            store.close()
        assert emu.find_experiment("RTLAKE", "ACC1901") is not None
    finally:
        emu.stop()


# -- XNAT's own rules -------------------------------------------------------------------------------
def test_session_appearing_between_listing_and_upload_is_recognised(xnat_server, xnat_cfg, xnat_study):
    st = xnat_study("H0020", "ACC2001")
    plan = plan_for(st, "9434765919")
    store = open_store(xnat_cfg())
    try:
        assert not store.has_session(plan)  # the listing is taken now
        other = open_store(xnat_cfg())  # another uploader stores the same study meanwhile
        try:
            other.put_study(plan, st.files)
        finally:
            other.close()
        stored = store.put_study(plan, st.files)
    finally:
        store.close()
    e = xnat_server.find_experiment("RTLAKE", "ACC2001")
    assert stored.location.endswith(e.id)
    statuses = [q for m, p, q in xnat_server.log if p == "/data/services/import"]
    assert len(statuses) == 2 and len(xnat_server.experiments) == 1  # the second was refused (409), not merged
    assert len(stored.scans) == 1


def test_label_held_under_another_subject_names_xnats_reason(xnat_server, xnat_cfg, xnat_study):
    st = xnat_study("H0021", "ACC2101")
    store = open_store(xnat_cfg())
    try:
        store.put_study(plan_for(st, "9434765919"), st.files)
    finally:
        store.close()
    store = open_store(xnat_cfg(**{"store.xnat.overwrite": "append"}))
    try:
        with pytest.raises(StoreError, match="another subject") as ei:
            store.put_study(plan_for(st, "9434765870"), st.files)
    finally:
        store.close()
    assert "9434765870" not in str(ei.value)


def test_append_merges_new_files_of_a_grown_study(xnat_server, xnat_cfg, xnat_study, tmp_path):
    from tests.fixtures.xnat import write_study

    st = xnat_study("H0022", "ACC2201", n_instances=2)
    more = write_study(tmp_path / "more", "H0022", "ACC2201", n_instances=3, study_uid=st.study_uid)
    store = open_store(xnat_cfg(**{"store.xnat.overwrite": "append"}))
    try:
        store.put_study(plan_for(st, "9434765919"), st.files)
        grown = store.put_study(plan_for(st, "9434765919"), st.files + more.files)
    finally:
        store.close()
    e = xnat_server.find_experiment("RTLAKE", "ACC2201")
    assert sorted(len(s.files) for s in e.scans.values()) == [2, 3]  # the new series beside the first
    imports = [q for m, p, q in xnat_server.log if p == "/data/services/import"]
    assert "overwrite" not in imports[0]
    assert (imports[1]["overwrite"], imports[1]["overwrite_files"]) == ("append", "true")
    assert len(grown.files) == 5 and grown.problems == []


def test_none_leaves_an_existing_session_alone(xnat_server, xnat_cfg, xnat_study, tmp_path):
    st = xnat_study("H0023", "ACC2301", n_instances=2)
    store = open_store(xnat_cfg())
    try:
        store.put_study(plan_for(st, "9434765919"), st.files)
        store.put_study(plan_for(st, "9434765919"), st.files)
    finally:
        store.close()
    assert xnat_server.count("POST", r"^/data/services/import$") == 1


@pytest.mark.parametrize("identity", ["uid", "label"])
def test_site_anonymisation_rewriting_uids(xnat_server, xnat_cfg, xnat_study, identity):
    xnat_server.site_anon_hash = True
    st = xnat_study("H0024", "ACC2401")
    plan = plan_for(st, "9434765919")
    cfg = xnat_cfg(**{"store.xnat.identity": identity})
    store = open_store(cfg)
    try:
        if identity == "uid":
            with pytest.raises(StoreError, match=r"identity = 'label'"):
                store.put_study(plan, st.files)
        else:
            store.put_study(plan, st.files)
    finally:
        store.close()
    e = xnat_server.find_experiment("RTLAKE", "ACC2401")
    assert e is not None and e.uid != st.study_uid  # XNAT holds it under a rewritten UID either way
    store = open_store(cfg)  # the next run
    try:
        if identity == "uid":
            assert not store.has_session(plan)
            with pytest.raises(StoreError, match=r"identity = 'label'"):
                store.put_study(plan, st.files)
        else:
            assert store.has_session(plan)
            store.put_study(plan, st.files)
    finally:
        store.close()
    assert xnat_server.count("POST", r"^/data/services/import$") == 1


def test_labels_cleaned_as_xnat_cleans_them(xnat_server, xnat_cfg, xnat_study):
    st = xnat_study("H.25 X", "ACC2501")
    plan = plan_for(st, "NN_H.25 X", label="ACC 2501", hospital_id="H.25 X")
    store = open_store(xnat_cfg())
    try:
        stored = store.put_study(plan, st.files)
        assert store.has_session(plan)
    finally:
        store.close()
    e = xnat_server.find_experiment("RTLAKE", "ACC_2501")
    assert e is not None and xnat_server.subject_label(e.subject_id) == "NN_H_25_X"
    assert (stored.plan.subject, stored.plan.label) == ("NN_H_25_X", "ACC_2501")  # recorded as filed
    store = open_store(xnat_cfg())
    try:
        store.put_study(plan, st.files)  # next run: recognised under the cleaned labels
    finally:
        store.close()
    assert xnat_server.count("POST", r"^/data/services/import$") == 1


def test_subject_differing_only_in_case_is_the_same_subject(xnat_server, xnat_cfg, xnat_study):
    xnat_server.add_project("RTLAKE")
    with xnat_server.lock:
        existing = xnat_server._subject("RTLAKE", "nn_h0026", create=True)
    st = xnat_study("H0026", "ACC2601")
    store = open_store(xnat_cfg())
    try:
        store.put_study(plan_for(st, "NN_H0026", hospital_id="H0026"), st.files)
    finally:
        store.close()
    assert xnat_server.find_experiment("RTLAKE", "ACC2601").subject_id == existing["ID"]
    assert len(xnat_server.subjects) == 1


def test_scan_ids_are_xnats(xnat_server, xnat_cfg, xnat_study):
    st = xnat_study("H0027", "ACC2701", n_series=2, series_numbers=(1, 1))
    store = open_store(xnat_cfg())
    try:
        stored = store.put_study(plan_for(st, "9434765919"), st.files)
    finally:
        store.close()
    assert sorted(s.scan_id for s in stored.scans) == ["1", "1-CT1"]


def test_pet_mr_study_is_a_pet_mr_session(xnat_server, xnat_cfg, xnat_study):
    st = xnat_study("H0028", "ACC2801", n_series=2, series_modalities=("PT", "MR"))
    store = open_store(xnat_cfg())
    try:
        stored = store.put_study(plan_for(st, "9434765919"), st.files)
        rows = store.list_sessions()
    finally:
        store.close()
    assert xnat_server.find_experiment("RTLAKE", "ACC2801").xsi_type == "xnat:petmrSessionData"
    assert sorted(s.modality for s in stored.scans) == ["MR", "PT"]
    assert [(r["xsi_type"], r["modality"], r["n_scans"]) for r in rows] == [("xnat:petmrSessionData", "PT", 2)]


def test_expired_session_on_a_guest_access_site(xnat_server, xnat_cfg, xnat_study):
    xnat_server.guest_access = True
    a, b = xnat_study("H0029", "ACC2901"), xnat_study("H0029", "ACC2902")
    store = open_store(xnat_cfg())
    try:
        store.put_study(plan_for(a, "9434765919"), a.files)
        xnat_server.expire_sessions()  # the next call is served as the guest: 403/404, no 401
        store.put_study(plan_for(b, "9434765919"), b.files)
        assert store.client.logins == 2
    finally:
        store.close()
    assert xnat_server.find_experiment("RTLAKE", "ACC2902") is not None


def test_dicom_zip_site_conflicts_answer_400(xnat_server, xnat_cfg, xnat_study):
    xnat_server.default_importer = "DICOM-zip"
    st = xnat_study("H0030", "ACC3001")
    store = open_store(xnat_cfg())
    try:
        assert not store.has_session(plan_for(st, "9434765919"))
        other = open_store(xnat_cfg())
        try:
            other.put_study(plan_for(st, "9434765919"), st.files)
        finally:
            other.close()
        stored = store.put_study(plan_for(st, "9434765919"), st.files)  # refused with 400, then recognised
    finally:
        store.close()
    assert stored.location.endswith(xnat_server.find_experiment("RTLAKE", "ACC3001").id)


def test_check_reports_and_refuses(xnat_server, xnat_cfg):
    store = open_store(xnat_cfg())
    try:
        lines = store.check()  # the project does not exist yet; create_project is on
    finally:
        store.close()
    assert any("logged in as rtlake" in ln for ln in lines)
    assert any("created at the first upload" in ln for ln in lines)
    xnat_server.add_project("RTLAKE")
    store = open_store(xnat_cfg())
    try:
        assert any("may add subjects and sessions" in ln for ln in store.check())
    finally:
        store.close()
    xnat_server.readonly_users.add("rtlake")
    store = open_store(xnat_cfg())
    try:
        with pytest.raises(StoreError, match="may not add data to project RTLAKE"):
            store.check()
    finally:
        store.close()
    xnat_server.projects.clear()
    store = open_store(xnat_cfg(**{"store.xnat.create_project": False}))
    try:
        with pytest.raises(StoreError, match="create_project"):
            store.check()
    finally:
        store.close()


def test_check_when_xnat_is_unreachable(xnat_cfg):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = open_store(xnat_cfg(**{"store.xnat.url": f"http://127.0.0.1:{port}"}))
    try:
        with pytest.raises(StoreUnavailable, match="cannot connect"):
            store.check()
    finally:
        store.close()


def test_move_session_to_the_nhs_number(xnat_server, xnat_cfg, xnat_study):
    st = xnat_study("H0031", "ACC3101")
    store = open_store(xnat_cfg())
    try:
        stored = store.put_study(plan_for(st, "NN_H0031", hospital_id="H0031"), st.files)
        moved = store.move_session("RTLAKE", "NN_H0031", "9434765919", "ACC3101")
        again = store.move_session("RTLAKE", "NN_H0031", "9434765919", "ACC3101")  # repeated: nothing to do
        with pytest.raises(StoreError, match="not under the subject"):
            store.move_session("RTLAKE", "NN_H9999", "9434765870", "ACC3101")
        with pytest.raises(StoreError, match="does not exist"):
            store.move_session("RTLAKE", "NN_H0031", "9434765919", "NOSUCH")
        assert store.has_session(plan_for(st, "9434765919", hospital_id="H0031"))
    finally:
        store.close()
    e = xnat_server.find_experiment("RTLAKE", "ACC3101")
    assert xnat_server.subject_label(e.subject_id) == "9434765919"
    assert moved == again == stored.location
    assert len(e.scans) == 1  # the data moved with it


def test_a_failed_logout_leaves_no_thread_calling_xnat(xnat_server, xnat_cfg):
    """xnatpy stops its keep-alive thread only after a successful logout; a refused one must not leave it running."""
    import threading

    import time

    def keepalive() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "XNATpyKeepAliveThread" and t.is_alive()}

    before = keepalive()  # threads other tests' connections may still be winding down are not ours
    xnat_server.add_project("RTLAKE")
    store = open_store(xnat_cfg())
    store.check()
    assert keepalive() - before, "the store's session should have started xnatpy's keep-alive thread"
    xnat_server.add_fault("DELETE", r"^/data/JSESSION$", 500, "boom", times=5)
    store.close()
    deadline = time.monotonic() + 5
    while keepalive() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert keepalive() - before == set()
