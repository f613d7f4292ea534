"""The DVHs a planning system stored in its RTDOSE (DVHSequence), read the way they were meant.

Each item is easy to misread (notes/dvh.md):

* bins: DVHData holds (bin width, volume) pairs; a cumulative volume Vᵢ is the volume
  receiving at least the *centre* of bin i, (Σ earlier widths + wᵢ/2) — read at the lower
  edge, the curve is half a bin low. A differential Vᵢ is the volume inside bin i;
* units: DoseUnits GY, CGY (not DICOM, but written) or RELATIVE (percent of
  DVHNormalizationDoseValue); DVHDoseScaling multiplies the bin widths; DVHVolumeUnits CM3 or
  PERCENT (then only relative quantities can be compared);
* the header minimum/mean/maximum of Eclipse files are a percentage of a prescription even
  when DoseUnits says GY. The scale is decided once per file: the ratio of stated to
  computed means is ≈ 1 (Gy) or ≈ 100 / prescription for one of the plan's prescriptions;
* the first cumulative value is the volume above half a bin, not the structure volume (much
  of BODY can be missing below it);
* DVHReferencedROISequence numbers refer to the structure set that the RTDOSE's plan
  references; an item naming several ROIs is a composite and is skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: stated/computed mean ratios within this relative distance decide the header's scale.
SCALE_TOL = 0.02


@dataclass
class StoredDvh:
    roi_number: int
    #: doses (Gy) at which `volume` is the volume receiving at least that dose (ascending)
    dose_gy: np.ndarray
    volume: np.ndarray
    volume_units: str  # "CM3" | "PERCENT"
    bin_width_gy: float  # the first bin's width (the curve's resolution near 0)
    kind: str  # CUMULATIVE | DIFFERENTIAL (as stored)
    bin_width_last: float = 0.0
    stated_min_gy: float | None = None
    stated_mean_gy: float | None = None
    stated_max_gy: float | None = None
    _raw_stated: tuple[float | None, float | None, float | None] = (None, None, None)

    @property
    def first_volume(self) -> float:
        """Volume receiving at least half the first bin (what the TPS lists as the structure's)."""
        return float(self.volume[0]) if self.volume.size else 0.0

    def curve_mean_gy(self) -> float:
        """Mean dose from the curve (∫ V(D) dD / V₀), linear between points."""
        v0 = self.first_volume
        if v0 <= 0:
            return math.nan
        x = np.concatenate([[0.0], self.dose_gy, [self.dose_gy[-1] + self.bin_width_last]])
        y = np.concatenate([[v0], self.volume, [0.0]])
        return float(np.trapezoid(y, x) / v0)

    def dose_at_volume(self, fraction: float) -> float:
        """Dose received by at least `fraction` of V₀ (D95 → 0.95), linear between points."""
        v0 = self.first_volume
        if v0 <= 0:
            return math.nan
        target = fraction * v0
        below = np.flatnonzero(self.volume < target)
        if not below.size:
            return float(self.dose_gy[-1])
        i = int(below[0])
        if i == 0:
            return float(self.dose_gy[0] * target / v0) if v0 else 0.0
        x0, x1, y0, y1 = self.dose_gy[i - 1], self.dose_gy[i], self.volume[i - 1], self.volume[i]
        return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0)) if y1 != y0 else float(x0)

    def curve_max_gy(self) -> float:
        """Highest dose with volume on the curve (centre of the last non-empty bin)."""
        nz = np.flatnonzero(self.volume > 0)
        return float(self.dose_gy[nz[-1]]) if nz.size else 0.0


@dataclass
class StoredDvhSet:
    rtdose_sop_uid: str
    plan_uids: tuple[str, ...]
    dvhs: dict[int, StoredDvh] = field(default_factory=dict)  # by ROI number
    #: how the stated min/mean/max were interpreted, e.g. "% of 14 Gy prescription"
    stated_scale: str = ""
    skipped: list[str] = field(default_factory=list)  # items not usable, with the reason


