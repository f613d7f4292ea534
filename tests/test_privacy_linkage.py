"""Linkage stays on the identified side: the catalog records what the store calls each session,
the master sheet shows both names side by side, the session exports show the store's only
(unless --identified), and RT outputs are named by the lake's subject folders.

Hand-written cases:
  - a subject with two pseudonymised sessions and one with none: the sheet keeps the NHS number
    and the PACS UID, and adds `Subject Pseudonym` and per slot `… Pseudonymised Session i` /
    `… Pseudonymised UID i`; a subject with nothing stored has a `null` pseudonym;
  - a sheet without pseudonymisation has exactly the SOP layout (no extra column);
  - export sessions lists the store's names, date and cleaned description; --identified the
    PACS's; a pseudonymised catalog with a session whose store names were never recorded is
    refused rather than listed under the identified names;
  - sessions stored before the catalog kept store names are filled in: pseudonyms when the
    store location shows them, the identified names when the session was stored before
    pseudonymisation was turned on;
  - RT jobs from the catalog are named by the lake subject folder, not the catalog's NHS number.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import hashlib
import hmac
from pathlib import Path

import pandas as pd
import pytest

from ingest.catalog import Catalog
from ingest.config import load_config
from ingest.pseudo.store_names import fill_store_names
from ingest.rt.cohort import jobs_from_lake
from reporting.master import build_master
from reporting.sessions import StoreNamesMissing, export_from_catalog

D = dt.date
N = "null"
KEY = "rtlake-test-key-0123456789abcdef"  # the pseudo_key fixture's


def by_rule(domain: str, value: str, prefix: str = "") -> str:
    d = hmac.new(KEY.encode(), domain.encode() + b"\x00" + value.encode(), hashlib.sha256).digest()
    if domain == "uid":
        return "2.25." + str(int.from_bytes(d[:16], "big"))
    return prefix + base64.b32encode(d).decode()[:16]


def test_master_sheet_puts_the_store_names_beside_the_identified_ones():
    sessions = pd.DataFrame([
        ("9434765919", "CT", "ACC1", D(2024, 2, 20), "ACC1", "1.1", "3", "lake", "PAAAA", "SAAA1", "2.25.11"),
        ("9434765919", "CT", "ACC2", D(2024, 4, 1), "ACC2", "1.2", "1", "lake", "PAAAA", "SAAA2", "2.25.12"),
    ], columns=["subject", "modality", "session", "date", "session_id", "uid", "scans", "source",
                "store_subject", "store_session", "store_uid"])
    sheet = build_master(sessions, {"9434765919": D(2024, 3, 1)}, slots_per_modality=2, subjects=["NN_H2"],
                         modalities=["CT"], pseudonymised=True)
    got = sheet.rendered()
    cols = ["Subject", "Subject Pseudonym", "Reference Date"]
    for i in (1, 2):
        cols += [f"CT Date {i}", f"CT Difference from Reference Date {i}", f"CT ID {i}", f"CT UID {i}",
                 f"CT Pseudonymised Session {i}", f"CT Pseudonymised UID {i}", f"CT Scans {i}"]
    cols += [f"Failure {f} {i}" for i in (1, 2) for f in ("Date", "Difference from Reference Date", "Modality",
                                                          "Accession", "UID", "Description", "Status")]
    cols.append("Notes")
    assert list(got.columns) == cols
    rows = {r[0]: r for r in got.itertuples(index=False)}
    assert list(rows["9434765919"][:17]) == [
        "9434765919", "PAAAA", D(2024, 3, 1),
        D(2024, 2, 20), -10, "ACC1", "1.1", "SAAA1", "2.25.11", "3",
        D(2024, 4, 1), 31, "ACC2", "1.2", "SAAA2", "2.25.12", "1"]
    assert list(rows["NN_H2"][:3]) == ["NN_H2", N, "not applicable"]

    plain = build_master(sessions, {}, slots_per_modality=1, modalities=["CT"]).rendered()
    assert "Subject Pseudonym" not in plain.columns and not any("Pseudonymised" in c for c in plain.columns)


def _catalog(path: Path) -> Catalog:
    """Two stored sessions of one patient: one pseudonymised (store names set), one planned."""
    cat = Catalog(path)
    cat.execute("INSERT INTO patients (hospital_id, nhs_number, subject) VALUES ('H1', '9434765919', '9434765919')")
    cat.execute("INSERT INTO sessions (study_uid, project, subject, label, hospital_id, accession, study_date, modality, "
                "store, location, state, store_subject, store_label, store_study_uid, store_study_date, "
                "store_description) VALUES "
                "('1.1', 'P', '9434765919', 'ACC1', 'H1', 'ACC1', DATE '2021-03-04', 'CR', 'lake', '/lake/P/PX/SY', "
                "'stored', 'PX', 'SY', '2.25.99', DATE '2020-12-01', 'XR Chest'), "
                "('1.2', 'P', '9434765919', 'ACC2', 'H1', 'ACC2', DATE '2021-05-04', 'CT', 'lake', NULL, "
                "'planned', NULL, NULL, NULL, NULL, NULL)")
    cat.execute("INSERT INTO studies_seen (study_uid, hospital_id, description, decision, state) VALUES "
                "('1.1', 'H1', 'XR Chest 9434765919', 'include', 'ingested')")
    cat.execute("INSERT INTO scans VALUES ('1.1', '2.25.98', '1', 'CR', 'PA', 1)")
    return cat


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))[1:]


def test_session_exports_list_the_store_and_identified_lists_the_pacs(tmp_path):
    cat = _catalog(tmp_path / "c.duckdb")
    try:
        export_from_catalog(cat, tmp_path / "research", pseudonymised=True)
        export_from_catalog(cat, tmp_path / "admin", identified=True, pseudonymised=True)
        cat.execute("UPDATE sessions SET store_subject = NULL WHERE study_uid = '1.1'")
        with pytest.raises(StoreNamesMissing, match="1 stored session"):
            export_from_catalog(cat, tmp_path / "refused", pseudonymised=True)
    finally:
        cat.close()
    assert _rows(tmp_path / "research" / "CR.csv") == [["PX", "2020-12-01", "SY", "SY", "XR Chest"]]
    assert _rows(tmp_path / "admin" / "CR.csv") == [["9434765919", "2021-03-04", "ACC1", "ACC1", "XR Chest 9434765919"]]
    assert not (tmp_path / "refused").exists()


def test_sessions_stored_before_the_store_names_were_kept_are_filled_in(tmp_path, pseudo_key):
    (tmp_path / "rtlake.toml").write_text("[project]\nname = 'P'\nstate_dir = 'state'\n[pseudo]\nenabled = true\n",
                                          encoding="utf-8")
    cfg = load_config(tmp_path / "rtlake.toml")
    subject, label = by_rule("subject", "9434765919", "P"), by_rule("session", "P/ACC1", "S")
    cat = Catalog(tmp_path / "c.duckdb")
    try:
        cat.execute("INSERT INTO sessions (study_uid, project, subject, label, hospital_id, study_date, location, state)"
                    " VALUES ('1.2.3.1', 'P', '9434765919', 'ACC1', 'H1', DATE '2021-03-04', ?, 'stored'), "
                    "('1.2.3.2', 'P', '9434765919', 'ACC2', 'H1', DATE '2021-05-04', '/lake/P/9434765919/ACC2', "
                    "'stored')", [f"/lake/P/{subject}/{label}"])
        cat.execute("INSERT INTO studies_seen (study_uid, hospital_id, accession, study_date, description, decision, "
                    "state) VALUES ('1.2.3.1', 'H1', 'ACC1', DATE '2021-03-04', 'CT Neck', 'include', 'ingested')")
        assert fill_store_names(cfg, cat) == 2
        got = {r[0]: r[1:] for r in cat.execute(
            "SELECT study_uid, store_subject, store_label, store_study_uid, store_study_date FROM sessions").fetchall()}
        assert fill_store_names(cfg, cat) == 0  # done once
    finally:
        cat.close()
    s1 = got["1.2.3.1"]
    assert s1[:3] == (subject, label, by_rule("uid", "1.2.3.1"))
    assert 1 <= (D(2021, 3, 4) - s1[3]).days <= 365  # shifted back by the patient's keyed shift
    assert got["1.2.3.2"] == ("9434765919", "ACC2", "1.2.3.2", D(2021, 5, 4))  # stored before pseudonymisation


def test_rt_jobs_are_named_by_the_lake_subject_folder(tmp_path):
    lake = tmp_path / "lake"
    f = lake / "P" / "PSUBJECT" / "SSESSION" / "scans" / "1" / "a.dcm"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"")
    cat = Catalog(tmp_path / "c.duckdb")
    try:
        cat.execute("INSERT INTO sessions (study_uid, project, subject, label, state) "
                    "VALUES ('1.1', 'P', '9434765919', 'ACC1', 'stored')")  # no store names on record
        cat.execute("INSERT INTO files VALUES ('2.25.1', '1.1', '2.25.2', ?, 0)", [str(f)])
        jobs = jobs_from_lake(lake, "P", tmp_path / "rt", cat)
    finally:
        cat.close()
    assert [(j.patient, j.files) for j in jobs] == [("PSUBJECT", [str(f)])]
