"""A geometry-consistent synthetic radiotherapy set: planning CT + RTSTRUCT + RTPLAN + RTDOSE.

:func:`write_rt_set` writes one RT course as a single study with no accession number, the way
planning systems export it. All four objects share one FrameOfReferenceUID; contours lie exactly
on CT slice planes and reference the CT SOPInstanceUIDs; the dose references the plan and covers
the CT volume on a (by default) coarser grid. ROIs are analytic shapes (:class:`RoiSpec`), so tests
can compare rasterised masks, volumes and DVH statistics with exact expectations.

Coordinates are DICOM patient coordinates in mm (x to the patient's left, y posterior, z superior);
arrays are indexed ``[z, y, x]`` and ``shape``/``spacing`` are given in that order.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
from pydicom.dataset import Dataset

from .descriptions import RT_COURSE_DESCRIPTION
from .dicom import (
    SOP_CLASS_UIDS,
    STUDY_REFERENCE_SOP_CLASS_UID,
    PatientInfo,
    StudyInfo,
    UidFactory,
    da,
    fmt_ds,
    item,
    new_dataset,
    raw_ds,
    seq,
    set_pixels,
    set_plane,
    write,
)

Layout = Literal["pacs", "flat"]


@dataclass(frozen=True)
class Geometry:
    """A regular axial grid: ``origin`` is the centre of voxel [0, 0, 0] as (x, y, z) mm."""

    shape: tuple[int, int, int]  # (nz, ny, nx)
    spacing: tuple[float, float, float]  # (dz, dy, dx) mm
    origin: tuple[float, float, float]  # (x, y, z) mm

    @classmethod
    def centred(cls, shape: Sequence[int], spacing: Sequence[float]) -> "Geometry":
        """A grid centred on the patient-coordinate origin."""
        nz, ny, nx = (int(v) for v in shape)
        dz, dy, dx = (float(v) for v in spacing)
        return cls((nz, ny, nx), (dz, dy, dx), (-(nx - 1) * dx / 2, -(ny - 1) * dy / 2, -(nz - 1) * dz / 2))

    @property
    def xs(self) -> np.ndarray:
        return self.origin[0] + np.arange(self.shape[2]) * self.spacing[2]

    @property
    def ys(self) -> np.ndarray:
        return self.origin[1] + np.arange(self.shape[1]) * self.spacing[1]

    def z(self, k: int) -> float:
        """z of slice k, rounded as written to ImagePositionPatient (contours use the same value)."""
        return round(self.origin[2] + k * self.spacing[0], 4)

    @property
    def zs(self) -> list[float]:
        return [self.z(k) for k in range(self.shape[0])]

    def coarser(self, factor: Sequence[int]) -> "Geometry":
        """A grid covering the same extent with spacing multiplied by ``factor`` (per z, y, x)."""
        fz, fy, fx = (int(f) for f in factor)
        nz, ny, nx = self.shape
        dz, dy, dx = self.spacing
        shape = (math.ceil(nz / fz), math.ceil(ny / fy), math.ceil(nx / fx))
        origin = (
            self.origin[0] + (fx - 1) * dx / 2,
            self.origin[1] + (fy - 1) * dy / 2,
            self.origin[2] + (fz - 1) * dz / 2,
        )
        return Geometry(shape, (dz * fz, dy * fy, dx * fx), origin)


@dataclass(frozen=True)
class RoiSpec:
    """An analytic ROI: an ellipsoid, or an elliptic cylinder between ``centre.z ± radii.z``.

    Contours are written on every CT plane the shape crosses as CLOSED_PLANAR polygons of
    ``points`` vertices inscribed in the cross-section ellipse.
    """

    name: str
    interpreted_type: str  # EXTERNAL, PTV, GTV, CTV, ORGAN, AVOIDANCE...
    centre: tuple[float, float, float]  # (x, y, z) mm
    radii: tuple[float, float, float]  # (rx, ry, rz) mm
    shape: Literal["ellipsoid", "cylinder"] = "ellipsoid"
    color: tuple[int, int, int] = (255, 0, 0)
    hu: float | None = None  # CT number painted inside (None: leave the CT as is)
    points: int = 36

    def scale_at(self, z: float) -> float:
        """Cross-section scale (0 when the plane misses the ROI) of the ellipse at height z."""
        t = (z - self.centre[2]) / self.radii[2]
        if self.shape == "cylinder":
            return 1.0 if abs(t) <= 1.0 + 1e-9 else 0.0
        s2 = 1.0 - t * t
        return math.sqrt(s2) if s2 > 0.04 else 0.0  # skip slivers thinner than a fifth of the radius

    def polygon(self, z: float) -> list[tuple[float, float, float]]:
        s = self.scale_at(z)
        if s == 0.0:
            return []
        cx, cy, _ = self.centre
        rx, ry = self.radii[0] * s, self.radii[1] * s
        return [
            (
                round(cx + rx * math.cos(2 * math.pi * i / self.points), 2),
                round(cy + ry * math.sin(2 * math.pi * i / self.points), 2),
                z,
            )
            for i in range(self.points)
        ]

    def mask(self, geometry: Geometry) -> np.ndarray:
        """Voxel-centre inclusion in the (smooth) ellipse cross-sections, shape ``geometry.shape``."""
        out = np.zeros(geometry.shape, dtype=bool)
        xx, yy = np.meshgrid(geometry.xs, geometry.ys)  # [y, x]
        for k, z in enumerate(geometry.zs):
            s = self.scale_at(z)
            if s:
                out[k] = ((xx - self.centre[0]) / (self.radii[0] * s)) ** 2 + (
                    (yy - self.centre[1]) / (self.radii[1] * s)
                ) ** 2 <= 1.0
        return out

    def normalised_radius(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Ellipsoidal radius (1 on the surface) at points, used for the smooth dose field."""
        return np.sqrt(
            ((x - self.centre[0]) / self.radii[0]) ** 2
            + ((y - self.centre[1]) / self.radii[1]) ** 2
            + ((z - self.centre[2]) / self.radii[2]) ** 2
        )


