"""`rtlake rt …`: RT conversion commands (a thin layer over ingest.rt.cohort)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

rt_app = typer.Typer(help="RT conversion: CT/masks/dose NIfTI, DVHs and previews per patient.", no_args_is_help=True)

ConfigOpt = typer.Option(None, "--config", "-c", help="TOML config file (default: rtlake.toml if present).")


@rt_app.command("convert")
def convert_cmd(
    config: Optional[Path] = ConfigOpt,
    input_dir: Optional[Path] = typer.Option(
        None, "--input", "-i", help="Folder with one sub-folder of DICOM files per patient (default: the lake)."
    ),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output folder (default: [rt].output)."),
    scheduler: Optional[str] = typer.Option(
        None, "--scheduler", help="Dask scheduler address (default: [rt].scheduler, else a local cluster)."
    ),
    workers: int = typer.Option(2, help="Worker processes of the local cluster (1 thread each)."),
    serial: bool = typer.Option(False, help="Run in this process without Dask (debugging)."),
    force: bool = typer.Option(False, "--force", help="Convert again patients whose outputs exist."),
    patient: Optional[list[str]] = typer.Option(None, "--patient", "-p", help="Only these patients (repeatable)."),
    masks: str = typer.Option("per-roi", help="Mask output: per-roi | labelmap | bitmask."),
    compress: bool = typer.Option(True, help="gzip the NIfTI files (.nii.gz)."),
    supersample: int = typer.Option(1, min=1, max=8, help="In-plane supersampling factor for small structures' DVHs."),
    supersample_below: float = typer.Option(10.0, help="Supersample structures smaller than this many cc."),
    plane_tolerance: float = typer.Option(0.05, help="Contour-plane to CT-slice distance (mm) above which a warning is noted."),
    sum_beam_doses: bool = typer.Option(
        False, help="When a plan has only per-beam doses (on one grid), sum them instead of stopping at PARTIAL."
    ),
    dvh_method: Optional[str] = typer.Option(
        None, "--dvh-method",
        help="tps: shape-interpolated solid with tapered end caps (agrees with Eclipse); voxel: the NIfTI masks' voxels "
             "(agrees with plastimatch). Default: [rt].dvh_method (tps).",
    ),
    previews: bool = typer.Option(True, help="Write a PNG per structure."),
    html: bool = typer.Option(True, help="Write a per-patient HTML page."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Convert every patient (lake subject or input sub-folder); failures land in the catalog."""
    from ingest.cli import console, fail, load

    from ..catalog import Catalog
    from ..errors import RtlakeError, RunLocked
    from ..lock import run_lock
    from .cohort import (jobs_from_folder, jobs_from_lake, run_cohort, run_serial, write_cohort_dvh,
                         write_cohort_dvh_qa, write_cohort_status)
    from .convert import DVH_METHODS, ConvertOptions, PatientResult
    from .dvh_qa import QaTolerances
    from .nifti import MASK_MODES

    cfg = load(config)
    if masks not in MASK_MODES:
        console.print(f"[red]--masks must be one of {', '.join(MASK_MODES)}[/red]")
        raise typer.Exit(2)
    method = dvh_method or cfg.rt.dvh_method
    if method not in DVH_METHODS:
        console.print(f"[red]--dvh-method must be one of {', '.join(DVH_METHODS)}[/red]")
        raise typer.Exit(2)
    out = (output or cfg.rt.output).resolve()
    if input_dir is not None and not input_dir.is_dir():
        console.print(f"[red]--input {input_dir}: not a folder[/red]")
        raise typer.Exit(2)
    opts = ConvertOptions(mask_mode=masks, compress=compress, supersample=supersample,
                          supersample_below_cc=supersample_below, plane_tol_mm=plane_tolerance,
                          previews=previews, html=html, force=force, sum_beam_doses=sum_beam_doses,
                          dvh_method=method, qa=QaTolerances(**cfg.rt.dvh_qa.model_dump()))
    try:
        with run_lock(cfg.state_dir):
            cat = Catalog(cfg.catalog_path)
            try:
                if input_dir is not None:
                    jobs = jobs_from_folder(input_dir, out)
                else:
                    jobs = jobs_from_lake(cfg.store.lake.path, cfg.project.name, out, cat)
                if patient:
                    wanted = set(patient)
                    jobs = [j for j in jobs if j.patient in wanted]
                if not jobs:
                    console.print("no patients to convert")
                    return
                run_id = cat.start_run("rt", f"rt:{out}")

                def record(res: PatientResult) -> None:
                    for f in res.failures:
                        cat.record_failure(run_id, "rt", f.target, f"{f.code}: {f.reason}", f.study_uid, f.code)
                    # A patient converted again: its earlier rt problems that did not come back are resolved
                    # (a DVH warning that persists stays open, so it is never silently dropped).
                    if res.status in ("SUCCESS", "PARTIAL") and not res.skipped and res.study_uid:
                        current = [(f.target, f"{f.code}: {f.reason}") for f in res.failures]
                        params: list = [run_id, res.study_uid]
                        keep = ""
                        if current:
                            keep = " AND (target, reason) NOT IN (" + ", ".join("(?, ?)" for _ in current) + ")"
                            params += [x for pair in current for x in pair]
                        cat.execute("UPDATE failures SET resolved_run = ? WHERE stage = 'rt' AND study_uid = ? "
                                    "AND resolved_run IS NULL" + keep, params)

                if serial:
                    summary = run_serial(jobs, opts, on_result=record)
                else:
                    summary = run_cohort(jobs, opts, scheduler=scheduler or cfg.rt.scheduler, n_workers=workers,
                                         on_result=record, progress=progress)
                summary.dvh_csv = write_cohort_dvh(out, jobs)
                qa_csv = write_cohort_dvh_qa(out, jobs)
                write_cohort_status(out, summary)
                cat.finish_run(run_id, "done", {f"rt_{k}": v for k, v in summary.counts().items()})
            finally:
                cat.close()
    except RunLocked as exc:
        fail(exc, 3)
    except RtlakeError as exc:
        fail(exc)
    c = summary.counts()
    typer.echo(
        f"rt: {c.get('patients', 0)} patient(s): {c.get('success', 0)} converted, {c.get('partial', 0)} partial, "
        f"{c.get('quarantine', 0)} quarantined, {c.get('excluded', 0)} excluded, {c.get('no_rt', 0)} without RT data, "
        f"{c.get('skipped', 0)} skipped → {out}"
    )
    # With --input, patients are the sub-folders the user named; lake subjects may be NHS numbers,
    # so those are named by study UID instead.
    for r in summary.results:
        if r.failures and not r.skipped:
            f = r.failures[0]
            who = r.patient if input_dir is not None else f"study {f.study_uid or '(unknown)'}"
            extra = f" (+{len(r.failures) - 1} more in notes.json)" if len(r.failures) > 1 else ""
            typer.echo(f"  {who}: {r.status}: {f.code}: {_short_paths(f.reason)}{extra}")
    n_qa = sum(1 for r in summary.results for f in r.failures if f.code == "DVH_WARN_001" and not r.skipped)
    if qa_csv is not None:
        typer.echo(f"TPS DVH check: {out / 'dvh_qa.csv'}" + (f" — {n_qa} structure(s) outside tolerance (catalog warnings)" if n_qa else ""))
    typer.echo(f"per patient: {out / 'patients.csv'}")


def _short_paths(text: str) -> str:
    """Paths cut to their file name: lake folders are named by subject, which may be an NHS number."""
    import re

    return re.sub(r"(?:/[^\s/:]+)+/([^\s/:]+)", r"…/\1", text)


@rt_app.command("link")
def link_cmd(
    input_dir: Path = typer.Argument(..., help="A patient's folder of DICOM files."),
) -> None:
    """Show which CT/RTSTRUCT/RTPLAN/RTDOSE course would be converted, and why (no output written)."""
    import json

    from .linkage import inventory, select_course

    files = sorted(p for p in input_dir.rglob("*") if p.is_file())
    inv = inventory(files)
    course = select_course(inv)
    typer.echo(json.dumps({"images_summary": inv.summary(), **course.describe(),
                           "dose_problem": course.dose_reason or None,
                           "warnings": [f"{c}: {m}" for c, m in course.warnings]}, indent=2))
