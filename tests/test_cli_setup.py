"""A new user's first steps: init, check-config, and commands that refuse rather than guess.

Scenarios (from the issue): `update` with no config silently used defaults and created state/
and lake/ where it stood; `report` and `failures list` created an empty catalog and wrote an
empty master sheet into the EDW outbox; `check-config` passed with no cohort file;
`demo-data DIR` overwrote a real HospitalID-NHSNumber.csv; the review import said "1 left for
review" while rows marked 'yes' and 'maybe' were also still open; the drop-down took typos.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import openpyxl
import pytest
from typer.testing import CliRunner

from ingest.catalog import Catalog
from ingest.cli import app
from ingest.config import Config, load_config


def run(*args: str, cwd: Path | None = None):
    import os

    old = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(app, list(args), env={"COLUMNS": "100"})
    finally:
        os.chdir(old)


# -- init -------------------------------------------------------------------------------------------
def test_init_writes_a_starter_that_loads_and_documents_every_key(tmp_path):
    r = run("init", str(tmp_path / "site"))
    assert r.exit_code == 0, r.output
    cfg_path = tmp_path / "site" / "rtlake.toml"
    assert (tmp_path / "site" / "inputs").is_dir()
    readme = (tmp_path / "site" / "inputs" / "README.txt").read_text()
    assert "HospitalID-NHSNumber.csv" in readme and "[inputs] cohort" in readme
    cfg = load_config(cfg_path)
    assert cfg.inputs.cohort == (tmp_path / "site" / "inputs" / "HospitalID-NHSNumber.csv").resolve()
    assert cfg.source.kind == "folder" and cfg.store.kind == "lake"
    text = cfg_path.read_text()
    # every key of the model appears, active or commented, under its own section header
    for section, model in _sections(Config):
        assert f"[{section}]" in text, section
        for key in model.model_fields:
            if not _is_section(model.model_fields[key].annotation):
                assert re.search(rf"^(# )?{key} = ", text, re.M), f"{section}.{key}"
    # uncommenting every commented default changes nothing: each is a valid value equal to the default
    uncommented = re.sub(r"^# (\w+ = (?!\(none\)).*)$", r"\1", text, flags=re.M)
    data = tomllib.loads(uncommented)
    assert data["source"]["transfer"]["retries"] == Config().source.transfer.retries
    reloaded = tmp_path / "site" / "all.toml"
    reloaded.write_text(uncommented)
    full = load_config(reloaded)
    assert full.report.baseline_failure_rate == cfg.report.baseline_failure_rate
    assert full.harvest.skip_uid_prefixes == cfg.harvest.skip_uid_prefixes
    assert full.source.transfer.window == "19:00-07:00"  # an example value, there to be edited


def _is_section(ann) -> bool:
    from pydantic import BaseModel

    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _sections(model, prefix=""):
    for name, f in model.model_fields.items():
        if _is_section(f.annotation):
            yield prefix + name, f.annotation
            yield from _sections(f.annotation, f"{prefix}{name}.")


def test_init_never_overwrites_a_config(tmp_path):
    (tmp_path / "rtlake.toml").write_text("# mine\n")
    r = run("init", str(tmp_path))
    assert r.exit_code == 1 and "--force" in r.output
    assert (tmp_path / "rtlake.toml").read_text() == "# mine\n"


# -- no config, no catalog --------------------------------------------------------------------------
@pytest.mark.parametrize("args", [("update", "--no-progress"), ("report",), ("failures", "list"),
                                  ("failures", "rates"), ("review", "export"), ("export", "sessions")])
def test_commands_needing_a_config_refuse_without_one_and_point_to_init(tmp_path, args):
    r = run(*args, cwd=tmp_path)
    assert r.exit_code == 2, r.output
    assert "no config" in r.output and "rtlake init" in r.output
    assert list(tmp_path.iterdir()) == []  # nothing created where the command was started


@pytest.mark.parametrize("args", [("report",), ("failures", "list"), ("failures", "rates"),
                                  ("failures", "export-investigation"), ("review", "export"),
                                  ("failures", "sheet")])
def test_commands_reading_the_catalog_refuse_when_there_is_none(tmp_path, args):
    cfg = tmp_path / "rtlake.toml"
    cfg.write_text('[project]\nstate_dir = "state"\n[report]\noutbox = "outbox"\n')
    r = run(*args, "-c", str(cfg), cwd=tmp_path)
    assert r.exit_code == 1, r.output
    assert "no catalog" in r.output and "rtlake update" in r.output and "[project] state_dir" in r.output
    assert not (tmp_path / "state" / "catalog.duckdb").exists()
    assert not (tmp_path / "outbox").exists()  # no empty master sheet for the EDW


# -- check-config -----------------------------------------------------------------------------------
def test_check_config_checks_every_named_input(tmp_path):
    assert run("init", str(tmp_path)).exit_code == 0
    cfg = tmp_path / "rtlake.toml"
    r = run("check-config", str(cfg))
    assert r.exit_code == 2
    assert re.search(r"\[inputs\] cohort: .*HospitalID-NHSNumber\.csv: missing", r.output), r.output
    assert re.search(r"\[source\.folder\] path: .*pacs: missing", r.output), r.output

    (tmp_path / "inputs" / "HospitalID-NHSNumber.csv").write_text("HospitalID,NHSNumber\nH1,\n")
    (tmp_path / "pacs").mkdir()
    (tmp_path / "inputs" / "deceased.csv").mkdir()  # a folder where a file is named
    cfg.write_text(cfg.read_text().replace('# deceased = "inputs/deceased.csv"', 'deceased = "inputs/deceased.csv"'))
    r = run("check-config", str(cfg), "--csv")
    assert r.exit_code == 2
    states = {line.split(",")[0]: line.split(",")[2] for line in r.stdout.splitlines()[1:]}
    assert states == {"inputs.cohort": "ok", "inputs.deceased": "not a file", "source.folder.path": "ok"}

    (tmp_path / "inputs" / "deceased.csv").rmdir()
    (tmp_path / "inputs" / "deceased.csv").write_text("HospitalID\n")
    r = run("check-config", str(cfg))
    assert r.exit_code == 0, r.output
    assert "config OK: 3 input(s) readable" in r.output


# -- demo-data ----------------------------------------------------------------------------------------
def test_demo_data_refuses_a_folder_it_did_not_create(tmp_path):
    real = tmp_path / "HospitalID-NHSNumber.csv"
    real.write_text("HospitalID,NHSNumber\nREAL1,9434765919\n")
    r = run("demo-data", str(tmp_path), "--patients", "2")
    assert r.exit_code == 1 and "--force" in r.output and ".rtlake-demo" in r.output
    assert real.read_text() == "HospitalID,NHSNumber\nREAL1,9434765919\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["HospitalID-NHSNumber.csv"]


def test_demo_data_writes_again_into_its_own_folder_and_with_force(tmp_path):
    out = tmp_path / "demo"
    assert run("demo-data", str(out), "--patients", "2").exit_code == 0
    assert (out / ".rtlake-demo").is_file()
    assert run("demo-data", str(out), "--patients", "2").exit_code == 0  # its own marker: fine
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    assert run("demo-data", str(other), "--patients", "2", "--force").exit_code == 0
    assert (other / "notes.txt").read_text() == "x" and (other / "pacs").is_dir()


# -- review -----------------------------------------------------------------------------------------
def _review_catalog(tmp_path: Path) -> Path:
    cfg = tmp_path / "rtlake.toml"
    cfg.write_text('[project]\nstate_dir = "state"\n[criteria]\nhistory_dir = "hist"\n')
    cat = Catalog(tmp_path / "state" / "catalog.duckdb")
    for n, desc in enumerate(["CT Thorax", "MR Pelvis", "XR Knee", "US Liver", "NM Bone", "CT Colonography"]):
        cat.execute("INSERT INTO studies_seen (study_uid, hospital_id, description, description_norm, decision, "
                    "modalities, state, first_seen_run) VALUES (?, 'H1', ?, ?, 'review', 'CT', 'new', 'r1')",
                    [f"1.2.{n}", desc, desc.casefold()])
    cat.close()
    return cfg


def test_review_dropdown_refuses_values_outside_the_list(tmp_path):
    cfg = _review_catalog(tmp_path)
    r = run("review", "export", "-c", str(cfg), "-o", str(tmp_path / "q.xlsx"))
    assert r.exit_code == 0, r.output
    ws = openpyxl.load_workbook(tmp_path / "q.xlsx").active
    (dv,) = ws.data_validations.dataValidation
    assert dv.type == "list" and dv.formula1 == '"include,exclude"'
    # what Excel enforces: the error alert on, style "stop" (refuse the value), drop-down shown
    assert dv.showErrorMessage and dv.errorStyle == "stop" and not dv.showDropDown
    assert str(dv.sqref) == "G2:G7"  # the Decision cell of each of the six rows


def test_review_import_counts_every_row_it_did_not_apply(tmp_path):
    cfg = _review_catalog(tmp_path)
    assert run("review", "export", "-c", str(cfg), "-o", str(tmp_path / "q.xlsx")).exit_code == 0
    wb = openpyxl.load_workbook(tmp_path / "q.xlsx")
    ws = wb.active
    decisions = {"ct thorax": "include", "mr pelvis": "yes", "xr knee": "maybe", "us liver": "Yes",
                 "nm bone": None, "ct colonography": "exclude"}
    for row in ws.iter_rows(min_row=2):
        row[6].value = decisions[row[1].value]
    wb.save(tmp_path / "q.xlsx")
    r = run("review", "import", str(tmp_path / "q.xlsx"), "-c", str(cfg))
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == "1 included, 1 excluded; 4 row(s) not applied"
    assert lines[1] == "  1 with no decision (still open for review)"
    assert lines[2] == "  3 with a decision other than include/exclude ('maybe' ×1, 'yes' ×2; still open for review)"
