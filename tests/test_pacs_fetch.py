"""`rtlake fetch --from list.csv`: look-ups by each key, templates, collisions, decompression,
per-row failures, and resume after SIGKILL without re-querying finished rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from ingest.cli import app


def _config(tmp_path: Path, srv, url: str | None = None) -> Path:
    cfg = tmp_path / "rtlake.toml"
    cfg.write_text(f"""
[project]
state_dir = "state"
[source]
kind = "orthanc"
name = "test-orthanc"
[source.orthanc]
url = "{url or srv.url}"
username_env = "RTLAKE_TEST_PACS_USER"
password_env = "RTLAKE_TEST_PACS_PASSWORD"
[source.transfer]
retries = 1
backoff_seconds = 0.01
read_timeout = 10
""")
    return cfg


@pytest.fixture
def pacs_env(orthanc_loaded, monkeypatch):
    monkeypatch.setenv("RTLAKE_TEST_PACS_USER", orthanc_loaded.username)
    monkeypatch.setenv("RTLAKE_TEST_PACS_PASSWORD", orthanc_loaded.password)
    return orthanc_loaded


def _dicoms(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*.dcm") if not any(part.startswith(".") for part in p.relative_to(out).parts))


def test_fetch_by_every_key_with_templates(pacs_env, pacs_cohort, tmp_path):
    a, b, c = pacs_cohort[0], pacs_cohort[2], pacs_cohort[4]
    lst = tmp_path / "list.csv"
    lst.write_text(
        "PatientID,AccessionNumber,StudyInstanceUID,StudyDate\n"
        f"{a.patient_id},,,{a.study_date:%Y%m%d}\n"          # patient + exact date -> study a
        f",{b.accession},,\n"                                 # accession -> study b
        f",,{c.study_uid},\n"                                 # UID -> study c
        ",NO-SUCH-ACC,,\n"                                    # no match -> row failure
        f"{a.patient_id},,,notadate\n")                       # bad row -> skipped, named by line
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["fetch", "--from", str(lst), "--out", str(out), "-c",
                                   str(_config(tmp_path, pacs_env)), "--dir-template",
                                   "{PatientID}/{AccessionNumber}", "--name-template", "{InstanceNumber:03d}"])
    assert res.exit_code == 1, res.output
    assert "NO-SUCH-ACC" in res.output and "list.csv:6" in res.output
    files = _dicoms(out)
    assert len(files) == 9
    for st in (a, b, c):
        got = sorted(p.name for p in (out / st.patient_id / st.accession).iterdir())
        assert got == ["001.dcm", "002.dcm", "003.dcm"]
        assert {pydicom.dcmread(p).SOPInstanceUID for p in (out / st.patient_id / st.accession).iterdir()} \
            == set(st.sop_uids)
    # a second run: done rows are neither queried nor pulled (the PACS URL now points nowhere)
    from tests.servers.orthanc import free_port

    res2 = CliRunner().invoke(app, ["fetch", "--from", str(lst), "--out", str(out), "-c",
                                    str(_config(tmp_path, pacs_env, f"http://127.0.0.1:{free_port()}")),
                                    "--dir-template", "{PatientID}/{AccessionNumber}",
                                    "--name-template", "{InstanceNumber:03d}"])
    assert "already done 3" in res2.output, res2.output
    assert len(_dicoms(out)) == 9


def test_name_collisions_get_the_sop_uid(pacs_env, pacs_cohort, tmp_path):
    st = pacs_cohort[3]
    lst = tmp_path / "l.csv"
    lst.write_text(f"StudyInstanceUID\n{st.study_uid}\n")
    out = tmp_path / "o"
    res = CliRunner().invoke(app, ["fetch", "--from", str(lst), "--out", str(out), "-c",
                                   str(_config(tmp_path, pacs_env)), "--dir-template", "flat",
                                   "--name-template", "{Modality}"])
    assert res.exit_code == 0, res.output
    files = _dicoms(out)
    assert len(files) == 3 and len({pydicom.dcmread(p).SOPInstanceUID for p in files}) == 3
    assert sum("_" in p.stem for p in files) == 2  # first keeps the plain name


def test_decompress_rle(orthanc, tmp_path, monkeypatch):
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    from ingest.fetch import place_file

    ds = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    assert ds.file_meta.TransferSyntaxUID.is_compressed
    src = tmp_path / "rle.dcm"
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(src)
    target = place_file(src, tmp_path / "out", "{Modality}", "{SOPInstanceUID}", decompress=True)
    back = pydicom.dcmread(target)
    assert not back.file_meta.TransferSyntaxUID.is_compressed
    assert (back.pixel_array == ds.pixel_array).all()


def test_resume_after_sigkill(pacs_env, pacs_cohort, tmp_path):
    lst = tmp_path / "all.csv"
    lst.write_text("AccessionNumber\n" + "".join(f"{st.accession}\n" for st in pacs_cohort))
    out = tmp_path / "out"
    cfg = _config(tmp_path, pacs_env)
    cmd = [sys.executable, "-m", "ingest.cli", "fetch", "--from", str(lst), "--out", str(out), "-c", str(cfg),
           "--dir-template", "{StudyInstanceUID}", "--name-template", "{SOPInstanceUID}"]
    env = {**os.environ, "RTLAKE_FAILPOINTS": "fetch.file=8"}
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    n_before = len(_dicoms(out))
    assert 0 < n_before < 18
    man = [json.loads(x) for x in (out / ".rtlake-fetch.jsonl").read_text().splitlines() if x.strip()]
    queried_before = sum(m.get("state") == "queried" for m in man)
    done = subprocess.run(cmd, env={k: v for k, v in os.environ.items() if k != "RTLAKE_FAILPOINTS"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    files = _dicoms(out)
    assert {p.stem for p in files} == {s for st in pacs_cohort for s in st.sop_uids}
    man = [json.loads(x) for x in (out / ".rtlake-fetch.jsonl").read_text().splitlines() if x.strip()]
    # the rows queried before the kill were not queried again
    assert sum(m.get("state") == "queried" for m in man) == len(pacs_cohort)
    assert queried_before >= 1
    assert not list(out.glob(".tmp-*")) and not list(out.glob(".scratch-*"))
