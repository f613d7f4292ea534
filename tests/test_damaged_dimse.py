"""DIMSE: the built-in storage SCP answers a C-STORE of a damaged data set with a failure status and
records it; whole instances are accepted (issue #19).

The SCU is pynetdicom sending each file as it is on disk (`send_c_store(path)` with
`STORE_SEND_CHUNKED_DATASET`: the data set bytes go out without being decoded and re-encoded, which
would heal some damage), so it reaches the SCP exactly as a PACS holding the file would send it.
"""

from __future__ import annotations

import pytest
from pynetdicom import AE

from ingest.sources._files import ReceivedStudy
from ingest.sources.dimse import STORE_DAMAGED, _MoveRouter
from tests.damaged_corpus import make_corpus

# damage whose file meta is intact, so an SCU can still send it (the rest never leaves a PACS over DIMSE)
SENDABLE = {"truncated_random", "truncated_in_pixels", "cut_before_pixels", "pixels_short", "flip_vr", "flip_tag",
            "flip_length", "flip_rows", "flip_uid_SOPInstanceUID", "flip_uid_SeriesInstanceUID",
            "lying_ts_implicit", "lying_ts_explicit_for_implicit", "lying_ts_native_for_rle", "rle_item_tag",
            "rle_segments", "rle_bot", "rle_no_delimiter", "truncated_in_rle_pixels"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("damaged-dimse") / "demo", n_patients=3, seed=31)


def _send(port: int, paths) -> list[int]:
    import pydicom

    ae = AE("DAMAGEDSCU")
    metas = [pydicom.dcmread(p, stop_before_pixels=True).file_meta for p in paths]
    for cx in {(str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID)) for m in metas}:
        ae.add_requested_context(cx[0], [cx[1]])
    assoc = ae.associate("127.0.0.1", port, ae_title="RTLAKE")
    assert assoc.is_established
    try:
        return [assoc.send_c_store(p).Status for p in paths]
    finally:
        assoc.release()


def test_storage_scp_refuses_damaged_data_sets_and_records_them(corpus, tmp_path, monkeypatch):
    from pynetdicom import _config

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    by_study: dict[str, list] = {}
    for d in corpus.damaged:
        if d.kind in SENDABLE:
            by_study.setdefault(d.original_study_uid, []).append(d)
    assert sum(len(v) for v in by_study.values()) >= 12
    router = _MoveRouter("RTLAKE", 0, True, "testpacs", idle_timeout=10)
    try:
        for study, damaged in sorted(by_study.items()):
            good = [f for f in corpus.ingested_good if f.parent.parent.name == study]
            rec = ReceivedStudy(tmp_path / study, study, "testpacs")
            with router.lock:
                router.active[study] = rec
            statuses = _send(router.port, [d.path for d in damaged] + good)
            with router.lock:
                router.active.pop(study)
            # every damaged data set: failure status; every whole one: success
            assert statuses[:len(damaged)] == [STORE_DAMAGED] * len(damaged), [d.kind for d in damaged]
            assert statuses[len(damaged):] == [0x0000] * len(good)
            # each refusal recorded with the check the damage calls for, none stored
            got = sorted((r.check for r in rec.refused))
            assert got == sorted(d.expect for d in damaged), [(d.kind, d.expect) for d in damaged]
            assert {p.stem for p in rec.files} == {_sop(f) for f in good}
    finally:
        router.stop()


def _sop(path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