def default_rois(geometry: Geometry) -> list[RoiSpec]:
    """Head-and-neck ROIs scaled to the grid: BODY, PTV, GTV, Parotid_L/R, SpinalCord, Brainstem."""
    nz, ny, nx = geometry.shape
    dz, dy, dx = geometry.spacing
    cx = geometry.origin[0] + (nx - 1) * dx / 2
    cy = geometry.origin[1] + (ny - 1) * dy / 2
    cz = geometry.origin[2] + (nz - 1) * dz / 2
    length = nz * dz
    zlo, zhi = geometry.z(0), geometry.z(nz - 1)
    bx, by = 0.30 * nx * dx, 0.26 * ny * dy  # body semi-axes
    cord_y = cy + 0.55 * by
    cord_top = zhi - 0.3 * length
    gtv = (cx - 0.22 * bx, cy - 0.15 * by, cz - 0.05 * length)
    g = (12.0, 12.0, max(12.0, 0.17 * length))
    margin = 7.0
    par_r = (11.0, 14.0, max(10.0, 0.22 * length))
    par_z = cz + 0.2 * length
    return [
        RoiSpec("BODY", "EXTERNAL", (cx, cy, (zlo + zhi) / 2), (bx, by, (zhi - zlo) / 2 + dz / 4), "cylinder",
                (0, 255, 0), hu=40.0),
        RoiSpec("PTV", "PTV", gtv, (g[0] + margin, g[1] + margin, g[2] + margin), color=(255, 0, 0)),
        RoiSpec("GTV", "GTV", gtv, g, color=(255, 255, 0), hu=70.0),
        RoiSpec("Parotid_L", "ORGAN", (cx + 0.62 * bx, cy + 0.05 * by, par_z), par_r, color=(0, 128, 255), hu=-20.0),
        RoiSpec("Parotid_R", "ORGAN", (cx - 0.62 * bx, cy + 0.05 * by, par_z), par_r, color=(0, 200, 255), hu=-20.0),
        RoiSpec("SpinalCord", "ORGAN", (cx, cord_y, (zlo + cord_top) / 2), (5.0, 5.0, (cord_top - zlo) / 2 + dz / 4),
                "cylinder", (255, 0, 255), hu=30.0),
        RoiSpec("Brainstem", "ORGAN", (cx, cord_y - 4.0, zhi - 0.12 * length), (11.0, 11.0, max(9.0, 0.18 * length)),
                color=(128, 0, 255), hu=35.0),
    ]


