"""Failure rate per modality per run, against the historic baseline.

The SOP checks that "current failure rates are in line with historic failure rates" (about 7 %
for CT and MR) to catch a pipeline fault early. Denominator: studies of that modality the run
tried to ingest (included, state ingested or failed); numerator: those that failed, either in
the run itself or in a failure list imported later (XNAT DQR, CSC). A run is out of line when
its rate is more than three standard errors above the baseline (binomial, so a handful of
studies does not raise alarms) and at least three studies failed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from ingest.catalog import Catalog
from ingest.records import primary_modality

from .master import sheet_modality

MIN_FAILED = 3
SIGMAS = 3.0


@dataclass(frozen=True)
class RunRate:
    run_id: str
    modality: str
    attempted: int
    failed: int
    baseline: float | None
    started_at: object = None

    @property
    def rate(self) -> float:
        return self.failed / self.attempted if self.attempted else 0.0

    @property
    def threshold(self) -> float | None:
        if self.baseline is None or not self.attempted:
            return None
        b = self.baseline
        return b + SIGMAS * math.sqrt(max(b * (1 - b), 1e-9) / self.attempted)

    @property
    def out_of_line(self) -> bool:
        t = self.threshold
        return t is not None and self.failed >= MIN_FAILED and self.rate > t

    def warning(self) -> str:
        return (f"{self.modality} failure rate {self.rate:.1%} ({self.failed}/{self.attempted}) in run {self.run_id} "
                f"is above the historic {self.baseline:.1%} baseline (alarm above {self.threshold:.1%}): "
                f"check the pipeline before trusting this run")


def baseline_for(baseline: dict[str, float], modality: str) -> float | None:
    for key in (modality, {"PET": "PT", "PT": "PET"}.get(modality, modality)):
        for k, v in baseline.items():
            if k.upper() == key:
                return v
    return None


def failure_rates(catalog: Catalog, baseline: dict[str, float]) -> list[RunRate]:
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
        mod = sheet_modality(primary_modality([m for m in (mods or "").split("\\") if m]))
        a = agg[(run or "(unknown run)", mod)]
        a[0] += 1
        a[1] += int(bool(failed))
        a[2] = started
    out = [RunRate(run, mod, n, k, baseline_for(baseline, mod), started) for (run, mod), (n, k, started) in agg.items()]
    out.sort(key=lambda r: (str(r.started_at or ""), r.run_id, r.modality))
    return out


def rate_warnings(rates: list[RunRate], run_id: str | None = None) -> list[str]:
    return [r.warning() for r in rates if r.out_of_line and (run_id is None or r.run_id == run_id)]
