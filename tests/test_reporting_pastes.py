"""Failure lists as people paste them: the hand-written corpus in tests/data/reporting/pastes/.

Each paste file has a table beside it, written by hand from the rules (README there); the parser
must give exactly that table and report exactly the listed fragments. Importing them all gives
the de-duplicated union (union.expected.csv) with every file each study was seen in.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import stat
import subprocess
import sys
from pathlib import Path

import openpyxl
import pytest

from ingest.catalog import Catalog
from reporting.failure_export import HEADERS, export_rows, write_export
from reporting.failures import STATUS_BOTH, STATUS_NO_STUDY_ID, STATUS_NO_UID, parse_failure_file, parse_failure_text
from reporting.history import import_failure_file
from reporting.nhs import EXCEL_CORRUPTED, public_text, read_mapping

DATA = Path(__file__).parent / "data" / "reporting"
PASTES = DATA / "pastes"
#: The import order union.expected.csv was written for.
ORDER = ["sheet_object_cells.txt", "sheet_key_value_cells.txt", "sheet_multiline_pretty.txt", "dqr_batch_pretty.json",
         "dqr_minified.json", "free_text_email.txt", "cells_comma.csv", "sop_messy.txt", "sheet_truncated_cell.txt"]
STATUS = {"BOTH": STATUS_BOTH, "NO_UID": STATUS_NO_UID, "NO_STUDY_ID": STATUS_NO_STUDY_ID}


def _table(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_every_paste_file_has_its_table():
    on_disk = {p.name for p in PASTES.iterdir() if p.suffix in (".txt", ".json", ".csv")
               and not p.name.endswith((".expected.csv", ".problems.csv")) and p.name != "cohort.csv"}
    assert on_disk == set(ORDER)
    assert all((PASTES / (Path(n).stem + ".expected.csv")).is_file() for n in ORDER)


@pytest.mark.parametrize("name", ORDER)
def test_paste_parses_to_its_hand_written_table(name):
    r = parse_failure_file(PASTES / name)
    stem = Path(name).stem
    want = [(int(e["line"]), e["hospital_id"], e["subject"], dt.date.fromisoformat(e["study_date"]) if e["study_date"]
             else None, e["accession"], e["study_id"], e["study_uid"], e["description"],
             tuple(m for m in e["modalities"].split("\\") if m), STATUS[e["status"]])
            for e in _table(PASTES / f"{stem}.expected.csv")]
    got = [(x.source_line, x.hospital_id, x.subject, x.study_date, x.accession, x.study_id, x.study_uid, x.description,
            x.modalities, x.status) for x in r.records]
    assert got == want
    assert all(x.source_file == str(PASTES / name) for x in r.records)
    problems = PASTES / f"{stem}.problems.csv"
    expected = _table(problems) if problems.is_file() else []
    assert [p.line for p in r.problems] == [int(e["line"]) for e in expected], [str(p) for p in r.problems]
    for p, e in zip(r.problems, expected):
        assert p.path == str(PASTES / name)
        assert f"{e['length']} characters" in p.message, p.message
        assert e["words"] in p.message, p.message
        assert "TEST^" not in p.message and "RX20" not in p.message  # a fragment's content is never echoed


def test_no_fragment_is_dropped_silently():
    """A note cell, prose, a cut-off object: each is a problem; the record after it still reads."""
    text = 'Hello, see below:\n{"accessionNumber": "A1", "studyId": "1"}\n{"accessionNumber": "A2\n{"accessionNumber": "A3"}\n'
    r = parse_failure_text(text, "paste.txt")
    assert [x.accession for x in r.records] == ["A1", "A3"]  # A2 is cut off: not salvaged as "A2"
    assert [(p.line, p.message.split(" ")[0]) for p in r.problems] == [(1, "17"), (3, "23")]


def _import_all(catalog, mapping):
    return [import_failure_file(catalog, PASTES / n, f"run-{i}", mapping=mapping) for i, n in enumerate(ORDER)]


@pytest.fixture
def catalog(tmp_path):
    cat = Catalog(tmp_path / "catalog.duckdb")
    yield cat
    cat.close()


def test_importing_all_gives_the_deduplicated_union_with_source_files(catalog):
    mapping = read_mapping(PASTES / "cohort.csv")
    results = _import_all(catalog, mapping)
    assert sum(r.n_records for r in results) == 26 and sum(r.n_new for r in results) == 22
    rows = export_rows(catalog, mapping)
    got = sorted((r["AccessionNumber"], r["StudyInstanceUid"] or "", r["Subject"],
                  r["StudyDate"].isoformat() if r["StudyDate"] else "", r["Status"], "yes" if r["Placeholder"] else "no",
                  "; ".join(f"{Path(e.rsplit(':', 1)[0]).name}:{e.rsplit(':', 1)[1]}" for e in r["SourceFile"].split("; ")))
                 for r in rows)
    want = sorted((e["accession"], e["study_uid"], e["subject"], e["study_date"], STATUS[e["status"]], e["placeholder"],
                   e["source_files"]) for e in _table(PASTES / "union.expected.csv"))
    assert got == want
    # importing the same files again adds nothing
    snap = catalog.table_snapshot("failure_history")
    again = _import_all(catalog, mapping)
    assert all(r.already_imported for r in again)
    assert catalog.table_snapshot("failure_history") == snap


def test_conflicting_nhs_numbers_are_never_guessed():
    m = read_mapping(DATA / "cohort_conflicts.csv")
    assert {h: m.subject_for(h) for h in ("H001", "H005", "H006", "H007", "H008", "H009", "H010", "H011")} == {
        "H001": "9434765919",  # 943 476 5919 and 9434765919: one number, two spellings
        "H005": "NN_H005",  # two different valid numbers: neither trusted
        "H006": "NN_H006",  # Excel scientific notation with digits lost
        "H007": "4857773457",  # scientific notation with all ten digits is exact
        "H008": "6123456784", "H009": "6123456784",  # one number on two IDs: both kept, reported
        "H010": "7321845907",  # blank then valid
        "H011": "NN_H011",  # check digit fails
    }
    assert ",," not in m.patients and "-" not in m.patients
    by_line = {p.line: p.message for p in m.problems}
    assert sorted(by_line) == [5, 6, 7, 10, 13, 14]
    assert all(w in by_line[5] for w in ("two different valid NHS numbers", "4010232137 (line 4)", "9991889779 (line 5)",
                                          "NN_H005"))
    assert by_line[6].startswith(EXCEL_CORRUPTED) and "mod-11" not in by_line[6]
    assert "letter or digit" in by_line[7] and "letter or digit" in by_line[14]
    assert "another hospital ID (line 9)" in by_line[10]
    assert "mod-11" in by_line[13]
    # what logs and the console may show: lines, no NHS numbers
    shown = " ".join(public_text(p) for p in m.problems)
    assert "lines 4 and 5" in shown
    assert not any(n in shown for n in ("4010232137", "9991889779", "6123456784"))


def test_failures_of_a_conflicted_patient_go_under_nn(catalog, tmp_path):
    f = tmp_path / "h005.json"
    f.write_text('[{"accessionNumber": "RX9005", "studyId": "1", "studyInstanceUid": "1.2.9005", '
                 '"studyDate": "20240102", "patient": {"id": "H005"}}]', encoding="utf-8")
    import_failure_file(catalog, f, "run-1", mapping=read_mapping(DATA / "cohort_conflicts.csv"))
    assert catalog.execute("SELECT subject FROM failure_history").fetchall() == [("NN_H005",)]


def test_export_csv_and_xlsx_have_every_column_and_no_nan(catalog, tmp_path):
    mapping = read_mapping(PASTES / "cohort.csv")
    _import_all(catalog, mapping)
    rows = export_rows(catalog, mapping)
    out_csv = write_export(rows, tmp_path / "failures.csv")
    assert stat.S_IMODE(os.stat(out_csv).st_mode) == 0o600  # holds identifiers
    text = out_csv.read_text(encoding="utf-8")
    with open(out_csv, newline="", encoding="utf-8") as fh:
        table = list(csv.reader(fh))
    assert table[0] == HEADERS
    assert {"Subject", "StudyDate", "AccessionNumber", "StudyDescription", "StudyInstanceUid", "Status", "Category",
            "SourceFile", "Placeholder", "FirstSeenRun", "LastSeenRun"} <= set(HEADERS)
    cells = [c for row in table[1:] for c in row]
    assert not any(c.strip().casefold() in ("nan", "none", "nat", "null") for c in cells)
    rx2009 = next(dict(zip(HEADERS, row)) for row in table[1:] if row[HEADERS.index("AccessionNumber")] == "RX2009")
    assert (rx2009["StudyDate"], rx2009["StudyInstanceUid"], rx2009["StudyID"], rx2009["Subject"]) == (
        "", "", "", "9434765919")
    assert "TEST^" not in text
    out_x = write_export(rows, tmp_path / "failures.xlsx", "xlsx")
    ws = openpyxl.load_workbook(out_x)["Failures"]
    assert [c.value for c in ws[1]] == HEADERS
    vals = [c.value for row in ws.iter_rows(min_row=2) for c in row]
    assert not any(isinstance(v, str) and v.strip().casefold() in ("nan", "none", "nat") for v in vals)
    dates = [r[HEADERS.index("StudyDate")].value for r in ws.iter_rows(min_row=2)]
    assert any(isinstance(d, dt.datetime) for d in dates) and None in dates  # real dates; empty stays empty


def test_cli_export(tmp_path):
    cfg = tmp_path / "rtlake.toml"
    cfg.write_text(f'[project]\nstate_dir = "state"\n[inputs]\ncohort = "{PASTES / "cohort.csv"}"\n')

    def run(*args):
        return subprocess.run([sys.executable, "-m", "ingest.cli", "failures", *args, "-c", str(cfg)],
                              capture_output=True, text=True, cwd=tmp_path, timeout=120)

    r = run("import", str(PASTES / "dqr_batch_pretty.json"), str(PASTES / "sheet_object_cells.txt"))
    assert r.returncode == 0, r.stderr
    assert "sheet_object_cells.txt:4: 15 characters that are not a failure record" in r.stderr
    r = run("export", "-o", "all.xlsx", "--format", "xlsx")
    assert r.returncode == 0, r.stderr
    assert "5 failed studies (0 placeholders, flagged)" in r.stdout
    ws = openpyxl.load_workbook(tmp_path / "all.xlsx")["Failures"]
    src = {row[HEADERS.index("AccessionNumber")].value: row[HEADERS.index("SourceFile")].value
           for row in ws.iter_rows(min_row=2)}
    assert [Path(e.rsplit(":", 1)[0]).name for e in src["RX2001"].split("; ")] == [
        "dqr_batch_pretty.json", "sheet_object_cells.txt"]
    r = run("export", "-o", "x.txt", "--format", "pdf")
    assert r.returncode == 2


def test_a_subject_excel_corrupted_in_a_failure_list_is_not_used():
    text = ('[{"criteria": {"accessionNumber": "A1"}, "relabelMap": {"Subject": "9.43477E+09"}, "studies": []},'
            ' {"criteria": {"accessionNumber": "A2"}, "relabelMap": {"Subject": "943 476 5919"}, "studies": []}]')
    r = parse_failure_text(text, "x.json")
    assert [(x.accession, x.subject) for x in r.records] == [("A1", ""), ("A2", "9434765919")]
    assert [p.message for p in r.problems] == [f"Subject: {EXCEL_CORRUPTED}; record kept without a subject"]


def test_edw_failures_csv_has_no_nan(reporting_env):
    from reporting.build import build_reports

    cfg, cat = reporting_env
    mapping = read_mapping(PASTES / "cohort.csv")
    for n in ("dqr_batch_pretty.json", "cells_comma.csv"):  # empty UIDs, NaN StudyID, no study date
        import_failure_file(cat, PASTES / n, "run-1", mapping=mapping)
    fail_csv = build_reports(cfg, cat, run_id="run-1")[2]
    with open(fail_csv, newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert {r["Accession"] for r in table} == {"RX2001", "RX2002", "RX2009", "RX2012", "RX2017"}
    assert not any(v.strip().casefold() in ("nan", "none", "nat") for r in table for v in r.values())
    rx2017 = next(r for r in table if r["Accession"] == "RX2017")
    assert (rx2017["StudyInstanceUID"], rx2017["Study ID"]) == ("", "")
    assert Path(rx2017["Source File"].rsplit(":", 1)[0]).name == "cells_comma.csv"
