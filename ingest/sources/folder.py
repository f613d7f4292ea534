"""A folder of DICOM files treated as a PACS (the embedded default, and the demo's PACS).

Headers are indexed into a small DuckDB file keyed by path, size and mtime, so a re-run only
reads files that are new or changed. Unreadable files are kept in the index with the reason,
reported once per run through `failures()`, and never stop the indexing.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pandas as pd
import pydicom

from ..conflicts import same_instance, sha256
from ..records import Conflict, RetrievedStudy, StudyRecord
from ..validate import show, validate_file
from .base import Source

log = logging.getLogger(__name__)

_TAGS = [
    "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "AccessionNumber",
    "StudyDate", "StudyDescription", "Modality", "StudyID", "SpecificCharacterSet",
]

_COLUMNS = ["path", "size", "mtime_ns", "patient_id", "study_uid", "series_uid", "sop_uid", "accession",
            "study_date", "description", "modality", "study_id", "error"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    path VARCHAR PRIMARY KEY, size BIGINT, mtime_ns BIGINT,
    patient_id VARCHAR, study_uid VARCHAR, series_uid VARCHAR, sop_uid VARCHAR,
    accession VARCHAR, study_date DATE, description VARCHAR, modality VARCHAR, study_id VARCHAR,
    error VARCHAR
);
CREATE TABLE IF NOT EXISTS index_version (version INTEGER NOT NULL);
"""
#: Bump when read_header accepts or refuses differently: every file is then read again once.
#: 2 (issue 19): files are validated whole (ingest.validate), not just parsed.
INDEX_VERSION = 2


def parse_da(value: object) -> dt.date | None:
    """DICOM DA (YYYYMMDD, tolerating the old YYYY.MM.DD form); None when absent or invalid."""
    text = str(value or "").strip().replace(".", "")
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def read_header(path: Path) -> dict:
    """The study-level tags of one file, once it has passed every check of ingest.validate.

    Raises:
        ValueError: not a whole, well-formed DICOM instance; the message names the check that failed.
    """
    try:
        verdict = validate_file(path)
    except OSError as exc:
        raise ValueError(f"unreadable file: {exc.strerror or exc}") from None
    if not verdict.ok:
        raise ValueError(verdict.reason)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
    except Exception as exc:  # noqa: BLE001 - validated, so this would be a value pydicom cannot decode
        raise ValueError(f"unreadable DICOM: {type(exc).__name__}: {exc}") from None
    return {
        "patient_id": str(ds.get("PatientID", "")).strip(),
        "study_uid": verdict.study_uid,
        "series_uid": verdict.series_uid,
        "sop_uid": verdict.sop_uid,
        "accession": str(ds.get("AccessionNumber", "") or "").strip(),
        "study_date": parse_da(ds.get("StudyDate")),
        "description": str(ds.get("StudyDescription", "") or "").strip(),
        "modality": str(ds.get("Modality", "") or "").strip().upper(),
        "study_id": str(ds.get("StudyID", "") or "").strip(),
    }


def _storable_path(full: str) -> str | None:
    """The path as text the catalog can hold, or None when the name is not valid UTF-8 (the OS
    hands such names over with lone surrogates, which DuckDB refuses)."""
    try:
        full.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return full


