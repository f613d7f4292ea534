"""`rtlake fetch` on the folder source honours every column it accepts, and refuses columns it does not know.

Cases written down first (pacs_cohort: 3 patients × 2 studies of 3 instances, one series each):
  accession only                      → exactly that study
  StudyInstanceUID only               → exactly that study
  PatientID + StudyDescription glob   → that patient's studies whose folded description matches
  PatientID + StudyDate range         → that patient's studies inside the range (inclusive)
  an unknown column                   → an error naming it, nothing fetched
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from typer.testing import CliRunner

from ingest.cli import app
from ingest.sources._query import fold


def _cfg(tmp_path: Path, pacs: Path) -> Path:
    cfg = tmp_path / "rtlake.toml"
    cfg.write_text(f'[project]\nstate_dir = "state"\n[source]\nkind = "folder"\n[source.folder]\npath = "{pacs}"\n')
    return cfg


def _studies(out: Path) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID)
            for p in out.rglob("*.dcm") if not any(x.startswith(".") for x in p.relative_to(out).parts)}


def test_folder_fetch_honours_every_column(pacs_cohort, tmp_path):
    pacs = pacs_cohort[0].files[0].parents[2]
    cfg = _cfg(tmp_path, pacs)
    a, b = pacs_cohort[0], pacs_cohort[3]
    p = pacs_cohort[2].patient_id
    mine = [s for s in pacs_cohort if s.patient_id == p]
    want_desc = {s.study_uid for s in mine if fold(s.description).startswith(fold(mine[0].description)[:4])}
    lo = min(s.study_date for s in mine)
    rows = {
        "acc.csv": (f"AccessionNumber\n{a.accession}\n", {a.study_uid}),
        "uid.csv": (f"StudyInstanceUID\n{b.study_uid}\n", {b.study_uid}),
        "desc.csv": (f"PatientID,StudyDescription\n{p},{fold(mine[0].description)[:4]}*\n", want_desc),
        "dates.csv": (f"PatientID,StudyDate\n{p},{lo:%Y%m%d}-{lo:%Y%m%d}\n",
                      {s.study_uid for s in mine if s.study_date == lo}),
    }
    for name, (text, want) in rows.items():
        (tmp_path / name).write_text(text)
        out = tmp_path / f"out-{name}"
        res = CliRunner().invoke(app, ["fetch", "--from", str(tmp_path / name), "-o", str(out), "-c", str(cfg)])
        assert res.exit_code == 0, (name, res.output)
        assert want and _studies(out) == want, name


def test_unknown_column_is_an_error(pacs_cohort, tmp_path):
    pacs = pacs_cohort[0].files[0].parents[2]
    (tmp_path / "list.csv").write_text(f"PatientID,Modality\n{pacs_cohort[0].patient_id},CT\n")
    res = CliRunner().invoke(app, ["fetch", "--from", str(tmp_path / "list.csv"), "-o", str(tmp_path / "out"),
                                   "-c", str(_cfg(tmp_path, pacs))])
    assert res.exit_code == 2 and "'Modality'" in res.output
    assert not list((tmp_path / "out").rglob("*.dcm"))
