"""Failure lists: three file shapes, history in the catalog, the investigation round trip."""

from __future__ import annotations

from pathlib import Path

import openpyxl
import pytest

from ingest.catalog import Catalog
from reporting.failures import (
    STATUS_BOTH,
    STATUS_NO_STUDY_ID,
    STATUS_NO_UID,
    parse_failure_file,
    parse_failure_text,
)
from reporting.history import history_rows, import_failure_file
from reporting.investigation import export_investigation, import_investigation
from reporting.nhs import read_mapping

DATA = Path(__file__).parent / "data" / "reporting"
SHAPES = ["failures_query.json", "failures_bare.json", "failures_cells.csv", "PACs-failures.txt"]


@pytest.fixture
def catalog(tmp_path):
    cat = Catalog(tmp_path / "catalog.duckdb")
    yield cat
    cat.close()


def test_three_shapes_give_the_same_records():
    parsed = {name: parse_failure_file(DATA / name) for name in SHAPES}
    for name, r in parsed.items():
        if name == "PACs-failures.txt":  # its title line is text, not a record: reported, with its length
            assert [(x.line, x.message) for x in r.problems] == [
                (1, "42 characters that are not a failure record; skipped")]
        else:
            assert r.problems == [], name
    reference = [r.same_study() for r in parsed["failures_bare.json"].records]
    assert len(reference) == 5
    for name, r in parsed.items():
        assert [x.same_study() for x in r.records] == reference, name
    recs = parsed["PACs-failures.txt"].records
    assert recs[0].study_uid == "1.2.826.0.1.3680043.10.1.1"  # line-wrapped UID rejoined
    assert recs[0].description == "CT Neck with contrast"
    assert recs[2].hospital_id == "0012345"  # leading zeros kept
    assert recs[2].modalities == ("PT", "CT")
    # every record knows its file and line
    assert [x.source_line for x in parsed["failures_cells.csv"].records] == [2, 3, 4, 5, 6]
    assert all(x.source_file.endswith("PACs-failures.txt") and x.source_line > 0 for x in recs)
    assert any("xnatExtra" in n for n in parsed["PACs-failures.txt"].notes)


def test_status_follows_study_id_and_uid():
    recs = parse_failure_file(DATA / "failures_bare.json").records
    assert [r.status for r in recs] == [STATUS_BOTH, STATUS_NO_UID, STATUS_NO_STUDY_ID, STATUS_NO_STUDY_ID, STATUS_BOTH]


def test_pasted_text_with_missing_commas_and_bare_keys():
    text = "{accessionNumber: 'A1'\n 'studyId': '7' studyInstanceUid: \"1.2.3\"}\n\nnoise here\n{\"accessionNumber\": \"A2\",}"
    r = parse_failure_text(text, "paste.txt")
    assert [(x.accession, x.study_id, x.study_uid) for x in r.records] == [("A1", "7", "1.2.3"), ("A2", "", "")]
    assert [(p.line, p.message) for p in r.problems] == [(4, "10 characters that are not a failure record; skipped")]


@pytest.mark.parametrize(
    "name, kept, problem_line, words",
    [
        ("bad_failures_truncated.json", 4, 62, "string is not closed"),
        ("bad_failures_garbled_record.json", 2, 16, "not a failure record"),
        ("bad_failures_empty.json", 0, 1, "empty"),
        ("bad_failures_whitespace.txt", 0, 1, "empty"),
        ("bad_failures_not_json.txt", 0, 1, "lines 1-2: 33 characters"),
        ("bad_failures_csv_row_without_json.csv", 5, 7, "11 characters that are not a failure record"),
        ("bad_failures_bad_date.json", 1, 1, "studyDate"),
        ("bad_failures_unknown_keys.json", 2, None, None),
        ("bad_failures_trailing_commas.json", 2, None, None),
        ("bad_failures_cp1252.txt", 1, None, None),
        ("bad_failures_bom.json", 1, None, None),
        ("bad_failures_float_ids.json", 1, None, None),
        ("bad_failures_empty_studies.json", 1, None, None),
    ],
)
def test_damaged_failure_files_keep_what_they_can(name, kept, problem_line, words):
    r = parse_failure_file(DATA / name)
    assert len(r.records) == kept
    if problem_line is None:
        assert r.problems == []
    else:
        assert len(r.problems) == 1
        assert r.problems[0].line == problem_line
        assert r.problems[0].path.endswith(name)
        assert words in r.problems[0].message
        assert f"{name}:{problem_line}:" in str(r.problems[0])


def test_float_and_encoding_damage_is_undone():
    rec = parse_failure_file(DATA / "bad_failures_float_ids.json").records[0]
    assert (rec.accession, rec.study_id) == ("100001", "5501")
    r = parse_failure_file(DATA / "bad_failures_cp1252.txt")
    assert r.records[0].description == "CT Nëck – post op"
    assert any("Windows-1252" in n for n in r.notes)
    assert parse_failure_file(DATA / "bad_failures_empty_studies.json").records[0].accession == "RX100099"


