"""A deterministic synthetic head-and-neck cohort: a folder PACS, the side inputs and a config.

``generate(out, n_patients, seed)`` writes::

    out/rtlake.toml                  config (relative paths; folder source -> lake store)
    out/pacs/<hospital id>/<study uid>/<series uid>/<sop uid>.dcm
    out/HospitalID-NHSNumber.csv     cohort (HospitalID,NHSNumber; blank when the patient has none)
    out/reference_dates.csv          Subject,Reference Date (DD/MM/YYYY RT start; Subject = NHS number or NN_<id>)
    out/deceased.csv                 HospitalID,DateOfDeath (DD/MM/YYYY)
    out/PACs-failures.txt            XNAT DQR-shaped records of studies ordered but without images
    out/.rtlake-demo                 marker: what the generator owns (so a re-run may replace it)

The same seed gives byte-identical files (UIDs from a seeded RNG, fixed times, no clock); another
seed gives another cohort. What the cohort contains, and what a run should make of it, is recorded
in :class:`SyntheticPatient` / :class:`SyntheticStudy` so tests can assert on expected outcomes.
Nothing here is real patient data: NHS numbers are in the 999 test range.
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
import io
import json
import random
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import PermanentError
from .synth import descriptions as D
from .synth.dicom import (
    RT_VERIFICATION_UID_ROOTS,
    VARIAN_UID_ROOT,
    PatientInfo,
    StudyInfo,
    UidFactory,
    pacs_path,
    patient_folder,
    write_image_series,
)
from .synth.rtset import write_rt_set

PLACEHOLDER_DATE = dt.date(2099, 1, 1)
RECENT_CUTOFF = dt.date(2023, 10, 4)  # "some studies after 2023-10-04"
MARKER = ".rtlake-demo"
# Everything generate() owns below `out` (and removes before writing again).
GENERATED = ("pacs", "rtlake.toml", "HospitalID-NHSNumber.csv", "reference_dates.csv", "deceased.csv",
             "PACs-failures.txt", MARKER)


@dataclass
class SyntheticStudy:
    """One study of the synthetic PACS (or, with ``in_pacs=False``, of the failure list only)."""

    study_uid: str
    accession: str
    study_date: dt.date
    description: str  # as written to StudyDescription (case/spacing/trailing-dot variations applied)
    base_description: str  # the descriptions.py entry it was made from ("" for the empty one)
    category: str  # include | exclude | unknown | empty | rt | verification
    modalities: tuple[str, ...]
    study_id: str = ""
    n_series: int = 0
    n_instances: int = 0
    in_pacs: bool = True

    @property
    def placeholder(self) -> bool:
        return self.study_date == PLACEHOLDER_DATE


@dataclass
class SyntheticPatient:
    hospital_id: str
    nhs_number: str | None
    name: str  # DICOM PN, FAMILY^Given
    birth_date: dt.date
    sex: str
    deceased: bool = False
    rt_start: dt.date | None = None
    date_of_death: dt.date | None = None
    studies: list[SyntheticStudy] = field(default_factory=list)

    @property
    def subject(self) -> str:
        """XNAT subject label: the NHS number, or NN_<hospital id> when there is none."""
        return self.nhs_number or f"NN_{self.hospital_id}"


@dataclass
class DemoPaths:
    root: Path
    pacs: Path
    config: Path
    cohort: Path
    reference_dates: Path
    deceased: Path
    failures: Path
    patients: list[SyntheticPatient]
    broken: list[Path] = field(default_factory=list)  # the truncated DICOM and the text file named .dcm

    def relocated(self, root: Path) -> "DemoPaths":
        """The same cohort copied under another root (see the ``fresh_demo`` fixture)."""
        root = Path(root)

        def move(p: Path) -> Path:
            return root / p.relative_to(self.root)

        return replace(
            self,
            root=root,
            pacs=move(self.pacs),
            config=move(self.config),
            cohort=move(self.cohort),
            reference_dates=move(self.reference_dates),
            deceased=move(self.deceased),
            failures=move(self.failures),
            broken=[move(p) for p in self.broken],
            patients=copy.deepcopy(self.patients),
        )

    @property
    def studies(self) -> list[SyntheticStudy]:
        return [s for p in self.patients for s in p.studies]


# ----------------------------------------------------------------------------------------------
# Names (synthetic; some non-ASCII to exercise UTF-8 / ISO_IR 192)

_FAMILY = ["SMITH", "JONES", "WILLIAMS", "TAYLOR", "BROWN", "DAVIES", "EVANS", "WILSON", "THOMAS", "ROBERTS",
           "JOHNSON", "KHAN", "PATEL", "SINGH", "OKAFOR", "NOWAK", "O'BRIEN", "NÍ BHRIAIN", "MÜLLER", "GARCÍA",
           "ŁUKASIEWICZ", "MCLEOD", "HUGHES", "EDWARDS", "WRIGHT", "WALKER", "CHEN", "AHMED", "MORGAN", "FRANÇOIS"]
_GIVEN = {
    "M": ["John", "David", "Michael", "Mohammed", "Seán", "Tomasz", "Peter", "Raj", "Chidi", "Gareth", "José", "Ian"],
    "F": ["Mary", "Susan", "Aoife", "Priya", "Zoë", "Fatima", "Helen", "Agnieszka", "Siobhán", "Ngozi", "Ruth", "Ana"],
}
_SERIES = {
    "MR": ["T1 AX", "T2 STIR COR", "T1 FS POST GAD AX", "DWI b800"],
    "CT": ["Axial 2.5mm", "Coronal MPR", "Sagittal MPR"],
    "PT": ["PET AC", "PET NAC"],
    "CR": ["PA", "Lateral"],
    "DX": ["PA", "Lateral"],
    "RF": ["Swallow lateral", "Swallow AP"],
    "XA": ["Run 1", "Run 2"],
    "NM": ["Anterior", "Posterior"],
    "US": ["Transverse", "Longitudinal"],
    "SR": ["Report"],
}
# Forced first, in order, so even a small cohort has every modality and all three list outcomes.
_COVERAGE = [
    "MRI Neck", "PET-CT Skull Base – Mid Thigh", "CT Neck with contrast", "MRI Knee Left", D.UNKNOWN_EXAMPLES[0],
    "XR OPG", "Video fluoroscopy swallow", "XR Chest", "NM Bone Scan Whole Body", "Carotid Angiogram",
    "MDT Imaging Report Head and Neck", "XR Dental Panoramic", "CT Head (trauma)", "US Abdomen",
    D.UNKNOWN_EXAMPLES[1], "CT Chest Abdomen Pelvis",
]
_RANDOM_INCLUDE = [d for d in D.INCLUDE_EXAMPLES if d != D.RT_COURSE_DESCRIPTION]


def nhs_check_digit(nine: str) -> int | None:
    """Modulus-11 check digit of the first nine digits; None when the number cannot be valid (10)."""
    total = sum(int(c) * (10 - i) for i, c in enumerate(nine))
    check = 11 - total % 11
    if check == 11:
        return 0
    return None if check == 10 else check


def is_valid_nhs_number(value: str) -> bool:
    """10 digits whose last is the modulus-11 check digit of the first nine."""
    if len(value) != 10 or not value.isdigit():
        return False
    return nhs_check_digit(value[:9]) == int(value[9])


class _Gen:
    """All the random choices of one cohort, in a fixed order (the order is what makes it deterministic)."""

    def __init__(self, out: Path, n_patients: int, seed: int) -> None:
        self.out = out
        self.pacs = out / "pacs"
        self.n = n_patients
        self.seed = seed
        self.rng = random.Random(f"rtlake-demo:{seed}")
        self.uid = UidFactory(random.Random(f"rtlake-demo-uid:{seed}"))
        self.np_rng = np.random.default_rng(seed)
        self._accessions: set[str] = set()
        self._ids: set[str] = set()
        self._nhs: set[str] = set()
        self.g = 0  # global study counter (coverage + one-off specials)

    # -- identifiers ---------------------------------------------------------------------------
    def hospital_id(self) -> str:
        while True:
            v = self.rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ") + f"{self.rng.randrange(10**6):06d}"
            if v not in self._ids:
                self._ids.add(v)
                return v

    def nhs_number(self) -> str:
        while True:
            nine = "999" + f"{self.rng.randrange(10**6):06d}"  # 999... is the NHS test range
            check = nhs_check_digit(nine)
            if check is not None and nine + str(check) not in self._nhs:
                self._nhs.add(nine + str(check))
                return nine + str(check)

    def accession(self) -> str:
        while True:
            v = f"RJZ{self.rng.randrange(10**7):07d}"
            if v not in self._accessions:
                self._accessions.add(v)
                return v

    def date(self, lo: dt.date, hi: dt.date) -> dt.date:
        return lo + dt.timedelta(days=self.rng.randrange((hi - lo).days + 1))

    def study_date(self) -> dt.date:
        if self.rng.random() < 0.3:
            return self.date(RECENT_CUTOFF + dt.timedelta(days=1), dt.date(2024, 12, 31))
        return self.date(dt.date(2015, 1, 1), dt.date(2024, 12, 31))

    def time(self) -> str:
        return f"{self.rng.randrange(8, 18):02d}{self.rng.choice([0, 10, 15, 20, 30, 40, 45, 50]):02d}00"

    # -- descriptions --------------------------------------------------------------------------
    def pick_description(self) -> tuple[str, str]:
        if self.g < len(_COVERAGE):
            base = _COVERAGE[self.g]
        else:
            r = self.rng.random()
            pool = _RANDOM_INCLUDE if r < 0.6 else D.EXCLUDE_EXAMPLES if r < 0.85 else D.UNKNOWN_EXAMPLES
            base = self.rng.choice(pool)
        category = ("include" if base in D.INCLUDE_EXAMPLES else "exclude" if base in D.EXCLUDE_EXAMPLES
                    else "unknown")
        return base, category

    def vary(self, text: str) -> str:
        """Case / spacing / trailing-dot variations a matcher must normalise away."""
        if self.rng.random() >= 0.25:
            return text
        kind = self.rng.randrange(5)
        if kind == 0:
            return text.upper()
        if kind == 1:
            return text.lower()
        if kind == 2:
            return text.replace(" ", "  ", 1)
        if kind == 3:
            return text + "."
        return text.upper().replace(" ", "  ") + ".."

    # -- writing -------------------------------------------------------------------------------
    def write_study(self, patient: PatientInfo, study: StudyInfo, modalities: tuple[str, ...]) -> tuple[int, int]:
        """Write the series of one diagnostic study; returns (series, instances)."""
        main = modalities[0]
        if modalities == ("PT", "CT"):
            plan = [("CT", "CT AC 3mm"), ("PT", "PET AC")] + ([("PT", "PET NAC")] if self.rng.random() < 0.4 else [])
        elif main == "SR":
            plan = [("SR", "Report")]
        else:
            k = self.rng.randint(1, 3 if main in ("MR", "CT") else 2)
            plan = [(main, d) for d in _SERIES[main][:k]]
        size = 64 if self.rng.random() < 0.2 else 32
        n_inst = 0
        # One frame of reference per study, as for one scanner session (a PET-CT's CT and PET share it).
        frame_uid = self.uid() if any(m in ("CT", "MR", "PT") for m, _ in plan) else ""
        for number, (modality, sdesc) in enumerate(plan, start=1):
            series_uid = self.uid()
            count = 1 if modality in ("SR", "NM") else self.rng.randint(1, 5 if modality in ("CT", "MR", "PT") else 3)
            sops = [self.uid() for _ in range(count)]
            write_image_series(
                [(pacs_path(self.pacs, patient.patient_id, study.study_uid, series_uid, sop), sop) for sop in sops],
                patient, study, modality=modality, series_uid=series_uid, series_number=number,
                series_description=sdesc, frame_of_reference_uid=frame_uid, rng=self.np_rng, size=size,
            )
            n_inst += count
        return len(plan), n_inst


def generate(out: Path, n_patients: int = 24, seed: int = 7, force: bool = False) -> DemoPaths:
    """Write a deterministic synthetic cohort (folder PACS, side inputs, config) into ``out``.

    Replaces whatever a previous ``generate`` wrote there (pacs/, the side inputs, rtlake.toml) and
    leaves every other file in ``out`` alone (e.g. state/, lake/, outbox/ of an earlier run).

    Raises:
        ValueError: ``n_patients`` < 1.
        PermanentError: ``out`` holds files but no marker of this generator (so it may hold a real
            cohort list, never overwritten) and ``force`` is not set.
    """
    if n_patients < 1:
        raise ValueError("n_patients must be at least 1")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous(out, force)

    from pydicom import config as pydicom_config

    gen = _Gen(out, n_patients, seed)
    with pydicom_config.disable_value_validation():  # values are built valid; validation costs ~40 %
        patients, broken, failures = _build(gen)

    paths = DemoPaths(
        root=out,
        pacs=gen.pacs,
        config=out / "rtlake.toml",
        cohort=out / "HospitalID-NHSNumber.csv",
        reference_dates=out / "reference_dates.csv",
        deceased=out / "deceased.csv",
        failures=out / "PACs-failures.txt",
        patients=patients,
        broken=broken,
    )
    _write_side_inputs(paths, failures)
    (out / MARKER).write_text(
        f"Synthetic rtlake demo cohort: seed={seed} patients={n_patients}.\n"
        "`rtlake demo-data` replaces these paths on every run:\n" + "".join(f"  {g}\n" for g in GENERATED),
        encoding="utf-8",
    )
    return paths


def _clear_previous(out: Path, force: bool = False) -> None:
    if not force and not (out / MARKER).exists() and any(out.iterdir()):
        raise PermanentError(f"{out}: not empty and not made by `rtlake demo-data` (no {MARKER} marker); "
                             "not writing into it (--force to do so anyway)")
    for name in GENERATED:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def _build(gen: _Gen) -> tuple[list[SyntheticPatient], list[Path], list[dict]]:
    rng = gen.rng
    n = gen.n
    # --- who --------------------------------------------------------------------------------------
    no_nhs = set(rng.sample(range(n), max(1, round(0.15 * n)) if n >= 4 else 0))
    with_rt = set(rng.sample(range(n), max(1, n // 2)))
    rt_order = sorted(with_rt)
    verification_patients = rt_order[:2] if len(rt_order) >= 2 else (rt_order * 2)[:2]
    empty_at = min(1, n - 1)  # patient whose first study has an empty description
    # The last study of two patients is a placeholder dated 2099-01-01 (with one patient: its last two).
    placeholder_at = [2 % n, 3 % n] if n > 1 else [0, 0]
    # A run never queries the deceased, so they are chosen among patients that carry none of the
    # one-off cases (coverage studies on the first patients, verification studies), when possible.
    plain = [i for i in range(4, n) if i not in verification_patients]
    deceased = set(rng.sample(plain if len(plain) >= 2 else list(range(n)), min(2, n)))
    patients: list[SyntheticPatient] = []
    for i in range(n):
        sex = "M" if rng.random() < 0.7 else "F"
        name = f"{rng.choice(_FAMILY)}^{rng.choice(_GIVEN[sex])}"
        hid = gen.hospital_id()
        nhs = gen.nhs_number()  # drawn for everyone, so choosing "no NHS number" does not shift later draws
        patients.append(
            SyntheticPatient(hid, None if i in no_nhs else nhs, name, gen.date(dt.date(1940, 1, 1), dt.date(1985, 12, 31)),
                             sex, deceased=i in deceased)
        )

    # --- what ---------------------------------------------------------------------------------------
    for i, p in enumerate(patients):
        info = PatientInfo(p.hospital_id, p.name, p.birth_date, p.sex)
        n_studies = rng.randint(3, 8)
        for j in range(n_studies):
            base, category = gen.pick_description()
            gen.g += 1
            description = gen.vary(base)
            if i == empty_at and j == 0:
                base, category, description = "", "empty", ""
            modalities = D.MODALITIES.get(base, ("CT",))
            date = gen.study_date()
            if j >= n_studies - placeholder_at.count(i):
                date = PLACEHOLDER_DATE
            study = StudyInfo(gen.uid(), date, gen.time(), description, accession=gen.accession(),
                              study_id=str(rng.randrange(1, 99999)),
                              referring_physician=rng.choice(["", "DR^SYNTH", "ONCOLOGY^HN"]))
            n_series, n_inst = gen.write_study(info, study, modalities)
            p.studies.append(SyntheticStudy(study.study_uid, study.accession, date, description, base, category,
                                            modalities, study.study_id, n_series, n_inst))
        if i in with_rt:
            rt_date = gen.date(dt.date(2016, 1, 1), dt.date(2024, 11, 30))
            p.rt_start = rt_date + dt.timedelta(days=rng.randint(8, 14))
            # ARIA's own root, as real planning studies carry: the run must NOT skip these as verification.
            study = StudyInfo(gen.uid(VARIAN_UID_ROOT), rt_date, gen.time(), D.RT_COURSE_DESCRIPTION, accession="",
                              study_id="RT1")
            rt = write_rt_set(gen.pacs / patient_folder(p.hospital_id), info, gen.uid, study=study, seed=rng.randrange(2**31))
            p.studies.append(SyntheticStudy(study.study_uid, "", rt_date, D.RT_COURSE_DESCRIPTION,
                                            D.RT_COURSE_DESCRIPTION, "rt", rt.modalities, "RT1", 4, len(rt.paths)))
        for v in range(verification_patients.count(i)):
            n_verification = sum(1 for q in patients for x in q.studies if x.category == "verification")
            # RT verification CBCT (ARIA UID root): the run must skip it by UID prefix.
            when = (p.rt_start or gen.study_date()) + dt.timedelta(days=7 * (v + 1))
            study = StudyInfo(gen.uid(RT_VERIFICATION_UID_ROOTS[n_verification % 2] + "."), when, gen.time(), D.RT_VERIFICATION_DESCRIPTION,
                              accession="", study_id="")
            series_uid, frame_uid = gen.uid(), gen.uid()
            sops = [gen.uid() for _ in range(3)]
            write_image_series(
                [(pacs_path(gen.pacs, p.hospital_id, study.study_uid, series_uid, sop), sop) for sop in sops],
                info, study, modality="CT", series_uid=series_uid, series_number=1, series_description="CBCT",
                frame_of_reference_uid=frame_uid, rng=gen.np_rng,
            )
            p.studies.append(SyntheticStudy(study.study_uid, "", when, study.description, study.description,
                                            "verification", ("CT",), "", 1, 3))

    broken = _write_broken(gen, patients)
    failures = _failure_records(gen, patients)
    for p in patients:
        if p.deceased:
            seen = [s.study_date for s in p.studies if s.study_date != PLACEHOLDER_DATE]
            p.date_of_death = max(seen) + dt.timedelta(days=rng.randint(30, 400))
    return patients, broken, failures


def _write_broken(gen: _Gen, patients: list[SyntheticPatient]) -> list[Path]:
    """A truncated DICOM inside a real series, and a text file named .dcm.

    The truncated file is an extra instance of a real series cut inside the Pixel Data element
    header (an interrupted transfer): ``pydicom.dcmread`` raises on it, with or without
    ``stop_before_pixels``. pydicom is lenient about most other cut points, so it is cut there.
    """
    pixel_tag = b"\xe0\x7f\x10\x00O"  # (7FE0,0010) with VR OB/OW, explicit VR little endian
    template = None
    for p in patients:
        for s in p.studies:
            if s.category in ("rt", "verification") or s.modalities[0] not in ("CT", "MR", "PT"):
                continue
            for f in sorted((gen.pacs / patient_folder(p.hospital_id) / s.study_uid).glob("*/*.dcm")):
                if pixel_tag in f.read_bytes():
                    template = f
                    break
            if template:
                break
        if template:
            break
    assert template is not None, "the coverage list always writes an MR study first"
    data = template.read_bytes()
    truncated = template.parent / f"{gen.uid()}.dcm"
    truncated.write_bytes(data[: data.rindex(pixel_tag) + 10])  # mid way through the 4-byte length
    text = gen.pacs / patient_folder(patients[min(1, len(patients) - 1)].hospital_id) / "export-log.dcm"
    text.write_text("PACS export log (not a DICOM file)\nstatus: completed with warnings\n", encoding="utf-8")
    return [truncated, text]


def _failure_records(gen: _Gen, patients: list[SyntheticPatient]) -> list[dict]:
    """~8 XNAT DQR query results for studies ordered but without images (they are not in pacs/)."""
    rng = gen.rng
    records = []
    for k in range(8):
        p = patients[rng.randrange(len(patients))]
        base, _ = rng.choice([(d, "") for d in _RANDOM_INCLUDE + D.EXCLUDE_EXAMPLES + D.UNKNOWN_EXAMPLES])
        date = PLACEHOLDER_DATE if k == 6 else gen.study_date()
        accession = gen.accession()
        study_uid = "" if k in (3, 7) else gen.uid()
        study_id = "" if k in (1, 3, 5) else str(rng.randrange(1, 99999))
        mods = list(D.MODALITIES[base])
        ymd = date.strftime("%Y%m%d")
        criteria: dict = {"pacsId": 1}
        if k % 2:
            criteria["patientId"] = p.hospital_id
            criteria["studyDateRange"] = {"start": (date - dt.timedelta(days=1)).isoformat(),
                                          "end": (date + dt.timedelta(days=1)).isoformat()}
        else:
            criteria["accessionNumber"] = accession
        records.append({
            "criteria": criteria,
            "relabelMap": {"Subject": p.subject, "Session": f"{p.subject}_{mods[0]}_{ymd}"},
            "studies": [{
                "accessionNumber": accession,
                "modalitiesInStudy": mods,
                "patient": {"id": p.hospital_id, "name": p.name, "sex": p.sex},
                "studyDate": ymd,
                "studyDescription": base,
                "studyId": study_id,
                "studyInstanceUid": study_uid,
            }],
        })
        p.studies.append(SyntheticStudy(study_uid, accession, date, base, base,
                                        "include" if base in D.INCLUDE_EXAMPLES else
                                        "exclude" if base in D.EXCLUDE_EXAMPLES else "unknown",
                                        tuple(mods), study_id, 0, 0, in_pacs=False))
    return records


def _csv(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _write_side_inputs(paths: DemoPaths, failures: list[dict]) -> None:
    ps = paths.patients
    paths.cohort.write_text(
        _csv([["HospitalID", "NHSNumber"]] + [[p.hospital_id, p.nhs_number or ""] for p in ps]), encoding="utf-8"
    )
    paths.reference_dates.write_text(
        _csv([["Subject", "Reference Date"]]
             + [[p.subject, p.rt_start.strftime("%d/%m/%Y")] for p in ps if p.rt_start is not None]),
        encoding="utf-8",
    )
    paths.deceased.write_text(
        _csv([["HospitalID", "DateOfDeath"]]
             + [[p.hospital_id, p.date_of_death.strftime("%d/%m/%Y")] for p in ps if p.date_of_death]),
        encoding="utf-8",
    )
    paths.failures.write_text(json.dumps(failures, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths.config.write_text(
        "# Synthetic demo cohort written by `rtlake demo-data` (paths are relative to this file).\n"
        "[project]\n"
        'name = "HNC_DEMO"\n'
        'state_dir = "state"\n'
        "\n[source]\n"
        'kind = "folder"\n'
        "\n[source.folder]\n"
        'path = "pacs"\n'
        "\n[store]\n"
        'kind = "lake"\n'
        "\n[store.lake]\n"
        'path = "lake"\n'
        "\n[inputs]\n"
        f'cohort = "{paths.cohort.name}"\n'
        f'deceased = "{paths.deceased.name}"\n'
        f'reference_dates = "{paths.reference_dates.name}"\n'
        "\n[report]\n"
        'outbox = "outbox"\n',
        encoding="utf-8",
    )
