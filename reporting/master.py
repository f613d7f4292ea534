"""The master availability sheet: one row per subject, every imaging session in slots.

Built in DuckDB from a long table (one row per session: subject, modality, session label, date,
IDs, source) and pivoted to the SOP's wide layout, so the work is a sort and a grouped
aggregate instead of a Python loop per patient. Columns:

    Subject, Reference Date,
    per modality: {MOD} Date i, {MOD} Difference from Reference Date i, {MOD} ID i, {MOD} UID i, {MOD} Scans i
    then the failures block: Failure Date i, Failure Difference from Reference Date i, Failure Modality i,
    Failure Accession i, Failure UID i, Failure Description i, Failure Status i

    then Notes

Slots per block = max(configured minimum, most sessions any subject has). Markers, as in the SOP
sheet: an unused slot holds `null` in every cell; a session without a date has `null` as its
Date and its Difference (as the SOP script writes it); a dated session of a subject with no
reference date has Difference `not applicable`, as is a missing Reference Date. Differences are
signed days: session date minus RT start, so pre-treatment imaging is negative.

With pseudonymisation (`pseudonymised=True`) the sheet stays on the identified side — Subject is
the NHS number, `{MOD} ID`/`{MOD} UID` the PACS's accession-based label and StudyInstanceUID —
and gains the link to the store: `Subject Pseudonym` after Subject, and per slot
`{MOD} Pseudonymised Session i` and `{MOD} Pseudonymised UID i` (the store's session label and
study UID) before Scans. Without it nothing changes, so the EDW's layout stays as it was.

Scheduled-date placeholders (2099-01-01: booked, never performed) never become sessions or
failure slots: the SOP's script drops them, and a difference of 28,000 days is noise to the EDW.
`Notes` says, for a subject with nothing to show, why (never harvested, deceased, only excluded
studies …), because the EDW cannot otherwise tell "no imaging" from "never queried"; it is
`null` for every subject with at least one session or failure.
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
#: What the store calls the session (pseudonyms when pseudonymised), read only for a pseudonymised sheet.
STORE_COLUMNS: tuple[str, ...] = ("store_subject", "store_session", "store_uid")
PSEUDONYM = "Subject Pseudonym"
FAILURE_COLUMNS: tuple[str, ...] = ("subject", "date", "modality", "accession", "uid", "description", "status")


def sheet_modality(modality: str | None) -> str:
    """The session-type name used in column headers (PT → PET, as XNAT names PET sessions)."""
    m = (modality or "OT").strip().upper()
    return _ALIASES.get(m, m)


def failure_modality(row: dict) -> str:
    """The session type of a failure-history row (backslash-joined modalities), or `unknown`."""
    from ingest.records import primary_modality

    mods = [m for m in (row.get("modalities") or "").split("\\") if m]
    return sheet_modality(primary_modality(mods)) if mods else "unknown"


NOTES = "Notes"
DEFAULT_NOTE = "no sessions or failures on record"


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
_MOD_FIELDS_PSEUDO = _MOD_FIELDS[:4] + (
    ("Pseudonymised Session", "store_session", "text"),
    ("Pseudonymised UID", "store_uid", "text"),
) + _MOD_FIELDS[4:]
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
    """The pivoted sheet as typed arrays; `rendered()` applies the SOP markers.

    `subjects` and `reference_dates` (datetime64, NaT = none) have one entry per row; `grids`
    holds, per block key and field, a (subjects × slots) array: datetime64 dates, float day
    differences (NaN = none) or object text; `used` says how many slots each subject fills.
    """

    subjects: np.ndarray
    reference_dates: np.ndarray
    grids: dict[str, dict[str, np.ndarray]]
    used: dict[str, np.ndarray]
    blocks: list[Block]
    slots: dict[str, int]
    counts: dict[str, int] = field(default_factory=dict)
    notes: np.ndarray | None = None  # object: a note per subject, None = no note
    pseudonyms: np.ndarray | None = None  # object: the store's subject label(s); None = not pseudonymised

    @property
    def head(self) -> list[str]:
        return ["Subject"] + ([PSEUDONYM] if self.pseudonyms is not None else []) + ["Reference Date"]

    @property
    def columns(self) -> list[str]:
        return self.head + [
            b.header(label, i) for b in self.blocks for i in range(1, self.slots[b.key] + 1) for label, _, _ in b.fields
        ] + [NOTES]

    @property
    def frame(self) -> pd.DataFrame:
        """The typed arrays as a DataFrame (for inspection; the outputs use `rendered()`)."""
        cols: dict[str, np.ndarray] = {"Subject": self.subjects}
        if self.pseudonyms is not None:
            cols[PSEUDONYM] = self.pseudonyms
        cols["Reference Date"] = self.reference_dates
        for b in self.blocks:
            for i in range(self.slots[b.key]):
                for label, column, _ in b.fields:
                    cols[b.header(label, i + 1)] = self.grids[b.key][column][:, i]
        cols[NOTES] = self._notes()
        return pd.DataFrame(cols)

    def _notes(self) -> np.ndarray:
        n = len(self.subjects)
        return self.notes if self.notes is not None else np.full(n, None, dtype=object)

    def rendered(self) -> pd.DataFrame:
        """Object columns: `datetime.date`, int, str or the null / not applicable markers.

        Works a whole block at a time (subjects × slots × fields), then lays the slots out side
        by side, so the cost does not grow with the number of columns.
        """
        n = len(self.subjects)
        cols = self.columns
        # One object array for the whole sheet, filled a block at a time; handed to pandas
        # without a copy and without per-column type inference (which would copy it again).
        out = np.empty((n, len(cols)), dtype=object)
        out[:, 0] = self.subjects
        j = 1
        if self.pseudonyms is not None:
            names = self.pseudonyms.copy()
            names[pd.isna(names)] = NULL
            out[:, j] = names
            j += 1
        out[:, j] = _dates(self.reference_dates, NOT_APPLICABLE)
        j += 1
        for b in self.blocks:
            k, nf = self.slots[b.key], len(b.fields)
            cube = np.empty((n, k, nf), dtype=object)
            for f, (_, column, kind) in enumerate(b.fields):
                g = self.grids[b.key][column]
                if kind == "date":
                    cube[:, :, f] = _dates(g, NULL)
                elif kind == "diff":
                    cube[:, :, f] = _ints(g, NOT_APPLICABLE)
                    cube[:, :, f][np.isnat(self.grids[b.key]["date"])] = NULL  # no date, no difference
                else:
                    vals = g.copy()
                    vals[pd.isna(vals)] = NULL
                    cube[:, :, f] = vals
            absent = self.used[b.key][:, None] <= np.arange(k)[None, :]
            cube[absent] = NULL
            out[:, j:j + k * nf] = cube.reshape(n, k * nf)
            j += k * nf
            del cube
        notes = self._notes().copy()
        notes[pd.isna(notes)] = NULL
        out[:, j] = notes
        return pd.DataFrame(out, columns=cols, dtype=object, copy=False)


def _dates(arr: np.ndarray, marker: str) -> np.ndarray:
    out = np.full(arr.shape, marker, dtype=object)
    ok = ~np.isnat(arr)
    if ok.any():
        out[ok] = arr[ok].astype("datetime64[D]").astype(object)
    return out


def _ints(arr: np.ndarray, marker: str) -> np.ndarray:
    out = np.full(arr.shape, marker, dtype=object)
    ok = ~np.isnan(arr)
    if ok.any():
        out[ok] = arr[ok].astype(np.int64).astype(object)
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
    placeholder_dates: Sequence[dt.date] = (),
    notes: dict[str, str] | None = None,
    pseudonymised: bool = False,
) -> MasterSheet:
    """Pivot the long session table (LONG_COLUMNS) and failures (FAILURE_COLUMNS) to the wide sheet.

    `subjects` adds rows for cohort members with nothing stored yet; every subject in the inputs
    gets a row anyway. `modalities` fixes the block order (default: SOP order, then others).
    Sessions and failures dated on one of `placeholder_dates` are left out (counted). `notes`
    gives the reason for subjects that end up with nothing to show (default DEFAULT_NOTE).
    `pseudonymised` adds the store's names (STORE_COLUMNS of `sessions`) beside the identified ones.
    """
    own = con is None
    con = con or duckdb.connect()
    try:
        sheet = _build(con, sessions, reference_dates, failures, slots_per_modality, subjects, modalities,
                       placeholder_dates, pseudonymised)
    finally:
        if own:
            con.close()
    if pseudonymised:
        sheet.pseudonyms = _pseudonyms(sessions, sheet.subjects)
    empty = sum(sheet.used.values()) == 0 if sheet.used else np.ones(len(sheet.subjects), dtype=bool)
    given = notes or {}
    sheet.notes = np.array([given.get(s, DEFAULT_NOTE) if e else None for s, e in zip(sheet.subjects, empty)],
                           dtype=object)
    sheet.counts["subjects_with_nothing_to_show"] = int(np.sum(empty))
    return sheet


def _pseudonyms(sessions: pd.DataFrame, subjects: np.ndarray) -> np.ndarray:
    """Per subject, the store's subject label(s) of its sessions ("; " between several); None without."""
    if "store_subject" not in sessions.columns or sessions.empty:
        return np.full(len(subjects), None, dtype=object)
    pairs = sessions[["subject", "store_subject"]].dropna().astype(str).drop_duplicates()
    names = pairs.groupby("subject")["store_subject"].agg(lambda v: "; ".join(sorted(v)))
    return np.array([names.get(str(s)) for s in subjects], dtype=object)


