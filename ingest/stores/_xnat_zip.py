"""Pack one study's files into the zip XNAT's import service takes, and describe what is in it.

The headers are read while packing (one pass over the files), so the store can refuse a file
from another study before anything is sent. Each file goes into the zip as `<SOPInstanceUID>.dcm`:
XNAT keeps the entry's base name as the file name (xnat-rest-tests TestImport reads
`.../resources/DICOM/files/000000.dcm` back), so after the upload the store can match the file
URLs XNAT lists to our instances instead of predicting them.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from ..errors import StoreError
from ..records import StoredFile, StoredScan

_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_TAGS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SeriesNumber", "Modality",
         "SeriesDescription"]


@dataclass
class PackedStudy:
    zip_path: Path
    scans: list[StoredScan] = field(default_factory=list)
    files: list[StoredFile] = field(default_factory=list)
    #: SOPInstanceUID -> the file's name in the zip (and, XNAT keeping it, in the archive)
    names: dict[str, str] = field(default_factory=dict)


def pack_study(study_uid: str, files: list[Path], zip_path: Path) -> PackedStudy:
    """Write `files` into `zip_path` (stored, not deflated: DICOM pixel data barely shrinks and
    deflating costs CPU the upload does not win back on a LAN).

    Raises:
        StoreError: no files, a file that is not DICOM, or a file of another study (names the path).
    """
    if not files:
        raise StoreError(f"study {study_uid}: no files to upload")
    series: dict[str, dict] = {}
    out_files: list[StoredFile] = []
    names: dict[str, str] = {}
    seen: set[str] = set()
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for i, f in enumerate(files):
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=_TAGS)
            except Exception as exc:  # noqa: BLE001 - any parse failure means "not DICOM" here
                raise StoreError(f"study {study_uid}: {f}: not a readable DICOM file ({type(exc).__name__})") from None
            uid = str(ds.get("StudyInstanceUID", ""))
            if uid != study_uid:
                raise StoreError(f"study {study_uid}: {f}: belongs to study {uid or '<none>'}")
            sop = str(ds.get("SOPInstanceUID", "")) or f"{f.name}"
            if sop in seen:
                continue  # the same instance twice: XNAT would keep one copy anyway
            seen.add(sop)
            se_uid = str(ds.get("SeriesInstanceUID", ""))
            s = series.setdefault(se_uid, {"number": str(ds.get("SeriesNumber", "") or ""),
                                           "modality": str(ds.get("Modality", "") or ""),
                                           "description": str(ds.get("SeriesDescription", "") or ""), "n": 0})
            s["n"] += 1
            arcname = f"{_SAFE.sub('_', sop)}.dcm" if sop != f.name else f"{i:06d}_{f.name}"
            names[sop] = arcname
            zf.write(f, arcname=arcname)
            out_files.append(StoredFile(sop_uid=sop, series_uid=se_uid, path=str(f), size=f.stat().st_size))
    scans = []
    used: set[str] = set()
    for n, (se_uid, s) in enumerate(series.items(), start=1):
        scan_id = s["number"] or str(n)
        while scan_id in used:
            scan_id = f"{scan_id}-{n}"
        used.add(scan_id)
        scans.append(StoredScan(series_uid=se_uid, scan_id=scan_id, modality=s["modality"],
                                description=s["description"], n_files=s["n"]))
    return PackedStudy(zip_path=zip_path, scans=scans, files=out_files, names=names)
