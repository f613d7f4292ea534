"""The TPS-agreeing DVH method on shapes whose solid is known in closed form.

The method's rule (ingest/rt/dvh_tps.py, notes/dvh.md): between two contour planes the
shape is interpolated linearly in signed distance; beyond each end plane a cap of height
dz/2 whose cross-section is the end contour shrunk by k·δ at height δ (k = 5); nothing
beyond the first/last CT slice. Each expected value below is written from that rule by hand:

* box (edges on sub-pixel boundaries): interior A·L exactly, caps ∫(a−2kδ)(b−2kδ)dδ;
* cylinder: interior A_polygon·L, caps ∫π(r−kδ)²dδ;
* cone: concentric circles interpolate into exact frustums, π/3·h·(r₁²+r₁r₂+r₂²);
* ring (hole): caps shrink the annulus from both sides, ∫π((R−kδ)²−(r+kδ)²)dδ;
* one plane: only the two caps; two planes: one slab plus two caps;
* a plane missing inside the structure: interpolated across (same solid), with a warning;
* an end plane on the first CT slice: no cap beyond the image.

"Exact" cases are asserted to 0.1 %: what remains is the lattice, not the rule — a box's caps
are integrated by the midpoint rule over 0.25 mm sub-pixels, exact except in the cells that
the cap's clip line and the corner diagonals cross (0.07 % for a one-plane 16 × 10 mm box),
and a circle's area is counted in sub-pixel centres (Gauss's circle problem: 0.1–0.2 % at
r = 6–9 mm on 0.25–0.5 mm). The sphere, whose solid between planes is not the analytic
sphere, is held to 1.5 % of 4/3·πr³. Doses use linear fields, for which trilinear
interpolation is exact: the mean of a solid symmetric about its centroid is the dose there.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ingest.rt import phantoms as P
from ingest.rt.contours import Contour, Roi
from ingest.rt.dose import Dose, DoseInfo
from ingest.rt.dvh import DoseSamples, DvhSpec, compute_dvh, compute_weighted_dvh
from ingest.rt.dvh_tps import TpsOptions, tps_samples

K = 5.0  # cap slope (mm of inward shrink per mm of cap height): the method's default
EXACT = 1e-3  # relative tolerance of the closed-form cases (see the module docstring)


def roi_of(shape: P.Shape, number: int = 1, kind: str = "ORGAN") -> Roi:
    return Roi(number, shape.name, interpreted_type=kind,
               contours=[Contour(np.asarray(c), "CLOSED_PLANAR") for c in shape.contours])


def grid(shape=(40, 96, 96), spacing=(1.0, 1.0, 2.0), iop=P.HFS):
    # origin on a pixel centre so that box edges at half-integers fall on sub-pixel boundaries
    return P.ct_grid(shape=shape, spacing=spacing, iop=iop, origin=(0.0, 0.0, 0.0))


def box_on_planes(g, name, centre_ij, size_j, size_i, planes):
    """A rectangle (mm) on the given CT slices; corners on sub-pixel boundaries of a 4× lattice."""
    cj, ci = centre_ij
    loc = np.array([[-size_j / 2, -size_i / 2], [size_j / 2, -size_i / 2], [size_j / 2, size_i / 2], [-size_j / 2, size_i / 2]])
    loc += [cj, ci]
    cs = [g.origin + loc[:, :1] * g.row_dir + loc[:, 1:2] * g.col_dir + k * g.spacing[2] * g.normal for k in planes]
    return P.Shape(name, cs, 0.0, 0.0)


def box_cap_mm3(a, b, H, k=K):
    """∫₀^H (a−2kδ)(b−2kδ) dδ with the shrink clipped at zero width."""
    H = min(H, a / (2 * k), b / (2 * k))
    return a * b * H - k * (a + b) * H**2 + 4 / 3 * k**2 * H**3


def disc_cap_mm3(r, H, k=K):
    """∫₀^H π(r−kδ)² dδ, clipped where the disc vanishes."""
    H = min(H, r / k)
    return math.pi * (r * r * H - k * r * H * H + k * k * H**3 / 3)


def test_box_interior_and_tapered_caps_exact():
    g = grid()
    a, b = 20.0, 12.0  # mm; centre at (47.5, 40.5) px: edges at 37.5/57.5 and 34.5/46.5 → sub-pixel boundaries
    sh = box_on_planes(g, "Box", (47.5, 40.5), a, b, range(10, 20))  # 10 planes, 18 mm between first and last
    s = tps_samples(roi_of(sh), g)
    H = g.spacing[2] / 2
    expected = (a * b * 9 * g.spacing[2] + 2 * box_cap_mm3(a, b, H)) / 1000
    assert s.subsample == 4  # 4.3 cc < 10 cc: fine lattice
    assert abs(s.volume_cc / expected - 1) < EXACT, (s.volume_cc, expected)
    # The voxel slab convention would give 10 full slabs: 4.8 cc, +4.1 % (the TPS does not do that).
    assert abs(a * b * 10 * g.spacing[2] / 1000 / expected - 1) > 0.03


def test_one_and_two_plane_structures_exact():
    g = grid()
    a, b = 16.0, 10.0
    H = g.spacing[2] / 2
    one = tps_samples(roi_of(box_on_planes(g, "One", (47.5, 40.5), a, b, [15])), g)
    assert abs(one.volume_cc / (2 * box_cap_mm3(a, b, H) / 1000) - 1) < EXACT
    two = tps_samples(roi_of(box_on_planes(g, "Two", (47.5, 40.5), a, b, [15, 16])), g)
    assert abs(two.volume_cc / ((a * b * g.spacing[2] + 2 * box_cap_mm3(a, b, H)) / 1000) - 1) < EXACT
    # Tiny: a 2 × 2 mm square on one plane, which the cap shrinks to nothing within 0.2 mm; on
    # 8 × 8 sub-pixels the midpoint rule is within a few per cent of the closed form.
    tiny = tps_samples(roi_of(box_on_planes(g, "Tiny", (47.5, 40.5), 2.0, 2.0, [15])), g)
    assert abs(tiny.volume_cc / (2 * box_cap_mm3(2.0, 2.0, H) / 1000) - 1) < 0.05


def test_cylinder_exact():
    g = grid()
    r = 9.0
    sh = P.cylinder(g, "Cyl", g.to_physical(np.array([[47.3, 40.6, 15.0]]))[0], r, 20.0, n_points=720)
    n = len(sh.contours)
    area = 0.5 * 720 * r * r * math.sin(2 * math.pi / 720)
    H = g.spacing[2] / 2
    expected = (area * (n - 1) * g.spacing[2] + 2 * disc_cap_mm3(r, H)) / 1000
    s = tps_samples(roi_of(sh), g)
    assert abs(s.volume_cc / expected - 1) < 2e-3  # a circle counted on the lattice


def test_cone_interpolates_into_exact_frustums():
    g = grid()
    sh = P.cone(g, "Cone", g.to_physical(np.array([[47.3, 40.6, 10.0]]))[0], 12.0, 24.0, n_points=720)
    radii = []
    dz = g.spacing[2]
    for c in sh.contours:
        local = c - c.mean(axis=0)
        radii.append(float(np.max(np.hypot(local[:, 0], local[:, 1]))))
    frustums = sum(math.pi / 3 * dz * (r1 * r1 + r1 * r2 + r2 * r2) for r1, r2 in zip(radii, radii[1:]))
    H = dz / 2
    expected = (frustums + disc_cap_mm3(radii[0], H) + disc_cap_mm3(radii[-1], H)) / 1000
    s = tps_samples(roi_of(sh), g)
    assert abs(s.volume_cc / expected - 1) < 2e-3  # circles of 1–12 mm on the lattice
    # the analytic cone ends at its apex and base plane; the TPS solid adds the caps
    assert s.volume_cc > sh.analytic_cc


def test_ring_hole_caps_exact():
    g = grid()
    R, r = 14.0, 6.0
    sh = P.ring(g, "Ring", g.to_physical(np.array([[47.3, 40.6, 15.0]]))[0], R, r, 16.0, n_points=720)
    n = len(sh.contours) // 2
    a_out = 0.5 * 720 * R * R * math.sin(2 * math.pi / 720)
    a_in = 0.5 * 720 * r * r * math.sin(2 * math.pi / 720)
    H = g.spacing[2] / 2
    w = R - r
    h = min(H, w / (2 * K))
    cap = math.pi * ((R * R - r * r) * h - K * (R + r) * h * h)  # ∫π((R−kδ)²−(r+kδ)²)dδ
    expected = ((a_out - a_in) * (n - 1) * g.spacing[2] + 2 * cap) / 1000
    s = tps_samples(roi_of(sh), g)
    assert abs(s.volume_cc / expected - 1) < 2e-3
    # the hole stays empty: the same ring's outer cylinder alone is bigger by the hole's solid
    outer = P.cylinder(g, "Outer", g.to_physical(np.array([[47.3, 40.6, 15.0]]))[0], R, 16.0, n_points=720)
    assert tps_samples(roi_of(outer), g).volume_cc - s.volume_cc > 0.9 * a_in * (n - 1) * g.spacing[2] / 1000


def test_missing_plane_is_interpolated_across_with_a_warning():
    g = grid()
    full = tps_samples(roi_of(box_on_planes(g, "Full", (47.5, 40.5), 20.0, 12.0, range(10, 20))), g)
    gap = tps_samples(roi_of(box_on_planes(g, "Gap", (47.5, 40.5), 20.0, 12.0, [p for p in range(10, 20) if p != 14])), g)
    assert abs(gap.volume_cc / full.volume_cc - 1) < 1e-9
    assert any("missing between CT slices 13–15" in w for w in gap.warnings)
    assert not full.warnings


def test_no_cap_beyond_the_first_ct_slice():
    g = grid()
    a, b = 20.0, 12.0
    s = tps_samples(roi_of(box_on_planes(g, "Edge", (47.5, 40.5), a, b, range(0, 6))), g)
    H = g.spacing[2] / 2
    assert abs(s.volume_cc / ((a * b * 5 * g.spacing[2] + box_cap_mm3(a, b, H)) / 1000) - 1) < EXACT


@pytest.mark.parametrize("iop", [P.HFS, P.FFS, P.HFDL], ids=["HFS", "FFS", "HFDL"])
def test_sphere_close_to_analytic_in_any_orientation(iop):
    g = P.ct_grid(shape=(40, 96, 96), spacing=(1.0, 1.0, 2.0), iop=iop)
    centre = g.to_physical(np.array([[47.3, 48.6, 19.7]]))[0]
    sh = P.sphere(g, "Sphere", centre, 20.0, n_points=360)
    s = tps_samples(roi_of(sh), g)
    assert abs(s.volume_cc / sh.analytic_cc - 1) < 0.015
    assert s.subsample == 1  # 33.5 cc: the CT lattice (≥ 25 cc)


def test_external_structures_use_the_ct_lattice():
    g = grid()
    sh = box_on_planes(g, "BODY", (47.5, 40.5), 60.0, 50.0, range(2, 30))
    assert tps_samples(roi_of(sh, kind="EXTERNAL"), g).subsample == 1
    assert tps_samples(roi_of(P.Shape("External", sh.contours, 0, 0)), g).subsample == 1  # by name too


def _linear_dose(g, d0, grad, spacing=(2.5, 2.5, 2.5)):
    dg = P.standard_dose_grid(g, spacing, margin=6.0)
    centres = dg.to_physical(np.stack(np.meshgrid(np.arange(dg.shape[2]), np.arange(dg.shape[1]), np.arange(dg.shape[0]),
                                                  indexing="xy"), -1).reshape(-1, 3).astype(float))
    vals = d0 + centres @ np.asarray(grad, float)
    gy = vals.reshape(dg.shape[1], dg.shape[2], dg.shape[0]).transpose(2, 0, 1).astype(np.float32)
    return Dose(DoseInfo("1.2.3", "", "PLAN", (), None), dg, gy)


def test_linear_dose_mean_and_extremes_exact():
    """D = 30 + 0.4·x + 0.25·z Gy (x, z mm): the box's solid is symmetric about its centre."""
    g = grid()
    sh = box_on_planes(g, "Box", (47.5, 40.5), 20.0, 12.0, range(10, 20))
    dose = _linear_dose(g, 30.0, (0.4, 0.0, 0.25))
    s = tps_samples(roi_of(sh), g, dose)
    centre = g.to_physical(np.array([[47.5, 40.5, 14.5]]))[0]
    mean_expected = 30.0 + 0.4 * centre[0] + 0.25 * centre[2]
    d = compute_weighted_dvh("Box", None, None, DvhSpec(), s.grid_min_gy, s.grid_max_gy, s.dose_samples())
    assert abs(d.metrics["Dmean_Gy"] - mean_expected) < 1e-3
    # D50 of a solid symmetric about its centre in a linear field: the centre dose (to one sub-pixel step)
    assert abs(d.metrics["D50pct_Gy"] - mean_expected) < 0.4 * 0.25
    # the hottest point: the box corner at the top plane, x at +10 mm, z at the last plane (+9 mm) —
    # cap points above it sit inside the shrunk contour, so are cooler in x than the corner
    hottest = 30.0 + 0.4 * (centre[0] + 10.0) + 0.25 * (centre[2] + 9.0)
    assert d.metrics["Dmax_Gy"] <= hottest + 1e-3 and hottest - d.metrics["Dmax_Gy"] < 0.4 * 0.25 + 0.25 * 1.0


