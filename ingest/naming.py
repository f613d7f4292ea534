"""How studies are named in the lake, following the XNAT conventions the SOP uses.

Subject = NHS number (or NN_<hospital id>). Session label = accession number; RT sessions,
which usually have no accession, are `{hospitalID}_RT_{year}_{accession or StudyID}`. Labels
are made XNAT-safe, and a numeric suffix resolves collisions. The label is fixed in the
catalog before any file is written, so a resumed run reuses it.
"""

from __future__ import annotations

import hashlib
import re

from .records import StudyRecord

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]+")


def safe(text: str) -> str:
    return _UNSAFE.sub("_", text.strip()).strip("_")


def is_rt(study: StudyRecord) -> bool:
    return any(m.upper().startswith("RT") for m in study.modalities)


def base_label(study: StudyRecord, hospital_id: str) -> str:
    year = str(study.study_date.year) if study.study_date else "unknown"
    if is_rt(study):
        return safe(f"{hospital_id}_RT_{year}_{study.accession or study.study_id or 'noid'}")
    if study.accession and safe(study.accession):
        return safe(study.accession)
    # No accession on a diagnostic study: still a stable, unique label.
    tag = study.study_id or hashlib.sha1(study.study_uid.encode()).hexdigest()[:8]
    day = study.study_date.strftime("%Y%m%d") if study.study_date else "nodate"
    return safe(f"{hospital_id}_{study.primary_modality}_{day}_{tag}")


def unique_label(base: str, taken: set[str]) -> str:
    if base not in taken:
        return base
    n = 2
    while f"{base}_{n}" in taken:
        n += 1
    return f"{base}_{n}"
