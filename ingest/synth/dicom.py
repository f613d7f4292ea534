"""Small, valid DICOM Part 10 writers for synthetic studies (shared by the demo cohort and RT sets).

Everything here is deterministic: UIDs come from a seeded :class:`UidFactory`, pixel data from a
seeded numpy generator, and no clock is read. The same inputs give byte-identical files.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from pydicom import dcmwrite
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian

# A fixed implementation identity, so files do not change with the installed pydicom version.
IMPLEMENTATION_CLASS_UID = "2.25.186538309917263170545218011541846233751"
IMPLEMENTATION_VERSION_NAME = "RTLAKE_SYNTH_1"

# Varian ARIA: every study it makes starts with VARIAN_UID_ROOT (planning CT, RTSTRUCT, RTPLAN, RTDOSE
# too); only the two verification (portal/CBCT) roots below are skipped by the run's default.
VARIAN_UID_ROOT = "1.2.246.352.71.1."
RT_VERIFICATION_UID_ROOTS = ("1.2.246.352.71.1.658820455611", "1.2.246.352.71.1.850931706547")

SOP_CLASS_UIDS: dict[str, str] = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "MR": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "PT": "1.2.840.10008.5.1.4.1.1.128",  # Positron Emission Tomography Image Storage
    "CR": "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "RF": "1.2.840.10008.5.1.4.1.1.12.2",  # X-Ray Radiofluoroscopic Image Storage
    "XA": "1.2.840.10008.5.1.4.1.1.12.1",  # X-Ray Angiographic Image Storage
    "NM": "1.2.840.10008.5.1.4.1.1.20",  # Nuclear Medicine Image Storage
    "US": "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
    "SR": "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR Storage
    "RTSTRUCT": "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set Storage
    "RTPLAN": "1.2.840.10008.5.1.4.1.1.481.5",  # RT Plan Storage
    "RTDOSE": "1.2.840.10008.5.1.4.1.1.481.2",  # RT Dose Storage
}
# Detached Study Management SOP Class: the conventional ReferencedSOPClassUID of RTReferencedStudySequence.
STUDY_REFERENCE_SOP_CLASS_UID = "1.2.840.10008.3.1.2.3.1"


class UidFactory:
    """Deterministic UIDs: ``2.25.<integer>`` from a seeded RNG (never uuid4, never the clock).

    >>> UidFactory(7)() == UidFactory(7)()
    True
    """

    def __init__(self, seed: int | str | random.Random) -> None:
        self._rng = seed if isinstance(seed, random.Random) else random.Random(f"uid:{seed}")

    def __call__(self, prefix: str = "2.25.") -> str:
        if prefix == "2.25.":
            # A 2.25 UID is a 128-bit UUID as a decimal integer (no leading zero, below 2**128).
            return f"{prefix}{self._rng.randrange(10**37, 2**128)}"
        digits = min(30, 64 - len(prefix))
        return f"{prefix}{self._rng.randrange(10 ** (digits - 1), 10**digits)}"


@dataclass(frozen=True)
class PatientInfo:
    """Patient module values written into every instance."""

    patient_id: str
    name: str  # DICOM PN, "FAMILY^Given"
    birth_date: dt.date
    sex: str  # "M" | "F" | "O"


@dataclass(frozen=True)
class StudyInfo:
    """General Study module values shared by every series of a study."""

    study_uid: str
    study_date: dt.date
    study_time: str  # HHMMSS
    description: str
    accession: str = ""
    study_id: str = ""
    referring_physician: str = ""


def da(d: dt.date) -> str:
    return d.strftime("%Y%m%d")


def new_dataset(
    patient: PatientInfo,
    study: StudyInfo,
    *,
    modality: str,
    series_uid: str,
    sop_uid: str,
    series_number: int,
    instance_number: int,
    series_description: str,
    sop_class_uid: str | None = None,
) -> Dataset:
    """A dataset with file meta, SOP common, patient, study, series and equipment modules filled in."""
    sop_class = sop_class_uid or SOP_CLASS_UIDS[modality]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = da(study.study_date)
    ds.InstanceCreationTime = study.study_time
    ds.StudyDate = da(study.study_date)
    ds.SeriesDate = da(study.study_date)
    ds.ContentDate = da(study.study_date)
    ds.StudyTime = study.study_time
    ds.SeriesTime = study.study_time
    ds.ContentTime = study.study_time
    ds.AccessionNumber = study.accession
    ds.Modality = modality
    ds.Manufacturer = "rtlake synthetic"
    ds.InstitutionName = "Synthetic NHS Foundation Trust"
    ds.ReferringPhysicianName = study.referring_physician
    ds.StationName = "SYNTH01"
    ds.StudyDescription = study.description
    ds.SeriesDescription = series_description
    ds.ManufacturerModelName = "rtlake-synth"
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = da(patient.birth_date)
    ds.PatientSex = patient.sex
    ds.PatientIdentityRemoved = "NO"
    ds.SoftwareVersions = IMPLEMENTATION_VERSION_NAME
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    return ds


def set_pixels(ds: Dataset, pixels: np.ndarray, *, signed: bool | None = None) -> None:
    """Image Pixel module for a single-channel 2-D (or multi-frame 3-D) array."""
    arr = np.ascontiguousarray(pixels)
    if arr.ndim == 3:
        ds.NumberOfFrames = arr.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = int(arr.shape[-2])
    ds.Columns = int(arr.shape[-1])
    bits = arr.dtype.itemsize * 8
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if (arr.dtype.kind == "i" if signed is None else signed) else 0
    # An explicit VR (not the dictionary's ambiguous "OB or OW") spares dcmwrite a deep copy per file.
    ds.add_new(0x7FE00010, "OB" if bits == 8 else "OW", arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())


def raw_ds(tag: int, values: Sequence[float], places: int = 2) -> RawDataElement:
    """A pre-encoded multi-valued DS element (fast path for long ContourData)."""
    text = "\\".join(fmt_ds(v, places) for v in values).encode("ascii")
    if len(text) % 2:
        text += b" "
    return RawDataElement(Tag(tag), "DS", len(text), text, 0, False, True)


def set_plane(
    ds: Dataset,
    *,
    position: Sequence[float],
    spacing_rc: Sequence[float],
    thickness: float | None,
    frame_of_reference_uid: str,
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
) -> None:
    """Frame of Reference + Image Plane modules (axial, head first supine by default)."""
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.ImagePositionPatient = [fmt_ds(v) for v in position]
    ds.ImageOrientationPatient = [fmt_ds(v) for v in orientation]
    ds.PixelSpacing = [fmt_ds(v) for v in spacing_rc]
    if thickness is not None:
        ds.SliceThickness = fmt_ds(thickness)
        ds.SliceLocation = fmt_ds(position[2])


def fmt_ds(value: float, places: int = 4) -> str:
    """A DS string of at most 16 characters, without a trailing '.0' noise and never '-0'."""
    text = f"{round(float(value), places):.{places}f}".rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    return text


def seq(*items: Dataset) -> DicomSequence:
    return DicomSequence(list(items))


def item(**values: object) -> Dataset:
    """A sequence item from keyword=value pairs (DICOM keywords)."""
    ds = Dataset()
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


def write(ds: Dataset, path: Path) -> Path:
    """Write a Part 10 file (preamble, DICM, file meta, Explicit VR Little Endian)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _mark_as_encoded(ds)
    dcmwrite(path, ds, enforce_file_format=True)
    return path