def _build(con, sessions, reference_dates, failures, slots_min, subjects, modalities,
           placeholder_dates=(), pseudonymised: bool = False) -> MasterSheet:
    sess = _view(sessions, LONG_COLUMNS + (STORE_COLUMNS if pseudonymised else ()))
    fails = _view(failures if failures is not None else pd.DataFrame(columns=list(FAILURE_COLUMNS)), FAILURE_COLUMNS)
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
    # Placeholder dates are literals built from date objects (isoformat), never from raw text.
    ph = sorted({d for d in placeholder_dates if d is not None})
    ph_list = ", ".join(f"DATE '{d.isoformat()}'" for d in ph)
    placeholder_filter = f"(u.date IS NULL OR u.date NOT IN ({ph_list}))" if ph else "TRUE"
    n_placeholder = sum(
        int(con.execute(f"SELECT count(*) FROM {t} WHERE CAST(date AS DATE) IN ({ph_list})").fetchone()[0])
        for t in ("long_in", "fail_in")) if ph else 0
    # Both inputs go into one numbered table; failures are one more block keyed FAILURE_KEY.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE numbered AS
        WITH u AS (
            SELECT CAST(subject AS VARCHAR) AS subject,
                   CASE upper(trim(CAST(modality AS VARCHAR))) WHEN 'PT' THEN 'PET' WHEN 'MRI' THEN 'MR'
                        WHEN '' THEN 'OT' ELSE coalesce(upper(trim(CAST(modality AS VARCHAR))), 'OT') END AS block,
                   CAST(date AS DATE) AS date, CAST(session_id AS VARCHAR) AS session_id,
                   CAST(uid AS VARCHAR) AS uid, NULL::VARCHAR AS accession, __src
            FROM long_in
            UNION ALL
            SELECT CAST(subject AS VARCHAR), '{FAILURE_KEY}', CAST(date AS DATE), NULL, CAST(uid AS VARCHAR),
                   CAST(accession AS VARCHAR), __src
            FROM fail_in
        )
        SELECT u.subject, u.block, u.date, u.__src, u.date - r.ref_date AS diff,
               row_number() OVER (PARTITION BY u.subject, u.block
                                  ORDER BY u.date NULLS LAST, u.uid NULLS LAST, u.session_id NULLS LAST,
                                           u.accession NULLS LAST) AS slot
        FROM u LEFT JOIN ref r USING (subject)
        WHERE u.subject IS NOT NULL AND u.subject <> '' AND {placeholder_filter}""")
    most = dict(con.execute("SELECT block, max(slot) FROM numbered GROUP BY block").fetchall())
    mods = list(modalities) if modalities is not None else order_modalities(k for k in most if k != FAILURE_KEY)
    for k in most:
        if k != FAILURE_KEY and k not in mods:
            mods.append(k)
    fields = _MOD_FIELDS_PSEUDO if pseudonymised else _MOD_FIELDS
    blocks = [Block(m, fields, m) for m in mods] + [Block("Failure", _FAIL_FIELDS, FAILURE_KEY)]
    slots = {b.key: max(slots_min, int(most.get(b.key, 0))) for b in blocks}

    # Pivot: DuckDB gives every session its row (subject index) and column (block, slot);
    # numpy then scatters each field into place in one pass, instead of hundreds of
    # conditional aggregates (which DuckDB plans and runs column by column).
    con.register("blocks_in", pd.DataFrame({"block": [b.key for b in blocks], "bidx": range(len(blocks))}))
    con.execute("""
        CREATE OR REPLACE TEMP TABLE subj AS
        SELECT subject, CAST(row_number() OVER (ORDER BY subject) - 1 AS BIGINT) AS i FROM (
            SELECT subject FROM numbered
            UNION SELECT subject FROM ref
            UNION SELECT CAST(subject AS VARCHAR) FROM extra_in WHERE subject IS NOT NULL AND subject <> '')""")
    head = con.execute("""
        SELECT s.subject AS "Subject", r.ref_date AS "Reference Date"
        FROM subj s LEFT JOIN ref r USING (subject) ORDER BY s.i""").df()
    cells = con.execute("""
        SELECT b.bidx, s.i, n.slot, n.date, n.diff, n.__src
        FROM numbered n JOIN subj s USING (subject) JOIN blocks_in b USING (block)
        ORDER BY b.bidx""").df()
    con.unregister("blocks_in")
    n_subj = len(head)
    bidx = cells["bidx"].to_numpy()
    bounds = np.searchsorted(bidx, np.arange(len(blocks) + 1))
    grids_all: dict[str, dict[str, np.ndarray]] = {}
    used: dict[str, np.ndarray] = {}
    ref_dates = head["Reference Date"].to_numpy(dtype="datetime64[ns]")
    text_cache: dict[tuple[int, str], np.ndarray] = {}

    def text_column(frame: pd.DataFrame, name: str) -> np.ndarray:
        key = (id(frame), name)
        if key not in text_cache:
            text_cache[key] = frame[name].to_numpy(dtype=object)
        return text_cache[key]

    for k, b in enumerate(blocks):
        part = cells.iloc[bounds[k]:bounds[k + 1]]
        # Text fields come straight from the caller's frame by row number: no string copies.
        src_frame = fails if b.key == FAILURE_KEY else sess
        src = part["__src"].to_numpy(dtype=np.int64)
        rows = part["i"].to_numpy(dtype=np.int64)
        slot = part["slot"].to_numpy(dtype=np.int64) - 1
        grids = {}
        for _, column, kind in b.fields:
            shape = (n_subj, slots[b.key])
            if kind == "date":
                grid = np.full(shape, np.datetime64("NaT"), dtype="datetime64[ns]")
                vals = part[column].to_numpy(dtype="datetime64[ns]")
            elif kind == "diff":
                grid = np.full(shape, np.nan)
                vals = part[column].to_numpy(dtype=float, na_value=np.nan)
            else:
                grid = np.full(shape, None, dtype=object)
                vals = text_column(src_frame, _SOURCE_COLUMN.get(column, column))[src]
            grid[rows, slot] = vals
            grids[column] = grid
        used[b.key] = np.bincount(rows, minlength=n_subj).astype(np.int64)
        grids_all[b.key] = grids
    counts = {
        "subjects": n_subj,
        "sessions": int(len(sess)),
        "failures": int(len(fails)),
        "subjects_with_reference_date": int((~np.isnat(ref_dates)).sum()),
        "placeholder_sessions_left_out": n_placeholder,
    }
    for name in ("long_in", "fail_in", "ref_in", "extra_in"):
        con.unregister(name)
    return MasterSheet(subjects=head["Subject"].to_numpy(dtype=object), reference_dates=ref_dates,
                       grids=grids_all, used=used, blocks=blocks, slots=slots, counts=counts)


_SOURCE_COLUMN = {"fmodality": "modality"}


def _view(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """The named columns (missing ones empty) plus a row number, without copying the data."""
    n = len(frame)
    data = {c: (frame[c] if c in frame.columns else pd.Series([None] * n, index=frame.index, dtype=object))
            for c in columns}
    data["__src"] = np.arange(n, dtype=np.int64)
    out = pd.DataFrame(data, copy=False)
    out.index = pd.RangeIndex(n)
    return out
