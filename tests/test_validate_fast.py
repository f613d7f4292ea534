"""The C walk (ingest/_dicomwalk.c) against the Python walk it transcribes (ingest/validate.py).

The C walk is only a fast path: it must accept exactly what the Python walk accepts and keep the
same values, and on anything else give up so the Python walk names the fault. The reference here
is the Python walk (itself tested against the standard in test_damaged_validate.py), run on:

  1. every DICOM file pydicom ships for its own tests (DCMTK, GDCM, pydicom writers; good and damaged),
  2. the damaged-file corpus of issue 19 (tests/damaged_corpus.py) and tests/data/badinput,
  3. seeded byte-level mutations of a few structurally rich files (sequences of defined and
     undefined length, RLE fragments, implicit VR, big endian, RT plans): flipped bytes, cut files,
     lengths overwritten with 0, 0xFFFFFFFF and item tags, inserted bytes,

each walked in every encoding (explicit/implicit VR, little/big endian), so both accepting and
faulting paths of both walkers are compared on the same bytes.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
import pydicom.data

from ingest import validate
from tests.damaged_corpus import make_corpus

ENCODINGS = [(True, True), (False, True), (True, False)]  # (explicit, little)
ROOT = Path(__file__).parent
PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"  # what the wheel ships (no downloads here)

pytestmark = pytest.mark.skipif(validate._fast is None and validate.os.environ.get("RTLAKE_PURE_VALIDATOR") == "1",
                                reason="RTLAKE_PURE_VALIDATOR=1: the C walk is switched off")


def test_the_c_walk_is_built_and_used():
    """`make install` builds ingest/_dicomwalk.c; if it silently did not, the pull is 4x slower."""
    assert validate.WALKER == "c", "ingest._dicomwalk is not built: run `make install` (needs gcc and Python headers)"


def py_walk(buf: bytes, start: int, explicit: bool, little: bool):
    w = validate._Walker(buf, explicit, little)
    try:
        w.dataset(start, len(buf))
    except validate._Bad:
        return None
    return [(lv.values, lv.pixel, lv.encapsulated, lv.other_data) for lv in w.levels]


def c_walk(buf: bytes, start: int, explicit: bool, little: bool):
    got = validate._fast.walk(buf, start, len(buf), explicit, little)
    return None if got is None else [tuple(lv) for lv in got]


def py_meta(buf: bytes):
    try:
        return validate._meta(buf)
    except validate._Bad:
        return None


def dataset_start(buf: bytes) -> int:
    """Where the data set begins: after the meta group, or 0 for a file without one (raw data set)."""
    if len(buf) >= 132 and buf[128:132] == b"DICM":
        try:
            return validate._meta(buf)[0]
        except validate._Bad:
            return 132
    return 0


def compare(buf: bytes, what: str, monkeypatch, encodings=ENCODINGS) -> tuple[int, int]:
    """Both walks on each encoding; returns (accepted, faulted) counts."""
    ok = bad = 0
    start = dataset_start(buf)
    for explicit, little in encodings:
        want, got = py_walk(buf, start, explicit, little), c_walk(buf, start, explicit, little)
        assert got == want, f"{what}: the walks differ (explicit={explicit}, little={little})"
        ok += want is not None
        bad += want is None
    if len(buf) >= 132 and buf[128:132] == b"DICM":
        with monkeypatch.context() as m:
            m.setattr(validate, "_fast", None)
            want_meta = py_meta(buf)
        got_meta = validate._fast.meta(buf)
        assert got_meta == want_meta, f"{what}: the file meta readings differ"
    return ok, bad


def verdicts_agree(buf: bytes, what: str, monkeypatch) -> None:
    fast = validate.validate_bytes(buf)
    with monkeypatch.context() as m:
        m.setattr(validate, "_fast", None)
        slow = validate.validate_bytes(buf)
    assert fast == slow, what
    assert fast.series_values == slow.series_values, what


def _dicom_files(paths) -> list[Path]:
    out = []
    for p in map(Path, paths):
        if p.is_file() and p.stat().st_size < 20_000_000:
            head = p.read_bytes()[:132]
            if head[128:132] == b"DICM" or p.suffix.lower() == ".dcm":
                out.append(p)
    return out


def test_pydicom_test_files_walk_alike(monkeypatch):
    files = _dicom_files(sorted(PYDICOM_FILES.rglob("*")))
    assert len(files) > 60  # the pydicom 3 wheel ships ~80: the comparison covers real writers
    ok = bad = 0
    for f in files:
        buf = f.read_bytes()
        a, b = compare(buf, f.name, monkeypatch)
        ok, bad = ok + a, bad + b
        verdicts_agree(buf, f.name, monkeypatch)
    assert ok > 50 and bad > 50  # both walkers' accepting and faulting paths were compared


def test_damaged_corpus_and_badinput_walk_alike(tmp_path, monkeypatch):
    corpus = make_corpus(tmp_path / "demo", n_patients=3, seed=41, n_damaged=80)
    files = [d.path for d in corpus.damaged] + corpus.good[:40] + corpus.extra_good
    files += _dicom_files(sorted((ROOT / "data" / "badinput").rglob("*")))
    checks = set()
    for f in files:
        buf = f.read_bytes()
        compare(buf, str(f.relative_to(tmp_path) if f.is_relative_to(tmp_path) else f.name), monkeypatch)
        verdicts_agree(buf, f.name, monkeypatch)
        checks.add(validate.validate_bytes(buf).check)
    assert {"truncated", "parse", "encoding", "uid", "pixel_data", "fragments"} <= checks


SEEDS = ["rtplan.dcm", "rtstruct.dcm", "rtdose.dcm", "MR_small_RLE.dcm", "MR_small_implicit.dcm",
         "MR_small_bigendian.dcm", "CT_small.dcm", "JPEG2000.dcm", "nested_priv_SQ.dcm", "UN_sequence.dcm"]
SPECIAL = [b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\xfe\xff\x00\xe0", b"\xfe\xff\x0d\xe0", b"\xfe\xff\xdd\xe0",
           b"SQ\x00\x00", b"UN\x00\x00", b"OB\x00\x00"]


@pytest.mark.parametrize("name", SEEDS)
def test_mutations_walk_alike(name, monkeypatch):
    path = PYDICOM_FILES / name
    if not path.is_file():
        pytest.skip(f"this pydicom wheel does not ship {name}")
    seed = path.read_bytes()
    rng = random.Random(name)
    start = dataset_start(seed)
    # mutate where the structure is: element headers and sequence items, not deep inside pixel data
    span = min(len(seed), start + 4000)
    ok = bad = 0
    for k in range(400):
        buf = bytearray(seed)
        how = k % 4
        at = rng.randrange(128, span)
        if how == 0:
            buf[at] ^= 1 << rng.randrange(8)
        elif how == 1:
            del buf[rng.randrange(start, len(buf)):]
        elif how == 2:
            buf[at:at + 4] = rng.choice(SPECIAL)
        else:
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.choice((1, 2, 4, 8))))
        a, b = compare(bytes(buf), f"{name} mutation {k} ({('flip', 'cut', 'special', 'insert')[how]} at {at})",
                       monkeypatch)
        ok, bad = ok + a, bad + b
        if k % 8 == 0:
            verdicts_agree(bytes(buf), f"{name} mutation {k}", monkeypatch)
    # every length field nudged by -2..+2 (where the explicit VR little endian headers are: found by
    # _length_fields, which only aims the mutations; the two walkers are the ones judged)
    for at, size in _length_fields(seed, start):
        fmt = "<H" if size == 2 else "<I"
        for d in (-2, -1, 1, 2):
            buf = bytearray(seed)
            v = struct.unpack_from(fmt, buf, at)[0] + d
            if 0 <= v < (0xFFFF if size == 2 else 0xFFFFFFFF):
                struct.pack_into(fmt, buf, at, v)
                a, b = compare(bytes(buf), f"{name}: length at byte {at} {d:+d}", monkeypatch, ENCODINGS[:1])
                ok, bad = ok + a, bad + b
        # and the header it belongs to rewritten: an item tag turned into a delimiter, an element's
        # VR turned into a sequence, UN, OB or no VR, its length made undefined
        head = at - 4 if size == 4 and seed[at - 4:at - 2] == b"\xfe\xff" else (at - 6 if size == 2 else at - 8)
        swaps = ([(head, t) for t in (b"\xfe\xff\xdd\xe0", b"\xfe\xff\x0d\xe0", b"\xfe\xff\x00\xe0")]
                 if head == at - 4 else [(head + 4, vr) for vr in (b"SQ", b"UN", b"OB", b"XX")])
        swaps.append((at, b"\xff\xff\xff\xff"[:size]))
        for where, new_bytes in swaps:
            buf = bytearray(seed)
            buf[where:where + len(new_bytes)] = new_bytes
            a, b = compare(bytes(buf), f"{name}: header at byte {head} given {new_bytes!r}", monkeypatch, ENCODINGS[:1])
            ok, bad = ok + a, bad + b
    assert ok and bad  # the mutations reach both outcomes


def _length_fields(data: bytes, pos: int, end: int | None = None, limit: int = 400) -> list[tuple[int, int]]:
    """(offset, size) of the length fields of explicit VR little endian element and item headers,
    walking into sequences; stops quietly at anything it does not understand (the seeds are good)."""
    end = len(data) if end is None else end
    out: list[tuple[int, int]] = []
    while pos + 8 <= end and len(out) < limit:
        group, elem = struct.unpack_from("<HH", data, pos)
        if group == 0xFFFE:  # an item (or a delimiter) inside a sequence
            out.append((pos + 4, 4))
            length = struct.unpack_from("<I", data, pos + 4)[0]
            if elem != 0xE000 or length == 0xFFFFFFFF:
                pos += 8
                continue
            out += _length_fields(data, pos + 8, pos + 8 + length, limit - len(out))
            pos += 8 + length
            continue
        vr = data[pos + 4:pos + 6]
        if vr in validate._SHORT_VRS:
            out.append((pos + 6, 2))
            pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]
        elif vr in validate._LONG_VRS:
            out.append((pos + 8, 4))
            length = struct.unpack_from("<I", data, pos + 8)[0]
            pos += 12 if vr == b"SQ" or length == 0xFFFFFFFF else 12 + length
        else:
            break
    return out


def test_deep_nesting_gives_up_like_python(monkeypatch):
    """Sequences nested past MAX_DEPTH: both walks refuse, at the same depth."""
    item_of = lambda body: struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body  # noqa: E731
    body = b""
    for _ in range(validate.MAX_DEPTH + 5):
        body = struct.pack("<HH2sHI", 0x0008, 0x1115, b"SQ", 0, len(item_of(body))) + item_of(body)
    assert py_walk(body, 0, True, True) is None
    assert c_walk(body, 0, True, True) is None
    shallow = b""
    for _ in range(validate.MAX_DEPTH - 1):
        shallow = struct.pack("<HH2sHI", 0x0008, 0x1115, b"SQ", 0, len(item_of(shallow))) + item_of(shallow)
    assert c_walk(shallow, 0, True, True) == py_walk(shallow, 0, True, True) is not None
