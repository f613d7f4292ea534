"""The `rtlake` command: a thin typer layer over library calls.

Each area owns its own sub-app module (reporting, rt, pseudo, fetch, export); they are
mounted here when present so areas can grow without editing this file. Heavy imports stay
inside the commands so `rtlake --help` is fast.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from . import __version__
from .errors import ConfigError, RtlakeError, RunLocked

app = typer.Typer(
    name="rtlake",
    help="Keep a radiotherapy research imaging lake up to date from hospital PACS.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
review_app = typer.Typer(help="Clinician review queue for descriptions on neither list.", no_args_is_help=True)
app.add_typer(review_app, name="review")

console = Console(stderr=True)

ConfigOpt = typer.Option(None, "--config", "-c", help="TOML config file (default: rtlake.toml if present).")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rtlake {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output (-vv for debug)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show version."),
) -> None:
    import os

    from .security import PRIVATE_UMASK

    os.umask(PRIVATE_UMASK)  # catalog, outbox and lake name patients: owner-only unless [security] says otherwise
    level = logging.WARNING - 10 * min(verbose, 2)
    from rich.logging import RichHandler

    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])
    # Third-party HTTP/DICOM libraries log request URLs and datasets at debug level; URLs carry
    # subject labels (NHS numbers), so they stay quiet whatever -v says.
    for noisy in ("urllib3", "requests", "xnat", "pynetdicom", "distributed", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def load(config: Optional[Path], overrides: dict | None = None):
    """Load the config, turning ConfigError into a clean exit 2."""
    from .config import load_config

    if config is None and Path("rtlake.toml").is_file():
        config = Path("rtlake.toml")
    try:
        return load_config(config, overrides)
    except ConfigError as exc:
        console.print(f"[red]config error[/red]\n{escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None


def fail(exc: Exception, code: int = 1) -> None:
    console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
    raise typer.Exit(code)


@app.command()
def update(
    config: Optional[Path] = ConfigOpt,
    source: Optional[str] = typer.Option(None, help="Override [source].kind."),
    store: Optional[str] = typer.Option(None, help="Override [store].kind."),
    report: bool = typer.Option(True, help="Build the master sheet and outbox files at the end."),
    progress: bool = typer.Option(True, help="Show progress bars."),
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
    summary.print(Console(soft_wrap=True))
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


@app.command()
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


@app.command()
def status(
    config: Optional[Path] = ConfigOpt,
    runs: int = typer.Option(5, help="How many recent runs to list."),
) -> None:
    """The lake (subjects, sessions, files), recent runs and outcomes, open failures by reason, review queue."""
    cfg = load(config)
    from .status import gather_status, print_status

    if not cfg.catalog_path.is_file():
        fail(RtlakeError(f"no catalog at {cfg.catalog_path}: run `rtlake update` first"), 2)
    print_status(gather_status(cfg, n_runs=runs), Console(soft_wrap=True))


@app.command()
def report(config: Optional[Path] = ConfigOpt) -> None:
    """Build the master availability sheet and hand it to the EDW outbox."""
    cfg = load(config)
    from .catalog import Catalog
    from .lock import run_lock
    from reporting.build import build_reports

    from .security import share_outbox

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


@app.command("check-config")
def check_config(config: Path = typer.Argument(..., help="Config file to validate.")) -> None:
    """Validate a config file and print the resolved settings."""
    cfg = load(config)
    typer.echo(cfg.model_dump_json(indent=2, exclude={"base_dir"}))


@app.command("config-reference")
def config_reference_cmd() -> None:
    """Print every config key with its type, default and meaning (Markdown)."""
    from .config import config_reference

    typer.echo(config_reference())


@app.command("demo-data")
def demo_data(
    out: Path = typer.Argument(Path("demo"), help="Folder to write the synthetic cohort into."),
    patients: int = typer.Option(24, help="Number of patients."),
    seed: int = typer.Option(7, help="Random seed (same seed, same cohort)."),
) -> None:
    """Write a deterministic synthetic cohort: folder PACS, side inputs and a config."""
    from .demo import generate

    paths = generate(out, n_patients=patients, seed=seed)
    typer.echo(f"wrote synthetic cohort to {paths.root}")


@app.command()
def demo(
    out: Path = typer.Argument(Path("demo"), help="Folder for the demo cohort, lake and outputs."),
    patients: int = typer.Option(24, help="Number of patients."),
    seed: int = typer.Option(7, help="Random seed."),
) -> None:
    """Generate a synthetic cohort and run the whole update on it (the `make demo` job)."""
    from .demo import generate
    from .run import run_update

    paths = generate(out, n_patients=patients, seed=seed)
    cfg = load(paths.config)
    summary = run_update(cfg, show_progress=True, build_report=True)
    summary.print(Console(soft_wrap=True))
    # The demo PACS holds two deliberately broken files, so `partial` is its expected outcome.
    if summary.status not in ("done", "partial"):
        raise typer.Exit(summary.exit_code)


@review_app.command("export")
def review_export(
    config: Optional[Path] = ConfigOpt,
    out: Path = typer.Option(Path("review-queue.xlsx"), "--out", "-o", help="Workbook to write."),
) -> None:
    """Write descriptions awaiting review to an xlsx with a Decision column."""
    cfg = load(config)
    from criteria.review import export_review

    from .catalog import Catalog

    cat = Catalog(cfg.catalog_path)
    try:
        n = export_review(cat, out)
    finally:
        cat.close()
    typer.echo(f"{n} descriptions to review → {out}")


@review_app.command("import")
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
        app.command(name=name)(obj)


_mount("reporting.cli", "failures_app", "failures")
_mount("reporting.sessions_cli", "export_app", "export")
_mount("ingest.fetch_cli", "fetch", "fetch")
_mount("ingest.rt.cli", "rt_app", "rt")
_mount("ingest.pseudo.cli", "pseudo_app", "pseudo")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
