"""A pulled instance is validated once: the store's check of the file the pull just wrote is a look-up,
but only while the file is exactly what was written (any change is walked again, and caught)."""

from __future__ import annotations

import os
from pathlib import Path

from pydicom.data import get_testdata_file

from ingest import validate
from ingest.sources._files import ReceivedStudy


def _pulled(tmp_path):
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    v = validate.validate_bytes(data)
    rec = ReceivedStudy(tmp_path / "scratch", v.study_uid, "pacs")
    sop = rec.add_bytes(data, "test part")
    return rec.sops[sop], data


def test_an_untouched_pulled_file_is_not_walked_again(tmp_path, monkeypatch):
    path, _ = _pulled(tmp_path)
    walked = []
    real = validate.validate_bytes
    monkeypatch.setattr(validate, "validate_bytes", lambda buf: walked.append(1) or real(buf))
    assert validate.validate_file(path).ok and walked == []
    assert validate.validate_file(path).ok and walked == [1]  # used once: a second look walks the file


def test_a_changed_file_is_walked_and_caught(tmp_path):
    path, data = _pulled(tmp_path)
    damaged = data[:128] + b"DIXM" + data[132:]  # same size, no longer a Part 10 file
    cut = data[: len(data) // 2]
    st = os.stat(path)
    path.write_bytes(cut)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old mtime: the size differs
    assert validate.validate_file(path).check == "truncated"
    path2, _ = _pulled(tmp_path / "b")
    path2.write_bytes(damaged)  # same size, new mtime
    assert validate.validate_file(path2).check == "preamble"
