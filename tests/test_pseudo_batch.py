"""Standalone `rtlake pseudo run` over folders and a DAMS-style xlsx list; XML files; failures
in the catalog; `rtlake pseudo check`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from ingest.errors import InputFileError
from ingest.pseudo.batch import read_input_list
from tests.fixtures.pseudo import make_rt_set

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, env: dict | None = None, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "ingest.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def _config(tmp_path: Path) -> Path:
    p = tmp_path / "rtlake.toml"
    p.write_text("[project]\nstate_dir = 'state'\n[pseudo]\nmapping = 'state/pseudo-map.duckdb'\n", encoding="utf-8")
    return p


def test_batch_from_xlsx_list_with_xml_and_a_bad_file(tmp_path, pseudo_key):
    a = make_rt_set(tmp_path / "Smithson_Alice", seed=1)
    b = make_rt_set(tmp_path / "Jones_Bob", patient_id="HOSP0099", patient_name="Jones^Robert", seed=2)
    (tmp_path / "Jones_Bob" / "readme.dcm").write_text("not dicom", encoding="utf-8")
    pd.DataFrame({"Patient_ID": ["x", "y"], "Patient_Dir_Paths": ["Smithson_Alice", str(tmp_path / "Jones_Bob")]}) \
        .to_excel(tmp_path / "patients.xlsx", index=False)
    cfg = _config(tmp_path)
    res = _cli("pseudo", "run", "--list", "patients.xlsx", "-o", "out", "-c", str(cfg), cwd=tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr  # one file failed
    # input folders are named by patient: the console names the file by its place, never by its path
    bob = tmp_path / "Jones_Bob"
    place = sorted(f.relative_to(bob).parts for f in bob.rglob("*") if f.is_file()).index(("readme.dcm",)) + 1
    assert f"FAILED input 2, file {place}: not a readable DICOM file" in res.stderr
    assert "Jones" not in res.stdout + res.stderr and "Smithson" not in res.stdout + res.stderr
    n = len(a.all_dicom) + len(b.all_dicom)
    assert f"{n} DICOM and 2 XML files from 2 input(s), 2 patient(s)" in res.stdout

    out = tmp_path / "out"
    patients = sorted(p.name for p in out.iterdir())
    assert len(patients) == 2 and all(p.startswith("P") for p in patients)
    for s in (a, b):
        for f in out.rglob("*"):
            if f.is_file():
                raw = f.read_bytes()
                for ident in s.identifiers:
                    assert ident.encode() not in raw, (ident, f)
            assert s.patient_id not in str(f) and "Smithson" not in str(f)
    # the XML keeps its structure; its UID now names the pseudonymised CT series
    xmls = sorted(out.rglob("*.xml"))
    assert len(xmls) == 2
    text = "".join(x.read_text(encoding="utf-8") for x in xmls)
    series_dirs = {d.name for d in out.glob("*/*/*") if d.is_dir()}
    uids = set(re.findall(r"uid=\"([0-9.]+)\"", text))
    assert uids and uids <= series_dirs
    assert "<PatientID>P" in text and "<PatientBirthDate>19560101</PatientBirthDate>" in text

    # the failure is in the catalog, with stage pseudo and the file as target
    con = duckdb.connect(str(tmp_path / "state" / "catalog.duckdb"), read_only=True)
    rows = con.execute("SELECT stage, target, reason FROM failures").fetchall()
    con.close()
    assert [(r[0], Path(r[1]).name) for r in rows] == [("pseudo", "readme.dcm")]

    # references resolve within the output
    res = _cli("pseudo", "check", "out", cwd=tmp_path)
    assert res.returncode == 0 and "0 unresolved" in res.stdout, res.stdout

    # a second run gives the same files (deterministic, idempotent)
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    _cli("pseudo", "run", "--list", "patients.xlsx", "-o", "out", "-c", str(cfg), cwd=tmp_path)
    after = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert before == after


def test_check_reports_a_broken_reference(tmp_path):
    s = make_rt_set(tmp_path / "in")
    s.files["ct"][0].unlink()
    res = _cli("pseudo", "check", "in", cwd=tmp_path)
    assert res.returncode == 1 and "UNRESOLVED sop" in res.stdout


def test_run_without_key_exits_2(tmp_path, monkeypatch):
    monkeypatch.delenv("RTLAKE_PSEUDO_KEY", raising=False)
    make_rt_set(tmp_path / "in")
    env = {k: v for k, v in os.environ.items() if k != "RTLAKE_PSEUDO_KEY"}
    res = subprocess.run([sys.executable, "-m", "ingest.cli", "pseudo", "run", "in", "-o", "out",
                          "-c", str(_config(tmp_path))], capture_output=True, text=True, cwd=tmp_path,
                         env={**env, "PYTHONPATH": str(REPO)}, timeout=120)
    assert res.returncode == 2 and "RTLAKE_PSEUDO_KEY is not set" in res.stderr
    assert not (tmp_path / "out").exists()


def test_input_list_errors_name_file_and_row(tmp_path):
    p = tmp_path / "list.csv"
    pd.DataFrame({"path": ["a", None, "c"]}).to_csv(p, index=False)
    with pytest.raises(InputFileError, match=f"{p}:3: empty path cell"):
        read_input_list(p)
    q = tmp_path / "nocol.csv"
    q.write_text("folder_name\nx\n", encoding="utf-8")
    with pytest.raises(InputFileError, match="no column"):
        read_input_list(q)
    with pytest.raises(InputFileError, match="cannot read folder list"):
        read_input_list(tmp_path / "missing.xlsx")


def test_mapping_of_another_key_stops_the_batch_before_any_copy(tmp_path, pseudo_key):
    make_rt_set(tmp_path / "in")
    cfg = _config(tmp_path)
    assert _cli("pseudo", "run", "in", "-o", "out1", "-c", str(cfg), cwd=tmp_path).returncode == 0
    res = _cli("pseudo", "run", "in", "-o", "out2", "-c", str(cfg), cwd=tmp_path,
               env={"RTLAKE_PSEUDO_KEY": "a-different-key-0123456789abcdef"})
    assert res.returncode == 2 and "another key" in res.stderr
    assert not (tmp_path / "out2").exists()
