"""Subject labels as the lake files them: a 10-digit NHS number or `NN_<hospital id>`."""

from __future__ import annotations

from ingest.patients import NN_PREFIX, normalise_hospital_id, normalise_nhs


def normalise_subject(raw: object) -> str:
    """Canonical text of a subject label (NHS spacing/float damage undone; NN_ kept).

    Raises:
        ValueError: looks like an NHS number but is not a valid one.
    """
    text = "" if raw is None else str(raw).strip().strip('"').strip()
    if text.upper().startswith(NN_PREFIX):
        return NN_PREFIX + normalise_hospital_id(text[len(NN_PREFIX):])
    if text == "":
        return ""
    nhs = normalise_nhs(text)
    return nhs or ""
