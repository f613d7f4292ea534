"""`rtlake failures …`: failure lists in, investigation round trip, rates, reports.

Thin over the library: each command loads the config, takes the run lock for anything that
writes the catalog, and prints file:line problems so nothing is lost without the user seeing.
Exit codes: 0 done (problems may have been reported), 1 a file could not be used at all,
2 config or usage error, 5 another run holds the lock.
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
        raise typer.Exit(5) from None  # the exit code of `update` when locked


def _run_id(prefix: str) -> str:
    return f"{prefix}-{dt.datetime.now():%Y%m%dT%H%M%S}"


def _print_problems(problems, limit: int = 50) -> None:
    from rich.markup import escape

    from .nhs import public_text

    for p in problems[:limit]:
        console.print(f"[yellow]problem[/yellow] {escape(public_text(p))}")
    if len(problems) > limit:
        console.print(f"… and {len(problems) - limit} more problems (all are in the catalog failures table)")


def _print_notes(notes, limit: int = 20) -> None:
    from rich.markup import escape

    for n in notes[:limit]:
        console.print(f"[dim]note {escape(n)}[/dim]", highlight=False, soft_wrap=True)
    if len(notes) > limit:
        console.print(f"[dim]… and {len(notes) - limit} more notes[/dim]")


def parse_attempted(values: list[str]) -> dict[str, int]:
    """`--attempted 120` (all modalities together) and/or `--attempted CT=80 --attempted MR=40`."""
    out: dict[str, int] = {}
    for v in values:
        mod, _, n = v.rpartition("=")
        mod = mod.strip() or "*"
        if not n.strip().isdigit() or int(n) <= 0:
            raise typer.BadParameter(f"{v!r}: expected N or MODALITY=N with N > 0", param_hint="--attempted")
        if mod != "*" and not mod.replace(" ", "").isalnum():
            raise typer.BadParameter(f"{v!r}: expected N or MODALITY=N", param_hint="--attempted")
        out[mod] = int(n)
    return out


@failures_app.command("import", epilog="Subjects are mapped through [inputs] cohort; dates in [harvest] "
                      "placeholder_dates are kept apart; rates are checked against [report] baseline_failure_rate. "
                      "Creates the catalog in [project] state_dir when there is none.")
def import_cmd(
    files: list[Path] = typer.Argument(..., metavar="FILE...", help="Failure files: XNAT JSON, CSV of JSON cells, or pasted text."),
    config: Optional[Path] = ConfigOpt,
    origin: str = typer.Option("csc", help="Who produced the list (csc | dqr); kept in the history."),
    attempted: list[str] = typer.Option(
        [], "--attempted", help="Studies sent in the batch this list answers: N (all modalities) or MODALITY=N "
        "(repeatable), for its failure rate. One file only."),
    batch: Optional[str] = typer.Option(
        None, "--batch", help="The update run whose selection this list answers (default: inferred from the "
        "studies it names)."),
) -> None:
    """Add failure lists to the history (a file already imported adds nothing)."""
    from ingest.cli import load

    from .history import import_failure_file
    from .nhs import load_mapping
    from .rates import failure_rates, rate_warnings

    sent = parse_attempted(attempted)
    if sent and len(files) != 1:
        raise typer.BadParameter("--attempted describes one batch: import one file with it", param_hint="--attempted")
    cfg = load(config)
    run = _run_id("import")
    missing = [f for f in files if not f.is_file()]
    with _catalog(cfg, must_exist=False) as cat:
        mapping = load_mapping(cfg.inputs.cohort, cat)
        if mapping.problems:
            console.print(f"[yellow]cohort file[/yellow] {cfg.inputs.cohort}: {len(mapping.problems)} problems "
                          "(subjects of failed studies follow its rules):", highlight=False)
            _print_problems(mapping.problems, limit=10)
        total_new = 0
        for f in files:
            if f in missing:
                console.print(f"[red]error:[/red] {escape(str(f))}: file not found")
                continue
            res = import_failure_file(cat, f, run, origin=origin,
                                      placeholder_dates=cfg.harvest.placeholder_dates, mapping=mapping,
                                      batch_run=batch, attempted=sent or None)
            typer.echo(res.describe())
            if res.batch_note:
                typer.echo(f"  {res.batch_note}")
            _print_problems(res.problems)
            _print_notes(res.notes)
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


@failures_app.command("export", epilog="Reads the catalog in [project] state_dir (refuses when there is none); "
                      "subjects through [inputs] cohort.")
def export_cmd(
    out_path: Path = typer.Option(..., "--out", "-o", help="File to write (FILE.csv or FILE.xlsx)."),
    config: Optional[Path] = ConfigOpt,
    fmt: Optional[str] = typer.Option(None, "--format", help="csv | xlsx (default: from the file name, else csv)."),
) -> None:
    """Every failed study in the history, one row each, with the files it was seen in (owner-only file)."""
    from ingest.cli import load

    from .failure_export import FORMATS, export_rows, write_export
    from .nhs import load_mapping

    if fmt is not None and fmt.lower() not in FORMATS:
        raise typer.BadParameter(f"{fmt!r}: use {' or '.join(FORMATS)}", param_hint="--format")
    cfg = load(config)
    with _catalog(cfg, write=False) as cat:
        rows = export_rows(cat, load_mapping(cfg.inputs.cohort, cat))
    try:
        write_export(rows, out_path, fmt)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    n_ph = sum(1 for r in rows if r["Placeholder"])
    typer.echo(f"{len(rows)} failed studies ({n_ph} placeholders, flagged) → {out_path}")


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
    include_resolved: bool = typer.Option(False, help="Also show failures a later run resolved."),
    subjects: bool = typer.Option(False, "--subjects", help="Add the Subject (NHS number / NN_<id>)."),
    as_csv: bool = output.CsvOpt,
    as_json: bool = output.JsonOpt,
) -> None:
    """Show imported failed studies and rtlake's own failures (no patient identifiers unless --subjects)."""
    from ingest.cli import load

    from .history import history_rows
    from .own_failures import own_failures, summary

    fmt = output.fmt_from_flags(as_csv, as_json)
    cfg = load(config)
    with _catalog(cfg, write=False) as cat:
        rows = history_rows(cat, include_placeholders)
        own = own_failures(cat)
    shown = [f for f in own if f.open or include_resolved]
    own_rows = [{"kind": "own", "state": "open" if f.open else f"resolved ({f.resolved_run})", "stage": f.stage,
                 "target": f.target if subjects else f.anonymous_target(), "subject": f.subject,
                 "study_uid": f.study_uid, "reason": f.reason, "run_id": f.run_id, "last_seen_run": f.last_seen_run}
                for f in shown]
    subject_col = [output.Column("subject", "Subject")] if subjects else []
    if fmt != "table":
        # one row set for scripts: `kind` tells an imported failed study from one of rtlake's own
        output.emit([{"kind": "imported", **r} for r in rows] + own_rows,
                    [output.Column("kind"), *LIST_COLUMNS, *OWN_COLUMNS[:3], *subject_col, *OWN_COLUMNS[3:5]], fmt)
        return
    output.emit(rows, [*LIST_COLUMNS, *subject_col], fmt, title=f"Imported failure lists: {len(rows)} studies")
    output.emit(own_rows, [*OWN_COLUMNS[:3], *subject_col, *OWN_COLUMNS[3:]], fmt,
                title=f"rtlake's own failures: {summary(own)}")
    hidden = len(own) - len(shown)
    if hidden:
        typer.echo(f"{hidden} resolved failures not shown (--include-resolved)")


