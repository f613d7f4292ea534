"""The XNAT store, driven through the real `xnat` client against the REST emulator."""

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


def test_wrong_credentials(xnat_server, xnat_cfg, xnat_study, monkeypatch):
    monkeypatch.setenv("RTLAKE_XNAT_PASSWORD", "wrong")
    store = open_store(xnat_cfg())
    st = xnat_study("H0009", "ACC901")
    with pytest.raises(StoreError, match="login refused") as ei:
        store.put_study(plan_for(st, "9434765919"), st.files)
    assert not isinstance(ei.value, TransientError)
    assert "wrong" not in str(ei.value)


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

    store = open_store(xnat_cfg(**{"store.xnat.overwrite": "delete"}))
    try:
        store.put_study(plan_for(b, "9434765919"), b.files)
        assert store.has_session(plan_for(b, "9434765919"))
    finally:
        store.close()
    assert xnat_server.find_experiment("RTLAKE", "ACC1001").uid == b.study_uid


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


def test_session_left_in_prearchive_is_reported(xnat_server, xnat_cfg, xnat_study):
    xnat_server.add_project("RTLAKE")
    xnat_server.prearchive_projects.add("RTLAKE")
    store = open_store(xnat_cfg())
    st = xnat_study("H0018", "ACC1801")
    try:
        with pytest.raises(StoreError, match="prearchive") as ei:
            store.put_study(plan_for(st, "9434765919"), st.files)
    finally:
        store.close()
    assert st.study_uid in str(ei.value)
    assert xnat_server.count("POST", r"^/data/services/import$") == 1


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
