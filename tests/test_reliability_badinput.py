"""The bad-input corpus (tests/data/badinput, see make_corpus.py): every file is fed to the part of
rtlake that reads its kind. A refused file is named in the error; the run goes on (or the command
exits cleanly with an error code, never a traceback); nothing already in the lake changes.

Known gaps (the expectation is kept, the test is a strict xfail so it turns red once fixed):
see KNOWN_GAPS.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ingest.catalog import Catalog
from ingest.config import load_config
from ingest.errors import InputFileError, RtlakeError
from tests.fixtures.reliability import record_output, record_result, register_identifiers

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "data" / "badinput"
MANIFEST = json.loads((CORPUS / "manifest.json").read_text())
# the corpus' one synthetic patient joins the session's identifier scan
register_identifiers({"BADINPUT01": "hospital_id", "BADINPUT^PATIENT": "name", "19000101": "birth_date"})
RTLAKE = [sys.executable, "-m", "ingest.cli"]

# file -> why it is expected to fail today (owner's file in the reason)
KNOWN_GAPS: dict[str, str] = {}

_outcomes: dict[str, str] = {}  # file -> how rtlake handled it (for the figures)


def entries(*kinds: str) -> list:
    out = []
    for e in MANIFEST:
        if e["kind"] in kinds:
            marks = [pytest.mark.xfail(reason=KNOWN_GAPS[e["file"]], strict=True)] if e["file"] in KNOWN_GAPS else []
            out.append(pytest.param(e, id=e["file"], marks=marks))
    return out


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """The real `rtlake` in a subprocess (for exit codes and crashes); its output joins the PHI scan."""
    r = subprocess.run([*RTLAKE, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                       env={**os.environ, "COLUMNS": "200"})
    record_output(f"cli:{' '.join(args[:2])}", r.stderr)
    record_output(f"cli:{' '.join(args[:2])}", r.stdout)
    return r


def invoke(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The `rtlake` app in this process (no interpreter start-up); same shape as run_cli's answer."""
    from typer.testing import CliRunner

    from ingest.cli import app

    old = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        res = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    finally:
        os.chdir(old)
    out = res.output
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        import traceback

        out += "Traceback (most recent call last):\n" + "".join(traceback.format_exception(res.exception))
    record_output(f"cli:{' '.join(args[:2])}", out)
    return subprocess.CompletedProcess(list(args), res.exit_code, out, out)


def no_traceback(r: subprocess.CompletedProcess) -> None:
    assert "Traceback (most recent call last)" not in r.stderr + r.stdout, (r.stderr + r.stdout)[-3000:]


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# -- the corpus itself -------------------------------------------------------------------------------
def test_corpus_is_complete_and_reproducible(tmp_path):
    kinds = {e["kind"] for e in MANIFEST}
    assert len(MANIFEST) >= 60
    assert {"dicom", "rt", "cohort", "lists", "failures", "config"} <= kinds
    for e in MANIFEST:
        assert (CORPUS / e["file"]).is_file(), e["file"]
        assert e["expect"] in {"reject", "tolerate", "accept"}
    # the committed files are what the generator writes (so the corpus can be rebuilt and reviewed)
    r = subprocess.run([sys.executable, str(CORPUS / "make_corpus.py"), str(tmp_path)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "manifest.json").read_text()) == MANIFEST
    for e in MANIFEST:
        if Path(e["file"]).suffix in (".dcm", ".xlsx"):
            continue  # pydicom/openpyxl stamp their version into what they write
        a, b = (CORPUS / e["file"]).read_bytes(), (tmp_path / e["file"]).read_bytes()
        assert a == b, f"{e['file']} differs from what make_corpus.py writes"


# -- DICOM through the folder source and the lake store, in one real update run ---------------------
@pytest.fixture(scope="module")
def dicom_run(tmp_path_factory):
    """An updated demo lake; then every bad DICOM file lands on its PACS and the update runs again."""
    from ingest.demo import generate
    from ingest.run import run_update

    root = generate(tmp_path_factory.mktemp("badinput-dicom") / "demo", n_patients=3, seed=7).root
    cfg_path = root / "rtlake.toml"
    cfg = load_config(cfg_path)
    run_update(cfg, show_progress=False, build_report=False)
    lake = Path(cfg.store.lake.path)
    before = tree(lake)
    # the folder is not named for the patient: a log line naming a broken file names no identifier
    drop = root / "pacs" / "badinput"
    placed = {}
    for e in MANIFEST:
        if e["kind"] == "dicom":
            target = drop / Path(e["file"]).name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(CORPUS / e["file"], target)
            placed[e["file"]] = target
    with open(root / "HospitalID-NHSNumber.csv", "a", newline="") as fh:
        csv.writer(fh).writerow(["BADINPUT01", ""])
    second = run_cli("update", "-c", str(cfg_path), "--no-progress")
    cat = Catalog(cfg.catalog_path, read_only=True)
    try:
        failures = cat.query_dicts("SELECT stage, target, reason, study_uid FROM failures")
        files = cat.query_dicts("SELECT sop_uid, study_uid, path FROM files")
        studies = cat.query_dicts("SELECT study_uid, decision, state FROM studies_seen "
                                  "WHERE hospital_id = 'BADINPUT01'")
    finally:
        cat.close()
    return {"root": root, "lake": lake, "before": before, "after": tree(lake), "placed": placed,
            "proc": second, "failures": failures, "files": files, "studies": studies, "cfg": cfg}


