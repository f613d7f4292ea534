"""A streaming xlsx writer for big, simply formatted tables (the EDW outbox), a column at a time.

Why our own: the master sheet at trust scale is 100,000 rows × ~500 columns (50 M cells). Measured
on our 2-core machine (scripts/bench/bench_master.py): openpyxl's write-only mode costs ~36 µs and
XlsxWriter's constant_memory mode ~21 µs per cell — 30 and 17 minutes for that sheet — because both
build and format every cell in Python. The sheet is mostly repeats (the `null` marker, a few
thousand dates, small integers), so here each column of a block of rows is factorised in C
(`pandas.factorize`), each *distinct* value is formatted once, and rows are joined from those
fragments; deflate (level 1) then streams the XML into the zip.

What it writes (ECMA-376 SpreadsheetML, the parts Excel, LibreOffice and openpyxl read):
strings as shared strings (text stays text: NHS numbers, IDs), `datetime.date`/`datetime` as real
dates (serial numbers with a yyyy-mm-dd / yyyy-mm-dd hh:mm:ss format), ints and floats as numbers,
None/NaN as empty cells; a bold, frozen header row (plus the first column when asked), an autofilter
over the whole table, and column widths. Rows are numbered; cells carry no `r` reference (optional
in the schema, CT_Cell; readers place them in order, and an empty cell is written as `<c/>`), so one
fragment serves every cell with the same value.

Text is made safe for XML with the rules of reporting/sanitise.py, per distinct value (or per flagged
value of a text column): characters XML 1.0 forbids and lone surrogates
become U+FFFD, text is cut to Excel's 32,767-character cell limit, and text Excel would read as a
formula (=, +, -, @ first, not a number) is stored as text with the quote-prefix style, so it stays
text when a user edits it.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pandas as pd

from . import sanitise

ROWS_PER_BLOCK = 2000
XLSX_MAX = sanitise.XLSX_MAX
_EPOCH = dt.date(1899, 12, 30)
_FORMULA_LEAD = sanitise.FORMULA_LEAD

# style indexes (cellXfs below)
_S_DATE, _S_BOLD, _S_QUOTED, _S_DATETIME = 1, 2, 3, 4

_STYLES = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<styleSheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">
<numFmts count="2"><numFmt numFmtId="164" formatCode="yyyy-mm-dd"/><numFmt numFmtId="165" formatCode="yyyy-mm-dd hh:mm:ss"/></numFmts>
<fonts count="2"><font><sz val="11"/><name val="Calibri"/><family val="2"/></font><font><b/><sz val="11"/><name val="Calibri"/><family val="2"/></font></fonts>
<fills count="2"><fill><patternFill patternType="none"/></fill><fill><patternFill patternType="gray125"/></fill></fills>
<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>
<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>
<cellXfs count="5"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/><xf numFmtId="164" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/><xf numFmtId="0" fontId="1" fillId="0" borderId="0" xfId="0" applyFont="1"/><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0" quotePrefix="1"/><xf numFmtId="165" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/></cellXfs>
<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>
</styleSheet>"""

_NS = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
_RNS = 'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"'
_PKG = "http://schemas.openxmlformats.org/package/2006"
_OFFICE = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"


def column_letter(j: int) -> str:
    """1 -> A, 27 -> AA."""
    s = ""
    while j:
        j, r = divmod(j - 1, 26)
        s = chr(65 + r) + s
    return s


# One rule for what a cell may hold, shared with every other writer (reporting/sanitise.py).
xml_text = sanitise.xlsx_text
formula_like = sanitise.formula_like


