"""Long tables for the master sheet read from the catalog (instead of hand-downloaded XNAT CSVs)."""

from __future__ import annotations

import pandas as pd

from ingest.catalog import Catalog

from .master import LONG_COLUMNS, STORE_COLUMNS


def sessions_from_catalog(catalog: Catalog) -> pd.DataFrame:
    """Stored sessions as LONG_COLUMNS + STORE_COLUMNS; the subject comes from the cohort (NHS number or NN_<id>).

    The session label doubles as the ID column (it is what XNAT shows as the session label);
    Scans is the number of series the store holds for it. The identified columns are the
    catalog's (PACS accession-based label, PACS StudyInstanceUID); STORE_COLUMNS are the names
    the store holds, which differ when the session was pseudonymised (see `pseudonymised`).
    """
    # Memory at trust scale (issue 18: 2 M sessions): every text cell DuckDB hands pandas is its own
    # Python string, so columns that repeat another (the session ID is the label; the store's names
    # are the catalog's unless pseudonymised) are read once and shared, not read twice.
    with catalog._lock:
        renamed, moved = catalog.con.execute("""
            SELECT count(*) FILTER (WHERE coalesce(s.store_subject, s.subject) <> coalesce(p.subject, s.subject)
                                       OR coalesce(s.store_label, s.label) <> s.label
                                       OR coalesce(s.store_study_uid, s.study_uid) <> s.study_uid),
                   count(*) FILTER (WHERE coalesce(p.subject, s.subject) <> s.subject)
            FROM sessions s LEFT JOIN patients p ON p.hospital_id = s.hospital_id
            WHERE s.state = 'stored'""").fetchone()
    store = ("coalesce(s.store_subject, s.subject) AS store_subject, coalesce(s.store_label, s.label) AS "
             "store_session, coalesce(s.store_study_uid, s.study_uid) AS store_uid," if renamed or moved else "")
    sql = f"""
        SELECT coalesce(p.subject, s.subject) AS subject,
               s.modality AS modality,
               s.label AS session,
               s.study_date AS date,
               s.study_uid AS uid,
               CAST(coalesce(sc.n, s.n_scans) AS VARCHAR) AS scans,
               {store}
               coalesce(s.store, 'catalog') AS source
        FROM sessions s
        LEFT JOIN patients p ON p.hospital_id = s.hospital_id
        LEFT JOIN (SELECT study_uid, count(*) AS n FROM scans GROUP BY study_uid) sc ON sc.study_uid = s.study_uid
        WHERE s.state = 'stored'
    """
    with catalog._lock:
        df = catalog.con.execute(sql).df()
    for col in ("subject", "modality", "scans", "source"):  # few distinct values: one string each
        df[col] = df[col].astype("category")
    df["session_id"] = df["session"]
    if not store:  # every store name equals the catalog's: the same string objects serve both
        df["store_subject"], df["store_session"], df["store_uid"] = df["subject"], df["session"], df["uid"]
    return df.reindex(columns=list(LONG_COLUMNS + STORE_COLUMNS))


def pseudonymised(sessions: pd.DataFrame) -> bool:
    """True when any stored session has other names in the store than in the catalog.

    Decided from the data, not from today's `[pseudo] enabled`: sessions pseudonymised by earlier
    runs stay pseudonymised in the store whatever the config says now.
    """
    if sessions.empty or "store_uid" not in sessions.columns:
        return False
    return bool((sessions["store_uid"].astype(str) != sessions["uid"].astype(str)).any()
                or (sessions["store_session"].astype(str) != sessions["session_id"].astype(str)).any())


def cohort_subjects(catalog: Catalog) -> list[str]:
    return [r[0] for r in catalog.execute("SELECT subject FROM patients ORDER BY subject").fetchall()]


def cohort_notes(catalog: Catalog, placeholder_dates=()) -> dict[str, str]:
    """Why a cohort patient may have nothing in the master sheet, by subject.

    The EDW cannot tell "no imaging" from "never queried" from an empty row, so each cohort
    patient gets the reason its row would be empty; `build_master` shows it only for subjects
    that indeed have no session and no failure. Reasons, first match wins:
    deceased and never queried; not harvested yet; harvested, PACS lists no study; only
    placeholder-dated studies (left out); no study selected (N excluded, N awaiting review, N
    skipped); selected studies not stored yet (N waiting, N failed).
    """
    with catalog._lock:
        pcols = {r[0] for r in catalog.con.execute("DESCRIBE patients").fetchall()}
    harvested = "p.harvested_run IS NOT NULL" if "harvested_run" in pcols else "TRUE"
    dates = sorted({d for d in placeholder_dates if d is not None})
    ph = ("s.study_date IN (" + ", ".join(f"DATE '{d.isoformat()}'" for d in dates) + ")") if dates else "FALSE"
    rows = catalog.query_dicts(f"""
        SELECT p.subject, p.deceased, {harvested} AS harvested,
               count(s.study_uid) AS seen,
               count(s.study_uid) FILTER (WHERE {ph}) AS placeholder,
               count(s.study_uid) FILTER (WHERE s.decision = 'include') AS included,
               count(s.study_uid) FILTER (WHERE s.decision = 'exclude') AS excluded,
               count(s.study_uid) FILTER (WHERE s.decision = 'review') AS review,
               count(s.study_uid) FILTER (WHERE s.decision LIKE 'skip%') AS skipped,
               count(s.study_uid) FILTER (WHERE s.decision = 'include' AND s.state = 'failed') AS failed
        FROM patients p LEFT JOIN studies_seen s ON s.hospital_id = p.hospital_id
        GROUP BY p.subject, p.deceased, harvested""")
    notes: dict[str, str] = {}
    for r in rows:
        dead = "deceased; " if r["deceased"] else ""
        if r["seen"] == 0:
            if r["deceased"] and not r["harvested"]:
                note = "deceased before the first harvest: never queried on PACS"
            elif not r["harvested"]:
                note = "not harvested yet: never queried on PACS"
            else:
                note = dead + "harvested: PACS lists no study for this patient"
        elif r["placeholder"] == r["seen"]:
            note = dead + "only placeholder-dated studies (scheduled, not performed): left out"
        elif r["included"] == 0:
            parts = [f"{r[k]} {w}" for k, w in (("excluded", "excluded"), ("review", "awaiting review"),
                                                 ("skipped", "skipped (verification/placeholder/deceased)")) if r[k]]
            note = dead + "no study selected: " + ", ".join(parts)
        else:
            waiting = r["included"] - r["failed"]
            note = dead + f"selected studies not stored yet: {waiting} waiting, {r['failed']} failed"
        notes[r["subject"]] = note
    return notes
