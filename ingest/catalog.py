"""The DuckDB catalog: the single record of what rtlake has seen, decided, stored and failed.

Principles: every study ever seen is a row with its decision and why; every failure is a row
with a reason and the run that saw it; nothing is deleted, only superseded. Schema changes
are numbered migrations so an old catalog upgrades in place.

Tables (see SCHEMA below for columns):
  runs            one row per update run (start, end, status, counts as JSON)
  patients        cohort members with hospital ID, NHS number, subject label and harvest cursor
  studies_seen    every study a source reported, with its decision (include/exclude/review/skip_*)
                  and ingest state (new/ingested/failed/skipped)
  sessions        one row per study placed in a store (label is fixed before any file is written,
                  so a resumed run reuses it)
  scans           series within a session
  files           one row per stored instance (SOPInstanceUID is unique: no duplicates)
  failures        every problem, keyed so a repeat of the same problem is not a new row
  failure_history failures imported from XNAT/CSC JSON files (reporting fills it)
  review_decisions clinician decisions imported from the review workbook
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb

from . import failpoints

MIGRATIONS: list[str] = [
    # 1: the foundation schema
    """
    CREATE TABLE IF NOT EXISTS runs (
        run_id VARCHAR PRIMARY KEY,
        started_at TIMESTAMP NOT NULL,
        finished_at TIMESTAMP,
        status VARCHAR NOT NULL,          -- running | done | partial | failed | interrupted
        source VARCHAR,
        store VARCHAR,
        counts VARCHAR                    -- JSON object of stage counts
    );
    CREATE TABLE IF NOT EXISTS patients (
        hospital_id VARCHAR PRIMARY KEY,
        nhs_number VARCHAR,               -- 10 digits as text, NULL when none
        subject VARCHAR NOT NULL,         -- NHS number or NN_<hospital id>
        deceased BOOLEAN NOT NULL DEFAULT FALSE,
        first_seen_run VARCHAR,
        harvested_until DATE,             -- harvest cursor: date of the last complete query
        harvested_run VARCHAR
    );
    CREATE TABLE IF NOT EXISTS studies_seen (
        study_uid VARCHAR PRIMARY KEY,
        hospital_id VARCHAR NOT NULL,
        accession VARCHAR,
        study_id VARCHAR,
        study_date DATE,
        description VARCHAR,
        description_norm VARCHAR,
        modalities VARCHAR,               -- backslash-joined, as DICOM does
        n_instances INTEGER,
        source VARCHAR,
        decision VARCHAR NOT NULL,        -- include | exclude | review | skip_verification | skip_deceased
        decision_reason VARCHAR,
        state VARCHAR NOT NULL,           -- new | ingested | failed | skipped
        first_seen_run VARCHAR,
        updated_run VARCHAR
    );
    CREATE TABLE IF NOT EXISTS sessions (
        study_uid VARCHAR PRIMARY KEY,
        project VARCHAR NOT NULL,
        subject VARCHAR NOT NULL,
        label VARCHAR NOT NULL,
        hospital_id VARCHAR,
        accession VARCHAR,
        study_date DATE,
        modality VARCHAR,
        store VARCHAR,
        location VARCHAR,
        state VARCHAR NOT NULL,           -- planned | stored
        n_scans INTEGER,
        n_files INTEGER,
        planned_run VARCHAR,
        stored_run VARCHAR,
        UNIQUE (project, subject, label)
    );
    CREATE TABLE IF NOT EXISTS scans (
        study_uid VARCHAR NOT NULL,
        series_uid VARCHAR NOT NULL,
        scan_id VARCHAR,
        modality VARCHAR,
        description VARCHAR,
        n_files INTEGER,
        PRIMARY KEY (study_uid, series_uid)
    );
    CREATE TABLE IF NOT EXISTS files (
        sop_uid VARCHAR PRIMARY KEY,
        study_uid VARCHAR NOT NULL,
        series_uid VARCHAR,
        path VARCHAR NOT NULL,
        size BIGINT
    );
    CREATE TABLE IF NOT EXISTS failures (
        failure_id VARCHAR PRIMARY KEY,   -- hash of (stage, target, reason): repeats are not new rows
        run_id VARCHAR NOT NULL,          -- the run that first saw it
        stage VARCHAR NOT NULL,           -- index | harvest | select | retrieve | store | report | rt | pseudo
        target VARCHAR NOT NULL,          -- study UID, accession, file path or row reference
        study_uid VARCHAR,
        reason VARCHAR NOT NULL,
        error_type VARCHAR,
        seen_at TIMESTAMP NOT NULL,
        resolved_run VARCHAR              -- set when a later run succeeds on the same target
    );
    CREATE TABLE IF NOT EXISTS review_decisions (
        description_norm VARCHAR NOT NULL,
        description VARCHAR,
        decision VARCHAR NOT NULL,        -- include | exclude
        decided_by VARCHAR,
        decided_at TIMESTAMP NOT NULL,
        source_file VARCHAR
    );
    CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
    """,
    # 2: failure history (reporting): one row per failed study, keyed by StudyInstanceUID (else
    #    accession), never deleted; every sighting in an imported file is appended to
    #    failure_sightings; failure_imports remembers file contents already read (re-import adds nothing).
    """
    CREATE TABLE IF NOT EXISTS failure_history (
        record_key VARCHAR PRIMARY KEY,   -- 'uid:<StudyInstanceUID>' or 'acc:<accession>'
        study_uid VARCHAR,
        accession VARCHAR,
        study_id VARCHAR,
        hospital_id VARCHAR,
        subject VARCHAR,                  -- NHS number or NN_<hospital id>
        study_date DATE,
        description VARCHAR,
        modalities VARCHAR,               -- backslash-joined
        status VARCHAR NOT NULL,          -- derived from the record (StudyID / StudyInstanceUID present)
        category VARCHAR,                 -- investigation category set by the admin
        category_note VARCHAR,
        placeholder BOOLEAN NOT NULL DEFAULT FALSE,  -- scheduled-date placeholder (2099-01-01)
        origin VARCHAR,                   -- csc | dqr
        source_file VARCHAR,
        source_line INTEGER,
        first_seen_run VARCHAR NOT NULL,
        last_seen_run VARCHAR NOT NULL,
        first_seen_at TIMESTAMP NOT NULL,
        last_seen_at TIMESTAMP NOT NULL
    );
    CREATE TABLE IF NOT EXISTS failure_sightings (
        record_key VARCHAR NOT NULL,
        import_id VARCHAR NOT NULL,       -- sha256 of the file content
        run_id VARCHAR NOT NULL,
        source_file VARCHAR,
        source_line INTEGER,
        PRIMARY KEY (record_key, import_id, source_line)
    );
    CREATE TABLE IF NOT EXISTS failure_imports (
        import_id VARCHAR PRIMARY KEY,
        path VARCHAR NOT NULL,
        run_id VARCHAR NOT NULL,
        imported_at TIMESTAMP NOT NULL,
        origin VARCHAR,
        n_records INTEGER,
        n_new INTEGER,
        n_problems INTEGER
    );
    """,
    # 3 (issue 12): change detection that does not follow StudyDate, failures that name their target and
    #    clear when fixed, cohort relabels, run outcomes with a reason.
    """
    ALTER TABLE patients ADD COLUMN needs_harvest BOOLEAN DEFAULT TRUE;   -- list in full on the next run
    ALTER TABLE failures ADD COLUMN last_seen_run VARCHAR;               -- the last run that met it
    ALTER TABLE failures ADD COLUMN hospital_id VARCHAR;                 -- identified side only, never logged
    ALTER TABLE runs ADD COLUMN message VARCHAR;                         -- why a run ended failed/interrupted
    CREATE TABLE IF NOT EXISTS source_cursors (
        source VARCHAR PRIMARY KEY,       -- [source].name
        kind VARCHAR NOT NULL,            -- e.g. orthanc-changes
        cursor VARCHAR NOT NULL,          -- e.g. the last Orthanc change sequence number read
        run_id VARCHAR NOT NULL,
        updated_at TIMESTAMP NOT NULL
    );
    CREATE TABLE IF NOT EXISTS relabels (
        run_id VARCHAR NOT NULL,
        hospital_id VARCHAR NOT NULL,
        old_subject VARCHAR NOT NULL,
        new_subject VARCHAR NOT NULL,
        study_uid VARCHAR,                -- NULL for the patient row itself
        label VARCHAR,
        status VARCHAR NOT NULL,          -- moved | planned | manual | failed
        detail VARCHAR,
        relabelled_at TIMESTAMP NOT NULL
    );
    """,
    # 4 (issue 13): failure rates for imported lists: the run whose selection a list answers, and/or
    #    how many studies the batch sent (JSON {"CT": 40, "*": 120}; "*" = all modalities together).
    """
    ALTER TABLE failure_imports ADD COLUMN batch_run VARCHAR;
    ALTER TABLE failure_imports ADD COLUMN attempted VARCHAR;
    """,
    # (issue 19): conflicting duplicates, two different files under one SOPInstanceUID (ingest/conflicts.py).
    """
    CREATE TABLE IF NOT EXISTS conflicts (
        conflict_id VARCHAR PRIMARY KEY,  -- hash of (sop, resolution, both sources and digests): a repeat is not a new row
        sop_uid VARCHAR NOT NULL,
        study_uid VARCHAR,                -- the study being stored when the conflict was found
        resolution VARCHAR NOT NULL,      -- kept_stored (a is stored, b was not) | neither_stored (both held back)
        source_a VARCHAR NOT NULL,        -- file path, store location or PACS instance
        study_uid_a VARCHAR,
        sha256_a VARCHAR,
        source_b VARCHAR NOT NULL,
        study_uid_b VARCHAR,
        sha256_b VARCHAR,
        first_run VARCHAR NOT NULL,
        last_run VARCHAR NOT NULL,
        first_seen_at TIMESTAMP NOT NULL,
        resolved_run VARCHAR              -- neither_stored: the run that stored one version
    );
    """,
    # (issue 15): what the store calls each session. With pseudonymisation these differ from the
    #    identified subject/label/study_uid the catalog is keyed by; they are the only link from the master
    #    sheet to the lake. NULL (rows stored before this column existed): the store uses the catalog's names.
    """
    ALTER TABLE sessions ADD COLUMN store_subject VARCHAR;
    ALTER TABLE sessions ADD COLUMN store_label VARCHAR;
    ALTER TABLE sessions ADD COLUMN store_study_uid VARCHAR;
    ALTER TABLE sessions ADD COLUMN store_study_date DATE;
    ALTER TABLE sessions ADD COLUMN store_description VARCHAR;
    """,
]


def _now() -> dt.datetime:
    return dt.datetime.now().replace(microsecond=0)


class Catalog:
    """A thin owner of the DuckDB connection with the few writes every stage needs.

    DuckDB allows one writing process per file; the update run holds a lock file beside it,
    so two runs never fight over it (see `ingest.lock`).
    """

    def __init__(self, path: Path | str, read_only: bool = False) -> None:
        self.path = Path(path)
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(str(self.path), read_only=read_only)
        self._lock = threading.RLock()
        if not read_only:
            self.migrate()

    # -- schema -------------------------------------------------------------
    def migrate(self) -> None:
        self.con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self.con.execute("SELECT max(version) FROM schema_version").fetchone()
        current = row[0] or 0
        for i, sql in enumerate(MIGRATIONS[current:], start=current + 1):
            with self.transaction():
                self.con.execute(sql)
                self.con.execute("INSERT INTO schema_version VALUES (?)", [i])

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._lock:
            self.con.execute("BEGIN TRANSACTION")
            try:
                yield self.con
            except BaseException:
                self.con.execute("ROLLBACK")
                raise
            else:
                failpoints.hit("catalog.commit")
                self.con.execute("COMMIT")

    def execute(self, sql: str, params: Any = None) -> duckdb.DuckDBPyConnection:
        with self._lock:
            return self.con.execute(sql, params) if params is not None else self.con.execute(sql)

    def close(self) -> None:
        self.con.close()

    # -- runs ---------------------------------------------------------------
    def start_run(self, source: str, store: str) -> str:
        run_id = _now().strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.execute(
            "INSERT INTO runs (run_id, started_at, status, source, store) VALUES (?, ?, 'running', ?, ?)",
            [run_id, _now(), source, store],
        )
        return run_id

    def finish_run(self, run_id: str, status: str, counts: dict[str, int], message: str | None = None) -> None:
        """Close a run with its outcome: done | partial | failed | interrupted."""
        self.execute(
            "UPDATE runs SET finished_at = ?, status = ?, counts = ?, message = ? WHERE run_id = ?",
            [_now(), status, json.dumps(counts, sort_keys=True), message, run_id],
        )

    def last_finished_run(self, statuses: tuple[str, ...] = ("done", "partial")) -> dict | None:
        """The latest run that got its work done (a `partial` run did: only some studies failed)."""
        marks = ", ".join("?" for _ in statuses)
        rows = self.query_dicts(
            f"SELECT * FROM runs WHERE status IN ({marks}) ORDER BY started_at DESC, run_id DESC LIMIT 1",
            list(statuses),
        )
        return rows[0] if rows else None

    # -- failures -----------------------------------------------------------
    def record_failure(
        self,
        run_id: str,
        stage: str,
        target: str,
        reason: str,
        study_uid: str | None = None,
        error_type: str | None = None,
        hospital_id: str | None = None,
    ) -> bool:
        """Record a problem once; returns False when the same problem was already on file.

        A repeat is not a new row, but it is stamped with this run (`last_seen_run`), so "this run's
        failures" and "open failures" can both be listed; a problem that comes back after it was
        resolved is re-opened.
        """
        fid = hashlib.sha1(f"{stage}\x00{target}\x00{reason}".encode()).hexdigest()[:20]
        with self._lock:
            exists = self.con.execute(
                "SELECT resolved_run FROM failures WHERE failure_id = ?", [fid]
            ).fetchone()
            if exists is not None:
                self.con.execute("UPDATE failures SET resolved_run = NULL, last_seen_run = ?, seen_at = ? "
                                 "WHERE failure_id = ?", [run_id, _now(), fid])
                return False
            self.con.execute(
                "INSERT INTO failures (failure_id, run_id, stage, target, study_uid, reason, error_type, seen_at, "
                "resolved_run, last_seen_run, hospital_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)",
                [fid, run_id, stage, target, study_uid, reason, error_type, _now(), run_id, hospital_id],
            )
            return True

    def resolve_failures(self, run_id: str, study_uid: str, stages: tuple[str, ...] | None = None) -> None:
        """Close the open failures of a study that a later step handled (optionally only some stages)."""
        sql = "UPDATE failures SET resolved_run = ? WHERE study_uid = ? AND resolved_run IS NULL"
        params: list[Any] = [run_id, study_uid]
        if stages:
            sql += f" AND stage IN ({', '.join('?' for _ in stages)})"
            params += list(stages)
        self.execute(sql, params)

    def resolve_target(self, run_id: str, stage: str, target: str) -> None:
        """Close the open failures of one stage on one target (e.g. a patient query that now succeeds)."""
        self.execute("UPDATE failures SET resolved_run = ? WHERE stage = ? AND target = ? AND resolved_run IS NULL",
                     [run_id, stage, target])

    def resolve_missing(self, run_id: str, stage: str, still_open: set[str]) -> None:
        """Close the open failures of a stage whose target is no longer reported (a file fixed or removed)."""
        with self._lock:
            rows = self.con.execute("SELECT failure_id, target FROM failures WHERE stage = ? AND resolved_run IS NULL",
                                    [stage]).fetchall()
            for fid, target in rows:
                if target not in still_open:
                    self.con.execute("UPDATE failures SET resolved_run = ? WHERE failure_id = ?", [run_id, fid])

    # -- cursors --------------------------------------------------------------
    def get_cursor(self, source: str, kind: str) -> str | None:
        row = self.execute("SELECT cursor FROM source_cursors WHERE source = ? AND kind = ?", [source, kind]).fetchone()
        return row[0] if row else None

    def set_cursor(self, source: str, kind: str, cursor: str, run_id: str) -> None:
        self.execute("INSERT OR REPLACE INTO source_cursors VALUES (?, ?, ?, ?, ?)",
                     [source, kind, cursor, run_id, _now()])

    # -- helpers --------------------------------------------------------------
    def query_dicts(self, sql: str, params: Any = None) -> list[dict]:
        with self._lock:
            cur = self.con.execute(sql, params) if params is not None else self.con.execute(sql)
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r)) for r in cur.fetchall()]

    def table_snapshot(self, table: str, exclude: tuple[str, ...] = ()) -> list[tuple]:
        """Sorted rows of a table without the named columns (for idempotence checks)."""
        with self._lock:
            cols = [r[0] for r in self.con.execute(f"DESCRIBE {table}").fetchall() if r[0] not in exclude]
            collist = ", ".join(cols)
            return self.con.execute(f"SELECT {collist} FROM {table} ORDER BY ALL").fetchall()
