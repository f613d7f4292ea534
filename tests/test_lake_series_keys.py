"""The lake files an instance by SeriesNumber, Modality and SeriesDescription taken from the validator's
walk (no second parse). Those values must be what pydicom reads, or scan folders and session manifests
would change between versions (a re-ingested study would land in new folders). Reference: pydicom on
its own test files (real toolkits' output: implicit/explicit VR, big endian, deflate, compressed pixel
data, character sets)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from ingest.stores.lake import _series_keys
from ingest.validate import validate_file

FILES = sorted(Path(get_testdata_file("CT_small.dcm")).parent.glob("*.dcm"))
CHARSETS = sorted((Path(get_testdata_file("CT_small.dcm")).parent.parent / "charset_files").glob("*.dcm"))


@pytest.mark.parametrize("path", FILES + CHARSETS, ids=lambda p: p.name)
def test_series_keys_equal_pydicom(path):
    verdict = validate_file(path)
    if not verdict.ok:
        pytest.skip(f"not a whole instance by the validator's rules: {verdict.check}")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    want = (str(ds.get("SeriesNumber", "") or ""), str(ds.get("Modality", "") or ""),
            str(ds.get("SeriesDescription", "") or ""))
    assert _series_keys(verdict.series_values) == want


def test_some_files_have_each_key():
    """The parametrised comparison is not vacuous."""
    keys = [_series_keys(validate_file(p).series_values) for p in FILES + CHARSETS if validate_file(p).ok]
    assert sum(1 for n, _, _ in keys if n) > 10 and sum(1 for _, m, _ in keys if m) > 10


@pytest.mark.parametrize("path", CHARSETS, ids=lambda p: p.name)
def test_descriptions_in_every_character_set(path, tmp_path):
    """A SeriesDescription in the file's own character set (the patient's name, which the file holds in
    it): decoded as pydicom decodes it."""
    ds = pydicom.dcmread(path)
    if "PatientName" not in ds or not str(ds.PatientName):
        pytest.skip("no text in this file's character set")
    ds.SeriesDescription = str(ds.PatientName).replace("^", " ")[:64]
    ds.SeriesNumber = "3"
    out = tmp_path / path.name
    ds.save_as(out)
    verdict = validate_file(out)
    if not verdict.ok:
        pytest.skip(f"not a whole instance by the validator's rules: {verdict.check}")
    back = pydicom.dcmread(out, stop_before_pixels=True)
    assert _series_keys(verdict.series_values) == ("3", str(back.get("Modality", "") or ""),
                                                   str(back.SeriesDescription))
