"""One PNG per structure: the CT at the structure's central slice with its contours drawn on.

The drawn lines are the RTSTRUCT polygons themselves (not an outline of the mask), with the
mask shaded underneath, so a reviewer sees at a glance whether the rasterisation agrees with
what was drawn. When there is a dose, it is laid over as a colour wash with isodose lines at
50/80/95/100 % of the prescription (or of the maximum), so a target outside the high-dose
region, or a dose shifted against the anatomy, shows at a glance. Figures are built without
pyplot, so it is safe in Dask worker processes.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..atomic import write_bytes
from .contours import Roi
from .geometry import Grid
from .rasterise import RoiMask


def central_slice(mask: RoiMask) -> int | None:
    if not mask.box.size or not mask.box.any():
        return None
    per = mask.box.reshape(mask.box.shape[0], -1).sum(axis=1)
    ks = np.flatnonzero(per)
    return int(mask.offset[0] + ks[len(ks) // 2])


ISODOSE_LEVELS = (0.5, 0.8, 0.95, 1.0)


def preview_png(ct_hu: np.ndarray, grid: Grid, roi: Roi, mask: RoiMask, window=(-400.0, 600.0),
                dose_on_ct: np.ndarray | None = None, ref_gy: float | None = None) -> bytes | None:
    """PNG bytes, or None when the mask is empty."""
    k = central_slice(mask)
    if k is None:
        return None
    img = ct_hu[k].astype(np.float32)
    sj, si = grid.spacing[0], grid.spacing[1]
    ni, nj = img.shape
    fig = Figure(figsize=(4, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    extent = (-0.5, nj - 0.5, ni - 0.5, -0.5)
    ax.imshow(img, cmap="gray", vmin=window[0], vmax=window[1], extent=extent, aspect=si / sj, interpolation="nearest")
    ax.set_facecolor("black")
    full = np.zeros((ni, nj), dtype=bool)
    kb = k - mask.offset[0]
    i0, j0 = mask.offset[1], mask.offset[2]
    full[i0 : i0 + mask.box.shape[1], j0 : j0 + mask.box.shape[2]] = mask.box[kb]
    if dose_on_ct is not None:
        plane = np.asarray(dose_on_ct[k], dtype=np.float32)
        ref = float(ref_gy) if ref_gy and ref_gy > 0 else float(plane.max() or 1.0)
        from matplotlib import colormaps

        wash = colormaps["jet"](np.clip(plane / ref, 0, 1.1) / 1.1)
        wash[..., 3] = np.where(plane >= 0.1 * ref, 0.35, 0.0)
        ax.imshow(wash, extent=extent, aspect=si / sj, interpolation="bilinear")
        levels = [lv * ref for lv in ISODOSE_LEVELS if plane.max() >= lv * ref]
        if levels:
            cs = ax.contour(np.arange(nj), np.arange(ni), plane, levels=levels, linewidths=0.7,
                            colors=["#00ffff", "#00ff00", "#ffa500", "#ff0000"][: len(levels)])
            ax.clabel(cs, fmt=lambda v: f"{100 * v / ref:.0f}%", fontsize=5)
    overlay = np.zeros((ni, nj, 4), dtype=np.float32)
    overlay[full] = (1.0, 0.2, 0.2, 0.25 if dose_on_ct is not None else 0.35)
    ax.imshow(overlay, extent=extent, aspect=si / sj, interpolation="nearest")
    for c in roi.closed:
        idx = grid.to_index(c.points)
        if int(round(float(np.mean(idx[:, 2])))) == k:
            xy = np.vstack([idx[:, :2], idx[:1, :2]])
            ax.plot(xy[:, 0], xy[:, 1], color="yellow", linewidth=1.0)
    ax.text(0.01, 0.99, f"{roi.name}  slice {k}", transform=ax.transAxes, color="white", fontsize=8, va="top", ha="left",
            bbox={"facecolor": "black", "alpha": 0.5, "pad": 1})
    # Zoom to the structure (with context around it) so small organs are visible.
    rows = np.flatnonzero(full.any(axis=1))
    cols = np.flatnonzero(full.any(axis=0))
    half = max(rows[-1] - rows[0], (cols[-1] - cols[0]) * sj / si, 60.0 / si) * 0.75 + 2
    ci, cj = (rows[0] + rows[-1]) / 2, (cols[0] + cols[-1]) / 2
    hj = half * si / sj
    ax.set_xlim(max(-0.5, cj - hj), min(nj - 0.5, cj + hj))
    ax.set_ylim(min(ni - 0.5, ci + half), max(-0.5, ci - half))
    ax.axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_preview(target: Path, ct_hu: np.ndarray, grid: Grid, roi: Roi, mask: RoiMask,
                  dose_on_ct: np.ndarray | None = None, ref_gy: float | None = None) -> bool:
    png = preview_png(ct_hu, grid, roi, mask, dose_on_ct=dose_on_ct, ref_gy=ref_gy)
    if png is None:
        return False
    write_bytes(target, png)
    return True
