"""`rtlake export sessions`: the SOP's eight CSVs from the catalog and from XNAT."""

from __future__ import annotations

import csv
import datetime as dt
import subprocess
import sys
from pathlib import Path

from ingest.catalog import Catalog
from ingest.records import SessionPlan, StudyRecord
from ingest.stores import open_store
from reporting.sessions import TYPES, export_from_catalog, export_from_xnat

#: The SOP's table ("Updating from PACS", gathering ingestion information), verbatim.
SOP_COLUMNS = {
    "MR": ["Subject", "Date", "MR ID", "Scanner", "Scans"],
    "CT": ["Subject", "Date", "XNAT_CTSESSIONDATA ID", "UID", "Scans"],
    "PET": ["Subject", "Date", "XNAT_PETSESSIONDATA ID", "UID", "Scans"],
    "CR": ["Subject", "Date", "XNAT_CRSESSIONDATA ID", "ID", "Session"],
    "DX": ["Subject", "Date", "XNAT_DXSESSIONDATA ID", "UID", "Scans"],
    "RF": ["Subject", "Date", "XNAT_RFSESSIONDATA ID", "ID", "Session"],
    "SR": ["Subject", "Date", "XNAT_SRSESSIONDATA ID", "ID", "Creator"],
    "XA": ["Subject", "Date", "XNAT_XASESSIONDATA ID", "ID", "Creator"],
}


