"""Stores never hold a damaged file and never replace a stored instance (issue #19), tested per store:
the local lake and a real Orthanc used as the destination.

Files come from the damaged corpus (tests/damaged_corpus.py): good instances, a damaged copy, and
valid copies with other content under the same SOPInstanceUID (made by the corpus' own rules).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pydicom
import pytest

from ingest.errors import StoreError
from ingest.records import SessionPlan, StudyRecord
from tests.damaged_corpus import make_corpus


def sha(p) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("damaged-stores") / "demo", n_patients=3, seed=37)


def _study(corpus, kind: str):
    """(plan, good files of the study, the damaged file of `kind` placed in it)."""
    d = next(x for x in corpus.damaged if x.kind == kind)
    study = d.original_study_uid
    files = sorted(f for f in corpus.good if f.parent.parent.name == study)
    rec = StudyRecord(study_uid=study, patient_id="P", accession=f"ACC-{kind}"[:16], modalities=("CT",))
    return SessionPlan("P1", "SUBJ", f"S-{kind}"[:20], rec, "H"), files, d


def _other_version(corpus, original: Path, tmp: Path) -> Path:
    """A valid file with the SOPInstanceUID of `original` and other pixel values (the corpus' rule)."""
    ds = pydicom.dcmread(original)
    arr = bytearray(ds.PixelData)
    arr[0] ^= 0xFF
    ds.PixelData = bytes(arr)
    out = tmp / f"other-{original.name}"
    ds.save_as(out, enforce_file_format=True)
    return out


def _with_pixels(files):
    return next(f for f in files if b"\xe0\x7f\x10\x00" in f.read_bytes())


# -- lake ------------------------------------------------------------------------------------------
def test_lake_refuses_damaged_files_keeps_stored_ones_and_holds_back_twins(corpus, tmp_path):
    from ingest.stores.lake import LakeStore

    store = LakeStore(tmp_path / "lake")
    plan, files, damaged = _study(corpus, "pixels_short")
    first = store.put_study(plan, files + [damaged.path])
    assert {Path(f.path).stem for f in first.files} == {_safe_sop(f) for f in files}
    assert [t for t, r in first.problems] == [str(damaged.path)] and "(pixel_data)" in first.problems[0][1]
    tree = {p: sha(p) for p in (tmp_path / "lake").rglob("*.dcm")}
    # a valid copy with other content under a stored SOPInstanceUID: the stored file stays
    victim = _with_pixels(files)
    other = _other_version(corpus, victim, tmp_path)
    again = store.put_study(plan, [f for f in files if f != victim] + [other])
    assert {p: sha(p) for p in (tmp_path / "lake").rglob("*.dcm")} == tree
    assert [(c.resolution, c.source_b, c.sha256_a, c.sha256_b) for c in again.conflicts] == \
        [("kept_stored", str(other), sha(victim), sha(other))]
    # the same instance under another study (looked up as the run does, from the catalog)
    plan2, files2, _ = next(x for x in (_study(corpus, d.kind) for d in corpus.damaged if d.original_study_uid)
                            if x[0].study.study_uid != plan.study.study_uid)
    foreign = tmp_path / "foreign.dcm"
    ds = pydicom.dcmread(files2[0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.dcmread(victim).SOPInstanceUID
    ds.save_as(foreign, enforce_file_format=True)
    where = next(f for f in first.files if Path(f.path).stem == _safe_sop(victim))
    store.stored_instances = lambda sops: {s: (plan.study.study_uid, where.path) for s in sops
                                           if s == ds.SOPInstanceUID}
    third = store.put_study(plan2, files2[1:] + [foreign])
    assert [(c.resolution, c.study_uid_a, c.source_b) for c in third.conflicts] == \
        [("kept_stored", plan.study.study_uid, str(foreign))]
    assert not [f for f in third.files if f.sop_uid == ds.SOPInstanceUID]
    # two valid versions in one delivery, nothing stored yet: neither is stored
    store.stored_instances = None
    plan3, files3, _ = next(x for x in (_study(corpus, d.kind) for d in corpus.damaged if d.original_study_uid)
                            if x[0].study.study_uid not in (plan.study.study_uid, plan2.study.study_uid)
                            and any(b"\xe0\x7f\x10\x00" in f.read_bytes() for f in x[1]))
    twin = _other_version(corpus, _with_pixels(files3), tmp_path)
    fourth = store.put_study(plan3, files3 + [twin])
    assert [c.resolution for c in fourth.conflicts] == ["neither_stored"]
    assert _safe_sop(twin) not in {Path(f.path).stem for f in fourth.files}


def _safe_sop(path) -> str:
    from ingest.naming import safe

    return safe(str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))


# -- Orthanc as the store --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def orthanc_store(tmp_path_factory):
    from ingest.stores.orthanc import OrthancStore
    from tests.servers.orthanc import orthanc_available, start_orthanc, stop_and_remove

    missing = orthanc_available()
    if missing:
        pytest.skip(f"!!! ORTHANC STORE TESTS SKIPPED: {missing}")
    srv = start_orthanc(tmp_path_factory.mktemp("damaged-orthanc-store"))
    store = OrthancStore(srv.url, (srv.username, srv.password), retries=1, backoff=0.01, timeout=20)
    yield srv, store
    store.close()
    stop_and_remove(srv)


def test_orthanc_store_never_posts_damage_and_never_replaces_what_it_holds(corpus, orthanc_store, tmp_path):
    srv, store = orthanc_store
    plan, files, damaged = _study(corpus, "cut_before_pixels")
    with pytest.raises(StoreError, match=r"\(pixel_data\)") as ei:
        store.put_study(plan, files + [damaged.path])
    assert str(damaged.path) in str(ei.value)
    assert srv.study_count() == 0  # stopped before the first POST
    stored = store.put_study(plan, files)
    assert not stored.conflicts
    victim = _with_pixels(files)
    other = _other_version(corpus, victim, tmp_path)
    again = store.put_study(plan, files + [other])  # a second version: both held back in this delivery
    assert [c.resolution for c in again.conflicts] == ["neither_stored"]
    third = store.put_study(plan, [f for f in files if f != victim] + [other])  # Orthanc keeps what it had
    assert [(c.resolution, c.source_b, c.sha256_b) for c in third.conflicts] == [("kept_stored", str(other), sha(other))]
    sop = str(pydicom.dcmread(victim, stop_before_pixels=True).SOPInstanceUID)
    held = next(f for f in third.files if f.sop_uid == sop)
    assert srv.http.get(f"{held.path}/file").content == victim.read_bytes()


def test_lake_moves_the_runs_scratch_copies_and_copies_everything_else(corpus, tmp_path):
    """Files under the run's scratch folder are renamed into the lake (no second write of the bytes);
    a folder source's own files are copied and stay where they are. Both end owner-only and whole."""
    import shutil
    import stat

    from ingest.stores.lake import LakeStore

    plan, files, _ = _study(corpus, "pixels_short")
    scratch = tmp_path / "state" / "scratch"
    (scratch / plan.study.study_uid).mkdir(parents=True)
    ours = [Path(shutil.copy(f, scratch / plan.study.study_uid / f.name)) for f in files[: len(files) // 2]]
    theirs = files[len(files) // 2:]
    digests = {sha(f) for f in files}
    store = LakeStore(tmp_path / "lake")
    store.scratch = scratch
    res = store.put_study(plan, ours + theirs)
    assert len(res.files) == len(files)
    assert not any(p.exists() for p in ours)  # moved in
    assert all(p.exists() for p in theirs)  # the source's own files are left alone
    stored = [Path(f.path) for f in res.files]
    assert {sha(p) for p in stored} == digests
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in stored)
