"""Analytic RT phantoms: CT + RTSTRUCT + RTPLAN + RTDOSE with known volumes and dose fields.

Tests and the benchmark need sets whose truth is known exactly: the area of every contour
polygon (so the centre-inclusion volume can be checked), the analytic volume of the shape,
and a dose that is a closed-form function of position (so DVH metrics have exact values).
Shapes are drawn in the plane of the slices, so decubitus and non-square images work too.
Nothing here is patient data.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from .geometry import Grid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
RT_STRUCT = "1.2.840.10008.5.1.4.1.1.481.3"
RT_PLAN = "1.2.840.10008.5.1.4.1.1.481.5"
RT_DOSE = "1.2.840.10008.5.1.4.1.1.481.2"

HFS = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
#: Feet-first supine: the slice normal points to the feet.
FFS = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
#: Head-first decubitus left / right (image rows along the patient's x, columns along y).
HFDL = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0)
HFDR = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0)


def ct_grid(
    shape: tuple[int, int, int] = (40, 64, 64),
    spacing: tuple[float, float, float] = (1.0, 1.0, 2.0),
    iop: tuple[float, ...] = HFS,
    origin: tuple[float, float, float] | None = None,
) -> Grid:
    """A CT grid (slices, rows, columns); by default centred on the patient origin."""
    r = np.asarray(iop[:3], float)
    c = np.asarray(iop[3:], float)
    n = np.cross(r, c)
    if origin is None:
        half = [(shape[2] - 1) * spacing[0] / 2, (shape[1] - 1) * spacing[1] / 2, (shape[0] - 1) * spacing[2] / 2]
        o = -half[0] * r - half[1] * c - half[2] * n
    else:
        o = np.asarray(origin, float)
    return Grid(origin=o, row_dir=r, col_dir=c, spacing=tuple(map(float, spacing)), shape=tuple(shape))


# ----------------------------------------------------------------------------- shapes
@dataclass
class Shape:
    """A structure: contours per slice plus its truth."""

    name: str
    contours: list[np.ndarray]  # (N, 3) patient mm
    analytic_cc: float  # volume of the continuous shape
    polygon_cc: float  # Σ polygon area × slice spacing (what centre inclusion estimates)
    interpreted_type: str = "ORGAN"


def _circle(grid: Grid, centre_2d: np.ndarray, s: float, radius: float, n: int, phase: float = 0.0) -> np.ndarray:
    t = phase + np.linspace(0, 2 * np.pi, n, endpoint=False)
    local = np.column_stack([centre_2d[0] + radius * np.cos(t), centre_2d[1] + radius * np.sin(t)])
    return grid.origin + local[:, :1] * grid.row_dir + local[:, 1:2] * grid.col_dir + s * grid.normal


def _poly_area(n: int, r: float) -> float:
    return 0.5 * n * r * r * math.sin(2 * math.pi / n)


def _local(grid: Grid, centre: np.ndarray) -> tuple[np.ndarray, float]:
    rel = np.asarray(centre, float) - grid.origin
    return np.array([rel @ grid.row_dir, rel @ grid.col_dir]), float(rel @ grid.normal)


def _slices(grid: Grid) -> np.ndarray:
    return np.arange(grid.shape[0]) * grid.spacing[2]


def sphere(grid: Grid, name: str, centre, radius: float, n_points: int = 96, phase: float = 0.0) -> Shape:
    c2, cs = _local(grid, centre)
    contours, area = [], 0.0
    for s in _slices(grid):
        dz = s - cs
        if abs(dz) < radius:
            r = math.sqrt(radius * radius - dz * dz)
            contours.append(_circle(grid, c2, s, r, n_points, phase))
            area += _poly_area(n_points, r)
    return Shape(name, contours, 4 / 3 * math.pi * radius**3 / 1000, area * grid.spacing[2] / 1000)


def cylinder(grid: Grid, name: str, centre, radius: float, length: float, n_points: int = 96) -> Shape:
    """Axis along the slice normal; planes whose centre lies within ±length/2 are contoured."""
    c2, cs = _local(grid, centre)
    contours = [_circle(grid, c2, s, radius, n_points) for s in _slices(grid) if abs(s - cs) <= length / 2 + 1e-9]
    n = len(contours)
    return Shape(name, contours, math.pi * radius**2 * length / 1000, n * _poly_area(n_points, radius) * grid.spacing[2] / 1000)


def cone(grid: Grid, name: str, apex, base_radius: float, height: float, n_points: int = 96) -> Shape:
    """Apex at `apex`, opening along +normal to `base_radius` at `height`."""
    c2, cs = _local(grid, apex)
    contours, area = [], 0.0
    for s in _slices(grid):
        h = s - cs
        if 0 < h <= height:
            r = base_radius * h / height
            contours.append(_circle(grid, c2, s, r, n_points))
            area += _poly_area(n_points, r)
    return Shape(name, contours, math.pi * base_radius**2 * height / 3 / 1000, area * grid.spacing[2] / 1000)


def ring(grid: Grid, name: str, centre, r_outer: float, r_inner: float, length: float, n_points: int = 96) -> Shape:
    """A tube: each plane has an outer and an inner contour (the hole must stay empty)."""
    c2, cs = _local(grid, centre)
    contours = []
    planes = [s for s in _slices(grid) if abs(s - cs) <= length / 2 + 1e-9]
    for s in planes:
        contours.append(_circle(grid, c2, s, r_outer, n_points))
        contours.append(_circle(grid, c2, s, r_inner, n_points))
    a = _poly_area(n_points, r_outer) - _poly_area(n_points, r_inner)
    return Shape(name, contours, math.pi * (r_outer**2 - r_inner**2) * length / 1000, len(planes) * a * grid.spacing[2] / 1000)


def box(grid: Grid, name: str, centre, size_j: float, size_i: float, length: float) -> Shape:
    """A rectangular block aligned with the image axes (corners off the pixel centres)."""
    c2, cs = _local(grid, centre)
    contours = []
    for s in _slices(grid):
        if abs(s - cs) <= length / 2 + 1e-9:
            hj, hi = size_j / 2, size_i / 2
            loc = np.array([[-hj, -hi], [hj, -hi], [hj, hi], [-hj, hi]]) + c2
            contours.append(grid.origin + loc[:, :1] * grid.row_dir + loc[:, 1:2] * grid.col_dir + s * grid.normal)
    return Shape(name, contours, size_j * size_i * length / 1000, len(contours) * size_j * size_i * grid.spacing[2] / 1000)


# ----------------------------------------------------------------------------- dose fields
def linear_dose(origin, gradient) -> Callable[[np.ndarray], np.ndarray]:
    """D(p) = d0 + g · (p − o): a field whose DVHs have closed forms."""
    o = np.asarray(origin[1:], float)
    d0 = float(origin[0])
    g = np.asarray(gradient, float)
    return lambda p: d0 + (np.asarray(p) - o) @ g


# ----------------------------------------------------------------------------- writer
@dataclass
class PhantomSet:
    folder: Path
    grid: Grid
    shapes: list[Shape]
    dose_grid: Grid | None
    dose_fn: Callable[[np.ndarray], np.ndarray] | None
    uids: dict[str, str] = field(default_factory=dict)
    files: dict[str, list[Path]] = field(default_factory=dict)


def _base(sop_class: str, sop_uid: str, modality: str, patient: str, study: str, series: str, for_uid: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.Modality = modality
    ds.PatientID = patient
    ds.PatientName = f"Phantom^{patient}"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.FrameOfReferenceUID = for_uid
    ds.StudyDate = "20240101"
    ds.StudyID = "1"
    ds.AccessionNumber = f"ACC{abs(hash(study)) % 10**8:08d}"
    ds.SeriesNumber = 1
    ds.Manufacturer = "rtlake phantoms"
    return ds


def _fmt(values: np.ndarray) -> str:
    return "\\".join(f"{v:.4f}".rstrip("0").rstrip(".") if "." in f"{v:.4f}" else f"{v:.4f}" for v in values.ravel())


def _ds_list(values: np.ndarray) -> list[str]:
    return [f"{v:.3f}" for v in np.asarray(values).ravel()]


def write_phantom(
    folder: Path,
    grid: Grid,
    shapes: list[Shape],
    patient: str = "PHANTOM",
    hu: np.ndarray | None = None,
    dose_grid: Grid | None = None,
    dose_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    dose_scaling: float | None = 1e-4,
    dose_units: str = "GY",
    dose_summation: str = "PLAN",
    plan: bool = True,
    plan_approval: str = "APPROVED",
    seed: str = "",
    contour_z_decimals: int | None = None,
    for_uid: str | None = None,
) -> PhantomSet:
    """Write CT slices, one RTSTRUCT and (optionally) an RTPLAN and RTDOSE into `folder`.

    `contour_z_decimals` rounds contour coordinates along the normal the way TPS exports do.
    `dose_scaling=None` writes an RTDOSE without DoseGridScaling (bad input for tests).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ent = [patient, seed or str(folder)]
    uid = lambda tag: generate_uid(entropy_srcs=ent + [tag])  # noqa: E731
    study, ct_series, for_uid = uid("study"), uid("ct"), for_uid or uid("for")
    out = PhantomSet(folder, grid, shapes, dose_grid, dose_fn, files={"CT": [], "RTSTRUCT": [], "RTPLAN": [], "RTDOSE": []})
    out.uids.update(study=study, ct_series=ct_series, frame_of_reference=for_uid)
    nk, ni, nj = grid.shape
    if hu is None:
        hu = np.full(grid.shape, -1000, np.int16)
        hu[:, ni // 8 : ni - ni // 8, nj // 8 : nj - nj // 8] = 0
    ct_uids = []
    iop = [float(v) for v in np.concatenate([grid.row_dir, grid.col_dir])]
    for k in range(nk):
        sop = uid(f"ct{k}")
        ct_uids.append(sop)
        ds = _base(CT_IMAGE, sop, "CT", patient, study, ct_series, for_uid)
        ipp = grid.to_physical(np.array([[0.0, 0.0, k]]))[0]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in ipp]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
        ds.PixelSpacing = [f"{grid.spacing[1]:.6g}", f"{grid.spacing[0]:.6g}"]
        ds.SliceThickness = f"{grid.spacing[2]:.6g}"
        ds.InstanceNumber = k + 1
        ds.Rows, ds.Columns = ni, nj
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
        ds.PixelData = np.ascontiguousarray(hu[k].astype("<i2")).tobytes()
        p = folder / f"CT_{k:04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        out.files["CT"].append(p)

    # RTSTRUCT
    rs_uid = uid("rtstruct")
    rs = _base(RT_STRUCT, rs_uid, "RTSTRUCT", patient, study, uid("rs-series"), for_uid)
    rs.StructureSetLabel = "phantom"
    rs.StructureSetDate = "20240101"
    fr = Dataset()
    fr.FrameOfReferenceUID = for_uid
    st = Dataset()
    st.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    st.ReferencedSOPInstanceUID = study
    se = Dataset()
    se.SeriesInstanceUID = ct_series
    se.ContourImageSequence = Sequence(
        [Dataset() for _ in ct_uids]
    )
    for item, sop in zip(se.ContourImageSequence, ct_uids):
        item.ReferencedSOPClassUID = CT_IMAGE
        item.ReferencedSOPInstanceUID = sop
    st.RTReferencedSeriesSequence = Sequence([se])
    fr.RTReferencedStudySequence = Sequence([st])
    rs.ReferencedFrameOfReferenceSequence = Sequence([fr])
    ssroi, roic, obs = [], [], []
    slice_pos = np.arange(nk) * grid.spacing[2]
    for n, shape in enumerate(shapes, start=1):
        a = Dataset()
        a.ROINumber = n
        a.ReferencedFrameOfReferenceUID = for_uid
        a.ROIName = shape.name
        a.ROIGenerationAlgorithm = "MANUAL"
        ssroi.append(a)
        b = Dataset()
        b.ReferencedROINumber = n
        b.ROIDisplayColor = [255, (37 * n) % 256, (91 * n) % 256]
        cs = []
        for pts in shape.contours:
            pts = np.asarray(pts, float)
            if contour_z_decimals is not None and len(pts):
                # Round the coordinate along the normal, as exports do (the in-plane ones too).
                pts = np.round(pts, contour_z_decimals)
            c = Dataset()
            c.ContourGeometricType = "CLOSED_PLANAR" if len(pts) >= 3 else ("POINT" if len(pts) == 1 else "OPEN_PLANAR")
            c.NumberOfContourPoints = len(pts)
            c.ContourData = _ds_list(pts)
            if len(pts):
                s = float((pts[0] - grid.origin) @ grid.normal)
                k = int(np.argmin(np.abs(slice_pos - s)))
                if abs(slice_pos[k] - s) < grid.spacing[2] / 2:
                    ci = Dataset()
                    ci.ReferencedSOPClassUID = CT_IMAGE
                    ci.ReferencedSOPInstanceUID = ct_uids[k]
                    c.ContourImageSequence = Sequence([ci])
            cs.append(c)
        if cs:
            b.ContourSequence = Sequence(cs)
        roic.append(b)
        o = Dataset()
        o.ObservationNumber = n
        o.ReferencedROINumber = n
        o.RTROIInterpretedType = shape.interpreted_type
        o.ROIInterpreter = ""
        obs.append(o)
    rs.StructureSetROISequence = Sequence(ssroi)
    rs.ROIContourSequence = Sequence(roic)
    rs.RTROIObservationsSequence = Sequence(obs)
    p = folder / "RS.dcm"
    rs.save_as(p, enforce_file_format=True)
    out.files["RTSTRUCT"].append(p)
    out.uids["rtstruct"] = rs_uid

    plan_uid = None
    if plan:
        plan_uid = uid("rtplan")
        rp = _base(RT_PLAN, plan_uid, "RTPLAN", patient, study, uid("rp-series"), for_uid)
        rp.RTPlanLabel = "phantom"
        rp.ApprovalStatus = plan_approval
        rp.PlanIntent = "CURATIVE"
        ref = Dataset()
        ref.ReferencedSOPClassUID = RT_STRUCT
        ref.ReferencedSOPInstanceUID = rs_uid
        rp.ReferencedStructureSetSequence = Sequence([ref])
        fg = Dataset()
        fg.FractionGroupNumber = 1
        fg.NumberOfFractionsPlanned = 30
        fg.NumberOfBeams = 0
        rp.FractionGroupSequence = Sequence([fg])
        p = folder / "RP.dcm"
        rp.save_as(p, enforce_file_format=True)
        out.files["RTPLAN"].append(p)
        out.uids["rtplan"] = plan_uid

    if dose_grid is not None and dose_fn is not None:
        write_dose(
            folder / "RD.dcm", dose_grid, dose_fn, patient, study, uid("rd-series"), uid("rtdose"), for_uid,
            plan_uid, dose_scaling, dose_units, dose_summation,
        )
        out.files["RTDOSE"].append(folder / "RD.dcm")
    return out


