"""The master sheet for a real catalog: placeholder sessions never appear, empty rows say why."""

from __future__ import annotations

import csv
import datetime as dt

import openpyxl

from reporting.build import build_reports

#: (hospital id, subject, deceased, harvested run) added to the reporting_env cohort.
PATIENTS = [
    ("H010", "NN_H010", True, None),       # died before rtlake ever queried them
    ("H011", "NN_H011", False, None),      # in the cohort, not harvested yet
    ("H012", "NN_H012", False, "run-1"),   # harvested: only excluded / review studies
    ("H013", "NN_H013", False, "run-1"),   # harvested: only a 2099-01-01 placeholder (stored by an old run)
    ("H014", "NN_H014", False, "run-1"),   # harvested: PACS has nothing
]
#: (study uid, hospital id, date, decision, state)
SEEN = [
    ("1.2.12.1", "H012", "2024-01-05", "exclude", "skipped"),
    ("1.2.12.2", "H012", "2024-01-06", "exclude", "skipped"),
    ("1.2.12.3", "H012", "2024-01-07", "review", "new"),
    ("1.2.13.1", "H013", "2099-01-01", "include", "ingested"),
]


def _rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return {r["Subject"]: r for r in csv.DictReader(fh)}


def test_master_sheet_has_no_placeholder_sessions_and_notes_empty_rows(reporting_env):
    cfg, cat = reporting_env
    for hid, subject, dead, run in PATIENTS:
        cat.execute("INSERT INTO patients (hospital_id, nhs_number, subject, deceased, harvested_run) VALUES (?, NULL, ?, ?, ?)",
                    [hid, subject, dead, run])
    for uid, hid, date, decision, state in SEEN:
        cat.execute("INSERT INTO studies_seen (study_uid, hospital_id, study_date, modalities, decision, state)"
                    " VALUES (?, ?, ?, 'CT', ?, ?)", [uid, hid, date, decision, state])
    # Placeholder sessions stored before placeholders were skipped: one beside real ones, one alone.
    for uid, hid, subject in (("1.2.826.0.1.99", "H001", "9434765919"), ("1.2.13.1", "H013", "NN_H013")):
        cat.execute("INSERT INTO sessions (study_uid, project, subject, label, hospital_id, study_date, modality, store,"
                    " state, n_scans) VALUES (?, 'RTLAKE', ?, ?, ?, '2099-01-01', 'CT', 'lake', 'stored', 1)",
                    [uid, subject, f"{subject}_CT_ph", hid])
    outputs = build_reports(cfg, cat, run_id="run-1")
    rows = _rows(outputs[1])
    text = outputs[1].read_text(encoding="utf-8")
    assert "2099-01-01" not in text and "1.2.826.0.1.99" not in text and "1.2.13.1" not in text
    a = rows["9434765919"]
    assert [a[f"CT Date {i}"] for i in (1, 2, 3)] == ["2024-02-20", "2024-04-01", "null"]
    assert a["Notes"] == "null"  # it has sessions
    assert {s: rows[s]["Notes"] for s in rows} == {
        "9434765919": "null",
        "NN_H002": "null",
        "4010232137": "not harvested yet: never queried on PACS",
        "NN_H010": "deceased before the first harvest: never queried on PACS",
        "NN_H011": "not harvested yet: never queried on PACS",
        "NN_H012": "no study selected: 2 excluded, 1 awaiting review",
        "NN_H013": "only placeholder-dated studies (scheduled, not performed): left out",
        "NN_H014": "harvested: PACS lists no study for this patient",
    }
    b = rows["NN_H002"]  # its MR session has no date: Date and Difference are null
    assert (b["MR Date 1"], b["MR Difference from Reference Date 1"]) == ("null", "null")
    c = rows["4010232137"]  # no reference date: a session would be "not applicable"; there is none
    assert c["Reference Date"] == "not applicable"
    wb = openpyxl.load_workbook(outputs[0])
    prov = {r[0].value: r[1].value for r in wb["Provenance"].iter_rows(min_row=2)}
    assert prov["count_placeholder_sessions_left_out"] == 2
    assert prov["count_subjects_with_nothing_to_show"] == 6
    header = [c.value for c in wb["Master"][1]]
    assert header[-1] == "Notes"
    assert dt.date.today().isoformat() in outputs[1].name