def flagged(items: Sequence[str], pattern: re.Pattern | None = None, starts: str = "", ends: str = "") -> np.ndarray:
    """Indexes of the strings in `items` that match a character class `pattern`, begin with one of
    the characters in `starts` or end with one in `ends`, or hold a NUL.

    Why like this: the strings are joined with NUL once and searched in C (a character-class regex,
    `str.find` for the first/last characters), so a column of 100,000 IDs costs milliseconds
    instead of a Python call per value. `pattern` must not match NUL; a value holding one is
    found by counting separators.
    """
    if not items:
        return np.empty(0, dtype=np.int64)
    joined = "\x00" + "\x00".join(items) + "\x00"
    hits: list[int] = [m.start() for m in pattern.finditer(joined)] if pattern is not None else []
    for marks, shift in ((starts, 1), (ends, 0)):
        for ch in marks:
            probe = "\x00" + ch if shift else ch + "\x00"
            i = joined.find(probe)
            while i >= 0:
                hits.append(i + shift)
                i = joined.find(probe, i + 1)
    extra: list[int] = []
    if joined.count("\x00") != len(items) + 1:  # some values hold a NUL: name them one by one
        extra = [u for u, it in enumerate(items) if "\x00" in it]
    if not hits and not extra:
        return np.empty(0, dtype=np.int64)
    lens = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
    first = np.concatenate(([1], np.cumsum(lens + 1)[:-1] + 1))  # where each item starts in `joined`
    at = np.searchsorted(first, np.array(hits, dtype=np.int64), side="right") - 1
    return np.unique(np.concatenate((at, np.array(extra, dtype=np.int64))))


_ILLEGAL = re.compile(r"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff\ud800-\udfff]")
_NEEDS_ESCAPE = re.compile(r"[&<>]")
_XML_SPACE = " \t\n\r"


