"""The one query shape every PACS source understands, and description matching done client-side.

Why client-side matching: DIMSE matching is case-sensitive on most PACS (Orthanc, dcmtk) while
REST /tools/find is not, and Latin-1 PACS turn an en dash into spaces. Folding both sides the
same way (case, punctuation, whitespace) makes "*ct thorax*" mean the same everywhere.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import re
import unicodedata
from dataclasses import dataclass

_NON_WORD = re.compile(r"[^0-9a-z*?]+")


def fold(text: str) -> str:
    """Case-fold, strip accents, turn every run of punctuation/space into one space."""
    text = unicodedata.normalize("NFKD", text or "").encode("ascii", "ignore").decode("ascii").casefold()
    return _NON_WORD.sub(" ", text).strip()


def description_matches(pattern: str | None, value: str, case_sensitive: bool = False) -> bool:
    """DICOM-style wildcard match (`*`, `?`) of a StudyDescription."""
    if not pattern:
        return True
    if case_sensitive:
        return fnmatch.fnmatchcase(value or "", pattern)
    return fnmatch.fnmatchcase(fold(value), fold(pattern))


def dicom_date_range(start: dt.date | None, end: dt.date | None) -> str:
    """'YYYYMMDD-YYYYMMDD' (open-ended either side) or '' for no constraint."""
    if start is None and end is None:
        return ""
    a = start.strftime("%Y%m%d") if start else ""
    b = end.strftime("%Y%m%d") if end else ""
    return f"{a}-{b}"


def parse_dicom_date(value: str | None) -> dt.date | None:
    v = (value or "").strip().replace("-", "").replace(".", "")
    if len(v) < 8:
        return None
    try:
        return dt.date(int(v[:4]), int(v[4:6]), int(v[6:8]))
    except ValueError:
        return None


@dataclass(frozen=True)
class StudyQuery:
    """A study-level look-up; all given fields must match (None = no constraint)."""

    patient_id: str | None = None
    accession: str | None = None
    study_uid: str | None = None
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    description: str | None = None

    def __post_init__(self) -> None:
        if not any((self.patient_id, self.accession, self.study_uid, self.date_from, self.date_to)):
            raise ValueError("a study query needs a PatientID, AccessionNumber, StudyInstanceUID or a date range")

    def describe(self) -> str:
        """For logs and error messages: names the accession/UID and date range, never the patient ID."""
        parts = []
        if self.study_uid:
            parts.append(f"study {self.study_uid}")
        if self.accession:
            parts.append(f"accession {self.accession}")
        if self.patient_id:
            parts.append("patient query")
        if self.date_from or self.date_to:
            parts.append(f"dates {dicom_date_range(self.date_from, self.date_to)}")
        if self.description:
            parts.append(f"description {self.description!r}")
        return ", ".join(parts)

    def date_ok(self, d: dt.date | None) -> bool:
        if d is None:
            return self.date_from is None and self.date_to is None
        return (self.date_from is None or d >= self.date_from) and (self.date_to is None or d <= self.date_to)


class QueryLookups:
    """The look-ups every query-capable source offers, all in terms of its own `find(StudyQuery)`.

    Mixed into the Orthanc, DICOMweb and DIMSE sources so each protocol writes one query
    function and gets patient, accession and StudyInstanceUID look-ups from it.
    """

    def find(self, query: "StudyQuery") -> list:  # pragma: no cover - provided by the source
        raise NotImplementedError

    def query_patient(self, patient_id: str, since: dt.date | None = None):
        yield from self.find(StudyQuery(patient_id=patient_id, date_from=since))

    def find_accession(self, accession: str) -> list:
        return self.find(StudyQuery(accession=accession))

    def find_study(self, study_uid: str) -> list:
        return self.find(StudyQuery(study_uid=study_uid))
