"""`rtlake export sessions`: the SOP's eight session CSVs, from the catalog or from XNAT.

Exit codes: 0 written, 1 the source could not be read (no catalog yet, XNAT refused),
2 config error.
"""

from __future__ import annotations

import datetime as dt
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from ingest.logsetup import err_console

export_app = typer.Typer(help="Export listings in the formats the SOP's downstream steps expect.",
                         no_args_is_help=True, rich_markup_mode=None)
console = err_console

ConfigOpt = typer.Option(None, "--config", "-c", help="Config file (default: ./rtlake.toml).")


class From(str, Enum):
    catalog = "catalog"
    xnat = "xnat"


@export_app.command("sessions", epilog="--from catalog reads the catalog in [project] state_dir (refuses when "
                    "there is none); --from xnat reads the project [project] name on the server in [store.xnat] "
                    "(url, and credentials from the environment variables it names).")
def sessions(
    config: Optional[Path] = ConfigOpt,
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Folder for MR.csv … XA.csv (default: session-csvs/<today>)."),
    source: From = typer.Option(From.catalog, "--from", help="Read sessions from the catalog or from XNAT."),
    identified: bool = typer.Option(False, "--identified", help="List the catalog's identified names (NHS number, "
                                    "accession label, PACS UID and date) instead of what the store holds (pseudonyms "
                                    "when pseudonymised). For the admin: the files then identify patients."),
) -> None:
    """Write MR.csv, CT.csv, PET.csv, CR.csv, DX.csv, RF.csv, SR.csv and XA.csv (SOP columns).

    The rows name sessions as the store holds them: pseudonyms when pseudonymisation is on, so the
    listings are research-side files. --identified gives the identified names (catalog only).
    """
    from ingest.cli import load
    from ingest.errors import RtlakeError

    from .sessions import export_from_catalog, export_from_xnat

    cfg = load(config)
    out_dir = out or Path("session-csvs") / dt.date.today().isoformat()
    if identified and source is From.xnat:
        console.print("[red]error:[/red] --identified lists the catalog's identified names; use it with --from catalog")
        raise typer.Exit(2)
    try:
        if source is From.xnat:
            from ingest.stores.xnat import XnatStore

            store = XnatStore.from_config(cfg)
            try:
                result = export_from_xnat(store, out_dir)
            finally:
                store.close()
        else:
            from ingest.catalog import Catalog

            if not cfg.catalog_path.exists():
                console.print("[red]error:[/red] " + escape(f"no catalog at {cfg.catalog_path} ([project] "
                                                           "state_dir); run `rtlake update` first"))
                raise typer.Exit(1)
            cat = Catalog(cfg.catalog_path, read_only=True)
            try:
                result = export_from_catalog(cat, out_dir, identified=identified, pseudonymised=cfg.pseudo.enabled)
            finally:
                cat.close()
    except RtlakeError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    typer.echo(result.describe())
    if identified:
        typer.echo("these listings name patients (identified side): keep them inside the trust")
