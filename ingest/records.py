"""Typed records passed between the stages: source → selection → store → catalog.

Each arrow of the data flow carries one of these, so a new source or store only has to
produce or accept them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class StudyRecord:
    """One study as a PACS query describes it (no pixel data yet)."""

    study_uid: str
    patient_id: str
    accession: str = ""
    study_date: dt.date | None = None
    description: str = ""
    modalities: tuple[str, ...] = ()
    n_instances: int | None = None
    study_id: str = ""
    source: str = ""

    @property
    def primary_modality(self) -> str:
        """The modality a session is filed under (imaging before RT objects, PT beats CT)."""
        return primary_modality(self.modalities)


# Order decides the session type of a mixed study: a PET-CT is a PET session, a CT with an
# RTSTRUCT is a CT session, an RT-only study keeps its RT modality.
_MODALITY_PRIORITY = ("PT", "MR", "CT", "NM", "XA", "RF", "DX", "CR", "MG", "US", "SR",
                      "RTPLAN", "RTDOSE", "RTSTRUCT", "RTIMAGE", "REG", "SEG")


def primary_modality(modalities: tuple[str, ...] | list[str]) -> str:
    mods = [m.upper() for m in modalities if m]
    for m in _MODALITY_PRIORITY:
        if m in mods:
            return m
    return mods[0] if mods else "OT"


@dataclass(frozen=True)
class Refusal:
    """A file a source had but that is not a whole, well-formed DICOM instance: never stored."""

    target: str  # the file, or the PACS instance, as a person can find it
    check: str  # the ingest.validate check that failed
    reason: str  # "damaged DICOM (<check>): <detail>"
    sop_uid: str = ""


@dataclass(frozen=True)
class Conflict:
    """Two different files claiming one SOPInstanceUID (never "first wins").

    `resolution` is `kept_stored` (a is what the store already holds, b was not stored) or
    `neither_stored` (both came in one delivery and both are valid: rtlake does not pick one).
    """

    sop_uid: str
    study_uid: str  # the study being stored when the conflict was found
    resolution: str
    source_a: str
    source_b: str
    study_uid_a: str = ""
    study_uid_b: str = ""
    sha256_a: str = ""
    sha256_b: str = ""

    @property
    def reason(self) -> str:
        """For failure rows and log lines: names the instance and the study, never a store path (a lake path
        holds the subject label); both sources are in the `conflicts` table."""
        if self.resolution == "kept_stored":
            return (f"conflicting duplicate: SOPInstanceUID {self.sop_uid} is already stored (study "
                    f"{self.study_uid_a or self.study_uid}) with other content; this copy was not stored")
        return (f"conflicting duplicate: SOPInstanceUID {self.sop_uid} arrived twice with different content in "
                f"study {self.study_uid}; neither copy stored until one is removed from the PACS")


@dataclass
class RetrievedStudy:
    """What a source delivered for one study: DICOM files in a scratch folder.

    `refused` and `conflicts` are instances the source had but did not hand over (damaged files,
    two valid versions of one instance); they count as missing, so the study is not complete.
    """

    study: StudyRecord
    files: list[Path] = field(default_factory=list)
    expected: int | None = None
    refused: list[Refusal] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        return self.expected is not None and len(self.files) < self.expected


@dataclass(frozen=True)
class SessionPlan:
    """Where a study goes in a store: XNAT-style project / subject / session label."""

    project: str
    subject: str
    label: str
    study: StudyRecord
    hospital_id: str = ""


@dataclass
class StoredSession:
    """What a store holds for one study after a put."""

    plan: SessionPlan
    location: str
    scans: list["StoredScan"] = field(default_factory=list)
    files: list["StoredFile"] = field(default_factory=list)
    #: (target, reason) for files of the study that could not be stored; the rest were.
    problems: list[tuple[str, str]] = field(default_factory=list)
    #: files not stored because another version of the instance is stored (or came with them)
    conflicts: list[Conflict] = field(default_factory=list)


@dataclass(frozen=True)
class StoredScan:
    series_uid: str
    scan_id: str
    modality: str
    description: str
    n_files: int


@dataclass(frozen=True)
class StoredFile:
    sop_uid: str
    series_uid: str
    path: str
    size: int
