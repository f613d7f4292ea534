"""Include/exclude lists and the three-way decision.

Lists come in the SOP's workbook form (sheets INCLUDE and EXCLUDE, descriptions in the first
column), as a CSV (`Description,List`) or YAML (`include:` / `exclude:`). Entries are exact
descriptions after normalisation; an entry written `glob:<pattern>` is a shell-style pattern
(explicit, because real descriptions contain `?` as in "CT Chest ?PE").
Exact matches beat patterns; anything matching neither list, or both, goes to review.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml

from ingest.errors import InputFileError

from .normalise import BLANK, normalise

Decision = Literal["include", "exclude", "review"]
GLOB = "glob:"


@dataclass
class CriteriaLists:
    include: set[str] = field(default_factory=set)
    exclude: set[str] = field(default_factory=set)
    include_patterns: list[str] = field(default_factory=list)
    exclude_patterns: list[str] = field(default_factory=list)
    origin: str = "<empty>"

    def add(self, which: str, entry: str) -> None:
        entry = str(entry).strip()
        if not entry:
            return
        if entry.lower().startswith(GLOB):
            pat = normalise(entry[len(GLOB):]) if entry[len(GLOB):].strip() else ""
            # normalise() strips trailing punctuation; keep a trailing '*' or '?' of the pattern
            raw = entry[len(GLOB):].strip()
            tail = re.search(r"[*?]+$", raw)
            if tail and not pat.endswith(tail.group(0)):
                pat += tail.group(0)
            target = self.include_patterns if which == "include" else self.exclude_patterns
            if pat and pat not in target:
                target.append(pat)
            return
        (self.include if which == "include" else self.exclude).add(normalise(entry))

    def decide(self, description: str | None) -> tuple[Decision, str]:
        """Decision and a human-readable reason for one description."""
        norm = normalise(description)
        inc, exc = norm in self.include, norm in self.exclude
        if inc and exc:
            return "review", "on both include and exclude lists"
        if inc:
            return "include", "include list"
        if exc:
            return "exclude", "exclude list"
        inc_p = [p for p in self.include_patterns if fnmatch.fnmatchcase(norm, p)]
        exc_p = [p for p in self.exclude_patterns if fnmatch.fnmatchcase(norm, p)]
        if inc_p and exc_p:
            return "review", f"matches include pattern {inc_p[0]!r} and exclude pattern {exc_p[0]!r}"
        if inc_p:
            return "include", f"include pattern {inc_p[0]!r}"
        if exc_p:
            return "exclude", f"exclude pattern {exc_p[0]!r}"
        if norm == BLANK:
            return "review", "empty description"
        return "review", "on neither list"

    def entries(self, which: str) -> list[str]:
        exact = sorted(self.include if which == "include" else self.exclude)
        pats = self.include_patterns if which == "include" else self.exclude_patterns
        return exact + [GLOB + p for p in pats]

    def copy(self) -> "CriteriaLists":
        return CriteriaLists(set(self.include), set(self.exclude), list(self.include_patterns),
                             list(self.exclude_patterns), self.origin)


def default_lists_path() -> Path:
    return Path(str(resources.files("criteria") / "lists" / "head_and_neck.yaml"))


def load_lists(path: Path | None = None) -> CriteriaLists:
    """Read lists from xlsx, CSV or YAML; None loads the shipped head-and-neck defaults.

    Raises:
        InputFileError: unreadable file, unknown format, or a row with an unknown list name.
    """
    path = Path(path) if path is not None else default_lists_path()
    if not path.is_file():
        raise InputFileError(path, "criteria list file not found")
    suffix = path.suffix.lower()
    lists = CriteriaLists(origin=str(path))
    if suffix in {".yaml", ".yml"}:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise InputFileError(path, f"not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise InputFileError(path, "expected a mapping with 'include' and 'exclude' lists")
        unknown = set(data) - {"include", "exclude"}
        if unknown:
            raise InputFileError(path, f"unknown keys {sorted(unknown)} (expected include, exclude)")
        for which in ("include", "exclude"):
            for entry in data.get(which) or []:
                lists.add(which, str(entry))
    elif suffix == ".csv":
        from ingest.patients import read_csv_rows

        header, rows = read_csv_rows(path)
        low = [h.casefold() for h in header]
        if "description" not in low or "list" not in low:
            raise InputFileError(path, "expected columns Description,List", 1)
        d, li = low.index("description"), low.index("list")
        for line, cells in rows:
            which = (cells[li] if li < len(cells) else "").strip().casefold()
            if which not in {"include", "exclude"}:
                raise InputFileError(path, f"List must be include or exclude, got {which!r}", line)
            lists.add(which, cells[d] if d < len(cells) else "")
    elif suffix in {".xlsx", ".xlsm"}:
        import openpyxl

        try:
            wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
        except Exception as exc:  # noqa: BLE001 - openpyxl raises many types
            raise InputFileError(path, f"cannot open workbook: {exc}") from None
        sheets = {s.strip().upper(): s for s in wb.sheetnames}
        missing = [s for s in ("INCLUDE", "EXCLUDE") if s not in sheets]
        if missing:
            raise InputFileError(path, f"missing sheet(s) {missing}; found {wb.sheetnames}")
        for which in ("include", "exclude"):
            for i, row in enumerate(wb[sheets[which.upper()]].iter_rows(values_only=True), start=1):
                if not row or row[0] is None:
                    continue
                value = str(row[0]).strip()
                if i == 1 and value.casefold() in {"description", "study description", "studydescription"}:
                    continue
                lists.add(which, value)
        wb.close()
    else:
        raise InputFileError(path, "criteria lists must be .xlsx, .csv or .yaml")
    return lists


def save_lists(lists: CriteriaLists, path: Path) -> None:
    """Write lists in the format the suffix names, atomically."""
    from ingest.atomic import atomic_path, write_text

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in {".yaml", ".yml"}:
        text = yaml.safe_dump(
            {"include": lists.entries("include"), "exclude": lists.entries("exclude")},
            allow_unicode=True, sort_keys=False,
        )
        write_text(path, text)
    elif suffix == ".csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["Description", "List"])
        for which in ("include", "exclude"):
            for e in lists.entries(which):
                w.writerow([e, which])
        write_text(path, buf.getvalue())
    elif suffix in {".xlsx", ".xlsm"}:
        import openpyxl

        wb = openpyxl.Workbook()
        wb.remove(wb.active)
        for which in ("include", "exclude"):
            ws = wb.create_sheet(which.upper())
            ws.append(["Study Description"])
            for e in lists.entries(which):
                ws.append([e])
            ws.column_dimensions["A"].width = 60
        with atomic_path(path) as tmp:
            wb.save(tmp)
    else:
        raise InputFileError(path, "criteria lists must be .xlsx, .csv or .yaml")
