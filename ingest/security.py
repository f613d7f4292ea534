"""Who may read what rtlake writes: owner-only by default, a named group for a shared outbox.

Why owner-only: the catalog, the EDW outbox and the lake hold NHS numbers and hospital IDs, and a
0644 file in a shared folder is readable by every account on the server. Everything rtlake creates
is made under umask 077 (folders 0700, files 0600); atomic writes chmod 0600 explicitly. An EDW
process that must read the outbox gets it through `[security] outbox_group` (and `outbox_mode`),
applied to the outbox folder and every file written into it — never by loosening everything else.
"""

from __future__ import annotations

import contextlib
import grp
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import ConfigError

PRIVATE_UMASK = 0o077


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Create files 0600 and folders 0700 for the duration (process-wide: the CLI sets it for good)."""
    old = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(old)


def _gid(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"[security] outbox_group {group!r}: no such group on this machine") from None


def share_outbox(outbox: Path, files: Iterable[Path], group: str | None, mode: int) -> None:
    """Give the configured group read access to the outbox folder and the files written into it.

    Raises:
        ConfigError: the group does not exist (or we may not hand files to it).
    """
    if not group:
        return
    gid = _gid(group)
    outbox = Path(outbox)
    dir_mode = 0o700 | ((mode & 0o070) and 0o050)  # the group needs x to reach the files, r to list them
    try:
        os.chown(outbox, -1, gid)
        os.chmod(outbox, dir_mode)
        for f in files:
            f = Path(f)
            if outbox in f.parents and f.exists():
                os.chown(f, -1, gid)
                os.chmod(f, mode)
    except PermissionError as exc:
        raise ConfigError(f"[security] outbox_group {group!r}: cannot hand the outbox to that group ({exc}); "
                          "the account running rtlake must be a member of it") from None


def loose(paths: Iterable[Path], allowed: dict[Path, int] | None = None) -> list[tuple[Path, int]]:
    """Files and folders readable or writable by group/others beyond what is allowed for their folder."""
    out = []
    allowed = allowed or {}
    for p in paths:
        try:
            m = stat.S_IMODE(p.lstat().st_mode)
        except OSError:
            continue
        extra = allowed.get(p.parent, allowed.get(p, 0))
        if m & 0o077 & ~extra:
            out.append((p, m))
    return out


def walk(root: Path, limit: int = 200_000) -> Iterator[Path]:
    """The root and everything under it (bounded, for `rtlake check` on a big lake)."""
    root = Path(root)
    if not root.exists():
        return
    yield root
    for n, p in enumerate(root.rglob("*")):
        if n >= limit:
            return
        yield p