def test_bad_dicom_run_goes_on_and_lake_keeps_what_it_had(dicom_run):
    proc = dicom_run["proc"]
    assert proc.returncode == 3, proc.stderr[-3000:]
    no_traceback(proc)
    before, after = dicom_run["before"], dicom_run["after"]
    changed = [p for p, h in before.items() if after.get(p) != h]
    assert changed == [], f"files already in the lake changed or vanished: {changed[:5]}"
    assert not [p for p in after if Path(p).name.startswith(".tmp-")]
    # nothing written outside the lake (path-traversal UIDs/accessions are made safe)
    lake = dicom_run["lake"].resolve()
    for f in dicom_run["files"]:
        assert Path(f["path"]).resolve().is_relative_to(lake), f["path"]
    for pattern in ("outside*", "*passwd*"):
        assert not [p for p in dicom_run["root"].parent.rglob(pattern) if not p.resolve().is_relative_to(lake)]


@pytest.mark.parametrize("e", entries("dicom"))
def test_bad_dicom_file(e, dicom_run):
    path = str(dicom_run["placed"][e["file"]])
    named = [f for f in dicom_run["failures"] if path in (f["target"] or "") or path in (f["reason"] or "")]
    for f in named:
        assert f["reason"] and len(f["reason"]) > 8
    if e["expect"] == "reject":
        assert named, f"{e['file']} ({e['what']}) was not recorded as a failure naming the file"
        _outcomes[e["file"]] = "rejected"
    else:
        # tolerated: either refused with the file named, or harvested as a study of the patient and,
        # when its description is on the include list, ingested (or failed with a reason)
        if named:
            _outcomes[e["file"]] = "rejected"
            return
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        study = next((s for s in dicom_run["studies"] if s["study_uid"] == str(ds.StudyInstanceUID).strip()), None)
        assert study, f"{e['file']} ({e['what']}) neither harvested nor recorded as a failure"
        if study["decision"] == "include":
            sop = str(ds.get("SOPInstanceUID", "")).strip()
            stored = [f for f in dicom_run["files"] if f["sop_uid"] == sop]
            failed = [f for f in dicom_run["failures"] if f["study_uid"] == study["study_uid"] and f["reason"]]
            assert stored or failed, f"{e['file']} ({e['what']}) included but neither stored nor failed"
            _outcomes[e["file"]] = "stored" if stored else "rejected"
        else:
            _outcomes[e["file"]] = f"harvested ({study['decision']})"


# -- CSV / xlsx side inputs --------------------------------------------------------------------------
def _read(kind: str, path: Path):
    from criteria.lists import load_lists
    from ingest.patients import read_cohort, read_deceased
    from reporting.refdates import read_reference_dates

    if kind == "cohort":
        c = read_cohort(path)
        return c.patients, c.problems
    if kind == "deceased":
        ids, problems = read_deceased(path)
        return ids, problems
    if kind == "refdates":
        r = read_reference_dates(path)
        return r.dates, r.problems
    if kind == "lists":
        lists = load_lists(path)
        return lists, []
    raise AssertionError(kind)


@pytest.mark.parametrize("e", entries("cohort", "deceased", "refdates", "lists"))
def test_bad_table(e):
    path = CORPUS / e["file"]
    try:
        data, problems = _read(e["kind"], path)
    except InputFileError as exc:
        assert str(path) in str(exc), str(exc)
        assert e["expect"] != "accept", f"{e['file']} should be read: {exc}"
        _outcomes[e["file"]] = "rejected"
        return
    for p in problems:
        assert str(p).startswith(f"{path}:"), str(p)  # names the file and the line
    if e["expect"] == "reject":
        assert problems, f"{e['file']} ({e['what']}) read without a problem"
        _outcomes[e["file"]] = "row problems"
    elif e["expect"] == "accept":
        assert data and not problems, (e["file"], problems)
        if e["kind"] == "cohort":
            from ingest.patients import nhs_check_digit_ok

            assert all(p.nhs_number is None or nhs_check_digit_ok(p.nhs_number) for p in data.values())
            assert all(h == h.strip() and not h.endswith(".0") for h in data)
        _outcomes[e["file"]] = "accepted"
    else:
        _outcomes[e["file"]] = "accepted"


@pytest.mark.parametrize("e", entries("cohort", "lists"))
def test_update_with_bad_side_input_leaves_lake_alone(e, dicom_run):
    """The update run itself fed the bad cohort / criteria lists: refuses naming the file, or goes on."""
    from ingest.run import run_update

    key = "inputs.cohort" if e["kind"] == "cohort" else "criteria.lists"
    cfg = load_config(dicom_run["root"] / "rtlake.toml", {key: str(CORPUS / e["file"])})
    lake = Path(cfg.store.lake.path)
    before = tree(lake)
    try:
        run_update(cfg, show_progress=False, build_report=False)
    except RtlakeError as exc:
        assert str(CORPUS / e["file"]) in str(exc)
    assert tree(lake) == before


