"""Selection: normalisation, the three outcomes, list formats, and the review round trip."""

from __future__ import annotations

import datetime as dt

import openpyxl
import pytest

from criteria.lists import CriteriaLists, load_lists, save_lists
from criteria.normalise import BLANK, normalise
from criteria.review import effective_lists, export_review, import_review
from ingest.catalog import Catalog
from ingest.config import load_config
from ingest.errors import InputFileError


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("  MRI   Neck. ", "mri neck"),
        ("MRI NECK", "mri neck"),
        ("PET-CT Skull Base – Mid Thigh", "pet ct skull base mid thigh"),
        ("PET-CT Skull Base  Mid Thigh", "pet ct skull base mid thigh"),  # Latin-1 C-FIND mangling
        ("CT Chest ?PE", "ct chest ?pe"),
        ("XR OPG;:", "xr opg"),
        ("", BLANK),
        (None, BLANK),
        ("   ", BLANK),
    ],
)
def test_normalise(raw, expected):
    assert normalise(raw) == expected


def _lists() -> CriteriaLists:
    lists = CriteriaLists()
    for d in ("MRI Neck", "CT Neck with contrast", "glob:pet ct*"):
        lists.add("include", d)
    for d in ("XR Chest", "glob:mri knee*", "(blank)"):
        lists.add("exclude", d)
    return lists


@pytest.mark.parametrize(
    "desc, decision",
    [
        ("mri  neck.", "include"),
        ("CT NECK WITH CONTRAST", "include"),
        ("PET-CT Whole body", "include"),        # include pattern
        ("MRI Knee Left", "exclude"),            # exclude pattern
        ("xr chest", "exclude"),
        ("", "exclude"),                         # (blank) is listed
        ("CT Perfusion Larynx", "review"),       # on neither list
    ],
)
def test_three_outcomes(desc, decision):
    assert _lists().decide(desc)[0] == decision


def test_exact_beats_pattern_and_conflicts_go_to_review():
    lists = _lists()
    lists.add("exclude", "PET-CT Brain")  # exact exclude beats the include pattern
    assert lists.decide("pet-ct brain")[0] == "exclude"
    lists.add("include", "XR Chest")      # on both lists: a person must decide
    assert lists.decide("XR Chest") == ("review", "on both include and exclude lists")


def test_question_mark_is_literal_unless_glob():
    lists = CriteriaLists()
    lists.add("include", "CT Chest ?PE")
    assert lists.decide("CT Chest ?PE")[0] == "include"
    assert lists.decide("CT Chest XPE")[0] == "review"


def test_shipped_defaults_cover_demo_descriptions():
    from ingest.synth.descriptions import EXCLUDE_EXAMPLES, INCLUDE_EXAMPLES, UNKNOWN_EXAMPLES

    lists = load_lists()
    assert {lists.decide(d)[0] for d in INCLUDE_EXAMPLES} == {"include"}
    assert {lists.decide(d)[0] for d in EXCLUDE_EXAMPLES} == {"exclude"}
    assert {lists.decide(d)[0] for d in UNKNOWN_EXAMPLES} == {"review"}


@pytest.mark.parametrize("suffix", [".yaml", ".csv", ".xlsx"])
def test_list_formats_round_trip(tmp_path, suffix):
    path = tmp_path / f"lists{suffix}"
    save_lists(_lists(), path)
    again = load_lists(path)
    for desc in ("MRI Neck", "pet-ct anything", "mri knee right", "XR Chest", "", "unknown"):
        assert again.decide(desc) == _lists().decide(desc)


def test_sop_workbook_with_header_rows(tmp_path):
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "INCLUDE"
    ws.append(["Study Description"])
    ws.append(["MRI Neck"])
    ex = wb.create_sheet("Exclude")
    ex.append(["XR Chest"])
    wb.save(tmp_path / "12a.xlsx")
    lists = load_lists(tmp_path / "12a.xlsx")
    assert lists.decide("mri neck")[0] == "include"
    assert lists.decide("xr chest")[0] == "exclude"


