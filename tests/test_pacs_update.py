"""`rtlake update` with each PACS source ingests the same studies as the folder source.

The demo cohort's folder PACS is uploaded into a private Orthanc (the two deliberately broken
files are rejected by Orthanc, as a real PACS would never hold them), then the same cohort is
updated from the folder, Orthanc REST, DICOMweb and DIMSE (C-GET and C-MOVE).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ingest.catalog import Catalog
from tests.servers.orthanc import orthanc_available, start_orthanc, stop_and_remove


@pytest.fixture(scope="module")
def demo_pacs(tmp_path_factory):
    missing = orthanc_available()
    if missing:
        pytest.skip(f"!!! PACS TESTS SKIPPED: {missing}")
    from ingest.demo import generate

    root = tmp_path_factory.mktemp("demo-pacs")
    paths = generate(root / "demo", n_patients=4, seed=7)
    srv = start_orthanc(root / "orthanc")
    srv.upload([p for p in sorted(paths.pacs.rglob("*")) if p.is_file()])
    yield paths, srv
    stop_and_remove(srv)


def _overrides(kind: str, srv, state: Path) -> dict:
    o = {"source.kind": kind.split("-")[0], "source.name": kind,
         # the folder source shares one DuckDB connection across threads: keep it to one worker
         **({"source.transfer.concurrency": 1} if kind == "folder" else {}), "project.state_dir": str(state / "state"),
         "store.lake.path": str(state / "lake"), "report.outbox": str(state / "outbox"),
         "source.transfer.retries": 1, "source.transfer.backoff_seconds": 0.01, "source.transfer.read_timeout": 20}
    auth = {"username_env": "RTLAKE_TEST_PACS_USER", "password_env": "RTLAKE_TEST_PACS_PASSWORD"}
    if kind == "orthanc":
        o |= {"source.orthanc.url": srv.url, **{f"source.orthanc.{k}": v for k, v in auth.items()}}
    elif kind == "dicomweb":
        o |= {"source.dicomweb.url": srv.url + "/dicom-web", "source.dicomweb.raw_query_values": True,
              **{f"source.dicomweb.{k}": v for k, v in auth.items()}}
    elif kind.startswith("dimse"):
        o |= {"source.dimse.port": srv.dicom_port, "source.dimse.called_aet": srv.aet,
              "source.dimse.calling_aet": srv.scu_aet, "source.dimse.move_port": srv.scu_port,
              "source.dimse.retrieve": "c-move" if kind.endswith("move") else "c-get"}
    return o


def _outcome(state: Path) -> tuple[set, set, dict]:
    cat = Catalog(state / "state" / "catalog.duckdb", read_only=True)
    try:
        stored = {r[0] for r in cat.execute("SELECT study_uid FROM sessions WHERE state = 'stored'").fetchall()}
        sops = {r[0] for r in cat.execute("SELECT sop_uid FROM files").fetchall()}
        seen = dict(cat.execute("SELECT study_uid, decision FROM studies_seen").fetchall())
    finally:
        cat.close()
    return stored, sops, seen


def _run(kind, demo, srv, tmp_path):
    from ingest.config import load_config
    from ingest.run import run_update

    os.environ["RTLAKE_TEST_PACS_USER"] = srv.username
    os.environ["RTLAKE_TEST_PACS_PASSWORD"] = srv.password
    state = tmp_path / kind
    cfg = load_config(demo.config, _overrides(kind, srv, state))
    summary = run_update(cfg, show_progress=False, build_report=False)
    return state, summary


@pytest.fixture(scope="module")
def folder_outcome(demo_pacs, tmp_path_factory):
    demo, srv = demo_pacs
    state, _ = _run("folder", demo, srv, tmp_path_factory.mktemp("folder-run"))
    return _outcome(state)


@pytest.mark.parametrize("kind", ["orthanc", "dicomweb", "dimse-get", "dimse-move"])
def test_update_matches_folder_source(kind, demo_pacs, folder_outcome, tmp_path):
    demo, srv = demo_pacs
    f_stored, f_sops, f_seen = folder_outcome
    state, summary = _run(kind, demo, srv, tmp_path)
    stored, sops, seen = _outcome(state)
    assert f_stored and stored == f_stored
    assert sops == f_sops
    assert seen == f_seen  # same studies harvested, same decisions
    # a second run is idempotent: nothing new ingested, same files
    state2, summary2 = _run(kind, demo, srv, tmp_path)
    assert summary2.counts["ingested"] == 0 and _outcome(state2)[1] == sops


def test_cli_update_source_orthanc(demo_pacs, tmp_path, monkeypatch):
    """The same through the command line: `rtlake update --source orthanc`."""
    import tomllib

    from ingest.cli import app

    demo, srv = demo_pacs
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