def test_review_workbooks(tmp_path):
    (tmp_path / "rtlake.toml").write_text('[project]\nstate_dir = "state"\n')
    for e in MANIFEST:
        if e["kind"] != "review":
            continue
        r = invoke("review", "import", str(CORPUS / e["file"]), "-c", str(tmp_path / "rtlake.toml"), cwd=tmp_path)
        no_traceback(r)
        assert r.returncode in (0, 1)
        if e["expect"] == "reject":
            assert r.returncode == 1 and str(CORPUS / e["file"]) in r.stderr, r.stderr
            _outcomes[e["file"]] = "rejected"
        else:
            assert str(CORPUS / e["file"]) in r.stderr + r.stdout or r.returncode == 0
            _outcomes[e["file"]] = "accepted"


# -- JSON failure lists ----------------------------------------------------------------------------
def test_bad_failure_lists(tmp_path):
    (tmp_path / "rtlake.toml").write_text('[project]\nstate_dir = "state"\n')
    bad = [e for e in MANIFEST if e["kind"] == "failures"]
    r = invoke("failures", "import", *[str(CORPUS / e["file"]) for e in bad], "-c", str(tmp_path / "rtlake.toml"),
                cwd=tmp_path)
    no_traceback(r)
    assert r.returncode == 0, r.stderr[-3000:]
    text = r.stdout + r.stderr
    for e in bad:
        assert str(CORPUS / e["file"]) in text, f"{e['file']} not named in the import output"
        _outcomes[e["file"]] = "reported"
    # a second import of the same files adds nothing (idempotent even for broken input)
    again = invoke("failures", "import", *[str(CORPUS / e["file"]) for e in bad], "-c", str(tmp_path / "rtlake.toml"),
                    cwd=tmp_path)
    assert again.returncode == 0 and "0 new failed studies" in again.stdout, again.stdout[-2000:]


# -- config files ----------------------------------------------------------------------------------
@pytest.mark.parametrize("e", entries("config"))
def test_bad_config(e, tmp_path):
    path = CORPUS / e["file"]
    r = invoke("check-config", str(path))
    no_traceback(r)
    assert r.returncode == 2, (r.returncode, r.stdout[-500:])
    assert str(path) in r.stderr
    assert "hunter2" not in r.stderr + r.stdout  # a secret put in the config is not echoed back
    _outcomes[e["file"]] = "rejected"


def test_update_refuses_bad_config_before_touching_anything(tmp_path):
    path = CORPUS / "config" / "wrong_type_int.toml"
    cfg = tmp_path / "rtlake.toml"
    cfg.write_text(path.read_text() + '\n[project]\nstate_dir = "state"\n')
    r = run_cli("update", "-c", str(cfg), "--no-progress", cwd=tmp_path)
    assert r.returncode == 2 and "source.transfer.retries" in r.stderr
    assert not (tmp_path / "state").exists() and not (tmp_path / "lake").exists()


# -- RT ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rt_run(tmp_path_factory):
    pytest.importorskip("ingest.rt.cli")
    work = tmp_path_factory.mktemp("badinput-rt")
    (work / "rtlake.toml").write_text('[project]\nstate_dir = "state"\n')
    r = run_cli("rt", "convert", "-c", str(work / "rtlake.toml"), "--input", str(CORPUS / "rt"), "-o",
                str(work / "out"), "--serial", "--no-progress", "--no-previews", "--no-html", cwd=work)
    cat = Catalog(work / "state" / "catalog.duckdb", read_only=True)
    try:
        failures = cat.query_dicts("SELECT target, reason FROM failures WHERE stage = 'rt'")
    finally:
        cat.close()
    return r, failures


def test_rt_convert_goes_on(rt_run):
    r, _ = rt_run
    no_traceback(r)
    assert r.returncode == 0, r.stderr[-3000:]
    n = len({e["file"].split("/")[1] for e in MANIFEST if e["kind"] == "rt"})
    assert f"rt: {n} patient(s)" in r.stdout


@pytest.mark.parametrize("e", entries("rt"))
def test_bad_rt_input(e, rt_run):
    r, failures = rt_run
    patient = e["file"].split("/")[1]
    lines = [ln for ln in r.stdout.splitlines() if ln.strip().startswith(f"{patient}:")]
    assert lines, f"{patient} ({e['what']}): no failure reported"
    assert failures
    _outcomes[e["file"]] = "reported"


def test_zz_badinput_figures():
    """Runs after the corpus tests of this module: writes how many bad inputs were tried."""
    if not _outcomes:
        pytest.skip("no bad-input test ran")
    by = {}
    for how in _outcomes.values():
        by[how] = by.get(how, 0) + 1
    record_result("badinput", {"files": len(MANIFEST), "tried": len(_outcomes), "handled": by,
                               "known_gaps": sorted(KNOWN_GAPS)})
