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


class DoseSamples:
    """Dose samples with volumes: exact order statistics and threshold volumes without a full sort.

    The TPS-agreeing method yields 10⁵–10⁷ samples; most fill a whole slab and share one
    volume (`cell_cc`), the rest carry their own. One pass bins them on a fine grid aligned
    with the DVH curve's bins; a D-value or a Vx then only sorts or tests the samples of the
    one bin where the answer lies, so the results are exact, not binned. Doses stay float32,
    sums are float64.
    """

    def __init__(self, full: np.ndarray, cell_cc: float, part: np.ndarray | None = None,
                 part_weight_cc: np.ndarray | None = None, bin_width_gy: float = 0.1,
                 full_range: tuple[float, float] | None = None) -> None:
        """`full_range`: the smallest and largest of `full`, when the caller already has them (saves
        two passes over 10⁷ samples)."""
        self.df = np.ascontiguousarray(full, dtype=np.float32).ravel()
        self.cell = float(cell_cc)
        self.dp = np.ascontiguousarray(part if part is not None else np.zeros(0), dtype=np.float32).ravel()
        self.wp = np.ascontiguousarray(part_weight_cc if part_weight_cc is not None else np.zeros(0), dtype=np.float32).ravel()
        self.size = self.df.size + self.dp.size
        self.total = self.df.size * self.cell + float(np.add.reduce(self.wp, dtype=np.float64))
        self.bin_width = bin_width_gy
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if not self.size:
            return
        lo = [self.dp.min()] if self.dp.size else []
        hi = [self.dp.max()] if self.dp.size else []
        if self.df.size:
            f_lo, f_hi = full_range if full_range is not None else (self.df.min(), self.df.max())
            lo.append(f_lo)
            hi.append(f_hi)
        self.lo = float(min(lo))
        self.hi = float(max(hi))
        n_curve = int(math.floor(max(self.hi, 0.0) / bin_width_gy)) + 1
        self.sub = max(1, min(64, 4096 // n_curve))  # fine bins per curve bin
        self.n_bins = n_curve * self.sub
        inv = np.float32(self.sub / bin_width_gy)
        self.bf, counts = self._bins(self.df, inv, count=True)
        self.bp, _ = self._bins(self.dp, inv)
        hist = counts * self.cell
        if self.dp.size:
            hist = hist + np.bincount(self.bp, weights=self.wp, minlength=self.n_bins)
        self.hist = hist
        self.above = np.append(np.cumsum(hist[::-1])[::-1], 0.0)  # volume in bins ≥ index

    #: samples binned per pass: small enough for the cache, so binning and counting 10⁷ samples
    #: do not stream whole-size temporaries through memory (np.bincount of uint16 widens to int64)
    CHUNK = 1 << 16

    def _bins(self, d: np.ndarray, inv: np.float32, count: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Fine bin of every sample and, with `count`, the number of samples per bin."""
        out = np.empty(d.size, np.uint16 if self.n_bins <= 65535 else np.int32)
        counts = np.zeros(self.n_bins, np.int64) if count else None
        t = np.empty(min(d.size, self.CHUNK), np.float32)
        for s0 in range(0, d.size, self.CHUNK):
            tt, b = t[: min(d.size - s0, self.CHUNK)], out[s0 : s0 + self.CHUNK]
            np.multiply(d[s0 : s0 + self.CHUNK], inv, out=tt)
            np.clip(tt, 0, self.n_bins - 1, out=tt)
            np.copyto(b, tt, casting="unsafe")  # truncation, as astype
            if count:
                counts += np.bincount(b, minlength=self.n_bins)
        return out, counts

    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(lower bin edges, differential volume per curve bin)."""
        diff = self.hist.reshape(-1, self.sub).sum(axis=1)
        return np.arange(diff.size) * self.bin_width, diff

    @property
    def mean(self) -> float:
        s = float(np.add.reduce(self.df, dtype=np.float64)) * self.cell
        s += float(np.add.reduce(self.dp * self.wp, dtype=np.float64))
        return s / self.total

    def prefetch(self, volumes_cc=(), doses_gy=()) -> None:
        """Gather, in one pass over the samples, the bins that these queries will look at."""
        want = {b for v in volumes_cc for b in self._bins_for_volume(v)}
        want |= {b for x in doses_gy for b in self._bins_for_dose(x)}
        self._gather(sorted(want - set(self._cache)))

    def _gather(self, bins: list[int]) -> None:
        if not bins or not self.size:
            return
        lut = np.zeros(self.n_bins, bool)
        lut[bins] = True
        parts: dict[int, tuple[list, list]] = {b: ([], []) for b in bins}
        for d, bb, w in ((self.df, self.bf, None), (self.dp, self.bp, self.wp)):
            if not d.size:
                continue
            # a block at a time: the mask of 10⁷ samples is never built whole
            sel = np.concatenate([np.flatnonzero(lut[bb[s0 : s0 + self.CHUNK]]) + s0 for s0 in range(0, bb.size, self.CHUNK)])
            sb = bb[sel]
            for b in np.unique(sb):
                x = sel[sb == b]
                parts[int(b)][0].append(d[x])
                parts[int(b)][1].append(np.full(x.size, self.cell) if w is None else w[x].astype(np.float64))
        for b, (ds, ws) in parts.items():
            self._cache[b] = (np.concatenate(ds) if ds else np.zeros(0, np.float32),
                              np.concatenate(ws) if ws else np.zeros(0))

    def _bins_for_volume(self, volume_cc: float) -> list[int]:
        if not self.size or volume_cc > self.total * (1 + 1e-9):
            return []
        t = min(volume_cc, self.total) * (1 - 1e-12)
        hit = np.flatnonzero(self.above[:-1] >= t)
        return [int(hit.max()) if hit.size else 0]

    def _bins_for_dose(self, dose_gy: float) -> list[int]:
        if not self.size or dose_gy > self.hi or dose_gy <= self.lo:
            return []
        # Bins were computed in float32: the threshold's bin and its neighbours are tested exactly.
        k = min(int(dose_gy * self.sub / self.bin_width), self.n_bins - 1)
        return list(range(max(k - 1, 0), min(k + 1, self.n_bins - 1) + 1))

    def _in_bins(self, bins: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Doses and volumes of the samples in these fine bins."""
        self._gather([b for b in bins if b not in self._cache])
        return (np.concatenate([self._cache[b][0] for b in bins]),
                np.concatenate([self._cache[b][1] for b in bins]))

    def hottest(self, volume_cc: float) -> float:
        """Minimum dose received by the hottest `volume_cc` (nan when larger than the total)."""
        if not self.size or volume_cc > self.total * (1 + 1e-9):
            return math.nan
        t = min(volume_cc, self.total) * (1 - 1e-12)
        k = self._bins_for_volume(volume_cc)[0]
        d, w = self._in_bins([k])
        order = np.argsort(-d, kind="stable")
        cw = np.cumsum(w[order])
        pos = min(int(np.searchsorted(cw, t - self.above[k + 1], side="left")), len(order) - 1)
        return float(d[order][pos])

    def volume_at_least(self, dose_gy: float) -> float:
        """Volume (cc) receiving at least `dose_gy`."""
        if not self.size or dose_gy > self.hi:
            return 0.0
        if dose_gy <= self.lo:
            return self.total
        bins = self._bins_for_dose(dose_gy)
        d, w = self._in_bins(bins)
        return float(self.above[bins[-1] + 1]) + float(w[d >= np.float32(dose_gy)].sum())


def compute_weighted_dvh(roi: str, doses: np.ndarray, weights_cc: np.ndarray, spec: DvhSpec = DvhSpec(),
                         extra_min: float | None = None, extra_max: float | None = None,
                         samples: DoseSamples | None = None) -> Dvh:
    """DVH from point samples that each carry their own volume (the TPS-agreeing method).

    Same metric definitions as `compute_dvh` (its equal-volume case): Dx% is the minimum
    dose received by the hottest x % of the volume. `extra_min`/`extra_max` widen Dmin/Dmax
    with dose-grid voxel values found inside the structure (the TPS reports those).
    """
    s = samples if samples is not None else DoseSamples(np.zeros(0), 0.0, doses, weights_cc, spec.bin_width_gy)
    vol = s.total
    out = Dvh(roi=roi, volume_cc=vol, n_voxels=int(s.size), voxel_cc=vol / s.size if s.size else 0.0)
    m: dict[str, float] = {"volume_cc": vol}
    if s.size == 0 or vol <= 0:
        for name in metric_names(spec)[1:]:
            m[name] = math.nan
        out.metrics = m
        return out
    s.prefetch([x / 100.0 * vol for x in spec.d_percent] + list(spec.d_cc), spec.v_gy)
    m["Dmean_Gy"] = s.mean
    m["Dmin_Gy"] = float(min(s.lo, extra_min if extra_min is not None else math.inf))
    m["Dmax_Gy"] = float(max(s.hi, extra_max if extra_max is not None else -math.inf))
    for x in spec.d_percent:
        m[f"D{_num(x)}pct_Gy"] = s.hottest(x / 100.0 * vol)
    for x in spec.d_cc:
        m[f"D{_num(x)}cc_Gy"] = s.hottest(x)
    for x in spec.v_gy:
        v = s.volume_at_least(x)
        m[f"V{_num(x)}Gy_cc"] = v
        m[f"V{_num(x)}Gy_pct"] = 100.0 * v / vol
    out.metrics = {k: m[k] for k in metric_names(spec) if k in m}
    if s.bin_width != spec.bin_width_gy:
        s = DoseSamples(s.df, s.cell, s.dp, s.wp, spec.bin_width_gy)
    out.bins_gy, out.differential_cc = s.curve()
    out.cumulative_cc = np.cumsum(out.differential_cc[::-1])[::-1]
    return out
