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


@dataclass
class RetrievedStudy:
    """What a source delivered for one study: DICOM files in a scratch folder."""

    study: StudyRecord
    files: list[Path] = field(default_factory=list)
    expected: int | None = None

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