def test_history_import_is_idempotent_and_deduplicates(catalog, tmp_path):
    mapping = read_mapping(DATA / "xnat_folder" / "HospitalID-NHSNumber.csv")
    first = import_failure_file(catalog, DATA / "failures_query.json", "run-1", mapping=mapping)
    assert (first.n_records, first.n_new) == (5, 5)
    snap = catalog.table_snapshot("failure_history")
    again = import_failure_file(catalog, DATA / "failures_query.json", "run-2", mapping=mapping)
    assert again.already_imported and again.n_new == 0
    assert catalog.table_snapshot("failure_history") == snap
    # same failures in another shape: no new studies, last-seen run moves on
    other = import_failure_file(catalog, DATA / "PACs-failures.txt", "run-3", mapping=mapping)
    assert (other.n_new, other.n_seen_again) == (0, 5)
    rows = {r["record_key"]: r for r in history_rows(catalog, include_placeholders=True)}
    assert len(rows) == 5
    r1 = rows["uid:1.2.826.0.1.3680043.10.1.1"]
    assert (r1["first_seen_run"], r1["last_seen_run"]) == ("run-1", "run-3")
    assert r1["subject"] == "9434765919"
    assert rows["acc:RX100003"]["subject"] == "NN_0012345"
    assert rows["acc:RX100004"]["placeholder"] is True
    assert "acc:RX100004" not in {r["record_key"] for r in history_rows(catalog)}
    assert catalog.execute("SELECT count(*) FROM failure_sightings").fetchone()[0] == 10


def test_history_import_records_problems_in_catalog(catalog):
    res = import_failure_file(catalog, DATA / "bad_failures_truncated.json", "run-1")
    assert res.n_new == 4 and len(res.problems) == 1
    fails = catalog.query_dicts("SELECT * FROM failures")
    assert len(fails) == 1 and fails[0]["target"].endswith("bad_failures_truncated.json:62")
    assert fails[0]["stage"] == "report"


def test_investigation_round_trip(catalog, tmp_path):
    import_failure_file(catalog, DATA / "failures_bare.json", "run-1")
    out = tmp_path / "investigate.xlsx"
    assert export_investigation(catalog, out) == 4  # the 2099 placeholder is left out
    wb = openpyxl.load_workbook(out)
    ws = wb["Failures"]
    header = [c.value for c in ws[1]]
    assert ws.data_validations.dataValidation, "Category drop-down missing"
    cat_i, note_i, key_i = header.index("Category") + 1, header.index("Note") + 1, header.index("Key") + 1
    keys = [ws.cell(row=r, column=key_i).value for r in range(2, 6)]
    ws.cell(row=2, column=cat_i).value = "cancelled"
    ws.cell(row=3, column=cat_i).value = "Available on PACS"
    ws.cell(row=3, column=note_i).value = "pull manually"
    ws.cell(row=4, column=cat_i).value = "Lost in space"
    wb.save(out)
    res = import_investigation(catalog, out)
    assert res.updated == 2 and len(res.problems) == 1
    assert res.problems[0].line == 4 and "Lost in space" in res.problems[0].message
    cats = dict(catalog.execute("SELECT record_key, category FROM failure_history").fetchall())
    assert cats[keys[0]] == "Cancelled" and cats[keys[1]] == "Available on PACS" and cats[keys[2]] is None
    again = import_investigation(catalog, out)
    assert again.updated == 0 and again.unchanged == 3


def test_nhs_mapping_strings_and_conflicts():
    m = read_mapping(DATA / "cohort_float_nhs.csv")
    assert m.subject_for("H001") == "9434765919" and m.subject_for("H005") == "4010232137"
    assert isinstance(m.nhs_for("H001"), str)
    m = read_mapping(DATA / "cohort_blank_nhs.csv")
    assert [m.subject_for(h) for h in ("H002", "H003", "H404")] == ["NN_H002", "NN_H003", "NN_H404"]
    m = read_mapping(DATA / "cohort_spaces_dashes.csv")
    assert m.nhs_for("H005") == "4010232137"
    m = read_mapping(DATA / "cohort_duplicate_ids.csv")  # two different valid numbers: neither is trusted
    assert m.nhs_for("H001") is None and m.subject_for("H001") == "NN_H001"
    assert [(p.line, "two different valid NHS numbers" in p.message) for p in m.problems] == [(3, True)]
    m = read_mapping(DATA / "cohort_same_nhs_two_ids.csv")
    assert [(p.line, "another hospital ID" in p.message) for p in m.problems] == [(3, True)]
    m = read_mapping(DATA / "cohort_bad_checkdigit.csv")
    assert {p.line for p in m.problems} == {2, 3}
    assert m.subject_for("H001") == "NN_H001"
    m = read_mapping(DATA / "cohort_leading_zeros.csv")
    assert m.subject_for("0012345") == "NN_0012345" and m.nhs_for("000777") == "4010232137"


def test_json_saved_with_csv_name_and_top_level_id_are_not_misread(tmp_path):
    p = tmp_path / "failures.csv"
    p.write_text((DATA / "failures_bare.json").read_text(encoding="utf-8"), encoding="utf-8")
    r = parse_failure_file(p)
    assert len(r.records) == 5 and r.problems == []
    q = tmp_path / "queue.json"
    q.write_text('[{"id": 17, "accessionNumber": "A1", "status": "FAILED", "patient": {"id": "H9"}}]')
    rec = parse_failure_file(q).records[0]
    assert rec.hospital_id == "H9"  # the DQR queue id is not a hospital ID


def test_accession_only_failure_gains_its_uid_later(catalog, tmp_path):
    a = tmp_path / "first.json"
    a.write_text('[{"accessionNumber": "A77", "studyId": "", "studyInstanceUid": "", "studyDate": "20240101"}]')
    b = tmp_path / "second.json"
    b.write_text('[{"accessionNumber": "A77", "studyId": "9", "studyInstanceUid": "1.2.77", "studyDate": "20240101"}]')
    import_failure_file(catalog, a, "run-1")
    res = import_failure_file(catalog, b, "run-2")
    assert (res.n_new, res.n_seen_again) == (0, 1)
    rows = history_rows(catalog)
    assert len(rows) == 1
    assert (rows[0]["study_uid"], rows[0]["status"], rows[0]["last_seen_run"]) == ("1.2.77", STATUS_BOTH, "run-2")