@dataclass
class RtSetInfo:
    """Paths and UIDs of everything :func:`write_rt_set` wrote."""

    study_uid: str
    frame_of_reference_uid: str
    geometry: Geometry
    dose_geometry: Geometry
    rois: list[RoiSpec]
    prescription_gy: float
    fractions: int
    ct_series_uid: str
    ct_sop_uids: list[str]
    ct_paths: list[Path]
    rtstruct_series_uid: str
    rtstruct_uid: str
    rtstruct_path: Path
    rtplan_series_uid: str
    rtplan_uid: str
    rtplan_path: Path
    rtdose_series_uid: str
    rtdose_uid: str
    rtdose_path: Path
    dose: np.ndarray = field(repr=False)  # Gy on dose_geometry, [z, y, x], as stored (after scaling)

    @property
    def paths(self) -> list[Path]:
        return [*self.ct_paths, self.rtstruct_path, self.rtplan_path, self.rtdose_path]

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("CT", "RTSTRUCT", "RTPLAN", "RTDOSE")

    def roi_number(self, name: str) -> int:
        return [r.name for r in self.rois].index(name) + 1


def write_rt_set(
    out_dir: Path,
    patient: PatientInfo | str,
    uid_factory: Callable[[], str] | None = None,
    *,
    study: StudyInfo | None = None,
    study_date: dt.date = dt.date(2020, 1, 6),
    shape: Sequence[int] = (24, 64, 64),
    spacing: Sequence[float] = (3.0, 4.0, 4.0),
    origin: Sequence[float] | None = None,
    rois: Sequence[RoiSpec] | None = None,
    prescription_gy: float = 65.0,
    fractions: int = 30,
    dose_factor: Sequence[int] = (1, 2, 2),
    dose_grid_scaling: float = 1e-5,
    noise_hu: float = 8.0,
    layout: Layout = "pacs",
    seed: int = 0,
) -> RtSetInfo:
    """Write planning CT slices, an RTSTRUCT, an RTPLAN and an RTDOSE for one patient.

    Args:
        out_dir: ``layout="pacs"`` writes ``out_dir/<study>/<series>/<sop>.dcm`` (pass
            ``pacs/<patient id>``); ``layout="flat"`` writes ``out_dir/CT/CT_0001.dcm...``,
            ``out_dir/RS.dcm``, ``RP.dcm`` and ``RD.dcm`` (handy for converters and phantoms).
        patient: patient module values, or just a patient ID (name ``PHANTOM^RT``).
        uid_factory: returns a new UID per call; default ``UidFactory(seed)``.
        study: study values; default an RT course on ``study_date`` with no accession and StudyID "RT1".
        shape, spacing, origin: CT grid as (nz, ny, nx), (dz, dy, dx) mm and the (x, y, z) mm centre of
            the first voxel (default: centred on 0).
        rois: analytic ROIs (default :func:`default_rois`); ROIs named "PTV" and "BODY" shape the dose.
        prescription_gy, fractions: the plan's prescription; the dose peaks at ~1.03 x prescription.
        dose_factor: dose grid spacing as a multiple of the CT spacing per (z, y, x).
        dose_grid_scaling: Gy per stored uint32 unit.
        noise_hu: standard deviation of the deterministic CT noise.
        seed: seeds the default UID factory and the CT noise.

    Raises:
        ValueError: an ROI reaches outside the CT grid, or there is no ROI to prescribe to.
    """
    uid = uid_factory or UidFactory(seed)
    if isinstance(patient, str):
        patient = PatientInfo(patient, "PHANTOM^RT", dt.date(1960, 1, 1), "O")
    geometry = (
        Geometry.centred(shape, spacing)
        if origin is None
        else Geometry(tuple(int(v) for v in shape), tuple(float(v) for v in spacing), tuple(float(v) for v in origin))  # type: ignore[arg-type]
    )
    rois = list(rois) if rois is not None else default_rois(geometry)
    _check_rois(rois, geometry)
    if study is None:
        study = StudyInfo(uid(), study_date, "083000", RT_COURSE_DESCRIPTION, accession="", study_id="RT1")
    frame_uid = uid()
    ct_series = uid()
    rs_series, rs_uid = uid(), uid()
    rp_series, rp_uid = uid(), uid()
    rd_series, rd_uid = uid(), uid()
    ct_uids = [uid() for _ in range(geometry.shape[0])]

    def where(modality: str, series: str, sop: str, index: int = 0) -> Path:
        if layout == "pacs":
            return out_dir / study.study_uid / series / f"{sop}.dcm"
        if modality == "CT":
            return out_dir / "CT" / f"CT_{index + 1:04d}.dcm"
        return out_dir / {"RTSTRUCT": "RS.dcm", "RTPLAN": "RP.dcm", "RTDOSE": "RD.dcm"}[modality]

    # --- CT -----------------------------------------------------------------------------------
    hu = _ct_volume(geometry, rois, noise_hu, seed)
    ct_paths = []
    ds = new_dataset(patient, study, modality="CT", series_uid=ct_series, sop_uid=ct_uids[0], series_number=1,
                     instance_number=1, series_description="RT Planning CT")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.AcquisitionNumber = 1
    ds.KVP = "120"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    for k, sop in enumerate(ct_uids):
        # One dataset re-used slice by slice: only the per-instance values change.
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.InstanceNumber = k + 1
        set_plane(ds, position=(geometry.origin[0], geometry.origin[1], geometry.z(k)),
                  spacing_rc=(geometry.spacing[1], geometry.spacing[2]), thickness=geometry.spacing[0],
                  frame_of_reference_uid=frame_uid)
        set_pixels(ds, (hu[k] + 1024).astype(np.int16))
        ct_paths.append(write(ds, where("CT", ct_series, sop, k)))

    # --- RTSTRUCT ----------------------------------------------------------------------------
    ds = new_dataset(patient, study, modality="RTSTRUCT", series_uid=rs_series, sop_uid=rs_uid, series_number=2,
                     instance_number=1, series_description="Structure Set")
    _rt_series(ds)
    _structure_set(ds, study, geometry, rois, frame_uid, ct_series, ct_uids)
    rs_path = write(ds, where("RTSTRUCT", rs_series, rs_uid))

    # --- RTPLAN ------------------------------------------------------------------------------
    ptv_number = next((i + 1 for i, r in enumerate(rois) if r.interpreted_type == "PTV"), None)
    if ptv_number is None:
        raise ValueError("write_rt_set needs an ROI of interpreted type PTV to prescribe to")
    ptv = rois[ptv_number - 1]
    ds = new_dataset(patient, study, modality="RTPLAN", series_uid=rp_series, sop_uid=rp_uid, series_number=3,
                     instance_number=1, series_description="Plan")
    _rt_series(ds)
    _plan(ds, study, rois, ptv_number, ptv, frame_uid, rs_uid, prescription_gy, fractions, uid)
    rp_path = write(ds, where("RTPLAN", rp_series, rp_uid))

    # --- RTDOSE ------------------------------------------------------------------------------
    dose_geometry = geometry.coarser(dose_factor)
    body = next((r for r in rois if r.interpreted_type == "EXTERNAL"), None)
    gy = _dose_field(dose_geometry, ptv, body, prescription_gy)
    stored = np.rint(gy / dose_grid_scaling).astype(np.uint32)
    ds = new_dataset(patient, study, modality="RTDOSE", series_uid=rd_series, sop_uid=rd_uid, series_number=4,
                     instance_number=1, series_description="Dose")
    _rt_series(ds)
    set_plane(ds, position=(dose_geometry.origin[0], dose_geometry.origin[1], dose_geometry.z(0)),
              spacing_rc=(dose_geometry.spacing[1], dose_geometry.spacing[2]), thickness=dose_geometry.spacing[0],
              frame_of_reference_uid=frame_uid)
    del ds.SliceLocation
    set_pixels(ds, stored)
    ds.FrameIncrementPointer = 0x3004000C  # GridFrameOffsetVector
    ds.GridFrameOffsetVector = [fmt_ds(z - dose_geometry.z(0)) for z in dose_geometry.zs]
    ds.DoseUnits = "GY"
    ds.DoseType = "PHYSICAL"
    ds.DoseSummationType = "PLAN"
    ds.DoseGridScaling = fmt_ds(dose_grid_scaling, 10)
    ds.TissueHeterogeneityCorrection = ["IMAGE", "ROI_OVERRIDE"]
    ds.ReferencedRTPlanSequence = seq(item(ReferencedSOPClassUID=SOP_CLASS_UIDS["RTPLAN"],
                                           ReferencedSOPInstanceUID=rp_uid))
    ds.ReferencedStructureSetSequence = seq(item(ReferencedSOPClassUID=SOP_CLASS_UIDS["RTSTRUCT"],
                                                 ReferencedSOPInstanceUID=rs_uid))
    rd_path = write(ds, where("RTDOSE", rd_series, rd_uid))

    return RtSetInfo(
        study_uid=study.study_uid, frame_of_reference_uid=frame_uid, geometry=geometry, dose_geometry=dose_geometry,
        rois=rois, prescription_gy=prescription_gy, fractions=fractions,
        ct_series_uid=ct_series, ct_sop_uids=ct_uids, ct_paths=ct_paths,
        rtstruct_series_uid=rs_series, rtstruct_uid=rs_uid, rtstruct_path=rs_path,
        rtplan_series_uid=rp_series, rtplan_uid=rp_uid, rtplan_path=rp_path,
        rtdose_series_uid=rd_series, rtdose_uid=rd_uid, rtdose_path=rd_path,
        dose=stored.astype(np.float64) * float(fmt_ds(dose_grid_scaling, 10)),
    )