def _mark_as_encoded(ds: Dataset) -> None:
    """Declare the dataset (and its items) already in the target encoding.

    pydicom otherwise treats a new dataset as "encoding changed": it runs the ambiguous-VR pass and
    decodes pre-encoded raw elements (ContourData) again, which doubles the write time. Every
    ambiguous VR is set explicitly here (Pixel Data OB/OW), so the pass has nothing to do.
    """
    ds.set_original_encoding(False, True, ds._character_set)
    for elem in ds.elements():
        if elem.VR == "SQ":
            for child in ds[elem.tag].value:
                _mark_as_encoded(child)


def patient_folder(patient_id: str) -> str:
    """Folder name for a patient in the demo PACS: stable, but not the hospital ID itself.

    Paths end up in log lines and failure reasons (a broken file is named by its path), so the
    layout must not spell out an identifier.
    """
    import hashlib

    return "PAT" + hashlib.sha256(patient_id.encode()).hexdigest()[:10]


def pacs_path(root: Path, patient_id: str, study_uid: str, series_uid: str, sop_uid: str) -> Path:
    """The demo PACS folder layout: ``<root>/PAT<hash>/<study uid>/<series uid>/<sop uid>.dcm``."""
    return root / patient_folder(patient_id) / study_uid / series_uid / f"{sop_uid}.dcm"


# ----------------------------------------------------------------------------------------------
# Diagnostic images (one function per modality family; all tiny)


