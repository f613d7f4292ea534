"""Dose reading/resampling against an independent interpolator, and DVH metrics against
closed-form values on analytic phantoms with linear dose fields."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.interpolate import RegularGridInterpolator
from scipy.optimize import brentq

from ingest.rt import phantoms as P
from ingest.rt.convert import ConvertOptions, PatientJob, convert_patient
from ingest.rt.dose import Dose, DoseInfo, read_dose, resample_to
from ingest.rt.dvh import DvhSpec, compute_dvh
from ingest.rt.geometry import Grid
from ingest.rt.verify import RtConversionError


def _centres(grid: Grid) -> np.ndarray:
    nk, ni, nj = grid.shape
    kk, ii, jj = np.meshgrid(np.arange(nk), np.arange(ni), np.arange(nj), indexing="ij")
    return grid.to_physical(np.column_stack([jj.ravel(), ii.ravel(), kk.ravel()]).astype(float))


@pytest.mark.parametrize("iop", [P.HFS, P.HFDL], ids=["HFS", "HFDL"])
def test_resampling_matches_scipy_at_ct_voxel_centres(iop):
    rng = np.random.default_rng(5)
    ct = P.ct_grid(shape=(18, 40, 52), spacing=(0.9, 1.1, 2.0), iop=iop)
    dg = Grid(origin=ct.origin + 3.17 * ct.row_dir + 2.71 * ct.col_dir + 4.3 * ct.normal,
              row_dir=ct.row_dir, col_dir=ct.col_dir, spacing=(2.5, 3.0, 2.2), shape=(14, 13, 17))
    gy = rng.uniform(0, 70, dg.shape).astype(np.float32)
    dose = Dose(DoseInfo("1.2.3", "", "PLAN", (), Path("x")), dg, gy)
    ours = resample_to(dose, ct)
    # Independent: scipy trilinear in the dose grid's index space, 0 outside the centre hull.
    rgi = RegularGridInterpolator((np.arange(dg.shape[0]), np.arange(dg.shape[1]), np.arange(dg.shape[2])),
                                  gy.astype(np.float64), bounds_error=False, fill_value=0.0)
    idx = dg.to_index(_centres(ct))  # (j, i, k)
    ref = rgi(idx[:, ::-1]).reshape(ct.shape)
    inside = ref > 0
    assert inside.sum() > 1000 and (~inside).sum() > 1000  # both regions are exercised
    assert np.max(np.abs(ours - ref)) < 1e-3


def test_read_dose_applies_scaling_and_geometry(tmp_path):
    ct = P.ct_grid(shape=(10, 32, 32), spacing=(1.0, 1.0, 2.0))
    dg = P.standard_dose_grid(ct, (2.5, 2.5, 2.5), margin=3.0)
    fn = P.linear_dose([20.0, 0.0, 0.0, 0.0], [0.3, -0.2, 0.1])
    P.write_dose(tmp_path / "RD.dcm", dg, fn, "P", "1.2", "1.3", "1.4", "1.5", None, scaling=2e-5)
    d = read_dose(tmp_path / "RD.dcm", expected_for="1.5")
    assert d.grid.shape == dg.shape
    assert np.allclose(d.grid.origin, dg.origin, atol=1e-3)
    assert np.allclose(d.gy, np.clip(P.dose_values(dg, fn), 0, None), atol=2e-5)
    # SimpleITK's own reader agrees on the geometry (notes/rt.md: it reads GFOV correctly).
    img = sitk.ReadImage(str(tmp_path / "RD.dcm"))
    assert np.allclose(img.GetOrigin(), d.grid.origin, atol=1e-3)
    assert np.allclose(img.GetSpacing(), d.grid.spacing, atol=1e-4)


@pytest.mark.parametrize(
    "kw,code,text",
    [
        ({"scaling": None}, "XVI_EXEC_002", "no DoseGridScaling"),
        ({"units": "RELATIVE"}, "XVI_EXEC_002", "not GY"),
    ],
)
def test_unusable_doses_are_refused_with_reason(tmp_path, kw, code, text):
    ct = P.ct_grid(shape=(6, 16, 16))
    dg = P.standard_dose_grid(ct)
    P.write_dose(tmp_path / "RD.dcm", dg, P.linear_dose([1, 0, 0, 0], [0, 0, 0]), "P", "1.2", "1.3", "1.4", "1.5", None, **kw)
    with pytest.raises(RtConversionError) as e:
        read_dose(tmp_path / "RD.dcm")
    assert e.value.code == code and text in str(e.value)


def test_dose_in_another_frame_of_reference_is_refused(tmp_path):
    ct = P.ct_grid(shape=(6, 16, 16))
    P.write_dose(tmp_path / "RD.dcm", P.standard_dose_grid(ct), P.linear_dose([1, 0, 0, 0], [0, 0, 0]),
                 "P", "1.2", "1.3", "1.4", "1.5", None)
    with pytest.raises(RtConversionError, match="differs from the CT"):
        read_dose(tmp_path / "RD.dcm", expected_for="9.9.9")


def test_dvh_metric_conventions_by_hand():
    # 100 voxels of 0.5 cc with doses 1..100 Gy.
    d = compute_dvh("x", np.arange(1, 101, dtype=float), 0.5, DvhSpec(d_percent=(2, 50, 95, 98), d_cc=(1.0, 60.0), v_gy=(50.0,)))
    m = d.metrics
    assert m["volume_cc"] == 50.0
    assert m["Dmean_Gy"] == 50.5 and m["Dmin_Gy"] == 1 and m["Dmax_Gy"] == 100
    assert m["D2pct_Gy"] == 99  # hottest 2 % = 2 voxels (100, 99): their minimum
    assert m["D50pct_Gy"] == 51
    assert m["D95pct_Gy"] == 6 and m["D98pct_Gy"] == 3  # D98 < D95 < D50 < D2 (PDCP had this inverted)
    assert m["D1cc_Gy"] == 99  # 1 cc = the 2 hottest voxels
    assert math.isnan(m["D60cc_Gy"])  # more than the structure holds
    assert m["V50Gy_cc"] == 25.5 and m["V50Gy_pct"] == 51.0
    assert d.cumulative_cc[0] == 50.0 and abs(d.differential_cc.sum() - 50.0) < 1e-9


def _read_dvh(folder: Path) -> dict[str, dict[str, str]]:
    with open(folder / "dvh.csv", newline="") as fh:
        return {r["roi"]: r for r in csv.DictReader(fh)}


def test_dvh_metrics_match_closed_forms(tmp_path):
    """Linear dose D = 20 + 0.5·x (Gy, x in mm) over a sphere and a box (voxel method)."""
    g = P.ct_grid(shape=(36, 80, 80), spacing=(1.0, 1.0, 2.0))
    R, xc = 20.0, 3.0
    W, bxc = 30.0, -4.0
    shapes = [P.sphere(g, "Sphere", [xc, 0.2, 0.0], R, n_points=180), P.box(g, "Box", [bxc, 1.1, 0.0], W, 20.0, 30.0)]
    grad = 0.5
    ps = P.write_phantom(tmp_path / "in", g, shapes, dose_grid=P.standard_dose_grid(g, (2.5, 2.5, 2.5), margin=5.0),
                         dose_fn=P.linear_dose([20.0, 0.0, 0.0, 0.0], [grad, 0.0, 0.0]), dose_scaling=1e-5)
    res = convert_patient(PatientJob("A", [str(p) for fs in ps.files.values() for p in fs], str(tmp_path / "out")),
                          ConvertOptions(previews=False, html=False, dvh=DvhSpec(v_gy=(20.0, 22.0)), dvh_method="voxel"))
    assert res.status == "SUCCESS", res.failures
    rows = _read_dvh(tmp_path / "out" / "A")
    dose = lambda x: 20.0 + grad * x  # noqa: E731
    tol = grad * 1.0  # one CT pixel of gradient

    s = {k: float(v) for k, v in rows["Sphere"].items() if k not in ("patient", "study_uid", "roi", "warnings", "dvh_method") and v}
    frac_hotter = lambda h: h * h * (3 * R - h) / (4 * R**3)  # noqa: E731 - cap of height h
    def d_x(pct):  # dose whose hotter cap holds pct % of the sphere
        h = brentq(lambda h: frac_hotter(h) - pct / 100, 0, 2 * R)
        return dose(xc + R - h)
    assert abs(s["volume_cc"] - 4 / 3 * math.pi * R**3 / 1000) / (4 / 3 * math.pi * R**3 / 1000) < 0.01
    assert abs(s["Dmean_Gy"] - dose(xc)) < 0.05
    for pct in (2, 50, 95, 98):
        assert abs(s[f"D{pct}pct_Gy"] - d_x(pct)) < tol, pct
    assert abs(s["Dmax_Gy"] - dose(xc + R)) < tol and abs(s["Dmin_Gy"] - dose(xc - R)) < tol
    h22 = xc + R - (22.0 - 20.0) / grad
    assert abs(s["V22Gy_pct"] - 100 * frac_hotter(h22)) < 1.5

    b = {k: float(v) for k, v in rows["Box"].items() if k not in ("patient", "study_uid", "roi", "warnings", "dvh_method") and v}
    x0 = bxc - W / 2
    assert abs(b["volume_cc"] / shapes[1].polygon_cc - 1) < 0.01  # slab convention: 16 planes × 2 mm
    assert abs(b["Dmean_Gy"] - dose(bxc)) < 0.05
    for pct in (2, 50, 95, 98):
        assert abs(b[f"D{pct}pct_Gy"] - dose(x0 + (1 - pct / 100) * W)) < tol, pct
    assert abs(b["V20Gy_pct"] - 100 * (x0 + W - 0.0) / W) < 100 * 1.0 / W + 1e-9


def test_supersampling_small_structure_dvh(tmp_path):
    g = P.ct_grid(shape=(12, 40, 40), spacing=(1.0, 1.0, 2.0))
    r = (0.2 * 1000 * 3 / 4 / math.pi) ** (1 / 3)
    s = P.sphere(g, "Tiny", [0.37, -0.21, 0.0], r, n_points=64)
    ps = P.write_phantom(tmp_path / "in", g, [s], dose_grid=P.standard_dose_grid(g, (2.5, 2.5, 2.5), margin=5.0),
                         dose_fn=P.linear_dose([30.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0]))
    files = [str(p) for fs in ps.files.values() for p in fs]
    out = {}
    for f in (1, 4):
        res = convert_patient(PatientJob(f"S{f}", files, str(tmp_path / "out")),
                              ConvertOptions(previews=False, html=False, supersample=f, supersample_below_cc=1.0,
                                             dvh_method="voxel"))
        assert res.status == "SUCCESS"
        out[f] = _read_dvh(tmp_path / "out" / f"S{f}")["Tiny"]
    assert out[4]["supersample"] == "4" and out[1]["supersample"] == "1"
    err = {f: abs(float(out[f]["volume_cc"]) / s.polygon_cc - 1) for f in out}
    assert err[4] < 0.01 and err[4] <= err[1]
    assert abs(float(out[4]["Dmean_Gy"]) - (30.0 - 0.21)) < 0.05


def test_resampling_between_different_orientations_matches_scipy():
    """A dose grid not in the CT's orientation goes through the general (SimpleITK) path."""
    rng = np.random.default_rng(9)
    ct = P.ct_grid(shape=(12, 30, 34), spacing=(1.1, 0.9, 2.0), iop=P.HFDL)
    hfs = P.ct_grid(shape=(1, 1, 1), iop=P.HFS)
    dg = Grid(origin=np.array([-25.3, -22.1, -16.7]), row_dir=hfs.row_dir, col_dir=hfs.col_dir,
              spacing=(2.5, 2.0, 3.0), shape=(8, 15, 13))
    gy = rng.uniform(0, 60, dg.shape).astype(np.float32)
    dose = Dose(DoseInfo("1.2.3", "", "PLAN", (), Path("x")), dg, gy)
    ours = resample_to(dose, ct)
    rgi = RegularGridInterpolator((np.arange(dg.shape[0]), np.arange(dg.shape[1]), np.arange(dg.shape[2])),
                                  gy.astype(np.float64), bounds_error=False, fill_value=0.0)
    ref = rgi(dg.to_index(_centres(ct))[:, ::-1]).reshape(ct.shape)
    assert (ref > 0).sum() > 500 and (ref == 0).sum() > 500
    assert np.max(np.abs(ours - ref)) < 1e-3