# ----------------------------------------------------------------------------------------------


def _check_rois(rois: Sequence[RoiSpec], g: Geometry) -> None:
    xs, ys = g.xs, g.ys
    for r in rois:
        if (r.centre[0] - r.radii[0] < xs[0] or r.centre[0] + r.radii[0] > xs[-1]
                or r.centre[1] - r.radii[1] < ys[0] or r.centre[1] + r.radii[1] > ys[-1]):
            raise ValueError(f"ROI {r.name} reaches outside the CT grid")
        if not any(r.scale_at(z) for z in g.zs):
            raise ValueError(f"ROI {r.name} crosses no CT slice")


def _ct_volume(g: Geometry, rois: Sequence[RoiSpec], noise_hu: float, seed: int) -> np.ndarray:
    """HU volume: air, the ROIs painted in list order, a dense vertebra around the spinal canal, noise."""
    hu = np.full(g.shape, -1000.0, dtype=np.float32)
    body_mask = None
    for r in rois:
        if r.interpreted_type == "EXTERNAL":
            body_mask = r.mask(g)
            hu[body_mask] = r.hu if r.hu is not None else 40.0
    cord = next((r for r in rois if r.name.casefold() == "spinalcord"), None)
    if cord is not None:
        # Vertebra: a bone disc around the canal plus a vertebral body in front of it (y decreases anteriorly).
        xx, yy = np.meshgrid(g.xs, g.ys)
        r0 = 2.6 * max(cord.radii[0], cord.radii[1])
        arch = (xx - cord.centre[0]) ** 2 + (yy - cord.centre[1]) ** 2 <= r0**2
        vbody = ((xx - cord.centre[0]) / (1.3 * r0)) ** 2 + ((yy - cord.centre[1] + 1.6 * r0) / r0) ** 2 <= 1.0
        bone = arch | vbody
        hu[:, bone] = 700.0
    for r in rois:
        if r.interpreted_type != "EXTERNAL" and r.hu is not None:
            hu[r.mask(g)] = r.hu
    if noise_hu > 0:
        rng = np.random.default_rng(seed)
        noise = rng.normal(0.0, noise_hu, g.shape).astype(np.float32)
        if body_mask is not None:
            noise[~body_mask] *= 0.2
        hu += noise
    return np.clip(np.rint(hu), -1024, 3071)


