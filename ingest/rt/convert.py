"""Convert one patient: link the course, then CT, masks, dose, DVHs, previews and HTML.

`convert_patient` never raises: every problem becomes a coded note in the patient's
notes.json and a failure row (returned to the caller, which owns the catalog), and the
conversion goes as far as the data allows: masks without a dose are still written, a
structure that cannot be rasterised does not stop the others. notes.json is written last,
so its presence means the patient's outputs are complete (what `--force`-less reruns skip on).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import write_text
from .contours import read_structure_set
from .ctseries import read_ct_series
from .dose import read_dose, resample_to, sum_doses
from .dvh import DoseSamples, Dvh, DvhSpec, compute_dvh, compute_weighted_dvh, metric_names
from .dvh_qa import QA_CSV_COLUMNS, QaResult, QaTolerances, compare_structure, qa_csv_rows, set_hint
from .dvh_tps import TpsOptions, tps_samples
from .geometry import Grid
from .linkage import inventory, select_course
from .nifti import safe_name, write_image, write_masks
from .rasterise import DEFAULT_PLANE_TOL_MM, RoiMask, rasterise_roi
from .verify import CODES, EXCLUDE, PatientNotes, RtConversionError
from reporting.sanitise import csv_value

log = logging.getLogger(__name__)

NOTES = "notes.json"
#: Only a complete conversion is kept between runs (while its inputs stay the same): NO_RT,
#: PARTIAL, QUARANTINE and EXCLUDED patients are looked at again on every convert, because
#: the missing course, dose or decision may have arrived since.
DONE_STATUSES = ("SUCCESS",)
DVH_METHODS = ("tps", "voxel")
#: bump when a change in this converter changes its outputs (forces a re-conversion)
CONVERTER_VERSION = "rtlake-rt 2"


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
    #: "tps": shape-interpolated solid, agrees with Eclipse (ingest.rt.dvh_tps); "voxel": the
    #: NIfTI masks' voxels, agrees with plastimatch.
    dvh_method: str = "tps"
    tps: TpsOptions = TpsOptions()
    qa: QaTolerances = QaTolerances()

    def fingerprint(self) -> str:
        """The options that change what is written (so a changed option re-converts)."""
        d = dataclasses.asdict(self)
        d.pop("force", None)
        return json.dumps(d, sort_keys=True, default=str)


@dataclass
class PatientJob:
    patient: str  # output folder name (lake subject or input sub-folder)
    files: list[str]
    output: str  # the cohort output folder
    #: (SOPInstanceUID, size) per file when the catalog already knows them (else read from the files)
    inputs: list[tuple[str, int]] | None = None


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
    """The one place a patient's output folder is named (change the naming here only)."""
    return Path(job.output) / safe_name(job.patient, set())


def _sop_uid(path: str) -> str:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        return str(ds.get("SOPInstanceUID", "") or "") or f"?{os.path.basename(path)}"
    except Exception:  # noqa: BLE001 - an unreadable file still counts, by name
        return f"?{os.path.basename(path)}"


def input_fingerprint(job: PatientJob, opts: ConvertOptions) -> dict:
    """What the conversion depends on: every input's SOPInstanceUID and size, the options, the code.

    A patient whose fingerprint is unchanged since a complete conversion is skipped; any new,
    removed or replaced instance (a new course, a re-sent dose) makes it convert again.
    """
    if job.inputs is not None:
        pairs = sorted((str(u), int(n or 0)) for u, n in job.inputs)
    else:
        pairs = sorted((_sop_uid(f), os.path.getsize(f) if os.path.exists(f) else -1) for f in job.files)
    h = hashlib.sha256()
    for uid, size in pairs:
        h.update(f"{uid}\x00{size}\n".encode())
    h.update(opts.fingerprint().encode())
    h.update(CONVERTER_VERSION.encode())
    return {"files": len(pairs), "bytes": sum(max(n, 0) for _, n in pairs), "fingerprint": h.hexdigest()}


def previous_notes(folder: Path) -> PatientNotes | None:
    p = folder / NOTES
    if not p.is_file():
        return None
    try:
        return PatientNotes.read(p)
    except Exception:  # noqa: BLE001 - a damaged notes file means: do it again
        return None


