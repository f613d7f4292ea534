"""Named crash points for kill-and-resume testing.

Set `RTLAKE_FAILPOINTS="ingest.file=7,harvest.patient=3"` and the process SIGKILLs itself on
the 7th file copied (or the 3rd patient harvested): a real, uncatchable kill at an exact step,
so the resume tests are deterministic. With the variable unset this is a dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading

_counts: dict[str, int] = {}
_lock = threading.Lock()
_spec: dict[str, int] | None = None

POINTS = (
    "harvest.patient",   # after a patient's studies are committed
    "ingest.file",       # after one file is written into the store
    "ingest.stored",     # after a study is stored, before the catalog records it
    "ingest.recorded",   # after the catalog records a stored study
    "report.write",      # before the outbox files are written
)


def _parse() -> dict[str, int]:
    spec: dict[str, int] = {}
    for part in os.environ.get("RTLAKE_FAILPOINTS", "").split(","):
        if "=" in part:
            name, n = part.split("=", 1)
            spec[name.strip()] = int(n)
    return spec


def hit(name: str) -> None:
    global _spec
    if _spec is None:
        _spec = _parse()
    if not _spec or name not in _spec:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        if _counts[name] >= _spec[name]:
            os.kill(os.getpid(), signal.SIGKILL)