def test_weighted_metrics_by_hand():
    """Samples (Gy, cc): (10, 1), (20, 2), (30, 3), (40, 4): total 10 cc, mean 30 Gy."""
    s = DoseSamples(np.zeros(0), 0.0, np.array([10.0, 20.0, 30.0, 40.0]), np.array([1.0, 2.0, 3.0, 4.0]))
    assert s.total == 10.0 and abs(s.mean - 30.0) < 1e-9
    assert s.hottest(4.0) == 40.0  # the hottest 4 cc all get 40
    assert s.hottest(4.5) == 30.0  # 4.5 cc reaches into the 30 Gy sample
    assert s.hottest(9.5) == 10.0 and math.isnan(s.hottest(10.5))
    assert s.volume_at_least(30.0) == 7.0 and s.volume_at_least(30.01) == 4.0 and s.volume_at_least(0) == 10.0


def test_equal_weights_reproduce_the_voxel_metrics():
    """The same hand values as the voxel method's test: doses 1…100 Gy, 0.5 cc each."""
    doses = np.arange(1, 101, dtype=float)
    spec = DvhSpec(d_percent=(2, 50, 95, 98), d_cc=(1.0, 60.0), v_gy=(50.0,))
    w = compute_weighted_dvh("x", None, None, spec, samples=DoseSamples(doses, 0.5))
    v = compute_dvh("x", doses, 0.5, spec)
    assert w.metrics["D2pct_Gy"] == 99 and w.metrics["D50pct_Gy"] == 51 and w.metrics["D95pct_Gy"] == 6
    assert w.metrics["D98pct_Gy"] == 3 and w.metrics["D1cc_Gy"] == 99 and math.isnan(w.metrics["D60cc_Gy"])
    for k, x in v.metrics.items():
        assert (math.isnan(x) and math.isnan(w.metrics[k])) or abs(w.metrics[k] - x) < 1e-9, k
    assert np.allclose(w.cumulative_cc, v.cumulative_cc)
