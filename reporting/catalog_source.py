"""Long tables for the master sheet read from the catalog (instead of hand-downloaded XNAT CSVs)."""

from __future__ import annotations

import pandas as pd

from ingest.catalog import Catalog

from .master import LONG_COLUMNS


def sessions_from_catalog(catalog: Catalog) -> pd.DataFrame:
    """Stored sessions as LONG_COLUMNS; the subject comes from the cohort (NHS number or NN_<id>).

    The session label doubles as the ID column (it is what XNAT shows as the session label);
    Scans is the number of series the store holds for it.
    """
    sql = """
        SELECT coalesce(p.subject, s.subject) AS subject,
               s.modality AS modality,
               s.label AS session,
               s.study_date AS date,
               s.label AS session_id,
               s.study_uid AS uid,
               CAST(coalesce(sc.n, s.n_scans) AS VARCHAR) AS scans,
               coalesce(s.store, 'catalog') AS source
        FROM sessions s
        LEFT JOIN patients p ON p.hospital_id = s.hospital_id
        LEFT JOIN (SELECT study_uid, count(*) AS n FROM scans GROUP BY study_uid) sc ON sc.study_uid = s.study_uid
        WHERE s.state = 'stored'
    """
    with catalog._lock:
        df = catalog.con.execute(sql).df()
    return df.reindex(columns=list(LONG_COLUMNS))


def cohort_subjects(catalog: Catalog) -> list[str]:
    return [r[0] for r in catalog.execute("SELECT subject FROM patients ORDER BY subject").fetchall()]
