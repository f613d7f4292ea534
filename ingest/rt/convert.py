"""Convert one patient: link the course, then CT, masks, dose, DVHs, previews and HTML.

`convert_patient` never raises: every problem becomes a coded note in the patient's
notes.json and a failure row (returned to the caller, which owns the catalog), and the
conversion goes as far as the data allows: masks without a dose are still written, a
structure that cannot be rasterised does not stop the others. notes.json is written last,
so its presence means the patient's outputs are complete (what `--force`-less reruns skip on).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import write_text
from .contours import read_structure_set
from .ctseries import read_ct_series
from .dose import read_dose, resample_to, sum_doses
from .dvh import Dvh, DvhSpec, compute_dvh, metric_names
from .geometry import Grid
from .linkage import inventory, select_course
from .nifti import safe_name, write_image, write_masks
from .rasterise import DEFAULT_PLANE_TOL_MM, RoiMask, rasterise_roi
from .verify import CODES, EXCLUDE, PatientNotes, RtConversionError
from reporting.sanitise import csv_value

log = logging.getLogger(__name__)

NOTES = "notes.json"
DONE_STATUSES = ("SUCCESS", "PARTIAL", "NO_RT")


@dataclass(frozen=True)
class ConvertOptions:
    mask_mode: str = "per-roi"
    compress: bool = True
    #: In-plane supersampling factor for structures smaller than `supersample_below_cc` (1 = off).
    supersample: int = 1
    supersample_below_cc: float = 10.0
    plane_tol_mm: float = DEFAULT_PLANE_TOL_MM
    previews: bool = True
    html: bool = True
    dvh: DvhSpec = DvhSpec()
    force: bool = False
    #: Sum a plan's per-beam doses when it has no PLAN dose (off: such patients are PARTIAL).
    sum_beam_doses: bool = False


@dataclass
class PatientJob:
    patient: str  # output folder name (lake subject or input sub-folder)
    files: list[str]
    output: str  # the cohort output folder


@dataclass
class Failure:
    target: str
    reason: str
    code: str
    study_uid: str | None = None


@dataclass
class PatientResult:
    patient: str
    status: str
    ready: bool
    skipped: bool = False
    failures: list[Failure] = field(default_factory=list)
    study_uid: str | None = None
    seconds: float = 0.0
    n_rois: int = 0


def patient_dir(job: PatientJob) -> Path:
    return Path(job.output) / safe_name(job.patient, set())


def is_done(folder: Path) -> bool:
    p = folder / NOTES
    if not p.is_file():
        return False
    try:
        return PatientNotes.read(p).status in DONE_STATUSES
    except Exception:  # noqa: BLE001 - a damaged notes file means: do it again
        return False


def convert_patient(job: PatientJob, opts: ConvertOptions = ConvertOptions()) -> PatientResult:
    """Convert one patient's files into `<output>/<patient>/` (see module docstring)."""
    t0 = time.perf_counter()
    folder = patient_dir(job)
    if not opts.force and is_done(folder):
        notes = PatientNotes.read(folder / NOTES)
        return PatientResult(job.patient, notes.status, notes.patientimagingfilesready, skipped=True,
                             study_uid=notes.linkage.get("study_uid"),
                             n_rois=sum(1 for s in notes.structures.values() if s.get("voxels")))
    notes = PatientNotes(patient=job.patient)
    result = PatientResult(job.patient, "RUNNING", False)
    try:
        _convert(job, opts, folder, notes, result)
    except RtConversionError as exc:
        notes.add(exc.code, exc.reason)
        result.failures.append(Failure(result.study_uid or str(folder), exc.reason, exc.code, result.study_uid))
    except Exception as exc:  # noqa: BLE001 - one patient's bug must not stop the cohort
        log.debug("unexpected error converting study %s", result.study_uid or "(not linked yet)", exc_info=True)
        msg = f"unexpected {type(exc).__name__}: {exc}"
        notes.add("XIV_EXEC_001", msg)
        notes.outputs["traceback"] = traceback.format_exc(limit=5)
        result.failures.append(Failure(result.study_uid or str(folder), msg, type(exc).__name__, result.study_uid))
    excluded = any(CODES[n.code][0] == EXCLUDE for n in notes.notes)
    if notes.status == "RUNNING":
        if "ct" not in notes.outputs or "masks" not in notes.outputs:
            notes.status = "EXCLUDED"
        elif excluded:
            notes.status = "PARTIAL"
        else:
            notes.status = "SUCCESS"
    notes.patientimagingfilesready = notes.status == "SUCCESS"
    result.status, result.ready = notes.status, notes.patientimagingfilesready
    result.seconds = time.perf_counter() - t0
    notes.outputs["seconds"] = round(result.seconds, 3)
    notes.write(folder / NOTES)
    return result