def _read(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def _catalog_with_sessions(path: Path) -> Catalog:
    cat = Catalog(path)
    cat.execute("INSERT INTO patients (hospital_id, nhs_number, subject) VALUES "
                "('H1', '9434765919', '9434765919'), ('H2', NULL, 'NN_H2')")
    rows = [  # study_uid, subject, label, hid, date, modality, location, state, n_scans
        ("1.1", "9434765919", "ACC1", "H1", dt.date(2021, 3, 4), "CT", "http://x/data/experiments/XNAT_E00007", "stored"),
        ("1.2", "9434765919", "ACC2", "H1", dt.date(2021, 2, 1), "PT", "/lake/p/s/ACC2", "stored"),
        ("1.3", "NN_H2", "ACC3", "H2", dt.date(2020, 1, 1), "MR", "/lake/p/NN_H2/ACC3", "stored"),
        ("1.4", "NN_H2", "ACC4", "H2", dt.date(2020, 6, 1), "CR", "/lake/p/NN_H2/ACC4", "stored"),
        ("1.5", "NN_H2", "ACC5", "H2", dt.date(2020, 7, 1), "XA", "/lake/p/NN_H2/ACC5", "stored"),
        ("1.6", "NN_H2", "H2_RT_2020_ACC6", "H2", dt.date(2020, 8, 1), "RTPLAN", "/lake/x", "stored"),
        ("1.7", "NN_H2", "ACC7", "H2", dt.date(2020, 9, 1), "CT", None, "planned"),
    ]
    for uid, subj, label, hid, d, mod, loc, state in rows:
        cat.execute("INSERT INTO sessions (study_uid, project, subject, label, hospital_id, accession, study_date, "
                    "modality, store, location, state) VALUES (?, 'P', ?, ?, ?, ?, ?, ?, 'lake', ?, ?)",
                    [uid, subj, label, hid, label, d, mod, loc, state])
    for uid, series in (("1.1", 3), ("1.2", 2), ("1.3", 1), ("1.4", 1), ("1.5", 1)):
        for k in range(series):
            cat.execute("INSERT INTO scans VALUES (?, ?, ?, 'CT', 'x', 1)", [uid, f"{uid}.{k}", str(k + 1)])
    cat.execute("INSERT INTO studies_seen (study_uid, hospital_id, description, decision, state) VALUES "
                "('1.4', 'H2', 'Dental OPG', 'include', 'ingested')")
    return cat


def test_catalog_export_writes_the_eight_sop_files(tmp_path):
    cat = _catalog_with_sessions(tmp_path / "catalog.duckdb")
    try:
        result = export_from_catalog(cat, tmp_path / "out")
    finally:
        cat.close()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{t}.csv" for t in SOP_COLUMNS)
    for name, cols in SOP_COLUMNS.items():
        assert _read(tmp_path / "out" / f"{name}.csv")[0] == cols
    assert _read(tmp_path / "out" / "CT.csv")[1:] == [["9434765919", "2021-03-04", "ACC1", "1.1", "3"]]
    assert _read(tmp_path / "out" / "PET.csv")[1:] == [["9434765919", "2021-02-01", "ACC2", "1.2", "2"]]
    assert _read(tmp_path / "out" / "MR.csv")[1:] == [["NN_H2", "2020-01-01", "ACC3", "", "1"]]
    assert _read(tmp_path / "out" / "CR.csv")[1:] == [["NN_H2", "2020-06-01", "ACC4", "ACC4", "Dental OPG"]]
    assert _read(tmp_path / "out" / "XA.csv")[1:] == [["NN_H2", "2020-07-01", "ACC5", "ACC5", "rtlake"]]
    assert len(_read(tmp_path / "out" / "DX.csv")) == 1  # header only
    assert result.counts["CT"] == 1  # the planned (not stored) CT is not listed
    assert result.skipped == {"RTPLAN": 1}


def test_xnat_export_reads_the_experiment_search(xnat_server, xnat_cfg, xnat_study, tmp_path):
    store = open_store(xnat_cfg())
    studies = [xnat_study("H1", "ACC10", modality="CT", n_series=2), xnat_study("H1", "ACC11", modality="MR"),
               xnat_study("H2", "ACC12", modality="CT", study_date=dt.date(2019, 1, 2))]
    subjects = ["9434765919", "9434765919", "NN_H2"]
    try:
        for st, subj in zip(studies, subjects):
            rec = StudyRecord(study_uid=st.study_uid, patient_id=st.patient_id, accession=st.accession,
                              study_date=st.study_date, modalities=(st.modality,))
            store.put_study(SessionPlan("RTLAKE", subj, st.accession, rec, st.patient_id), st.files)
        result = export_from_xnat(store, tmp_path / "x")
    finally:
        store.close()
    for name, cols in SOP_COLUMNS.items():
        assert _read(result.files[name])[0] == cols
    assert _read(result.files["CT"])[1:] == [
        ["9434765919", "2023-05-17", "ACC10", studies[0].study_uid, "2"],
        ["NN_H2", "2019-01-02", "ACC12", studies[2].study_uid, "1"],
    ]
    assert _read(result.files["MR"])[1:] == [["9434765919", "2023-05-17", "ACC11", "SYNTH-SCANNER", "1"]]
    # one search per SOP type, by xsiType
    searched = [q.get("xsiType") for m, p, q in xnat_server.log if m == "GET" and p == "/data/experiments"]
    assert searched == [t.xsi_type for t in TYPES]


def test_cli_export_sessions(tmp_path):
    state = tmp_path / "state"
    cat = _catalog_with_sessions(state / "catalog.duckdb")
    cat.close()
    cfg = tmp_path / "rtlake.toml"
    cfg.write_text('[project]\nstate_dir = "state"\n')
    out = tmp_path / "csvs"
    proc = subprocess.run([sys.executable, "-m", "ingest.cli", "export", "sessions", "-c", str(cfg), "-o", str(out)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "CT: 1 sessions" in proc.stdout and "RTPLAN 1" in proc.stdout
    assert _read(out / "SR.csv") == [SOP_COLUMNS["SR"]]

    # no catalog yet: a clear error, exit 1
    cfg2 = tmp_path / "empty.toml"
    cfg2.write_text('[project]\nstate_dir = "nowhere"\n')
    proc = subprocess.run([sys.executable, "-m", "ingest.cli", "export", "sessions", "-c", str(cfg2), "-o", str(out)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert proc.returncode == 1 and "no catalog" in proc.stderr


def test_cli_export_sessions_from_xnat(xnat_server, xnat_env, xnat_study, tmp_path):
    from ingest.config import load_config

    cfg_path = tmp_path / "rtlake.toml"
    cfg_path.write_text(f'[project]\nname = "RTLAKE"\nstate_dir = "state"\n\n[store.xnat]\nurl = "{xnat_server.url}"\n')
    st = xnat_study("H5", "ACC50", modality="CT")
    store = open_store(load_config(cfg_path, {"store.kind": "xnat"}))
    try:
        rec = StudyRecord(study_uid=st.study_uid, patient_id="H5", accession="ACC50", study_date=st.study_date,
                          modalities=("CT",))
        store.put_study(SessionPlan("RTLAKE", "NN_H5", "ACC50", rec, "H5"), st.files)
    finally:
        store.close()
    out = tmp_path / "fromxnat"
    proc = subprocess.run([sys.executable, "-m", "ingest.cli", "export", "sessions", "-c", str(cfg_path),
                           "--from", "xnat", "-o", str(out)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert _read(out / "CT.csv") == [SOP_COLUMNS["CT"], ["NN_H5", "2023-05-17", "ACC50", st.study_uid, "1"]]

    # XNAT refusing the login: exit 1 with a message naming the server
    xnat_server.users["rtlake"] = "changed"
    proc = subprocess.run([sys.executable, "-m", "ingest.cli", "export", "sessions", "-c", str(cfg_path),
                           "--from", "xnat", "-o", str(out)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert proc.returncode == 1 and "login refused" in proc.stderr
