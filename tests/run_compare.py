"""Comparing the end state of two update runs: what "same catalog, same lake" means in tests.

Used by the kill-and-resume tests (folder source and Orthanc) so both judge a resumed run by
one definition.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ingest.catalog import Catalog

# Columns that legitimately differ between two runs of the same work (run ids, clocks, absolute paths).
VOLATILE = {
    "patients": ("first_seen_run", "harvested_run", "harvested_until"),
    "studies_seen": ("first_seen_run", "updated_run"),
    "sessions": ("planned_run", "stored_run", "location"),
    "scans": (),
    "files": ("path",),
    "failures": ("failure_id", "run_id", "seen_at", "resolved_run", "target", "last_seen_run"),
}


def snapshot(catalog: Path) -> dict[str, list[tuple]]:
    """Sorted rows of every catalog table a run writes, without the volatile columns."""
    cat = Catalog(catalog, read_only=True)
    try:
        return {t: cat.table_snapshot(t, cols) for t, cols in VOLATILE.items()}
    finally:
        cat.close()


def lake_tree(root: Path) -> dict[str, str]:
    """Relative path → content hash of every file under root (temp leftovers included, on purpose)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}
