"""Read one CT series onto a regular grid.

Slices are ordered by the projection of ImagePositionPatient on the slice normal (never by
InstanceNumber, SliceLocation or file name, which exports get wrong). Two slices at the same
position are a duplicate (the later one is dropped and flagged); a gap larger than the usual
spacing means missing slices, which would silently stretch the anatomy, so it is an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from .geometry import Grid, orientation_vectors
from .verify import RtConversionError

log = logging.getLogger(__name__)

#: Slice positions closer than this (mm) are the same position.
DUPLICATE_TOL_MM = 0.01
#: Relative deviation from the median spacing that counts as a missing slice / irregular grid.
SPACING_REL_TOL = 0.1


@dataclass
class CtSeries:
    grid: Grid
    hu: np.ndarray  # [k, i, j] int16 Hounsfield units (float32 when rescale is fractional)
    sop_uids: list[str]  # per sorted slice
    series_uid: str
    frame_of_reference: str
    warnings: list[str] = field(default_factory=list)
    duplicates: int = 0

    @property
    def slice_offsets(self) -> np.ndarray:
        """Position of each slice along the normal relative to slice 0 (mm)."""
        return np.arange(self.grid.shape[0]) * self.grid.spacing[2]


@dataclass
class _SliceHeader:
    path: Path
    position: float
    ipp: np.ndarray
    sop_uid: str
    instance: int


def order_slices(headers: list[_SliceHeader], series: str) -> tuple[list[_SliceHeader], float, list[str], int]:
    """Sort by position along the normal, drop duplicates and check the spacing is regular.

    Returns (sorted slices, slice spacing, warnings, number of duplicates).

    Raises:
        RtConversionError: XI_EXEC_001 for fewer than 2 distinct positions or missing positions.
    """
    warnings: list[str] = []
    headers = sorted(headers, key=lambda h: (h.position, h.instance))
    kept: list[_SliceHeader] = []
    dups = 0
    for h in headers:
        if kept and abs(h.position - kept[-1].position) <= DUPLICATE_TOL_MM:
            dups += 1
            continue
        kept.append(h)
    if dups:
        warnings.append(f"CT series {series}: {dups} duplicate slice position(s) dropped")
    if len(kept) < 2:
        raise RtConversionError("XI_EXEC_001", f"CT series {series} has {len(kept)} distinct slice position(s)")
    pos = np.array([h.position for h in kept])
    steps = np.diff(pos)
    spacing = float(np.median(steps))
    bad = np.flatnonzero(np.abs(steps - spacing) > SPACING_REL_TOL * spacing)
    if bad.size:
        gaps = ", ".join(f"{pos[b]:.2f}→{pos[b + 1]:.2f} mm" for b in bad[:5])
        missing = int(round(float(np.sum(steps[bad] / spacing - 1))))
        raise RtConversionError(
            "XI_EXEC_001",
            f"CT series {series}: irregular slice positions (spacing {spacing:.3f} mm; gaps at {gaps}; "
            f"about {missing} missing slice(s))",
        )
    return kept, spacing, warnings, dups


def read_ct_series(paths: list[Path]) -> CtSeries:
    """Read CT slices (one series) into Hounsfield units on a Grid.

    Raises:
        RtConversionError: XI_EXEC_002 when a file cannot be read or the slices disagree in
            orientation/size/spacing; XI_EXEC_001 when positions are missing.
    """
    if not paths:
        raise RtConversionError("XI_EXEC_002", "no CT files")
    datasets = []
    for p in paths:
        try:
            datasets.append((p, pydicom.dcmread(p)))
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same problem
            raise RtConversionError("XI_EXEC_002", f"{p}: cannot read CT slice: {exc}") from None
    first = datasets[0][1]
    series = str(first.get("SeriesInstanceUID", "?"))
    try:
        row_dir, col_dir = orientation_vectors(first.ImageOrientationPatient)
    except (AttributeError, ValueError) as exc:
        raise RtConversionError("XI_EXEC_002", f"CT series {series}: {exc}") from None
    normal = np.cross(row_dir, col_dir)
    rows, cols = int(first.Rows), int(first.Columns)
    ps = [float(v) for v in first.PixelSpacing]
    headers: list[_SliceHeader] = []
    by_path = {}
    for p, ds in datasets:
        try:
            r2, c2 = orientation_vectors(ds.ImageOrientationPatient)
            ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        except (AttributeError, ValueError, TypeError) as exc:
            raise RtConversionError("XI_EXEC_002", f"{p}: no usable ImagePositionPatient/Orientation ({exc})") from None
        if not (np.allclose(r2, row_dir, atol=1e-4) and np.allclose(c2, col_dir, atol=1e-4)):
            raise RtConversionError("XI_EXEC_002", f"CT series {series}: slices have different orientations ({p})")
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols) or not np.allclose([float(v) for v in ds.PixelSpacing], ps):
            raise RtConversionError("XI_EXEC_002", f"CT series {series}: slices differ in size or pixel spacing ({p})")
        headers.append(_SliceHeader(p, float(ipp @ normal), ipp, str(ds.SOPInstanceUID), int(ds.get("InstanceNumber") or 0)))
        by_path[p] = ds
    kept, spacing, warnings, dups = order_slices(headers, series)
    for w in warnings:
        log.warning(w)
    # In-plane offset of every slice must agree (a sheared stack is not a grid).
    ipp0 = kept[0].ipp
    for h in kept[1:]:
        d = h.ipp - ipp0
        inplane = d - (d @ normal) * normal
        if np.linalg.norm(inplane) > 0.01 * max(ps):
            raise RtConversionError("XI_EXEC_001", f"CT series {series}: slices are not stacked along the normal (sheared/tilted gantry)")
    fractional = False
    slabs = []
    for h in kept:
        ds = by_path[h.path]
        try:
            arr = ds.pixel_array
        except Exception as exc:  # noqa: BLE001
            raise RtConversionError("XI_EXEC_002", f"{h.path}: cannot decode pixel data: {exc}") from None
        slope = float(ds.get("RescaleSlope", 1) or 1)
        inter = float(ds.get("RescaleIntercept", 0) or 0)
        if slope != int(slope) or inter != int(inter):
            fractional = True
        slabs.append((arr, slope, inter))
    dtype = np.float32 if fractional else np.int16
    hu = np.empty((len(kept), rows, cols), dtype=dtype)
    for k, (arr, slope, inter) in enumerate(slabs):
        if slope == 1 and inter == 0:
            hu[k] = arr
        else:
            hu[k] = arr.astype(np.float32) * slope + inter
    grid = Grid(origin=ipp0.copy(), row_dir=row_dir, col_dir=col_dir, spacing=(ps[1], ps[0], spacing), shape=hu.shape)
    return CtSeries(
        grid=grid,
        hu=hu,
        sop_uids=[h.sop_uid for h in kept],
        series_uid=series,
        frame_of_reference=str(first.get("FrameOfReferenceUID", "")),
        warnings=warnings,
        duplicates=dups,
    )
