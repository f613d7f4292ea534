"""The mapping table: original → pseudonym, the only way back from the lake to a patient.

A DuckDB file readable by its owner alone (0600, checked on every open: a table someone
loosened is refused rather than used). It remembers the fingerprint of the key it was made
with, so pseudonyms from two keys never mix in one table. DuckDB writes a write-ahead log
beside the file while it is open; the process umask is narrowed to 077 for the duration so
that log is owner-only too.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import stat
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import duckdb
import pandas as pd

from ..errors import ConfigError, TransientError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pseudonyms (
    kind VARCHAR NOT NULL,          -- patient_id | hospital_id | subject | session | uid | date_shift_days
    original VARCHAR NOT NULL,
    pseudonym VARCHAR NOT NULL,
    first_seen TIMESTAMP NOT NULL,
    PRIMARY KEY (kind, original)
);
CREATE TABLE IF NOT EXISTS meta (name VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
"""

_UMASK_LOCK = threading.Lock()


@contextlib.contextmanager
def _private_umask() -> Iterator[None]:
    with _UMASK_LOCK:
        old = os.umask(0o077)
        try:
            yield
        finally:
            os.umask(old)


def check_private(path: Path) -> None:
    """Raises ConfigError when group or others may read or write the file."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{path}: pseudonym mapping table has mode {mode:04o}; it must be readable by its owner only "
            f"(chmod 600 {path})"
        )


class MappingTable:
    """Open with `with MappingTable(path, fingerprint) as m:`; writes are idempotent."""

    def __init__(self, path: Path, key_fingerprint: str, read_only: bool = False) -> None:
        self.path = Path(path)
        self.fingerprint = key_fingerprint
        self.read_only = read_only
        self.con: duckdb.DuckDBPyConnection | None = None
        self._umask: contextlib.ExitStack | None = None

    def __enter__(self) -> "MappingTable":
        self._umask = contextlib.ExitStack()
        self._umask.enter_context(_private_umask())
        try:
            self._open()
        except BaseException:
            self._umask.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.con is not None:
                self.con.close()
        finally:
            if self._umask is not None:
                self._umask.close()

    def _open(self) -> None:
        exists = self.path.exists()
        if not exists and self.read_only:
            raise ConfigError(f"{self.path}: no pseudonym mapping table here yet")
        if exists:
            check_private(self.path)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.con = duckdb.connect(str(self.path), read_only=self.read_only)
        except duckdb.IOException as exc:
            raise TransientError(f"{self.path}: mapping table is busy or unreadable ({type(exc).__name__}); "
                                 "another rtlake process may be writing it, try again when it has finished") from None
        if not exists:
            os.chmod(self.path, 0o600)
        if not self.read_only:
            self.con.execute(_SCHEMA)
        row = self.con.execute("SELECT value FROM meta WHERE name = 'key_fingerprint'").fetchone()
        if row is None:
            if self.read_only:
                raise ConfigError(f"{self.path}: mapping table has no key fingerprint")
            self.con.execute("INSERT INTO meta VALUES ('key_fingerprint', ?)", [self.fingerprint])
        elif row[0] != self.fingerprint:
            raise ConfigError(
                f"{self.path}: this mapping table was made with another key (fingerprint {row[0]}, "
                f"the key in the environment has {self.fingerprint}); use the project's key or another table"
            )

    def record(self, rows: Iterable[tuple[str, str, str]]) -> int:
        """Add (kind, original, pseudonym) rows not yet on file; returns how many were new.

        Raises:
            ConfigError: an original already maps to a different pseudonym (a changed key or
                uid_root would otherwise silently fork the lake).
        """
        assert self.con is not None
        rows = sorted(set(rows))
        if not rows:
            return 0
        now = dt.datetime.now().replace(microsecond=0)
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            frame = pd.DataFrame(rows, columns=["kind", "original", "pseudonym"], dtype=str)
            con.register("incoming_frame", frame)
            con.execute("CREATE OR REPLACE TEMP TABLE incoming AS SELECT * FROM incoming_frame")
            con.unregister("incoming_frame")
            clash = con.execute(
                "SELECT i.kind, p.pseudonym, i.pseudonym FROM incoming i JOIN pseudonyms p "
                "ON p.kind = i.kind AND p.original = i.original WHERE p.pseudonym <> i.pseudonym LIMIT 1"
            ).fetchone()
            if clash:
                raise ConfigError(
                    f"{self.path}: a {clash[0]} already maps to {clash[1]}, now to {clash[2]}; "
                    "was [pseudo] uid_root or the profile's prefixes changed?"
                )
            before = con.execute("SELECT count(*) FROM pseudonyms").fetchone()[0]
            con.execute(
                "INSERT INTO pseudonyms SELECT DISTINCT kind, original, pseudonym, ? FROM incoming "
                "ON CONFLICT DO NOTHING",
                [now],
            )
            after = con.execute("SELECT count(*) FROM pseudonyms").fetchone()[0]
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return after - before

    def lookup(self, value: str) -> list[dict]:
        """Rows whose pseudonym or original is `value` (re-identification and its reverse)."""
        assert self.con is not None
        cur = self.con.execute(
            "SELECT kind, original, pseudonym, first_seen FROM pseudonyms WHERE pseudonym = ? OR original = ? "
            "ORDER BY kind, original",
            [value, value],
        )
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    def count(self) -> int:
        assert self.con is not None
        return self.con.execute("SELECT count(*) FROM pseudonyms").fetchone()[0]