#: `failures list` columns (catalog failure_history fields; no patient identifiers).
LIST_COLUMNS = [
    output.Column("study_date", "Study date"), output.Column("accession", "Accession"),
    output.Column("study_uid", "StudyInstanceUID"), output.Column("modalities", "Modalities"),
    output.Column("status", "Status", wrap=True), output.Column("category", "Category", wrap=True),
    output.Column("first_seen_run", "First seen"), output.Column("last_seen_run", "Last seen"),
]
#: rtlake's own failures (catalog `failures`): state, stage, target, reason, run, last seen.
OWN_COLUMNS = [
    output.Column("state", "State"), output.Column("stage", "Stage"), output.Column("target", "Target"),
    output.Column("reason", "Reason", wrap=True), output.Column("run_id", "Run"),
    output.Column("last_seen_run", "Last seen"),
]


def _pct(v) -> str:
    return "" if v is None else f"{v:.1%}"


#: `failures rates` columns; CSV/JSON carry rates as fractions, the table as percentages.
RATE_COLUMNS = [
    output.Column("kind", "Kind"), output.Column("run_id", "Run / list"), output.Column("batch_of", "Batch of run"),
    output.Column("modality", "Modality"),
    output.Column("attempted", "Attempted", numeric=True, show=lambda v: "unknown" if v is None else str(v)),
    output.Column("failed", "Failed", numeric=True),
    output.Column("rate", "Rate", numeric=True, show=lambda v: "unknown" if v is None else f"{v:.1%}"), output.Column("baseline", "Baseline", numeric=True, show=_pct),
    output.Column("threshold", "Alarm above", numeric=True, show=_pct),
    output.Column("out_of_line", "Out of line", show=lambda v: "YES" if v else ""),
]


@failures_app.command("rates", epilog="Baselines come from [report] baseline_failure_rate; the catalog from "
                      "[project] state_dir (refuses when there is none). A run is out of line when its rate is "
                      "above the baseline by more than chance allows; those also print a warning on stderr.")
def rates_cmd(
    config: Optional[Path] = ConfigOpt,
    run: Optional[str] = typer.Option(None, help="Only this run (and lists answering it)."),
    as_csv: bool = output.CsvOpt,
    as_json: bool = output.JsonOpt,
) -> None:
    """Failure rate per modality, per run and per imported list, against the baseline."""
    from ingest.cli import load

    from .rates import failure_rates

    fmt = output.fmt_from_flags(as_csv, as_json)
    cfg = load(config)
    with _catalog(cfg, write=False) as cat:
        rates = [r for r in failure_rates(cat, cfg.report.baseline_failure_rate)
                 if run is None or run in (r.run_id, r.batch_of)]
    rows = [{"kind": r.kind, "run_id": r.run_id, "batch_of": r.batch_of, "modality": r.modality,
             "attempted": r.attempted, "failed": r.failed, "rate": r.rate, "baseline": r.baseline,
             "threshold": r.threshold, "out_of_line": r.out_of_line} for r in rates]
    output.emit(rows, RATE_COLUMNS, fmt, title="Failure rate per run and per imported list")
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
