"""`rtlake failures …`: failure lists in, investigation round trip, rates, reports.

Thin over the library: each command loads the config, takes the run lock for anything that
writes the catalog, and prints file:line problems so nothing is lost without the user seeing.
Exit codes: 0 done (problems may have been reported), 1 a file could not be used at all,
2 config error, 3 another run holds the lock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from ingest import output
from ingest.logsetup import err_console

failures_app = typer.Typer(
    help="Failure lists: import XNAT/CSC failure files, investigate, check rates, build reports.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
console = err_console

ConfigOpt = typer.Option(None, "--config", "-c", help="Config file (default: ./rtlake.toml).")


@contextlib.contextmanager
def _catalog(cfg, write: bool = True, must_exist: bool = True):
    """The catalog, under the run lock when `write`. A command that reads it refuses when there
    is none (`must_exist`): opening one would create it empty."""
    from ingest.catalog import Catalog
    from ingest.cli import require_catalog
    from ingest.errors import RunLocked
    from ingest.lock import run_lock

    if must_exist:
        require_catalog(cfg)
    try:
        with contextlib.ExitStack() as stack:
            if write:
                stack.enter_context(run_lock(cfg.state_dir))
            cat = Catalog(cfg.catalog_path)
            stack.callback(cat.close)
            yield cat
    except RunLocked as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(3) from None


def _run_id(prefix: str) -> str:
    return f"{prefix}-{dt.datetime.now():%Y%m%dT%H%M%S}"


def _print_problems(problems, limit: int = 50) -> None:
    for p in problems[:limit]:
        console.print(f"[yellow]problem[/yellow] {escape(str(p))}")
    if len(problems) > limit:
        console.print(f"… and {len(problems) - limit} more problems (all are in the catalog failures table)")


@failures_app.command("import", epilog="Subjects are mapped through [inputs] cohort; dates in [harvest] "
                      "placeholder_dates are kept apart; rates are checked against [report] baseline_failure_rate. "
                      "Creates the catalog in [project] state_dir when there is none.")
def import_cmd(
    files: list[Path] = typer.Argument(..., metavar="FILE...", help="Failure files: XNAT JSON, CSV of JSON cells, or pasted text."),
    config: Optional[Path] = ConfigOpt,
    origin: str = typer.Option("csc", help="Who produced the list (csc | dqr); kept in the history."),
) -> None:
    """Add failure lists to the history (a file already imported adds nothing)."""
    from ingest.cli import load

    from .history import import_failure_file
    from .nhs import load_mapping
    from .rates import failure_rates, rate_warnings

    cfg = load(config)
    run = _run_id("import")
    missing = [f for f in files if not f.is_file()]
    with _catalog(cfg, must_exist=False) as cat:
        mapping = load_mapping(cfg.inputs.cohort, cat)
        total_new = 0
        for f in files:
            if f in missing:
                console.print(f"[red]error:[/red] {escape(str(f))}: file not found")
                continue
            res = import_failure_file(cat, f, run, origin=origin,
                                      placeholder_dates=cfg.harvest.placeholder_dates, mapping=mapping)
            typer.echo(res.describe())
            _print_problems(res.problems)
            total_new += res.n_new
        by_status = cat.execute(
            "SELECT status, count(*) FROM failure_history WHERE NOT placeholder GROUP BY 1 ORDER BY 1").fetchall()
        warnings = rate_warnings(failure_rates(cat, cfg.report.baseline_failure_rate))
    typer.echo(f"{total_new} new failed studies; history now holds:")
    for status, n in by_status:
        typer.echo(f"  {n:6d}  {status}")
    for w in warnings:
        console.print(f"[bold yellow]WARNING[/bold yellow] {escape(w)}")
    if missing:
        raise typer.Exit(1)


@failures_app.command("export-investigation", epilog="Reads the failure history from the catalog in "
                      "[project] state_dir; refuses when there is none.")
def export_investigation_cmd(
    config: Optional[Path] = ConfigOpt,
    out_path: Path = typer.Option(Path("failure-investigation.xlsx"), "--out", "-o", help="Workbook to write."),
    include_placeholders: bool = typer.Option(False, help="Also list scheduled-date placeholders."),
) -> None:
    """Write the failure history to an xlsx with a Category drop-down for the admin to fill in."""
    from ingest.cli import load

    from .investigation import export_investigation

    cfg = load(config)
    with _catalog(cfg, write=False) as cat:
        n = export_investigation(cat, out_path, include_placeholders=include_placeholders)
    typer.echo(f"{n} failed studies → {out_path}")


@failures_app.command("import-investigation", epilog="Writes categories into the catalog in [project] "
                      "state_dir; refuses when there is none.")
def import_investigation_cmd(
    workbook: Path = typer.Argument(..., help="The investigation workbook with Category/Note filled in."),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Read the admin's categories (Cancelled, No images on PACS, …) back into the history."""
    from ingest.cli import load
    from ingest.errors import InputFileError

    from .investigation import import_investigation

    cfg = load(config)
    with _catalog(cfg) as cat:
        try:
            res = import_investigation(cat, workbook)
        except InputFileError as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(1) from None
    typer.echo(res.describe())
    _print_problems(res.problems)