def _convert(job: PatientJob, opts: ConvertOptions, folder: Path, notes: PatientNotes, result: PatientResult) -> None:
    inv = inventory([Path(f) for f in job.files])
    notes.linkage["images_summary"] = inv.summary()
    if inv.unreadable:
        notes.linkage["unreadable_files"] = inv.unreadable[:20]
    course = select_course(inv)
    notes.linkage.update(course.describe())
    result.study_uid = course.ct.study_uid if course.ct else None
    if course.status != "LINKED":
        notes.add(course.code, course.reason)
        notes.status = course.status
        if course.status != "NO_RT":
            target = result.study_uid or _study_of(inv) or str(folder)
            result.failures.append(Failure(target, course.reason, course.code, result.study_uid or _study_of(inv)))
        return
    study = course.ct.study_uid
    notes.add("I_SUCC_001", f"study {study}")
    notes.add("II_SUCC_001", f"CT series {course.ct.series_uid} ← RTSTRUCT {course.struct.sop_uid}"
              + (f" ← RTPLAN {course.plan.sop_uid}" if course.plan else "")
              + (f" ← RTDOSE {course.dose.sop_uid}" if course.dose else ""))
    for code, msg in course.warnings:
        notes.add(code, msg)

    # CT
    ct = read_ct_series(course.ct.files)
    notes.add("XI_SUCC_001", f"{ct.grid.shape[0]} slices of {ct.grid.shape[1]}×{ct.grid.shape[2]}, spacing "
              f"{ct.grid.spacing[0]:.3f}×{ct.grid.spacing[1]:.3f}×{ct.grid.spacing[2]:.3f} mm")
    for w in ct.warnings:
        notes.add("XI_WARN_001", w)
    ext = ".nii.gz" if opts.compress else ".nii"
    try:
        write_image(folder / f"ct{ext}", ct.hu, ct.grid, opts.compress)
    except Exception as exc:  # noqa: BLE001
        raise RtConversionError("XII_EXEC_001", f"cannot write CT NIfTI: {exc}") from None
    notes.outputs["ct"] = f"ct{ext}"
    notes.add("XII_SUCC_001")

    # Structures
    ss = read_structure_set(course.struct.path)
    if not ss.rois or not any(r.contours for r in ss.rois):
        raise RtConversionError("XIII_EXEC_001", f"RTSTRUCT {ss.sop_uid} has no contours")
    notes.add("XIII_SUCC_001", f"{len(ss.rois)} structure(s) in RTSTRUCT {ss.sop_uid}")
    known = set(ct.sop_uids)
    masks: list[RoiMask] = []
    rois = []
    for roi in ss.rois:
        m = rasterise_roi(roi, ct.grid, opts.plane_tol_mm, known_image_uids=known)
        info = {"number": roi.number, "voxels": m.voxels, "volume_cc": m.voxels * ct.grid.voxel_volume_cc,
                "planes": m.n_planes, "warnings": m.warnings}
        notes.structures[roi.name] = info
        if m.voxels == 0:
            reason = "; ".join(m.warnings) or "empty mask"
            notes.add("XIV_REV_001", reason, roi=roi.name)
            result.failures.append(Failure(f"{study}:{roi.name}", f"structure skipped: {reason}", "XIV_REV_001", study))
            continue
        for w in m.warnings:
            notes.add("XIV_WARN_001", w, roi=roi.name)
        masks.append(m)
        rois.append(roi)
    result.n_rois = len(masks)
    if not masks:
        raise RtConversionError("XIII_EXEC_001", f"RTSTRUCT {ss.sop_uid}: no structure could be rasterised")
    try:
        files = write_masks(folder, masks, ct.grid, opts.mask_mode, opts.compress)
    except Exception as exc:  # noqa: BLE001
        raise RtConversionError("XIV_EXEC_001", f"cannot write masks: {exc}") from None
    for name, rel in files.items():
        notes.structures[name]["file"] = rel
    notes.outputs["masks"] = opts.mask_mode
    notes.add("XIV_SUCC_001", f"{len(masks)} mask(s), mode {opts.mask_mode}")

    # Previews
    previews: dict[str, Path] = {}
    if opts.previews:
        from .previews import write_preview

        taken: set[str] = set()
        for roi, m in zip(rois, masks):
            p = folder / "previews" / f"{safe_name(roi.name, taken)}.png"
            if write_preview(p, ct.hu, ct.grid, roi, m):
                previews[roi.name] = p

    # Plan and dose
    if course.plan is not None:
        notes.add("XV_SUCC_001", f"plan {course.plan.sop_uid} ({course.plan.approval or 'no ApprovalStatus'})")
    dvhs: list[Dvh] = []
    dose = None
    expected_for = ct.frame_of_reference or None
    try:
        if course.dose is not None:
            dose = read_dose(course.dose.path, expected_for=expected_for)
        elif course.beam_doses and opts.sum_beam_doses:
            dose = sum_doses([read_dose(d.path, expected_for=expected_for) for d in course.beam_doses])
            notes.add("XVI_WARN_001", f"{len(course.beam_doses)} BEAM doses summed: {dose.info.sop_uid}")
        else:
            raise RtConversionError(course.dose_code or "XVI_EXEC_001", course.dose_reason or "no dose")
    except RtConversionError as exc:
        notes.add(exc.code, exc.reason)
        result.failures.append(Failure(study, exc.reason, exc.code, study))
        dose = None
    if dose is not None:
        on_ct = resample_to(dose, ct.grid)
        write_image(folder / f"dose{ext}", on_ct, ct.grid, opts.compress)
        notes.outputs["dose"] = f"dose{ext}"
        notes.outputs["dose_max_gy"] = round(float(dose.gy.max()), 4)
        notes.add("XVI_SUCC_001", f"RTDOSE {dose.info.sop_uid}, max {float(dose.gy.max()):.3f} Gy")
        try:
            dvhs = _dvhs(rois, masks, ct.grid, dose, on_ct, opts)
        except Exception as exc:  # noqa: BLE001
            notes.add("DVH_EXEC_001", f"{type(exc).__name__}: {exc}")
            result.failures.append(Failure(study, f"DVH failed: {exc}", "DVH_EXEC_001", study))
            dvhs = []
        if dvhs:
            _write_dvh_csv(folder, job.patient, study, dvhs, opts.dvh, notes)
            notes.outputs["dvh"] = "dvh.csv"
            notes.add("DVH_SUCC_001", f"{len(dvhs)} DVH(s)")
    if opts.html:
        from .report_html import write_report

        # Status is not final yet; the page shows what is known now.
        notes.status = "PARTIAL" if any(CODES[n.code][0] == EXCLUDE for n in notes.notes) else "SUCCESS"
        notes.patientimagingfilesready = notes.status == "SUCCESS"
        write_report(folder / "report.html", notes, dvhs, previews)
        notes.outputs["html"] = "report.html"


