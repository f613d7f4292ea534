"""RTSTRUCT → mask accuracy on analytic phantoms, and voxel identity with plastimatch.

Truth comes from two independent places: the exact polygon areas of the written contours
(volume = Σ area × slice spacing, which centre inclusion estimates) with the analytic volume
of the shape, and an independent per-plane rasteriser (matplotlib Path, even-odd by XOR-ing
each contour) for exact voxel sets. The plastimatch CLI (PyPI wheel) is the external reference.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from matplotlib.path import Path as MplPath

from ingest.rt import phantoms as P
from ingest.rt.contours import Contour, Roi, read_structure_set
from ingest.rt.ctseries import read_ct_series
from ingest.rt.rasterise import rasterise_roi


def roi_of(shape: P.Shape) -> Roi:
    return Roi(1, shape.name, contours=[Contour(np.asarray(c), "CLOSED_PLANAR") for c in shape.contours])


def reference_mask(shape: P.Shape, grid) -> np.ndarray:
    """Independent rasteriser: matplotlib point-in-polygon per contour, XOR per plane."""
    nk, ni, nj = grid.shape
    jj, ii = np.meshgrid(np.arange(nj), np.arange(ni))
    centres = np.column_stack([jj.ravel(), ii.ravel()])
    out = np.zeros(grid.shape, bool)
    for c in shape.contours:
        idx = grid.to_index(np.asarray(c))
        k = int(round(float(idx[:, 2].mean())))
        if not 0 <= k < nk:
            continue
        inside = MplPath(idx[:, :2]).contains_points(centres).reshape(ni, nj)
        out[k] ^= inside
    return out


# (volume cc, spacing, tolerance vs polygon volume %, tolerance vs analytic %)
SPHERES = [
    (0.1, (1.0, 1.0, 2.0), 3.0, 6.0),
    (0.1, (0.5, 0.5, 1.0), 1.0, 1.0),
    (1.0, (1.0, 1.0, 2.0), 1.0, 2.0),
    (10.0, (1.0, 1.0, 2.0), 0.5, 0.5),
    (100.0, (1.0, 1.0, 2.0), 0.5, 0.5),
    (2000.0, (1.0, 1.0, 2.0), 0.5, 0.5),
]


@pytest.mark.parametrize("cc,spacing,tol_poly,tol_ana", SPHERES)
def test_sphere_volumes(cc, spacing, tol_poly, tol_ana):
    r = (cc * 1000 * 3 / 4 / math.pi) ** (1 / 3)
    n, nk = int(2 * r / spacing[0]) + 10, int(2 * r / spacing[2]) + 6
    g = P.ct_grid(shape=(nk, n, n), spacing=spacing)
    s = P.sphere(g, "S", [0.31, -0.17, 0.23], r, n_points=128)
    m = rasterise_roi(roi_of(s), g)
    vol = m.voxels * g.voxel_volume_cc
    assert abs(vol / s.polygon_cc - 1) * 100 <= tol_poly
    assert abs(vol / s.analytic_cc - 1) * 100 <= tol_ana
    assert m.warnings == []


def test_supersampling_brings_small_structures_to_polygon_volume():
    r = (0.1 * 1000 * 3 / 4 / math.pi) ** (1 / 3)
    g = P.ct_grid(shape=(8, 16, 16), spacing=(1.0, 1.0, 2.0))
    s = P.sphere(g, "tiny", [0.31, -0.17, 0.23], r, n_points=128)
    fine = g.supersampled(4)
    m = rasterise_roi(roi_of(s), fine)
    assert abs(m.voxels * fine.voxel_volume_cc / s.polygon_cc - 1) < 0.005


@pytest.mark.parametrize("iop", [P.HFS, P.FFS, P.HFDL, P.HFDR], ids=["HFS", "FFS", "HFDL", "HFDR"])
def test_shapes_match_independent_rasteriser(iop):
    g = P.ct_grid(shape=(24, 40, 72), spacing=(0.9, 1.3, 2.5), iop=iop)  # non-square pixels and image
    shapes = [
        P.sphere(g, "sphere", [3.3, -2.1, 1.7], 14.3, n_points=37, phase=0.3),
        P.cylinder(g, "cylinder", [-8.0, 2.0, 0.0], 9.5, 30.0, n_points=29),
        P.cone(g, "cone", [10.0, 0.0, -20.0], 12.0, 40.0, n_points=23),
        P.ring(g, "ring", [5.0, 1.0, 0.0], 20.0, 8.0, 30.0, n_points=51),
        P.box(g, "box", [0.37, 0.21, 0.0], 30.3, 20.7, 20.0),
    ]
    for s in shapes:
        m = rasterise_roi(roi_of(s), g)
        ref = reference_mask(s, g)
        assert ref.sum() > 0
        assert np.array_equal(m.full(), ref), s.name
        assert abs(m.voxels * g.voxel_volume_cc / s.polygon_cc - 1) < 0.03, s.name


def test_ring_hole_stays_empty():
    g = P.ct_grid(shape=(10, 64, 64), spacing=(1.0, 1.0, 2.0))
    s = P.ring(g, "ring", [0.0, 0.0, 0.0], 20.0, 10.0, 10.0)
    m = rasterise_roi(roi_of(s), g).full()
    centre_k = 5
    idx = g.to_index(np.array([[0.0, 0.0, 0.0]]))[0]
    ci, cj = int(round(idx[1])), int(round(idx[0]))
    assert not m[centre_k, ci - 5 : ci + 6, cj - 5 : cj + 6].any()  # inside the hole
    assert m[centre_k, ci, cj + 15]  # in the wall


def test_contours_beyond_the_image_are_clipped_not_dropped():
    tall = P.ct_grid(shape=(40, 60, 60), spacing=(1.0, 1.0, 2.0))
    s = P.sphere(tall, "big", [25.0, 0.0, 25.0], 30.0, n_points=64)  # off the right edge and top
    g = P.ct_grid(shape=(24, 40, 40), spacing=(1.0, 1.0, 2.0), origin=tall.origin + np.array([10.0, 10.0, 16.0]))
    m = rasterise_roi(roi_of(s), g)
    assert m.voxels > 0
    assert any("beyond the first/last CT slice" in w for w in m.warnings)
    assert any("outside the image in-plane" in w for w in m.warnings)
    assert np.array_equal(m.full(), reference_mask(s, g))


def test_rounded_contour_z_matches_slices_within_tolerance():
    # CT positions with 4 decimals, contour z rounded to 0.01 mm (what TPS exports do).
    g = P.ct_grid(shape=(12, 40, 40), spacing=(1.0, 1.0, 2.0), origin=(-19.5, -19.5, -11.3217))
    s = P.sphere(g, "S", [0.3, 0.1, 0.0], 10.0, n_points=61)
    rounded = P.Shape(s.name, [np.round(c, 2) for c in s.contours], s.analytic_cc, s.polygon_cc)
    m = rasterise_roi(roi_of(rounded), g)
    assert m.warnings == []  # 0.0017 mm off is within the plane tolerance
    assert m.n_planes == len(s.contours)
    far = P.Shape(s.name, [c + 0.4 * g.normal for c in s.contours], 0, 0)
    m2 = rasterise_roi(roi_of(far), g)
    assert any("mm from a CT slice" in w for w in m2.warnings)
    assert np.array_equal(m2.full(), rasterise_roi(roi_of(s), g).full())


def test_degenerate_structures_report_why():
    g = P.ct_grid(shape=(10, 32, 32), spacing=(1.0, 1.0, 2.0))
    two_points = Roi(1, "line", contours=[Contour(np.array([[0, 0, 0], [5, 5, 0.0]]), "CLOSED_PLANAR")])
    point = Roi(2, "iso", contours=[Contour(np.array([[0, 0, 0.0]]), "POINT")])
    for roi in (two_points, point):
        m = rasterise_roi(roi, g)
        assert m.voxels == 0 and any("no closed planar contour" in w for w in m.warnings)
    on_slice_5 = g.to_physical(np.array([[16.0, 16.0, 5.0]]))[0]
    single = P.cylinder(g, "one-plane", on_slice_5, 6.0, 0.5)
    assert len(single.contours) == 1
    m = rasterise_roi(roi_of(single), g)
    assert m.voxels > 0 and any("single contour plane" in w for w in m.warnings)


def _plastimatch_masks(exe: Path, ps: P.PhantomSet, work: Path) -> dict[str, np.ndarray]:
    ctdir = work / "ct"
    ctdir.mkdir(parents=True)
    for f in ps.files["CT"]:
        shutil.copy(f, ctdir)
    subprocess.run(
        [str(exe), "convert", "--input", str(ps.files["RTSTRUCT"][0]), "--referenced-ct", str(ctdir),
         "--output-prefix", str(work / "pm"), "--prefix-format", "nrrd", "--xor-contours"],
        check=True, capture_output=True, timeout=120,
    )
    return {p.stem: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) > 0 for p in (work / "pm").glob("*.nrrd")}


@pytest.mark.parametrize("case", ["square", "non-square", "decubitus", "feet-first", "rounded-z"])
def test_masks_voxel_identical_to_plastimatch(case, tmp_path, plastimatch_exe):
    kw = {}
    if case == "square":
        g = P.ct_grid(shape=(24, 64, 64), spacing=(1.0, 1.0, 2.0))
    elif case == "non-square":
        g = P.ct_grid(shape=(30, 48, 80), spacing=(0.9, 1.3, 2.5))
    elif case == "decubitus":
        g = P.ct_grid(shape=(24, 64, 64), spacing=(1.0, 1.0, 2.0), iop=P.HFDL)
    elif case == "feet-first":
        g = P.ct_grid(shape=(24, 56, 64), spacing=(1.0, 1.0, 2.0), iop=P.FFS)
    else:
        g = P.ct_grid(shape=(20, 40, 40), spacing=(1.0, 1.0, 2.0), origin=(-19.5, -19.5, -19.3217))
        kw["contour_z_decimals"] = 2
    shapes = [
        P.sphere(g, "Sphere", [3.3, -2.1, 1.7], 14.3, n_points=37, phase=0.3),
        P.ring(g, "Ring", [5.0, 1.0, 0.0], 17.0, 7.0, 20.0, n_points=51),
        P.cone(g, "Cone", [-6.0, 0.0, -16.0], 9.0, 30.0, n_points=23),
        P.box(g, "Box", [0.37, 0.21, 0.0], 24.3, 14.7, 16.0),
        P.sphere(g, "Small", [-9.1, 8.3, 4.1], 2.2, n_points=17),
    ]
    if case in ("square", "decubitus"):
        # Corners exactly on pixel centres (1 mm pixels: exact in float32 too): ties must agree.
        corner = g.to_physical(np.array([[10.0, 12.0, 4.0]]))[0]
        centre = corner + 4.0 * g.row_dir + 3.0 * g.col_dir
        shapes.append(P.box(g, "TieBox", centre, 8.0, 6.0, 6 * g.spacing[2]))
    ps = P.write_phantom(tmp_path / "dcm", g, shapes, patient=case, **kw)
    pm = _plastimatch_masks(plastimatch_exe, ps, tmp_path / "pm")
    ct = read_ct_series(ps.files["CT"])
    ss = read_structure_set(ps.files["RTSTRUCT"][0])
    assert len(ss.rois) == len(shapes)
    for roi in ss.rois:
        ours = rasterise_roi(roi, ct.grid).full()
        if roi.name == "TieBox":  # (left, right] × [top, bottom) spans
            assert ours.sum(axis=(1, 2)).max() == 8 * 6, case
        assert pm[roi.name].shape == ours.shape
        assert ours.sum() > 0
        assert int((ours != pm[roi.name]).sum()) == 0, f"{case}/{roi.name}"


def test_rtset_course_masks_identical_to_plastimatch(tmp_path, plastimatch_exe):
    """The demo engineer's synthetic H&N course, converted by both."""
    from ingest.synth.rtset import write_rt_set

    info = write_rt_set(tmp_path / "course", "PM", layout="flat", seed=3, shape=(20, 64, 64), spacing=(2.5, 2.0, 2.0))
    ps = P.PhantomSet(tmp_path / "course", None, [], None, None,
                      files={"CT": list(info.ct_paths), "RTSTRUCT": [info.rtstruct_path]})
    pm = _plastimatch_masks(plastimatch_exe, ps, tmp_path / "pm")
    ct = read_ct_series(list(info.ct_paths))
    ss = read_structure_set(info.rtstruct_path)
    for roi in ss.rois:
        ours = rasterise_roi(roi, ct.grid).full()
        assert ours.sum() > 0
        assert int((ours != pm[roi.name]).sum()) == 0, roi.name