@failures_app.command("list", epilog="Reads the catalog in [project] state_dir (refuses when there is none). "
                      "Placeholders are the dates in [harvest] placeholder_dates. At a narrow terminal each study is "
                      "shown as a block of lines; identifiers are never cut.")
def list_cmd(
    config: Optional[Path] = ConfigOpt,
    include_placeholders: bool = typer.Option(False, help="Also show scheduled-date placeholders."),
    as_csv: bool = output.CsvOpt,
    as_json: bool = output.JsonOpt,
) -> None:
    """Show the failure history (study UIDs and accessions; no patient identifiers)."""
    from ingest.cli import load

    from .history import history_rows

    fmt = output.fmt_from_flags(as_csv, as_json)
    cfg = load(config)
    with _catalog(cfg, write=False) as cat:
        rows = history_rows(cat, include_placeholders)
    output.emit(rows, LIST_COLUMNS, fmt, title="Failure history")


#: `failures list` columns (catalog failure_history fields; no patient identifiers).
LIST_COLUMNS = [
    output.Column("study_date", "Study date"), output.Column("accession", "Accession"),
    output.Column("study_uid", "StudyInstanceUID"), output.Column("modalities", "Modalities"),
    output.Column("status", "Status", wrap=True), output.Column("category", "Category", wrap=True),
    output.Column("first_seen_run", "First seen"), output.Column("last_seen_run", "Last seen"),
]


def _pct(v) -> str:
    return "" if v is None else f"{v:.1%}"


#: `failures rates` columns; CSV/JSON carry rates as fractions, the table as percentages.
RATE_COLUMNS = [
    output.Column("run_id", "Run"), output.Column("modality", "Modality"),
    output.Column("attempted", "Attempted", numeric=True), output.Column("failed", "Failed", numeric=True),
    output.Column("rate", "Rate", numeric=True, show=_pct), output.Column("baseline", "Baseline", numeric=True, show=_pct),
    output.Column("threshold", "Alarm above", numeric=True, show=_pct),
    output.Column("out_of_line", "Out of line", show=lambda v: "YES" if v else ""),
]


@failures_app.command("rates", epilog="Baselines come from [report] baseline_failure_rate; the catalog from "
                      "[project] state_dir (refuses when there is none). A run is out of line when its rate is "
                      "above the baseline by more than chance allows; those also print a warning on stderr.")
def rates_cmd(
    config: Optional[Path] = ConfigOpt,
    run: Optional[str] = typer.Option(None, help="Only this run."),
    as_csv: bool = output.CsvOpt,
    as_json: bool = output.JsonOpt,
) -> None:
    """Failure rate per modality per run against the historic baseline."""
    from ingest.cli import load

    from .rates import failure_rates

    fmt = output.fmt_from_flags(as_csv, as_json)
    cfg = load(config)
    with _catalog(cfg, write=False) as cat:
        rates = [r for r in failure_rates(cat, cfg.report.baseline_failure_rate) if run is None or r.run_id == run]
    rows = [{"run_id": r.run_id, "modality": r.modality, "attempted": r.attempted, "failed": r.failed,
             "rate": r.rate, "baseline": r.baseline, "threshold": r.threshold, "out_of_line": r.out_of_line}
            for r in rates]
    output.emit(rows, RATE_COLUMNS, fmt, title="Failure rate per run")
    for r in rates:
        if r.out_of_line:
            console.print(f"[bold yellow]WARNING[/bold yellow] {escape(r.warning())}")


@failures_app.command("sheet", epilog="From the catalog in [project] state_dir (refuses when there is none) "
                      "into [report] outbox, with [report] slots_per_modality; or from a folder of the SOP's files "
                      "with --from-folder.")
def sheet_cmd(
    config: Optional[Path] = ConfigOpt,
    from_folder: Optional[Path] = typer.Option(
        None, "--from-folder", help="SOP folder of MR.csv … XA.csv, reference_dates.csv, PACs-failures.txt "
        "and HospitalID-NHSNumber.csv."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder to write to (default: [report] outbox)."),
    use_catalog: bool = typer.Option(True, help="With --from-folder: keep the folder's failures in the history."),
) -> None:
    """Build the master availability sheet, failure list and HTML report."""
    from ingest.cli import load
    from ingest.errors import RtlakeError

    from .build import build_from_folder, build_reports

    cfg = load(config)
    try:
        if from_folder is None:
            if out_dir is not None:
                cfg.report.outbox = out_dir
            with _catalog(cfg) as cat:
                paths = build_reports(cfg, cat)
        elif use_catalog:
            with _catalog(cfg, must_exist=False) as cat:
                paths = build_from_folder(cfg, from_folder, out_dir, catalog=cat)
        else:
            paths = build_from_folder(cfg, from_folder, out_dir)
    except RtlakeError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    for p in paths:
        typer.echo(str(p))