def _phantom(rng: np.random.Generator, size: int, *, lo: float, hi: float, dtype: str) -> np.ndarray:
    """A smooth head-ish blob on a dark background with a little deterministic texture."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2
    cx = c + rng.uniform(-2, 2)
    cy = c + rng.uniform(-2, 2)
    r2 = ((x - cx) / (0.42 * size)) ** 2 + ((y - cy) / (0.36 * size)) ** 2
    img = np.where(r2 < 1, hi - (hi - lo) * 0.3 * r2, lo)
    img += rng.normal(0, (hi - lo) * 0.01, img.shape)
    return np.clip(np.rint(img), np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)


# modality -> (background, foreground, dtype, BitsStored override)
_PIXELS: dict[str, tuple[float, float, str, int | None]] = {
    "CT": (24, 1064, "int16", None),  # stored = HU + 1024
    "MR": (0, 900, "uint16", None),
    "PT": (0, 5000, "uint16", None),
    "CR": (100, 3000, "uint16", 12),
    "DX": (100, 3000, "uint16", 12),
    "RF": (100, 3000, "uint16", 12),
    "XA": (100, 3000, "uint16", 12),
    "US": (0, 200, "uint8", None),
    "NM": (0, 400, "uint16", None),
}


def _set_modality_pixels(ds: Dataset, modality: str, rng: np.random.Generator, size: int) -> None:
    spec = _PIXELS.get(modality)
    if spec is None:  # SR
        return
    lo, hi, dtype, stored = spec
    arr = _phantom(rng, size, lo=lo, hi=hi, dtype=dtype)
    set_pixels(ds, arr[None, ...] if modality == "NM" else arr)
    if stored is not None:
        ds.BitsStored = stored
        ds.HighBit = stored - 1


def _image_dataset(
    patient: PatientInfo,
    study: StudyInfo,
    *,
    modality: str,
    series_uid: str,
    sop_uid: str,
    series_number: int,
    instance_number: int,
    series_description: str,
    frame_of_reference_uid: str,
    size: int,
    slice_spacing: float,
) -> Dataset:
    """Every module of a diagnostic instance except its pixels."""
    ds = new_dataset(
        patient,
        study,
        modality=modality,
        series_uid=series_uid,
        sop_uid=sop_uid,
        series_number=series_number,
        instance_number=instance_number,
        series_description=series_description,
    )
    z = (instance_number - 1) * slice_spacing
    pix = 256.0 / size
    if modality in ("CT", "MR", "PT"):
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        set_plane(
            ds,
            position=(-128 + pix / 2, -128 + pix / 2, z),
            spacing_rc=(pix, pix),
            thickness=slice_spacing,
            frame_of_reference_uid=frame_of_reference_uid,
        )
        ds.AcquisitionNumber = 1
        if modality == "CT":
            ds.KVP = "120"
            ds.RescaleIntercept = "-1024"
            ds.RescaleSlope = "1"
            ds.RescaleType = "HU"
        elif modality == "MR":
            ds.ScanningSequence = "SE"
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "2D"
            ds.RepetitionTime = "500"
            ds.EchoTime = "15"
            ds.EchoTrainLength = 1
            ds.MagneticFieldStrength = "1.5"
        else:
            ds.SeriesType = ["STATIC", "IMAGE"]
            ds.Units = "BQML"
            ds.CountsSource = "EMISSION"
            ds.CorrectedImage = ["DECY", "ATTN"]
            ds.DecayCorrection = "START"
            ds.RescaleIntercept = "0"
            ds.RescaleSlope = "1"
            ds.NumberOfSlices = 1
            ds.ImageIndex = instance_number
            ds.RadiopharmaceuticalInformationSequence = seq(
                item(Radiopharmaceutical="Fluorodeoxyglucose", RadionuclideTotalDose="350000000",
                     RadionuclideHalfLife="6586.2", RadiopharmaceuticalStartTime=study.study_time)
            )
    elif modality in ("CR", "DX", "RF", "XA", "US"):
        ds.ImageType = ["ORIGINAL", "PRIMARY"] + (["SINGLE PLANE"] if modality in ("RF", "XA") else [])
        ds.PatientOrientation = ["L", "F"] if modality != "US" else ""
        if modality == "DX":
            ds.PresentationIntentType = "FOR PRESENTATION"
            ds.ImagerPixelSpacing = [fmt_ds(pix), fmt_ds(pix)]
            ds.BurnedInAnnotation = "NO"
            ds.PixelIntensityRelationship = "LOG"
            ds.PixelIntensityRelationshipSign = 1
            ds.RescaleIntercept = "0"
            ds.RescaleSlope = "1"
            ds.RescaleType = "US"
            ds.LossyImageCompression = "00"
        if modality == "CR":
            ds.BodyPartExamined = "HEAD"
        if modality in ("RF", "XA"):
            ds.PositionerMotion = "STATIC"
            ds.KVP = "70"
            ds.PixelIntensityRelationship = "LIN"
    elif modality == "NM":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "STATIC", "EMISSION"]
        ds.FrameIncrementPointer = 0x00540010  # EnergyWindowVector
        ds.EnergyWindowVector = [1]
        ds.NumberOfEnergyWindows = 1
        ds.DetectorVector = [1]
        ds.NumberOfDetectors = 1
        ds.PixelSpacing = [fmt_ds(pix * 2), fmt_ds(pix * 2)]
        ds.RadiopharmaceuticalInformationSequence = seq(item(Radiopharmaceutical="Tc99m MDP"))
    elif modality == "SR":
        _basic_text_sr(ds, study)
    else:
        raise ValueError(f"no synthetic writer for modality {modality!r}")
    return ds


def write_image_instance(
    path: Path,
    patient: PatientInfo,
    study: StudyInfo,
    *,
    modality: str,
    series_uid: str,
    sop_uid: str,
    series_number: int,
    instance_number: int,
    series_description: str,
    frame_of_reference_uid: str,
    rng: np.random.Generator,
    size: int = 32,
    slice_spacing: float = 5.0,
) -> Path:
    """Write one small diagnostic instance of ``modality`` (CT, MR, PT, CR, DX, RF, XA, NM, US, SR).

    Raises:
        ValueError: a modality without a synthetic writer.
    """
    ds = _image_dataset(patient, study, modality=modality, series_uid=series_uid, sop_uid=sop_uid,
                        series_number=series_number, instance_number=instance_number,
                        series_description=series_description, frame_of_reference_uid=frame_of_reference_uid,
                        size=size, slice_spacing=slice_spacing)
    _set_modality_pixels(ds, modality, rng, size)
    return write(ds, path)


def write_image_series(
    instances: Sequence[tuple[Path, str]],
    patient: PatientInfo,
    study: StudyInfo,
    *,
    modality: str,
    series_uid: str,
    series_number: int,
    series_description: str,
    frame_of_reference_uid: str,
    rng: np.random.Generator,
    size: int = 32,
    slice_spacing: float = 5.0,
) -> list[Path]:
    """Write a series: ``instances`` is (path, SOPInstanceUID) per instance, numbered from 1.

    The same bytes as :func:`write_image_instance` per instance, but the dataset is built once
    and only the per-instance values (UID, number, position, pixels) change.

    Raises:
        ValueError: a modality without a synthetic writer.
    """
    out: list[Path] = []
    ds: Dataset | None = None
    for number, (path, sop) in enumerate(instances, start=1):
        if ds is None:
            ds = _image_dataset(patient, study, modality=modality, series_uid=series_uid, sop_uid=sop,
                                series_number=series_number, instance_number=number,
                                series_description=series_description,
                                frame_of_reference_uid=frame_of_reference_uid, size=size,
                                slice_spacing=slice_spacing)
        else:
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
            ds.InstanceNumber = number
            if "ImagePositionPatient" in ds:
                z = (number - 1) * slice_spacing
                ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], fmt_ds(z)]
                ds.SliceLocation = fmt_ds(z)
            if "ImageIndex" in ds:
                ds.ImageIndex = number
        _set_modality_pixels(ds, modality, rng, size)
        out.append(write(ds, path))
    return out


def _basic_text_sr(ds: Dataset, study: StudyInfo) -> None:
    """A minimal Basic Text SR: a CONTAINER titled with a report code holding one TEXT finding."""
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = seq(
        item(CodeValue="18748-4", CodingSchemeDesignator="LN", CodeMeaning="Diagnostic Imaging Report")
    )
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ReferencedPerformedProcedureStepSequence = DicomSequence([])
    ds.PerformedProcedureCodeSequence = DicomSequence([])
    ds.ContentSequence = seq(
        item(
            RelationshipType="CONTAINS",
            ValueType="TEXT",
            ConceptNameCodeSequence=seq(
                item(CodeValue="121071", CodingSchemeDesignator="DCM", CodeMeaning="Finding")
            ),
            TextValue=f"Synthetic report for '{study.description}'. No real patient data.",
        )
    )
