"""`rtlake update` with each PACS source ingests the same studies as the folder source.

The demo cohort's folder PACS is uploaded into a private Orthanc (the two deliberately broken
files are rejected by Orthanc, as a real PACS would never hold them), then the same cohort is
updated from the folder, Orthanc REST, DICOMweb and DIMSE (C-GET and C-MOVE).
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tests.fixtures.pacs import run_outcome as _outcome
from tests.fixtures.pacs import run_with_source as _run


@pytest.fixture(scope="module")
def folder_outcome(demo_orthanc, tmp_path_factory):
    demo, srv = demo_orthanc
    state, _ = _run("folder", demo, srv, tmp_path_factory.mktemp("folder-run"))
    return _outcome(state)


@pytest.mark.parametrize("kind", ["orthanc", "dicomweb", "dimse-get", "dimse-move"])
def test_update_matches_folder_source(kind, demo_orthanc, folder_outcome, tmp_path):
    demo, srv = demo_orthanc
    f_stored, f_sops, f_seen = folder_outcome
    state, summary = _run(kind, demo, srv, tmp_path)
    stored, sops, seen = _outcome(state)
    assert f_stored and stored == f_stored
    assert sops == f_sops
    assert seen == f_seen  # same studies harvested, same decisions
    # a second run is idempotent: nothing new ingested, same files
    state2, summary2 = _run(kind, demo, srv, tmp_path)
    assert summary2.counts["ingested"] == 0 and _outcome(state2)[1] == sops


def test_cli_update_source_orthanc(demo_orthanc, tmp_path, monkeypatch):
    """The same through the command line: `rtlake update --source orthanc`."""
    import tomllib

    from ingest.cli import app

    demo, srv = demo_orthanc
    monkeypatch.setenv("RTLAKE_TEST_PACS_USER", srv.username)
    monkeypatch.setenv("RTLAKE_TEST_PACS_PASSWORD", srv.password)
    data = tomllib.loads(demo.config.read_text())
    cfg = tmp_path / "rtlake.toml"
    lines = [demo.config.read_text().replace('kind = "folder"', 'kind = "folder"\nname = "hospital-orthanc"')]
    lines.append(f'\n[source.orthanc]\nurl = "{srv.url}"\nusername_env = "RTLAKE_TEST_PACS_USER"\n'
                 f'password_env = "RTLAKE_TEST_PACS_PASSWORD"\n')
    text = "".join(lines)
    for key in ("HospitalID-NHSNumber.csv", "deceased.csv", "reference_dates.csv"):
        text = text.replace(f'"{key}"', f'"{demo.root / key}"')
    text = text.replace('path = "pacs"', f'path = "{demo.pacs}"')
    cfg.write_text(text)
    assert data["source"]["kind"] == "folder"
    result = CliRunner().invoke(app, ["update", "--config", str(cfg), "--source", "orthanc", "--no-progress",
                                      "--no-report"])
    assert result.exit_code == 0, result.output
    stored, sops, _ = _outcome(tmp_path)
    assert stored and sops
