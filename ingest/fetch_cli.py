"""`rtlake fetch`: batch retrieval from a CSV list, resumable (see ingest.fetch)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .config import SourceConfig
from .fetch import DEFAULT_DIR_TEMPLATE, DEFAULT_NAME_TEMPLATE


EPILOG = """\
The PACS is [source] (kind, and the [source.orthanc] / [source.dicomweb] /
[source.dimse] section of that kind) with [source.transfer] retries and throttles.

\b
--from CSV columns (any of): PatientID, AccessionNumber,
  StudyInstanceUID, StudyDate (or a YYYYMMDD-YYYYMMDD range), DateFrom,
  DateTo, StudyDescription.
--dir-template / --name-template: DICOM keywords in braces, e.g.
  '{PatientID}/{StudyInstanceUID}'; a file name clash with a different
  instance gets a _<SOPInstanceUID> suffix. Defaults:
    --dir-template
      %s
    --name-template
      %s
""" % (DEFAULT_DIR_TEMPLATE, DEFAULT_NAME_TEMPLATE)

SourceKind = SourceConfig.model_fields["kind"].annotation


def fetch(
    from_: Path = typer.Option(..., "--from", help="CSV list of studies (columns below)."),
    out: Path = typer.Option(Path("fetched"), "--out", "-o", help="Output folder (holds the manifest)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Config file (default: ./rtlake.toml)."),
    source: Optional[SourceKind] = typer.Option(None, help="Override [source] kind."),
    dir_template: str = typer.Option(DEFAULT_DIR_TEMPLATE, "--dir-template", show_default=False,
                                     help="Folder per file (default below)."),
    name_template: str = typer.Option(DEFAULT_NAME_TEMPLATE, "--name-template", show_default=False,
                                      help="File name without .dcm (default below)."),
    decompress: bool = typer.Option(False, "--decompress", help="Write compressed transfer syntaxes decompressed."),
    manifest: Optional[Path] = typer.Option(None, help="Resume manifest (default: OUT/.rtlake-fetch.jsonl)."),
) -> None:
    """Fetch the studies of a CSV list into a folder; re-run after Ctrl-C or a crash to resume."""
    from rich.markup import escape

    from .cli import load
    from .errors import InputFileError, RtlakeError
    from .fetch import read_fetch_list, run_fetch
    from .sources import open_source

    from .logsetup import err_console as console

    cfg = load(config, {"source.kind": source} if source else None)
    try:
        rows, problems = read_fetch_list(from_)
    except InputFileError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    for line, msg in problems:
        console.print(f"[yellow]skipped[/yellow] {escape(f'{from_}:{line}: {msg}')}")
    try:
        with open_source(cfg) as src:
            summary = run_fetch(src, rows, out, dir_template=dir_template, name_template=name_template,
                                decompress=decompress, manifest_path=manifest,
                                on_progress=lambda m: console.print(m, style="dim", markup=False))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: run the same command again to resume")
        raise typer.Exit(130) from None
    except ValueError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    except RtlakeError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    typer.echo(f"rows {summary.rows} (already done {summary.rows_skipped}), studies {summary.studies}, "
               f"files {summary.files}, failed {len(summary.failed)}; manifest {summary.manifest}")
    for ref, reason in summary.failed:
        typer.echo(f"FAILED {from_}:{ref}: {reason}")
    if summary.failed or problems:
        raise typer.Exit(1)
