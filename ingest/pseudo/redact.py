"""What log lines may say: no original UIDs while pseudonymising, no file paths unless allowed.

Why a log-record factory rather than care at every call site: with pseudonymisation on, every
original Study/Series/SOP Instance UID is an identifier (the PACS answers who it belongs to),
and the lines naming them come from many modules — sources, the transfer layer, the run,
segmentation fix-ups — and from libraries. While an update run is inside `pseudonymous_logs`,
each record's text has every instance UID replaced by the pseudonymous UID the store holds
for it: the same keyed rule as the files, so a log line still names the study an operator
finds in the lake, and the catalog (`rtlake failures list`) or `rtlake pseudo lookup` leads
back. UIDs that already are pseudonyms (made in this process: a store names the copy it got)
and well-known UIDs (SOP classes, transfer syntaxes) are left as they are.
`logging.identifiers_in_logs = true` turns it off.

File paths are the other leak: a folder PACS names folders after patients, and an identified
lake names them by NHS number and accession. `public_paths` cuts every absolute path in a
text to its last part; the catalog keeps the whole path.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import traceback
from collections.abc import Iterable, Iterator

from .keys import PseudoKey, check_uid_root, load_key
from .uids import is_well_known

#: A dotted-number token of at least three components and 16 characters: every real UID, never
#: an IPv4 address (at most 15), a version number or a decimal.
_UID = re.compile(r"(?<![\w.])[0-2](?:\.\d+){2,}(?!\w|\.\d)")  # a full stop may end the sentence
_MIN_UID_LEN = 16
#: Pseudonymous UIDs remembered so they are not remapped a second time (bounded: past this,
#: a store message naming a pseudonymous SOP UID shows another, still non-identifying, UID).
_MAX_REMEMBERED = 500_000

_lock = threading.Lock()
_remembered: set[str] = set()


def remember_pseudonyms(uids: Iterable[str]) -> None:
    """Note UIDs this process produced as pseudonyms (they may be logged as they are)."""
    with _lock:
        for u in uids:
            if len(_remembered) >= _MAX_REMEMBERED:
                return
            _remembered.add(u)


class UidRedactor:
    """Replaces original instance UIDs in a text by their pseudonyms under `root`."""

    def __init__(self, key: PseudoKey, root: str) -> None:
        self.key = key
        self.root = check_uid_root(root)

    def uid(self, uid: str) -> str:
        if len(uid) < _MIN_UID_LEN or is_well_known(uid) or uid in _remembered:
            return uid
        return self.key.uid(uid, self.root)

    def __call__(self, text: str) -> str:
        return _UID.sub(lambda m: self.uid(m.group(0)), text)


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s\\/:'\"]+)+[\\/]([^\s\\/:'\"]+)")


def public_paths(text: str) -> str:
    """Absolute paths cut to their last part: `/lake/P/9434765919/ACC1/x.dcm` → `…/x.dcm`."""
    return _PATH.sub(r"…/\1", text)


def looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text


def _clean_exc(exc_info, redact: UidRedactor):
    """The exception of a record as its formatters will show it, with the UIDs replaced.

    Formatters print `exc_text` when set, or format `exc_info` themselves (the one-line log
    formatter does): both are replaced. The stand-in exception has the original's class name
    and module, and the cleaned message.
    """
    etype, value, tb = exc_info
    text = redact("".join(traceback.format_exception(etype, value, tb)).rstrip("\n"))
    message = redact(str(value))
    if message == str(value):
        return exc_info, text
    stand_in = type(etype.__name__, (Exception,), {"__module__": etype.__module__,
                                                   "__str__": lambda self: message})
    return (stand_in, stand_in().with_traceback(tb), tb), text


@contextlib.contextmanager
def pseudonymous_logs(cfg, always: bool = False) -> Iterator[UidRedactor | None]:
    """Within the block, every log record's text names pseudonymous UIDs only (see module doc).

    A no-op when pseudonymisation is off (unless `always`: `rtlake pseudo run` pseudonymises
    whatever the config says) or `logging.identifiers_in_logs` is on.

    Raises:
        ConfigError: the key is not set (checked before any record is touched).
    """
    if not (cfg.pseudo.enabled or always) or cfg.logging.identifiers_in_logs:
        yield None
        return
    redact = UidRedactor(load_key(cfg.pseudo.key_env), cfg.pseudo.uid_root)
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string is left for the handler to report
            return record
        clean = redact(text)
        if clean != text:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_info, record.exc_text = _clean_exc(record.exc_info, redact)
        return record

    logging.setLogRecordFactory(factory)
    try:
        yield redact
    finally:
        if logging.getLogRecordFactory() is factory:
            logging.setLogRecordFactory(previous)
