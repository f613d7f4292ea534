"""Make any value safe for the format it is being written to, at the moment it is written.

Why at the writer and not when a file is read: the catalog keeps the raw value (a description with
a NUL in it is still what the PACS holds, and the evidence of what went wrong), while each output
format has its own rules, and a value it cannot hold must never crash the writer:

  xlsx   XML 1.0 forbids most C0 control characters (openpyxl raises IllegalCharacterError on
         them); lone surrogates cannot be encoded as UTF-8; a text starting with = is stored by
         openpyxl as a live formula, and one starting with =, +, - or @ becomes one when a user
         edits the cell. Cells hold at most 32,767 characters.
  CSV    the EDW reads it as data, so values stay as they are except for what no UTF-8 CSV reader
         handles: control characters (NUL, escape sequences...) and lone surrogates.
  HTML   escaped, and control characters replaced (browsers render them as garbage or drop them).
  JSON   control characters are escaped by the encoder itself; lone surrogates are replaced so the
         text can be written as UTF-8.
  terminal / log lines: control characters shown as escapes (an ANSI sequence in a study
         description must not repaint the operator's terminal).

A replaced character becomes U+FFFD (the Unicode replacement character), so a reader sees that
something was there.
"""

from __future__ import annotations

import html as _html
import re
from typing import Any

REPLACEMENT = "\ufffd"
XLSX_MAX = 32767
FORMULA_LEAD = ("=", "+", "-", "@")

_SURROGATES = re.compile(r"[\ud800-\udfff]")
# C0 controls except TAB, LF, CR (XML 1.0 allows those three), DEL, and the XML non-characters
_XML_ILLEGAL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]")
# for CSV/HTML also line breaks: a CR or LF inside a value breaks line-oriented readers
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ufffe\uffff]")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _clean(text: str, pattern: re.Pattern) -> str:
    text = _SURROGATES.sub(REPLACEMENT, text)
    return pattern.sub(REPLACEMENT, text)


def text(value: Any) -> str:
    """Any value as plain one-line text (None -> ''), control characters and lone surrogates replaced."""
    if value is None:
        return ""
    return _clean(value if isinstance(value, str) else str(value), _CONTROL)


def csv_value(value: Any) -> Any:
    """A CSV cell: strings cleaned, everything else unchanged (the csv module formats it)."""
    return _clean(value, _CONTROL) if isinstance(value, str) else value


def html_text(value: Any) -> str:
    """Escaped text for HTML element content or a quoted attribute."""
    return _html.escape(text(value))


def json_value(value: Any) -> Any:
    """A structure safe for `json.dumps(..., ensure_ascii=False)` and a UTF-8 file (dict keys too)."""
    if isinstance(value, str):
        return _SURROGATES.sub(REPLACEMENT, value)
    if isinstance(value, dict):
        return {json_value(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    return value


def terminal(value: Any, limit: int | None = None) -> str:
    """For log lines and console output: control characters and lone surrogates as visible escapes."""
    s = "" if value is None else (value if isinstance(value, str) else str(value))
    if not s.isprintable():
        s = "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                    if not 0xD800 <= ord(c) <= 0xDFFF else f"\\u{ord(c):04x}" for c in s)
    if limit is not None and len(s) > limit:
        s = s[:limit] + "…"
    return s


def xlsx_text(value: str) -> str:
    """The characters of a string cell: XML-illegal ones replaced, cut to Excel's cell limit."""
    s = _clean(value, _XML_ILLEGAL)
    return s if len(s) <= XLSX_MAX else s[:XLSX_MAX - 1] + "…"


def formula_like(value: str) -> bool:
    """True when Excel would read the text as a formula (numbers like -5 or +44 are not)."""
    return value.startswith(FORMULA_LEAD) and not _NUMBER.fullmatch(value)


def xlsx_cell(ws, value: Any) -> Any:
    """What to hand `ws.append` for one cell: the cleaned value, or a text cell for formula-like text.

    A formula-like string becomes an explicit string cell with Excel's quote prefix set: the value
    is stored exactly (no apostrophe added), shown as text, and stays text when a user edits it.
    """
    if not isinstance(value, str):
        return value
    s = xlsx_text(value)
    if not formula_like(s):
        return s
    from openpyxl.cell import WriteOnlyCell

    cell = WriteOnlyCell(ws, value=None)
    cell.value = s  # assigned, then typed: openpyxl would otherwise store it as a formula
    cell.data_type = "s"
    cell.quotePrefix = True
    return cell


def xlsx_row(ws, values) -> list:
    return [xlsx_cell(ws, v) for v in values]
