"""RTDOSE → dose in Gy on its own grid, and linear resampling onto the CT grid.

Refuses what it cannot convert honestly: no DoseGridScaling (the stored integers have no
unit), DoseUnits other than GY (RELATIVE doses are not Gy), a frame of reference other than
the CT's, or an irregular GridFrameOffsetVector. Outside the hull of the dose-grid voxel
centres the resampled dose is 0, like plastimatch's resample, rather than ITK's clamped edge
values, so a CT voxel the TPS never computed is never given a dose.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from .geometry import Grid, orientation_vectors
from .verify import RtConversionError

#: Doses above this (Gy) in any voxel are implausible for a treatment plan (PDCP XXIV_EXEC_003).
MAX_PLAUSIBLE_GY = 200.0


@dataclass
class DoseInfo:
    sop_uid: str
    frame_of_reference: str
    summation: str
    plan_uids: tuple[str, ...]
    path: Path


@dataclass
class Dose:
    info: DoseInfo
    grid: Grid
    gy: np.ndarray  # float32 [k, i, j]


def dose_header(ds) -> DoseInfo:
    plans = tuple(str(r.get("ReferencedSOPInstanceUID", "")) for r in (ds.get("ReferencedRTPlanSequence", []) or []))
    return DoseInfo(
        sop_uid=str(ds.get("SOPInstanceUID", "")),
        frame_of_reference=str(ds.get("FrameOfReferenceUID", "")),
        summation=str(ds.get("DoseSummationType", "") or "").upper(),
        plan_uids=tuple(p for p in plans if p),
        path=Path(getattr(ds, "filename", "") or ""),
    )


def read_dose(path: Path, expected_for: str | None = None) -> Dose:
    """Read an RTDOSE file as float32 Gy on its grid.

    Raises:
        RtConversionError: XVI_EXEC_002 with the reason (unreadable, no scaling, not GY,
            frame of reference mismatch, irregular frames); XXIV_EXEC_003 for implausible maxima.
    """
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001
        raise RtConversionError("XVI_EXEC_002", f"{path}: cannot read RTDOSE: {exc}") from None
    info = dose_header(ds)
    info.path = Path(path)
    uid = info.sop_uid
    if "DoseGridScaling" not in ds or ds.DoseGridScaling in (None, ""):
        raise RtConversionError("XVI_EXEC_002", f"RTDOSE {uid}: no DoseGridScaling, so the values have no unit")
    units = str(ds.get("DoseUnits", "") or "").upper()
    if units != "GY":
        raise RtConversionError("XVI_EXEC_002", f"RTDOSE {uid}: DoseUnits is {units or 'missing'}, not GY")
    if expected_for and info.frame_of_reference != expected_for:
        raise RtConversionError(
            "XVI_EXEC_002",
            f"RTDOSE {uid}: FrameOfReferenceUID {info.frame_of_reference} differs from the CT's {expected_for}",
        )
    try:
        row_dir, col_dir = orientation_vectors(ds.ImageOrientationPatient)
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        ps = [float(v) for v in ds.PixelSpacing]
        raw = ds.pixel_array
    except Exception as exc:  # noqa: BLE001
        raise RtConversionError("XVI_EXEC_002", f"RTDOSE {uid}: unusable geometry or pixel data: {exc}") from None
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    if raw.ndim == 2:
        raw = raw[np.newaxis]
    normal = np.cross(row_dir, col_dir)
    if nframes > 1 and not ds.get("GridFrameOffsetVector"):
        raise RtConversionError("XVI_EXEC_002", f"RTDOSE {uid}: no GridFrameOffsetVector for {nframes} frames, "
                                                "so the frame positions are unknown")
    offsets = np.array([float(v) for v in (ds.get("GridFrameOffsetVector") or [0.0])], dtype=np.float64)
    if len(offsets) != nframes:
        raise RtConversionError("XVI_EXEC_002", f"RTDOSE {uid}: {len(offsets)} frame offsets for {nframes} frames")
    if offsets[0] != 0:
        # Type "absolute": offsets are positions along the normal (allowed for HFS-like grids).
        offsets = offsets - float(ipp @ normal)
        if abs(offsets[0]) > 1e-3:
            raise RtConversionError("XVI_EXEC_002", f"RTDOSE {uid}: GridFrameOffsetVector does not start at the image position")
    if nframes > 1:
        steps = np.diff(offsets)
        step = float(np.median(steps))
        if step == 0 or np.any(np.abs(steps - step) > 1e-3 * max(abs(step), 1)):
            raise RtConversionError("XVI_EXEC_002", f"RTDOSE {uid}: irregular GridFrameOffsetVector")
        if step < 0:  # frames run against the normal: flip them so k increases along it
            raw = raw[::-1]
            ipp = ipp + offsets[-1] * normal
            step = -step
    else:
        step = float(ds.get("SliceThickness", 1.0) or 1.0)
    gy = raw.astype(np.float32) * np.float32(float(ds.DoseGridScaling))
    mx = float(gy.max()) if gy.size else 0.0
    if not np.isfinite(mx) or mx > MAX_PLAUSIBLE_GY:
        raise RtConversionError("XXIV_EXEC_003", f"RTDOSE {uid}: maximum dose {mx:.1f} Gy is not plausible")
    grid = Grid(origin=ipp, row_dir=row_dir, col_dir=col_dir, spacing=(ps[1], ps[0], step), shape=gy.shape)
    return Dose(info=info, grid=grid, gy=np.ascontiguousarray(gy))


def sum_doses(doses: list[Dose]) -> Dose:
    """The voxel-wise sum of doses computed on one grid (per-beam doses of one plan).

    Raises:
        RtConversionError: XVI_EXEC_003 when the grids differ (summing would need resampling,
            which is not done behind the user's back).
    """
    first = doses[0]
    g = first.grid
    total = first.gy.astype(np.float64)
    for d in doses[1:]:
        h = d.grid
        same = (h.shape == g.shape and np.allclose(h.origin, g.origin, atol=1e-3)
                and np.allclose(h.spacing, g.spacing, atol=1e-4) and np.allclose(h.direction, g.direction, atol=1e-6))
        if not same:
            raise RtConversionError("XVI_EXEC_003", f"beam doses {first.info.sop_uid} and {d.info.sop_uid} are on "
                                                    "different grids; not summed")
        total += d.gy
    info = DoseInfo("+".join(d.info.sop_uid for d in doses), first.info.frame_of_reference, "BEAM-SUM",
                    first.info.plan_uids, first.info.path)
    return Dose(info=info, grid=g, gy=total.astype(np.float32))


def resample_to(dose: Dose, target: Grid) -> np.ndarray:
    """Dose in Gy at the voxel centres of `target` (trilinear; 0 outside the dose grid's centre hull).

    When both grids share their axes (the usual case: the TPS computes dose in the CT's
    orientation) trilinear interpolation is separable, so it is done as three 1-D linear
    passes, several times faster than a general resampler on a 512² CT; any other pair of
    orientations goes through SimpleITK.
    """
    if np.allclose(dose.grid.direction, target.direction, atol=1e-6):
        return _resample_separable(dose, target)
    return _resample_sitk(dose, target)


def _axis_weights(src: Grid, target: Grid, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each target index on one axis: lower source index, upper weight, and inside flag."""
    n_src = src.shape[2 - axis]
    n_tgt = target.shape[2 - axis]
    b = src.to_index(target.origin[np.newaxis])[0][axis]
    step = target.spacing[axis] / src.spacing[axis]
    c = b + step * np.arange(n_tgt)
    eps = 1e-6
    inside = (c >= -eps) & (c <= n_src - 1 + eps)
    c = np.clip(c, 0, n_src - 1)
    lo = np.minimum(np.floor(c).astype(np.int64), max(n_src - 2, 0))
    w = (c - lo).astype(np.float32)
    if n_src == 1:
        lo[:] = 0
        w[:] = 0
    return lo, w, inside


def _resample_separable(dose: Dose, target: Grid) -> np.ndarray:
    """Slice by slice: blend two dose planes, then interpolate rows, then columns (cache-sized work)."""
    src = dose.grid
    arr = dose.gy.astype(np.float32, copy=False)
    klo, kw, kin = _axis_weights(src, target, 2)
    ilo, iw, iin = _axis_weights(src, target, 1)
    jlo, jw, jin = _axis_weights(src, target, 0)
    khi = np.minimum(klo + 1, arr.shape[0] - 1)
    ihi = np.minimum(ilo + 1, arr.shape[1] - 1)
    jhi = np.minimum(jlo + 1, arr.shape[2] - 1)
    row_w = iw[:, np.newaxis]
    col_w = jw[np.newaxis, :]
    mask = (iin[:, np.newaxis] & jin[np.newaxis, :]).astype(np.float32)
    out = np.zeros(target.shape, dtype=np.float32)
    for k in np.flatnonzero(kin):
        plane = arr[klo[k]] + (arr[khi[k]] - arr[klo[k]]) * kw[k]  # (ni_d, nj_d)
        a = plane[ilo]
        rows = a + (plane[ihi] - a) * row_w  # (ni_t, nj_d)
        b = rows[:, jlo]
        res = out[k]
        np.subtract(rows[:, jhi], b, out=res)
        res *= col_w
        res += b
        res *= mask
    return out


def _resample_sitk(dose: Dose, target: Grid) -> np.ndarray:
    import SimpleITK as sitk

    src = dose.grid.to_sitk(dose.gy)
    ref = sitk.Image([int(target.shape[2]), int(target.shape[1]), int(target.shape[0])], sitk.sitkUInt8)
    ref.SetOrigin(tuple(float(v) for v in target.origin))
    ref.SetSpacing(tuple(float(v) for v in target.spacing))
    ref.SetDirection(tuple(float(v) for v in target.direction.ravel()))
    out = sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(out)
    _zero_outside_hull(arr, dose.grid, target)
    return arr


def _zero_outside_hull(arr: np.ndarray, src: Grid, target: Grid) -> None:
    # Continuous source index is affine in the target index: idx = A @ (j, i, k) + b.
    b = src.to_index(target.origin[np.newaxis])[0]
    cols = np.array([target.row_dir * target.spacing[0], target.col_dir * target.spacing[1], target.normal * target.spacing[2]])
    A = (cols @ src.direction / np.asarray(src.spacing)).T  # A[a, t]: source axis a per target axis t
    hi = np.array([src.shape[2] - 1, src.shape[1] - 1, src.shape[0] - 1], dtype=np.float64)
    eps = 1e-6
    nk, ni, nj = target.shape
    jj = np.arange(nj, dtype=np.float64)[np.newaxis, :]
    ii = np.arange(ni, dtype=np.float64)[:, np.newaxis]
    # Only axes whose source index changes in-plane need the full 2-D test.
    for k in range(nk):
        inside = np.ones((ni, nj), dtype=bool)
        for a in range(3):
            c = b[a] + A[a, 2] * k + A[a, 0] * jj + A[a, 1] * ii
            inside &= (c >= -eps) & (c <= hi[a] + eps)
        arr[k][~inside] = 0.0
