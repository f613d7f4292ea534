"""Logs under cron: one plain line per record, ISO timestamps, the run id, results on stdout.

Scenarios (from the issue): timestamps printed as `[12/01/26 18:40:02]`; piped to a file, lines
hard-wrapped at 80 columns (a UID split over lines); progress bars on stdout and the summary on
stderr; pynetdicom's own tracebacks for faults rtlake already handles.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import duckdb

from ingest import logsetup

# 2026-01-12T18:40:02.123+00:00 WARNING run=<id> ingest.run: ...
RECORD = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
                    r"run=(\S+) [\w.]+: \S")
RTLAKE = [sys.executable, "-m", "ingest.cli"]


def test_update_with_stderr_to_a_file_writes_one_line_per_record(fresh_demo, tmp_path):
    err = tmp_path / "stderr.log"
    logf = tmp_path / "cron.log"
    with err.open("w") as fh:
        r = subprocess.run([*RTLAKE, "-v", "--log-file", str(logf), "update", "-c", str(fresh_demo.config)],
                           stdout=subprocess.PIPE, stderr=fh, text=True, env={"PATH": "/usr/bin:/bin",
                           "COLUMNS": "80"}, cwd=tmp_path, timeout=600)
    text = err.read_text()
    assert r.returncode in (0, 3), text[-3000:]
    lines = text.splitlines()
    # the demo's two broken files are each reported once, on one line, without their path: a folder PACS
    # may name folders after patients, so the path stays in the catalog (issue 15)
    assert len(fresh_demo.broken) == 2
    assert len([line for line in lines if " index a file: " in line]) == 2, text
    for p in fresh_demo.broken:
        assert p.name not in text, (p, text)
    run_ids = set()
    for line in lines:
        m = RECORD.match(line)
        assert m, f"not a one-line record: {line!r}"
        run_ids.add(m.group(2))
    # no progress bar reached the file (bars only on a terminal), no traceback, no colour codes
    assert "━" not in text and "Traceback" not in text and "\x1b[" not in text
    # every record after the run started names it, and it is the run the catalog recorded
    con = duckdb.connect(str(fresh_demo.root / "state" / "catalog.duckdb"), read_only=True)
    (run_id,) = con.execute("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
    con.close()
    assert run_id in run_ids and run_ids <= {run_id, "-"}
    # the summary is a result: stdout
    assert f"rtlake update {run_id}" in r.stdout
    assert "rtlake update" not in text
    # the --log-file copy holds the same records (at least INFO), one line each
    file_lines = logf.read_text().splitlines()
    assert file_lines and all(RECORD.match(line) for line in file_lines)
    assert [line.split(" ", 1)[1] for line in file_lines] == [line.split(" ", 1)[1] for line in lines]


def test_library_tracebacks_are_dropped_ours_fold_to_one_line(capsys):
    logsetup.configure(0)
    logsetup.set_run_id("run-42")
    try:
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except ConnectionResetError as exc:
            # what pynetdicom's DUL thread does on a reset that rtlake then retries
            logging.getLogger("pynetdicom.dul").error("Connection closed before the entire PDU was received")
            logging.getLogger("pynetdicom.dul").exception(exc)
            logging.getLogger("ingest.sources.dimse").warning("study 1.2.3: C-FIND failed; retrying\nsecond line",
                                                              exc_info=True)
        err = capsys.readouterr().err
    finally:
        logsetup.set_run_id(None)
        logsetup.configure(0)
    assert "pynetdicom" not in err and "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert RECORD.match(lines[0]) and "run=run-42" in lines[0]
    assert lines[0].endswith("retrying \\n second line \\n ConnectionResetError: [Errno 104] Connection reset by peer")


def test_library_warnings_show_with_vv_but_never_debug(capsys):
    logsetup.configure(2)
    try:
        logging.getLogger("urllib3.connectionpool").warning("Retrying (Retry(total=2))")
        logging.getLogger("urllib3.connectionpool").debug("GET /data/subjects/9434765919 HTTP/1.1")
        err = capsys.readouterr().err
    finally:
        logsetup.configure(0)
    assert "Retrying" in err
    assert "9434765919" not in err  # library debug lines carry identifiers in URLs: never shown


def test_python_warnings_become_quiet_records(capsys):
    import warnings

    logsetup.configure(0)
    try:
        warnings.warn("Invalid value for VR PN: 'SMITH^JOHN'", UserWarning, stacklevel=1)
        assert capsys.readouterr().err == ""  # a library warning can quote a value: not by default
        logsetup.configure(2)
        warnings.warn("Invalid value for VR UI: '1.2.3.abc'", UserWarning, stacklevel=1)
        err = capsys.readouterr().err
    finally:
        logsetup.configure(0)
    lines = err.splitlines()
    assert len(lines) == 1 and RECORD.match(lines[0]) and "py.warnings" in lines[0], err


def test_iso_time_is_unambiguous():
    import datetime as dt

    t = dt.datetime(2026, 1, 12, 18, 40, 2, 123000, tzinfo=dt.timezone.utc).timestamp()
    text = logsetup.iso_time(t)
    assert re.fullmatch(r"2026-01-12T\d\d:40:02\.123[+-]\d\d:\d\d", text)
    assert dt.datetime.fromisoformat(text).timestamp() == t
