"""Kill-and-resume against a real Orthanc: `rtlake update` on the demo cohort (uploaded to Orthanc,
`[source] kind = "orthanc"`) is SIGKILLed at seeded random points, re-run to completion, and the
catalog, the lake and the outbox are compared with an uninterrupted run: 0 lost, 0 duplicated,
0 half-written files.

Kill points (a seeded plan, round-robin over the phases so each is covered):
  harvest   `harvest.patient=k`          after the k-th patient's studies are committed (+ a delay)
  retrieve  `ingest.file=k`              k-th file written, fetch-ahead threads still pulling from Orthanc
  catalog   `catalog.commit=k` / `ingest.stored=k`  before a transaction commits / stored, not recorded
  report    `report.write=1+d`           d seconds into building the outbox files
  clock     SIGKILL from outside after a random wall-clock delay

The default suite runs a reduced plan (3 kills); `make reliability` runs 20 (`-m reliability`).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ingest.catalog import Catalog
from tests.fixtures.reliability import record_output, record_result
from tests.run_compare import VOLATILE, snapshot
from tests.run_compare import lake_tree as tree

RTLAKE = [sys.executable, "-m", "ingest.cli"]
# Every `rtlake update` here runs on one fixed (advancing) clock: the outbox files are named by the
# run's date, so a kill plan that crosses midnight would otherwise compare differently named files
# with the reference run. libfaketime is preloaded into the rtlake process itself (not the
# `faketime` wrapper, which forks: a SIGKILL must reach the run, not a parent left waiting).
CLOCK = "@2026-06-01 10:00:00"
FAKETIME_LIBS = [Path("/usr/lib") / arch / "faketime" / "libfaketimeMT.so.1"
                 for arch in ("x86_64-linux-gnu", "aarch64-linux-gnu")]


def _fixed_clock_env() -> dict[str, str]:
    lib = next((p for p in FAKETIME_LIBS if p.exists()), None)
    if lib is None:
        pytest.skip("!!! libfaketime not installed (apt-get install faketime): the runs need a fixed clock")
    return {"LD_PRELOAD": str(lib), "FAKETIME": CLOCK, "FAKETIME_DONT_RESET": "1"}
PHASES = ("retrieve", "catalog", "report", "harvest", "clock")

# Columns that legitimately differ between two runs of the same work (run ids, clocks).
# -- config -------------------------------------------------------------------------------------------
def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def dump_toml(data: dict, prefix: str = "") -> str:
    """A small TOML writer for config dicts (tables of scalars and lists)."""
    scalars = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    out = []
    if scalars:
        out += ([f"[{prefix}]"] if prefix else []) + scalars + [""]
    for k, v in data.items():
        if isinstance(v, dict):
            out.append(dump_toml(v, f"{prefix}.{k}" if prefix else k))
    return "\n".join(out)


def orthanc_config(demo, srv, run_dir: Path, extra: dict | None = None) -> Path:
    """The demo config with the Orthanc source and every path absolute under `run_dir`."""
    data = tomllib.loads(demo.config.read_text())
    base = demo.config.parent
    inputs = data.setdefault("inputs", {})
    for key, value in list(inputs.items()):
        inputs[key] = str((base / value).resolve())
    data.setdefault("project", {})["state_dir"] = str(run_dir / "state")
    data["source"] = {
        "kind": "orthanc", "name": "orthanc",
        "orthanc": {"url": srv.url, "username_env": "RTLAKE_TEST_PACS_USER", "password_env": "RTLAKE_TEST_PACS_PASSWORD"},
        "transfer": {"retries": 2, "backoff_seconds": 0.05, "read_timeout": 20.0, "concurrency": 2},
    }
    data["store"] = {"kind": "lake", "lake": {"path": str(run_dir / "lake")}}
    data.setdefault("report", {})["outbox"] = str(run_dir / "outbox")
    data.setdefault("criteria", {})["history_dir"] = str(run_dir / "criteria-history")
    for section, values in (extra or {}).items():
        data.setdefault(section, {}).update(values)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = run_dir / "rtlake.toml"
    cfg.write_text(dump_toml(data))
    return cfg


def update(cfg: Path, srv, failpoints: str | None = None, kill_after: float | None = None
           ) -> tuple[int, str, float]:
    """One `rtlake update` subprocess; returns (exit code, stderr, seconds)."""
    env = {**os.environ, "RTLAKE_TEST_PACS_USER": srv.username, "RTLAKE_TEST_PACS_PASSWORD": srv.password,
           "COLUMNS": "200", **_fixed_clock_env()}
    env.pop("RTLAKE_FAILPOINTS", None)
    if failpoints:
        env["RTLAKE_FAILPOINTS"] = failpoints
    t0 = time.monotonic()
    p = subprocess.Popen([*RTLAKE, "update", "-c", str(cfg), "--no-progress"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    if kill_after is not None:
        try:
            p.wait(kill_after)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
    out, err = p.communicate(timeout=600)
    record_output("cli:update (kill-and-resume)", err)
    record_output("cli:update (kill-and-resume)", out)
    return p.returncode, err, time.monotonic() - t0


# -- comparing two runs ---------------------------------------------------------------------------------
def outbox_state(outbox: Path) -> tuple[list[str], list[str]]:
    """(file names, names that cannot be read back whole)."""
    import openpyxl
    import pandas as pd

    names, broken = [], []
    for p in sorted(outbox.iterdir()) if outbox.exists() else []:
        names.append(p.name)
        try:
            if p.suffix == ".xlsx":
                openpyxl.load_workbook(p, read_only=True).close()
            elif p.suffix == ".csv":
                pd.read_csv(p)
        except Exception:  # noqa: BLE001 - any unreadable output counts as half-written
            broken.append(p.name)
    return names, broken


@dataclass
class Outcome:
    """One run folder compared with the reference."""

    lost: int = 0
    duplicated: int = 0
    half_written: int = 0
    catalog_equal: bool = True
    problems: list[str] = field(default_factory=list)


def compare(run_dir: Path, ref_dir: Path) -> Outcome:
    o = Outcome()
    ref_snap, snap = snapshot(ref_dir / "state" / "catalog.duckdb"), snapshot(run_dir / "state" / "catalog.duckdb")
    for table in VOLATILE:
        if snap[table] != ref_snap[table]:
            o.catalog_equal = False
            o.problems.append(f"catalog table {table} differs ({len(snap[table])} rows vs {len(ref_snap[table])})")
    ref_files = {r[0] for r in ref_snap["files"]}
    files = [r[0] for r in snap["files"]]
    o.lost += len(ref_files - set(files))
    o.duplicated += len(files) - len(set(files))
    ref_tree, run_tree = tree(ref_dir / "lake"), tree(run_dir / "lake")
    missing = set(ref_tree) - set(run_tree)
    extra = set(run_tree) - set(ref_tree)
    o.lost += len(missing)
    o.duplicated += len([p for p in extra if not Path(p).name.startswith(".tmp-")])
    o.half_written += len([p for p in extra if Path(p).name.startswith(".tmp-")])
    o.half_written += len([p for p in set(ref_tree) & set(run_tree) if ref_tree[p] != run_tree[p]])
    if missing or extra:
        o.problems.append(f"lake: missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]}")
    names, broken = outbox_state(run_dir / "outbox")
    ref_names, _ = outbox_state(ref_dir / "outbox")
    o.half_written += len(broken) + len([n for n in names if n.startswith(".tmp-")])
    o.lost += len(set(ref_names) - set(names))
    if sorted(names) != sorted(ref_names):
        o.problems.append(f"outbox: {sorted(names)} vs {sorted(ref_names)}")
    return o


# -- the plan ---------------------------------------------------------------------------------------------
@dataclass
class Kill:
    phase: str
    failpoints: str | None = None
    kill_after: float | None = None

    def describe(self) -> str:
        return self.failpoints or f"SIGKILL after {self.kill_after:.2f} s"


def kill_plan(seed: int, ref: dict):
    """Endless kills, round-robin over the phases, parameters drawn from a seeded RNG within the
    reference run's own counts (patients harvested, files written, studies stored, seconds)."""
    rng = random.Random(seed)
    i = 0
    while True:
        phase = PHASES[i % len(PHASES)]
        i += 1
        if phase == "harvest":
            k = Kill(phase, f"harvest.patient={rng.randint(1, ref['patients'])}+{rng.choice([0, 0, 0.02])}")
        elif phase == "retrieve":
            k = Kill(phase, f"ingest.file={rng.randint(1, ref['files'])}")
        elif phase == "catalog":
            k = Kill(phase, rng.choice([f"catalog.commit={rng.randint(1, ref['commits'])}",
                                        f"ingest.stored={rng.randint(1, ref['sessions'])}"]))
        elif phase == "report":
            k = Kill(phase, f"report.write=1+{rng.uniform(0.0, ref['report_seconds']):.3f}")
        else:
            k = Kill(phase, kill_after=rng.uniform(0.15, 0.8) * ref["seconds"])
        yield k


