"""Write the bad-input corpus: synthetic files of every kind rtlake reads, each broken one way.

    python tests/data/badinput/make_corpus.py [OUT]      (default: this folder)

Deterministic (fixed UIDs, no clock), so re-running rewrites the same bytes. `manifest.json`
lists every file with the reader it is fed to (`kind`), what is wrong with it (`what`) and what
rtlake must do (`expect`):

  reject    the file (or its bad row) is refused with a message naming it; nothing else changes
  tolerate  rtlake may accept the file as it is or refuse it naming it; it must not crash
  accept    the defect is one rtlake repairs (float NHS numbers, BOMs, code pages); the data is used

Nothing here is patient data: the one patient ID is BADINPUT01, names are BADINPUT^PATIENT.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

HERE = Path(__file__).resolve().parent
PATIENT_ID = "BADINPUT01"
ROOT = "1.2.826.0.1.3680043.10.1001"  # fixed synthetic UID root for the corpus
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
KINDS = ("dicom", "rt", "cohort", "deceased", "refdates", "lists", "review", "failures", "config")

manifest: list[dict] = []


def add(out: Path, rel: str, data: bytes, kind: str, expect: str, what: str) -> Path:
    p = out / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    manifest.append({"file": rel, "kind": kind, "expect": expect, "what": what})
    return p


# ---------------------------------------------------------------------------------------------
# DICOM


def uid(*parts: int) -> str:
    return ".".join([ROOT, *(str(p) for p in parts)])


def base_dataset(n: int) -> Dataset:
    """A small valid CT instance of study `n` (8x8 pixels), everything a study needs."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE
    ds.file_meta.MediaStorageSOPInstanceUID = uid(3, n)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = uid(3, n)
    ds.StudyDate = "20230102"
    ds.StudyTime = "101010"
    ds.AccessionNumber = f"BADACC{n:04d}"
    ds.Modality = "CT"
    ds.StudyDescription = "CT Neck"
    ds.SeriesDescription = "Axial"
    ds.PatientName = "BADINPUT^PATIENT"
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19000101"
    ds.StudyInstanceUID = uid(1, n)
    ds.SeriesInstanceUID = uid(2, n)
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 8
    ds.Columns = 8
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.arange(64, dtype=np.uint16).tobytes()
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def elem(group: int, element: int, vr: str, value: bytes) -> bytes:
    """One explicit-VR little-endian element, written by hand so it can lie."""
    head = struct.pack("<HH", group, element) + vr.encode("ascii")
    if vr in ("OB", "OW", "OF", "SQ", "UT", "UN", "UC", "UR", "OD", "OL", "OV"):
        return head + b"\0\0" + struct.pack("<I", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def pad(text: str, vr: str = "UI") -> bytes:
    b = text.encode("latin-1")
    return b + (b"\0" if vr == "UI" else b" ") if len(b) % 2 else b


def raw_file(n: int, body: bytes, ts: str = ExplicitVRLittleEndian, preamble: bool = True) -> bytes:
    """Preamble + a correct file meta group + a hand-written dataset body."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE
    meta.MediaStorageSOPInstanceUID = uid(3, n)
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = uid(9, 9)
    buf = pydicom.filebase.DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_file_meta_info(buf, meta, enforce_standard=True)
    head = (b"\0" * 128 + b"DICM") if preamble else b""
    return head + buf.getvalue() + body


def core_elements(n: int, *, study_uid: bytes | None = None, sop_uid: bytes | None = None) -> list[bytes]:
    return [
        elem(0x0008, 0x0016, "UI", pad(CT_IMAGE)),
        elem(0x0008, 0x0018, "UI", sop_uid if sop_uid is not None else pad(uid(3, n))),
        elem(0x0008, 0x0020, "DA", b"20230102"),
        elem(0x0008, 0x0050, "SH", pad(f"BADACC{n:04d}", "SH")),
        elem(0x0008, 0x0060, "CS", b"CT"),
        elem(0x0008, 0x1030, "LO", pad("CT Neck", "LO")),
        elem(0x0010, 0x0020, "LO", pad(PATIENT_ID, "LO")),
        elem(0x0020, 0x000D, "UI", study_uid if study_uid is not None else pad(uid(1, n))),
        elem(0x0020, 0x000E, "UI", pad(uid(2, n))),
    ]


def dicom_corpus(out: Path) -> None:
    d = "dicom/"
    good = to_bytes(base_dataset(1))
    pix = good.rfind(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data
    k = "dicom"
    add(out, d + "empty.dcm", b"", k, "reject", "zero bytes")
    add(out, d + "truncated_in_meta.dcm", good[:150], k, "reject", "cut inside the file meta group")
    add(out, d + "truncated_in_dataset.dcm", good[: pix - 31], k, "reject", "cut inside the last element before Pixel Data")
    add(out, d + "truncated_in_pixels.dcm", to_bytes(base_dataset(2))[:-60], k, "reject",
        "Pixel Data shorter than its length says")
    add(out, d + "only_preamble.dcm", b"\0" * 128 + b"DICM", k, "reject", "preamble and magic, nothing else")
    add(out, d + "text_named_dcm.dcm", b"This is a radiology report, not an image.\n", k, "reject",
        "plain text with a .dcm name")
    add(out, d + "random_bytes.dcm", np.random.default_rng(9).bytes(4096), k, "reject", "random bytes")
    add(out, d + "pdf_named_dcm.dcm", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\ntrailer\n%%EOF\n", k,
        "reject", "a PDF with a .dcm name")
    add(out, d + "zip_named_dcm.dcm", _zip_bytes({"a.dcm": good}), k, "reject", "a zip archive with a .dcm name")
    # no preamble: a raw dataset (old ACR-NEMA style export) - rtlake wants Part 10 files
    add(out, d + "no_preamble_raw_dataset.dcm", b"".join(core_elements(3)), k, "reject",
        "dataset without preamble, DICM or file meta")
    add(out, d + "no_preamble_with_meta.dcm", raw_file(4, b"".join(core_elements(4)), preamble=False), k,
        "tolerate", "file meta and dataset but no 128-byte preamble")
    ds = base_dataset(5)
    del ds.StudyInstanceUID
    add(out, d + "missing_study_uid.dcm", to_bytes(ds), k, "reject", "no StudyInstanceUID")
    ds = base_dataset(6)
    del ds.SOPInstanceUID
    add(out, d + "missing_sop_uid.dcm", to_bytes(ds), k, "reject", "no SOPInstanceUID")
    add(out, d + "empty_study_uid.dcm", raw_file(7, b"".join(core_elements(7, study_uid=b""))), k, "reject",
        "StudyInstanceUID present with an empty value")
    add(out, d + "blank_sop_uid.dcm", raw_file(8, b"".join(core_elements(8, sop_uid=b"  "))), k, "reject",
        "SOPInstanceUID of two spaces")
    ds = base_dataset(9)
    del ds.SeriesInstanceUID
    add(out, d + "missing_series_uid.dcm", to_bytes(ds), k, "tolerate", "no SeriesInstanceUID")
    # wrong VRs
    els = core_elements(10)
    els[2] = elem(0x0008, 0x0020, "US", struct.pack("<H", 513))  # StudyDate as an unsigned short
    add(out, d + "wrong_vr_study_date_us.dcm", raw_file(10, b"".join(els)), k, "tolerate", "StudyDate with VR US")
    els = core_elements(11)
    els[7] = elem(0x0020, 0x000D, "SQ", b"\x01\x02\x03\x04")  # StudyInstanceUID as a (broken) sequence
    add(out, d + "wrong_vr_study_uid_sq.dcm", raw_file(11, b"".join(els)), k, "reject",
        "StudyInstanceUID with VR SQ and garbage items")
    els = core_elements(12)
    els[1] = elem(0x0008, 0x0018, "FD", struct.pack("<d", 1.5))  # SOPInstanceUID as a double
    add(out, d + "wrong_vr_sop_uid_fd.dcm", raw_file(12, b"".join(els)), k, "tolerate", "SOPInstanceUID with VR FD")
    els = core_elements(13)
    els.insert(2, elem(0x0008, 0x001A, "XX", b"ABCD"))  # a VR that does not exist
    add(out, d + "unknown_vr.dcm", raw_file(13, b"".join(els)), k, "tolerate", "an element with VR 'XX'")
    els = core_elements(14)
    els[1] = elem(0x0008, 0x0018, "UI", pad("1.2.3.abc.../../../../etc/passwd"))
    add(out, d + "sop_uid_path_traversal.dcm", raw_file(14, b"".join(els)), k, "tolerate",
        "SOPInstanceUID with letters and ../ (must not escape the lake)")
    els = core_elements(15)
    els[3] = elem(0x0008, 0x0050, "SH", pad("../../../outside", "SH"))
    add(out, d + "accession_path_traversal.dcm", raw_file(15, b"".join(els)), k, "tolerate",
        "AccessionNumber ../../../outside (session label must stay inside the lake)")
    els = core_elements(16)
    els[7] = elem(0x0020, 0x000D, "UI", pad("1." + "2" * 200))
    add(out, d + "overlong_study_uid.dcm", raw_file(16, b"".join(els)), k, "tolerate", "202-character StudyInstanceUID")
    # lengths that lie
    els = core_elements(17)
    els[5] = struct.pack("<HH", 0x0008, 0x1030) + b"LO" + struct.pack("<H", 0xFFF0) + b"CT Head"
    add(out, d + "length_past_end.dcm", raw_file(17, b"".join(els)), k, "reject",
        "StudyDescription length points past the end of the file")
    body = b"".join(core_elements(18)) + struct.pack("<HH", 0x0009, 0x0010) + b"SQ\0\0" + b"\xff\xff\xff\xff"
    body += struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + elem(0x0009, 0x1001, "LO", b"unterminated")
    add(out, d + "unterminated_sequence.dcm", raw_file(18, body), k, "tolerate",
        "undefined-length private sequence never closed")
    add(out, d + "odd_length_value.dcm", raw_file(19, b"".join(core_elements(19)) + elem(0x0008, 0x103E, "LO", b"ODD")),
        k, "tolerate", "SeriesDescription of odd length")
    # huge and many private tags
    ds = base_dataset(20)
    block = ds.private_block(0x0029, "RTLAKE BADINPUT", create=True)
    block.add_new(0x10, "OB", bytes(4 * 1024 * 1024))
    add(out, d + "huge_private_tag.dcm", to_bytes(ds), k, "tolerate", "a 4 MiB private OB element")
    ds = base_dataset(21)
    block = ds.private_block(0x0031, "RTLAKE MANY", create=True)
    for i in range(0xFF):
        block.add_new(i, "LO", f"private value {i}")
    add(out, d + "many_private_tags.dcm", to_bytes(ds), k, "tolerate", "255 private elements")
    ds = base_dataset(22)
    inner = Dataset()
    inner.CodeValue = "X"
    for _ in range(60):
        wrapper = Dataset()
        wrapper.ContentSequence = Sequence([inner])
        inner = wrapper
    ds.ContentSequence = Sequence([inner])
    add(out, d + "deep_sequence_nesting.dcm", to_bytes(ds), k, "tolerate", "sequences nested 60 deep")
    # transfer syntaxes and character sets
    add(out, d + "unknown_transfer_syntax.dcm", raw_file(23, b"".join(core_elements(23)), ts="1.2.3.4.5.6"), k,
        "tolerate", "TransferSyntaxUID no one knows")
    add(out, d + "deflate_claimed_not_deflated.dcm",
        raw_file(24, b"".join(core_elements(24)), ts="1.2.840.10008.1.2.1.99"), k, "reject",
        "says Deflated Explicit VR, body is not deflated")
    ds = base_dataset(25)
    ds.SpecificCharacterSet = "ISO_IR 999"
    ds.StudyDescription = "CT T\xeate Cou"
    add(out, d + "unknown_charset.dcm", to_bytes(ds), k, "tolerate", "SpecificCharacterSet ISO_IR 999 with 8-bit text")
    ds = base_dataset(26)
    ds.StudyDescription = "CT Neck\x00\x1b[31m"
    add(out, d + "control_chars_description.dcm", to_bytes(ds), k, "tolerate",
        "StudyDescription with NUL and an ANSI escape")
    ds = base_dataset(27)
    ds.StudyDate = "2023-13-45"
    ds.SeriesNumber = None
    add(out, d + "impossible_date_empty_series_number.dcm", to_bytes(ds), k, "tolerate",
        "StudyDate 2023-13-45, empty SeriesNumber")
    ds = base_dataset(28)
    ds.Rows, ds.Columns = 512, 512  # pixel data far shorter than Rows x Columns
    add(out, d + "pixel_size_mismatch.dcm", to_bytes(ds), k, "tolerate", "Rows x Columns do not match Pixel Data")
    ds = base_dataset(29)
    ds.file_meta.MediaStorageSOPInstanceUID = uid(3, 9999)
    add(out, d + "meta_sop_mismatch.dcm", to_bytes(ds), k, "tolerate",
        "file meta MediaStorageSOPInstanceUID differs from SOPInstanceUID")


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    """A zip with fixed member times (so the corpus is byte-identical on every run)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def _repack(data: bytes) -> bytes:
    """An xlsx with its clock readings (zip times, docProps created/modified) fixed."""
    import re

    members = {}
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for name in zf.namelist():
            body = zf.read(name)
            if name == "docProps/core.xml":
                body = re.sub(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", b"2020-01-01T00:00:00Z", body)
            members[name] = body
    return _zip_bytes(members)


# ---------------------------------------------------------------------------------------------
# RT: one folder per "patient" (a small CT + RTSTRUCT/RTPLAN/RTDOSE), each broken one way


def rt_corpus(out: Path) -> None:
    from ingest.synth.dicom import UidFactory
    from ingest.synth.rtset import write_rt_set

    def patient(name: str, seed: int) -> tuple[Path, object]:
        folder = out / "rt" / name
        if folder.exists():
            shutil.rmtree(folder)
        info = write_rt_set(folder, f"BADRT{seed:02d}", UidFactory(1000 + seed), shape=(10, 40, 40),
                            spacing=(3.0, 4.0, 4.0), layout="flat", seed=seed)
        return folder, info

    def rewrite(path: Path, change) -> bytes:
        ds = pydicom.dcmread(path)
        change(ds)
        return to_bytes(ds)

    cases = [
        ("no_contours", "RS", "RTSTRUCT with an empty ROIContourSequence",
         lambda ds: setattr(ds, "ROIContourSequence", Sequence([]))),
        ("contours_no_data", "RS", "every contour's ContourData removed",
         lambda ds: [delattr(c, "ContourData") for r in ds.ROIContourSequence for c in r.ContourSequence]),
        ("mismatched_frame_of_reference", "RS", "structure set on another FrameOfReferenceUID than the CT",
         lambda ds: [setattr(r, "ReferencedFrameOfReferenceUID", uid(7, 7)) for r in ds.StructureSetROISequence]
         + [setattr(f, "FrameOfReferenceUID", uid(7, 7)) for f in ds.ReferencedFrameOfReferenceSequence]),
        ("odd_contour_points", "RS", "ContourData with a coordinate count not divisible by 3",
         lambda ds: [setattr(c, "ContourData", list(c.ContourData)[:-1]) for r in ds.ROIContourSequence
                     for c in r.ContourSequence]),
        ("dose_without_grid_offsets", "RD", "RTDOSE without GridFrameOffsetVector",
         lambda ds: delattr(ds, "GridFrameOffsetVector")),
    ]
    for i, (name, which, what, change) in enumerate(cases):
        folder, info = patient(name, i + 1)
        target = info.rtstruct_path if which == "RS" else info.rtdose_path
        data = rewrite(target, change)
        target.unlink()
        add(out, str(target.relative_to(out)), data, "rt", "reject", what)
    folder, info = patient("truncated_rtstruct", 9)
    data = info.rtstruct_path.read_bytes()
    info.rtstruct_path.unlink()
    add(out, str(info.rtstruct_path.relative_to(out)), data[: len(data) // 2], "rt", "reject", "RTSTRUCT cut in half")
    folder, info = patient("no_ct", 10)
    shutil.rmtree(folder / "CT")
    data = info.rtstruct_path.read_bytes()
    info.rtstruct_path.unlink()
    add(out, str(info.rtstruct_path.relative_to(out)), data, "rt", "reject", "RTSTRUCT whose CT series is absent")


# ---------------------------------------------------------------------------------------------
# CSV / xlsx side inputs

# Valid test-range NHS numbers (999 prefix, mod-11 check digit correct).
NHS = ["9990000018", "9990000026", "9990000034", "9990000042"]


def _xlsx(sheets: dict[str, list[list[object]]]) -> bytes:
    import openpyxl

    wb = openpyxl.Workbook()
    wb.remove(wb.active)
    for name, rows in sheets.items():
        ws = wb.create_sheet(name)
        for r in rows:
            ws.append(r)
    buf = io.BytesIO()
    wb.save(buf)
    return _repack(buf.getvalue())


def table_corpus(out: Path) -> None:
    c = "tables/"
    ok = f"HospitalID,NHSNumber\nBAD1001,{NHS[0]}\nBAD1002,{NHS[1]}\n"
    add(out, c + "cohort_utf16.csv", ok.encode("utf-16"), "cohort", "accept", "UTF-16 with BOM (Excel Unicode Text)")
    add(out, c + "cohort_utf8_bom.csv", b"\xef\xbb\xbf" + ok.encode(), "cohort", "accept", "UTF-8 with BOM")
    add(out, c + "cohort_cp1252_spaced_nhs.csv",
        f"Hospital ID;NHS Number;Nom\nBAD1001;{NHS[0][:3]} {NHS[0][3:6]} {NHS[0][6:]};Andr\xe9\n"
        f"BAD1002;{NHS[1][:3]}-{NHS[1][3:6]}-{NHS[1][6:]};Zo\xeb\n".encode("cp1252"),
        "cohort", "accept", "Windows-1252, semicolons, NHS numbers with spaces and dashes")
    add(out, c + "cohort_float_nhs.csv", f"HospitalID,NHSNumber\n1001.0,{NHS[0]}.0\n1002,{NHS[1]}\n".encode(),
        "cohort", "accept", "Excel floats: 9990000018.0 and hospital ID 1001.0")
    add(out, c + "cohort_sci_nhs.csv", "HospitalID,NHSNumber\nBAD1001,9.990000018E+09\n".encode(),
        "cohort", "accept", "NHS number in scientific notation")
    add(out, c + "cohort_blank_nhs.csv", f"HospitalID,NHSNumber\nBAD1001,\nBAD1002, \nBAD1003,nan\nBAD1004,{NHS[3]}\n"
        .encode(), "cohort", "accept", "blank, space and 'nan' NHS numbers")
    add(out, c + "cohort_bad_check_digit.csv", "HospitalID,NHSNumber\nBAD1001,9990000019\nBAD1002,999000002\n"
        .encode(), "cohort", "reject", "wrong check digit, 9 digits (row problems)")
    add(out, c + "cohort_letters_in_nhs.csv", "HospitalID,NHSNumber\nBAD1001,99900O0018\n".encode(), "cohort",
        "reject", "letter O in an NHS number (row problem)")
    add(out, c + "cohort_duplicate_conflict.csv",
        f"HospitalID,NHSNumber\nBAD1001,{NHS[0]}\nBAD1001,{NHS[1]}\nBAD1001,\n".encode(), "cohort", "reject",
        "same hospital ID with two NHS numbers (row problem)")
    add(out, c + "cohort_blank_hospital_id.csv", f"HospitalID,NHSNumber\n,{NHS[0]}\n  ,\n".encode(), "cohort",
        "reject", "rows with blank hospital IDs (row problems)")
    add(out, c + "cohort_no_id_column.csv", f"Patient,NHS\nBAD1001,{NHS[0]}\n".encode(), "cohort", "reject",
        "no HospitalID column")
    add(out, c + "cohort_empty.csv", b"", "cohort", "reject", "zero bytes")
    add(out, c + "cohort_blank_lines_only.csv", b"\n\n \n,,\n", "cohort", "reject", "only blank lines")
    add(out, c + "cohort_header_only.csv", b"HospitalID,NHSNumber\n", "cohort", "tolerate", "header, no rows")
    add(out, c + "cohort_ragged_rows.csv", f"HospitalID,NHSNumber\nBAD1001\nBAD1002,{NHS[1]},extra,cells\n"
        .encode(), "cohort", "accept", "rows with too few and too many cells")
    add(out, c + "cohort_binary.csv", np.random.default_rng(3).bytes(2048), "cohort", "reject", "random bytes")
    add(out, c + "cohort_is_xlsx.csv", _xlsx({"Sheet": [["HospitalID", "NHSNumber"], ["BAD1001", NHS[0]]]}),
        "cohort", "reject", "an xlsx workbook saved with a .csv name")
    add(out, c + "cohort_nul_bytes.csv", f"HospitalID,NHSNumber\nBAD\x001001,{NHS[0]}\n".encode(), "cohort",
        "tolerate", "a NUL byte inside a hospital ID")
    add(out, c + "deceased_no_id_column.csv", b"Name,DateOfDeath\nX,01/01/2020\n", "deceased", "reject",
        "deceased extract without HospitalID")
    add(out, c + "deceased_blank_ids.csv", b"HospitalID,DateOfDeath\n,01/01/2020\nBAD1001,\n", "deceased", "reject",
        "deceased extract with a blank ID (row problem)")
    add(out, c + "refdates_bad_dates.csv",
        f"Subject,Reference Date\n{NHS[0]},31/02/2021\n{NHS[1]},yesterday\nNN_BAD1003,\n{NHS[2]},2021-13-01\n"
        .encode(), "refdates", "reject", "impossible, textual and blank reference dates (row problems)")
    add(out, c + "refdates_float_subjects.csv", f"Subject,Reference Date\n{NHS[0]}.0,01/02/2021\n".encode(),
        "refdates", "accept", "subject NHS number as a float")
    add(out, c + "refdates_no_columns.csv", b"Who,When\nA,B\n", "refdates", "reject", "no Subject/Reference Date")
    # criteria list workbooks
    good_lists = _xlsx({"INCLUDE": [["Description"], ["CT Head Neck"]], "EXCLUDE": [["Description"], ["XR Chest"]]})
    add(out, c + "lists_truncated.xlsx", good_lists[: len(good_lists) // 2], "lists", "reject", "xlsx cut in half")
    add(out, c + "lists_missing_sheets.xlsx", _xlsx({"Sheet1": [["Description"], ["CT"]]}), "lists", "reject",
        "no INCLUDE/EXCLUDE sheets")
    add(out, c + "lists_numbers_and_blanks.xlsx",
        _xlsx({"INCLUDE": [["Description"], [12345.0], [None], ["  "], ["CT Head Neck"]],
               "EXCLUDE": [["Description"], [3.5e10]]}), "lists", "tolerate", "numbers, None and blank cells")
    add(out, c + "lists_not_a_zip.xlsx", b"Description,List\nCT,include\n", "lists", "reject", "CSV text named .xlsx")
    add(out, c + "lists_bad_list_name.csv", b"Description,List\nCT Head,maybe\n", "lists", "reject",
        "List column neither include nor exclude")
    add(out, c + "lists_wrong_shape.yaml", b"include: CT Head\nexclude: {a: 1}\nextra: []\n", "lists", "reject",
        "YAML with an unknown key and wrong shapes")
    # review workbooks
    add(out, c + "review_no_decision_column.xlsx", _xlsx({"Review": [["Description", "Count"], ["CT thing", 3]]}),
        "review", "reject", "review workbook without a Decision column")
    add(out, c + "review_bad_decisions.xlsx",
        _xlsx({"Review": [["Description", "Decision"], ["CT thing", "probably"], [None, "include"], [42, "exclude"]]}),
        "review", "tolerate", "decisions that are not include/exclude, blank and numeric descriptions")
    add(out, c + "review_truncated.xlsx", good_lists[:300], "review", "reject", "xlsx cut short")


# ---------------------------------------------------------------------------------------------
# JSON failure lists (rtlake failures import)


def json_corpus(out: Path) -> None:
    j = "json/"
    rec = {"studyInstanceUid": uid(5, 1), "accessionNumber": "BADACC9001", "studyDate": "20230102",
           "modalitiesInStudy": ["CT"], "status": "FAILED", "patient": {"id": PATIENT_ID}}
    text = json.dumps([rec, {**rec, "studyInstanceUid": uid(5, 2), "accessionNumber": "BADACC9002"}])
    k = "failures"
    add(out, j + "truncated.json", text[: len(text) * 2 // 3].encode(), k, "tolerate", "cut mid-record")
    add(out, j + "top_level_number.json", b"42\n", k, "reject", "a bare number")
    add(out, j + "list_of_strings.json", b'["a", "b", "c"]', k, "reject", "a list of strings")
    add(out, j + "wrong_value_types.json",
        json.dumps([{**rec, "studyInstanceUid": 12345, "studyDate": ["x"], "accessionNumber": {"a": 1}}]).encode(),
        k, "tolerate", "UID as a number, date as a list, accession as an object")
    add(out, j + "deep_nesting.json", b"[" * 10000 + b"]" * 10000, k, "reject", "arrays nested 10000 deep")
    add(out, j + "binary.json", np.random.default_rng(5).bytes(1024), k, "reject", "random bytes")
    add(out, j + "utf16.json", text.encode("utf-16"), k, "tolerate", "UTF-16 with BOM")
    add(out, j + "nan_and_infinity.json", text.replace('"20230102"', "NaN", 1).replace('"FAILED"', "Infinity", 1)
        .encode(), k, "tolerate", "NaN and Infinity literals")
    add(out, j + "empty_object.json", b"{}", k, "reject", "an empty object")
    add(out, j + "duplicate_keys.json",
        b'[{"studyInstanceUid": "1.2.3", "studyInstanceUid": "' + uid(5, 3).encode() + b'", "status": "FAILED"}]',
        k, "tolerate", "the same key twice in one record")


# ---------------------------------------------------------------------------------------------
# config files (rtlake check-config / update -c)


def config_corpus(out: Path) -> None:
    c = "config/"
    k = "config"
    add(out, c + "unknown_top_key.toml", b'[projekt]\nname = "X"\n', k, "reject", "misspelt section [projekt]")
    add(out, c + "unknown_nested_key.toml", b'[source.transfer]\nretrys = 3\n', k, "reject", "misspelt retrys")
    add(out, c + "wrong_type_int.toml", b'[source.transfer]\nretries = "four"\n', k, "reject", "retries = \"four\"")
    add(out, c + "wrong_type_bool.toml", b'[logging]\nidentifiers_in_logs = "maybe"\n', k, "reject",
        "identifiers_in_logs = \"maybe\"")
    add(out, c + "negative_concurrency.toml", b"[source.transfer]\nconcurrency = -2\n", k, "reject", "concurrency -2")
    add(out, c + "bad_enum.toml", b'[store]\nkind = "ftp"\n', k, "reject", "store kind ftp")
    add(out, c + "path_as_list.toml", b'[store.lake]\npath = ["a", "b"]\n', k, "reject", "a path given as a list")
    add(out, c + "invalid_toml.toml", b'[project\nname = "X"\n', k, "reject", "unclosed table header")
    add(out, c + "binary.toml", np.random.default_rng(7).bytes(512), k, "reject", "random bytes")
    add(out, c + "utf16.toml", '[project]\nname = "X"\n'.encode("utf-16"), k, "reject", "UTF-16 TOML")
    add(out, c + "password_in_config.toml", b'[source.orthanc]\npassword = "hunter2"\n', k, "reject",
        "a password key (secrets belong in the environment)")
    add(out, c + "section_is_scalar.toml", b'source = "orthanc"\n', k, "reject", "[source] given as a string")


def main(out: Path = HERE) -> list[dict]:
    manifest.clear()
    for sub in ("dicom", "rt", "tables", "json", "config"):
        shutil.rmtree(out / sub, ignore_errors=True)
    dicom_corpus(out)
    rt_corpus(out)
    table_corpus(out)
    json_corpus(out)
    config_corpus(out)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[2]))
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    m = main(target)
    print(f"wrote {len(m)} bad inputs to {target}")
