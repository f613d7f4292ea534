"""NIfTI writing through SimpleITK, atomically.

SimpleITK picks the format (and gzip) from the file name, so the temporary file keeps the
target's full name behind the `.tmp-` prefix; it is renamed over the target only once it is
complete, and `ingest.atomic.sweep_temp` removes leftovers of a killed run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from pathlib import Path

import numpy as np

from ..atomic import TMP_PREFIX, write_text
from .geometry import Grid
from .rasterise import RoiMask

MASK_MODES = ("per-roi", "labelmap", "bitmask")


def write_image(target: Path, array: np.ndarray, grid: Grid, compress: bool | None = None) -> Path:
    """Write `array` ([k, i, j]) on `grid` to `target` (.nii or .nii.gz) atomically."""
    import SimpleITK as sitk

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{target.name}"
    if compress is None:
        compress = target.name.endswith(".gz")
    try:
        sitk.WriteImage(grid.to_sitk(array), str(tmp), useCompression=compress)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return target


def safe_name(name: str, taken: set[str]) -> str:
    """A file-system safe, unique stem for an ROI name."""
    base = re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("._") or "ROI"
    stem, n = base, 2
    while stem.lower() in taken:
        stem = f"{base}_{n}"
        n += 1
    taken.add(stem.lower())
    return stem


def write_masks(
    folder: Path, masks: list[RoiMask], grid: Grid, mode: str = "per-roi", compress: bool = True
) -> dict[str, str]:
    """Write the structures' masks; returns ROI name → file (relative to `folder`).

    per-roi: one uint8 0/1 file per structure under masks/.
    labelmap: one uint16 volume, label n for the n-th structure; where structures overlap the
        smaller one wins (so a GTV inside a PTV stays visible); masks.json lists labels.
    bitmask: one uint64 volume, bit n−1 set for the n-th structure (≤ 64), overlaps kept.

    Raises:
        ValueError: unknown mode, or more than 64 structures in bitmask mode.
    """
    ext = ".nii.gz" if compress else ".nii"
    out: dict[str, str] = {}
    if mode == "per-roi":
        taken: set[str] = set()
        for m in masks:
            rel = f"masks/{safe_name(m.name, taken)}{ext}"
            write_image(folder / rel, m.full().astype(np.uint8), grid, compress)
            out[m.name] = rel
        return out
    if mode == "labelmap":
        vol = np.zeros(grid.shape, dtype=np.uint16)
        order = sorted(range(len(masks)), key=lambda n: -masks[n].voxels)
        for n in order:
            m = masks[n]
            if m.box.size:
                vol[m.slices][m.box] = n + 1
        legend = {str(n + 1): m.name for n, m in enumerate(masks)}
    elif mode == "bitmask":
        if len(masks) > 64:
            raise ValueError(f"bitmask mode holds at most 64 structures, this set has {len(masks)}; use per-roi or labelmap")
        vol = np.zeros(grid.shape, dtype=np.uint64)
        for n, m in enumerate(masks):
            if m.box.size:
                vol[m.slices] |= m.box.astype(np.uint64) << np.uint64(n)
        legend = {f"bit{n}": m.name for n, m in enumerate(masks)}
    else:
        raise ValueError(f"unknown mask mode {mode!r}; expected one of {', '.join(MASK_MODES)}")
    rel = f"masks_{mode}{ext}"
    write_image(folder / rel, vol, grid, compress)
    write_text(folder / f"masks_{mode}.json", json.dumps(legend, indent=2) + "\n")
    for m in masks:
        out[m.name] = rel
    return out