@pytest.mark.parametrize("syntax", ["explicit", "implicit"])
def test_fast_contour_parsing_agrees_with_pydicom(tmp_path, syntax):
    import pydicom
    from pydicom.uid import ImplicitVRLittleEndian

    g = P.ct_grid(shape=(10, 32, 32), spacing=(1.0, 1.0, 2.0))
    ps = P.write_phantom(tmp_path / "d", g, [P.sphere(g, "S", [0.1, 0.2, 0.0], 8.0), P.ring(g, "R", [0, 0, 0], 12, 5, 10)])
    path = ps.files["RTSTRUCT"][0]
    if syntax == "implicit":
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        path = tmp_path / "rs_implicit.dcm"
        ds.save_as(path, enforce_file_format=True)
    ours = read_structure_set(path)
    ref = pydicom.dcmread(path)
    # The raw-bytes walker (the fast path) reads these items itself, without falling back.
    from pydicom.tag import Tag

    from ingest.rt import rawseq

    raw = pydicom.dcmread(path).ROIContourSequence[1].get_item(Tag(0x3006, 0x0040))
    walked = rawseq.contour_items(bytes(raw.value), raw.is_implicit_VR)
    assert len(walked) == len(ref.ROIContourSequence[1].ContourSequence) and walked[0][1] == "CLOSED_PLANAR"
    for roi, rc in zip(ours.rois, ref.ROIContourSequence):
        for c, item in zip(roi.contours, rc.ContourSequence):
            assert np.array_equal(c.points, np.array([float(v) for v in item.ContourData]).reshape(-1, 3))
            assert c.geometric_type == item.ContourGeometricType
            assert c.image_uids == tuple(x.ReferencedSOPInstanceUID for x in item.ContourImageSequence)
