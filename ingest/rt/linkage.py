"""Find one RT course per patient: CT → RTSTRUCT → RTPLAN → RTDOSE.

Links follow the references DICOM provides (RTSTRUCT's referenced series, RTPLAN's
ReferencedStructureSetSequence, RTDOSE's ReferencedRTPlanSequence) and are checked against
FrameOfReferenceUID. Anything ambiguous is not guessed: several studies with a course,
several unapproved plans, or several plan doses put the patient in quarantine with the
reason; per-beam doses are never summed behind the user's back. Approved plans win over
unapproved ones. Only headers are read here (no pixel data).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

log = logging.getLogger(__name__)

PLAN_SUMMATIONS = {"PLAN", "MULTI_PLAN"}


@dataclass
class CtSeriesInfo:
    series_uid: str
    study_uid: str
    frame_of_reference: str
    files: list[Path] = field(default_factory=list)


@dataclass
class StructInfo:
    path: Path
    sop_uid: str
    study_uid: str
    frame_of_reference: str
    referenced_series: tuple[str, ...]


@dataclass
class PlanInfo:
    path: Path
    sop_uid: str
    study_uid: str
    frame_of_reference: str
    approval: str
    structure_sets: tuple[str, ...]
    label: str = ""


@dataclass
class DoseFileInfo:
    path: Path
    sop_uid: str
    study_uid: str
    frame_of_reference: str
    summation: str
    plans: tuple[str, ...]


@dataclass
class Inventory:
    """What a patient's files contain, by modality (PDCP's 'images summary')."""

    ct: dict[str, CtSeriesInfo] = field(default_factory=dict)
    structs: list[StructInfo] = field(default_factory=list)
    plans: list[PlanInfo] = field(default_factory=list)
    doses: list[DoseFileInfo] = field(default_factory=list)
    #: RTDOSE objects without a dose grid that only carry DVHs (a TPS's companion file)
    dvh_only: list[DoseFileInfo] = field(default_factory=list)
    other: dict[str, int] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        studies = {c.study_uid for c in self.ct.values()} | {s.study_uid for s in self.structs}
        studies |= {p.study_uid for p in self.plans} | {d.study_uid for d in self.doses}
        return {
            "number_of_patient_studies": len(studies),
            "number_of_CT_series": len(self.ct),
            "number_of_CT_instances": sum(len(c.files) for c in self.ct.values()),
            "number_of_RTSTRUCT_instances": len(self.structs),
            "number_of_RTPLAN_instances": len(self.plans),
            "number_of_RTDOSE_instances": len(self.doses),
            "number_of_DVH_only_RTDOSE_instances": len(self.dvh_only),
            "number_of_unreadable_files": len(self.unreadable),
        }


@dataclass
class Course:
    """The selected RT course, or why there is none."""

    status: str  # LINKED | QUARANTINE | EXCLUDED | NO_RT
    code: str
    reason: str = ""
    ct: CtSeriesInfo | None = None
    struct: StructInfo | None = None
    plan: PlanInfo | None = None
    dose: DoseFileInfo | None = None
    dose_code: str | None = None  # a problem with the dose alone (the rest is still converted)
    dose_reason: str = ""
    #: the per-beam doses of the plan when there is no PLAN dose (summed only on request)
    beam_doses: list[DoseFileInfo] = field(default_factory=list)
    #: DVH-only RTDOSE files of the plan (the TPS's DVHs, when not inside the dose file)
    dvh_files: list[DoseFileInfo] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (code, message)

    def describe(self) -> dict:
        return {
            "status": self.status,
            "code": self.code,
            "reason": self.reason,
            "study_uid": self.ct.study_uid if self.ct else None,
            "ct_series_uid": self.ct.series_uid if self.ct else None,
            "frame_of_reference": self.ct.frame_of_reference if self.ct else None,
            "rtstruct_sop_uid": self.struct.sop_uid if self.struct else None,
            "rtplan_sop_uid": self.plan.sop_uid if self.plan else None,
            "rtplan_approval": self.plan.approval if self.plan else None,
            "rtdose_sop_uid": self.dose.sop_uid if self.dose else None,
        }


def _refs(seq_owner, *names: str) -> list:
    items = [seq_owner]
    for n in names:
        items = [sub for it in items for sub in (it.get(n, []) or [])]
    return items


def inventory(paths: list[Path]) -> Inventory:
    """Read the headers of a patient's files and sort them by modality."""
    inv = Inventory()
    for p in paths:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - listed, not fatal
            inv.unreadable.append(str(p))
            continue
        mod = str(ds.get("Modality", "") or "")
        study = str(ds.get("StudyInstanceUID", "") or "")
        for_uid = str(ds.get("FrameOfReferenceUID", "") or "")
        sop = str(ds.get("SOPInstanceUID", "") or "")
        if mod == "CT":
            s = str(ds.get("SeriesInstanceUID", "") or "")
            info = inv.ct.setdefault(s, CtSeriesInfo(s, study, for_uid))
            info.files.append(Path(p))
        elif mod == "RTSTRUCT":
            frames = _refs(ds, "ReferencedFrameOfReferenceSequence")
            fr = str(frames[0].get("FrameOfReferenceUID", "")) if frames else for_uid
            series = tuple(
                str(se.get("SeriesInstanceUID", ""))
                for se in _refs(ds, "ReferencedFrameOfReferenceSequence", "RTReferencedStudySequence", "RTReferencedSeriesSequence")
            )
            inv.structs.append(StructInfo(Path(p), sop, study, fr or for_uid, series))
        elif mod == "RTPLAN":
            refs = tuple(str(r.get("ReferencedSOPInstanceUID", "")) for r in _refs(ds, "ReferencedStructureSetSequence"))
            inv.plans.append(
                PlanInfo(Path(p), sop, study, for_uid, str(ds.get("ApprovalStatus", "") or "").upper(), refs, str(ds.get("RTPlanLabel", "") or ""))
            )
        elif mod == "RTDOSE":
            plans = tuple(str(r.get("ReferencedSOPInstanceUID", "")) for r in _refs(ds, "ReferencedRTPlanSequence"))
            info = DoseFileInfo(Path(p), sop, study, for_uid, str(ds.get("DoseSummationType", "") or "").upper(), plans)
            # No image module: a DVH-only companion, not a second dose competing for the course.
            (inv.doses if "Rows" in ds or "PixelData" in ds else inv.dvh_only).append(info)
        else:
            inv.other[mod or "?"] = inv.other.get(mod or "?", 0) + 1
    return inv


