"""Shared set-up for the PACS benchmarks: a private Orthanc on loopback with a synthetic cohort."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.servers.orthanc import orthanc_available, start_orthanc  # noqa: E402


def need_orthanc() -> None:
    missing = orthanc_available()
    if missing:
        print(f"SKIPPED: {missing}")
        sys.exit(0)


def best_of(fn, rounds: int = 3) -> float:
    """Smallest wall time of `rounds` runs (the machine is shared; the minimum is the least noisy)."""
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def interleaved_best(fns: dict, rounds: int = 3) -> dict[str, float]:
    """Smallest wall time per function, running them in turn each round, so a change in the
    machine's load during the run hits every contender alike."""
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def fresh_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


__all__ = ["best_of", "fresh_dir", "interleaved_best", "need_orthanc", "start_orthanc"]
