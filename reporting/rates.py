"""Failure rate per modality, per run and per imported failure list, against the historic baseline.

The SOP checks that "current failure rates are in line with historic failure rates" (about 7 %
for CT and MR) to catch a pipeline fault early. Two kinds of row:

* **run** — rtlake's own update runs. Denominator: studies of that modality the run tried to
  ingest (included, state ingested or failed); numerator: those that failed, in the run itself
  or in a failure list imported later that names them (XNAT DQR, CSC).
* **list** — each imported failure list (except the DQR store's own files, which are runs'
  failures already) is a batch someone sent. Numerator: the studies the list names, by modality
  (a study the list gives no modality for takes the one rtlake selected it with). Denominator:
  what `--attempted` said at import (per modality, or `*` for all together), else the studies the
  batch's run selected (`batch_run`, given or inferred at import). With neither, the rate is
  unknown and shown as such, never as 0 %.

A row is out of line when its rate is more than three standard errors above the baseline
(binomial, so a handful of studies does not raise alarms) and at least three studies failed.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from ingest.catalog import Catalog
from ingest.records import primary_modality

from .master import failure_modality, sheet_modality

MIN_FAILED = 3
SIGMAS = 3.0
ALL = "all"  # the modality of a list's row when only its total size is known


@dataclass(frozen=True)
class RunRate:
    run_id: str  # run id, or the imported list's file name
    modality: str
    attempted: int | None
    failed: int
    baseline: float | None
    started_at: object = None
    kind: str = "run"  # run | list
    batch_of: str = ""  # for a list: the run whose selection it answers

    @property
    def rate(self) -> float | None:
        return self.failed / self.attempted if self.attempted else None

    @property
    def threshold(self) -> float | None:
        if self.baseline is None or not self.attempted:
            return None
        b = self.baseline
        return b + SIGMAS * math.sqrt(max(b * (1 - b), 1e-9) / self.attempted)

    @property
    def out_of_line(self) -> bool:
        t, r = self.threshold, self.rate
        return t is not None and r is not None and self.failed >= MIN_FAILED and r > t

    @property
    def label(self) -> str:
        return f"list {self.run_id}" if self.kind == "list" else self.run_id

    def rate_text(self) -> str:
        return "unknown" if self.rate is None else f"{self.rate:.1%}"

    def warning(self) -> str:
        what = f"failure list {self.run_id}" if self.kind == "list" else f"run {self.run_id}"
        return (f"{self.modality} failure rate {self.rate_text()} ({self.failed}/{self.attempted}) in {what} "
                f"is above the historic {self.baseline:.1%} baseline (alarm above {self.threshold:.1%}): "
                f"check the pipeline before trusting this run")


def baseline_for(baseline: dict[str, float], modality: str) -> float | None:
    for key in (modality, {"PET": "PT", "PT": "PET"}.get(modality, modality)):
        for k, v in baseline.items():
            if k.upper() == key:
                return v
    return None


def _mod(mods: str | None) -> str:
    return sheet_modality(primary_modality([m for m in (mods or "").split("\\") if m]))


def run_rates(catalog: Catalog, baseline: dict[str, float]) -> list[RunRate]:
    """One row per (run, modality) with at least one attempted study, oldest run first."""
    rows = catalog.execute("""
        SELECT s.updated_run, s.modalities,
               s.state = 'failed'
               OR EXISTS (SELECT 1 FROM failure_history f WHERE NOT f.placeholder AND (f.study_uid = s.study_uid
                          OR (coalesce(s.accession, '') <> '' AND f.accession = s.accession))) AS failed,
               r.started_at
        FROM studies_seen s LEFT JOIN runs r ON r.run_id = s.updated_run
        WHERE s.decision = 'include' AND s.state IN ('ingested', 'failed')
    """).fetchall()
    agg: dict[tuple[str, str], list] = defaultdict(lambda: [0, 0, None])
    for run, mods, failed, started in rows:
        a = agg[(run or "(unknown run)", _mod(mods))]
        a[0] += 1
        a[1] += int(bool(failed))
        a[2] = started
    out = [RunRate(run, mod, n, k, baseline_for(baseline, mod), started) for (run, mod), (n, k, started) in agg.items()]
    out.sort(key=lambda r: (str(r.started_at or ""), r.run_id, r.modality))
    return out


def list_rates(catalog: Catalog, baseline: dict[str, float]) -> list[RunRate]:
    """One row per (imported list, modality), oldest import first (see the module doc)."""
    imports = catalog.query_dicts("""
        SELECT import_id, path, imported_at, batch_run, attempted FROM failure_imports
        WHERE coalesce(origin, '') <> 'dqr' ORDER BY imported_at, import_id""")
    out: list[RunRate] = []
    for imp in imports:
        rows = catalog.query_dicts("""
            SELECT DISTINCT h.record_key, h.modalities, h.study_uid, h.accession
            FROM failure_sightings s JOIN failure_history h USING (record_key)
            WHERE s.import_id = ? AND NOT h.placeholder""", [imp["import_id"]])
        run = imp["batch_run"]
        failed: Counter[str] = Counter()
        for r in rows:
            mod = failure_modality(r)
            if mod == "unknown" and run:
                mod = _selected_modality(catalog, r) or mod
            failed[mod] += 1
        given = {k: int(v) for k, v in json.loads(imp["attempted"]).items()} if imp["attempted"] else {}
        if given:
            attempted = {k: v for k, v in given.items() if k != "*"}
            total = given.get("*")
        else:
            attempted = dict(Counter(_mod(m) for (m,) in catalog.execute(
                "SELECT modalities FROM studies_seen WHERE decision = 'include' AND updated_run = ?",
                [run]).fetchall())) if run else {}
            total = None
        name = Path(imp["path"]).name
        for mod in sorted(set(failed) | set(attempted)):
            out.append(RunRate(name, mod, attempted.get(mod), failed.get(mod, 0), baseline_for(baseline, mod),
                               imp["imported_at"], kind="list", batch_of=run or ""))
        if total is not None:
            out.append(RunRate(name, ALL, total, sum(failed.values()), None, imp["imported_at"], kind="list",
                               batch_of=run or ""))
    return out


def _selected_modality(catalog: Catalog, r: dict) -> str | None:
    row = None
    if r.get("study_uid"):
        row = catalog.execute("SELECT modalities FROM studies_seen WHERE study_uid = ?", [r["study_uid"]]).fetchone()
    if row is None and r.get("accession"):
        row = catalog.execute("SELECT modalities FROM studies_seen WHERE accession = ? LIMIT 1",
                              [r["accession"]]).fetchone()
    return _mod(row[0]) if row and row[0] else None


def failure_rates(catalog: Catalog, baseline: dict[str, float]) -> list[RunRate]:
    """Run rows, then list rows."""
    return run_rates(catalog, baseline) + list_rates(catalog, baseline)


def rate_warnings(rates: list[RunRate], run_id: str | None = None) -> list[str]:
    return [r.warning() for r in rates if r.out_of_line and (run_id is None or r.run_id == run_id)]