def select_course(inv: Inventory) -> Course:
    """Pick the one CT/RTSTRUCT/RTPLAN/RTDOSE course, or say why not."""
    if not inv.structs and not inv.plans and not inv.doses and not inv.dvh_only:
        # Not an RT patient (diagnostic imaging only): nothing to convert, and nothing wrong.
        return Course("NO_RT", "I_EXEC_003", "no RT objects (RTSTRUCT/RTPLAN/RTDOSE) among the patient's files")
    if not inv.structs:
        return Course("EXCLUDED", "I_EXEC_005", "modality missing: RTSTRUCT")
    if not inv.ct:
        return Course("EXCLUDED", "I_EXEC_005", "modality missing: CT")
    warnings: list[tuple[str, str]] = []
    # 1. structure set → CT series, by reference, else by frame of reference.
    linked: list[tuple[StructInfo, CtSeriesInfo]] = []
    problems: list[str] = []
    for st in inv.structs:
        cts = [inv.ct[s] for s in st.referenced_series if s in inv.ct]
        if not cts:
            same_for = [c for c in inv.ct.values() if c.frame_of_reference and c.frame_of_reference == st.frame_of_reference]
            if len(same_for) == 1:
                cts = same_for
                warnings.append(("XIV_WARN_001", f"RTSTRUCT {st.sop_uid} references no CT series present; linked by FrameOfReferenceUID"))
            else:
                problems.append(f"RTSTRUCT {st.sop_uid} references CT series {list(st.referenced_series)} which are not present")
                continue
        ct = cts[0]
        if ct.frame_of_reference and st.frame_of_reference and ct.frame_of_reference != st.frame_of_reference:
            problems.append(
                f"RTSTRUCT {st.sop_uid} FrameOfReferenceUID {st.frame_of_reference} differs from CT series {ct.series_uid} ({ct.frame_of_reference})"
            )
            continue
        linked.append((st, ct))
    if not linked:
        only_missing = problems and all("which are not present" in p for p in problems)
        return Course("EXCLUDED", "II_EXEC_001" if only_missing else "II_EXEC_002",
                      "; ".join(problems) or "no RTSTRUCT is linked to a CT")
    for p in problems:
        warnings.append(("XIV_WARN_001", p))
    by_uid = {st.sop_uid: (st, ct) for st, ct in linked}
    # 2. plans referencing a linked structure set; approved ones first.
    plans = [p for p in inv.plans if any(r in by_uid for r in p.structure_sets)]
    studies = {ct.study_uid for _, ct in linked}
    if plans:
        plan_studies = {by_uid[next(r for r in p.structure_sets if r in by_uid)][1].study_uid for p in plans}
        if len(plan_studies) > 1:
            return Course("QUARANTINE", "I_REV_001", f"{len(plan_studies)} studies each hold a planned RT course: {sorted(plan_studies)}")
        approved = [p for p in plans if p.approval == "APPROVED"]
        pool = approved or plans
        if len(pool) > 1:
            return Course(
                "QUARANTINE", "II_REV_003",
                f"{len(pool)} candidate plans ({len(approved)} approved): {sorted(p.sop_uid for p in pool)}",
            )
        plan = pool[0]
        if plan.approval != "APPROVED":
            warnings.append(("XV_SUCC_001", f"plan {plan.sop_uid} is {plan.approval or 'without ApprovalStatus'}, the only candidate"))
        elif len(plans) > 1:
            warnings.append(("XV_SUCC_001", f"approved plan {plan.sop_uid} chosen over {len(plans) - 1} unapproved"))
        st, ct = by_uid[next(r for r in plan.structure_sets if r in by_uid)]
    else:
        if len(studies) > 1:
            return Course("QUARANTINE", "I_REV_001", f"{len(studies)} studies each hold a CT with a structure set: {sorted(studies)}")
        if len(linked) > 1:
            return Course(
                "QUARANTINE", "II_REV_003",
                f"{len(linked)} structure sets and no plan to choose between them: {sorted(by_uid)}",
            )
        st, ct = linked[0]
        plan = None
    course = Course("LINKED", "II_SUCC_001", "", ct=ct, struct=st, plan=plan, warnings=warnings)
    if plan is not None:
        course.dvh_files = sorted((d for d in inv.dvh_only if plan.sop_uid in d.plans), key=lambda d: d.sop_uid)
    # 3. dose of the chosen plan (or, with no plan at all, by frame of reference).
    if plan is not None:
        doses = [d for d in inv.doses if plan.sop_uid in d.plans]
    else:
        doses = [d for d in inv.doses if d.frame_of_reference == ct.frame_of_reference]
        if doses:
            warnings.append(("XV_WARN_001", "no RTPLAN: dose linked by FrameOfReferenceUID"))
    plan_doses = [d for d in doses if d.summation in PLAN_SUMMATIONS]
    if len(plan_doses) == 1:
        course.dose = plan_doses[0]
    elif len(plan_doses) > 1:
        return Course(
            "QUARANTINE", "II_REV_003",
            f"{len(plan_doses)} plan-summed doses for the course: {sorted(d.sop_uid for d in plan_doses)}",
            ct=ct, struct=st, plan=plan, warnings=warnings,
        )
    elif doses:
        kinds = sorted({d.summation or "?" for d in doses})
        if kinds == ["BEAM"]:
            course.beam_doses = sorted(doses, key=lambda d: d.sop_uid)
        course.dose_code, course.dose_reason = (
            "XVI_EXEC_003",
            f"{len(doses)} dose(s) of summation type {'/'.join(kinds)} and no PLAN dose; not summed",
        )
    elif plan is not None:
        course.dose_code, course.dose_reason = "XVI_EXEC_001", f"plan {plan.sop_uid} has no RTDOSE"
    else:
        course.dose_code, course.dose_reason = "XV_EXEC_001", "no RTPLAN and no RTDOSE in the frame of reference"
    return course
