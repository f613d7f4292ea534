"""The `rtlake` command: a thin typer layer over library calls.

Each area owns its own sub-app module (reporting, rt, pseudo, fetch, export); they are
mounted here when present so areas can grow without editing this file. Heavy imports stay
inside the commands so `rtlake --help` is fast.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from . import __version__, output
from .config import SourceConfig, StoreConfig
from .errors import ConfigError, RtlakeError, RunLocked
from .logsetup import err_console

#: Choices for CLI overrides, taken from the config model so a typo (`--store xnatt`) is a usage
#: error (exit 2) naming the option, not a config-file error.
SourceKind = SourceConfig.model_fields["kind"].annotation
StoreKind = StoreConfig.model_fields["kind"].annotation

_EPILOG = (
    "Most commands read rtlake.toml in the current folder, or the file given with --config; "
    "`rtlake init` writes a commented starter. Results go to stdout; progress, logs and "
    "warnings to stderr (one plain line per record when stderr is not a terminal). "
    "Exit codes: 0 done, 1 error, 2 config or usage error, 3 partial, 4 failed, 5 locked, 130 interrupted."
)

app = typer.Typer(
    name="rtlake",
    help="Keep a radiotherapy research imaging lake up to date from hospital PACS.",
    epilog=_EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: no rich markup (which ate "[source]" and the like) and option names never
    # cut at 80 columns. Every sub-app sets the same.
    rich_markup_mode=None,
)
review_app = typer.Typer(help="Clinician review queue for descriptions on neither list ([criteria] lists).",
                         no_args_is_help=True, rich_markup_mode=None)
app.add_typer(review_app, name="review")

#: Messages, warnings and progress: stderr. Results: stdout (`out_console`, typer.echo, output.emit).
console = err_console
out_console = Console(soft_wrap=True, highlight=False)

ConfigOpt = typer.Option(None, "--config", "-c", help="Config file (default: ./rtlake.toml).")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rtlake {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output (-v info, -vv debug)."),
    log_file: Optional[Path] = typer.Option(None, "--log-file", help="Also append one-line log records here."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show version."),
) -> None:
    import os

    from .logsetup import configure
    from .security import PRIVATE_UMASK

    os.umask(PRIVATE_UMASK)  # catalog, outbox and lake name patients: owner-only unless [security] says otherwise

    configure(verbose, log_file)


def load(config: Optional[Path], overrides: dict | None = None):
    """Load the config, turning ConfigError into a clean exit 2.

    With no --config and no ./rtlake.toml this refuses (exit 2) rather than running on built-in
    defaults, which would create state/ and lake/ wherever the command happened to be started.
    """
    from .config import load_config

    if config is None:
        if not Path("rtlake.toml").is_file():
            console.print(f"[red]config error[/red]: no config: no --config given and no rtlake.toml in "
                          f"{escape(str(Path.cwd()))}; `rtlake init` writes a commented starter config")
            raise typer.Exit(2)
        config = Path("rtlake.toml")
    try:
        return load_config(config, overrides)
    except ConfigError as exc:
        console.print(f"[red]config error[/red]\n{escape(str(exc))}")
        raise typer.Exit(2) from None


def require_catalog(cfg) -> None:
    """Refuse (exit 1) a command that reads the catalog when there is none yet: opening one would
    create it empty, and an empty catalog makes an empty master sheet in the EDW outbox."""
    if not cfg.catalog_path.exists():
        console.print("[red]error:[/red] " + escape(f"no catalog at {cfg.catalog_path} ([project] state_dir); "
                                                   "run `rtlake update` first"))
        raise typer.Exit(1)


def fail(exc: Exception, code: int = 1) -> None:
    console.print(f"[red]error:[/red] {escape(str(exc))}")
    raise typer.Exit(code)


@app.command(epilog="Reads every section: [source] and [store] (where from, where to), [inputs] (cohort), "
             "[criteria] (lists), [harvest], [report] (outbox), [pseudo], [logging]. The summary is printed on "
             "stdout; progress bars and log records on stderr.")
def update(
    config: Optional[Path] = ConfigOpt,
    source: Optional[SourceKind] = typer.Option(None, help="Override [source] kind."),
    store: Optional[StoreKind] = typer.Option(None, help="Override [store] kind."),
    report: bool = typer.Option(True, help="Build the master sheet and outbox files at the end."),
    progress: bool = typer.Option(True, help="Show progress bars (only on a terminal)."),
    full: bool = typer.Option(False, "--full", help="List every patient's studies in full (ignore the change log "
                                                     "and any StudyDate window)."),
    patient: Optional[list[str]] = typer.Option(None, "--patient", help="Re-harvest only this hospital ID "
                                                                       "(repeatable); pending work still runs."),
) -> None:
    """Check → harvest → select → ingest → report, resumable and idempotent.

    Exit codes: 0 done, 3 partial (some patients, files or studies failed; listed), 4 failed (source or store
    unusable; outbox untouched), 130 interrupted (resumable), 2 configuration error, 5 another run holds the lock.
    """
    overrides = {}
    if source:
        overrides["source.kind"] = source
    if store:
        overrides["store.kind"] = store
    cfg = load(config, overrides)
    from .run import EXIT_CONFIG, EXIT_LOCKED, run_update

    previous = _sigterm_is_interrupt()
    try:
        summary = run_update(cfg, show_progress=progress, build_report=report, full=full, patients=patient or None)
    except RunLocked as exc:
        fail(exc, EXIT_LOCKED)
    except ConfigError as exc:
        fail(exc, EXIT_CONFIG)
    except RtlakeError as exc:
        fail(exc)
    finally:
        _restore_sigterm(previous)
    if summary.status == "interrupted":
        console.print(f"interrupted: run {summary.run_id} stopped; run the same command again to resume")
        raise typer.Exit(summary.exit_code)
    summary.print(out_console)
    if summary.exit_code:
        raise typer.Exit(summary.exit_code)


def _sigterm_is_interrupt():
    """A service manager's SIGTERM ends the run like Ctrl-C: recorded as interrupted, resumable.

    Returns the previous handler, restored after the run (the command may run inside another
    program, e.g. a test runner, whose own SIGTERM handling must come back)."""
    import signal

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return None


def _restore_sigterm(previous) -> None:
    import signal

    if previous is not None:
        try:
            signal.signal(signal.SIGTERM, previous)
        except ValueError:
            pass


@app.command(epilog="Probes the [source] of the configured kind, the [store] (and its [store.xnat] login), "
             "[project] state_dir, [report] outbox and [inputs] cohort.")
def check(config: Optional[Path] = ConfigOpt) -> None:
    """Check that the source answers, the store takes the configured credentials and folders are writable.

    The same probes an update run makes before any work (C-ECHO, HTTP status, XNAT login, write access to
    the lake, state folder and outbox, the cohort readable). Exit 0 when all pass, 4 otherwise.
    """
    cfg = load(config)
    from .run import run_checks

    results = run_checks(cfg)
    out = Console(soft_wrap=True)
    marks = {True: "[green]ok[/green]  ", False: "[red]FAIL[/red]", None: "[yellow]warn[/yellow]"}
    for name, ok, detail in results:
        out.print(f"{marks[ok]} {name:8} {escape(detail)}")
    if any(ok is False for _, ok, _ in results):
        raise typer.Exit(4)


@app.command(epilog="Reads the catalog in [project] state_dir; refuses when there is none.")
def status(
    config: Optional[Path] = ConfigOpt,
    runs: int = typer.Option(5, help="How many recent runs to list."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole status as one JSON object."),
) -> None:
    """The lake (subjects, sessions, files), recent runs and outcomes, open failures by reason, review queue."""
    cfg = load(config)
    from .status import gather_status, print_status

    require_catalog(cfg)
    print_status(gather_status(cfg, n_runs=runs), Console(soft_wrap=True), "json" if as_json else "table")


@app.command(epilog="Reads the catalog in [project] state_dir and writes to [report] outbox; refuses when there "
             "is no catalog yet (no empty sheet reaches the EDW).")
def report(config: Optional[Path] = ConfigOpt) -> None:
    """Build the master availability sheet and hand it to the EDW outbox."""
    cfg = load(config)
    from .catalog import Catalog
    from .lock import run_lock
    from reporting.build import build_reports

    from .security import share_outbox

    require_catalog(cfg)
    try:
        with run_lock(cfg.state_dir):
            cat = Catalog(cfg.catalog_path)
            try:
                outputs = build_reports(cfg, cat)
            finally:
                cat.close()
        share_outbox(cfg.report.outbox, outputs, cfg.security.outbox_group, cfg.security.outbox_mode_bits)
    except RunLocked as exc:
        fail(exc, 5)
    except RtlakeError as exc:
        fail(exc)
    for p in outputs:
        typer.echo(str(p))


@app.command("check-config", epilog="Checks the whole file (unknown keys, bad values: exit 2), then each input it names: "
             "[inputs] cohort, deceased, reference_dates; [criteria] lists; [pseudo] profile (and key_env "
             "when enabled); [source.folder] path, or the active source's and store's ca_bundle. Exit 2 when "
             "a required input is missing or cannot be read.")
def check_config(
    config_arg: Optional[Path] = typer.Argument(None, metavar="CONFIG", help="Config file (default: ./rtlake.toml)."),
    config: Optional[Path] = ConfigOpt,
    resolved: bool = typer.Option(False, "--resolved", help="Also print the resolved settings (JSON)."),
    as_csv: bool = output.CsvOpt,
    as_json: bool = output.JsonOpt,
) -> None:
    """Validate a config file and check that every input it names can be read."""
    fmt = output.fmt_from_flags(as_csv, as_json)
    cfg = load(config_arg or config)
    from .config_check import check_inputs

    checks = check_inputs(cfg)
    if resolved:
        typer.echo(cfg.model_dump_json(indent=2, exclude={"base_dir"}))
    output.emit([c.row() for c in checks], [output.Column("key", "Key"), output.Column("path", "Path"),
                                           output.Column("state", "State"), output.Column("required", "Required")],
                fmt, title="Inputs named by the config")
    bad = [c for c in checks if not c.ok]
    for c in bad:
        section, key = c.key.rsplit(".", 1)
        console.print(f"[red]problem[/red] {escape(f'[{section}] {key}: {c.path}: {c.state}')}")
    if bad:
        raise typer.Exit(2)
    console.print(f"config OK: {len(checks)} input(s) readable")


@app.command("config-reference", epilog="Sections: [project], [source] (+ .folder .orthanc .dicomweb .dimse "
             ".transfer), [store] (+ .lake .xnat .orthanc), [inputs], [criteria], [harvest], [report], [logging], "
             "[pseudo], [rt]. Uses no config file.")
def config_reference_cmd() -> None:
    """Print every config key with its type, default and meaning (Markdown)."""
    from .config import config_reference

    typer.echo(config_reference())


@app.command(epilog="The starter names every section, [project] to [rt], each key with its default and "
                    "meaning; only [project], [source], [store], [inputs] cohort and [report] outbox are "
                    "active lines. inputs/README.txt lists the input files and the key naming each.")
def init(
    folder: Path = typer.Argument(Path("."), help="Folder for rtlake.toml and inputs/ (default: here)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing rtlake.toml."),
) -> None:
    """Write a commented starter rtlake.toml and the input folder layout it expects."""
    from .starter import INPUT_LAYOUT, write_starter

    try:
        written = write_starter(folder, force=force)
    except FileExistsError as exc:
        fail(exc, 1)
    except OSError as exc:
        fail(exc, 1)
    for p in written:
        typer.echo(f"wrote {p}")
    typer.echo("expected inputs (edit the paths in rtlake.toml):")
    for i in INPUT_LAYOUT:
        typer.echo(f"  {folder / i.name}  ({'required' if i.required else 'optional'}, {i.key})")
    typer.echo("next: put the cohort list in place, then `rtlake check-config`")


@app.command("demo-data", epilog="The folder gets a config with [source] kind = \"folder\" and [store] kind = "
             "\"lake\", and a marker file .rtlake-demo. A folder without that marker that already holds files "
             "is refused unless --force (a real cohort list is never overwritten by accident).")
def demo_data(
    out: Path = typer.Argument(Path("demo"), help="Folder to write the synthetic cohort into."),
    patients: int = typer.Option(24, help="Number of patients."),
    seed: int = typer.Option(7, help="Random seed (same seed, same cohort)."),
    force: bool = typer.Option(False, "--force", help="Write into a folder rtlake did not create."),
) -> None:
    """Write a deterministic synthetic cohort: folder PACS, side inputs and a config."""
    from .demo import generate

    try:
        paths = generate(out, n_patients=patients, seed=seed, force=force)
    except RtlakeError as exc:
        fail(exc, 1)
    typer.echo(f"wrote synthetic cohort to {paths.root}")


@app.command(epilog="Writes the demo folder as demo-data does ([source] kind = \"folder\", [store] kind = "
             "\"lake\") and runs `update` on its rtlake.toml.")
def demo(
    out: Path = typer.Argument(Path("demo"), help="Folder for the demo cohort, lake and outputs."),
    patients: int = typer.Option(24, help="Number of patients."),
    seed: int = typer.Option(7, help="Random seed."),
    force: bool = typer.Option(False, "--force", help="Write into a folder rtlake did not create."),
) -> None:
    """Generate a synthetic cohort and run the whole update on it (the `make demo` job)."""
    from .demo import generate
    from .run import run_update

    try:
        paths = generate(out, n_patients=patients, seed=seed, force=force)
    except RtlakeError as exc:
        fail(exc, 1)
    cfg = load(paths.config)
    summary = run_update(cfg, show_progress=True, build_report=True)
    summary.print(out_console)
    # The demo PACS holds two deliberately broken files, so `partial` is its expected outcome.
    if summary.status not in ("done", "partial"):
        raise typer.Exit(summary.exit_code)


@review_app.command("export", epilog="Reads studies awaiting review from the catalog ([project] state_dir). "
                    "The Decision column takes include or exclude only (a drop-down that refuses anything else).")
def review_export(
    config: Optional[Path] = ConfigOpt,
    out: Path = typer.Option(Path("review-queue.xlsx"), "--out", "-o", help="Workbook to write."),
) -> None:
    """Write descriptions awaiting review to an xlsx with a Decision column."""
    cfg = load(config)
    from criteria.review import export_review

    from .catalog import Catalog

    require_catalog(cfg)
    cat = Catalog(cfg.catalog_path)
    try:
        n = export_review(cat, out)
    finally:
        cat.close()
    typer.echo(f"{n} descriptions to review → {out}")


@review_app.command("import", epilog="Decisions are kept in the catalog and applied on top of [criteria] lists; "
                    "the merged lists are written to [criteria] history_dir (dated) and to the lists file when "
                    "one is configured. Every row not applied is counted, with the reason.")
def review_import(
    workbook: Path = typer.Argument(..., help="Review workbook with decisions filled in."),
    config: Optional[Path] = ConfigOpt,
    by: str = typer.Option("", help="Who decided (kept in the history)."),
) -> None:
    """Read decisions back into the include/exclude lists (a dated copy is kept)."""
    cfg = load(config)
    from criteria.review import import_review

    from .catalog import Catalog

    cat = Catalog(cfg.catalog_path)
    try:
        result = import_review(cat, workbook, cfg, decided_by=by)
    except RtlakeError as exc:
        fail(exc)
    finally:
        cat.close()
    typer.echo(result.describe())


def _mount(module: str, attr: str, name: str | None = None) -> None:
    """Attach an area's sub-app or command if that area exists yet."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            return
        raise
    obj = getattr(mod, attr)
    if isinstance(obj, typer.Typer):
        app.add_typer(obj, name=name)
    else:
        app.command(name=name, epilog=getattr(mod, "EPILOG", None))(obj)


_mount("reporting.cli", "failures_app", "failures")
_mount("reporting.sessions_cli", "export_app", "export")
_mount("ingest.fetch_cli", "fetch", "fetch")
_mount("ingest.rt.cli", "rt_app", "rt")
_mount("ingest.pseudo.cli", "pseudo_app", "pseudo")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
