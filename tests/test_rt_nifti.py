"""The NIfTI files: CT geometry and values against SimpleITK's own DICOM series reader, masks
on the CT grid in all three layouts, dose on the CT grid, previews and the HTML page."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from ingest.cli import app
from ingest.rt import phantoms as P
from ingest.rt.convert import ConvertOptions, PatientJob, convert_patient
from ingest.rt.report_html import svg_curve_ids


@pytest.fixture(scope="module")
def decubitus_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("nifti")
    g = P.ct_grid(shape=(16, 40, 56), spacing=(0.8, 1.2, 2.5), iop=P.HFDR)
    shapes = [P.sphere(g, "Big", [2.0, 1.0, 0.0], 12.0), P.sphere(g, "Inner", [2.0, 1.0, 0.0], 5.0),
              P.ring(g, "Tube", [-8.0, 0.0, 0.0], 9.0, 4.0, 20.0)]
    rng = np.random.default_rng(3)
    hu = rng.integers(-1000, 1500, g.shape).astype(np.int16)
    ps = P.write_phantom(root / "in", g, shapes, hu=hu, dose_grid=P.standard_dose_grid(g, (2.0, 2.0, 2.5), margin=4.0),
                         dose_fn=P.linear_dose([40.0, 0.0, 0.0, 0.0], [0.5, -0.3, 0.2]))
    files = [str(p) for fs in ps.files.values() for p in fs]
    outs = {}
    for mode in ("per-roi", "labelmap", "bitmask"):
        res = convert_patient(PatientJob(mode, files, str(root / "out")), ConvertOptions(mask_mode=mode, force=True))
        assert res.status == "SUCCESS", res.failures
        outs[mode] = root / "out" / mode
    return ps, hu, outs


def test_ct_matches_simpleitk_series_reader(decubitus_set):
    ps, hu, outs = decubitus_set
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in ps.files["CT"]])
    ref = reader.Execute()
    ours = sitk.ReadImage(str(outs["per-roi"] / "ct.nii.gz"))
    assert np.allclose(ours.GetOrigin(), ref.GetOrigin(), atol=1e-3)
    assert np.allclose(ours.GetSpacing(), ref.GetSpacing(), atol=1e-4)
    assert np.allclose(ours.GetDirection(), ref.GetDirection(), atol=1e-5)
    assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(ref))
    assert np.array_equal(sitk.GetArrayFromImage(ours), hu)


def test_mask_layouts_agree_and_sit_on_the_ct_grid(decubitus_set):
    _, _, outs = decubitus_set
    ct = sitk.ReadImage(str(outs["per-roi"] / "ct.nii.gz"))
    per = {}
    for name in ("Big", "Inner", "Tube"):
        img = sitk.ReadImage(str(outs["per-roi"] / "masks" / f"{name}.nii.gz"))
        assert img.GetSize() == ct.GetSize() and np.allclose(img.GetOrigin(), ct.GetOrigin())
        assert np.allclose(img.GetDirection(), ct.GetDirection())
        per[name] = sitk.GetArrayFromImage(img).astype(bool)
        assert per[name].any()
    bits = sitk.GetArrayFromImage(sitk.ReadImage(str(outs["bitmask"] / "masks_bitmask.nii.gz"))).astype(np.uint64)
    legend = json.loads((outs["bitmask"] / "masks_bitmask.json").read_text())
    for key, name in legend.items():
        n = np.uint64(int(key[3:]))
        assert np.array_equal(((bits >> n) & np.uint64(1)).astype(bool), per[name])
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(outs["labelmap"] / "masks_labelmap.nii.gz")))
    legend = {v: int(k) for k, v in json.loads((outs["labelmap"] / "masks_labelmap.json").read_text()).items()}
    assert np.array_equal(labels == legend["Inner"], per["Inner"])  # the smaller structure wins overlaps
    for name, lab in legend.items():
        assert not ((labels == lab) & ~per[name]).any()  # a label only where its structure is
    assert np.array_equal(labels > 0, per["Big"] | per["Inner"] | per["Tube"])


def test_dose_previews_and_page(decubitus_set):
    ps, _, outs = decubitus_set
    folder = outs["per-roi"]
    dose = sitk.ReadImage(str(folder / "dose.nii.gz"))
    ct = sitk.ReadImage(str(folder / "ct.nii.gz"))
    assert dose.GetSize() == ct.GetSize() and np.allclose(dose.GetOrigin(), ct.GetOrigin())
    arr = sitk.GetArrayFromImage(dose)
    # The linear field at the centre voxel of the CT, in Gy.
    k, i, j = (np.array(arr.shape) // 2)
    p = np.array(ct.TransformIndexToPhysicalPoint((int(j), int(i), int(k))))
    assert abs(arr[k, i, j] - (40.0 + p @ np.array([0.5, -0.3, 0.2]))) < 1e-3
    for name in ("Big", "Inner", "Tube"):
        png = (folder / "previews" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    page = (folder / "report.html").read_text()
    # three previews as PNG; the DVH plot is inline SVG with one toggleable curve per structure
    assert page.count("data:image/png;base64,") == 3 and "D95pct_Gy" in page and "SUCCESS" in page
    assert page.count("<svg") == 1 and sorted(set(svg_curve_ids(page))) == ["series-0", "series-1", "series-2"]
    assert page.count("onchange='dvhToggle(") == 3


def test_rt_link_command_shows_the_course(decubitus_set):
    ps, _, _ = decubitus_set
    res = CliRunner().invoke(app, ["rt", "link", str(ps.folder)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["status"] == "LINKED" and out["rtplan_approval"] == "APPROVED"
    assert out["images_summary"]["number_of_CT_instances"] == 16
