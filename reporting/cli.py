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
from rich.console import Console
from rich.table import Table

failures_app = typer.Typer(
    help="Failure lists: import XNAT/CSC failure files, investigate, check rates, build reports.",
    no_args_is_help=True,
)
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

ConfigOpt = typer.Option(None, "--config", "-c", help="TOML config file (default: rtlake.toml if present).")


@contextlib.contextmanager
def _catalog(cfg, write: bool = True):
    from ingest.catalog import Catalog
    from ingest.errors import RunLocked
    from ingest.lock import run_lock

    try:
        with contextlib.ExitStack() as stack:
            if write:
                stack.enter_context(run_lock(cfg.state_dir))
            cat = Catalog(cfg.catalog_path)
            stack.callback(cat.close)
            yield cat
    except RunLocked as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(5) from None  # the exit code of `update` when locked


def _run_id(prefix: str) -> str:
    return f"{prefix}-{dt.datetime.now():%Y%m%dT%H%M%S}"


def _print_problems(problems, limit: int = 50) -> None:
    from rich.markup import escape

    from .nhs import public_text

    for p in problems[:limit]:
        console.print(f"[yellow]problem[/yellow] {escape(public_text(p))}", highlight=False, markup=True,
                      soft_wrap=True)
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


@failures_app.command("import")
def import_cmd(
    files: list[Path] = typer.Argument(..., help="Failure files: XNAT JSON, CSV of JSON cells, or pasted text."),
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
    with _catalog(cfg) as cat:
        mapping = load_mapping(cfg.inputs.cohort, cat)
        if mapping.problems:
            console.print(f"[yellow]cohort file[/yellow] {cfg.inputs.cohort}: {len(mapping.problems)} problems "
                          "(subjects of failed studies follow its rules):", highlight=False)
            _print_problems(mapping.problems, limit=10)
        total_new = 0
        for f in files:
            if f in missing:
                console.print(f"[red]error:[/red] {f}: file not found")
                continue
            res = import_failure_file(cat, f, run, origin=origin,
                                      placeholder_dates=cfg.harvest.placeholder_dates, mapping=mapping,
                                      batch_run=batch, attempted=sent or None)
            out.print(res.describe(), highlight=False)
            if res.batch_note:
                out.print(f"  {res.batch_note}", highlight=False)
            _print_problems(res.problems)
            _print_notes(res.notes)
            total_new += res.n_new
        by_status = cat.execute(
            "SELECT status, count(*) FROM failure_history WHERE NOT placeholder GROUP BY 1 ORDER BY 1").fetchall()
        warnings = rate_warnings(failure_rates(cat, cfg.report.baseline_failure_rate))
    out.print(f"{total_new} new failed studies; history now holds:", highlight=False)
    for status, n in by_status:
        out.print(f"  {n:6d}  {status}", highlight=False)
    for w in warnings:
        console.print(f"[bold yellow]WARNING[/bold yellow] {w}", highlight=False)
    if missing:
        raise typer.Exit(1)


@failures_app.command("export")
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
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    n_ph = sum(1 for r in rows if r["Placeholder"])
    out.print(f"{len(rows)} failed studies ({n_ph} placeholders, flagged) → {out_path}", highlight=False)


@failures_app.command("export-investigation")
def export_investigation_cmd(
    config: Optional[Path] = ConfigOpt,
    out_path: Path = typer.Option(Path("failure-investigation.xlsx"), "--out", "-o", help="Workbook to write."),
    include_placeholders: bool = typer.Option(False, help="Also list 2099-01-01 scheduled placeholders."),
) -> None:
    """Write the failure history to an xlsx with a Category drop-down for the admin to fill in."""
    from ingest.cli import load

    from .investigation import export_investigation

    cfg = load(config)
    with _catalog(cfg, write=False) as cat:
        n = export_investigation(cat, out_path, include_placeholders=include_placeholders)
    out.print(f"{n} failed studies → {out_path}", highlight=False)


@failures_app.command("import-investigation")
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
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None
    out.print(res.describe(), highlight=False)
    _print_problems(res.problems)


@failures_app.command("list")
def list_cmd(
    config: Optional[Path] = ConfigOpt,
    include_placeholders: bool = typer.Option(False, help="Also show 2099-01-01 placeholders."),
    include_resolved: bool = typer.Option(False, help="Also show rtlake's own failures that a later run resolved."),
    subjects: bool = typer.Option(False, "--subjects", help="Add the Subject column (NHS number / NN_<id>)."),
) -> None:
    """Show imported failed studies and rtlake's own failures (no patient identifiers unless --subjects)."""
    from ingest.cli import load

    from .history import history_rows
    from .own_failures import own_failures, summary

    cfg = load(config)
    with _catalog(cfg, write=False) as cat:
        rows = history_rows(cat, include_placeholders)
        own = own_failures(cat)
    t = Table("Study date", "Accession", "StudyInstanceUID", "Modalities", "Status", "Category", "First seen",
              "Last seen", *(["Subject"] if subjects else []), title=f"Imported failure lists: {len(rows)} studies")
    for r in rows:
        t.add_row(str(r["study_date"] or ""), r["accession"] or "", r["study_uid"] or "", r["modalities"] or "",
                  r["status"], r["category"] or "", r["first_seen_run"], r["last_seen_run"],
                  *([r["subject"] or ""] if subjects else []))
    out.print(t)
    shown = [f for f in own if f.open or include_resolved]
    t = Table("State", "Stage", "Target", *(["Subject"] if subjects else []), "Reason", "Run", "Last seen",
              title=f"rtlake's own failures: {summary(own)}")
    for f in shown:
        t.add_row("open" if f.open else f"resolved ({f.resolved_run})", f.stage,
                  f.target if subjects else f.anonymous_target(),
                  *([f.subject or ""] if subjects else []), f.reason, f.run_id, f.last_seen_run or "")
    out.print(t)
    hidden = len(own) - len(shown)
    if hidden:
        out.print(f"{hidden} resolved failures not shown (--include-resolved)", highlight=False)


@failures_app.command("rates")
def rates_cmd(
    config: Optional[Path] = ConfigOpt,
    run: Optional[str] = typer.Option(None, help="Only this run (and the lists answering its selection)."),
) -> None:
    """Failure rate per modality per run and per imported list against report.baseline_failure_rate."""
    from ingest.cli import load

    from .rates import failure_rates

    cfg = load(config)
    with _catalog(cfg, write=False) as cat:
        rates = [r for r in failure_rates(cat, cfg.report.baseline_failure_rate)
                 if run is None or run in (r.run_id, r.batch_of)]
    t = Table()
    t.add_column("Kind")
    t.add_column("Run / list", no_wrap=True)
    for name in ("Batch of run", "Modality", "Attempted", "Failed", "Rate", "Baseline", "Out of line"):
        t.add_column(name, justify="left" if name in ("Modality", "Batch of run") else "right")
    for r in rates:
        t.add_row(r.kind, r.run_id, r.batch_of, r.modality, "unknown" if r.attempted is None else str(r.attempted),
                  str(r.failed), r.rate_text(),
                  "" if r.baseline is None else f"{r.baseline:.1%}", "[bold red]YES[/bold red]" if r.out_of_line else "")
    out.print(t)
    for r in rates:
        if r.out_of_line:
            console.print(f"[bold yellow]WARNING[/bold yellow] {r.warning()}", highlight=False)


@failures_app.command("sheet")
def sheet_cmd(
    config: Optional[Path] = ConfigOpt,
    from_folder: Optional[Path] = typer.Option(
        None, "--from-folder", help="SOP folder of MR.csv … XA.csv, reference_dates.csv, PACs-failures.txt, "
        "HospitalID-NHSNumber.csv (default: build from the catalog)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder to write to (default: report.outbox)."),
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
            with _catalog(cfg) as cat:
                paths = build_from_folder(cfg, from_folder, out_dir, catalog=cat)
        else:
            paths = build_from_folder(cfg, from_folder, out_dir)
    except RtlakeError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    for p in paths:
        out.print(str(p), highlight=False)