def test_bad_list_files_name_the_file_and_row(tmp_path):
    bad = tmp_path / "lists.csv"
    bad.write_text("Description,List\nMRI Neck,include\nXR Chest,maybe\n")
    with pytest.raises(InputFileError, match=r"lists\.csv:3"):
        load_lists(bad)
    wb = openpyxl.Workbook()
    wb.active.title = "INCLUDE"
    wb.save(tmp_path / "one-sheet.xlsx")
    with pytest.raises(InputFileError, match="EXCLUDE"):
        load_lists(tmp_path / "one-sheet.xlsx")


def _seed_review(cat: Catalog) -> None:
    rows = [
        ("1.2.3.1", "H1", "CT Perfusion Larynx", "ct perfusion larynx", "CT", dt.date(2024, 1, 2)),
        ("1.2.3.2", "H2", "CT perfusion larynx.", "ct perfusion larynx", "CT", dt.date(2024, 3, 4)),
        ("1.2.3.3", "H1", "MR Sialography", "mr sialography", "MR", dt.date(2023, 5, 6)),
        ("1.2.3.4", "H3", "Odd One", "odd one", "DX", None),
    ]
    for uid, hid, desc, norm, mod, date in rows:
        cat.execute(
            "INSERT INTO studies_seen (study_uid, hospital_id, description, description_norm, modalities, "
            "study_date, decision, decision_reason, state) VALUES (?,?,?,?,?,?, 'review', 'on neither list', 'new')",
            [uid, hid, desc, norm, mod, date],
        )


def test_review_round_trip(tmp_path):
    cfg = load_config(None, {"project.state_dir": str(tmp_path / "state"),
                             "criteria.history_dir": str(tmp_path / "history")})
    cat = Catalog(tmp_path / "cat.duckdb")
    _seed_review(cat)
    out = tmp_path / "queue.xlsx"
    assert export_review(cat, out) == 3  # two spellings of one description are one row
    wb = openpyxl.load_workbook(out)
    ws = wb["REVIEW"]
    header = [c.value for c in ws[1]]
    assert header[:2] == ["Description", "Normalised"] and "Decision" in header
    rows = {r[1]: r for r in ws.iter_rows(min_row=2, values_only=True)}
    assert rows["ct perfusion larynx"][2] == 2
    dcol = header.index("Decision") + 1
    for r in range(2, ws.max_row + 1):
        norm = ws.cell(r, 2).value
        ws.cell(r, dcol).value = {"ct perfusion larynx": "include", "mr sialography": "Exclude",
                                  "odd one": "perhaps"}[norm]
    wb.save(out)

    result = import_review(cat, out, cfg, decided_by="Dr Test")
    assert (result.included, result.excluded) == (1, 1)
    assert any("perhaps" in p and ":4" in p for p in result.problems)  # bad value: named by row, skipped
    lists = effective_lists(None, cat)
    assert lists.decide("CT Perfusion Larynx")[0] == "include"
    assert lists.decide("mr sialography")[0] == "exclude"
    assert lists.decide("Odd One")[0] == "review"
    # the dated history copy holds the merged lists
    hist = load_lists(result.history_file)
    assert hist.decide("ct perfusion larynx")[0] == "include"
    # a later decision on the same description wins
    wb = openpyxl.Workbook()
    wb.active.append(["Description", "Decision"])
    wb.active.append(["CT Perfusion Larynx", "exclude"])
    wb.save(tmp_path / "second.xlsx")
    import_review(cat, tmp_path / "second.xlsx", cfg)
    assert effective_lists(None, cat).decide("ct perfusion larynx")[0] == "exclude"
    cat.close()


def test_review_import_updates_configured_list_file(tmp_path):
    lists_file = tmp_path / "lists.xlsx"
    save_lists(_lists(), lists_file)
    cfg = load_config(None, {"criteria.lists": str(lists_file), "criteria.history_dir": str(tmp_path / "h")})
    cat = Catalog(tmp_path / "cat.duckdb")
    _seed_review(cat)
    wb = openpyxl.Workbook()
    wb.active.append(["Description", "Decision"])
    wb.active.append(["MR Sialography", "include"])
    wb.save(tmp_path / "d.xlsx")
    import_review(cat, tmp_path / "d.xlsx", cfg)
    assert load_lists(lists_file).decide("mr sialography")[0] == "include"
    assert load_lists(lists_file).decide("MRI Neck")[0] == "include"  # existing entries kept
    cat.close()
