"""What log lines may say (ingest/pseudo/redact.py, UpdateRun.fail): no original UIDs while
pseudonymising, no file paths unless `logging.identifiers_in_logs` is on.

Cases, from how identifiers reach a log line:
  - a source, the transfer layer or the run names a study by its original UID, in the message,
    in an argument, or in the message of an exception logged with its traceback;
  - a store names the copy it got, by the pseudonymous UID: that one must stay as it is;
  - standard UIDs (SOP classes), version numbers and IP addresses are not UIDs of anybody;
  - a folder PACS names folders after patients (`SMITH_JOHN_9434765919/…`): an index failure
    is logged without its path, while the catalog keeps the whole path.
The expected pseudonymous UID is computed here from the documented rule (2.25.<first 128 bits of
HMAC-SHA256(key, "uid" ‖ 0x00 ‖ uid)>).
"""

from __future__ import annotations

import hashlib
import hmac
import logging

import pytest
from rich.progress import Progress

from ingest.catalog import Catalog
from ingest.config import load_config
from ingest.logsetup import OneLineFormatter
from ingest.pseudo.redact import pseudonymous_logs, public_paths, remember_pseudonyms
from ingest.run import UpdateRun

KEY = "rtlake-test-key-0123456789abcdef"
ORIGINAL = "1.2.826.0.1.3680043.99.1.1"
log = logging.getLogger("ingest.test_privacy_logs")


def by_rule(uid: str) -> str:
    d = hmac.new(KEY.encode(), b"uid\x00" + uid.encode(), hashlib.sha256).digest()
    return "2.25." + str(int.from_bytes(d[:16], "big"))


def _cfg(tmp_path, **over):
    (tmp_path / "rtlake.toml").write_text("[project]\nstate_dir = 'state'\n", encoding="utf-8")
    return load_config(tmp_path / "rtlake.toml", over)


def test_original_uids_become_the_lakes_pseudonymous_uids(tmp_path, pseudo_key, caplog):
    cfg = _cfg(tmp_path, **{"pseudo.enabled": True})
    already = by_rule("1.2.826.0.1.3680043.99.7.7")
    remember_pseudonyms([already])
    caplog.set_level(logging.DEBUG)
    with pseudonymous_logs(cfg):
        log.warning("study %s: partial transfer", ORIGINAL)
        log.warning(f"C-FIND series of study {ORIGINAL} failed")
        log.warning("the last one was %s.", ORIGINAL)  # a full stop after the UID
        log.info("lake: stored study %s", already)  # a store naming its pseudonymised copy
        log.info("SOP class 1.2.840.10008.5.1.4.1.1.2, Orthanc 1.10.1 at 192.168.100.200:8042")
        try:
            raise RuntimeError(f"study {ORIGINAL}: connection reset")
        except RuntimeError:
            log.exception("retrieve failed")
        record = caplog.records[-1]
    text = caplog.text
    assert ORIGINAL not in text
    assert text.count(by_rule(ORIGINAL)) >= 4 and f"the last one was {by_rule(ORIGINAL)}." in text
    assert f"stored study {already}" in text and by_rule(already) not in text
    assert "1.2.840.10008.5.1.4.1.1.2, Orthanc 1.10.1 at 192.168.100.200:8042" in text
    # the one-line log formatter formats the exception itself: cleaned there too
    line = OneLineFormatter().format(record)
    assert ORIGINAL not in line and f"RuntimeError: study {by_rule(ORIGINAL)}: connection reset" in line
    # outside the run, logging is as it was
    log.warning("after %s", ORIGINAL)
    assert f"after {ORIGINAL}" in caplog.text


def test_identifiers_in_logs_or_no_pseudonymisation_leaves_lines_alone(tmp_path, pseudo_key, caplog):
    caplog.set_level(logging.INFO)
    for over in ({"pseudo.enabled": True, "logging.identifiers_in_logs": True}, {}):
        with pseudonymous_logs(_cfg(tmp_path, **over)):
            log.info("study %s", ORIGINAL)
    assert caplog.text.count(ORIGINAL) == 2 and by_rule(ORIGINAL) not in caplog.text


def test_paths_are_cut_to_their_last_part():
    assert public_paths("cannot write /lake/P/9434765919/ACC1/scans/1/x.dcm: disk full") == \
        "cannot write …/x.dcm: disk full"
    assert public_paths(r"C:\pacs\SMITH_JOHN\a.dcm and /cohort.csv:12") == "…/a.dcm and /cohort.csv:12"
    assert public_paths("status 0xA801 (move destination unknown)") == "status 0xA801 (move destination unknown)"


@pytest.mark.parametrize("identifiers", [False, True])
def test_a_failed_file_is_logged_without_its_path_and_kept_whole_in_the_catalog(tmp_path, caplog, identifiers):
    cfg = _cfg(tmp_path, **{"logging.identifiers_in_logs": identifiers})
    cat = Catalog(tmp_path / "catalog.duckdb")
    path = "/pacs/SMITH_JOHN_9434765919/RJZ1234567/1.2.3.4.5.6.7.8.9.10.dcm"
    caplog.set_level(logging.DEBUG)
    try:
        run = UpdateRun(cfg, cat, Progress(disable=True))
        run.fail("index", path, "unreadable DICOM: truncated")
        run.fail("inputs", "/data/trust/HospitalID-NHSNumber.csv:12", "no NHS number: filed as NN_RJZ1")
        run.fail("store", "2.25.1", f"cannot write {path}: disk full")
        rows = dict(cat.execute("SELECT stage, target FROM failures").fetchall())
        reasons = [r[0] for r in cat.execute("SELECT reason FROM failures").fetchall()]
    finally:
        cat.close()
    assert rows["index"] == path and any(path in r for r in reasons)  # the catalog keeps it all
    text = caplog.text
    if identifiers:
        assert path in text
    else:
        assert "SMITH" not in text and "9434765919" not in text and "RJZ1234567" not in text
        assert "index a file: unreadable DICOM: truncated" in text
        assert "inputs …/HospitalID-NHSNumber.csv:12:" in text  # the operator's own input file, by name
        assert "cannot write …/1.2.3.4.5.6.7.8.9.10.dcm: disk full" in text
