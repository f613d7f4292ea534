"""What a physicist reads off an RTPLAN first: label, name, prescription, fractions, approval.

Also the plan's prescriptions in Gy, which the TPS-DVH reader needs: Eclipse writes the
min/mean/max of its stored DVHs as a percentage of one of them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import pydicom


@dataclass
class Prescription:
    dose_gy: float
    source: str  # "DoseReferenceSequence" | "fraction group"
    description: str = ""


@dataclass
class PlanSummary:
    sop_uid: str = ""
    label: str = ""
    name: str = ""
    intent: str = ""
    approval: str = ""
    review: str = ""  # "YYYYMMDD by NAME" when reviewed
    fractions: int | None = None
    fraction_dose_gy: float | None = None  # Σ BeamDose of the first fraction group
    prescriptions: list[Prescription] = field(default_factory=list)
    structure_sets: tuple[str, ...] = ()
    problems: list[str] = field(default_factory=list)

    @property
    def prescription_gy(self) -> float | None:
        """The headline prescription: the first target dose, else fraction dose × fractions."""
        return self.prescriptions[0].dose_gy if self.prescriptions else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prescription_gy"] = self.prescription_gy
        return d


def _float(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f else None


def read_plan_summary(path: Path) -> PlanSummary:
    """Summarise an RTPLAN; never raises (problems are listed on the result)."""
    out = PlanSummary()
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - the plan is optional for the report
        out.problems.append(f"cannot read RTPLAN: {exc}")
        return out
    return summarise_plan(ds)


def summarise_plan(ds) -> PlanSummary:
    out = PlanSummary(
        sop_uid=str(ds.get("SOPInstanceUID", "") or ""),
        label=str(ds.get("RTPlanLabel", "") or ""),
        name=str(ds.get("RTPlanName", "") or ""),
        intent=str(ds.get("PlanIntent", "") or ""),
        approval=str(ds.get("ApprovalStatus", "") or "").upper(),
        structure_sets=tuple(str(r.get("ReferencedSOPInstanceUID", "")) for r in (ds.get("ReferencedStructureSetSequence") or [])),
    )
    if ds.get("ReviewDate") or ds.get("ReviewerName"):
        out.review = f"{ds.get('ReviewDate', '') or ''} by {ds.get('ReviewerName', '') or '?'}".strip()
    groups = list(ds.get("FractionGroupSequence") or [])
    if groups:
        fg = groups[0]
        n = fg.get("NumberOfFractionsPlanned")
        out.fractions = int(n) if n not in (None, "") else None
        beam_doses = [_float(rb.get("BeamDose")) for rb in (fg.get("ReferencedBeamSequence") or [])]
        beam_doses = [b for b in beam_doses if b is not None]
        brachy = [_float(rb.get("BrachyApplicationSetupDose")) for rb in (fg.get("ReferencedBrachyApplicationSetupSequence") or [])]
        brachy = [b for b in brachy if b is not None]
        if beam_doses or brachy:
            out.fraction_dose_gy = sum(beam_doses) + sum(brachy)
        if len(groups) > 1:
            out.problems.append(f"{len(groups)} fraction groups; the first is summarised")
    for dr in ds.get("DoseReferenceSequence") or []:
        if str(dr.get("DoseReferenceType", "") or "").upper() != "TARGET":
            continue
        dose = _float(dr.get("TargetPrescriptionDose"))
        if dose is not None and dose > 0:
            out.prescriptions.append(Prescription(dose, "DoseReferenceSequence", str(dr.get("DoseReferenceDescription", "") or "")))
    if out.fraction_dose_gy and out.fractions:
        total = out.fraction_dose_gy * out.fractions
        if not any(abs(p.dose_gy - total) < 1e-6 * max(total, 1) for p in out.prescriptions):
            out.prescriptions.append(Prescription(total, "fraction group", f"{out.fractions} × {out.fraction_dose_gy:g} Gy"))
    return out