def is_done(folder: Path, fingerprint: dict | None = None) -> bool:
    """A complete conversion whose inputs (when given) have not changed since."""
    prev = previous_notes(folder)
    if prev is None or prev.status not in DONE_STATUSES:
        return False
    return fingerprint is None or prev.inputs.get("fingerprint") == fingerprint["fingerprint"]


def convert_patient(job: PatientJob, opts: ConvertOptions = ConvertOptions()) -> PatientResult:
    """Convert one patient's files into `<output>/<patient>/` (see module docstring)."""
    t0 = time.perf_counter()
    folder = patient_dir(job)
    fp = input_fingerprint(job, opts)
    prev = previous_notes(folder)
    if not opts.force and is_done(folder, fp):
        notes = prev
        return PatientResult(job.patient, notes.status, notes.patientimagingfilesready, skipped=True,
                             study_uid=notes.linkage.get("study_uid"),
                             n_rois=sum(1 for s in notes.structures.values() if s.get("voxels")))
    notes = PatientNotes(patient=job.patient)
    notes.inputs = fp
    if prev is not None:
        notes.inputs["previous_status"] = prev.status
        notes.inputs["changed"] = prev.inputs.get("fingerprint") != fp["fingerprint"]
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
    if prev is not None:
        _handle_previous_outputs(folder, prev, notes)
    notes.write(folder / NOTES)
    return result


def _listed_outputs(notes: PatientNotes) -> set[str]:
    """Files (relative to the patient folder) a conversion says it wrote."""
    out = {v for k, v in notes.outputs.items() if isinstance(v, str) and k in ("ct", "dose", "dvh", "html", "dvh_qa_csv")}
    if notes.outputs.get("dvh"):
        out.add("dvh_curves.csv")
    for info in notes.structures.values():
        for key in ("file", "preview"):
            if isinstance(info.get(key), str):
                out.add(info[key])
    for rel in list(out):
        if rel.startswith("masks_") and ".nii" in rel:  # labelmap/bitmask legend
            out.add(rel.split(".nii")[0] + ".json")
    return out


def _handle_previous_outputs(folder: Path, prev: PatientNotes, notes: PatientNotes) -> None:
    """Files of an earlier conversion that this one did not write again.

    When this conversion wrote a new set (SUCCESS/PARTIAL), they are deleted: e.g. the mask of
    a structure since removed from the RTSTRUCT must not linger as if current. When it wrote
    nothing (the patient is now quarantined or excluded), they are kept and listed, so a
    researcher's files do not vanish because a second course arrived. Only files inside the
    patient's folder that rtlake itself listed are ever touched.
    """
    old = _listed_outputs(prev) | set(prev.outputs.get("kept_from_previous", []) or [])
    stale = sorted(old - _listed_outputs(notes))
    if not stale:
        return
    if notes.status not in ("SUCCESS", "PARTIAL"):
        notes.outputs["kept_from_previous"] = [r for r in stale if (folder / r).is_file()]
        return
    root = folder.resolve()
    for rel in stale:
        p = (folder / rel).resolve()
        if root in p.parents and p.is_file():
            p.unlink()
            notes.outputs.setdefault("removed_stale", []).append(rel)


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
        # A malformed RTSTRUCT (ContourData not in triplets, contours of < 3 points, an ROI number
        # without its StructureSetROISequence entry) is bad input: a failure row, not only a note.
        for w in roi.warnings:
            result.failures.append(Failure(f"{study}:{roi.name}", f"RTSTRUCT {ss.sop_uid}: {w}", "XIV_WARN_001", study))
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

    # Plan (what the report shows first, and the prescriptions the TPS-DVH reader needs)
    plan_summary = None
    if course.plan is not None:
        from .plan import read_plan_summary

        plan_summary = read_plan_summary(course.plan.path)
        notes.linkage["plan"] = plan_summary.to_dict()
        notes.add("XV_SUCC_001", f"plan {course.plan.sop_uid} ({course.plan.approval or 'no ApprovalStatus'})")

    # Dose
    dvhs: list[Dvh] = []
    dose = None
    on_ct = None
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
        notes.linkage["dose_summation"] = dose.info.summation
        notes.add("XVI_SUCC_001", f"RTDOSE {dose.info.sop_uid} ({dose.info.summation or 'no DoseSummationType'}), "
                  f"max {float(dose.gy.max()):.3f} Gy")

    # Previews (CT at the structure's central slice, contours, and the dose when there is one)
    previews: dict[str, Path] = {}
    if opts.previews:
        from .previews import write_preview

        ref_gy = (plan_summary.prescription_gy if plan_summary else None) or (float(dose.gy.max()) if dose is not None else None)
        taken: set[str] = set()
        for roi, m in zip(rois, masks):
            rel = f"previews/{safe_name(roi.name, taken)}.png"
            if write_preview(folder / rel, ct.hu, ct.grid, roi, m, on_ct, ref_gy):
                previews[roi.name] = folder / rel
                notes.structures[roi.name]["preview"] = rel

    # DVHs, and the check against the TPS's own
    qa: QaResult | None = None
    if dose is not None:
        stored = _stored_dvhs(course, dose, plan_summary, ss, notes, result, study)
        try:
            dvhs, qa = _dvhs(rois, masks, ct.grid, dose, on_ct, opts, stored, notes)
        except Exception as exc:  # noqa: BLE001
            log.debug("DVH failed for study %s", study, exc_info=True)
            notes.add("DVH_EXEC_001", f"{type(exc).__name__}: {exc}")
            result.failures.append(Failure(study, f"DVH failed: {exc}", "DVH_EXEC_001", study))
            dvhs, qa = [], None
        if dvhs:
            _write_dvh_csv(folder, job.patient, study, dvhs, opts, notes)
            notes.outputs["dvh"] = "dvh.csv"
            notes.outputs["dvh_method"] = opts.dvh_method
            notes.add("DVH_SUCC_001", f"{len(dvhs)} DVH(s), method {opts.dvh_method}")
        if qa is not None:
            _record_qa(folder, job.patient, study, qa, notes, result)
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


