"""Standalone pseudonymisation over folders or a spreadsheet list of folders (DAMS batch mode).

Output is laid out by pseudonyms only — <out>/<patient>/<study>/<series>/<sop>.dcm — because
input folder and file names often carry patient names. XML files found beside the images go to
<out>/<patient>/xml/ under a keyed name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..bookkeeping import input_files
from ..errors import InputFileError
from .apply import Pseudonymiser, _reason
from .keys import PseudoKey
from .mapping import MappingTable
from .profile import Profile
from .xmlfiles import is_xml, pseudonymise_xml

log = logging.getLogger(__name__)

#: Column names accepted for the folder list (ours, then the DAMS spreadsheet's).
PATH_COLUMNS = ("path", "folder", "Patient_Dir_Paths")


@dataclass
class BatchReport:
    out: Path
    inputs: int = 0
    dicom_written: int = 0
    xml_written: int = 0
    patients: set[str] = field(default_factory=set)
    problems: list[tuple[str, str]] = field(default_factory=list)
    new_mappings: int = 0


def read_input_list(path: Path) -> list[Path]:
    """Folders named in an xlsx (first sheet) or CSV; relative paths are taken from the list's folder.

    Raises:
        InputFileError: unreadable file, no path column, or an empty cell (names the row).
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".xlsx", ".xlsm"):
            frame = pd.read_excel(path, dtype=str)
        else:
            frame = pd.read_csv(path, dtype=str, encoding="utf-8-sig")
    except Exception as exc:  # noqa: BLE001 - any reader failure is the same problem to the user
        raise InputFileError(path, f"cannot read folder list: {type(exc).__name__}") from None
    col = next((c for c in frame.columns if str(c).strip() in PATH_COLUMNS), None)
    if col is None:
        raise InputFileError(path, f"no column named one of {', '.join(PATH_COLUMNS)}")
    out: list[Path] = []
    for i, value in enumerate(frame[col].tolist(), start=2):  # row 1 is the header
        if not isinstance(value, str) or not value.strip():
            raise InputFileError(path, f"empty {col} cell", line=i)
        p = Path(value.strip())
        out.append(p if p.is_absolute() else (path.parent / p).resolve())
    return out


def _files_under(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return input_files(root)  # a lake session's session.json is not DICOM


def run_batch(key: PseudoKey, profile: Profile, uid_root: str, mapping: Path, inputs: list[Path],
              out: Path) -> BatchReport:
    """Pseudonymise each input folder (or file) into `out`; problems are listed, the rest goes on."""
    out = Path(out).resolve()
    report = BatchReport(out=out, inputs=len(inputs))
    # Open the mapping table once before writing anything: a table with loose permissions,
    # another key's fingerprint or a busy lock stops the batch before any copy exists.
    with MappingTable(mapping, key.fingerprint):
        pass
    pz = Pseudonymiser(key, profile, uid_root)

    def layout(ds) -> Path:
        return out / str(ds.PatientID) / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm"

    for folder in inputs:
        folder = Path(folder).resolve()
        if not folder.exists():
            report.problems.append((str(folder), "input folder not found"))
            continue
        if out == folder or folder in out.parents:
            report.problems.append((str(folder), "output folder is inside this input; choose another --out"))
            continue
        files = _files_under(folder)
        dicom = [f for f in files if not is_xml(f)]
        xml = [f for f in files if is_xml(f)]
        outcome = pz.process(dicom, layout)
        report.dicom_written += len(outcome.written)
        report.problems.extend(outcome.problems)
        contexts = list(outcome.contexts.values())
        report.patients.update(c.pseudonym for c in contexts)
        terms: dict[str, str] = {}
        for c in contexts:
            terms.update(c.scrub)
        # XML beside one patient's images belongs to that patient; otherwise it goes to xml/.
        owner = contexts[0].pseudonym if len(contexts) == 1 else None
        for path in xml:
            rel = path.relative_to(folder) if folder.is_dir() else Path(path.name)
            name = key.pseudonym("xml", f"{owner or ''}/{rel.as_posix()}", prefix="X") + ".xml"
            dst = out / owner / "xml" / name if owner else out / "xml" / name
            try:
                pseudonymise_xml(path, dst, profile, terms, pz.remapper, owner or "")
                report.xml_written += 1
            except InputFileError as exc:
                report.problems.append((str(path), _reason(exc)))
    with MappingTable(mapping, key.fingerprint) as table:
        report.new_mappings = table.record(pz.mapping_rows())
    log.info("pseudonymised %d DICOM and %d XML files into %s; %d problems",
             report.dicom_written, report.xml_written, out, len(report.problems))
    return report