def dose_values(dose_grid: Grid, dose_fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    nk, ni, nj = dose_grid.shape
    kk, ii, jj = np.meshgrid(np.arange(nk), np.arange(ni), np.arange(nj), indexing="ij")
    idx = np.column_stack([jj.ravel(), ii.ravel(), kk.ravel()]).astype(float)
    return np.asarray(dose_fn(dose_grid.to_physical(idx)), float).reshape(dose_grid.shape)


def write_dose(
    path: Path,
    dose_grid: Grid,
    dose_fn: Callable[[np.ndarray], np.ndarray],
    patient: str,
    study: str,
    series: str,
    sop_uid: str,
    for_uid: str,
    plan_uid: str | None,
    scaling: float | None = 1e-4,
    units: str = "GY",
    summation: str = "PLAN",
) -> Path:
    gy = np.clip(dose_values(dose_grid, dose_fn), 0, None)
    sc = scaling or 1e-4
    raw = np.round(gy / sc).astype(np.uint32)
    rd = _base(RT_DOSE, sop_uid, "RTDOSE", patient, study, series, for_uid)
    nk, ni, nj = dose_grid.shape
    rd.ImagePositionPatient = [f"{v:.4f}" for v in dose_grid.origin]
    rd.ImageOrientationPatient = [f"{v:.6f}" for v in np.concatenate([dose_grid.row_dir, dose_grid.col_dir])]
    rd.PixelSpacing = [f"{dose_grid.spacing[1]:.6g}", f"{dose_grid.spacing[0]:.6g}"]
    rd.GridFrameOffsetVector = [f"{k * dose_grid.spacing[2]:.4f}" for k in range(nk)]
    rd.FrameIncrementPointer = pydicom.tag.Tag(0x3004, 0x000C)
    rd.NumberOfFrames = nk
    rd.Rows, rd.Columns = ni, nj
    rd.SamplesPerPixel = 1
    rd.PhotometricInterpretation = "MONOCHROME2"
    rd.BitsAllocated, rd.BitsStored, rd.HighBit, rd.PixelRepresentation = 32, 32, 31, 0
    rd.DoseUnits = units
    rd.DoseType = "PHYSICAL"
    rd.DoseSummationType = summation
    if scaling is not None:
        rd.DoseGridScaling = f"{scaling:.6g}"
    if plan_uid:
        ref = Dataset()
        ref.ReferencedSOPClassUID = RT_PLAN
        ref.ReferencedSOPInstanceUID = plan_uid
        rd.ReferencedRTPlanSequence = Sequence([ref])
    rd.PixelData = np.ascontiguousarray(raw.astype("<u4")).tobytes()
    rd.save_as(path, enforce_file_format=True)
    return path


def standard_dose_grid(grid: Grid, spacing: tuple[float, float, float] = (2.5, 2.5, 2.5), margin: float = 0.0) -> Grid:
    """A dose grid covering the CT extent with its own spacing and an offset origin."""
    ext = np.array([(grid.shape[2] - 1) * grid.spacing[0], (grid.shape[1] - 1) * grid.spacing[1], (grid.shape[0] - 1) * grid.spacing[2]])
    shape = tuple(int(np.floor((ext[a] + 2 * margin) / spacing[a])) + 1 for a in (2, 1, 0))
    o = grid.origin - margin * (grid.row_dir + grid.col_dir + grid.normal) + 0.37 * grid.row_dir + 0.21 * grid.col_dir
    return Grid(origin=o, row_dir=grid.row_dir, col_dir=grid.col_dir, spacing=spacing, shape=shape)


def head_and_neck(folder: Path, n_rois: int = 50, shape=(150, 512, 512), seed: int = 1, with_dose: bool = True) -> PhantomSet:
    """A benchmark set like notes/rt.md §6: a many-point BODY on every slice plus wobbly
    ellipsoids of 4–60 slices, three of them rings."""
    rng = np.random.default_rng(seed)
    grid = ct_grid(shape=shape, spacing=(0.98, 0.98, 2.0))
    nk, ni, nj = shape
    shapes: list[Shape] = []
    c2 = np.array([(nj - 1) * 0.98 / 2, (ni - 1) * 0.98 / 2])
    body = []
    t = np.linspace(0, 2 * np.pi, 700, endpoint=False)
    for k in range(nk):
        s = k * 2.0
        r = 200 + 8 * np.sin(t * 5 + k * 0.05)
        loc = np.column_stack([c2[0] + 1.1 * r * np.cos(t), c2[1] + 0.8 * r * np.sin(t)])
        body.append(grid.origin + loc[:, :1] * grid.row_dir + loc[:, 1:2] * grid.col_dir + s * grid.normal)
    shapes.append(Shape("BODY", body, 0.0, 0.0, "EXTERNAL"))
    for n in range(1, n_rois):
        planes = int(rng.integers(4, 61))
        k0 = int(rng.integers(0, nk - planes))
        cx, cy = c2 + rng.uniform(-110, 110, 2)
        ax, ay = rng.uniform(5, 35, 2)
        npts = int(rng.integers(40, 160))
        tt = np.linspace(0, 2 * np.pi, npts, endpoint=False)
        cont = []
        for k in range(k0, k0 + planes):
            f = math.sin(math.pi * (k - k0 + 0.5) / planes)
            wob = 1 + 0.08 * np.sin(3 * tt + k)
            loc = np.column_stack([cx + f * ax * wob * np.cos(tt), cy + f * ay * wob * np.sin(tt)])
            pts = grid.origin + loc[:, :1] * grid.row_dir + loc[:, 1:2] * grid.col_dir + k * 2.0 * grid.normal
            cont.append(pts)
            if n <= 3:  # rings
                loc2 = np.column_stack([cx + 0.4 * f * ax * np.cos(tt), cy + 0.4 * f * ay * np.sin(tt)])
                cont.append(grid.origin + loc2[:, :1] * grid.row_dir + loc2[:, 1:2] * grid.col_dir + k * 2.0 * grid.normal)
        shapes.append(Shape(f"OAR_{n:02d}", cont, 0.0, 0.0))
    dg = standard_dose_grid(grid, (2.5, 2.5, 2.5)) if with_dose else None
    centre = grid.to_physical(np.array([[nj / 2, ni / 2, nk / 2]]))[0]
    fn = (lambda p: 70.0 * np.exp(-np.sum((np.asarray(p) - centre) ** 2, axis=1) / (2 * 80.0**2))) if with_dose else None
    hu = np.full(shape, -1000, np.int16)
    return write_phantom(folder, grid, shapes, patient=f"HN{seed}", hu=hu, dose_grid=dg, dose_fn=fn, seed=f"hn{seed}")


def dicom_now() -> str:
    return dt.datetime.now().strftime("%Y%m%d")
