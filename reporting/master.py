"""The master availability sheet: one row per subject, every imaging session in slots.

Built in DuckDB from a long table (one row per session: subject, modality, session label, date,
IDs, source) and pivoted to the SOP's wide layout, so the work is a sort and a grouped
aggregate instead of a Python loop per patient. Columns:

    Subject, Reference Date,
    per modality: {MOD} Date i, {MOD} Difference from Reference Date i, {MOD} ID i, {MOD} UID i, {MOD} Scans i
    then the failures block: Failure Date i, Failure Difference from Reference Date i, Failure Modality i,
    Failure Accession i, Failure UID i, Failure Description i, Failure Status i

Slots per block = max(configured minimum, most sessions any subject has). Markers, as in the SOP
sheet: an unused slot holds `null` in every cell; a difference that cannot be computed (no
reference date, or no session date) is `not applicable`, as is a missing Reference Date.
Differences are signed days: session date minus RT start, so pre-treatment imaging is negative.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

NULL = "null"
NOT_APPLICABLE = "not applicable"

#: The SOP's session types, in its column order; others follow alphabetically.
SOP_MODALITIES: tuple[str, ...] = ("MR", "CT", "PET", "CR", "DX", "RF", "SR", "XA")
_ALIASES = {"PT": "PET", "MRI": "MR"}

LONG_COLUMNS: tuple[str, ...] = ("subject", "modality", "session", "date", "session_id", "uid", "scans", "source")
FAILURE_COLUMNS: tuple[str, ...] = ("subject", "date", "modality", "accession", "uid", "description", "status")


def sheet_modality(modality: str | None) -> str:
    """The session-type name used in column headers (PT → PET, as XNAT names PET sessions)."""
    m = (modality or "OT").strip().upper()
    return _ALIASES.get(m, m)


@dataclass(frozen=True)
class Block:
    """A group of slot columns: `prefix` plus (header word, long-table column, kind) per field."""

    prefix: str
    fields: tuple[tuple[str, str, str], ...]  # (label, column, kind: date|diff|text|int)
    key: str  # value of the `modality` column selecting this block's rows

    def header(self, label: str, slot: int) -> str:
        return f"{self.prefix} {label} {slot}"


_MOD_FIELDS = (
    ("Date", "date", "date"),
    ("Difference from Reference Date", "diff", "diff"),
    ("ID", "session_id", "text"),
    ("UID", "uid", "text"),
    ("Scans", "scans", "text"),
)
_FAIL_FIELDS = (
    ("Date", "date", "date"),
    ("Difference from Reference Date", "diff", "diff"),
    ("Modality", "fmodality", "text"),
    ("Accession", "accession", "text"),
    ("UID", "uid", "text"),
    ("Description", "description", "text"),
    ("Status", "status", "text"),
)
FAILURE_KEY = "__FAILURE__"


@dataclass
class MasterSheet:
    """The pivoted sheet: `frame` keeps typed columns; `rendered()` applies the SOP markers."""

    frame: pd.DataFrame
    blocks: list[Block]
    slots: dict[str, int]
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        return ["Subject", "Reference Date"] + [
            b.header(label, i) for b in self.blocks for i in range(1, self.slots[b.key] + 1) for label, _, _ in b.fields
        ]

    def rendered(self) -> pd.DataFrame:
        """Object columns: `datetime.date`, int, str or the null / not applicable markers."""
        f = self.frame
        out: dict[str, np.ndarray] = {"Subject": f["Subject"].to_numpy(dtype=object)}
        out["Reference Date"] = _dates(f["Reference Date"], NOT_APPLICABLE)
        for b in self.blocks:
            n = f[f"__n {b.key}"].to_numpy()
            for i in range(1, self.slots[b.key] + 1):
                present = n >= i
                for label, _, kind in b.fields:
                    col = b.header(label, i)
                    if kind == "date":
                        vals = _dates(f[col], NULL)
                    elif kind == "diff":
                        vals = _ints(f[col], NOT_APPLICABLE)
                    else:
                        vals = f[col].to_numpy(dtype=object).copy()
                        vals[pd.isna(vals)] = NULL
                    vals[~present] = NULL
                    out[col] = vals
        return pd.DataFrame(out, columns=self.columns)


def _dates(s: pd.Series, marker: str) -> np.ndarray:
    out = np.full(len(s), marker, dtype=object)
    ok = s.notna().to_numpy()
    if ok.any():
        out[ok] = pd.to_datetime(s[ok]).dt.date.to_numpy()
    return out


def _ints(s: pd.Series, marker: str) -> np.ndarray:
    out = np.full(len(s), marker, dtype=object)
    ok = s.notna().to_numpy()
    if ok.any():
        out[ok] = [int(v) for v in s[ok].to_numpy()]
    return out


def order_modalities(mods: Iterable[str]) -> list[str]:
    """SOP session types first (always present, so the EDW sees stable columns), then the rest."""
    extra = sorted({sheet_modality(m) for m in mods} - set(SOP_MODALITIES))
    return list(SOP_MODALITIES) + extra


def build_master(
    sessions: pd.DataFrame,
    reference_dates: dict[str, dt.date],
    failures: pd.DataFrame | None = None,
    slots_per_modality: int = 5,
    subjects: Sequence[str] = (),
    modalities: Sequence[str] | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
) -> MasterSheet:
    """Pivot the long session table (LONG_COLUMNS) and failures (FAILURE_COLUMNS) to the wide sheet.

    `subjects` adds rows for cohort members with nothing stored yet; every subject in the inputs
    gets a row anyway. `modalities` fixes the block order (default: SOP order, then others).
    """
    own = con is None
    con = con or duckdb.connect()
    try:
        return _build(con, sessions, reference_dates, failures, slots_per_modality, subjects, modalities)
    finally:
        if own:
            con.close()


def _build(con, sessions, reference_dates, failures, slots_min, subjects, modalities) -> MasterSheet:
    sess = sessions.reindex(columns=list(LONG_COLUMNS))
    fails = (failures if failures is not None else pd.DataFrame(columns=list(FAILURE_COLUMNS))).reindex(
        columns=list(FAILURE_COLUMNS)
    )
    refs = pd.DataFrame({"subject": list(reference_dates.keys()), "ref_date": list(reference_dates.values())})
    extra = pd.DataFrame({"subject": list(subjects)})
    con.register("long_in", sess)
    con.register("fail_in", fails)
    con.register("ref_in", refs)
    con.register("extra_in", extra)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE ref AS
        SELECT CAST(subject AS VARCHAR) AS subject, min(CAST(ref_date AS DATE)) AS ref_date
        FROM ref_in GROUP BY 1""")
    # Both inputs go into one numbered table; failures are one more block keyed FAILURE_KEY.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE numbered AS
        WITH u AS (
            SELECT CAST(subject AS VARCHAR) AS subject,
                   CASE upper(trim(CAST(modality AS VARCHAR))) WHEN 'PT' THEN 'PET' WHEN 'MRI' THEN 'MR'
                        WHEN '' THEN 'OT' ELSE coalesce(upper(trim(CAST(modality AS VARCHAR))), 'OT') END AS block,
                   CAST(date AS DATE) AS date, CAST(session_id AS VARCHAR) AS session_id,
                   CAST(uid AS VARCHAR) AS uid, CAST(scans AS VARCHAR) AS scans,
                   NULL::VARCHAR AS fmodality, NULL::VARCHAR AS accession,
                   NULL::VARCHAR AS description, NULL::VARCHAR AS status
            FROM long_in
            UNION ALL
            SELECT CAST(subject AS VARCHAR), '{FAILURE_KEY}', CAST(date AS DATE), NULL, CAST(uid AS VARCHAR), NULL,
                   CAST(modality AS VARCHAR), CAST(accession AS VARCHAR),
                   CAST(description AS VARCHAR), CAST(status AS VARCHAR)
            FROM fail_in
        )
        SELECT u.*, u.date - r.ref_date AS diff,
               row_number() OVER (PARTITION BY u.subject, u.block
                                  ORDER BY u.date NULLS LAST, u.uid NULLS LAST, u.session_id NULLS LAST,
                                           u.accession NULLS LAST) AS slot
        FROM u LEFT JOIN ref r USING (subject)
        WHERE u.subject IS NOT NULL AND u.subject <> ''""")
    most = dict(con.execute("SELECT block, max(slot) FROM numbered GROUP BY block").fetchall())
    mods = list(modalities) if modalities is not None else order_modalities(k for k in most if k != FAILURE_KEY)
    for k in most:
        if k != FAILURE_KEY and k not in mods:
            mods.append(k)
    blocks = [Block(m, _MOD_FIELDS, m) for m in mods] + [Block("Failure", _FAIL_FIELDS, FAILURE_KEY)]
    slots = {b.key: max(slots_min, int(most.get(b.key, 0))) for b in blocks}

    aggs: list[str] = []
    for b in blocks:
        key = _sql_str(b.key)
        aggs.append(f'count(*) FILTER (WHERE block = {key}) AS "__n {b.key}"')
        for i in range(1, slots[b.key] + 1):
            for label, column, _ in b.fields:
                name = b.header(label, i).replace('"', '""')
                aggs.append(f'any_value({column}) FILTER (WHERE block = {key} AND slot = {i}) AS "{name}"')
    agg_sql = ",\n".join(aggs)
    frame = con.execute(f"""
        WITH subj AS (
            SELECT subject FROM numbered
            UNION SELECT subject FROM ref
            UNION SELECT CAST(subject AS VARCHAR) FROM extra_in WHERE subject IS NOT NULL AND subject <> ''
        ),
        agg AS (SELECT subject, {agg_sql} FROM numbered GROUP BY subject)
        SELECT s.subject AS "Subject", r.ref_date AS "Reference Date", agg.* EXCLUDE (subject)
        FROM subj s LEFT JOIN ref r USING (subject) LEFT JOIN agg USING (subject)
        ORDER BY s.subject""").df()
    for b in blocks:
        frame[f"__n {b.key}"] = frame[f"__n {b.key}"].fillna(0).astype("int64")
    counts = {
        "subjects": len(frame),
        "sessions": int(len(sess)),
        "failures": int(len(fails)),
        "subjects_with_reference_date": int(frame["Reference Date"].notna().sum()),
    }
    for name in ("long_in", "fail_in", "ref_in", "extra_in"):
        con.unregister(name)
    return MasterSheet(frame=frame, blocks=blocks, slots=slots, counts=counts)


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"
