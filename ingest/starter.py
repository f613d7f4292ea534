"""`rtlake init`: a commented starter config and the input folder layout it expects.

Why generated from the config model rather than kept as a template file: the starter must name
every key with its real default and meaning, and a copied template drifts the first time a key
is added. Only the few settings every site has to think about are active lines; everything
else is shown commented out with its default, so uncommenting a line changes nothing until
its value is edited.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .atomic import write_text
from .config import Config

#: Settings written as active lines (the rest are commented defaults).
ACTIVE: dict[str, Any] = {
    "project.name": "RTLAKE",
    "project.state_dir": "state",
    "source.kind": "folder",
    "source.folder.path": "pacs",
    "store.kind": "lake",
    "store.lake.path": "lake",
    "inputs.cohort": "inputs/HospitalID-NHSNumber.csv",
    "report.outbox": "outbox",
}
#: Example values for keys with no default (shown commented out).
EXAMPLES: dict[str, Any] = {
    "inputs.deceased": "inputs/deceased.csv",
    "inputs.reference_dates": "inputs/reference_dates.csv",
    "criteria.lists": "inputs/study-descriptions.xlsx",
    "pseudo.profile": "pseudo-profile.toml",
    "rt.scheduler": "tcp://127.0.0.1:8786",
    "source.transfer.window": "19:00-07:00",
    "source.transfer.requests_per_second": 10.0,
    "source.transfer.megabytes_per_second": 20.0,
    "source.orthanc.ca_bundle": "/etc/ssl/certs/site-ca.pem",
    "source.dicomweb.ca_bundle": "/etc/ssl/certs/site-ca.pem",
    "store.xnat.ca_bundle": "/etc/ssl/certs/site-ca.pem",
    "store.orthanc.ca_bundle": "/etc/ssl/certs/site-ca.pem",
    "store.xnat.dqr_failures_dir": "state/dqr-failures",
}


@dataclass(frozen=True)
class InputFile:
    """One file the operator provides, with the config key that names it."""

    key: str
    name: str
    required: bool
    what: str


INPUT_LAYOUT = (
    InputFile("inputs.cohort", "inputs/HospitalID-NHSNumber.csv", True,
              "the cohort: CSV with columns HospitalID, NHSNumber (NHSNumber blank when none)"),
    InputFile("inputs.deceased", "inputs/deceased.csv", False,
              "EDW extract of known-deceased patients: CSV with a HospitalID column"),
    InputFile("inputs.reference_dates", "inputs/reference_dates.csv", False,
              "RT start per subject: CSV with columns Subject, Reference Date"),
    InputFile("criteria.lists", "inputs/study-descriptions.xlsx", False,
              "include/exclude study descriptions: xlsx with INCLUDE and EXCLUDE sheets (or CSV/YAML); "
              "none = the shipped lists"),
    InputFile("source.folder.path", "pacs/", False,
              "with [source] kind = \"folder\": a folder of DICOM files standing in for the PACS"),
)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, Path):
        v = str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string for these (ASCII) values
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"no TOML form for {v!r}")


def starter_config(today: dt.date | None = None) -> str:
    """The text of a starter rtlake.toml (valid TOML; loads to the defaults plus ACTIVE)."""
    today = today or dt.date.today()
    lines = [
        f"# rtlake configuration, written by `rtlake init` on {today.isoformat()}.",
        "# Active lines are the settings every site sets; every other key is shown commented out with",
        "# its default (remove the '# ' to change it). Relative paths are relative to this file.",
        "# Secrets are never written here: each section names the environment variable holding them.",
        "# `rtlake config-reference` describes every key; `rtlake check-config` checks this file and",
        "# that each input it names can be read.",
    ]

    def walk(model: type[BaseModel], prefix: str) -> None:
        scalars, sections = [], []
        for name, f in model.model_fields.items():
            if name == "base_dir":
                continue
            ann = f.annotation
            (sections if isinstance(ann, type) and issubclass(ann, BaseModel) else scalars).append((name, f))
        if prefix:
            lines.extend(["", f"[{prefix.rstrip('.')}]"])
        for name, f in scalars:
            key = prefix + name
            lines.append(f"# {f.description}")
            if key in ACTIVE:
                lines.append(f"{name} = {toml_value(ACTIVE[key])}")
            elif f.default is None:
                example = EXAMPLES.get(key)
                lines.append(f"# {name} = {toml_value(example)}" if example is not None else f"# {name} = (none)")
            else:
                lines.append(f"# {name} = {toml_value(f.default)}")
        for name, f in sections:
            walk(f.annotation, f"{prefix}{name}.")

    walk(Config, "")
    return "\n".join(lines) + "\n"


def inputs_readme() -> str:
    rows = [f"  {i.name:<34} {'required' if i.required else 'optional'}  [{i.key.rsplit('.', 1)[0]}] "
            f"{i.key.rsplit('.', 1)[1]}\n      {i.what}" for i in INPUT_LAYOUT]
    return ("Inputs rtlake reads (paths as in the starter rtlake.toml; change them there):\n\n"
            + "\n".join(rows) + "\n\nNothing here is changed by rtlake; `rtlake check-config` checks each file "
            "can be read.\n")


def write_starter(folder: Path, force: bool = False) -> list[Path]:
    """Write `folder/rtlake.toml` and `folder/inputs/README.txt`; returns the paths written.

    Raises:
        FileExistsError: rtlake.toml exists there and `force` is not set (never overwritten silently).
    """
    folder = Path(folder)
    cfg = folder / "rtlake.toml"
    if cfg.exists() and not force:
        raise FileExistsError(f"{cfg}: exists; not overwriting it (use --force to replace it)")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "inputs").mkdir(exist_ok=True)
    write_text(cfg, starter_config())
    readme = folder / "inputs" / "README.txt"
    write_text(readme, inputs_readme())
    return [cfg, readme]
