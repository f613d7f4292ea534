"""rtlake's own bookkeeping files, so rtlake's commands never mistake them for DICOM input.

A lake session folder holds `session.json` (its manifest) beside the scans; `rtlake fetch` keeps
`.rtlake-fetch.jsonl` in its output; atomic writes leave `.tmp-*` only when killed. Commands that
walk a folder for DICOM (rt link/convert, pseudo run) skip these instead of reporting them as
unreadable files.
"""

from __future__ import annotations

from pathlib import Path

OWN_FILES = frozenset({"session.json", ".rtlake-fetch.jsonl"})


def is_bookkeeping(path: Path) -> bool:
    """True for rtlake's own manifest, resume and temp files (and any hidden file)."""
    name = Path(path).name
    return name in OWN_FILES or name.startswith(".")


def input_files(root: Path) -> list[Path]:
    """Every file under `root` that could be DICOM input, sorted: rtlake's own files left out."""
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and not is_bookkeeping(p)
                  and not any(part.startswith(".") for part in p.relative_to(root).parts[:-1]))