def _stored_dvhs(course, dose, plan_summary, ss, notes: PatientNotes, result: PatientResult, study: str):
    """The TPS's stored DVHs for this course, mapped to our structure set, or None (noted why)."""
    import pydicom

    from .tps_reference import read_stored_dvhs

    if dose.info.summation == "BEAM-SUM":
        notes.add("DVH_WARN_003", "doses were summed from per-beam files, whose stored DVHs are partial: no TPS check")
        return None
    candidates = [course.dose.path] if course.dose is not None else []
    candidates += [d.path for d in course.dvh_files]
    prescriptions = [p.dose_gy for p in plan_summary.prescriptions] if plan_summary else []
    for path in candidates:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001
            notes.add("DVH_WARN_003", f"cannot read stored DVHs from {Path(path).name}: {exc}")
            continue
        stored = read_stored_dvhs(ds, prescriptions)
        if stored is None:
            continue
        # The ROI numbers are those of the structure set the DVH's plan references: verify the chain.
        if course.plan is None or course.plan.sop_uid not in stored.plan_uids:
            notes.add("DVH_WARN_003", f"stored DVHs in RTDOSE {stored.rtdose_sop_uid} do not reference the linked "
                      "plan, so their ROI numbers cannot be mapped: no TPS check")
            return None
        if ss.sop_uid not in course.plan.structure_sets:
            notes.add("DVH_WARN_003", f"the plan references structure set(s) {list(course.plan.structure_sets)}, "
                      f"not the converted {ss.sop_uid}: no TPS check")
            return None
        return stored
    return None