class FolderSource(Source):
    def __init__(self, root: Path, index_path: Path, name: str = "folder") -> None:
        self.root = Path(root)
        self.name = name
        index_path.parent.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(str(index_path))
        self.con.execute(_SCHEMA)
        if (self.con.execute("SELECT max(version) FROM index_version").fetchone()[0] or 0) != INDEX_VERSION:
            # rows read under older rules may hold files those rules let through: read everything again
            self.con.execute("DELETE FROM instances")
            self.con.execute("DELETE FROM index_version")
            self.con.execute("INSERT INTO index_version VALUES (?)", [INDEX_VERSION])
        self._indexed = False
        # The run fetches studies from worker threads; one DuckDB connection serves one call at a time.
        self._lock = threading.RLock()

    # -- indexing -------------------------------------------------------------
    def refresh_index(self, progress=None) -> tuple[int, int]:
        """Bring the index up to date with the folder; returns (files read, files removed)."""
        if not self.root.is_dir():
            from ..errors import SourceUnavailable

            raise SourceUnavailable(f"folder PACS {self.root} does not exist")
        known = {p: (s, m) for p, s, m in self.con.execute("SELECT path, size, mtime_ns FROM instances").fetchall()}
        seen: set[str] = set()
        todo: list[tuple[str, int, int]] = []
        bad_names: list[tuple[str, int, int]] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            for fn in sorted(filenames):
                if fn.startswith(".") or fn.upper() == "DICOMDIR":
                    continue
                full = os.path.join(dirpath, fn)
                st = os.stat(full)
                if _storable_path(full) is None:
                    full = os.fsencode(full).decode("utf-8", "backslashreplace")
                    seen.add(full)
                    if known.get(full) != (st.st_size, st.st_mtime_ns):
                        bad_names.append((full, st.st_size, st.st_mtime_ns))
                    continue
                seen.add(full)
                if known.get(full) != (st.st_size, st.st_mtime_ns):
                    todo.append((full, st.st_size, st.st_mtime_ns))
        gone = [p for p in known if p not in seen]
        rows = []
        task = progress.add_task("index PACS folder", total=len(todo)) if progress and todo else None
        for full, size, mtime in todo:
            try:
                h = read_header(Path(full))
                rows.append((full, size, mtime, h["patient_id"], h["study_uid"], h["series_uid"], h["sop_uid"],
                             h["accession"], h["study_date"], h["description"], h["modality"], h["study_id"], None))
            except ValueError as exc:  # reported once, by the run, through failures()
                rows.append((full, size, mtime, None, None, None, None, None, None, None, None, None, str(exc)))
            if task is not None:
                progress.advance(task)
        rows += [(full, size, mtime, None, None, None, None, None, None, None, None, None,
                  "file name is not valid UTF-8 (rename the file)") for full, size, mtime in bad_names]
        with self._lock:
            self.con.execute("BEGIN")
            # Bulk through a DataFrame: DuckDB's executemany goes row by row and is ~100x slower.
            if gone:
                gone_df = pd.DataFrame({"path": gone})  # noqa: F841 - read by DuckDB by name
                self.con.execute("DELETE FROM instances WHERE path IN (SELECT path FROM gone_df)")
            if rows:
                new_df = pd.DataFrame(rows, columns=_COLUMNS)  # noqa: F841
                self.con.execute("INSERT OR REPLACE INTO instances SELECT * FROM new_df")
            self.con.execute("COMMIT")
        self._indexed = True
        return len(todo), len(gone)

    def _ensure_index(self) -> None:
        with self._lock:
            if not self._indexed:
                self.refresh_index()

    def _rows(self, sql: str, params: list) -> list[tuple]:
        with self._lock:
            return self.con.execute(sql, params).fetchall()

    def failures(self) -> list[tuple[str, str]]:
        self._ensure_index()
        return self.con.execute("SELECT path, error FROM instances WHERE error IS NOT NULL ORDER BY path").fetchall()

    def patients(self) -> list[str]:
        self._ensure_index()
        return [r[0] for r in self.con.execute(
            "SELECT DISTINCT patient_id FROM instances WHERE error IS NULL ORDER BY 1").fetchall()]

    # -- Source ---------------------------------------------------------------
    def _studies(self, where: str, params: list) -> Iterator[StudyRecord]:
        self._ensure_index()
        rows = self._rows(
            f"""
            SELECT study_uid, any_value(patient_id), max(accession), max(study_date), max(description),
                   list(DISTINCT modality ORDER BY modality), count(*), max(study_id)
            FROM instances WHERE error IS NULL AND {where}
            GROUP BY study_uid ORDER BY max(study_date) NULLS FIRST, study_uid
            """,
            params,
        )
        for uid, pid, acc, date, desc, mods, n, sid in rows:
            yield StudyRecord(
                study_uid=uid, patient_id=pid or "", accession=acc or "", study_date=date,
                description=desc or "", modalities=tuple(m for m in mods if m), n_instances=int(n),
                study_id=sid or "", source=self.name,
            )

    def check(self) -> str:
        from ..errors import SourceUnavailable

        if not self.root.is_dir():
            raise SourceUnavailable(f"folder PACS {self.root} does not exist")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise SourceUnavailable(f"folder PACS {self.root} is not readable")
        return f"{self.name}: folder PACS {self.root} is readable"

    def find(self, q) -> list[StudyRecord]:
        """Every study matching a StudyQuery: PatientID, accession, StudyInstanceUID, dates, description.

        Why the same query shape as the network sources: `rtlake fetch` and targeted look-ups then honour
        every column on every source (the description is matched client-side, folded, as everywhere).
        """
        from ._query import description_matches

        where, params = ["TRUE"], []
        for col, value in (("patient_id", q.patient_id), ("accession", q.accession), ("study_uid", q.study_uid)):
            if value:
                where.append(f"{col} = ?")
                params.append(value)
        out = list(self._studies(" AND ".join(where), params))
        return [s for s in out if q.date_ok(s.study_date) and description_matches(q.description, s.description)]

    def query_patient(self, patient_id: str, since: dt.date | None = None) -> Iterator[StudyRecord]:
        if since is None:
            yield from self._studies("patient_id = ?", [patient_id])
        else:
            yield from self._studies("patient_id = ? AND (study_date IS NULL OR study_date >= ?)", [patient_id, since])

    def find_accession(self, accession: str) -> list[StudyRecord]:
        return list(self._studies("accession = ?", [accession]))

    def retrieve(self, study: StudyRecord, dest: Path) -> RetrievedStudy:
        """The files stay where they are: stores copy, they never move their input.

        Damaged files were refused at indexing (they are `failures()`, named by path). Several files
        with one SOPInstanceUID are one instance when byte-identical (the first path is handed out);
        valid files with other content under one SOPInstanceUID are all held back as a conflict
        (ingest/conflicts.py), so the study counts as incomplete until one is removed.
        """
        self._ensure_index()
        rows = self._rows("SELECT path, sop_uid FROM instances WHERE error IS NULL AND study_uid = ? "
                          "ORDER BY sop_uid, path", [study.study_uid])
        by_sop: dict[str, list[Path]] = {}
        for path, sop in rows:
            by_sop.setdefault(sop, []).append(Path(path))
        files: list[Path] = []
        conflicts: list[Conflict] = []
        for sop, paths in by_sop.items():
            present = [p for p in paths if p.is_file()]
            if not present:
                continue
            first, others = present[0], present[1:]
            differ = [p for p in others if not same_instance(first, p)]
            if not differ:
                files.append(first)
                continue
            log.warning("%s: SOPInstanceUID %s of study %s: %d files with different content; none stored",
                        self.name, show(sop), study.study_uid, len(differ) + 1)
            digest = sha256(first)
            conflicts += [Conflict(sop, study.study_uid, "neither_stored", str(first), str(p), study.study_uid,
                                   study.study_uid, digest, sha256(p)) for p in differ]
        return RetrievedStudy(study=study, files=sorted(files), expected=len(by_sop), conflicts=conflicts)

    def close(self) -> None:
        self.con.close()