def _dose_field(g: Geometry, ptv: RoiSpec, body: RoiSpec | None, prescription: float) -> np.ndarray:
    """Smooth dose (Gy): a plateau of ~prescription over the PTV falling off sigmoidally, a low-dose bath."""
    z, y, x = np.meshgrid(np.array(g.zs), g.ys, g.xs, indexing="ij")
    rho = ptv.normalised_radius(x, y, z)
    r_mean = float(np.mean(ptv.radii))
    d = (rho - 1.0) * r_mean  # ~signed distance to the PTV surface, mm
    core = prescription * (1.03 - 0.03 * np.minimum(rho, 1.0) ** 2)
    primary = core / (1.0 + np.exp((d - 9.0) / 3.0))
    bath = 0.25 * prescription * np.exp(-np.maximum(d, 0.0) / 35.0)
    dose = np.maximum(primary, bath)
    if body is not None:
        rb = np.sqrt(((x - body.centre[0]) / body.radii[0]) ** 2 + ((y - body.centre[1]) / body.radii[1]) ** 2)
        dose *= 1.0 / (1.0 + np.exp((rb - 1.0) * 25.0))  # smooth edge at the skin
    return dose


def _rt_series(ds: Dataset) -> None:
    ds.OperatorsName = ""


def _structure_set(
    ds: Dataset,
    study: StudyInfo,
    g: Geometry,
    rois: Sequence[RoiSpec],
    frame_uid: str,
    ct_series: str,
    ct_uids: Sequence[str],
) -> None:
    ct_class = SOP_CLASS_UIDS["CT"]
    ds.StructureSetLabel = "HN_RT1"
    ds.StructureSetName = "Head and neck"
    ds.StructureSetDate = da(study.study_date)
    ds.StructureSetTime = study.study_time
    ds.ReferencedFrameOfReferenceSequence = seq(
        item(
            FrameOfReferenceUID=frame_uid,
            RTReferencedStudySequence=seq(
                item(
                    ReferencedSOPClassUID=STUDY_REFERENCE_SOP_CLASS_UID,
                    ReferencedSOPInstanceUID=study.study_uid,
                    RTReferencedSeriesSequence=seq(
                        item(
                            SeriesInstanceUID=ct_series,
                            ContourImageSequence=seq(
                                *(item(ReferencedSOPClassUID=ct_class, ReferencedSOPInstanceUID=u) for u in ct_uids)
                            ),
                        )
                    ),
                )
            ),
        )
    )
    ds.StructureSetROISequence = seq(
        *(
            item(ROINumber=i + 1, ReferencedFrameOfReferenceUID=frame_uid, ROIName=r.name,
                 ROIGenerationAlgorithm="MANUAL")
            for i, r in enumerate(rois)
        )
    )
    contours = []
    for i, r in enumerate(rois):
        items = []
        for k, z in enumerate(g.zs):
            poly = r.polygon(z)
            if not poly:
                continue
            contour = item(
                ContourImageSequence=seq(item(ReferencedSOPClassUID=ct_class, ReferencedSOPInstanceUID=ct_uids[k])),
                ContourGeometricType="CLOSED_PLANAR",
                NumberOfContourPoints=len(poly),
                ContourNumber=len(items) + 1,
            )
            contour[0x30060050] = raw_ds(0x30060050, [v for p in poly for v in p])  # ContourData
            items.append(contour)
        contours.append(item(ROIDisplayColor=list(r.color), ReferencedROINumber=i + 1, ContourSequence=seq(*items)))
    ds.ROIContourSequence = seq(*contours)
    ds.RTROIObservationsSequence = seq(
        *(
            item(ObservationNumber=i + 1, ReferencedROINumber=i + 1, ROIObservationLabel=r.name,
                 RTROIInterpretedType=r.interpreted_type, ROIInterpreter="")
            for i, r in enumerate(rois)
        )
    )
    ds.ApprovalStatus = "APPROVED"
    ds.ReviewDate = da(study.study_date)
    ds.ReviewTime = study.study_time
    ds.ReviewerName = "Synthetic^Oncologist"


