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


def product_source(kind: str, srv, state: Path, **section):
    """A source built the way `rtlake update` builds it (open_source on a validated Config), so the
    benchmark times the product's session set-up too, not a hand-made one."""
    import os

    from ingest.config import Config
    from ingest.sources import open_source

    os.environ["RTLAKE_BENCH_USER"] = srv.username
    os.environ["RTLAKE_BENCH_PASSWORD"] = srv.password
    auth = {"username_env": "RTLAKE_BENCH_USER", "password_env": "RTLAKE_BENCH_PASSWORD"}
    src: dict = {"kind": kind, "name": "bench"}
    if kind == "orthanc":
        src["orthanc"] = {"url": srv.url, **auth, **section}
    elif kind == "dicomweb":
        src["dicomweb"] = {"url": srv.url + "/dicom-web", "raw_query_values": True, **auth, **section}
    else:
        src["dimse"] = {"host": "127.0.0.1", "port": srv.dicom_port, "called_aet": srv.aet,
                        "calling_aet": srv.scu_aet, "move_port": srv.scu_port, **section}
    cfg = Config.model_validate({"project": {"state_dir": str(state)}, "source": src, "base_dir": state})
    return open_source(cfg)


def count_requests(session) -> list[int]:
    """A one-element counter of HTTP responses seen by a requests session."""
    n = [0]

    def hook(r, *a, **k):
        n[0] += 1
        return r

    session.hooks["response"].append(hook)
    return n


def load_note() -> str:
    """The 1-minute load average and core count, printed with every result (shared machine)."""
    import os

    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


def fresh_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


__all__ = ["best_of", "count_requests", "fresh_dir", "interleaved_best", "load_note", "need_orthanc", "product_source",
           "start_orthanc"]
