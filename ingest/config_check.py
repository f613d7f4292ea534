"""`rtlake check-config`: does every input the config names exist, and can it be read?

Why: a config can be perfectly valid TOML with every key known and still name a cohort file
that is not there; the run would then start, create its state folder and fail on the first
step. Checking each named file up front (by opening it, not by looking at permission bits,
which say nothing useful to root or on network shares) turns that into one clear list.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .config import Config


@dataclass(frozen=True)
class InputCheck:
    key: str            # config key naming it, e.g. "inputs.cohort"
    path: str
    state: str          # "ok", "missing", "not a file", "not a folder", "unreadable: …", "set", "unset"
    required: bool

    @property
    def ok(self) -> bool:
        return self.state in ("ok", "set") or (not self.required and self.state == "unset")

    def row(self) -> dict:
        return {"key": self.key, "path": self.path, "state": self.state,
                "required": "yes" if self.required else "no"}


def _file(key: str, path: Path | None, required: bool = True) -> InputCheck | None:
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        return InputCheck(key, str(p), "missing", required)
    if not p.is_file():
        return InputCheck(key, str(p), "not a file", required)
    try:
        with p.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        return InputCheck(key, str(p), f"unreadable: {exc.strerror or exc}", required)
    return InputCheck(key, str(p), "ok", required)


def _folder(key: str, path: Path) -> InputCheck:
    p = Path(path)
    if not p.exists():
        return InputCheck(key, str(p), "missing", True)
    if not p.is_dir():
        return InputCheck(key, str(p), "not a folder", True)
    try:
        next(os.scandir(p), None)
    except OSError as exc:
        return InputCheck(key, str(p), f"unreadable: {exc.strerror or exc}", True)
    return InputCheck(key, str(p), "ok", True)


def check_inputs(cfg: Config) -> list[InputCheck]:
    """One check per input the config names (optional inputs only when set)."""
    checks: list[InputCheck | None] = [
        _file("inputs.cohort", cfg.inputs.cohort),
        _file("inputs.deceased", cfg.inputs.deceased),
        _file("inputs.reference_dates", cfg.inputs.reference_dates),
        _file("criteria.lists", cfg.criteria.lists),
        _file("pseudo.profile", cfg.pseudo.profile),
    ]
    kind = cfg.source.kind
    if kind == "folder":
        checks.append(_folder("source.folder.path", cfg.source.folder.path))
    elif kind in ("orthanc", "dicomweb"):
        checks.append(_file(f"source.{kind}.ca_bundle", getattr(cfg.source, kind).ca_bundle))
    if cfg.store.kind in ("xnat", "xnat-dqr"):
        checks.append(_file("store.xnat.ca_bundle", cfg.store.xnat.ca_bundle))
    elif cfg.store.kind == "orthanc":
        checks.append(_file("store.orthanc.ca_bundle", cfg.store.orthanc.ca_bundle))
    if cfg.pseudo.enabled:
        var = cfg.pseudo.key_env
        checks.append(InputCheck("pseudo.key_env", f"${var}", "set" if os.environ.get(var) else "unset", True))
    return [c for c in checks if c is not None]
