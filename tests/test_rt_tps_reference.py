"""Reading the DVHs a planning system stored in its RTDOSE (ingest.rt.tps_reference).

The real file is Eclipse's (dicompyler-core's example breast plan, tests/data/rt_eclipse):
the expected values are the numbers in its DVHSequence, read by hand with pydicom, put
through the rules of notes/dvh.md (stated values in % of the 14 Gy prescription, cumulative
volume i at the centre of bin i). The synthetic items cover what that file does not: cGy,
relative doses, DVHDoseScaling, differential curves, percent volumes, composites.
"""

from __future__ import annotations

import math

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from ingest.rt.tps_reference import read_stored_dvhs
from tests.fixtures.rt import dvh_roi_refs, eclipse_breast


@pytest.fixture(scope="module")
def breast(tmp_path_factory):
    return eclipse_breast(tmp_path_factory.mktemp("breast"))


def test_eclipse_breast_dvhs_read_as_eclipse_meant(breast):
    ds = pydicom.dcmread(breast["rtdose_header"])
    got = read_stored_dvhs(ds, [14.0, 11.3113869239676])  # the plan's two TARGET doses
    assert got.plan_uids == ("1.2.246.352.71.5.320687012.24189.20090603083342",)
    assert sorted(got.dvhs) == [1, 3, 4, 5, 6, 7, 8, 9, 10]  # ROI 2 (Areola) has no contours, so no DVH
    assert got.skipped == []  # the −2.9e-13 cc curve ends are rounding, not errors
    assert got.stated_scale == "% of the 14 Gy prescription"
    tb = got.dvhs[9]  # Tumor Bed: 1458 bins of 0.01 Gy
    assert tb.bin_width_gy == 0.01 and tb.volume_units == "CM3" and tb.kind == "CUMULATIVE"
    assert tb.first_volume == 12.8091805493386
    assert abs(tb.dose_gy[0] - 0.005) < 1e-12 and abs(tb.dose_gy[-1] - 14.575) < 1e-9  # bin centres
    assert abs(tb.stated_mean_gy - 102.076111745527 * 0.14) < 1e-12
    assert abs(tb.stated_max_gy - 104.066121885219 * 0.14) < 1e-12
    assert abs(tb.stated_min_gy - 100.508725207252 * 0.14) < 1e-12
    body = got.dvhs[1]
    assert body.volume[0] == 13944.4228874521 and body.volume[1] == 11996.0667335077
    assert abs(body.stated_mean_gy - 3.29907450685977 * 0.14) < 1e-12
    borders = got.dvhs[3]
    assert borders.volume[-1] == 0.0 and len(borders.volume) == 16
    # the curve's own mean agrees with the stated one for a structure well above half a bin
    assert abs(tb.curve_mean_gy() - tb.stated_mean_gy) < 0.01


def test_without_the_prescription_the_stated_values_are_not_guessed(breast):
    got = read_stored_dvhs(pydicom.dcmread(breast["rtdose_header"]), [])
    assert "match no prescription" in got.stated_scale
    assert all(d.stated_mean_gy is None for d in got.dvhs.values())


def _item(roi, data, kind="CUMULATIVE", units="GY", vunits="CM3", scaling=None, mean=None, rois=None):
    it = Dataset()
    it.DVHType = kind
    it.DoseUnits = units
    it.DoseType = "PHYSICAL"
    it.DVHVolumeUnits = vunits
    if scaling is not None:
        it.DVHDoseScaling = scaling
    it.DVHNumberOfBins = len(data) // 2
    it.DVHData = [f"{v:g}" for v in data]
    it.DVHReferencedROISequence = dvh_roi_refs(rois or [roi])
    if mean is not None:
        it.DVHMeanDose = f"{mean:g}"
    return it


def _dose(items, norm=None):
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3.4"
    if norm is not None:
        ds.DVHNormalizationDoseValue = norm
    ds.DVHSequence = Sequence(items)
    return ds


def test_units_scaling_and_curve_types_by_hand():
    uniform = [1.0, 10.0] * 30 + [1.0, 0.0]  # 10 cc at exactly 30 Gy, 1 Gy bins: 30 full bins then none
    ds = _dose([
        _item(1, uniform, mean=30.0),  # stated in Gy
        _item(2, [100.0, 10.0, 100.0, 8.0, 100.0, 5.0, 100.0, 0.0], units="CGY"),
        _item(3, [2.0, 10.0, 2.0, 8.0, 2.0, 0.0], units="RELATIVE"),  # 2 % of 50 Gy = 1 Gy bins
        _item(4, [2.0, 10.0, 2.0, 8.0, 2.0, 0.0], scaling="0.5"),
        _item(5, [1.0, 2.0, 1.0, 3.0, 1.0, 5.0], kind="DIFFERENTIAL"),
        _item(6, [1.0, 100.0, 1.0, 40.0, 1.0, 0.0], vunits="PERCENT"),
        _item(7, [1.0, 1.0], rois=[7, 8]),
        _item(9, [1.0, 1.0], kind="NATURAL"),
    ], norm=50.0)
    got = read_stored_dvhs(ds, [60.0])
    assert got.stated_scale == "Gy" and got.dvhs[1].stated_mean_gy == 30.0
    u = got.dvhs[1]
    assert u.first_volume == 10.0 and abs(u.curve_mean_gy() - 30.0) < 1e-9
    # linear between the 29.5 Gy (10 cc) and 30.5 Gy (0 cc) points: 9.5 cc at 29.55 Gy (within a bin of 30)
    assert abs(u.dose_at_volume(0.95) - 29.55) < 1e-9
    for roi in (2, 3, 4):  # three spellings of 1 Gy bins with 10, 8 (and 5) cc at their centres
        d = got.dvhs[roi]
        assert np.allclose(d.dose_gy[:3], [0.5, 1.5, 2.5]) and d.volume[1] == 8.0, roi
    diff = got.dvhs[5]  # differential: volume per bin, so cumulative at the lower edges
    assert np.allclose(diff.dose_gy, [0, 1, 2]) and np.allclose(diff.volume, [10, 8, 5])
    assert got.dvhs[6].volume_units == "PERCENT"
    assert 7 not in got.dvhs and 9 not in got.dvhs
    assert any("composite" in s for s in got.skipped) and any("NATURAL" in s for s in got.skipped)


def test_relative_dose_without_normalisation_is_skipped_with_the_reason():
    got = read_stored_dvhs(_dose([_item(3, [2.0, 10.0, 2.0, 0.0], units="RELATIVE")]), [])
    assert got.dvhs == {} and "DVHNormalizationDoseValue" in got.skipped[0]


def test_no_dvh_sequence_means_nothing_to_check():
    ds = Dataset()
    ds.SOPInstanceUID = "1.2"
    assert read_stored_dvhs(ds, [50.0]) is None


def test_significantly_negative_volumes_are_refused():
    got = read_stored_dvhs(_dose([_item(1, [1.0, 10.0, 1.0, -2.0])]), [])
    assert got.dvhs == {} and "negative" in got.skipped[0]
    assert math.isnan(read_stored_dvhs(_dose([_item(2, [1.0, 0.0])]), []).dvhs[2].curve_mean_gy())
