"""Nothing a DICOM file contains can crash reporting (issue #19).

Values taken from headers reach xlsx, CSV, HTML and JSON: control characters (a flipped byte, an
ANSI escape), lone surrogates (DICOM JSON can carry "\\udcxx" escapes), and text that a spreadsheet
reads as a formula. Each writer cleans them for its format (reporting/sanitise.py); the catalog keeps
the raw value. The end-to-end part writes such values into *valid* files of a folder PACS (the
validator has no reason to refuse them) and runs every command that writes a report.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import pydicom
import pytest
from openpyxl import Workbook, load_workbook

from reporting import sanitise

NASTY = ["ACC\x00\x01\x1b[31m", "x\udce9y", '=HYPERLINK("http://example.invalid","click")', "+44 20", "-CT",
         "@SUM(A1)", "\t=1+1", "line\r\nbreak", "\ufffe", "a" * 40000]


def test_xlsx_cells_never_raise_and_formulas_stay_text(tmp_path):
    for write_only in (True, False):
        wb = Workbook(write_only=write_only)
        ws = wb.create_sheet("S") if write_only else wb.active
        ws.append(sanitise.xlsx_row(ws, NASTY + [5, -5.5, None]))
        out = tmp_path / f"s{write_only}.xlsx"
        wb.save(out)
        row = [c for c in load_workbook(out).worksheets[-1][1]]
        assert not [c for c in row if c.data_type == "f"]
        values = [c.value for c in row]
        assert values[0] == "ACC\ufffd\ufffd\ufffd[31m"
        assert values[1] == "x\ufffdy"
        assert values[2] == NASTY[2] and row[2].quotePrefix  # stored exactly, as text, stays text when edited
        assert values[3] == "+44 20" and row[3].quotePrefix
        assert values[4] == "-CT" and values[5] == "@SUM(A1)" and row[5].quotePrefix
        assert values[6] == "\t=1+1"  # a tab first: Excel does not read it as a formula
        assert len(values[9]) == sanitise.XLSX_MAX
        assert values[10:12] == [5, -5.5]
        sheet_xml = zipfile.ZipFile(out).read(next(n for n in zipfile.ZipFile(out).namelist() if "worksheets/sheet" in n))
        assert b"<f>" not in sheet_xml


def test_csv_html_json_and_terminal(tmp_path):
    buf = io.StringIO()
    csv.writer(buf).writerow([sanitise.csv_value(v) for v in NASTY])
    text = buf.getvalue()
    text.encode("utf-8")  # a UTF-8 file can hold it
    back = next(csv.reader(io.StringIO(text)))
    assert back[0] == "ACC\ufffd\ufffd\ufffd[31m" and back[2] == NASTY[2] and back[7] == "line\ufffd\ufffdbreak"
    assert not [c for c in text.rstrip("\r\n") if ord(c) < 32 and c not in "\t"]
    h = sanitise.html_text("<b>x</b>\x00\x1b & \udcff")
    assert h == "&lt;b&gt;x&lt;/b&gt;\ufffd\ufffd &amp; \ufffd"
    j = json.dumps(sanitise.json_value({"k\udcff": ["\udcff", 1, {"a": "\x01"}]}), ensure_ascii=False)
    assert json.loads(j.encode("utf-8")) == {"k\ufffd": ["\ufffd", 1, {"a": "\x01"}]}
    assert sanitise.terminal("study \x1b[2J\x00 \udce9") == "study \\x1b[2J\\x00 \\udce9"


# -- end to end -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nasty_lake(tmp_path_factory):
    """A demo cohort whose included studies carry nasty values in accession and series description, and
    whose review queue holds formula-like and control-character descriptions; then update + reports."""
    from pydicom import config as pconfig

    from ingest.demo import PLACEHOLDER_DATE, generate
    from tests.test_damaged_runs import invoke

    demo = generate(tmp_path_factory.mktemp("nasty") / "demo", n_patients=6, seed=7)
    studies = [s for p in demo.patients if not p.deceased for s in p.studies
               if s.in_pacs and s.category == "include" and s.study_date != PLACEHOLDER_DATE]
    plan = {studies[0].study_uid: {"AccessionNumber": "ACC\x01\x1b[31m"},
            studies[1].study_uid: {"SeriesDescription": "=cmd|' /C calc'!A0\x07"},
            studies[2].study_uid: {"StudyDescription": '=HYPERLINK("http://example.invalid","click")'},
            studies[3].study_uid: {"StudyDescription": "@SUM(1+1)\x00 review me"}}
    with pconfig.disable_value_validation():
        for f in sorted(demo.pacs.rglob("*.dcm")):
            if f.parent.parent.name in plan and f not in demo.broken:
                ds = pydicom.dcmread(f)
                for k, v in plan[f.parent.parent.name].items():
                    setattr(ds, k, v)
                ds.save_as(f, enforce_file_format=True)
    # a failure record (XNAT DQR JSON) with the same kinds of values, one a lone surrogate escape
    p = next(p for p in demo.patients if not p.deceased)
    bad = [{"studies": [{"accessionNumber": "ACC\u001b[2J", "modalitiesInStudy": ["CT"],
                         "patient": {"id": p.hospital_id, "name": p.name, "sex": p.sex}, "studyDate": "20220203",
                         "studyDescription": "=HYPERLINK(\"http://example.invalid\")\u0000 \udcff",
                         "studyId": "77", "studyInstanceUid": "2.25.19191919"}]}]
    (demo.root / "nasty-failures.json").write_text(json.dumps(bad, ensure_ascii=True))
    cfg_path = str(demo.config)
    results = {"update": invoke("update", "-c", cfg_path, "--no-progress"),
               "failures-import": invoke("failures", "import", str(demo.root / "nasty-failures.json"), "-c", cfg_path),
               "report": invoke("report", "-c", cfg_path),
               "review": invoke("review", "export", "-c", cfg_path, "-o", str(demo.root / "review.xlsx")),
               "sessions": invoke("export", "sessions", "-c", cfg_path, "-o", str(demo.root / "listings")),
               "status": invoke("status", "-c", cfg_path),
               "failures": invoke("failures", "list", "-c", cfg_path)}
    return demo, plan, results


def test_every_report_command_finishes_without_a_traceback(nasty_lake):
    _demo, _plan, results = nasty_lake
    for name, (code, out) in results.items():
        assert "Traceback" not in out, (name, out[-3000:])
        assert code in (0, 3), (name, code, out[-2000:])
        assert "\x1b[31m" not in out and "\x00" not in out, name  # no raw escape reaches the terminal


def _xlsx_values(path: Path) -> list:
    wb = load_workbook(path)
    cells = [c for ws in wb.worksheets for row in ws.iter_rows() for c in row]
    assert not [c.coordinate for c in cells if c.data_type == "f"], path
    return [c.value for c in cells if isinstance(c.value, str)]


def test_outputs_hold_the_values_cleaned_and_the_catalog_keeps_them_raw(nasty_lake):
    demo, plan, _ = nasty_lake
    outbox = demo.root / "outbox"
    master = _xlsx_values(next(outbox.glob("master-availability-*.xlsx")))
    assert "ACC_31m" in master  # the session label is made path-safe from the accession
    assert '=HYPERLINK("http://example.invalid")\ufffd \ufffd' in master  # the failure record, as text
    review = _xlsx_values(demo.root / "review.xlsx")
    assert '=HYPERLINK("http://example.invalid","click")' in review  # as text, not a live link
    assert "@SUM(1+1)\ufffd review me" in review
    for f in list(outbox.glob("*.csv")) + list((demo.root / "listings").glob("*.csv")):
        text = f.read_text(encoding="utf-8")
        assert not [c for c in text if ord(c) < 32 and c not in "\n\t"], f
    assert any("ACC\ufffd[2J" in f.read_text() for f in outbox.glob("failures-*.csv"))
    for f in (demo.root / "state" / "reports").glob("*.html"):
        assert not [c for c in f.read_text(encoding="utf-8") if ord(c) < 32 and c not in "\n\t"]
    from ingest.catalog import Catalog
    from ingest.config import load_config

    cat = Catalog(load_config(demo.config).catalog_path, read_only=True)
    try:
        accessions = {r[0] for r in cat.execute("SELECT accession FROM sessions").fetchall()}
        descriptions = {r[0] for r in cat.execute("SELECT description FROM studies_seen").fetchall()}
    finally:
        cat.close()
    assert "ACC\x01\x1b[31m" in accessions
    assert "@SUM(1+1)\x00 review me" in descriptions
