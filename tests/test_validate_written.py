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


def test_a_failed_write_leaves_nothing_that_counts_as_received(tmp_path, monkeypatch):
    """Disk full in the middle of an instance: the error reaches the caller, no file is left under
    the instance's name, and the SOP is not listed as received (a retry fetches it again)."""
    import errno

    import pytest

    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    v = validate.validate_bytes(data)
    rec = ReceivedStudy(tmp_path / "scratch", v.study_uid, "pacs")
    real_write = os.write

    def short_then_full(fd, buf):
        if len(buf) == len(data):
            return real_write(fd, bytes(buf[:1000]))  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_full)
    with pytest.raises(OSError):
        rec.add_bytes(data, "part")
    monkeypatch.undo()
    assert list((tmp_path / "scratch").iterdir()) == []
    assert rec.settled == set() and rec.files == []
    assert rec.add_bytes(data, "part again") == v.sop_uid  # the retry writes it whole
    assert rec.files[0].read_bytes() == data


def test_the_same_instance_arriving_twice_at_once_is_written_once(tmp_path):
    """Two threads deliver one SOP at the same moment (identical bytes, then a different version):
    one writer at a time, the copy is recognised, the other version is held back as a conflict."""
    import threading

    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    v = validate.validate_bytes(data)
    other = bytearray(data)
    other[-1] ^= 0xFF  # last pixel byte: still whole and valid, other content
    for second, conflicts in ((data, 0), (bytes(other), 1)):
        rec = ReceivedStudy(tmp_path / f"s{conflicts}", v.study_uid, "pacs")
        go = threading.Barrier(2)

        def deliver(buf, rec=rec, go=go):
            go.wait()
            rec.add_bytes(buf, "part")

        ts = [threading.Thread(target=deliver, args=(b,)) for b in (data, second)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert len(rec.conflicts) == conflicts
        if conflicts:
            assert rec.files == [] and rec.settled == {v.sop_uid}  # neither kept, not fetched again
        else:
            assert [f.read_bytes() for f in rec.files] == [data]
