"""RT conversion of the demo cohort's lake after the lead's update run: patients are found
through the catalog, RT courses are converted, diagnostic-only subjects are noted as NO_RT,
and nothing a person reads names a patient."""

from __future__ import annotations

import csv
import json

from typer.testing import CliRunner

from ingest.cli import app
from ingest.config import load_config
from ingest.run import run_update


def test_rt_convert_after_update_run(fresh_demo):
    cfg = load_config(fresh_demo.config)
    run_update(cfg, show_progress=False, build_report=False)
    out = fresh_demo.root / "rt-out"
    res = CliRunner().invoke(app, ["rt", "convert", "-c", str(fresh_demo.config), "--output", str(out), "--serial",
                                   "--no-progress", "--no-previews"])
    assert res.exit_code == 0, res.output
    with open(out / "patients.csv", newline="") as fh:
        rows = {r["patient"]: r for r in csv.DictReader(fh)}
    # Which demo patients have an RT course that reached the lake (included, not deceased...)?
    stored_rt = set()
    lake = cfg.store.lake.path / cfg.project.name
    for p in fresh_demo.patients:
        if any(s.category == "rt" for s in p.studies) and any((lake / p.subject).glob("*/scans/*/*.dcm")):
            for sess in (lake / p.subject).iterdir():
                manifest = sess / "session.json"
                if manifest.is_file() and "RTSTRUCT" in json.loads(manifest.read_text()).get("modalities", []):
                    stored_rt.add(p.subject)
    assert stored_rt, "the demo cohort should put at least one RT course in the lake"
    assert {p for p, r in rows.items() if r["status"] == "SUCCESS"} == stored_rt
    assert all(r["status"] == "NO_RT" for p, r in rows.items() if p not in stored_rt)
    for subject in stored_rt:
        notes = json.loads((out / subject / "notes.json").read_text())
        assert notes["patientimagingfilesready"] is True
        assert (out / subject / "dose.nii.gz").is_file() and (out / subject / "dvh.csv").is_file()
    # The summary printed names studies by UID, not patients (subjects here are NHS numbers).
    identifiers = {p.nhs_number for p in fresh_demo.patients if p.nhs_number} | {p.hospital_id for p in fresh_demo.patients}
    identifiers |= {p.name.split("^")[0] for p in fresh_demo.patients}
    assert not any(i and i in res.output for i in identifiers)
