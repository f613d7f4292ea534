"""A forgiving JSON reader for failure lists pasted by hand.

The CSC failure lists arrive as JSON copied through e-mail, Excel and text editors: quotes
doubled by CSV escaping, line breaks inside keys and values, trailing or missing commas,
single-quoted strings, bare keys. A regex over such text silently drops whatever it does not
match; this is a small tokenizer and recursive-descent parser that accepts those slips, knows
the line of every value, and raises with a line number when it really cannot go on — so the
caller can resume at the next object and report the fragment it skipped.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Any


class LenientJSONError(ValueError):
    def __init__(self, message: str, pos: int) -> None:
        super().__init__(message)
        self.pos = pos


@dataclass
class Located:
    """A parsed value with the offset of its first character (line numbers come from it)."""

    value: Any
    start: int
    end: int


_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][+-]?\d+)?")
_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-\.]*")
_WS = " \t\r\n\f\v\ufeff\u00a0"


class LenientParser:
    """Parse values out of `text`; `parse_at(pos)` reads one value starting at `pos`."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.n = len(text)
        self._lines = [m.start() for m in re.finditer("\n", text)]
        #: id(dict) → offset of its `{`, so callers can give each nested object its own line.
        self.obj_start: dict[int, int] = {}

    def line_of(self, pos: int) -> int:
        return bisect.bisect_left(self._lines, pos) + 1

    # -- scanning ---------------------------------------------------------------
    def _skip_ws(self, i: int) -> int:
        t, n = self.text, self.n
        while i < n and t[i] in _WS:
            i += 1
        return i

    def parse_at(self, pos: int) -> Located:
        i = self._skip_ws(pos)
        value, end = self._value(i, depth=0)
        return Located(value, i, end)

    def _value(self, i: int, depth: int) -> tuple[Any, int]:
        if depth > 64:
            raise LenientJSONError("nested too deeply", i)
        i = self._skip_ws(i)
        if i >= self.n:
            raise LenientJSONError("text ends where a value was expected (truncated?)", i)
        c = self.text[i]
        if c == "{":
            return self._object(i + 1, depth + 1)
        if c == "[":
            return self._array(i + 1, depth + 1)
        if c in "\"'":
            return self._string(i)
        m = _NUMBER.match(self.text, i)
        if m:
            s = m.group(0)
            # Keep digit strings as text: long IDs must never become floats.
            return s, m.end()
        m = _BARE.match(self.text, i)
        if m:
            word = m.group(0)
            low = word.lower()
            if low in ("true", "false"):
                return low == "true", m.end()
            if low in ("null", "none", "nan"):
                return None, m.end()
            return word, m.end()
        raise LenientJSONError(f"unexpected character {c!r}", i)

    def _string(self, i: int) -> tuple[str, int]:
        q = self.text[i]
        out: list[str] = []
        j = i + 1
        t, n = self.text, self.n
        while j < n:
            c = t[j]
            if c == "\\" and j + 1 < n:
                nxt = t[j + 1]
                simple = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/", "\\": "\\", '"': '"', "'": "'"}
                if nxt in simple:
                    out.append(simple[nxt])
                    j += 2
                    continue
                if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", t[j + 2 : j + 6] or ""):
                    code = int(t[j + 2 : j + 6], 16)
                    j += 6
                    if 0xD800 <= code <= 0xDBFF and t[j : j + 2] == "\\u" and \
                            re.fullmatch(r"[dD][c-fC-F][0-9a-fA-F]{2}", t[j + 2 : j + 6] or ""):
                        # a surrogate pair (json.dumps writes astral characters so): one character
                        code = 0x10000 + ((code - 0xD800) << 10) + (int(t[j + 2 : j + 6], 16) - 0xDC00)
                        j += 6
                    # a lone surrogate cannot be stored (UTF-8 only): the replacement character
                    out.append("\ufffd" if 0xD800 <= code <= 0xDFFF else chr(code))
                    continue
                out.append(c)
                j += 1
                continue
            if c == q:
                return "".join(out), j + 1
            if c in "{}[]" and "\n" in t[i:j] and q == '"':
                # A string that runs over a line break into structure lost its closing quote.
                break
            out.append(c)
            j += 1
        raise LenientJSONError("string is not closed", i)

    def _key(self, i: int) -> tuple[str, int]:
        i = self._skip_ws(i)
        if i < self.n and self.text[i] in "\"'":
            return self._string(i)
        m = _BARE.match(self.text, i)
        if m:
            return m.group(0), m.end()
        if i >= self.n:
            raise LenientJSONError("text ends inside an object (truncated?)", i)
        raise LenientJSONError(f"expected a key, found {self.text[i]!r}", i)

    def _object(self, i: int, depth: int) -> tuple[dict, int]:
        obj: dict[str, Any] = {}
        self.obj_start[id(obj)] = i - 1
        while True:
            i = self._skip_ws(i)
            while i < self.n and self.text[i] == ",":  # stray or trailing commas
                i = self._skip_ws(i + 1)
            if i >= self.n:
                raise LenientJSONError("text ends inside an object (truncated?)", i)
            if self.text[i] == "}":
                return obj, i + 1
            key, i = self._key(i)
            i = self._skip_ws(i)
            if i < self.n and self.text[i] in ":=":
                i += 1
            else:
                raise LenientJSONError(f"expected ':' after key {key[:40]!r}", i)
            value, i = self._value(i, depth)
            obj[key] = value
            i = self._skip_ws(i)
            if i < self.n and self.text[i] not in ",}":
                # A missing comma is tolerated only before something that starts a key.
                if self.text[i] not in "\"'" and not _BARE.match(self.text, i):
                    raise LenientJSONError(f"expected ',' or '}}', found {self.text[i]!r}", i)

    def _array(self, i: int, depth: int) -> tuple[list, int]:
        arr: list[Any] = []
        while True:
            i = self._skip_ws(i)
            while i < self.n and self.text[i] == ",":
                i = self._skip_ws(i + 1)
            if i >= self.n:
                raise LenientJSONError("text ends inside a list (truncated?)", i)
            if self.text[i] == "]":
                return arr, i + 1
            value, i = self._value(i, depth)
            arr.append(value)
            i = self._skip_ws(i)
            if i < self.n and self.text[i] not in ",]":
                if self.text[i] not in "{[\"'":
                    raise LenientJSONError(f"expected ',' or ']', found {self.text[i]!r}", i)


_DOUBLED = re.compile(r'""\s*[A-Za-z_][A-Za-z0-9_ ]*""\s*:')


def undouble_quotes(text: str) -> str:
    """Undo CSV quote doubling when the text shows it (`""key"": ""value""`); else unchanged."""
    if _DOUBLED.search(text):
        return text.replace('""', '"')
    return text