@pytest.fixture(scope="module")
def reference(demo_orthanc, tmp_path_factory):
    """The uninterrupted run, and the counts the kill plan draws from."""
    demo, srv = demo_orthanc
    ref_dir = tmp_path_factory.mktemp("killresume") / "reference"
    cfg = orthanc_config(demo, srv, ref_dir)
    rc, err, seconds = update(cfg, srv)
    assert rc == 0, err[-3000:]
    # how long the report takes: a second, idempotent run killed nowhere, timed around report.write
    cat = Catalog(ref_dir / "state" / "catalog.duckdb", read_only=True)
    try:
        patients = cat.execute("SELECT count(*) FROM patients WHERE NOT deceased").fetchone()[0]
        files = cat.execute("SELECT count(*) FROM files").fetchone()[0]
        sessions = cat.execute("SELECT count(*) FROM sessions WHERE state = 'stored'").fetchone()[0]
    finally:
        cat.close()
    assert files > 0 and sessions > 0
    counts = {"patients": patients, "files": files, "sessions": sessions, "seconds": seconds,
              # migrations + cohort + one per patient + select + plan + one per stored study
              "commits": 4 + patients + 2 + sessions, "report_seconds": 0.6}
    return demo, srv, ref_dir, counts


def run_plan(reference, tmp_path: Path, n: int, seed: int, section: str) -> dict:
    demo, srv, ref_dir, counts = reference
    plan = kill_plan(seed, counts)
    rows: list[dict] = []
    # a delayed or wall-clock kill can miss (the step finished first): draw again until n landed
    while sum(r["killed"] for r in rows) < n and len(rows) < 2 * n:
        k = next(plan)
        run_dir = tmp_path / f"kill{len(rows):02d}"
        cfg = orthanc_config(demo, srv, run_dir)
        rc, err, _ = update(cfg, srv, k.failpoints, k.kill_after)
        killed = rc == -signal.SIGKILL
        assert killed or rc == 0, f"{k.describe()}: exit {rc}\n{err[-3000:]}"
        assert "Traceback" not in err, err[-3000:]
        rc2, err2, _ = update(cfg, srv)
        assert rc2 == 0, f"resume after {k.describe()}: exit {rc2}\n{err2[-3000:]}"
        o = compare(run_dir, ref_dir)
        rows.append({"kill": k.describe(), "phase": k.phase, "killed": killed, "lost": o.lost,
                     "duplicated": o.duplicated, "half_written": o.half_written, "catalog_equal": o.catalog_equal,
                     "problems": o.problems})
    figures = {
        "seed": seed, "planned": n, "attempts": len(rows), "kills": sum(r["killed"] for r in rows),
        "survived": sum(r["killed"] and not (r["lost"] or r["duplicated"] or r["half_written"])
                        and r["catalog_equal"] for r in rows),
        "lost": sum(r["lost"] for r in rows), "duplicated": sum(r["duplicated"] for r in rows),
        "half_written": sum(r["half_written"] for r in rows),
        "by_phase": {p: sum(r["killed"] for r in rows if r["phase"] == p) for p in PHASES},
        "runs": rows,
    }
    record_result(section, figures)
    return figures


def _assert_clean(fig: dict) -> None:
    bad = [r for r in fig["runs"] if r["lost"] or r["duplicated"] or r["half_written"] or not r["catalog_equal"]]
    assert not bad, "\n".join(f"{r['kill']}: lost {r['lost']}, duplicated {r['duplicated']}, half-written "
                              f"{r['half_written']}; {r['problems']}" for r in bad)
    assert fig["lost"] == fig["duplicated"] == fig["half_written"] == 0


@pytest.mark.timeout(600)
def test_kill_and_resume_orthanc_reduced(reference, tmp_path):
    """Three seeded kills (retrieval, catalog write, report writing) in the default suite."""
    fig = run_plan(reference, tmp_path, n=3, seed=20261123, section="kill_resume_reduced")
    _assert_clean(fig)
    assert fig["kills"] == 3, fig["runs"]


@pytest.mark.reliability
@pytest.mark.timeout(3600)
def test_kill_and_resume_orthanc_20_points(reference, tmp_path):
    fig = run_plan(reference, tmp_path, n=20, seed=9, section="kill_resume")
    _assert_clean(fig)
    assert fig["kills"] == 20, fig["runs"]
    assert all(fig["by_phase"][p] for p in PHASES), fig["by_phase"]
