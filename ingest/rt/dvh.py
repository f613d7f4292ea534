"""Dose-volume histograms and metrics from voxel doses, with volumes in cc.

Metrics are computed from the sorted voxel doses, not from a binned histogram, so they
carry no bin error. The D-values follow the clinical convention: Dx% is the minimum dose
received by the hottest x % of the structure (D2% near the maximum, D98% near the minimum;
PDCP had these inverted), and D x cc the minimum dose to the hottest x cc. Vx Gy is the
volume receiving at least x Gy. Every voxel (or sub-voxel, when supersampled in-plane)
carries its own volume, so volumes are in cc, never in voxel counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

DEFAULT_D_PERCENT = (2.0, 50.0, 95.0, 98.0)
DEFAULT_D_CC = (0.1, 1.0, 2.0)
DEFAULT_V_GY = (5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0)


@dataclass(frozen=True)
class DvhSpec:
    d_percent: tuple[float, ...] = DEFAULT_D_PERCENT
    d_cc: tuple[float, ...] = DEFAULT_D_CC
    v_gy: tuple[float, ...] = DEFAULT_V_GY
    bin_width_gy: float = 0.1


@dataclass
class Dvh:
    roi: str
    volume_cc: float
    n_voxels: int
    voxel_cc: float
    metrics: dict[str, float] = field(default_factory=dict)
    bins_gy: np.ndarray = field(default_factory=lambda: np.zeros(0))  # lower bin edges
    differential_cc: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cumulative_cc: np.ndarray = field(default_factory=lambda: np.zeros(0))  # volume with dose ≥ edge


def _num(x: float) -> str:
    return f"{x:g}".replace(".", "p")


def metric_names(spec: DvhSpec) -> list[str]:
    names = ["volume_cc", "Dmean_Gy", "Dmin_Gy", "Dmax_Gy"]
    names += [f"D{_num(x)}pct_Gy" for x in spec.d_percent]
    names += [f"D{_num(x)}cc_Gy" for x in spec.d_cc]
    for x in spec.v_gy:
        names += [f"V{_num(x)}Gy_cc", f"V{_num(x)}Gy_pct"]
    return names


def compute_dvh(roi: str, doses: np.ndarray, voxel_cc: float, spec: DvhSpec = DvhSpec()) -> Dvh:
    """DVH of one structure from the doses (Gy) of its voxels, each of volume `voxel_cc`."""
    d = np.asarray(doses).ravel()
    if d.dtype not in (np.float32, np.float64):
        d = d.astype(np.float64)
    n = d.size
    vol = n * voxel_cc
    out = Dvh(roi=roi, volume_cc=vol, n_voxels=n, voxel_cc=voxel_cc)
    m: dict[str, float] = {"volume_cc": vol}
    if n == 0:
        for name in metric_names(spec)[1:]:
            m[name] = math.nan
        out.metrics = m
        return out
    # Order statistics by partition (O(n)) instead of a full sort: "the c hottest voxels"
    # end at ascending position n - c.
    counts: dict[str, int] = {}
    for x in spec.d_percent:
        # Smallest number of hottest voxels whose volume reaches x % of the structure.
        counts[f"D{_num(x)}pct_Gy"] = min(max(1, math.ceil(x / 100.0 * n - 1e-9)), n)
    for x in spec.d_cc:
        c = math.ceil(x / voxel_cc - 1e-9)
        if 1 <= c <= n:
            counts[f"D{_num(x)}cc_Gy"] = c
        else:
            m[f"D{_num(x)}cc_Gy"] = math.nan
    kth = sorted({n - c for c in counts.values()})
    part = np.partition(d, kth) if kth else d
    m["Dmean_Gy"] = float(d.mean(dtype=np.float64))
    m["Dmin_Gy"] = float(d.min())
    m["Dmax_Gy"] = float(d.max())
    for name, c in counts.items():
        m[name] = float(part[n - c])
    for x in spec.v_gy:
        v = float(np.count_nonzero(d >= x)) * voxel_cc
        m[f"V{_num(x)}Gy_cc"] = v
        m[f"V{_num(x)}Gy_pct"] = 100.0 * v / vol
    m = {k: m[k] for k in metric_names(spec) if k in m}
    out.metrics = m
    w = spec.bin_width_gy
    nb = max(1, int(math.floor(m["Dmax_Gy"] / w)) + 1)
    bins = np.minimum((np.maximum(d, 0) * (1.0 / w)).astype(np.int32), nb - 1)
    hist = np.bincount(bins, minlength=nb)
    out.bins_gy = np.arange(nb) * w
    out.differential_cc = hist * voxel_cc
    out.cumulative_cc = np.cumsum(hist[::-1])[::-1] * voxel_cc
    return out
