"""Date parsing with an explicit list of formats.

The old sheet builder let pandas guess, so YYYYMMDD integers became nanoseconds after 1970.
Here each accepted spelling is listed; anything else is an error the caller reports with its
file and line. Day-first is the UK reading of `03/04/2024`.
"""

from __future__ import annotations

import datetime as dt
import re

#: Formats tried in order. ISO first; day-first slashes/dashes/dots (UK); DICOM YYYYMMDD.
DATE_FORMATS: tuple[str, ...] = (
    "%Y-%m-%d",
    "%Y%m%d",
    "%d/%m/%Y",
    "%d-%m-%Y",
    "%d.%m.%Y",
    "%Y/%m/%d",
    "%d/%m/%y",
    "%d-%b-%Y",
    "%d %b %Y",
)

_TIME_TAIL = re.compile(r"[T ]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$")
_FLOAT_INT = re.compile(r"^(\d{8})\.0+$")


def parse_date(value: object) -> dt.date | None:
    """A date from text, an 8-digit integer, or a date/datetime; None for blank.

    Raises:
        ValueError: the value matches none of DATE_FORMATS (the message quotes the value's shape,
            not the value, in case a column holds something private).
    """
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, float):
        if value != value:  # NaN
            return None
        if value.is_integer():
            value = int(value)
    text = str(value).strip().strip('"').strip()
    if text == "" or text.lower() in {"nan", "nat", "none", "null", "n/a"}:
        return None
    m = _FLOAT_INT.match(text)
    if m:
        text = m.group(1)
    text = _TIME_TAIL.sub("", text).strip()
    for fmt in DATE_FORMATS:
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise ValueError(f"unrecognised date {_shape(text)!r} (expected e.g. 2024-03-01, 20240301 or 01/03/2024)")


def _shape(text: str) -> str:
    """`12/3x/2024` → `99/9x/9999`: enough to see the format problem without echoing data."""
    return re.sub(r"\d", "9", text)[:40]
