"""Atomic file writes: a temp file in the same folder, fsync'd, then renamed over the target.

A reader (or a resumed run) therefore sees either the old file or the whole new one, never
half of one. Temp names start with `.tmp-` so a sweep can remove leftovers of a killed run.
Files are owner-only (0600) unless the caller asks otherwise: most of what rtlake writes names
patients (see ingest.security).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_path(target: Path, mode: int = 0o600) -> Iterator[Path]:
    """Yield a temp path to write; on success it replaces `target` in one rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(target: Path, data: bytes, mode: int = 0o600) -> None:
    with atomic_path(target, mode) as tmp:
        tmp.write_bytes(data)


def write_text(target: Path, text: str, mode: int = 0o600) -> None:
    write_bytes(target, text.encode("utf-8"), mode)


def copy_file(src: Path, target: Path, mode: int = 0o600) -> None:
    with atomic_path(target, mode) as tmp:
        shutil.copyfile(src, tmp)


def sweep_temp(root: Path) -> int:
    """Remove temp files a killed run left behind; returns how many."""
    n = 0
    if not root.exists():
        return 0
    for p in root.rglob(f"{TMP_PREFIX}*"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            n += 1
    return n
