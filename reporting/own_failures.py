"""rtlake's own failures (the catalog `failures` table) for `failures list` and the HTML report.

Imported failure lists say what XNAT/CSC could not ingest; this is what rtlake itself could not
do: a patient query that failed (harvest), a study it could not retrieve or store, an input file
it could not read (report). Each row has its stage, target, reason and the run that met it, and
is open until a later run succeeds where it failed (`resolved_run`). Showing only the imported
lists made a run with open harvest failures look like "0 failed studies on record".

Columns added by later schema versions (`hospital_id`, `subject`, `last_seen_run`) are read when
the catalog has them, and not required.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass

from ingest.catalog import Catalog

#: How each stage reads in a report.
STAGE_LABELS = {
    "index": "index (source listing)",
    "harvest": "harvest (PACS query)",
    "select": "select",
    "retrieve": "retrieve (PACS transfer)",
    "store": "store",
    "inputs": "inputs (cohort / side files)",
    "relabel": "relabel (subject moves)",
    "report": "report (input files)",
    "rt": "RT conversion",
    "pseudo": "pseudonymisation",
}


@dataclass(frozen=True)
class OwnFailure:
    stage: str
    target: str
    reason: str
    run_id: str
    seen_at: dt.datetime | None = None
    resolved_run: str | None = None
    last_seen_run: str | None = None
    study_uid: str | None = None
    error_type: str | None = None
    hospital_id: str | None = None
    subject: str | None = None

    @property
    def open(self) -> bool:
        return self.resolved_run is None

    @property
    def stage_label(self) -> str:
        return STAGE_LABELS.get(self.stage, self.stage)

    def anonymous_target(self) -> str:
        """The target without the hospital ID in it (`patient:H001` → `patient:<hospital id>`), for the console."""
        if self.hospital_id and self.hospital_id in self.target:
            return self.target.replace(self.hospital_id, "<hospital id>")
        return self.target


def own_failures(catalog: Catalog, include_resolved: bool = True) -> list[OwnFailure]:
    """Open failures first (newest first), then resolved ones."""
    with catalog._lock:
        cols = {r[0] for r in catalog.con.execute("DESCRIBE failures").fetchall()}
    has_hid = "hospital_id" in cols
    subject = ("f.subject" if "subject" in cols else
               "coalesce(p.subject, CASE WHEN f.hospital_id IS NOT NULL THEN 'NN_' || f.hospital_id END)"
               if has_hid else "NULL")
    join = "LEFT JOIN patients p ON p.hospital_id = f.hospital_id" if has_hid and "subject" not in cols else ""
    where = "" if include_resolved else "WHERE f.resolved_run IS NULL"
    rows = catalog.query_dicts(f"""
        SELECT f.stage, f.target, f.reason, f.run_id, f.seen_at, f.resolved_run,
               {'f.last_seen_run' if 'last_seen_run' in cols else 'NULL'} AS last_seen_run,
               f.study_uid, f.error_type, {'f.hospital_id' if has_hid else 'NULL'} AS hospital_id,
               {subject} AS subject
        FROM failures f {join} {where}
        ORDER BY f.resolved_run IS NOT NULL, f.seen_at DESC, f.stage, f.target""")
    return [OwnFailure(**r) for r in rows]


def by_stage(failures: list[OwnFailure]) -> Counter[str]:
    return Counter(f.stage for f in failures)


def summary(failures: list[OwnFailure]) -> str:
    """`5 open (harvest 2, retrieve 2, store 1), 4 resolved` — for headers and the console."""
    open_ = [f for f in failures if f.open]
    parts = ", ".join(f"{stage} {n}" for stage, n in sorted(by_stage(open_).items()))
    n_res = len(failures) - len(open_)
    return f"{len(open_)} open" + (f" ({parts})" if parts else "") + f", {n_res} resolved"
