"""ingest/validate.py against files real toolkits wrote and against cases built from the standard.

1. pydicom's own test files (written by DCMTK, GDCM, pydicom and others; described in their
   README.txt): each expectation below was written by hand from that README and the rule, e.g.
   `MR_truncated.dcm` is cut inside its Pixel Data, `SC_rgb_jpeg.dcm` declares JPEG Baseline but its
   data set is implicit VR (pydicom warns "Expected explicit VR, but found implicit VR").
2. Cases from PS3.5: bit-packed BitsAllocated 1, odd lengths padded to even, YBR_FULL_422, multi-frame,
   Basic Offset Table, fragments per frame, codec markers, deflate, UID syntax.
3. The bad-input corpus (tests/data/badinput): every DICOM file it says must be rejected is refused.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless)

from ingest.validate import CHECKS, valid_uid, validate_bytes, validate_file
from tests.damaged_corpus import with_meta

# file -> expected check (None = whole and well-formed), and why (from pydicom's README and the rule)
PYDICOM_FILES = {
    "CT_small.dcm": (None, "plain explicit VR little endian CT"),
    "MR_small.dcm": (None, "explicit VR little endian MR"),
    "MR_small_implicit.dcm": (None, "implicit VR little endian"),
    "MR_small_bigendian.dcm": (None, "explicit VR big endian"),
    "MR_small_RLE.dcm": (None, "RLE Lossless, one fragment per frame"),
    "MR_small_jp2klossless.dcm": (None, "JPEG 2000 lossless"),
    "MR_small_jpeg_ls_lossless.dcm": (None, "JPEG-LS lossless"),
    "JPEG-lossy.dcm": (None, "JPEG extended"),
    "JPEG2000.dcm": (None, "JPEG 2000"),
    "JPEG2000-embedded-sequence-delimiter.dcm": (None, "README: delimiter bytes inside the fragment data; "
                                                       "the DICOM structure is valid"),
    "SC_rgb_rle_2frame.dcm": (None, "RLE, 2 frames, 3 samples"),
    "SC_rgb_rle_32bit_2frame.dcm": (None, "RLE, 32-bit, 2 frames"),
    "SC_rgb_small_odd.dcm": (None, "RGB of an odd size"),
    "SC_ybr_full_422_uncompressed.dcm": (None, "native YBR_FULL_422: 2 samples a pixel in the data"),
    "SC_rgb_jpeg_dcmtk.dcm": (None, "DCMTK JPEG baseline"),
    "SC_rgb_jpeg_gdcm.dcm": (None, "GDCM JPEG lossless"),
    "liver_1frame.dcm": (None, "multi-frame source, one frame"),
    "rtdose.dcm": (None, "README: implicit VR; file meta SOP Instance UID differs from the data set's "
                         "(tolerated: a rewritten data set)"),
    "rtdose_rle.dcm": (None, "README: RLE by GDCM's gdcmconv, which leaves SOPClassUID as VR UN (tolerated)"),
    "image_dfl.dcm": (None, "README: deflated (D. Clunie's sample; 8 trailer bytes after the deflate stream)"),
    "waveform_ecg.dcm": (None, "no pixel data at all"),
    "MR_truncated.dcm": ("truncated", "README: truncated Pixel Data"),
    "rtplan_truncated.dcm": ("truncated", "README: truncated"),
    "SC_rgb_jpeg.dcm": ("encoding", "meta says JPEG Baseline; the data set is implicit VR"),
    "MR_small_padded.dcm": ("pixel_data", "128 bytes beyond Rows x Columns: cannot be told from a wrong Rows"),
    "badVR.dcm": ("pixel_data", "NumberOfFrames '1A' is not a number"),
    "no_meta.dcm": ("preamble", "no preamble, no file meta"),
    "ExplVR_LitEndNoMeta.dcm": ("preamble", "no preamble, no file meta"),
    "meta_missing_tsyntax.dcm": ("file_meta", "README: no Transfer Syntax UID"),
    "JPEGLSNearLossless_08.dcm": ("uid", "no StudyInstanceUID"),
}


@pytest.mark.parametrize("name", sorted(PYDICOM_FILES))
def test_files_real_toolkits_wrote(name):
    want, why = PYDICOM_FILES[name]
    v = validate_file(get_testdata_file(name))
    assert v.check == want, f"{name} ({why}): {v.check}: {v.detail}"
    if want:
        assert v.reason.startswith(f"damaged DICOM ({want}): ") and len(v.detail) > 10


def test_badinput_rejects_are_refused():
    corpus = Path(__file__).parent / "data" / "badinput"
    entries = [e for e in json.loads((corpus / "manifest.json").read_text()) if e["kind"] == "dicom"]
    refused = {e["file"]: validate_file(corpus / e["file"]).check for e in entries}
    assert {f: c for f, c in refused.items() if c is None and next(
        e for e in entries if e["file"] == f)["expect"] == "reject"} == {}
    assert set(refused.values()) - {None} <= set(CHECKS)


# -- built from the standard -------------------------------------------------------------------------
def make(pixels: bytes | None = None, *, rows=4, cols=4, bits=8, samples=1, frames=None, photometric=None,
         ts=ExplicitVRLittleEndian, **extra) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    meta.TransferSyntaxUID = ts
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.1"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = rows, cols, bits, samples
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = max(bits, 1), max(bits, 1) - 1, 0
    ds.PhotometricInterpretation = photometric or ("MONOCHROME2" if samples == 1 else "RGB")
    if frames is not None:
        ds.NumberOfFrames = frames
    for k, v in extra.items():
        setattr(ds, k, v)
    if pixels is not None:
        ds.add_new(0x7FE00010, "OB" if ts.is_compressed or bits <= 8 else "OW", pixels)
    buf = io.BytesIO()
    kw = {} if ts.is_compressed or ts.is_deflated else {"implicit_vr": ts.is_implicit_VR,
                                                        "little_endian": ts.is_little_endian}
    ds.save_as(buf, enforce_file_format=True, **kw)
    return buf.getvalue()


def check(data: bytes) -> str | None:
    return validate_bytes(data).check


def test_native_pixel_length_rule():
    assert check(make(bytes(16))) is None
    assert check(make(bytes(14))) == "pixel_data"
    assert check(make(bytes(18))) == "pixel_data"  # longer: cannot be told from a wrong Rows or Columns
    assert check(make(bytes(16 * 3), frames=3)) is None
    assert check(make(bytes(16 * 2), frames=3)) == "pixel_data"
    assert check(make(bytes(32), bits=16)) is None and check(make(bytes(16), bits=16)) == "pixel_data"
    assert check(make(bytes(4 * 4 * 3), samples=3, PlanarConfiguration=0)) is None
    # 3 x 3 at 8 bits = 9 bytes: padded to 10 (PS3.5 7.1.1); pydicom pads the value it writes
    assert check(make(bytes(9), rows=3, cols=3)) is None
    assert check(make(bytes(12), rows=3, cols=3)) == "pixel_data"


def test_bit_packed_one_bit_pixels():
    # 3 x 5 x 1 bit = 15 bits -> 2 bytes; three frames are packed end to end: 45 bits -> 6 bytes
    assert check(make(bytes(2), rows=3, cols=5, bits=1)) is None
    assert check(make(bytes(6), rows=3, cols=5, bits=1, frames=3)) is None
    assert check(make(bytes(10), rows=3, cols=5, bits=1, frames=3)) == "pixel_data"  # frames byte-aligned: wrong


def test_ybr_full_422_native_has_two_samples_a_pixel():
    assert check(make(bytes(4 * 4 * 2), samples=3, photometric="YBR_FULL_422", PlanarConfiguration=0)) is None
    assert check(make(bytes(4 * 4 * 3), samples=3, photometric="YBR_FULL_422", PlanarConfiguration=0)) == "pixel_data"


def test_image_attributes_without_pixels_or_without_sizes():
    assert check(make(None)) == "pixel_data"
    ok = make(bytes(16))
    ds = pydicom.dcmread(io.BytesIO(ok))
    del ds.Rows
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    assert check(buf.getvalue()) == "pixel_data"


def test_every_native_encoding_and_deflate():
    for ts in (ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian):
        assert check(make(bytes(16), ts=ts)) is None, ts.name
    deflated = make(bytes(16), ts=DeflatedExplicitVRLittleEndian)
    assert check(deflated[:-6]) == "truncated"


def test_encapsulated_fragments():
    frame = b"\xff\xd8" + bytes(30) + b"\xff\xd9"
    assert check(make(encapsulate([frame]), ts=JPEGBaseline8Bit, PhotometricInterpretation="YBR_FULL_422")) is None
    two = encapsulate([frame, frame], has_bot=True)
    assert check(make(two, ts=JPEGBaseline8Bit, frames=2)) is None
    assert check(make(encapsulate([frame]), ts=JPEGBaseline8Bit, frames=2)) == "fragments"  # 1 fragment, 2 frames
    bad_bot = bytearray(two)
    bad_bot[12:16] = (5).to_bytes(4, "little")  # the second offset points into the first fragment
    assert check(make(bytes(bad_bot), ts=JPEGBaseline8Bit, frames=2)) == "fragments"
    assert check(make(encapsulate([bytes(34)]), ts=JPEGBaseline8Bit)) == "fragments"  # no SOI marker
    j2k = b"\xff\x4f\xff\x51" + bytes(30)
    assert check(make(encapsulate([j2k]), ts=JPEG2000Lossless)) is None
    assert check(make(encapsulate([j2k]), ts=JPEGBaseline8Bit)) == "encoding"  # J2K data under a JPEG syntax
    assert check(make(encapsulate([frame]), ts=RLELossless)) == "encoding"  # JPEG data under RLE
    enc = make(encapsulate([frame]), ts=JPEGBaseline8Bit)
    assert check(enc[:-8]) == "truncated"  # the sequence delimiter cut off
    assert check(with_meta(make(bytes(16)), JPEGBaseline8Bit)) == "encoding"  # native data, encapsulated syntax


def test_rle_header_and_one_fragment_per_frame():
    arr = np.arange(16, dtype=np.uint8).reshape(4, 4)
    ds = pydicom.dcmread(io.BytesIO(make(arr.tobytes())))
    ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    good = buf.getvalue()
    assert check(good) is None
    i = good.index(b"\xfe\xff\x00\xe0", good.index(b"\xfe\xff\x00\xe0") + 8) + 8  # first fragment's data
    bad = bytearray(good)
    bad[i] = 2  # the header now claims two segments for one 8-bit sample
    assert check(bytes(bad)) == "fragments"


def test_sequences_and_structure():
    ds = pydicom.dcmread(io.BytesIO(make(bytes(16))))
    ds.ReferencedSeriesSequence = [Dataset()]
    ds.ReferencedSeriesSequence[0].SeriesInstanceUID = "1.2.3"
    ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence = [Dataset(), Dataset()]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    assert check(data) is None
    assert check(data + b"\x00\x00\x00") == "truncated"  # stray bytes after the last element
    i = data.index(b"\xfe\xff\x00\xe0")  # the first item tag of the sequence, corrupted
    assert check(data[:i] + b"\xfe\xff\x01\xe0" + data[i + 4:]) == "parse"


def test_transfer_syntax_must_be_known():
    data = make(bytes(16))
    for ts in ("1.2.3.4", "1.2.840.10008.1.2.1.\x01"):
        with pydicom.config.disable_value_validation():
            assert validate_bytes(with_meta(data, ts)).check == "transfer_syntax", repr(ts)
    assert validate_bytes(with_meta(data, "1.2.840.10008.1.2.4.100")).check == "encoding"  # MPEG2 over native data


def test_uid_syntax():
    for good in ("0", "1.2.840.10008.1.2", "2.25.329800735698586629295641978511506172918", "1" + ".0" * 31):
        assert valid_uid(good), good
    for bad in ("", "1.02", "1..2", "1.2.", ".1.2", "1.2.a", "1.2 3", "1.2\x01.3", "1.2.3 ", "1" + ".1" * 32):
        assert not valid_uid(bad), repr(bad)
    for kw, val in (("SOPInstanceUID", "1.2.03"), ("StudyInstanceUID", "1.2.3\x0e4"), ("SeriesInstanceUID", "")):
        ds = pydicom.dcmread(io.BytesIO(make(bytes(16))))
        with pydicom.config.disable_value_validation():
            setattr(ds, kw, val)
            if kw == "SOPInstanceUID":
                ds.file_meta.MediaStorageSOPInstanceUID = val
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
        assert check(buf.getvalue()) in ("uid", "file_meta"), kw