def _f(v) -> float | None:
    if v in (None, ""):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def read_stored_dvhs(ds, prescriptions_gy: list[float] | tuple[float, ...] = ()) -> StoredDvhSet | None:
    """The usable DVHs of an RTDOSE dataset, or None when it stores none."""
    items = list(ds.get("DVHSequence") or [])
    if not items:
        return None
    out = StoredDvhSet(
        rtdose_sop_uid=str(ds.get("SOPInstanceUID", "") or ""),
        plan_uids=tuple(str(r.get("ReferencedSOPInstanceUID", "")) for r in (ds.get("ReferencedRTPlanSequence") or [])),
    )
    norm = _f(ds.get("DVHNormalizationDoseValue"))
    for n, item in enumerate(items, start=1):
        refs = list(item.get("DVHReferencedROISequence") or [])
        if len(refs) != 1:
            out.skipped.append(f"DVH item {n}: {len(refs)} referenced ROIs (composite DVH): not compared")
            continue
        contrib = str(refs[0].get("DVHROIContributionType", "INCLUDED") or "INCLUDED").upper()
        roi = refs[0].get("ReferencedROINumber")
        if roi in (None, "") or contrib != "INCLUDED":
            out.skipped.append(f"DVH item {n}: no included ROI number")
            continue
        roi = int(roi)
        kind = str(item.get("DVHType", "") or "").upper()
        units = str(item.get("DoseUnits", "") or "").upper()
        vunits = str(item.get("DVHVolumeUnits", "") or "").upper()
        if kind not in ("CUMULATIVE", "DIFFERENTIAL"):
            out.skipped.append(f"DVH of ROI {roi}: DVHType {kind or 'missing'} not supported")
            continue
        if units == "GY":
            unit = 1.0
        elif units == "CGY":
            unit = 0.01
        elif units == "RELATIVE":
            if not norm:
                out.skipped.append(f"DVH of ROI {roi}: relative dose without DVHNormalizationDoseValue")
                continue
            unit = norm / 100.0
        else:
            out.skipped.append(f"DVH of ROI {roi}: DoseUnits {units or 'missing'}")
            continue
        if vunits not in ("CM3", "PERCENT"):
            out.skipped.append(f"DVH of ROI {roi}: DVHVolumeUnits {vunits or 'missing'} not supported")
            continue
        try:
            data = np.array([float(v) for v in item.DVHData], dtype=np.float64)
        except (AttributeError, TypeError, ValueError) as exc:
            out.skipped.append(f"DVH of ROI {roi}: unreadable DVHData ({exc})")
            continue
        if data.size < 2 or data.size % 2:
            out.skipped.append(f"DVH of ROI {roi}: DVHData has {data.size} values (pairs expected)")
            continue
        scaling = _f(item.get("DVHDoseScaling")) or 1.0
        widths = data[0::2] * scaling * unit
        vols = data[1::2].copy()
        # Eclipse ends curves with rounding residue such as -2.9e-13 cc: that is zero, not an error.
        tiny = (vols < 0) & (vols > -1e-6 * max(float(vols.max()), 1e-12))
        vols[tiny] = 0.0
        if np.any(widths <= 0) or np.any(vols < 0):
            out.skipped.append(f"DVH of ROI {roi}: non-positive bin widths or negative volumes")
            continue
        edges = np.concatenate([[0.0], np.cumsum(widths)[:-1]])
        if kind == "CUMULATIVE":
            dose = edges + widths / 2  # the volume receiving at least the bin centre
            cum = vols
        else:
            dose = edges  # volume at or above a bin's lower edge: everything in it and above
            cum = np.cumsum(vols[::-1])[::-1]
        sd = StoredDvh(roi, dose, cum.astype(np.float64), vunits, float(widths[0]), kind, float(widths[-1]),
                       _raw_stated=(_f(item.get("DVHMinimumDose")), _f(item.get("DVHMeanDose")), _f(item.get("DVHMaximumDose"))))
        if roi in out.dvhs:
            out.skipped.append(f"DVH of ROI {roi}: listed twice; the first is used")
            continue
        out.dvhs[roi] = sd
    _decide_stated_scale(out, list(prescriptions_gy))
    return out


def _decide_stated_scale(out: StoredDvhSet, prescriptions: list[float]) -> None:
    """Interpret the stated min/mean/max once for the file (Gy, or % of a prescription)."""
    ratios = []
    for d in out.dvhs.values():
        stated = d._raw_stated[1]
        curve = d.curve_mean_gy()
        # curves with much volume below half a bin (BODY) or almost no dose say little
        if stated is None or not curve or not math.isfinite(curve) or curve < 20 * d.bin_width_gy:
            continue
        ratios.append(stated / curve)
    if not ratios:
        out.stated_scale = "no usable stated mean: curve values used"
        return
    r = float(np.median(ratios))
    factor = None
    if abs(r - 1) <= SCALE_TOL:
        factor, out.stated_scale = 1.0, "Gy"
    else:
        for p in prescriptions:
            if p > 0 and abs(r * p / 100.0 - 1) <= SCALE_TOL:
                factor, out.stated_scale = p / 100.0, f"% of the {p:g} Gy prescription"
                break
    if factor is None:
        out.stated_scale = (f"stated means are {r:.4g}× the curves' and match no prescription "
                            f"({', '.join(f'{p:g}' for p in prescriptions) or 'none known'}): curve values used")
        return
    for d in out.dvhs.values():
        mn, me, mx = d._raw_stated
        d.stated_min_gy = mn * factor if mn is not None else None
        d.stated_mean_gy = me * factor if me is not None else None
        d.stated_max_gy = mx * factor if mx is not None else None
