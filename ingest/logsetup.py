"""How rtlake's log lines look, and where they go: the one place the CLI configures logging.

Why it exists: logs are read in two very different places. At a terminal an operator wants
colour and progress bars; under cron the same lines land in a file that is grepped later, where
a record wrapped over five lines (splitting a UID) or a `12/01/26` date (12 January or
1 December?) is worse than useless. So:

- every record carries an ISO-8601 timestamp with UTC offset and the id of the run it belongs
  to (`set_run_id`, called by whatever starts a run);
- when stderr is not a terminal, or for `--log-file`, each record is exactly one line: no
  wrapping, no colour, newlines inside a message escaped, a traceback folded to its last line;
- third-party libraries (pynetdicom, urllib3, xnat, …) are silent unless -vv (then warnings
  and errors, still without tracebacks unless -vvv): rtlake catches, retries and reports those
  faults itself, in its own words. Their debug output (URLs, datasets) can carry patient
  identifiers, so it is never enabled;
- progress bars go to stderr and only to a terminal (`bars_wanted`).

Results (tables, summaries, paths written) are not logs: commands print them on stdout.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from pathlib import Path

from rich.console import Console

#: Loggers of libraries rtlake calls: silent by default, WARNING with -vv, never DEBUG.
THIRD_PARTY = ("pynetdicom", "pydicom", "urllib3", "requests", "xnat", "distributed", "asyncio", "dask",
               "matplotlib", "PIL", "fsspec", "tornado", "SimpleITK", "py.warnings")
#: Our own packages: the only ones whose tracebacks are ever shown (and then only with -vv).
OWN = ("ingest", "reporting", "criteria")

_run_id: str | None = None
_handlers: list[logging.Handler] = []

#: One stderr console for messages, warnings and progress bars. soft_wrap: rich never inserts
#: line breaks of its own (a long path stays on one line, in a file as on a terminal).
err_console = Console(stderr=True, soft_wrap=True, highlight=False)


def set_run_id(run_id: str | None) -> None:
    """Tag every later log record with this run id (None: no run). A process runs one run at a
    time, and a run's worker threads must carry its id too, so this is process-wide rather than
    a context variable (thread pools do not copy contexts)."""
    global _run_id
    _run_id = run_id


def current_run_id() -> str | None:
    return _run_id


class _RunIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = _run_id or "-"
        return True


class _QuietThirdParty(logging.Filter):
    """Drop tracebacks of records from libraries: the fault is handled (and logged) by rtlake."""

    def __init__(self, keep_tracebacks: bool) -> None:
        super().__init__()
        self.keep = keep_tracebacks

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.keep and not record.name.startswith(OWN):
            record.exc_info = None
            record.exc_text = None
            record.stack_info = None
        return True


class OneLineFormatter(logging.Formatter):
    """`2026-01-12T18:40:02.123+00:00 WARNING run=<id> ingest.run: message` — always one line."""

    def __init__(self, tracebacks: bool = False) -> None:
        super().__init__("%(asctime)s %(levelname)s run=%(run_id)s %(name)s: %(message)s")
        self.tracebacks = tracebacks

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return iso_time(record.created)

    def formatException(self, ei) -> str:  # noqa: N802
        if self.tracebacks:
            return super().formatException(ei)
        return f"{ei[0].__name__}: {ei[1]}" if ei and ei[0] else ""

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "run_id"):
            record.run_id = _run_id or "-"
        # another handler may have cached a full traceback on the record: format our own
        saved, record.exc_text = record.exc_text, None
        try:
            text = super().format(record)
        finally:
            record.exc_text = saved
        return text.replace("\r", "\\r").replace("\n", " \\n ")


def iso_time(created: float) -> str:
    """Local time, ISO 8601 with milliseconds and UTC offset (unambiguous in any country)."""
    return dt.datetime.fromtimestamp(created).astimezone().isoformat(timespec="milliseconds")


def stderr_is_terminal() -> bool:
    return err_console.is_terminal


def bars_wanted(show: bool = True) -> bool:
    """Progress bars only when asked for and stderr is a terminal (never in a log file)."""
    return show and stderr_is_terminal()


def level_for(verbose: int) -> int:
    return {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)


def configure(verbose: int = 0, log_file: Path | None = None) -> None:
    """Install rtlake's handlers on the root logger (replacing any installed before).

    `verbose`: 0 warnings, 1 info, 2 debug with our own tracebacks and library warnings,
    3 also library tracebacks.
    `log_file`: also append one-line records (at least INFO) to this file, for cron.
    """
    root = logging.getLogger()
    for h in _handlers:
        root.removeHandler(h)
        h.close()
    _handlers.clear()
    level = level_for(verbose)
    tracebacks = verbose >= 2

    if stderr_is_terminal():
        from rich.logging import RichHandler

        console: logging.Handler = RichHandler(
            console=err_console, show_path=False, rich_tracebacks=False, markup=False,
            log_time_format=lambda t: t.astimezone().isoformat(timespec="seconds"),
            omit_repeated_times=False)
        console.setFormatter(logging.Formatter("run=%(run_id)s %(name)s: %(message)s"))
    else:
        console = logging.StreamHandler(_StderrProxy())
        console.setFormatter(OneLineFormatter(tracebacks))
    console.setLevel(level)
    _handlers.append(console)

    if log_file is not None:
        log_file = Path(log_file)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file, encoding="utf-8")
        fh.setFormatter(OneLineFormatter(tracebacks))
        fh.setLevel(min(level, logging.INFO))
        _handlers.append(fh)

    for h in _handlers:
        h.addFilter(_RunIdFilter())
        h.addFilter(_QuietThirdParty(keep_tracebacks=verbose >= 3))
        root.addHandler(h)
    root.setLevel(min(h.level for h in _handlers))
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.WARNING if verbose >= 2 else logging.CRITICAL + 1)
    # Python warnings (pydicom's "Invalid value for VR …", which can quote a tag's value) would
    # print as two raw lines on stderr; as records they are one line, held with the libraries.
    logging.captureWarnings(False)  # (re)install even if someone swapped warnings.showwarning since
    logging.captureWarnings(True)


class _StderrProxy:
    """Writes to whatever sys.stderr is at the time (test runners swap it)."""

    def write(self, s: str) -> int:
        return sys.stderr.write(s)

    def flush(self) -> None:
        sys.stderr.flush()