def _study_of(inv) -> str | None:
    """A study UID to file a linkage failure under (the RT objects' study when there is one)."""
    for group in (inv.structs, inv.plans, inv.doses):
        for item in group:
            if item.study_uid:
                return item.study_uid
    for ct in inv.ct.values():
        if ct.study_uid:
            return ct.study_uid
    return None


def _dvhs(rois, masks: list[RoiMask], grid: Grid, dose, on_ct: np.ndarray, opts: ConvertOptions) -> list[Dvh]:
    out = []
    vcc = grid.voxel_volume_cc
    ss_grid = grid.supersampled(opts.supersample) if opts.supersample > 1 else None
    for roi, m in zip(rois, masks):
        if ss_grid is not None and m.voxels * vcc < opts.supersample_below_cc:
            sm = rasterise_roi(roi, ss_grid, opts.plane_tol_mm)
            if sm.voxels:
                k0, i0, j0 = sm.offset
                sub = Grid(origin=ss_grid.to_physical(np.array([[j0, i0, k0]], float))[0], row_dir=ss_grid.row_dir,
                           col_dir=ss_grid.col_dir, spacing=ss_grid.spacing, shape=sm.box.shape)
                d = resample_to(dose, sub)[sm.box]
                out.append(compute_dvh(roi.name, d, ss_grid.voxel_volume_cc, opts.dvh))
                out[-1].metrics["supersample"] = float(opts.supersample)
                continue
        d = on_ct[m.slices][m.box]
        out.append(compute_dvh(roi.name, d, vcc, opts.dvh))
        out[-1].metrics["supersample"] = 1.0
    return out


DVH_ID_COLUMNS = ["patient", "study_uid", "roi"]


def _write_dvh_csv(folder: Path, patient: str, study: str, dvhs: list[Dvh], spec: DvhSpec, notes: PatientNotes) -> None:
    cols = DVH_ID_COLUMNS + metric_names(spec) + ["supersample", "warnings"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for d in dvhs:
        warn = " | ".join(notes.structures.get(d.roi, {}).get("warnings", []))
        row = [patient, study, d.roi] + [_cell(d.metrics.get(c)) for c in cols[3:-1]] + [warn]
        w.writerow([csv_value(v) for v in row])  # ROI names come from the RTSTRUCT
    write_text(folder / "dvh.csv", buf.getvalue())
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["roi", "dose_gy", "differential_cc", "cumulative_cc"])
    for d in dvhs:
        for b, dv, cv in zip(d.bins_gy, d.differential_cc, d.cumulative_cc):
            w.writerow([csv_value(d.roi), f"{b:.4f}", f"{dv:.6f}", f"{cv:.6f}"])
    write_text(folder / "dvh_curves.csv", buf.getvalue())


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.6g}" if isinstance(v, float) else str(v)
