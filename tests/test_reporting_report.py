"""Failure rates against the baseline, the HTML report, and the `rtlake failures` CLI."""

from __future__ import annotations

import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ingest.catalog import Catalog
from ingest.errors import InputFileError
from reporting.build import build_reports, run_warnings
from reporting.history import import_failure_file
from reporting.nhs import read_mapping
from reporting.rates import failure_rates

DATA = Path(__file__).parent / "data" / "reporting"


def _seen(cat: Catalog, run: str, mod: str, n_ok: int, n_failed: int, start: int = 0) -> None:
    for i in range(start, start + n_ok + n_failed):
        cat.execute(
            "INSERT INTO studies_seen (study_uid, hospital_id, accession, modalities, decision, state, updated_run)"
            " VALUES (?, 'H001', ?, ?, 'include', ?, ?)",
            [f"1.2.3.{run}.{mod}.{i}", f"A{run}{mod}{i}", mod, "failed" if i >= start + n_ok else "ingested", run],
        )


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_rates_flag_a_run_out_of_line(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb")
    cat.execute("INSERT INTO runs (run_id, started_at, status) VALUES ('r1', '2024-01-01', 'done'),"
                " ('r2', '2024-02-01', 'done')")
    _seen(cat, "r1", "CT", 93, 7)      # 7 %: in line
    _seen(cat, "r2", "CT", 70, 30)     # 30 %: out of line
    _seen(cat, "r2", "MR", 2, 1)       # 33 % of 3: too few to judge
    _seen(cat, "r2", "PT\\CT", 5, 5)   # PET has no baseline configured
    cat.execute("INSERT INTO studies_seen (study_uid, hospital_id, modalities, decision, state, updated_run)"
                " VALUES ('9.9', 'H1', 'CT', 'exclude', 'skipped', 'r2')")
    rates = {(r.run_id, r.modality): r for r in failure_rates(cat, {"CT": 0.07, "MR": 0.07})}
    assert (rates["r1", "CT"].attempted, rates["r1", "CT"].failed, rates["r1", "CT"].out_of_line) == (100, 7, False)
    assert (rates["r2", "CT"].attempted, rates["r2", "CT"].failed, rates["r2", "CT"].out_of_line) == (100, 30, True)
    assert not rates["r2", "MR"].out_of_line and rates["r2", "PET"].baseline is None
    # A failure reported later by XNAT DQR counts against the run that attempted the study.
    (tmp_path / "late.json").write_text('[{"studyInstanceUid": "1.2.3.r1.CT.0", "studyId": "1",'
                                        ' "accessionNumber": "Ar1CT0", "studyDate": "20240101"}]')
    import_failure_file(cat, tmp_path / "late.json", "r1")
    assert failure_rates(cat, {"CT": 0.07})[0].failed == 8
    cat.close()


def test_html_report_renders_with_plots_and_tables(reporting_env):
    cfg, cat = reporting_env
    cat.execute("INSERT INTO runs (run_id, started_at, status) VALUES ('run-1', '2024-01-01', 'done')")
    _seen(cat, "run-1", "CT", 60, 40)
    import_failure_file(cat, DATA / "failures_bare.json", "run-1",
                        mapping=read_mapping(DATA / "xnat_folder" / "HospitalID-NHSNumber.csv"))
    paths = build_reports(cfg, cat, run_id="run-1")
    assert run_warnings(cfg, cat, "run-1") and "CT failure rate 40.0%" in run_warnings(cfg, cat, "run-1")[0]
    page = paths[-1].read_text(encoding="utf-8")
    p = _Collector()
    p.feed(page)
    tags = [t for t, _ in p.tags]
    assert tags.count("svg") >= 2, "plots missing"
    assert not any(t in ("script", "link", "img") and a.get("src", a.get("href", "")).startswith("http")
                   for t, a in p.tags), "report must be self-contained"
    tables = {a.get("class") for t, a in p.tags if t == "table"}
    assert {"by-modality", "rates", "manual-pull", "detail"} <= tables
    text = " ".join(p.text)
    assert "CT failure rate 40.0% (40/100)" in text
    assert "PET-CT FDG skull base to thigh" in text  # PET-CT listed as worth a manual pull
    assert "RX100004" not in text  # the 2099 placeholder is excluded
    assert "TEST^" not in page  # patient names never reach a report


def test_cli_import_sheet_and_investigation(tmp_path):
    cfg = tmp_path / "rtlake.toml"
    cfg.write_text(f'[project]\nstate_dir = "state"\n[report]\noutbox = "outbox"\n'
                   f'[inputs]\ncohort = "{DATA / "xnat_folder" / "HospitalID-NHSNumber.csv"}"\n'
                   f'reference_dates = "{DATA / "xnat_folder" / "reference_dates.csv"}"\n')
    exe = [sys.executable, "-m", "ingest.cli"]

    def run(*args):
        return subprocess.run([*exe, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)

    r = run("failures", "import", "-c", str(cfg), str(DATA / "PACs-failures.txt"),
            str(DATA / "bad_failures_truncated.json"))
    assert r.returncode == 0, r.stderr
    assert "5 records, 5 new" in r.stdout
    assert "bad_failures_truncated.json:62" in r.stderr
    r = run("failures", "import", "-c", str(cfg), str(DATA / "PACs-failures.txt"))
    assert "already imported" in r.stdout and "0 new failed studies" in r.stdout
    r = run("failures", "import", "-c", str(cfg), str(tmp_path / "missing.json"))
    assert r.returncode == 1 and "missing.json: file not found" in r.stderr
    r = run("failures", "export-investigation", "-c", str(cfg), "-o", "inv.xlsx")
    assert r.returncode == 0 and "4 failed studies" in r.stdout
    r = run("failures", "import-investigation", "-c", str(cfg), "inv.xlsx")
    assert r.returncode == 0 and "0 categories updated" in r.stdout
    r = run("failures", "sheet", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    assert any(line.endswith(".xlsx") for line in r.stdout.splitlines())
    assert "TEST^" not in r.stdout + r.stderr


@pytest.mark.parametrize("name, subjects, lines", [
    ("cohort_bom.csv", {"H001": "9434765919"}, []),
    ("cohort_cp1252.csv", {"H001": "9434765919"}, []),
    ("cohort_missing_columns.csv", {"H001": "NN_H001", "H002": "4010232137"}, [2]),
])
def test_cohort_corpus(name, subjects, lines):
    m = read_mapping(DATA / name)
    assert {h: m.subject_for(h) for h in subjects} == subjects
    assert sorted(p.line for p in m.problems) == lines


@pytest.mark.parametrize("name, words", [("cohort_empty.csv", "empty"), ("cohort_no_id_column.csv", "HospitalID")])
def test_unusable_cohort_files_name_the_file(name, words):
    with pytest.raises(InputFileError, match=rf"{name}.*{words}"):
        read_mapping(DATA / name)