def _plan(
    ds: Dataset,
    study: StudyInfo,
    rois: Sequence[RoiSpec],
    ptv_number: int,
    ptv: RoiSpec,
    frame_uid: str,
    rs_uid: str,
    prescription: float,
    fractions: int,
    uid: Callable[[], str],
) -> None:
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.RTPlanLabel = "HN_VMAT_1"
    ds.RTPlanName = "H&N radical"
    ds.RTPlanDate = da(study.study_date)
    ds.RTPlanTime = study.study_time
    ds.RTPlanGeometry = "PATIENT"
    ds.PlanIntent = "CURATIVE"
    ds.PrescriptionDescription = f"{prescription:g} Gy in {fractions} fractions to PTV"
    ds.ReferencedStructureSetSequence = seq(
        item(ReferencedSOPClassUID=SOP_CLASS_UIDS["RTSTRUCT"], ReferencedSOPInstanceUID=rs_uid)
    )
    refs = [
        item(DoseReferenceNumber=1, DoseReferenceUID=uid(), DoseReferenceStructureType="VOLUME",
             DoseReferenceDescription=ptv.name, ReferencedROINumber=ptv_number, DoseReferenceType="TARGET",
             TargetPrescriptionDose=fmt_ds(prescription), TargetMinimumDose=fmt_ds(0.95 * prescription),
             TargetMaximumDose=fmt_ds(1.07 * prescription))
    ]
    cord = next((i + 1 for i, r in enumerate(rois) if r.name.casefold() == "spinalcord"), None)
    if cord is not None:
        refs.append(
            item(DoseReferenceNumber=2, DoseReferenceUID=uid(), DoseReferenceStructureType="VOLUME",
                 DoseReferenceDescription="SpinalCord", ReferencedROINumber=cord,
                 DoseReferenceType="ORGAN_AT_RISK", OrganAtRiskMaximumDose="46")
        )
    ds.DoseReferenceSequence = seq(*refs)
    ds.PatientSetupSequence = seq(item(PatientSetupNumber=1, PatientPosition="HFS", SetupTechnique="ISOCENTRIC"))
    iso = [fmt_ds(v, 2) for v in ptv.centre]
    angles = [180, 230, 280, 330, 30, 80, 130]
    per_beam_dose = prescription / fractions / len(angles)
    beams, refbeams = [], []
    for n, angle in enumerate(angles, start=1):
        jaws = lambda a, b: [fmt_ds(-a), fmt_ds(b)]  # noqa: E731
        cps = [
            item(ControlPointIndex=0, NominalBeamEnergy="6", DoseRateSet="600", GantryAngle=fmt_ds(angle),
                 GantryRotationDirection="NONE", BeamLimitingDeviceAngle="0",
                 BeamLimitingDeviceRotationDirection="NONE", PatientSupportAngle="0",
                 PatientSupportRotationDirection="NONE", TableTopEccentricAngle="0",
                 TableTopEccentricRotationDirection="NONE", IsocenterPosition=iso,
                 BeamLimitingDevicePositionSequence=seq(
                     item(RTBeamLimitingDeviceType="ASYMX", LeafJawPositions=jaws(ptv.radii[0] + 5, ptv.radii[0] + 5)),
                     item(RTBeamLimitingDeviceType="ASYMY", LeafJawPositions=jaws(ptv.radii[2] + 5, ptv.radii[2] + 5)),
                 ),
                 CumulativeMetersetWeight="0"),
            item(ControlPointIndex=1, CumulativeMetersetWeight="1"),
        ]
        beams.append(
            item(BeamNumber=n, BeamName=f"G{angle}", BeamType="STATIC", RadiationType="PHOTON",
                 TreatmentMachineName="SYNTH_LINAC", PrimaryDosimeterUnit="MU", SourceAxisDistance="1000",
                 BeamLimitingDeviceSequence=seq(
                     item(RTBeamLimitingDeviceType="ASYMX", NumberOfLeafJawPairs=1),
                     item(RTBeamLimitingDeviceType="ASYMY", NumberOfLeafJawPairs=1),
                 ),
                 ReferencedPatientSetupNumber=1, TreatmentDeliveryType="TREATMENT", NumberOfWedges=0,
                 NumberOfCompensators=0, NumberOfBoli=0, NumberOfBlocks=0, FinalCumulativeMetersetWeight="1",
                 NumberOfControlPoints=len(cps), ControlPointSequence=seq(*cps))
        )
        refbeams.append(item(ReferencedBeamNumber=n, BeamDose=fmt_ds(per_beam_dose, 6),
                             BeamDoseSpecificationPoint=iso, BeamMeterset=fmt_ds(per_beam_dose * 110, 2)))
    ds.FractionGroupSequence = seq(
        item(FractionGroupNumber=1, NumberOfFractionsPlanned=fractions, NumberOfBeams=len(beams),
             NumberOfBrachyApplicationSetups=0, ReferencedBeamSequence=seq(*refbeams),
             ReferencedDoseReferenceSequence=seq(item(ReferencedDoseReferenceNumber=1)))
    )
    ds.BeamSequence = seq(*beams)
    ds.ApprovalStatus = "APPROVED"
    ds.ReviewDate = da(study.study_date)
    ds.ReviewTime = study.study_time
    ds.ReviewerName = "Synthetic^Physicist"
