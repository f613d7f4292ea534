"""The master sheet: known cohort → hand-written wide table; the SOP folder; markers; slots."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import openpyxl
import pandas as pd
import pytest

from ingest.config import load_config
from reporting.build import build_from_folder
from reporting.dates import parse_date
from reporting.master import build_master
from reporting.refdates import read_reference_dates

DATA = Path(__file__).parent / "data" / "reporting"
D = dt.date


def _sessions(rows):
    return pd.DataFrame(rows, columns=["subject", "modality", "session", "date", "session_id", "uid", "scans", "source"])


def test_known_cohort_equals_hand_written_table():
    sessions = _sessions([
        ("9434765919", "CT", "s1", D(2024, 2, 20), "E1", "1.1", "3", "t"),
        ("9434765919", "CT", "s2", D(2024, 4, 1), "E2", "1.2", "1", "t"),
        ("9434765919", "CT", "s0", D(2023, 12, 1), "E0", "1.0", "2", "t"),  # earliest goes first
        ("NN_H002", "PT", "s4", D(2024, 1, 10), "E4", "1.4", "2", "t"),
        ("NN_H002", "CT", "s5", None, "E5", "1.5", "1", "t"),
    ])
    failures = pd.DataFrame([("NN_H002", D(2024, 1, 15), "PET", "ACC9", "1.9", "PET-CT", "Available on PACS")],
                            columns=["subject", "date", "modality", "accession", "uid", "description", "status"])
    refs = {"9434765919": D(2024, 3, 1), "NN_H002": D(2024, 2, 1)}
    sheet = build_master(sessions, refs, failures, slots_per_modality=2, subjects=["NN_H003"],
                         modalities=["CT", "PET"])
    got = sheet.rendered()
    N, NA = "null", "not applicable"
    expected_cols = ["Subject", "Reference Date"]
    for mod, n in (("CT", 3), ("PET", 2)):
        for i in range(1, n + 1):
            expected_cols += [f"{mod} Date {i}", f"{mod} Difference from Reference Date {i}", f"{mod} ID {i}",
                              f"{mod} UID {i}", f"{mod} Scans {i}"]
    for i in (1, 2):
        expected_cols += [f"Failure Date {i}", f"Failure Difference from Reference Date {i}", f"Failure Modality {i}",
                          f"Failure Accession {i}", f"Failure UID {i}", f"Failure Description {i}",
                          f"Failure Status {i}"]
    expected_cols.append("Notes")
    expected = [
        ["9434765919", D(2024, 3, 1),
         D(2023, 12, 1), -91, "E0", "1.0", "2", D(2024, 2, 20), -10, "E1", "1.1", "3", D(2024, 4, 1), 31, "E2", "1.2", "1",
         N, N, N, N, N, N, N, N, N, N,
         N, N, N, N, N, N, N, N, N, N, N, N, N, N, N],
        ["NN_H002", D(2024, 2, 1),
         N, N, "E5", "1.5", "1", N, N, N, N, N, N, N, N, N, N,  # no date: no difference either (null, as the seed)
         D(2024, 1, 10), -22, "E4", "1.4", "2", N, N, N, N, N,
         D(2024, 1, 15), -17, "PET", "ACC9", "1.9", "PET-CT", "Available on PACS", N, N, N, N, N, N, N, N],
        ["NN_H003", NA] + [N] * (15 + 10 + 14) + ["no sessions or failures on record"],
    ]
    assert list(got.columns) == expected_cols
    assert got.values.tolist() == expected
    assert sheet.slots == {"CT": 3, "PET": 2, "__FAILURE__": 2}


def test_sop_modalities_always_present_and_pt_named_pet():
    sheet = build_master(_sessions([("NN_1", "PT", "s", D(2024, 1, 1), "E", "u", "1", "t"),
                                    ("NN_1", "RTSTRUCT", "s", D(2024, 1, 2), "E", "v", "1", "t")]), {})
    prefixes = list(dict.fromkeys(c.split(" ")[0] for c in sheet.columns[2:]))
    assert prefixes == ["MR", "CT", "PET", "CR", "DX", "RF", "SR", "XA", "RTSTRUCT", "Failure", "Notes"]
    assert sheet.rendered().loc[0, "PET Date 1"] == D(2024, 1, 1)


@pytest.mark.parametrize("raw, expected", [
    ("2024-03-01", D(2024, 3, 1)), ("20240301", D(2024, 3, 1)), (20240301, D(2024, 3, 1)),
    (20240301.0, D(2024, 3, 1)), ("20240301.0", D(2024, 3, 1)), ("01/03/2024", D(2024, 3, 1)),
    ("01.03.2024", D(2024, 3, 1)), ("2024-03-01T10:00:00", D(2024, 3, 1)), ("1 Mar 2024", D(2024, 3, 1)),
    ("", None), (None, None),
])
def test_dates_use_explicit_formats(raw, expected):
    assert parse_date(raw) == expected


@pytest.mark.parametrize("raw", ["2024-13-45", "31/31/2024", "1709251200", "March"])
def test_unparseable_dates_raise(raw):
    with pytest.raises(ValueError):
        parse_date(raw)


@pytest.mark.parametrize("name, dates, problem_lines", [
    ("refdates_mixed_formats.csv", {"9434765919": D(2024, 3, 1), "4010232137": D(2024, 2, 1),
                                    "NN_H002": D(2024, 1, 15), "NN_0012345": D(2024, 1, 15)}, []),
    ("refdates_integer_dates.csv", {"9434765919": D(2024, 3, 1), "4010232137": D(2024, 2, 1)}, []),
    ("refdates_float_subjects.csv", {"9434765919": D(2024, 3, 1)}, []),
    ("refdates_bad_rows.csv", {"1234567890": D(2024, 1, 1)}, [2, 3, 4, 5]),
    ("refdates_bom_semicolon.csv", {"9434765919": D(2024, 3, 1)}, []),
])
def test_reference_dates_corpus(name, dates, problem_lines):
    r = read_reference_dates(DATA / name)
    assert r.dates == dates
    assert sorted(p.line for p in r.problems) == problem_lines
    assert all(p.path.endswith(name) for p in r.problems)


def test_reference_dates_missing_column_names_file():
    from ingest.errors import InputFileError

    with pytest.raises(InputFileError, match=r"refdates_missing_column.csv:1: need columns Subject and Reference Date"):
        read_reference_dates(DATA / "refdates_missing_column.csv")


def test_sheet_from_sop_folder(tmp_path):
    cfg = load_config(None, {"project.state_dir": str(tmp_path / "state")})
    paths = build_from_folder(cfg, DATA / "xnat_folder", tmp_path / "out")
    with open(paths[1], newline="", encoding="utf-8") as fh:
        rows = {r["Subject"]: r for r in csv.DictReader(fh)}
    a = rows["9434765919"]
    assert (a["CT Date 1"], a["CT Difference from Reference Date 1"], a["CT ID 1"]) == ("2024-02-20", "-10", "XNAT_E00001")
    assert (a["CT Date 2"], a["CT Difference from Reference Date 2"]) == ("2024-04-01", "31")
    assert (a["MR Date 1"], a["MR UID 1"]) == ("2024-02-25", "Avanto")  # float subject joined; 4th column by position
    b = rows["NN_H002"]
    assert (b["CT Date 1"], b["CT Difference from Reference Date 1"], b["CT ID 1"]) == ("null", "null", "XNAT_E00009")
    assert (b["RF Date 1"], b["RF ID 1"]) == ("2024-02-02", "null")
    assert b["Failure Accession 1"] == "RX100002" and b["Failure Status 1"] == "no images found"
    assert rows["NN_0012345"]["Failure Accession 1"] == "RX100003"  # leading zeros kept, NN_ label
    wb = openpyxl.load_workbook(paths[0])
    probs = [(r[0].value.rsplit("/", 1)[-1], r[1].value) for r in wb["Problems"].iter_rows(min_row=2)]
    assert ("CT.csv", 4) in probs and ("DX.csv", 1) in probs and ("RF.csv", 2) in probs and ("XA.csv", 0) in probs
    ws = wb["Master"]
    header = [c.value for c in ws[1]]
    first = {header[i]: c.value for i, c in enumerate(ws[2])}
    assert isinstance(first["Reference Date"], dt.datetime)
    assert ws.freeze_panes == "B2" and ws.auto_filter.ref
    assert ws.column_dimensions["A"].width >= 12
    prov = {r[0].value: r[1].value for r in wb["Provenance"].iter_rows(min_row=2)}
    assert prov["count_subjects"] == 3 and "sha256=" in prov["input_reference_dates"]
