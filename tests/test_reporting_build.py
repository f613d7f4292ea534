"""build_reports: the master sheet from a real catalog, written to the outbox as xlsx + CSV."""

from __future__ import annotations

import csv
import datetime as dt
import json

import openpyxl

from reporting.build import build_reports


def _csv_rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return {r["Subject"]: r for r in csv.DictReader(fh)}


def test_build_reports_writes_dated_xlsx_and_csv(reporting_env):
    cfg, cat = reporting_env
    outputs = build_reports(cfg, cat, run_id="run-1")
    names = sorted(p.name for p in outputs)
    today = dt.date.today().isoformat()
    assert f"master-availability-{today}.xlsx" in names
    assert f"master-availability-{today}.csv" in names
    assert [p.parent for p in outputs[:3]] == [cfg.report.outbox] * 3
    assert outputs[3].suffix == ".html" and outputs[3].parent == cfg.state_dir / "reports"
    assert not list(cfg.report.outbox.glob(".tmp-*"))

    rows = _csv_rows(next(p for p in outputs if p.suffix == ".csv"))
    assert set(rows) == {"9434765919", "NN_H002", "4010232137"}
    a = rows["9434765919"]
    assert a["Reference Date"] == "2024-03-01"
    assert (a["CT Date 1"], a["CT Difference from Reference Date 1"]) == ("2024-02-20", "-10")
    assert (a["CT Date 2"], a["CT Difference from Reference Date 2"]) == ("2024-04-01", "31")
    assert a["CT UID 2"] == "1.2.826.0.1.2"
    assert a["CT Date 3"] == "null"  # the planned session is not counted
    b = rows["NN_H002"]
    assert (b["PET Date 1"], b["PET Difference from Reference Date 1"]) == ("2024-01-10", "-22")
    assert (b["MR Date 1"], b["MR Difference from Reference Date 1"]) == ("null", "null")  # session without a date
    c = rows["4010232137"]
    assert c["Reference Date"] == "not applicable"
    assert all(c[f"CT {f} 1"] == "null" for f in ("Date", "ID", "UID", "Scans"))

    wb = openpyxl.load_workbook(next(p for p in outputs if p.suffix == ".xlsx"))
    ws = wb["Master"]
    header = [c.value for c in ws[1]]
    assert header[:3] == ["Subject", "Reference Date", "MR Date 1"]
    assert ws.freeze_panes == "B2"
    assert ws.auto_filter.ref.startswith("A1:")
    row = {header[i]: c.value for i, c in enumerate(ws[2])}
    assert isinstance(row["Subject"], str)
    assert row["Subject"] in rows
    by_subject = {r[0].value: {header[i]: c.value for i, c in enumerate(r)} for r in ws.iter_rows(min_row=2)}
    assert by_subject["9434765919"]["CT Date 1"] == dt.datetime(2024, 2, 20)
    assert by_subject["9434765919"]["CT Scans 1"] == 3
    prov = {r[0].value: r[1].value for r in wb["Provenance"].iter_rows(min_row=2)}
    assert prov["run_id"] == "run-1"
    assert prov["count_subjects"] == 3


def test_build_reports_is_idempotent_and_records_bad_reference_rows(reporting_env, tmp_path):
    cfg, cat = reporting_env
    cfg.inputs.reference_dates.write_text(
        "Subject,Reference Date\n9434765919,2024-03-01\n1234567890,2024-01-01\nNN_H002,31/31/2024\n",
        encoding="utf-8",
    )
    first = build_reports(cfg, cat, run_id="run-1")
    content = [p.read_bytes() for p in first if p.suffix == ".csv"]
    second = build_reports(cfg, cat, run_id="run-1")
    assert first == second
    assert [p.read_bytes() for p in second if p.suffix == ".csv"] == content
    reasons = {r["target"].rsplit(":", 1)[-1]: r["reason"] for r in cat.query_dicts("SELECT * FROM failures")}
    assert "mod-11" in reasons["3"]
    assert "Reference Date" in reasons["4"]
    assert cat.execute("SELECT count(*) FROM failures").fetchone()[0] == 2


def test_dqr_failures_are_imported_once_and_form_their_own_block(reporting_env):
    cfg, cat = reporting_env
    dqr = cfg.state_dir / "dqr-failures"
    dqr.mkdir(parents=True)
    (dqr / "batch-1.json").write_text(json.dumps([
        {"accessionNumber": "ACC9", "studyId": "77", "studyInstanceUid": "1.2.826.0.1.77", "studyDate": "20240115",
         "studyDescription": "PET-CT FDG", "modalitiesInStudy": ["PT", "CT"], "patient": {"id": "H002", "name": "X^Y"}},
        {"accessionNumber": "ACC8", "studyId": "", "studyInstanceUid": "", "studyDate": "20990101",
         "studyDescription": "CT Chest", "modalitiesInStudy": ["CT"], "patient": {"id": "H001"}},
        # this one was stored after all: it must not be listed as a failure
        {"accessionNumber": "ACC1", "studyId": "1", "studyInstanceUid": "1.2.826.0.1.1", "studyDate": "20240220",
         "modalitiesInStudy": ["CT"], "patient": {"id": "H001"}},
    ]), encoding="utf-8")
    outputs = build_reports(cfg, cat, run_id="run-1")
    rows = _csv_rows(outputs[1])
    b = rows["NN_H002"]
    assert (b["Failure Date 1"], b["Failure Difference from Reference Date 1"]) == ("2024-01-15", "-17")
    assert (b["Failure Modality 1"], b["Failure Accession 1"]) == ("PET", "ACC9")
    assert b["Failure Status 1"] == "should have been ingested"
    assert rows["9434765919"]["Failure Date 1"] == "null"  # placeholder and resolved failure left out
    with open(outputs[2], newline="", encoding="utf-8") as fh:
        listed = list(csv.DictReader(fh))
    assert [r["Accession"] for r in listed] == ["ACC9"]
    assert cat.execute("SELECT count(*) FROM failure_history WHERE origin = 'dqr'").fetchone()[0] == 3
    snap = cat.table_snapshot("failure_history")
    build_reports(cfg, cat, run_id="run-2")
    assert cat.table_snapshot("failure_history") == snap
