"""PDCP-style verification codes and the per-patient notes JSON.

Every step of a patient's conversion appends a coded note, so a reader (or a script) sees
exactly why a patient was converted, partly converted, quarantined or excluded. The codes
reuse PDCP's numbering (I initial, II study, XI CT, XII CT NIfTI, XIII/XIV structures,
XV plan, XVI dose, XXIV dose selection) so existing PDCP users can read them; the outcome
words are spelt correctly and `patientimagingfilesready` is true only when every requested
output was written. See docs/rt.md for the table and for the PDCP bugs this fixes.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_text
from ..errors import PermanentError

PROCEED = "PROCEED"
EXCLUDE = "EXCLUDE"
REVIEW = "REVIEW"
WARN = "WARN"

#: code → (outcome, description). One table for docs, notes and tests.
CODES: dict[str, tuple[str, str]] = {
    "I_SUCC_001": (PROCEED, "one study with an RT course"),
    "I_EXEC_003": (WARN, "no RT objects among the patient's files: not an RT patient, nothing to convert"),
    "I_EXEC_005": (EXCLUDE, "a required modality is missing"),
    "I_REV_001": (REVIEW, "several studies hold a complete RT course: quarantined for review"),
    "II_SUCC_001": (PROCEED, "one CT linked to the structure set (and plan and dose)"),
    "II_EXEC_001": (EXCLUDE, "no CT series is referenced by the structure set"),
    "II_EXEC_002": (EXCLUDE, "no linkage between modalities (references and FrameOfReferenceUID disagree)"),
    "II_REV_003": (REVIEW, "several candidate CTs, structure sets, plans or doses: quarantined for review"),
    "XI_SUCC_001": (PROCEED, "CT slices read and ordered along the slice normal"),
    "XI_WARN_001": (WARN, "duplicate CT slice positions dropped"),
    "XI_EXEC_001": (EXCLUDE, "CT slices cannot be ordered onto a regular grid (missing positions, mixed geometry)"),
    "XI_EXEC_002": (EXCLUDE, "CT slices cannot be read"),
    "XII_SUCC_001": (PROCEED, "CT NIfTI written"),
    "XII_EXEC_001": (EXCLUDE, "CT NIfTI could not be written"),
    "XIII_SUCC_001": (PROCEED, "structure set read"),
    "XIII_EXEC_001": (EXCLUDE, "structure set cannot be read or has no contours"),
    "XIV_SUCC_001": (PROCEED, "masks written"),
    "XIV_WARN_001": (WARN, "a structure was converted with a warning (clipped, off-slice, single plane, missing image)"),
    "XIV_REV_001": (REVIEW, "a structure has no usable closed contour and was skipped"),
    "XIV_EXEC_001": (EXCLUDE, "masks could not be written"),
    "XV_SUCC_001": (PROCEED, "plan read and linked (approved plans preferred)"),
    "XV_WARN_001": (WARN, "no RTPLAN: the dose is linked by FrameOfReferenceUID only"),
    "XV_EXEC_001": (EXCLUDE, "plan missing or cannot be read"),
    "XVI_SUCC_001": (PROCEED, "dose read, scaled to Gy and resampled onto the CT grid"),
    "XVI_WARN_001": (WARN, "per-beam doses summed into a plan dose, as requested with --sum-beam-doses"),
    "XVI_EXEC_001": (EXCLUDE, "no RTDOSE for the selected plan"),
    "XVI_EXEC_002": (EXCLUDE, "RTDOSE unusable (no DoseGridScaling, not in Gy, mismatched frame of reference)"),
    "XVI_EXEC_003": (EXCLUDE, "only per-beam/fraction doses: not summed silently"),
    "XXIV_EXEC_003": (EXCLUDE, "maximum dose is not plausible"),
    "DVH_SUCC_001": (PROCEED, "DVHs computed"),
    "DVH_SUCC_002": (PROCEED, "DVHs agree with the planning system's stored DVHs within tolerance"),
    "DVH_WARN_001": (WARN, "a structure's DVH is outside tolerance of the planning system's stored DVH"),
    "DVH_WARN_002": (WARN, "a structure's DVH solid needed interpolation across missing contour planes"),
    "DVH_WARN_003": (WARN, "the planning system's stored DVHs could not be used for the check"),
    "DVH_EXEC_001": (EXCLUDE, "DVHs could not be computed"),
}


class RtConversionError(PermanentError):
    """A patient (or one of its objects) cannot be converted; carries the verification code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.reason = message


@dataclass
class Note:
    code: str
    outcome: str
    message: str
    roi: str | None = None


@dataclass
class PatientNotes:
    """What happened to one patient; written as `<output>/<patient>/notes.json`."""

    patient: str
    status: str = "RUNNING"  # SUCCESS | PARTIAL | QUARANTINE | EXCLUDED | NO_RT
    patientimagingfilesready: bool = False
    notes: list[Note] = field(default_factory=list)
    linkage: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    structures: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the inputs' fingerprint (SOPInstanceUIDs + sizes, options, converter version)
    inputs: dict[str, Any] = field(default_factory=dict)
    #: our DVHs against the TPS's stored ones (ingest.rt.dvh_qa), when the RTDOSE has them
    dvh_qa: dict[str, Any] = field(default_factory=dict)
    started_at: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    finished_at: str | None = None
    version: str = "rtlake-rt 2"

    def add(self, code: str, message: str = "", roi: str | None = None) -> Note:
        outcome, desc = CODES[code]
        note = Note(code, outcome, message or desc, roi)
        self.notes.append(note)
        return note

    @property
    def problems(self) -> list[Note]:
        return [n for n in self.notes if n.outcome in (EXCLUDE, REVIEW, WARN)]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False, default=str)

    def write(self, path: Path) -> None:
        self.finished_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        write_text(path, self.to_json() + "\n")

    @classmethod
    def read(cls, path: Path) -> "PatientNotes":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        notes = [Note(**n) for n in data.pop("notes", [])]
        return cls(notes=notes, **data)