def _dvhs(rois, masks: list[RoiMask], grid: Grid, dose, on_ct: np.ndarray, opts: ConvertOptions, stored,
          notes: PatientNotes) -> tuple[list[Dvh], QaResult | None]:
    """One DVH per structure by the chosen method, each compared with the TPS's when it has one."""
    out = []
    vcc = grid.voxel_volume_cc
    qa = QaResult(stored.rtdose_sop_uid, stored.stated_scale, opts.dvh_method, opts.qa) if stored is not None else None
    if qa is not None:
        qa.not_compared = list(stored.skipped)
    ss_grid = grid.supersampled(opts.supersample) if opts.supersample > 1 and opts.dvh_method == "voxel" else None
    seen: set[int] = set()
    for roi, m in zip(rois, masks):
        extra_max = None
        if opts.dvh_method == "tps":
            ts = tps_samples(roi, grid, dose, opts.tps, volume_hint_cc=m.voxels * vcc)
            for w in ts.warnings:
                notes.add("DVH_WARN_002", w, roi=roi.name)
            samples = ts.dose_samples()
            d = compute_weighted_dvh(roi.name, None, None, opts.dvh, ts.grid_min_gy, ts.grid_max_gy, samples)
            d.metrics["supersample"] = float(ts.subsample)
            extra_max = d.metrics.get("Dmax_Gy")
            notes.structures[roi.name]["tps_volume_cc"] = round(ts.volume_cc, 6)
        elif ss_grid is not None and m.voxels * vcc < opts.supersample_below_cc and \
                (sm := rasterise_roi(roi, ss_grid, opts.plane_tol_mm)).voxels:
            k0, i0, j0 = sm.offset
            sub = Grid(origin=ss_grid.to_physical(np.array([[j0, i0, k0]], float))[0], row_dir=ss_grid.row_dir,
                       col_dir=ss_grid.col_dir, spacing=ss_grid.spacing, shape=sm.box.shape)
            vals = resample_to(dose, sub)[sm.box]
            d = compute_dvh(roi.name, vals, ss_grid.voxel_volume_cc, opts.dvh)
            d.metrics["supersample"] = float(opts.supersample)
            samples = DoseSamples(vals, ss_grid.voxel_volume_cc) if qa is not None else None
        else:
            vals = on_ct[m.slices][m.box]
            d = compute_dvh(roi.name, vals, vcc, opts.dvh)
            d.metrics["supersample"] = 1.0
            samples = DoseSamples(vals, vcc) if qa is not None else None
        out.append(d)
        if qa is not None and roi.number in stored.dvhs and roi.number not in seen:
            seen.add(roi.number)
            qa.rows.append(compare_structure(roi.name, roi.number, samples, stored.dvhs[roi.number], opts.qa, extra_max))
    if qa is not None:
        names = {r.number: r.name for r in rois}
        for number in sorted(set(stored.dvhs) - seen):
            label = names.get(number)
            qa.not_compared.append(f"ROI {number}{f' ({label})' if label else ''}: stored DVH but no converted structure")
        set_hint(qa)
    return out, qa


def _record_qa(folder: Path, patient: str, study: str, qa: QaResult, notes: PatientNotes, result: PatientResult) -> None:
    notes.dvh_qa = qa.to_dict()
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(QA_CSV_COLUMNS)
    w.writerows([csv_value(v) for v in row] for row in qa_csv_rows(patient, study, qa))  # ROI names from the RTSTRUCT
    write_text(folder / "dvh_qa.csv", buf.getvalue())
    notes.outputs["dvh_qa_csv"] = "dvh_qa.csv"
    failed = [r for r in qa.rows if r.status == "fail"]
    for r in failed:
        msg = f"DVH disagrees with the TPS's stored DVH (RTDOSE {qa.source}): {r.summary()}"
        notes.add("DVH_WARN_001", msg, roi=r.roi)
        result.failures.append(Failure(f"{study}:{r.roi}", msg, "DVH_WARN_001", study))
    if qa.hint and failed:
        notes.add("DVH_WARN_001", qa.hint)
    if qa.rows and not failed:
        notes.add("DVH_SUCC_002", f"{len(qa.rows)} structure(s) agree with the TPS's stored DVHs ({qa.stated_scale})")


DVH_ID_COLUMNS = ["patient", "study_uid", "roi"]


def _write_dvh_csv(folder: Path, patient: str, study: str, dvhs: list[Dvh], opts: ConvertOptions, notes: PatientNotes) -> None:
    cols = DVH_ID_COLUMNS + metric_names(opts.dvh) + ["supersample", "dvh_method", "warnings"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for d in dvhs:
        warn = " | ".join(notes.structures.get(d.roi, {}).get("warnings", []))
        row = [patient, study, d.roi] + [_cell(d.metrics.get(c)) for c in cols[3:-2]] + [opts.dvh_method, warn]
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
