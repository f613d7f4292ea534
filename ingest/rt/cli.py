"""`rtlake rt …`: RT conversion commands (a thin layer over ingest.rt.cohort)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer

rt_app = typer.Typer(help="RT conversion: CT/masks/dose NIfTI, DVHs and previews per patient.", no_args_is_help=True,
                     rich_markup_mode=None)

ConfigOpt = typer.Option(None, "--config", "-c", help="Config file (default: ./rtlake.toml).")

#: Mask output modes (kept in step with ingest.rt.nifti.MASK_MODES by a test; listed here so
#: `--help` stays fast and a typo is a usage error).
MaskMode = Literal["per-roi", "labelmap", "bitmask"]
#: DVH methods (kept in step with ingest.rt.convert.DVH_METHODS by a test).
DvhMethod = Literal["tps", "voxel"]

_CONVERT_EPILOG = """\
Reads [rt] output, [rt] scheduler, [rt] dvh_method and the [rt.dvh_qa]
tolerances; patients come from the lake in [store.lake] path
(project [project] name), or from --input; failures are recorded in the catalog in
[project] state_dir (stage rt).

\b
Details:
  --masks            per-roi: one NIfTI per structure; labelmap: one
                     file, one label per structure (overlaps lost);
                     bitmask: one file, one bit per structure.
  --supersample N    in-plane supersampling of the dose grid for DVHs
                     of structures below --supersample-below cc.
  --plane-tolerance  a contour plane farther than this (mm) from every
                     CT slice is noted as a warning.
  --sum-beam-doses   a plan with only per-beam doses on one grid: sum
                     them instead of stopping at PARTIAL.
  --dvh-method       tps: the structure as the planning system builds
                     it (shape interpolation between contour planes,
                     tapered end caps; agrees with Eclipse); voxel: the
                     NIfTI masks' voxels (agrees with plastimatch).
                     Either way each DVH is checked against the TPS's
                     stored DVHs ([rt.dvh_qa] tolerances).
  --scheduler        a Dask scheduler address; default: a local cluster
                     of --workers processes, one thread each (--serial:
                     no Dask, for debugging).
"""


@rt_app.command("convert", epilog=_CONVERT_EPILOG)
def convert_cmd(
    config: Optional[Path] = ConfigOpt,
    input_dir: Optional[Path] = typer.Option(
        None, "--input", "-i", help="Folder of per-patient DICOM folders (default: the lake)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output folder (default: [rt] output)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Dask scheduler (default: [rt] scheduler)."),
    workers: int = typer.Option(2, help="Local cluster worker processes."),
    serial: bool = typer.Option(False, help="Run in this process without Dask."),
    force: bool = typer.Option(False, "--force", help="Convert again patients whose outputs exist."),
    patient: Optional[list[str]] = typer.Option(None, "--patient", "-p", metavar="ID",
                                                 help="Only this patient (repeatable)."),
    masks: MaskMode = typer.Option("per-roi", help="Mask file layout."),
    compress: bool = typer.Option(True, help="gzip the NIfTI files (.nii.gz)."),
    supersample: int = typer.Option(1, min=1, max=8, metavar="1-8", help="DVH supersampling factor (voxel method)."),
    supersample_below: float = typer.Option(10.0, help="Supersample structures below this (cc)."),
    plane_tolerance: float = typer.Option(0.05, help="Contour-to-slice distance warning (mm)."),
    sum_beam_doses: bool = typer.Option(False, help="Sum per-beam doses when no plan dose."),
    dvh_method: Optional[DvhMethod] = typer.Option(
        None, "--dvh-method", help="DVH method (default: [rt] dvh_method, tps)."),
    previews: bool = typer.Option(True, help="Write a PNG per structure."),
    html: bool = typer.Option(True, help="Write a per-patient HTML page."),
    progress: bool = typer.Option(True, help="Show a progress bar (only on a terminal)."),
) -> None:
    """Convert every patient (lake subject or input sub-folder); failures land in the catalog."""
    from ingest.cli import console, fail, load
    from rich.markup import escape

    from ingest.logsetup import bars_wanted

    from ..catalog import Catalog
    from ..errors import RtlakeError, RunLocked
    from ..lock import run_lock
    from .cohort import (jobs_from_folder, jobs_from_lake, run_cohort, run_serial, write_cohort_dvh,
                         write_cohort_dvh_qa, write_cohort_status)
    from .convert import ConvertOptions, PatientResult
    from .dvh_qa import QaTolerances

    cfg = load(config)
    method = dvh_method or cfg.rt.dvh_method
    out = (output or cfg.rt.output).resolve()
    if input_dir is not None and not input_dir.is_dir():
        console.print(f"[red]--input {escape(str(input_dir))}: not a folder[/red]")
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
                                         on_result=record, progress=bars_wanted(progress))
                summary.dvh_csv = write_cohort_dvh(out, jobs)
                qa_csv = write_cohort_dvh_qa(out, jobs)
                write_cohort_status(out, summary)
                cat.finish_run(run_id, "done", {f"rt_{k}": v for k, v in summary.counts().items()})
            finally:
                cat.close()
    except RunLocked as exc:
        fail(exc, 5)  # as `update`: another run holds the lock
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


@rt_app.command("link", epilog="Uses no config file; prints JSON on stdout.")
def link_cmd(
    input_dir: Path = typer.Argument(..., help="A patient's folder of DICOM files."),
) -> None:
    """Show which CT/RTSTRUCT/RTPLAN/RTDOSE course would be converted, and why (no output written)."""
    import json

    from .linkage import inventory, select_course

    from ..bookkeeping import input_files

    files = input_files(input_dir)
    inv = inventory(files)
    course = select_course(inv)
    typer.echo(json.dumps({"images_summary": inv.summary(), **course.describe(),
                           "dose_problem": course.dose_reason or None,
                           "warnings": [f"{c}: {m}" for c, m in course.warnings]}, indent=2))
