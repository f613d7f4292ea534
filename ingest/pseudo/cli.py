"""`rtlake pseudo`: pseudonymise folders outside an update run, look pseudonyms up, check links."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

pseudo_app = typer.Typer(
    help="Pseudonymise DICOM studies with a secret key (deterministic, references kept) and re-identify.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

_ConfigOpt = typer.Option(None, "--config", "-c", help="Config file (default: ./rtlake.toml).")


def _echo_err(msg: str) -> None:
    typer.echo(msg, err=True)


@pseudo_app.command("run", epilog="Key from the environment variable named by [pseudo] key_env; profile, "
                    "uid_root and mapping table from [pseudo]. Problems are recorded in the catalog in [project] "
                    "state_dir (stage pseudo) unless --no-catalog.")
def run(
    inputs: Optional[list[Path]] = typer.Argument(None, metavar="[FOLDER]...", help="Folders (or files) of DICOM and XML to pseudonymise."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the pseudonymised copies."),
    list_file: Optional[Path] = typer.Option(
        None, "--list", help="xlsx/CSV with a path (or Patient_Dir_Paths) column."
    ),
    config: Optional[Path] = _ConfigOpt,
    catalog: bool = typer.Option(True, "--catalog/--no-catalog", help="Record problems in the catalog."),
) -> None:
    """Pseudonymise folders into --out; originals are only read. Exit 1 when any file failed."""
    from ingest.cli import load

    from ..errors import ConfigError, InputFileError, RtlakeError
    from .batch import read_input_list, run_batch
    from .keys import load_key
    from .profile import load_profile
    from .redact import UidRedactor, pseudonymous_logs, public_paths

    cfg = load(config)
    folders = list(inputs or [])
    try:
        if list_file is not None:
            folders += read_input_list(list_file)
        if not folders:
            _echo_err("error: give folders to pseudonymise or --list")
            raise typer.Exit(2)
        key = load_key(cfg.pseudo.key_env)
        profile = load_profile(cfg.pseudo.profile)
        with pseudonymous_logs(cfg, always=True):
            report = run_batch(key, profile, cfg.pseudo.uid_root, cfg.pseudo.mapping, folders, out)
    except ConfigError as exc:
        _echo_err(f"config error: {exc}")
        raise typer.Exit(2) from None
    except (InputFileError, RtlakeError) as exc:
        _echo_err(f"error: {exc}")
        raise typer.Exit(1) from None
    if catalog and report.problems:
        try:
            _record_failures(cfg, report.problems)
        except RtlakeError as exc:  # e.g. an update run holds the catalog
            _echo_err(f"warning: problems not recorded in the catalog: {exc}")
    typer.echo(
        f"{report.dicom_written} DICOM and {report.xml_written} XML files from {report.inputs} input(s), "
        f"{len(report.patients)} patient(s) → {report.out}; {report.new_mappings} new mapping rows"
    )
    identifiers = cfg.logging.identifiers_in_logs
    redact = UidRedactor(key, cfg.pseudo.uid_root)
    shown = _problem_names(folders, report.problems, identifiers)
    for (_path, reason), name in zip(report.problems, shown):
        _echo_err(f"FAILED {name}: {reason if identifiers else redact(public_paths(reason))}")
    if report.problems:
        if not identifiers:
            where = "`rtlake failures list`" if catalog else "nowhere (--no-catalog)"
            _echo_err(f"(input folders are named by patient: paths are not printed; the catalog has them: {where}; "
                      "set logging.identifiers_in_logs = true to print them)")
        raise typer.Exit(1)


def _problem_names(inputs: list[Path], problems: list[tuple[str, str]], identifiers: bool) -> list[str]:
    """How a failed file is named on the console: its path only when identifiers may be shown.

    Otherwise `input N, file K`: the N-th folder given (command line, then --list rows) and the
    file's place in that folder's sorted listing; the path itself is in the catalog.
    """
    if identifiers:
        return [p for p, _ in problems]
    from ..bookkeeping import input_files

    roots = [Path(p).resolve() for p in inputs]
    listings: dict[int, dict[Path, int]] = {}
    out = []
    for path, _ in problems:
        p = Path(path)
        i = next((n for n, r in enumerate(roots) if p == r or r in p.parents), None)
        if i is None:
            out.append("a file")
            continue
        if roots[i] == p:
            out.append(f"input {i + 1}")
            continue
        if i not in listings:
            listings[i] = {f: k for k, f in enumerate(input_files(roots[i]), start=1)}
        k = listings[i].get(p)
        out.append(f"input {i + 1}, file {k}" if k else f"input {i + 1}")
    return out


def _record_failures(cfg, problems: list[tuple[str, str]]) -> None:
    from ..catalog import Catalog
    from ..lock import run_lock

    with run_lock(cfg.state_dir):
        cat = Catalog(cfg.catalog_path)
        try:
            run_id = cat.start_run("pseudo", "folder")
            for path, reason in problems:
                cat.record_failure(run_id, "pseudo", path, reason, error_type="InputFileError")
            cat.finish_run(run_id, "done", {"pseudo_failed": len(problems)})
        finally:
            cat.close()


@pseudo_app.command("lookup", epilog="Needs the key named by [pseudo] key_env and the [pseudo] mapping table.")
def lookup(
    value: str = typer.Argument(..., help="Pseudonym or original: patient, subject, session or UID."),
    config: Optional[Path] = _ConfigOpt,
) -> None:
    """Authorised re-identification: needs the project key in the environment and the mapping table.

    Prints kind, original and pseudonym (tab-separated) for every matching row; exit 1 if none.
    """
    from ingest.cli import load

    from ..errors import ConfigError, RtlakeError
    from .keys import load_key
    from .mapping import MappingTable

    cfg = load(config)
    try:
        key = load_key(cfg.pseudo.key_env)
        with MappingTable(cfg.pseudo.mapping, key.fingerprint, read_only=True) as table:
            rows = table.lookup(value.strip())
    except ConfigError as exc:
        _echo_err(f"config error: {exc}")
        raise typer.Exit(2) from None
    except RtlakeError as exc:
        _echo_err(f"error: {exc}")
        raise typer.Exit(1) from None
    if not rows:
        _echo_err("no mapping for that value")
        raise typer.Exit(1)
    for r in rows:
        typer.echo(f"{r['kind']}\t{r['original']}\t{r['pseudonym']}")


@pseudo_app.command("check", epilog="Uses no config file.")
def check(folder: Path = typer.Argument(..., help="Folder of (pseudonymised) DICOM files.")) -> None:
    """List references (SOP instance, series, frame of reference) that point outside the folder."""
    from .uids import collect_references

    files = sorted(p for p in folder.rglob("*.dcm") if p.is_file())
    refs = collect_references(files)
    missing = refs.unresolved()
    for kind, uid, where in missing:
        typer.echo(f"UNRESOLVED {kind} {uid} in {where}")
    typer.echo(f"{len(files)} files, {len(refs.referenced)} references, {len(missing)} unresolved")
    if missing:
        raise typer.Exit(1)
