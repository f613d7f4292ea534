"""Everything `rtlake update` / `rtlake report` hand over at the end of a run.

`build_reports` is the one entry point: it reads the catalog (and the side inputs named in the
config), builds the master availability sheet and writes the EDW outbox files. Input problems
(bad reference-date rows, ...) are recorded as catalog failures with stage `report`, so they
show up in the run summary instead of vanishing; the build itself goes on.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from ingest.catalog import Catalog
from ingest.config import Config
from ingest.errors import InputFileError
from ingest.patients import InputProblem

from . import edw
from .catalog_source import cohort_subjects, sessions_from_catalog
from .master import build_master
from .refdates import read_reference_dates

log = logging.getLogger(__name__)


def build_reports(cfg: Config, catalog: Catalog, run_id: str | None = None) -> list[Path]:
    """Build the master sheet (xlsx + CSV) into `cfg.report.outbox`; returns the files written."""
    today = dt.date.today()
    run = run_id or _latest_run(catalog) or "report-" + today.strftime("%Y%m%d")
    problems: list[InputProblem] = []

    refdates: dict[str, dt.date] = {}
    ref_path = cfg.inputs.reference_dates
    if ref_path is not None:
        try:
            ref = read_reference_dates(ref_path)
            refdates = ref.dates
            problems.extend(ref.problems)
        except InputFileError as exc:
            problems.append(InputProblem(str(ref_path), exc.line or 0, str(exc).split(": ", 1)[-1]))

    sessions = sessions_from_catalog(catalog)
    sheet = build_master(
        sessions,
        refdates,
        failures=None,
        slots_per_modality=cfg.report.slots_per_modality,
        subjects=cohort_subjects(catalog),
    )
    table = sheet.rendered()

    for p in problems:
        log.warning("%s", p)
        catalog.record_failure(run, "report", f"{p.path}:{p.line}", p.message, error_type="InputProblem")

    outbox = Path(cfg.report.outbox)
    provenance = {
        "run_id": run,
        "built_at": dt.datetime.now().replace(microsecond=0).isoformat(),
        "project": cfg.project.name,
        "catalog": str(catalog.path),
        "reference_dates": str(ref_path) if ref_path else "(none)",
        **{f"count_{k}": v for k, v in sheet.counts.items()},
        "input_problems": len(problems),
    }
    scans_cols = [c for c in table.columns if " Scans " in c]
    xlsx = edw.write_xlsx(
        [("Master", table)], outbox / edw.dated_name(edw.MASTER_STEM, today, ".xlsx"), provenance, scans_cols
    )
    csv_path = edw.write_csv(table, outbox / edw.dated_name(edw.MASTER_STEM, today, ".csv"))
    log.info("master sheet: %d subjects → %s", len(table), xlsx)
    return [xlsx, csv_path]


def _latest_run(catalog: Catalog) -> str | None:
    row = catalog.execute("SELECT run_id FROM runs ORDER BY started_at DESC, run_id DESC LIMIT 1").fetchone()
    return row[0] if row else None
