"""Lake scan folders are stable: a series that arrives later with a SeriesNumber the session already
uses gets a folder of its own, and the stored scan keeps its folder (no re-ingest moves or copies
stored files). Real-data pattern: a second reconstruction or a re-export sent days later with the
same SeriesNumber as the first series (vendors number per acquisition, not per export).

Expected folders are written from the rule (SeriesNumber; on a clash SeriesNumber_ + the first six
hex digits of SHA-1 of the SeriesInstanceUID), never read back from the code under test.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

from ingest.records import SessionPlan, StudyRecord
from ingest.stores.lake import LakeStore

STUDY = "1.2.826.0.1.3680043.8.498.1001"
SERIES_A = "1.2.826.0.1.3680043.8.498.1001.2"
SERIES_B = "1.2.826.0.1.3680043.8.498.1001.3"


def _series(folder: Path, series_uid: str, n: int, number: str = "2") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesNumber = STUDY, series_uid, number
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{series_uid}.{i + 1}"
        p = folder / f"{series_uid}.{i}.dcm"
        ds.save_as(p, enforce_file_format=True)
        out.append(p)
    return out


def _plan() -> SessionPlan:
    return SessionPlan("P", "SUBJ", "SUBJ_CT_1", StudyRecord(study_uid=STUDY, patient_id="H1", modalities=("CT",)), "H1")


def _name(sop: str) -> str:
    """A lake file's name: its SOPInstanceUID with the dots made underscores (XNAT's rule for names)."""
    return sop.replace(".", "_") + ".dcm"


def _h(uid: str) -> str:
    return hashlib.sha1(uid.encode()).hexdigest()[:6]


def _lake_files(session: Path) -> dict[str, list[str]]:
    return {d.name: sorted(f.name for f in d.iterdir()) for d in sorted((session / "scans").iterdir())}


def test_a_late_series_with_a_used_number_does_not_move_the_stored_scan(tmp_path):
    a = _series(tmp_path / "pacs", SERIES_A, 3)
    b = _series(tmp_path / "pacs", SERIES_B, 2)
    store = LakeStore(tmp_path / "lake")
    first = store.put_study(_plan(), a)
    session = Path(first.location)
    assert _lake_files(session) == {"2": [_name(f"{SERIES_A}.{i}") for i in (1, 2, 3)]}

    again = store.put_study(_plan(), a + b)  # the study re-ingested whole after B arrived
    want = {"2": [_name(f"{SERIES_A}.{i}") for i in (1, 2, 3)], f"2_{_h(SERIES_B)}": [_name(f"{SERIES_B}.{i}") for i in (1, 2)]}
    assert _lake_files(session) == want  # five files, A where it was
    assert {s.series_uid: s.scan_id for s in again.scans} == {SERIES_A: "2", SERIES_B: f"2_{_h(SERIES_B)}"}
    assert sorted(Path(f.path).parent.name for f in again.files) == ["2"] * 3 + [f"2_{_h(SERIES_B)}"] * 2
    manifest = json.loads((session / "session.json").read_text())
    assert [(s["id"], s["series_uid"], s["files"]) for s in manifest["scans"]] == \
        [("2", SERIES_A, 3), (f"2_{_h(SERIES_B)}", SERIES_B, 2)]

    store.put_study(_plan(), b)  # A deleted from the PACS since: its stored scan stays listed
    manifest = json.loads((session / "session.json").read_text())
    assert [s["id"] for s in manifest["scans"]] == ["2", f"2_{_h(SERIES_B)}"]
    assert _lake_files(session) == want


def test_two_series_with_one_number_arriving_together_both_get_hashed_folders(tmp_path):
    a = _series(tmp_path / "pacs", SERIES_A, 1)
    b = _series(tmp_path / "pacs", SERIES_B, 1)
    res = LakeStore(tmp_path / "lake").put_study(_plan(), a + b)
    assert {s.series_uid: s.scan_id for s in res.scans} == {SERIES_A: f"2_{_h(SERIES_A)}", SERIES_B: f"2_{_h(SERIES_B)}"}
