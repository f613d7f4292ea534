"""The clinician review queue: descriptions on neither list go out as a workbook, decisions come back.

Decisions are kept in the catalog (`review_decisions`, append-only, newest wins) and applied on
top of the configured lists, so the lists file itself can stay read-only (or be the shipped
default). Each import also writes a dated copy of the merged lists to the history folder, and
updates the configured lists file in place when there is one, so the next person to open it
sees the decisions.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from ingest.atomic import atomic_path
from ingest.catalog import Catalog
from ingest.errors import InputFileError

from .lists import CriteriaLists, load_lists, save_lists
from .normalise import normalise

DECISIONS = ("include", "exclude")
COLUMNS = ["Description", "Normalised", "Studies", "Modalities", "First date", "Last date", "Decision", "Notes"]


def effective_lists(lists_path: Path | None, catalog: Catalog | None) -> CriteriaLists:
    """Configured (or shipped) lists plus every review decision on file, newest first."""
    lists = load_lists(lists_path)
    if catalog is None:
        return lists
    rows = catalog.execute(
        """
        SELECT description_norm, description, decision FROM (
            SELECT *, row_number() OVER (PARTITION BY description_norm ORDER BY decided_at DESC) AS rn
            FROM review_decisions) WHERE rn = 1
        """
    ).fetchall()
    for norm, desc, decision in rows:
        other = lists.exclude if decision == "include" else lists.include
        other.discard(norm)
        (lists.include if decision == "include" else lists.exclude).add(norm)
    return lists


def export_review(catalog: Catalog, out: Path) -> int:
    """Write the queue (one row per normalised description awaiting review); returns its length."""
    import openpyxl
    from openpyxl.worksheet.datavalidation import DataValidation

    rows = catalog.execute(
        """
        SELECT description_norm,
               mode(coalesce(description, '')) AS description,
               count(*) AS n,
               string_agg(DISTINCT modalities, ', ') AS mods,
               min(study_date), max(study_date)
        FROM studies_seen WHERE decision = 'review'
        GROUP BY description_norm ORDER BY n DESC, description_norm
        """
    ).fetchall()
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "REVIEW"
    ws.append(COLUMNS)
    from reporting.sanitise import xlsx_row

    for norm, desc, n, mods, first, last in rows:
        # descriptions come straight from PACS headers: control characters or a leading '=' must not
        # break or script the workbook (the catalog keeps them as they are)
        ws.append(xlsx_row(ws, [desc, norm, n, mods, first, last, None, None]))
    # Excel enforces a list validation only when its error alert is on (openpyxl leaves it off):
    # "stop" refuses a typed 'yes' or 'inclde' in the cell itself.
    dv = DataValidation(type="list", formula1='"' + ",".join(DECISIONS) + '"', allow_blank=True,
                        showErrorMessage=True, errorStyle="stop", errorTitle="Decision",
                        error="Choose include or exclude from the list (or leave blank to decide later).",
                        showInputMessage=True, promptTitle="Decision", prompt="include or exclude")
    ws.add_data_validation(dv)
    dv.add(f"G2:G{max(len(rows) + 1, 2)}")
    ws.freeze_panes = "A2"
    ws.auto_filter.ref = ws.dimensions
    for col, width in zip("ABCDEFGH", (50, 40, 9, 14, 12, 12, 11, 30)):
        ws.column_dimensions[col].width = width
    for row in ws.iter_rows(min_row=2, min_col=5, max_col=6):
        for cell in row:
            cell.number_format = "yyyy-mm-dd"
    with atomic_path(Path(out)) as tmp:
        wb.save(tmp)
    return len(rows)


@dataclass
class ImportResult:
    """What an import did with every row of the workbook: applied (included/excluded) or not,
    and why not, so no skipped row can hide behind a "left for review" count."""

    included: int = 0
    excluded: int = 0
    undecided: int = 0                                        # Decision blank: still open
    invalid: dict[str, int] = field(default_factory=dict)     # other Decision value → rows
    history_file: Path | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def not_applied(self) -> int:
        return self.undecided + sum(self.invalid.values())

    def describe(self) -> str:
        lines = [f"{self.included} included, {self.excluded} excluded; {self.not_applied} row(s) not applied"]
        if self.undecided:
            lines.append(f"  {self.undecided} with no decision (still open for review)")
        if self.invalid:
            vals = ", ".join(f"{v!r} ×{n}" for v, n in sorted(self.invalid.items()))
            lines.append(f"  {sum(self.invalid.values())} with a decision other than include/exclude ({vals}; "
                         "still open for review)")
        if self.history_file:
            lines.append(f"lists history: {self.history_file}")
        lines += [f"warning: {p}" for p in self.problems]
        return "\n".join(lines)


def import_review(catalog: Catalog, workbook: Path, cfg, decided_by: str = "") -> ImportResult:
    """Apply the Decision column of a review workbook.

    Raises:
        InputFileError: the workbook cannot be read or has no Description/Decision columns;
            a row with a decision other than include/exclude is reported in the result and skipped.
    """
    import openpyxl

    workbook = Path(workbook)
    try:
        wb = openpyxl.load_workbook(workbook, read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001
        raise InputFileError(workbook, f"cannot open workbook: {exc}") from None
    ws = wb.worksheets[0]
    rows = list(ws.iter_rows(values_only=True))
    wb.close()
    if not rows:
        raise InputFileError(workbook, "workbook is empty")
    header = [str(c).strip().casefold() if c is not None else "" for c in rows[0]]
    if "description" not in header or "decision" not in header:
        raise InputFileError(workbook, "expected columns Description and Decision", 1)
    di, dd = header.index("description"), header.index("decision")
    ni = header.index("normalised") if "normalised" in header else None
    result = ImportResult()
    now = dt.datetime.now()  # microseconds: a later import on the same second must still win
    new_rows = []
    for line, row in enumerate(rows[1:], start=2):
        desc = row[di] if di < len(row) else None
        decision = str(row[dd]).strip().casefold() if dd < len(row) and row[dd] is not None else ""
        if not decision:
            result.undecided += 1
            continue
        if decision not in DECISIONS:
            result.invalid[decision] = result.invalid.get(decision, 0) + 1
            result.problems.append(f"{workbook}:{line}: decision {decision!r} is not include/exclude; skipped")
            continue
        norm = str(row[ni]) if ni is not None and ni < len(row) and row[ni] else normalise(desc)

        new_rows.append([norm, None if desc is None else str(desc), decision, decided_by or None, now, str(workbook)])
        if decision == "include":
            result.included += 1
        else:
            result.excluded += 1
    with catalog.transaction() as con:
        for r in new_rows:
            con.execute("INSERT INTO review_decisions VALUES (?, ?, ?, ?, ?, ?)", r)
    merged = effective_lists(cfg.criteria.lists, catalog)
    stamp = now.strftime("%Y%m%d-%H%M%S")
    history = Path(cfg.criteria.history_dir) / f"criteria-lists-{stamp}.yaml"
    history.parent.mkdir(parents=True, exist_ok=True)
    save_lists(merged, history)
    result.history_file = history
    if cfg.criteria.lists is not None:
        save_lists(merged, Path(cfg.criteria.lists))
    return result
