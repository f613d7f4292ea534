"""A realistic two-batch PACS scenario for the periodic update run, written down before the code.

How real PACS data misbehaves between two update runs, and what rtlake must do about each
(expected outcomes are written here by hand from the rule, not printed by the code under test):

Batch 1 (on the PACS before run 1, clock 2024-06-01)
  P1  S1  CT Thorax                 2021-03-01  include            → stored
  P1  S2  XR Chest                  2021-04-01  exclude list       → not stored
  P2  S3  MR Brain                  2022-01-10  include            → stored (1 series, 2 instances)
  P2  S4  CT Thorax                 2099-01-01  placeholder date   → skip_placeholder, not stored
  P3  S5  RT Planning Head and Neck 2023-02-02  Varian root 1.2.246.352.71.1.<x> (real RT data) → stored
  P3  S6  CBCT Verification         2023-02-20  ARIA verification root …658820455611 → skip_verification
  P3  S7  CBCT Verification         2023-02-27  ARIA verification root …850931706547 → skip_verification
  P3  S8  RT Planning Head and Neck 2023-03-01  near miss 1.2.246.352.71.1.65882045561.<x> → stored
  P3  S9  RT Planning Head and Neck 2023-03-02  near miss 1.2.246.352.71.2.658820455611.<x> → stored
  P4  S10 CT Thorax                 2023-05-05  include            → stored
  P5  S11 MR Brain                  2020-02-02  include, P5 has no NHS number yet → stored under NN_SCN0005

Batch 2 (arrives after run 1; run 2 at clock 2024-07-01)
  P1  S12 CT Thorax                 2024-06-20  follow-up after run 1            → new, stored
  P1  S13 CT Other Hospital         2015-07-07  imported later with an old date  → new, stored (a StudyDate
                                                window would miss it)
  P2  S3  + a new series of 2 instances added to the old study                  → S3 taken again, 4 files
  P6  S14 MR Brain                  2019-09-09  a new patient in the cohort       → new, stored
  P4  S15 CT Thorax                 2024-06-25  P4 died between runs (deceased list) → never harvested
  P1  S16 MR Brain                  2099-01-01  placeholder                       → skip_placeholder
  P3  S17 CBCT Verification         2024-06-21  verification root …658820455611   → skip_verification
  P5  NHS number now known (cohort file corrected)                               → P5's session moves
                                                                                   from NN_SCN0005 to it
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

VERIF_A = "1.2.246.352.71.1.658820455611"
VERIF_B = "1.2.246.352.71.1.850931706547"
VARIAN = "1.2.246.352.71.1"


def _nhs(seed: int) -> str:
    """A valid (mod-11) NHS number derived from a seed, for synthetic patients only."""
    n = seed
    while True:
        digits = f"{900000000 + n % 99999999:09d}"
        total = sum(int(d) * w for d, w in zip(digits, range(10, 1, -1)))
        check = 11 - total % 11
        check = 0 if check == 11 else check
        if check != 10:
            return digits + str(check)
        n += 1


PATIENTS = {"P1": "SCN0001", "P2": "SCN0002", "P3": "SCN0003", "P4": "SCN0004", "P5": "SCN0005", "P6": "SCN0006"}
NHS = {k: _nhs(i * 7919) for i, k in enumerate(PATIENTS, start=1)}


@dataclass
class Study:
    name: str
    patient: str
    uid: str
    date: dt.date
    description: str
    modality: str = "CT"
    accession: str = ""
    series: list[tuple[str, int]] = field(default_factory=list)  # (series uid, instances)


def _uid(root: str, *parts: str) -> str:
    digest = int(hashlib.sha1("|".join(parts).encode()).hexdigest(), 16)
    return f"{root}.{digest % 10**20}"


def _study(name: str, patient: str, date: str, desc: str, modality: str = "CT", root: str = "2.25",
           instances: int = 2) -> Study:
    uid = _uid(root, "scenario", name)
    s = Study(name, patient, uid, dt.date.fromisoformat(date), desc, modality, accession=f"ACC{name}")
    s.series.append((_uid("2.25", uid, "series", "1"), instances))
    return s


def batch1() -> list[Study]:
    return [
        _study("S1", "P1", "2021-03-01", "CT Thorax"),
        _study("S2", "P1", "2021-04-01", "XR Chest"),
        _study("S3", "P2", "2022-01-10", "MR Brain", "MR"),
        _study("S4", "P2", "2099-01-01", "CT Thorax"),
        _study("S5", "P3", "2023-02-02", "RT Planning Head and Neck", root=VARIAN),
        _study("S6", "P3", "2023-02-20", "CBCT Verification", root=VERIF_A),
        _study("S7", "P3", "2023-02-27", "CBCT Verification", root=VERIF_B),
        _study("S8", "P3", "2023-03-01", "RT Planning Head and Neck", root="1.2.246.352.71.1.65882045561"),
        _study("S9", "P3", "2023-03-02", "RT Planning Head and Neck", root="1.2.246.352.71.2.658820455611"),
        _study("S10", "P4", "2023-05-05", "CT Thorax"),
        _study("S11", "P5", "2020-02-02", "MR Brain", "MR"),
    ]


def batch2(first: list[Study]) -> list[Study]:
    """New studies, plus the new series of S3 (same study UID, a second series)."""
    s3 = next(s for s in first if s.name == "S3")
    s3_more = Study("S3", s3.patient, s3.uid, s3.date, s3.description, s3.modality, s3.accession,
                    [(_uid("2.25", s3.uid, "series", "2"), 2)])
    return [
        _study("S12", "P1", "2024-06-20", "CT Thorax"),
        _study("S13", "P1", "2015-07-07", "CT Other Hospital"),
        s3_more,
        _study("S14", "P6", "2019-09-09", "MR Brain", "MR"),
        _study("S15", "P4", "2024-06-25", "CT Thorax"),
        _study("S16", "P1", "2099-01-01", "MR Brain", "MR"),
        _study("S17", "P3", "2024-06-21", "CBCT Verification", root=VERIF_A),
    ]


# -- what each run must end with (by hand, from the rules above) ------------------------------------
STORED_AFTER_1 = {"S1", "S3", "S5", "S8", "S9", "S10", "S11"}
DECISIONS_AFTER_1 = {"S1": "include", "S2": "exclude", "S3": "include", "S4": "skip_placeholder",
                     "S5": "include", "S6": "skip_verification", "S7": "skip_verification", "S8": "include",
                     "S9": "include", "S10": "include", "S11": "include"}
NEW_IN_2 = {"S12", "S13", "S14", "S16", "S17"}
INGESTED_IN_2 = {"S12", "S13", "S14", "S3"}
STORED_AFTER_2 = STORED_AFTER_1 | {"S12", "S13", "S14"}
NEVER_SEEN = {"S15"}
FILES_AFTER_2 = {"S3": 4}


def write_files(studies: list[Study], out: Path) -> list[Path]:
    """DICOM files for the studies (pydicom's small CT/MR test images re-labelled)."""
    import pydicom
    from pydicom.data import get_testdata_file

    templates = {"CT": pydicom.dcmread(get_testdata_file("CT_small.dcm")),
                 "MR": pydicom.dcmread(get_testdata_file("MR_small.dcm"))}
    paths = []
    for st in studies:
        for series_uid, count in st.series:
            for i in range(count):
                ds = templates[st.modality].copy()
                ds.PatientID = PATIENTS[st.patient]
                ds.PatientName = f"SCENARIO^{st.patient}"
                ds.StudyInstanceUID = st.uid
                ds.SeriesInstanceUID = series_uid
                ds.SOPInstanceUID = _uid("2.25", series_uid, "sop", str(i))
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.AccessionNumber = st.accession
                ds.StudyDescription = st.description
                ds.StudyDate = st.date.strftime("%Y%m%d")
                ds.Modality = st.modality
                ds.SeriesNumber = int(hashlib.sha1(series_uid.encode()).hexdigest(), 16) % 900 + 1
                ds.InstanceNumber = i + 1
                ds.StudyID = st.name
                p = out / st.name / f"{ds.SOPInstanceUID}.dcm"
                p.parent.mkdir(parents=True, exist_ok=True)
                ds.save_as(p, enforce_file_format=True)
                paths.append(p)
    return paths


def write_inputs(root: Path, stage: int) -> None:
    """Cohort, deceased list and criteria lists as the trust would hand them over at each stage."""
    root.mkdir(parents=True, exist_ok=True)
    members = ["P1", "P2", "P3", "P4", "P5"] + (["P6"] if stage == 2 else [])
    rows = ["HospitalID,NHSNumber"]
    for k in members:
        nhs = "" if (k == "P5" and stage == 1) else NHS[k]
        rows.append(f"{PATIENTS[k]},{nhs}")
    (root / "cohort.csv").write_text("\n".join(rows) + "\n")
    (root / "deceased.csv").write_text("HospitalID\n" + (f"{PATIENTS['P4']}\n" if stage == 2 else ""))
    (root / "lists.yaml").write_text(
        "include:\n  - CT Thorax\n  - MR Brain\n  - RT Planning Head and Neck\n  - CT Other Hospital\n"
        "exclude:\n  - XR Chest\n")


def write_config(root: Path) -> Path:
    cfg = root / "rtlake.toml"
    cfg.write_text('[project]\nname = "SCN"\nstate_dir = "state"\n\n[store]\nkind = "lake"\n\n[store.lake]\n'
                   'path = "lake"\n\n[inputs]\ncohort = "cohort.csv"\ndeceased = "deceased.csv"\n\n'
                   '[criteria]\nlists = "lists.yaml"\n\n[report]\noutbox = "outbox"\n')
    return cfg
