"""Tables that fit the terminal, CSV/JSON for scripts (ingest/output.py and the list commands).

Scenarios: `failures list` at 80 columns showed `2018-0…` and `RJZ504…`; even at 200 columns
UIDs were cut; no list command had a machine format. Expected values below are written from the
rule (identifiers whole, one CSV row per study, header = column keys), not printed by the code.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from typer.testing import CliRunner

from ingest.cli import app
from ingest.output import Column, emit

UID = "1.2.826.0.1.3680043.8.498.10003641127913429810253346458213790254"  # 64 characters
COLS = [Column("study_uid", "StudyInstanceUID"), Column("accession", "Accession"),
        Column("status", "Status", wrap=True), Column("n", "Files", numeric=True)]
ROWS = [{"study_uid": UID, "accession": "RJZ5041234", "status": "no images found", "n": 3},
        {"study_uid": "1.2.3", "accession": "A,\"quoted\"", "status": "should have been ingested", "n": 0}]


def render(fmt: str, width: int) -> str:
    buf = io.StringIO()
    emit(ROWS, COLS, fmt, title="Studies", file=buf, width=width)
    return buf.getvalue()


def test_narrow_terminal_gets_records_with_whole_identifiers():
    text = render("table", 80)
    assert "…" not in text
    lines = text.splitlines()
    # one "Header: value" line per field, identifiers whole on their line
    assert f"StudyInstanceUID: {UID}" in lines
    assert "Accession:        RJZ5041234" in lines
    assert "Files:            0" in lines
    assert lines[0] == "Studies"


def test_wide_terminal_gets_a_table_with_whole_identifiers():
    text = render("table", 160)
    assert "…" not in text
    row = next(line for line in text.splitlines() if UID in line)
    assert "RJZ5041234" in row and "no images found" in row
    assert max(len(line) for line in text.splitlines()) <= 160


def test_table_just_wide_enough_wraps_free_text_not_identifiers():
    # UID 64 + accession 10 (A,"quoted") + longest status word 8 ("ingested") + Files 5
    # + 3 per column + 1 = 100 columns at the narrowest
    text = render("table", 100)
    assert "StudyInstanceUID:" not in text  # still a table
    assert UID in text and 'A,"quoted"' in text
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "StudyInstanceUID:" in render("table", 99)  # one column less: records


def test_csv_and_json_carry_raw_values_under_column_keys():
    rows = list(csv.reader(io.StringIO(render("csv", 80))))
    assert rows == [["study_uid", "accession", "status", "n"],
                    [UID, "RJZ5041234", "no images found", "3"],
                    ["1.2.3", 'A,"quoted"', "should have been ingested", "0"]]
    assert json.loads(render("json", 80)) == [
        {"study_uid": UID, "accession": "RJZ5041234", "status": "no images found", "n": 3},
        {"study_uid": "1.2.3", "accession": 'A,"quoted"', "status": "should have been ingested", "n": 0}]


def test_markup_in_values_is_printed_literally():
    buf = io.StringIO()
    emit([{"a": "[red]x[/red] [source]"}], ["a"], "table", file=buf, width=80)
    assert "[red]x[/red] [source]" in buf.getvalue()


# -- failures list / rates through the CLI ---------------------------------------------------------
FAILURES = [
    {"accessionNumber": "RJZ5041234", "modalitiesInStudy": ["PT", "CT"], "patient": {"id": "H001"},
     "studyDate": "20180102", "studyDescription": "PET-CT, skull base to thigh", "studyId": "77",
     "studyInstanceUid": UID},
    {"accessionNumber": "ACC,2", "modalitiesInStudy": ["MR"], "patient": {"id": "H002"},
     "studyDate": "20240305", "studyDescription": "MRI \"head\"", "studyId": "78", "studyInstanceUid": ""},
]


def _project(tmp_path: Path) -> Path:
    (tmp_path / "HospitalID-NHSNumber.csv").write_text("HospitalID,NHSNumber\nH001,\nH002,\n", encoding="utf-8")
    cfg = tmp_path / "rtlake.toml"
    cfg.write_text('[project]\nstate_dir = "state"\n[report]\noutbox = "outbox"\n', encoding="utf-8")
    (tmp_path / "failures.json").write_text(json.dumps(FAILURES), encoding="utf-8")
    r = CliRunner().invoke(app, ["failures", "import", str(tmp_path / "failures.json"), "-c", str(cfg)])
    assert r.exit_code == 0, r.output
    return cfg


def test_failures_list_csv_round_trips(tmp_path):
    cfg = _project(tmp_path)
    r = CliRunner().invoke(app, ["failures", "list", "-c", str(cfg), "--csv"], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    # one row set: imported failed studies and rtlake's own failures, told apart by `kind`
    assert list(rows[0]) == ["kind", "study_date", "accession", "study_uid", "modalities", "status", "category",
                             "first_seen_run", "last_seen_run", "state", "stage", "target", "reason", "run_id"]
    assert [row["kind"] for row in rows] == ["imported", "imported"]  # no run has failed anything yet
    assert [row["study_uid"] for row in rows] == [UID, ""]
    assert [row["accession"] for row in rows] == ["RJZ5041234", "ACC,2"]
    assert [row["study_date"] for row in rows] == ["2018-01-02", "2024-03-05"]
    assert [row["modalities"] for row in rows] == ["PT\\CT", "MR"]
    assert [row["status"] for row in rows] == ["should have been ingested", "no images found"]
    assert all(row["first_seen_run"].startswith("import-") and row["first_seen_run"] == row["last_seen_run"]
               for row in rows)


def test_failures_list_table_at_80_columns_cuts_nothing(tmp_path):
    cfg = _project(tmp_path)
    r = CliRunner().invoke(app, ["failures", "list", "-c", str(cfg)], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    assert "…" not in r.stdout
    assert f"StudyInstanceUID: {UID}" in r.stdout.splitlines()
    assert "Study date:       2018-01-02" in r.stdout.splitlines()
    j = CliRunner().invoke(app, ["failures", "list", "-c", str(cfg), "--json"])
    assert [x["accession"] for x in json.loads(j.stdout)] == ["RJZ5041234", "ACC,2"]


def test_failures_rates_csv_for_a_list_of_unknown_batch_size(tmp_path):
    cfg = _project(tmp_path)
    r = CliRunner().invoke(app, ["failures", "rates", "-c", str(cfg), "--csv"])
    assert r.exit_code == 0, r.output
    # no update run yet; the imported list gives one row per modality it names (PET-CT counts as
    # PET), attempted and rate unknown (empty), MR with its configured 7 % baseline
    assert r.stdout == ("kind,run_id,batch_of,modality,attempted,failed,rate,baseline,threshold,out_of_line\n"
                        "list,failures.json,,MR,,1,,0.07,,False\n"
                        "list,failures.json,,PET,,1,,,,False\n")


def test_csv_and_json_together_is_a_usage_error(tmp_path):
    cfg = _project(tmp_path)
    r = CliRunner().invoke(app, ["failures", "list", "-c", str(cfg), "--csv", "--json"])
    assert r.exit_code == 2 and "--csv or --json" in r.output