class _Strings:
    """The shared-string table: repeated texts (markers, dates' neighbours, header names), deduplicated.
    Mostly distinct texts (IDs, UIDs) are written inline instead (see `_inline_cells`)."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self._index: dict[str, int] = {}

    def add(self, value: str) -> tuple[int, bool]:
        """(index of the cleaned text, whether it needs the quote-prefix style), deduplicated."""
        s = xml_text(value)
        i = self._index.get(s)
        if i is None:
            i = self._index[s] = len(self.items)
            self.items.append(s)
        return i, formula_like(s)

    def fragment(self, value: str) -> str:
        i, quoted = self.add(value)
        style = f' s="{_S_QUOTED}"' if quoted else ""
        return f'<c t="s"{style}><v>{i}</v></c>'


class _Background:
    """Hands blocks to a thread that deflates and writes them, while the caller builds the next.

    Why: zlib releases the GIL while it compresses, so deflating block k runs on the second core
    while Python formats block k+1 (deflate is a quarter of the work at level 1).
    """

    def __init__(self, out) -> None:
        import queue
        import threading

        self._out = out
        self._q: queue.Queue = queue.Queue(maxsize=3)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="xlsx-deflate", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            data = self._q.get()
            if data is None:
                return
            if self._error is None:
                try:
                    self._out.write(data)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                    self._error = exc

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._q.put(data)

    def __enter__(self) -> "_Background":
        return self

    def __exit__(self, *exc) -> None:
        self._q.put(None)
        self._thread.join()
        if self._error is not None and exc[0] is None:
            raise self._error


class Sheet:
    """One table to write: a DataFrame plus how to present it."""

    def __init__(self, title: str, table: pd.DataFrame, *, freeze: bool = True, freeze_first_column: bool = True,
                 number_columns: Sequence[str] = (), widths: Sequence[float] | None = None,
                 autofilter: bool = True) -> None:
        self.title = title[:31]
        self.table = table
        self.freeze = freeze
        self.freeze_first_column = freeze and freeze_first_column and len(table.columns) > 1
        self.autofilter = autofilter
        self.number_columns = set(number_columns)
        self.widths = widths


def write_workbook(target: Path, sheets: Sequence[Sheet], compresslevel: int = 1) -> None:
    """Write the sheets as one .xlsx at `target` (the caller makes it atomic)."""
    strings = _Strings()
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=compresslevel) as zf:
        for n, sheet in enumerate(sheets, start=1):
            with zf.open(f"xl/worksheets/sheet{n}.xml", "w", force_zip64=True) as raw, _Background(raw) as out:
                _write_sheet(out, sheet, strings)
        with zf.open("xl/sharedStrings.xml", "w", force_zip64=True) as out:
            items = strings.items
            out.write((f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<sst {_NS} '
                       f'count="{len(items)}" uniqueCount="{len(items)}">').encode())
            step = 200_000
            for i in range(0, len(items), step):
                chunk = items[i:i + step]
                parts: list[str] = ["<si><t>", "", "</t></si>"] * len(chunk)
                parts[1::3] = chunk
                for u in flagged(chunk, _NEEDS_ESCAPE):
                    parts[3 * u + 1] = escape(chunk[u])
                for u in flagged(chunk, starts=_XML_SPACE, ends=_XML_SPACE):
                    parts[3 * u] = '<si><t xml:space="preserve">'
                out.write("".join(parts).encode("utf-8"))
            out.write(b"</sst>")
        zf.writestr("xl/styles.xml", _STYLES)
        zf.writestr("xl/workbook.xml", _workbook_xml(sheets))
        zf.writestr("xl/_rels/workbook.xml.rels", _workbook_rels(len(sheets)))
        zf.writestr("_rels/.rels", f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
                                   f'<Relationships xmlns="{_PKG}/relationships"><Relationship Id="rId1" '
                                   f'Type="{_OFFICE}/officeDocument" Target="xl/workbook.xml"/></Relationships>')
        zf.writestr("[Content_Types].xml", _content_types(len(sheets)))


_INLINE = '<c t="inlineStr"><is><t>'
_INLINE_END = "</t></is></c>"


def _inline_cells(col: np.ndarray, repeated: dict[str, str]):
    """Rows a..b of a text column as (prefix, text, suffix) per cell: inline strings made of the
    table's own string objects, a shared-string cell for the repeated values (markers); the values
    a scan flags (XML-illegal characters, & < >, edge spaces, formula-like, over-long) are fixed."""
    items = col.tolist()
    fixes: dict[int, tuple[str, str]] = {}
    long = np.flatnonzero(np.fromiter(map(len, items), dtype=np.int64, count=len(items)) > XLSX_MAX)
    odd = np.union1d(np.union1d(flagged(items, _ILLEGAL), flagged(items, _NEEDS_ESCAPE)), long)
    odd = np.union1d(odd, flagged(items, starts=_XML_SPACE + "".join(_FORMULA_LEAD), ends=_XML_SPACE))
    for i in odd.astype(np.int64):
        v = items[i]
        if v in repeated:
            continue
        t = xml_text(v)
        style = f' s="{_S_QUOTED}"' if formula_like(t) else ""
        space = ' xml:space="preserve"' if t[:1] in _XML_SPACE or t[-1:] in _XML_SPACE else ""
        fixes[int(i)] = (f'<c t="inlineStr"{style}><is><t{space}>', escape(t))
    fix_rows = np.array(sorted(fixes), dtype=np.int64)

    def cells(a: int, b: int) -> np.ndarray:
        block = col[a:b]
        out = np.empty((b - a, 3), dtype=object)
        out[:, 0] = _INLINE
        out[:, 1] = block
        out[:, 2] = _INLINE_END
        for value, frag in repeated.items():
            hit = block == value
            if hit.any():
                out[hit, 0] = frag
                out[hit, 1] = ""
                out[hit, 2] = ""
        lo, hi = np.searchsorted(fix_rows, [a, b])
        for i in fix_rows[lo:hi]:
            out[i - a, 0], out[i - a, 1] = fixes[int(i)]
        return out

    return cells


def _write_sheet(out, sheet: Sheet, strings: _Strings) -> None:
    table = sheet.table
    cols = [str(c) for c in table.columns]
    n_rows, n_cols = len(table), len(cols)
    last = f"{column_letter(max(n_cols, 1))}{n_rows + 1}"
    head = [f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<worksheet {_NS} {_RNS}>']
    head.append(f'<dimension ref="A1:{last}"/>')
    if not sheet.freeze:
        pane = ""
    elif sheet.freeze_first_column:
        pane = '<pane xSplit="1" ySplit="1" topLeftCell="B2" activePane="bottomRight" state="frozen"/>' \
               '<selection pane="topRight"/><selection pane="bottomLeft"/><selection pane="bottomRight" sqref="B2"/>'
    else:
        pane = '<pane ySplit="1" topLeftCell="A2" activePane="bottomLeft" state="frozen"/>' \
               '<selection pane="bottomLeft" sqref="A2"/>'
    head.append(f'<sheetViews><sheetView workbookViewId="0">{pane}</sheetView></sheetViews>')
    head.append('<sheetFormatPr defaultRowHeight="15"/>')
    if sheet.widths:
        head.append("<cols>" + "".join(f'<col min="{j}" max="{j}" width="{w:g}" customWidth="1"/>'
                                       for j, w in enumerate(sheet.widths, start=1)) + "</cols>")
    head.append("<sheetData>")
    header = "".join(f'<c t="s" s="{_S_BOLD}"><v>{strings.add(c)[0]}</v></c>' for c in cols)
    head.append(f'<row r="1">{header}</row>')
    out.write("".join(head).encode("utf-8"))
    as_number = [c in sheet.number_columns for c in cols]

    def text_cells(j: int, col: np.ndarray, repeated: list[str]):
        if as_number[j]:  # digit strings become numbers: one at a time (rare: Scans columns have few values)
            return lambda a, b: np.array([[_fragment(v, strings, True)] for v in col[a:b]], dtype=object)
        return _inline_cells(col, {r: strings.fragment(r) for r in repeated})

    texts = encoded(table).texts(lambda j, v: _fragment(v, strings, as_number[j]), "<c/>", text_cells)
    for start in range(0, n_rows, ROWS_PER_BLOCK):
        k = min(ROWS_PER_BLOCK, n_rows - start)
        cells = texts.block(start, start + k)
        frags = np.empty((k, cells.shape[1] + 2), dtype=object)
        frags[:, 0] = [f'<row r="{r}">' for r in range(start + 2, start + 2 + k)]
        frags[:, -1] = "</row>"
        frags[:, 1:-1] = cells
        out.write("".join(frags.ravel().tolist()).encode("utf-8"))
    tail = "</sheetData>"
    if n_cols and sheet.autofilter:
        tail += f'<autoFilter ref="A1:{last}"/>'
    out.write((tail + "</worksheet>").encode("utf-8"))


class Encoded:
    """A table's columns prepared once, shared by the xlsx and CSV writers of one report.

    Two kinds of column. Most (dates, day differences, counts, markers) hold few distinct values:
    they are factorised in C (per cell the index of its value among the column's distinct ones),
    so each distinct value is formatted once. Columns of text that is mostly distinct (session
    IDs, UIDs, subjects) are not: factorising them buys nothing, so their cells are written from the
    table's own string objects (the writers only fix the few values a regex scan flags), and only
    the values that repeat (the `null` marker) are looked up, by comparison.
    `encoded(table)` keeps the last one, because factorising is the largest single cost of the
    outbox. Note: values Python finds equal (1, 1.0 and True) are one distinct value of a column.
    """

    SAMPLE = 2000

    def __init__(self, table: pd.DataFrame) -> None:
        self.values = table.to_numpy(dtype=object, copy=False)
        n_rows, n_cols = self.values.shape
        self.shape = (n_rows, n_cols)
        self.text: dict[int, list[str]] = {}  # text column -> its repeated values (few)
        fact: list[int] = []
        for j in range(n_cols):
            repeated = self._text_column(self.values[:, j])
            if repeated is None:
                fact.append(j)
            else:
                self.text[j] = repeated
        self.factorised = np.array(fact, dtype=np.int64)
        self.codes = np.empty((n_rows, len(fact)), dtype=np.int32)  # -1: None / NaN / NaT
        self.uniques: list[np.ndarray] = []
        for k, j in enumerate(fact):
            c, uniq = pd.factorize(self.values[:, j], use_na_sentinel=True)
            self.codes[:, k] = c
            self.uniques.append(uniq)

    def _text_column(self, col: np.ndarray) -> list[str] | None:
        """The values repeated in a sample when `col` is all strings and mostly distinct, else None."""
        if len(col) < 4 * self.SAMPLE or pd.api.types.infer_dtype(col[: self.SAMPLE], skipna=False) != "string":
            return None
        codes, uniq = pd.factorize(col[: self.SAMPLE])
        if len(uniq) < 0.3 * len(codes) or pd.api.types.infer_dtype(col, skipna=False) != "string":
            return None
        counts = np.bincount(codes)
        top = np.argsort(-counts)[:8]
        return [uniq[u] for u in top if counts[u] > 1]

    def texts(self, fmt, missing: str, text_prep=None) -> "Texts":
        """Format each distinct value of the factorised columns once with `fmt(j, value)`;
        `text_prep(j, column, repeated)` returns, for a text column, a function giving the texts of
        rows a..b (a 2-D array: a writer may spend several items per cell)."""
        parts: list[np.ndarray] = [np.array([missing], dtype=object)]
        offsets = np.empty(len(self.uniques), dtype=np.int64)
        offset = 1
        for k, uniq in enumerate(self.uniques):
            j = int(self.factorised[k])
            offsets[k] = offset
            texts = np.empty(len(uniq), dtype=object)
            for u, v in enumerate(uniq):
                texts[u] = fmt(j, v)
            parts.append(texts)
            offset += len(uniq)
        cells = {j: text_prep(j, self.values[:, j], rep) for j, rep in self.text.items()}
        return Texts(self, offsets, np.concatenate(parts), cells)


class Texts:
    """Formatted cells of an `Encoded` table; `block(a, b)` gives rows a..b as a 2-D array of texts."""

    def __init__(self, enc: Encoded, offsets: np.ndarray, lut: np.ndarray, cells: dict) -> None:
        self.enc, self.offsets, self.lut, self.cells = enc, offsets, lut, cells
        self._widths: dict[int, int] | None = None

    def block(self, start: int, stop: int) -> np.ndarray:
        enc = self.enc
        text_parts = {j: fn(start, stop) for j, fn in self.cells.items()}
        widths = np.ones(enc.shape[1], dtype=np.int64)
        for j, part in text_parts.items():
            widths[j] = part.shape[1]
        pos = np.concatenate(([0], np.cumsum(widths)[:-1]))
        out = np.empty((stop - start, int(widths.sum())), dtype=object)
        if len(enc.factorised):
            part = enc.codes[start:stop].astype(np.int64)
            idx = part + self.offsets[None, :]
            idx[part < 0] = 0
            out[:, pos[enc.factorised]] = self.lut[idx]
        for j, part in text_parts.items():
            out[:, pos[j]:pos[j] + part.shape[1]] = part
        return out


_LAST_ENCODED: list = []  # [(weakref to the DataFrame, Encoded)]


def encoded(table: pd.DataFrame) -> Encoded:
    """The table's `Encoded` form, computed once per table object (the master sheet is written twice)."""
    import weakref

    if _LAST_ENCODED:
        ref, enc = _LAST_ENCODED[0]
        if ref() is table and enc.shape == table.shape:
            return enc
    enc = Encoded(table)
    held = _LAST_ENCODED[0][0]() if _LAST_ENCODED else None
    # Keep the biggest live table: the report writes the master sheet's xlsx (with smaller sheets
    # after it) and then its CSV, and a smaller table must not push it out in between.
    if table.size >= 100_000 and (held is None or table.size >= held.size):
        _LAST_ENCODED[:] = [(weakref.ref(table), enc)]
    return enc


_DATE_BASE = _EPOCH.toordinal()


def _fragment(v: object, strings: _Strings, as_number: bool) -> str:
    t = type(v)  # the common cases first, by exact type (this runs once per distinct value)
    if t is dt.date:
        return f'<c s="{_S_DATE}"><v>{v.toordinal() - _DATE_BASE}</v></c>'
    if t is int:
        return f"<c><v>{v}</v></c>"
    if t is str and not as_number:
        return strings.fragment(v)
    if isinstance(v, str):
        if as_number and v.isdigit() and len(v) < 10:
            return f"<c><v>{int(v)}</v></c>"
        return strings.fragment(v)
    if isinstance(v, bool):
        return f'<c t="b"><v>{int(v)}</v></c>'
    if isinstance(v, (int, np.integer)):
        return f"<c><v>{int(v)}</v></c>"
    if isinstance(v, (float, np.floating)):
        if math.isnan(v) or math.isinf(v):
            return "<c/>"
        return f"<c><v>{float(v)!r}</v></c>"
    if isinstance(v, pd.Timestamp):
        v = v.to_pydatetime()
    if isinstance(v, dt.datetime):
        days = (v.replace(tzinfo=None) - dt.datetime(1899, 12, 30)).total_seconds() / 86400
        return f'<c s="{_S_DATETIME}"><v>{days!r}</v></c>'
    if isinstance(v, dt.date):
        return f'<c s="{_S_DATE}"><v>{(v - _EPOCH).days}</v></c>'
    return strings.fragment(str(v))


def _workbook_xml(sheets: Sequence[Sheet]) -> str:
    entries = "".join(f'<sheet name="{escape(s.title, {chr(34): "&quot;"})}" sheetId="{i}" r:id="rId{i}"/>'
                      for i, s in enumerate(sheets, start=1))
    names = "".join(
        f'<definedName name="_xlnm._FilterDatabase" localSheetId="{i}" hidden="1">'
        f"'{escape(s.title.replace(chr(39), chr(39) * 2))}'!$A$1:${column_letter(len(s.table.columns))}"
        f"${len(s.table) + 1}</definedName>"
        for i, s in enumerate(sheets) if len(s.table.columns) and s.autofilter)
    defined = f"<definedNames>{names}</definedNames>" if names else ""
    return (f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<workbook {_NS} {_RNS}>'
            f'<bookViews><workbookView/></bookViews><sheets>{entries}</sheets>{defined}</workbook>')


def _workbook_rels(n: int) -> str:
    rels = "".join(f'<Relationship Id="rId{i}" Type="{_OFFICE}/worksheet" Target="worksheets/sheet{i}.xml"/>'
                   for i in range(1, n + 1))
    rels += (f'<Relationship Id="rId{n + 1}" Type="{_OFFICE}/styles" Target="styles.xml"/>'
             f'<Relationship Id="rId{n + 2}" Type="{_OFFICE}/sharedStrings" Target="sharedStrings.xml"/>')
    return f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<Relationships xmlns="{_PKG}/relationships">{rels}</Relationships>'


def _content_types(n: int) -> str:
    sheets = "".join(f'<Override PartName="/xl/worksheets/sheet{i}.xml" ContentType="application/'
                     f'vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>' for i in range(1, n + 1))
    return (f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<Types xmlns="{_PKG}/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/xl/workbook.xml" ContentType="application/'
            'vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
            f"{sheets}"
            '<Override PartName="/xl/styles.xml" ContentType="application/'
            'vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"/>'
            '<Override PartName="/xl/sharedStrings.xml" ContentType="application/'
            'vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/>'
            "</Types>")
