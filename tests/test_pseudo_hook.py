"""The update-run hook: pseudonymised copies in scratch, the plan renamed, the mapping recorded
(0600) and usable for re-identification through `rtlake pseudo lookup`."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from ingest.config import load_config
from ingest.errors import ConfigError
from ingest.pseudo.apply import PseudoFailed, pseudonymise_for_store, pseudonymise_plan
from ingest.pseudo.keys import load_key
from ingest.pseudo.mapping import MappingTable
from ingest.records import SessionPlan, StudyRecord
from tests.fixtures.pseudo import make_rt_set

REPO = Path(__file__).resolve().parents[1]


def _cfg(tmp_path: Path):
    cfg_path = tmp_path / "rtlake.toml"
    cfg_path.write_text(
        "[project]\nname = 'RTRES'\nstate_dir = 'state'\n[pseudo]\nenabled = true\nmapping = 'secret/map.duckdb'\n",
        encoding="utf-8",
    )
    return cfg_path, load_config(cfg_path)


def _plan(s) -> SessionPlan:
    ds = pydicom.dcmread(s.files["ct"][0])
    study = StudyRecord(study_uid=str(ds.StudyInstanceUID), patient_id=s.patient_id, accession=str(ds.AccessionNumber),
                        study_date=dt.date(2021, 3, 14), description=str(ds.StudyDescription),
                        modalities=("CT", "RTSTRUCT", "RTPLAN", "RTDOSE", "SEG"), study_id="77", source="pacs")
    return SessionPlan("RTRES", "9434765919", "9434765919_CT_20210314", study, hospital_id=s.patient_id)


def _lookup(cfg_path: Path, value: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ingest.cli", "pseudo", "lookup", value, "-c", str(cfg_path)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def test_hook_pseudonymises_plan_files_and_mapping(tmp_path, pseudo_key):
    cfg_path, cfg = _cfg(tmp_path)
    s = make_rt_set(tmp_path / "in")
    files = s.all_dicom + [s.xml]
    digests = {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    plan = _plan(s)
    new_plan, out = pseudonymise_for_store(cfg, plan, files, tmp_path / "scratch")

    key = load_key("RTLAKE_PSEUDO_KEY")
    assert new_plan.subject == key.pseudonym("subject", "9434765919")
    assert new_plan.label.startswith("S") and plan.label not in new_plan.label
    assert new_plan.project == "RTRES" and new_plan.hospital_id == ""
    st = new_plan.study
    assert st.patient_id == new_plan.subject
    assert st.study_uid.startswith("2.25.") and st.study_uid != plan.study.study_uid
    assert st.accession == "" and st.study_id == ""
    shift = key.date_shift_days(s.patient_id, 365)
    assert st.study_date == dt.date(2021, 3, 14) - dt.timedelta(days=shift)
    assert s.patient_id not in st.description and st.description.endswith(new_plan.subject)
    assert st.modalities == plan.study.modalities
    # the file-less preview (for store.has_session before retrieval) agrees with the hook
    assert pseudonymise_plan(cfg, plan) == new_plan

    assert len(out) == len(files) and all(p.parent == tmp_path / "scratch" for p in out)
    for p in out:
        raw = p.read_bytes()
        for ident in s.identifiers + ["9434765919", plan.study.study_uid]:
            assert ident.encode() not in raw, f"{ident} in {p.name}"
        if p.suffix == ".dcm":
            ds = pydicom.dcmread(p)
            assert ds.PatientID == ds.PatientName == new_plan.subject
            assert ds.StudyInstanceUID == st.study_uid
    assert all(hashlib.sha256(f.read_bytes()).hexdigest() == d for f, d in digests.items())

    mapping = cfg.pseudo.mapping
    assert stat.S_IMODE(mapping.stat().st_mode) == 0o600
    assert not [p for p in mapping.parent.iterdir() if p.name.endswith(".wal")]
    with MappingTable(mapping, key.fingerprint, read_only=True) as table:
        rows = {(r["kind"], r["original"]): r["pseudonym"] for r in table.lookup(new_plan.subject)}
    assert rows == {("subject", "9434765919"): new_plan.subject, ("hospital_id", s.patient_id): new_plan.subject}

    # authorised re-identification through the CLI
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = _lookup(cfg_path, new_plan.subject, env)
    assert res.returncode == 0, res.stderr
    assert f"hospital_id\t{s.patient_id}\t{new_plan.subject}" in res.stdout
    assert f"subject\t9434765919\t{new_plan.subject}" in res.stdout
    res = _lookup(cfg_path, st.study_uid, env)
    assert res.returncode == 0 and f"uid\t{plan.study.study_uid}\t{st.study_uid}" in res.stdout
    res = _lookup(cfg_path, "P-NOT-A-PSEUDONYM", env)
    assert res.returncode == 1
    # without the key, or with another key, no re-identification
    res = _lookup(cfg_path, new_plan.subject, {k: v for k, v in env.items() if k != "RTLAKE_PSEUDO_KEY"})
    assert res.returncode == 2 and "RTLAKE_PSEUDO_KEY" in res.stderr and s.patient_id not in res.stdout
    res = _lookup(cfg_path, new_plan.subject, {**env, "RTLAKE_PSEUDO_KEY": "some-other-key-0123456789"})
    assert res.returncode == 2 and "another key" in res.stderr

    # while another process writes the table, lookup says so instead of crashing
    with MappingTable(mapping, key.fingerprint):
        res = _lookup(cfg_path, new_plan.subject, env)
    assert res.returncode == 1 and "busy" in res.stderr, res.stderr

    # re-running is idempotent: same plan, same bytes, no new mapping rows
    before = {p.name: p.read_bytes() for p in out}
    again_plan, again = pseudonymise_for_store(cfg, plan, files, tmp_path / "scratch")
    assert again_plan == new_plan
    assert {p.name: p.read_bytes() for p in again} == before
    with MappingTable(mapping, key.fingerprint) as table:
        n = table.count()
        assert table.record([("uid", plan.study.study_uid, st.study_uid)]) == 0
        assert table.count() == n


def test_hook_without_key_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.delenv("RTLAKE_PSEUDO_KEY", raising=False)
    _, cfg = _cfg(tmp_path)
    s = make_rt_set(tmp_path / "in")
    with pytest.raises(ConfigError, match="RTLAKE_PSEUDO_KEY"):
        pseudonymise_for_store(cfg, _plan(s), s.all_dicom, tmp_path / "scratch")
    assert not (tmp_path / "scratch").exists()


def test_hook_refuses_a_study_with_bad_files(tmp_path, pseudo_key):
    _, cfg = _cfg(tmp_path)
    s = make_rt_set(tmp_path / "in")
    junk = tmp_path / "in" / "junk.dcm"
    junk.write_bytes(b"\x00" * 300)
    bad_xml = tmp_path / "in" / "bomb.xml"
    bad_xml.write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xx">]><a>&x;</a>', encoding="utf-8")
    with pytest.raises(PseudoFailed) as exc:
        pseudonymise_for_store(cfg, _plan(s), s.all_dicom + [junk, bad_xml], tmp_path / "scratch")
    problems = dict(exc.value.problems)
    assert set(problems) == {str(junk), str(bad_xml)}
    assert "not a readable DICOM file" in problems[str(junk)]
    assert "DTD" in problems[str(bad_xml)]
    assert s.patient_id not in str(exc.value) and "Smithson" not in str(exc.value)
    assert not cfg.pseudo.mapping.exists()  # nothing recorded for a study that was not delivered


def test_loosened_mapping_table_is_refused(tmp_path, pseudo_key):
    _, cfg = _cfg(tmp_path)
    s = make_rt_set(tmp_path / "in")
    pseudonymise_for_store(cfg, _plan(s), s.files["ct"], tmp_path / "scratch")
    os.chmod(cfg.pseudo.mapping, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        pseudonymise_for_store(cfg, _plan(s), s.files["ct"], tmp_path / "scratch")


def test_standalone_and_update_share_one_mapping_table(tmp_path, pseudo_key):
    from ingest.pseudo.batch import run_batch
    from ingest.pseudo.profile import load_profile

    _, cfg = _cfg(tmp_path)
    s = make_rt_set(tmp_path / "in")
    key = load_key("RTLAKE_PSEUDO_KEY")
    report = run_batch(key, load_profile(None), "2.25", cfg.pseudo.mapping, [tmp_path / "in"], tmp_path / "out")
    assert report.problems == [] and report.new_mappings > 0
    new_plan, _ = pseudonymise_for_store(cfg, _plan(s), s.all_dicom, tmp_path / "scratch")
    with MappingTable(cfg.pseudo.mapping, key.fingerprint, read_only=True) as table:
        kinds = {r["kind"]: r["pseudonym"] for r in table.lookup(s.patient_id)}
    assert kinds["patient_id"] == key.pseudonym("patient", s.patient_id)  # standalone
    assert kinds["hospital_id"] == new_plan.subject  # update run
    assert kinds["date_shift_days"] == str(key.date_shift_days(s.patient_id, 365))  # one shift for both
    # the UIDs agree between the two modes
    assert (tmp_path / "out" / kinds["patient_id"] / new_plan.study.study_uid).is_dir()
