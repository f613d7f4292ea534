"""Run RT conversion over a cohort: one Dask task per patient.

By default a small LocalCluster of worker *processes* (2 × 1 thread: conversion is numpy-
and zlib-bound and this is a 2-core machine); `scheduler` connects to an existing
distributed cluster instead. Workers only read DICOM and write the patient's own output
folder; every catalog write happens here, in the one process that holds the DuckDB file.
A patient is skipped only when its notes.json says SUCCESS and the fingerprint of its inputs
(SOPInstanceUIDs and sizes, options) is unchanged, so an interrupted cohort run resumes where
it stopped, a patient whose course changed is converted again, and NO_RT / PARTIAL /
QUARANTINE / EXCLUDED patients are looked at again on every convert.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..bookkeeping import input_files
from ..atomic import write_text
from .convert import ConvertOptions, PatientJob, PatientResult, convert_patient, patient_dir
from reporting.sanitise import csv_value

log = logging.getLogger(__name__)


@dataclass
class CohortSummary:
    results: list[PatientResult] = field(default_factory=list)
    dvh_csv: Path | None = None

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status and not r.skipped)

    @property
    def skipped(self) -> int:
        return sum(1 for r in self.results if r.skipped)

    def counts(self) -> dict[str, int]:
        c: dict[str, int] = defaultdict(int)
        for r in self.results:
            c["skipped" if r.skipped else r.status.lower()] += 1
        c["patients"] = len(self.results)
        return dict(c)


def jobs_from_folder(input_dir: Path, output: Path) -> list[PatientJob]:
    """One job per sub-folder of `input_dir` (every file below it, recursively)."""
    jobs = []
    for sub in sorted(p for p in Path(input_dir).iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = [str(f) for f in input_files(sub)]  # a lake session's session.json is not DICOM
        jobs.append(PatientJob(sub.name, files, str(output)))
    return jobs


def jobs_from_lake(lake_root: Path, project: str, output: Path, catalog=None) -> list[PatientJob]:
    """One job per lake subject: files from the catalog's stored sessions, else from the folder tree.

    The catalog is preferred because it lists exactly what a run stored; the folder walk
    covers lakes copied without their catalog. Either way a patient is named as the store names
    it (the lake's subject folder: a pseudonym when pseudonymised), never by the catalog's
    identified subject label, because the outputs are research-side files.
    """
    from ..naming import safe

    by_subject: dict[str, list[str]] = defaultdict(list)
    known: dict[str, list[tuple[str, int]]] = defaultdict(list)
    proj = Path(lake_root) / safe(project)
    if catalog is not None:
        rows = catalog.execute(
            "SELECT coalesce(s.store_subject, s.subject), f.path, f.sop_uid, f.size FROM sessions s JOIN files f "
            "ON f.study_uid = s.study_uid WHERE s.state = 'stored' AND s.project = ? ORDER BY 1, f.path",
            [project],
        ).fetchall()
        for subject, path, sop, size in rows:
            p = Path(path)
            if not p.is_absolute():
                p = Path(lake_root) / p
            subject = lake_subject(p, proj) or subject
            by_subject[subject].append(str(p))
            known[subject].append((str(sop), int(size or 0)))
    if not by_subject:
        if proj.is_dir():
            for sdir in sorted(x for x in proj.iterdir() if x.is_dir()):
                files = sorted(str(f) for f in sdir.glob("*/scans/*/*.dcm"))
                if files:
                    by_subject[sdir.name] = files
    # The catalog's (SOPInstanceUID, size) fingerprint the inputs without opening the files.
    return [PatientJob(s, files, str(output), known.get(s) or None) for s, files in sorted(by_subject.items())]


def lake_subject(path: Path, project_dir: Path) -> str | None:
    """The subject folder a lake file is under (`<project>/<subject>/<session>/…`), or None."""
    try:
        parts = Path(path).relative_to(project_dir).parts
    except ValueError:
        return None
    return parts[0] if len(parts) > 2 else None


def run_cohort(
    jobs: list[PatientJob],
    opts: ConvertOptions,
    scheduler: str | None = None,
    n_workers: int = 2,
    on_result: Callable[[PatientResult], None] | None = None,
    progress: bool = True,
) -> CohortSummary:
    """Convert every job on Dask; `on_result` is called here as each patient finishes."""
    from dask.distributed import Client, LocalCluster, as_completed

    summary = CohortSummary()
    if not jobs:
        return summary
    cluster = None
    # distributed logs every worker start/stop at INFO; keep the CLI quiet unless asked.
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in ("distributed", "dask"):
            logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().getEffectiveLevel()))
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(
            n_workers=max(1, min(n_workers, len(jobs))), threads_per_worker=1, processes=True,
            dashboard_address=None, host="127.0.0.1", silence_logs=logging.ERROR,
        )
        client = Client(cluster)
    bar = None
    try:
        # Task keys show up in distributed's own logs, so they carry an index, never the subject.
        futures = [client.submit(convert_patient, job, opts, key=f"rt-{i}", pure=False) for i, job in enumerate(jobs)]
        job_of = {f.key: job for f, job in zip(futures, jobs)}
        if progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            from ingest.logsetup import err_console

            bar = Progress(TextColumn("rt convert"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                           TextColumn("{task.fields[last]}"), transient=False, console=err_console)
            bar.start()
            task = bar.add_task("rt", total=len(futures), last="")
        for fut in as_completed(futures):
            job = job_of[fut.key]
            try:
                res = fut.result()
            except Exception as exc:  # noqa: BLE001 - a dead worker is this patient's failure
                from .convert import Failure

                res = PatientResult(job.patient, "EXCLUDED", False,
                                    failures=[Failure(str(patient_dir(job)), f"worker failed: {type(exc).__name__}: {exc}", "WORKER")])
            summary.results.append(res)
            if on_result is not None:
                on_result(res)
            if bar is not None:
                bar.update(task, advance=1, last=f"{res.status.lower()}{' (skipped)' if res.skipped else ''}")
    finally:
        if bar is not None:
            bar.stop()
        client.close()
        if cluster is not None:
            cluster.close()
    summary.results.sort(key=lambda r: r.patient)
    return summary


def run_serial(jobs: list[PatientJob], opts: ConvertOptions, on_result=None) -> CohortSummary:
    """The same as run_cohort without Dask (for debugging and single patients)."""
    summary = CohortSummary()
    for job in jobs:
        res = convert_patient(job, opts)
        summary.results.append(res)
        if on_result is not None:
            on_result(res)
    return summary


def write_cohort_dvh(output: Path, jobs: list[PatientJob], name: str = "dvh.csv") -> Path | None:
    """Concatenate every patient's `name` (dvh.csv, dvh_qa.csv) into `<output>/<name>` (one row
    per patient × ROI)."""
    header: list[str] | None = None
    rows: list[list[str]] = []
    for job in jobs:
        p = patient_dir(job) / name
        if not p.is_file():
            continue
        with open(p, newline="", encoding="utf-8") as fh:
            r = csv.reader(fh)
            h = next(r, None)
            if h is None:
                continue
            if header is None:
                header = h
            if h != header:
                log.warning("%s: DVH columns differ from the first patient's; row values aligned by name", p)
                idx = {c: n for n, c in enumerate(h)}
                rows += [[row[idx[c]] if c in idx else "" for c in header] for row in r]
            else:
                rows += list(r)
    if header is None:
        return None
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows([csv_value(v) for v in row] for row in rows)  # ROI names come from the files
    target = Path(output) / name
    write_text(target, buf.getvalue())
    return target


def write_cohort_dvh_qa(output: Path, jobs: list[PatientJob]) -> Path | None:
    """`<output>/dvh_qa.csv`: ours vs the TPS's stored DVH, one row per patient × structure."""
    return write_cohort_dvh(output, jobs, "dvh_qa.csv")


def write_cohort_status(output: Path, summary: CohortSummary) -> Path:
    """`<output>/patients.csv`: one row per patient with status and the first reason."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["patient", "status", "files_ready", "skipped", "study_uid", "rois", "problems", "first_problem"])
    for r in summary.results:
        first = f"{r.failures[0].code}: {r.failures[0].reason}" if r.failures else ""
        w.writerow([csv_value(v) for v in (r.patient, r.status, r.ready, r.skipped, r.study_uid or "", r.n_rois,
                                           len(r.failures), first)])
    target = Path(output) / "patients.csv"
    write_text(target, buf.getvalue())
    return target
