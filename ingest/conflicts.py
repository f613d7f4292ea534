"""Two different files under one SOPInstanceUID: tell copies from conflicts, and record conflicts.

The rule (issue #19), the same for every source and store:
  * a damaged file is never a candidate (ingest.validate refuses it first), so a damaged copy can
    never displace a good instance, whichever is read first;
  * byte-identical copies (ignoring the 128-byte preamble, which PS3.10 gives no meaning) are one
    instance: stored once, nothing to report;
  * a valid file with other content under the SOPInstanceUID of an instance already stored is not
    stored: the stored one stays (`kept_stored`);
  * two valid versions arriving in one delivery (one study's files) are both held back
    (`neither_stored`): rtlake does not guess which is right; an operator removes one from the
    PACS and the next run stores the other.

Every conflict is a row of the catalog's `conflicts` table (both sources, both digests), listed
by `rtlake status`; the update run also records a failure, so the study is retried and the run
ends `partial`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from pathlib import Path

from .records import Conflict

PREAMBLE = 128
_CHUNK = 1 << 20


def _read(src: Path | bytes) -> bytes:
    return src if isinstance(src, (bytes, bytearray)) else Path(src).read_bytes()


def same_instance(a: Path | bytes, b: Path | bytes) -> bool:
    """True when two Part 10 files are byte-identical after the preamble."""
    if not isinstance(a, (bytes, bytearray)) and not isinstance(b, (bytes, bytearray)):
        pa, pb = Path(a), Path(b)
        if pa.stat().st_size != pb.stat().st_size:
            return False
        with open(pa, "rb") as fa, open(pb, "rb") as fb:
            fa.seek(PREAMBLE)
            fb.seek(PREAMBLE)
            while True:
                ca, cb = fa.read(_CHUNK), fb.read(_CHUNK)
                if ca != cb:
                    return False
                if not ca:
                    return True
    da, db = _read(a), _read(b)
    return len(da) == len(db) and da[PREAMBLE:] == db[PREAMBLE:]


def sha256(src: Path | bytes) -> str:
    """Digest of the whole file (what `sha256sum` prints), for the conflicts table."""
    if isinstance(src, (bytes, bytearray)):
        return hashlib.sha256(src).hexdigest()
    h = hashlib.sha256()
    with open(src, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def conflict_id(c: Conflict) -> str:
    return hashlib.sha1("\x00".join((c.sop_uid, c.resolution, c.source_a, c.sha256_a, c.source_b,
                                     c.sha256_b)).encode("utf-8", "backslashreplace")).hexdigest()[:20]


def against_stored(conflicts: list[Conflict], lookup) -> list[Conflict]:
    """Re-state `neither_stored` conflicts whose instance is in fact stored already (from a run before
    the second version appeared): the stored version stays, and each version that differs from it
    is a `kept_stored` conflict against the stored location.

    `lookup` is `Store.stored_instances` (None: nothing known, the conflicts stay as they are).
    """
    if lookup is None or not any(c.resolution == "neither_stored" for c in conflicts):
        return conflicts
    stored = lookup({c.sop_uid for c in conflicts if c.resolution == "neither_stored"})
    out: list[Conflict] = []
    seen: set[tuple[str, str]] = set()
    for c in conflicts:
        where = stored.get(c.sop_uid) if c.resolution == "neither_stored" else None
        if where is None:
            out.append(c)
            continue
        study, location = where
        try:
            kept = sha256(Path(location))
        except OSError:  # a store that is not a file system (Orthanc, XNAT): compare nothing
            kept = ""
        for src, src_study, digest in ((c.source_a, c.study_uid_a, c.sha256_a), (c.source_b, c.study_uid_b, c.sha256_b)):
            if digest and digest == kept or (c.sop_uid, src) in seen:
                continue
            seen.add((c.sop_uid, src))
            out.append(Conflict(c.sop_uid, c.study_uid, "kept_stored", location, src, study, src_study, kept, digest))
    return out


# -- catalog ---------------------------------------------------------------------------------------
def stored_instances(cat, sops: Iterable[str]) -> dict[str, tuple[str, str]]:
    """SOPInstanceUID -> (study UID, path or URL) for those of `sops` the catalog lists as stored."""
    wanted = sorted(set(sops))
    if not wanted:
        return {}
    rows = cat.execute("SELECT sop_uid, study_uid, path FROM files WHERE sop_uid IN (SELECT unnest(?::VARCHAR[]))",
                       [wanted]).fetchall()
    return {sop: (study, path) for sop, study, path in rows}


def record(cat, run_id: str, conflicts: Iterable[Conflict]) -> int:
    """Insert conflicts not yet on file (a repeat stamps `last_run`); returns how many are new."""
    new = 0
    now = dt.datetime.now().replace(microsecond=0)
    for c in conflicts:
        cid = conflict_id(c)
        row = cat.execute("SELECT resolved_run FROM conflicts WHERE conflict_id = ?", [cid]).fetchone()
        if row is not None:
            cat.execute("UPDATE conflicts SET last_run = ?, resolved_run = NULL WHERE conflict_id = ?", [run_id, cid])
            continue
        cat.execute(
            "INSERT INTO conflicts (conflict_id, sop_uid, study_uid, resolution, source_a, study_uid_a, sha256_a, "
            "source_b, study_uid_b, sha256_b, first_run, last_run, first_seen_at, resolved_run) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
            [cid, c.sop_uid, c.study_uid, c.resolution, c.source_a, c.study_uid_a, c.sha256_a, c.source_b,
             c.study_uid_b, c.sha256_b, run_id, run_id, now])
        new += 1
    return new


def resolve_stored(cat, run_id: str, sops: Iterable[str]) -> None:
    """`neither_stored` conflicts end once one version of the instance is stored."""
    wanted = sorted(set(sops))
    if not wanted:
        return
    cat.execute("UPDATE conflicts SET resolved_run = ? WHERE resolution = 'neither_stored' AND resolved_run IS NULL "
                "AND sop_uid IN (SELECT unnest(?::VARCHAR[]))", [run_id, wanted])
