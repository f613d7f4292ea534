"""Our DVHs against the ones the planning system stored: per structure, with pass/fail.

A physicist trusts a converted DVH when it agrees with the TPS the plan was signed in.
Most RTDOSE files carry the TPS's own DVHs, so every conversion checks itself: volume,
mean, D95, D2 and maximum of each structure against the stored curve, with tolerances
that separate real disagreement (an edited structure set, a wrong dose, a wrong structure
mapping) from the differences that remain between two correct calculations.

Like is compared with like: the TPS curve starts at half a bin, so our volume is the
volume receiving at least that dose, and the D-values are taken relative to that same
volume on both sides. The mean and maximum are the TPS's stated values when the file's
header scale could be decided (tps_reference), else read off the curve.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .dvh import DoseSamples
from .tps_reference import StoredDvh, StoredDvhSet

METRICS = ("volume_cc", "mean_gy", "d95_gy", "d2_gy", "max_gy")


@dataclass(frozen=True)
class QaTolerances:
    """Pass when |ours − TPS| ≤ max(relative × |TPS|, absolute) for every metric."""

    small_cc: float = 1.0  # structures below this use `small_pct` for every relative check
    volume_pct: float = 1.0
    mean_pct: float = 0.5
    dose_pct: float = 1.0  # D95, D2
    max_pct: float = 2.0  # the maximum hangs on one voxel: one gradient step on a 2.5 mm grid
    small_pct: float = 10.0
    #: absolute floor (Gy) for mean and D-values: low doses are compared in Gy, where half a
    #: TPS bin can be 10 %+. One TPS bin width is always added for D-values and the maximum.
    dose_abs_gy: float = 0.05


@dataclass
class QaRow:
    roi: str
    roi_number: int
    ours: dict[str, float]
    tps: dict[str, float]
    diff_pct: dict[str, float]
    tolerance: dict[str, str]
    passed: dict[str, bool | None]  # None: not comparable
    status: str = "pass"  # pass | fail
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [m for m, ok in self.passed.items() if ok is False]

    def summary(self) -> str:
        parts = []
        for m in self.failed:
            parts.append(f"{m} ours {self.ours[m]:.4g} vs TPS {self.tps[m]:.4g} ({self.diff_pct[m]:+.2f} %, tolerance {self.tolerance[m]})")
        return "; ".join(parts)


@dataclass
class QaResult:
    source: str  # SOPInstanceUID of the RTDOSE holding the stored DVHs
    stated_scale: str
    method: str  # our DVH method (tps | voxel)
    tolerances: QaTolerances
    rows: list[QaRow] = field(default_factory=list)
    not_compared: list[str] = field(default_factory=list)
    hint: str = ""

    @property
    def n_failed(self) -> int:
        return sum(1 for r in self.rows if r.status == "fail")

    def to_dict(self) -> dict:
        return {
            "source_rtdose": self.source,
            "stated_scale": self.stated_scale,
            "method": self.method,
            "tolerances": asdict(self.tolerances),
            "compared": len(self.rows),
            "failed": self.n_failed,
            "hint": self.hint,
            "not_compared": self.not_compared,
            "structures": [asdict(r) for r in self.rows],
        }


def _mean_at_least(s: DoseSamples, x: float) -> float:
    """Mean dose of the part receiving at least x Gy (what a curve starting at x describes)."""
    num = den = 0.0
    if s.df.size:
        sel = s.df >= np.float32(x)
        num += float(np.add.reduce(s.df[sel], dtype=np.float64)) * s.cell
        den += float(np.count_nonzero(sel)) * s.cell
    if s.dp.size:
        sel = s.dp >= np.float32(x)
        num += float(np.add.reduce(s.dp[sel] * s.wp[sel], dtype=np.float64))
        den += float(np.add.reduce(s.wp[sel], dtype=np.float64))
    return num / den if den > 0 else math.nan


def _check(ours: float, ref: float, rel_pct: float, abs_tol: float) -> tuple[bool | None, float, str]:
    if not (math.isfinite(ours) and math.isfinite(ref)):
        return None, math.nan, ""
    diff = ours - ref
    pct = 100.0 * diff / ref if ref else (0.0 if diff == 0 else math.inf)
    allowed = max(rel_pct / 100.0 * abs(ref), abs_tol)
    tol = f"{rel_pct:g} %" + (f" or {abs_tol:.3g} Gy" if abs_tol > 0 else "")
    return abs(diff) <= allowed + 1e-12, pct, tol


def compare_structure(name: str, number: int, ours: DoseSamples, ref: StoredDvh, tol: QaTolerances,
                      ours_max_gy: float | None = None) -> QaRow:
    """One structure: ours vs the stored DVH (see the module docstring for what is compared)."""
    w = ref.bin_width_gy
    floor_dose = tol.dose_abs_gy + w
    v_ours = ours.volume_at_least(w / 2)
    percent = ref.volume_units == "PERCENT"
    small = (v_ours if percent else ref.first_volume) < tol.small_cc
    rel = {m: tol.small_pct for m in METRICS} if small else {
        "volume_cc": tol.volume_pct, "mean_gy": tol.mean_pct, "d95_gy": tol.dose_pct, "d2_gy": tol.dose_pct,
        "max_gy": tol.max_pct}
    o: dict[str, float] = {"volume_cc": v_ours}
    t: dict[str, float] = {"volume_cc": math.nan if percent else ref.first_volume}
    notes: list[str] = []
    if ref.stated_mean_gy is not None:
        o["mean_gy"], t["mean_gy"] = ours.mean, ref.stated_mean_gy
    else:
        o["mean_gy"], t["mean_gy"] = _mean_at_least(ours, w / 2), ref.curve_mean_gy()
        notes.append("TPS mean read off the curve (no usable stated mean)")
    for m, f in (("d95_gy", 0.95), ("d2_gy", 0.02)):
        o[m] = ours.hottest(f * v_ours)
        t[m] = ref.dose_at_volume(f)
    o["max_gy"] = float(ours_max_gy) if ours_max_gy is not None else (ours.hi if ours.size else math.nan)
    if ref.stated_max_gy is not None:
        t["max_gy"] = ref.stated_max_gy
    else:
        t["max_gy"] = ref.curve_max_gy()
        notes.append("TPS maximum read off the curve (± half a bin)")
    if percent:
        notes.append("TPS volumes are in percent: the volume is not compared")
    passed: dict[str, bool | None] = {}
    diff: dict[str, float] = {}
    tols: dict[str, str] = {}
    for m in METRICS:
        absolute = 0.0 if m == "volume_cc" else (tol.dose_abs_gy if m == "mean_gy" else floor_dose)
        passed[m], diff[m], tols[m] = _check(o[m], t[m], rel[m], absolute)
    row = QaRow(name, number, o, t, diff, tols, passed, notes=notes)
    row.status = "fail" if row.failed else "pass"
    return row


def set_hint(res: QaResult) -> None:
    """Say what a pattern of failures suggests (a stale DVH, or a wrong dose or link)."""
    n_fail, n = res.n_failed, len(res.rows)
    if n and 0 < n_fail <= max(1, n // 5) and n - n_fail >= 3:
        which = ", ".join(r.roi for r in res.rows if r.status == "fail")
        res.hint = (f"only {which} disagree(s) while {n - n_fail} structures agree: the structure set may have "
                    "been edited after the dose was calculated (stale TPS DVH)")
    elif n and n_fail == n:
        res.hint = "every structure disagrees: check the dose (units, summation) and the structure-set link"


QA_CSV_COLUMNS = ["patient", "study_uid", "roi_number", "roi", "status", "method"] + [
    f"{side}_{m}" for m in METRICS for side in ("ours", "tps")] + [f"diff_pct_{m}" for m in METRICS] + [
    "failed", "notes"]


def qa_csv_rows(patient: str, study: str, res: QaResult) -> list[list[str]]:
    def cell(v) -> str:
        return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.6g}"

    rows = []
    for r in res.rows:
        vals = [patient, study, str(r.roi_number), r.roi, r.status, res.method]
        vals += [cell(d.get(m)) for m in METRICS for d in (r.ours, r.tps)]
        vals += [cell(r.diff_pct.get(m)) for m in METRICS]
        vals += [" ".join(r.failed), " | ".join(r.notes)]
        rows.append(vals)
    return rows
