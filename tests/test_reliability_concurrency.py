"""Two `rtlake update` at once: on the same state folder the second refuses (exit 3, a clear
message) or, if the first has already finished, re-runs idempotently; two state folders sharing
one lake both finish and the lake holds every instance exactly once.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ingest.catalog import Catalog
from ingest.config import load_config
from tests.fixtures.reliability import record_output, record_result

RTLAKE = [sys.executable, "-m", "ingest.cli"]


def start(cfg: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([*RTLAKE, "update", "-c", str(cfg), "--no-progress", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})


def finish(p: subprocess.Popen) -> tuple[int, str]:
    out, err = p.communicate(timeout=300)
    record_output("cli:update (concurrent)", err)
    record_output("cli:update (concurrent)", out)
    return p.returncode, err


def lake_sops(lake: Path) -> list[str]:
    """SOPInstanceUID of every DICOM file in the lake (a duplicate shows up twice)."""
    import pydicom

    return sorted(str(pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
                  for f in lake.rglob("*.dcm"))


def catalog_counts(catalog: Path) -> tuple[int, int, int]:
    cat = Catalog(catalog, read_only=True)
    try:
        n, distinct = cat.execute("SELECT count(*), count(DISTINCT sop_uid) FROM files").fetchone()
        sessions = cat.execute("SELECT count(*) FROM sessions WHERE state = 'stored'").fetchone()[0]
        return n, distinct, sessions
    finally:
        cat.close()


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    from ingest.demo import generate

    return generate(tmp_path_factory.mktemp("concurrency") / "demo", n_patients=3, seed=7)


def test_two_updates_on_one_state_folder(small_demo, tmp_path):
    import shutil

    rng = random.Random(9)
    outcomes = []
    root = tmp_path / "demo"
    shutil.copytree(small_demo.root, root)
    cfg = root / "rtlake.toml"
    for attempt in range(1):
        a = start(cfg)
        time.sleep(rng.uniform(0.0, 0.3))
        b = start(cfg)
        (ra, ea), (rb, eb) = finish(a), finish(b)
        outcomes.append((ra, rb))
        for rc, err in ((ra, ea), (rb, eb)):
            assert "Traceback" not in err, err[-3000:]
            # 3 = partial (the demo PACS holds two broken files), 5 = refused by the lock
            assert rc in (3, 5), (rc, err[-2000:])
            if rc == 5:
                assert "another rtlake run" in err and "state" in err
        assert 3 in (ra, rb), (ra, rb, ea[-1500:], eb[-1500:])
    assert any(5 in o for o in outcomes), f"the lock never refused a concurrent run: {outcomes}"
    c = load_config(cfg)
    n, distinct, sessions = catalog_counts(c.catalog_path)
    sops = lake_sops(Path(c.store.lake.path))
    assert n == distinct == len(sops) == len(set(sops)) and sessions > 0
    assert not list(Path(c.store.lake.path).rglob(".tmp-*"))
    record_result("concurrency_same_state", {"rounds": len(outcomes), "outcomes": outcomes,
                                              "refused": sum(o.count(5) for o in outcomes)})


@pytest.mark.reliability
def test_two_state_folders_sharing_one_lake(small_demo, tmp_path):
    """Not what the lock protects (it is per state folder); both must still leave one copy of each file."""
    import shutil

    root = tmp_path / "demo"
    shutil.copytree(small_demo.root, root)
    base = (root / "rtlake.toml").read_text()
    cfgs = []
    for name in ("a", "b"):
        cfg = root / f"rtlake-{name}.toml"
        text = base.replace('state_dir = "state"', f'state_dir = "state-{name}"')
        assert text != base, "demo config layout changed: state_dir line not found"
        text = text.replace('outbox = "outbox"', f'outbox = "outbox-{name}"')
        cfg.write_text(text)
        cfgs.append(cfg)
    procs = [start(c) for c in cfgs]
    results = [finish(p) for p in procs]
    for rc, err in results:
        assert rc == 3 and "Traceback" not in err, err[-3000:]  # partial: the demo's two broken files
    lake = Path(load_config(cfgs[0]).store.lake.path)
    sops = lake_sops(lake)
    assert sops and len(sops) == len(set(sops))
    assert not list(lake.rglob(".tmp-*"))
    for c in cfgs:
        n, distinct, _ = catalog_counts(load_config(c).catalog_path)
        assert n == distinct == len(sops)
    record_result("concurrency_shared_lake", {"runs": 2, "lake_files": len(sops), "duplicates": 0})
