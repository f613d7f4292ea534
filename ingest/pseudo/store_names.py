"""Fill in what the store calls sessions stored before the catalog recorded it.

Every run now records, beside the identified subject/label/study UID the catalog is keyed by,
the names the store holds (`sessions.store_*`: pseudonyms when pseudonymised). Sessions stored
before those columns existed have NULL there. For them the names are recomputed with the key
(`pseudonymise_plan`, the same rule the run used), and kept only when the store location shows
that the session was indeed stored under its pseudonyms; otherwise it was stored before
pseudonymisation was turned on, under the identified names, and those are recorded.
"""

from __future__ import annotations

import logging

from ..records import SessionPlan, StudyRecord
from .apply import pseudonymise_plan
from .keys import load_key
from .profile import load_profile

log = logging.getLogger(__name__)


def fill_store_names(cfg, catalog) -> int:
    """Record `store_*` for stored sessions that lack them; returns how many rows were filled.

    Raises:
        ConfigError: the key or the profile cannot be loaded.
    """
    rows = catalog.query_dicts(
        "SELECT s.study_uid, s.project, s.subject, s.label, s.hospital_id, s.location, "
        "coalesce(st.accession, s.accession) AS accession, coalesce(st.study_date, s.study_date) AS study_date, "
        "st.study_id, st.description, st.modalities FROM sessions s LEFT JOIN studies_seen st USING (study_uid) "
        "WHERE s.state = 'stored' AND s.store_subject IS NULL")
    if not rows:
        return 0
    key, profile = load_key(cfg.pseudo.key_env), load_profile(cfg.pseudo.profile)
    with catalog.transaction() as con:
        for r in rows:
            study = StudyRecord(study_uid=r["study_uid"], patient_id=r["hospital_id"] or "",
                                accession=r["accession"] or "", study_date=r["study_date"],
                                description=r["description"] or "", study_id=r["study_id"] or "",
                                modalities=tuple(m for m in (r["modalities"] or "").split("\\") if m))
            plan = SessionPlan(r["project"], r["subject"], r["label"], study, r["hospital_id"] or "")
            p = pseudonymise_plan(cfg, plan, key, profile)
            loc = r["location"] or ""
            if not (p.subject in loc and p.label in loc):
                p = plan  # stored before pseudonymisation was turned on: the store has the identified names
            con.execute("UPDATE sessions SET store_subject=?, store_label=?, store_study_uid=?, store_study_date=?, "
                        "store_description=? WHERE study_uid=?",
                        [p.subject, p.label, p.study.study_uid, p.study.study_date, p.study.description,
                         r["study_uid"]])
    log.info("recorded the store's names of %d session(s) stored before the catalog kept them", len(rows))
    return len(rows)
