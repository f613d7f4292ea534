"""Named crash points for kill-and-resume testing.

Set `RTLAKE_FAILPOINTS="ingest.file=7,harvest.patient=3"` and the process SIGKILLs itself on
the 7th file copied (or the 3rd patient harvested): a real, uncatchable kill at an exact step,
so the resume tests are deterministic. `report.write=1+0.05` kills 0.05 s *after* the step is
reached (from a timer thread), to land inside the work that follows it (e.g. writing the
outbox). With the variable unset this is a dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading

_counts: dict[str, int] = {}
_lock = threading.Lock()
_spec: dict[str, tuple[int, float]] | None = None

POINTS = (
    "harvest.patient",   # after a patient's studies are committed
    "ingest.file",       # after one file is written into the store
    "ingest.stored",     # after a study is stored, before the catalog records it
    "ingest.recorded",   # after the catalog records a stored study
    "report.write",      # before the outbox files are written
    "catalog.commit",    # before a catalog transaction commits
)


def _parse() -> dict[str, tuple[int, float]]:
    spec: dict[str, tuple[int, float]] = {}
    for part in os.environ.get("RTLAKE_FAILPOINTS", "").split(","):
        if "=" in part:
            name, value = part.split("=", 1)
            n, _, delay = value.partition("+")
            spec[name.strip()] = (int(n), float(delay or 0))
    return spec


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def hit(name: str) -> None:
    global _spec
    if _spec is None:
        _spec = _parse()
    if not _spec or name not in _spec:
        return
    n, delay = _spec[name]
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        if _counts[name] < n:
            return
        if not delay:
            _kill()
        elif _counts[name] == n:
            t = threading.Timer(delay, _kill)
            t.daemon = True
            t.start()
