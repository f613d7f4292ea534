"""Damaged DICOM beside good files, through a folder PACS and through the real Orthanc (issue #19).

The corpus (tests/damaged_corpus.py) is the synthetic cohort plus a seeded copy of each kind of
damage real files show: cut at random offsets or inside the Pixel Data, flipped header bytes,
zeroed or garbage preambles, unknown or lying transfer syntaxes, broken encapsulated fragments,
exact duplicates, and valid files with other content under an existing SOPInstanceUID, in the same
study or another one. What must hold, from the rules (ingest/validate.py, ingest/conflicts.py):

  * `rtlake update` ends `partial` (exit 3), without a traceback, every time the damage is there;
  * every good file of the studies a run ingests arrives byte-identical (except instances with a
    valid different twin, which follow the conflict rule), and no damaged file is in the lake;
  * each damaged file is a failure row naming it and the check that failed;
  * conflicts are recorded with both sources; a stored good file is never replaced;
  * a second run changes nothing.

Orthanc refuses some damaged files at upload; what it accepts is what it serves. The damaged files
are uploaded before the good ones, so a damaged copy Orthanc accepts under an instance's identity
is the version it serves (the good one is then "AlreadyStored" and never served).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

import pytest

from ingest.catalog import Catalog
from ingest.config import load_config
from tests.damaged_corpus import Corpus, Damaged, make_corpus
from tests.fixtures.reliability import record_output, record_result

CHECK = re.compile(r"damaged DICOM \((\w+)\)")
CHECK_NAMES = ("preamble", "file_meta", "transfer_syntax", "encoding", "truncated", "parse", "uid", "pixel_data",
               "fragments")


def sha(p: Path | str) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def lake_files(lake: Path) -> dict[str, str]:
    """relative path -> sha256 of every DICOM file in the lake."""
    return {str(p.relative_to(lake)): sha(p) for p in sorted(lake.rglob("*.dcm"))}


def stored_as(after: dict[str, str], sop: str) -> list[str]:
    """Lake paths holding instance `sop` (files are named by safe(SOPInstanceUID))."""
    from ingest.naming import safe

    return [p for p in after if Path(p).stem == safe(sop)]


def invoke(*args: str):
    """`rtlake ...` in this process; returns (exit code, output with any traceback)."""
    import traceback

    from typer.testing import CliRunner

    from ingest.cli import app

    res = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    out = res.output
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        out += "Traceback (most recent call last):\n" + "".join(traceback.format_exception(res.exception))
    record_output(f"cli:{' '.join(args[:2])}", out)  # joins the session's identifier scan
    return res.exit_code, out


def catalog_state(cfg) -> dict:
    """What a second run must leave as it was (run ids and clocks left out)."""
    cat = Catalog(cfg.catalog_path, read_only=True)
    try:
        return {
            "files": cat.execute("SELECT sop_uid, study_uid, series_uid, path, size FROM files ORDER BY ALL").fetchall(),
            "sessions": cat.execute("SELECT study_uid, subject, label, state, location, n_files FROM sessions "
                                    "ORDER BY ALL").fetchall(),
            "studies": cat.execute("SELECT study_uid, decision, state FROM studies_seen ORDER BY ALL").fetchall(),
            "failures": cat.execute("SELECT failure_id, stage, target, reason, resolved_run IS NULL FROM failures "
                                    "ORDER BY ALL").fetchall(),
            "conflicts": cat.execute("SELECT conflict_id, sop_uid, resolution, source_a, source_b, sha256_a, "
                                     "sha256_b, resolved_run IS NULL FROM conflicts ORDER BY ALL").fetchall(),
        }
    finally:
        cat.close()


def failures(cfg) -> list[dict]:
    cat = Catalog(cfg.catalog_path, read_only=True)
    try:
        return cat.query_dicts("SELECT stage, target, reason, study_uid FROM failures WHERE resolved_run IS NULL")
    finally:
        cat.close()


def conflicts(cfg) -> list[dict]:
    cat = Catalog(cfg.catalog_path, read_only=True)
    try:
        return cat.query_dicts("SELECT * FROM conflicts")
    finally:
        cat.close()


def figures(corpus: Corpus, cfg, after: dict[str, str], tried: list[Damaged], served: set[Path] | None = None,
            **extra) -> dict:
    """The README's damaged-file figures, from the catalog and the lake this run left."""
    fails = failures(cfg)
    refused = Counter(m.group(1) for f in fails for m in [CHECK.search(f["reason"])] if m)
    in_lake = set(after.values())
    good = [f for f in corpus.ingested_good if served is None or f in served]
    return {"good_files": len(good), "damaged_files": len(tried), "kinds": len({d.kind for d in tried}),
            "stored_good_identical": sum(sha(f) in in_lake for f in good),
            "good_held_back": sum(sha(f) not in in_lake for f in good),
            "refused_by_check": dict(sorted(refused.items())), "refused": sum(refused.values()),
            "duplicates": sum(d.expect == "duplicate" for d in tried),
            "conflicts_recorded": len(conflicts(cfg)), "damaged_in_lake": sum(
                sha(d.path) in in_lake for d in tried if d.expect not in ("duplicate", "conflict")),
            "crashes": 0, **extra}


# -- folder PACS -----------------------------------------------------------------------------------
def _folder_runs(root: Path, n_patients: int, seed: int, n_damaged: int | None = None) -> dict:
    corpus = make_corpus(root, n_patients=n_patients, seed=seed, n_damaged=n_damaged)
    cfg = load_config(corpus.demo.config)
    code1, out1 = invoke("update", "-c", str(corpus.demo.config), "--no-progress")
    lake = Path(cfg.store.lake.path)
    after1, state1 = lake_files(lake), catalog_state(cfg)
    code2, out2 = invoke("update", "-c", str(corpus.demo.config), "--no-progress")
    return {"corpus": corpus, "cfg": cfg, "lake": lake, "runs": [(code1, out1), (code2, out2)],
            "after1": after1, "state1": state1, "after2": lake_files(lake), "state2": catalog_state(cfg)}


@pytest.fixture(scope="module")
def folder_runs(tmp_path_factory):
    return _folder_runs(tmp_path_factory.mktemp("damaged-folder") / "demo", 5, 19)


def test_folder_runs_end_partial_without_a_traceback(folder_runs):
    for code, out in folder_runs["runs"]:
        assert "Traceback" not in out, out[-3000:]
        assert code == 3, out[-3000:]
        assert "PARTIAL" in out
    # the refusals are in the run summary and in the report, by check
    first = folder_runs["runs"][0][1]
    assert "damaged DICOM (truncated)" in first and "damaged DICOM (uid)" in first
    report = next((folder_runs["corpus"].demo.root / "state" / "reports").glob("failure-report-*.html")).read_text()
    assert "damaged DICOM (pixel_data)" in report and "damaged DICOM (encoding)" in report


def test_folder_every_good_file_arrives_byte_identical(folder_runs):
    corpus: Corpus = folder_runs["corpus"]
    in_lake = set(folder_runs["after1"].values())
    twinned = {d.original for d in corpus.damaged if d.expect == "conflict"}
    missing = [f for f in corpus.ingested_good if f not in twinned and sha(f) not in in_lake]
    assert not missing, f"{len(missing)} good files not in the lake byte-identical, e.g. {missing[:3]}"
    # one file per instance: nothing stored twice, nothing extra
    sops = [Path(p).stem for p in folder_runs["after1"]]
    assert len(sops) == len(set(sops))


def test_folder_no_damaged_file_in_the_lake(folder_runs):
    corpus: Corpus = folder_runs["corpus"]
    in_lake = set(folder_runs["after1"].values())
    damaged = [d for d in corpus.damaged if d.expect not in ("duplicate", "conflict")]
    assert damaged
    leaked = [d.kind for d in damaged if sha(d.path) in in_lake]
    assert not leaked, leaked


def test_folder_each_damaged_file_is_a_failure_naming_it_and_the_check(folder_runs):
    fails = failures(folder_runs["cfg"])
    by_target = {f["target"]: f for f in fails if f["stage"] == "index"}
    wrong = []
    for d in folder_runs["corpus"].damaged:
        if d.expect in ("duplicate", "conflict"):
            continue
        f = by_target.get(str(d.path))
        got = CHECK.search(f["reason"]).group(1) if f and CHECK.search(f["reason"]) else None
        if got != d.expect:
            wrong.append((d.kind, d.expect, f and f["reason"]))
    assert not wrong, wrong
    # and nothing good is named as damaged
    good = {str(p) for p in folder_runs["corpus"].good}
    assert not [f for f in fails if f["target"] in good and CHECK.search(f["reason"])]


def test_folder_exact_duplicates_are_one_instance_and_no_failure(folder_runs):
    dups = [d for d in folder_runs["corpus"].damaged if d.expect == "duplicate"]
    assert dups
    fails = failures(folder_runs["cfg"])
    for d in dups:
        assert not [f for f in fails if str(d.path) in f["target"] or str(d.path) in f["reason"]]
        stored = stored_as(folder_runs["after1"], d.sop_uid)
        assert len(stored) == 1 and folder_runs["after1"][stored[0]] == sha(d.original)


def test_folder_conflicts_are_recorded_with_both_sources_and_never_first_wins(folder_runs):
    corpus, cfg, lake = folder_runs["corpus"], folder_runs["cfg"], folder_runs["lake"]
    rows = conflicts(cfg)
    for d in (d for d in corpus.damaged if d.expect == "conflict"):
        mine = [r for r in rows if r["sop_uid"] == d.sop_uid]
        assert len(mine) == 1, (d.kind, mine)
        c = mine[0]
        stored = stored_as(folder_runs["after1"], d.sop_uid)
        if d.kind == "conflict_same_study":
            # two valid versions in one study's delivery: neither is stored, both are named
            assert c["resolution"] == "neither_stored"
            assert {c["source_a"], c["source_b"]} == {str(d.original), str(d.path)}
            assert stored == []
        else:
            # different studies: the version stored first stays, the other is named beside it
            assert c["resolution"] == "kept_stored"
            assert len(stored) == 1
            kept = folder_runs["after1"][stored[0]]
            assert c["source_a"] == str(lake / stored[0])
            assert c["source_b"] in (str(d.original), str(d.path))
            other = d.original if c["source_b"] == str(d.original) else d.path
            assert kept == sha(d.path if other == d.original else d.original)
            assert {c["sha256_a"], c["sha256_b"]} == {sha(d.original), sha(d.path)}
        named = [f for f in failures(cfg) if f["stage"] == "store" and "conflicting duplicate" in f["reason"]
                 and d.sop_uid in f["reason"]]
        assert named


def test_folder_second_run_changes_nothing(folder_runs, section="damaged_folder"):
    assert folder_runs["after2"] == folder_runs["after1"]
    assert folder_runs["state2"] == folder_runs["state1"]
    corpus = folder_runs["corpus"]
    record_result(section, figures(corpus, folder_runs["cfg"], folder_runs["after1"], corpus.damaged,
                                   exit_codes=[c for c, _ in folder_runs["runs"]]))


def test_a_stored_good_file_is_never_replaced_by_a_valid_different_copy(tmp_path):
    """Good cohort first; then valid copies with other content under stored SOPInstanceUIDs arrive."""
    import shutil

    from tests.damaged_corpus import _Maker

    root = tmp_path / "demo"
    corpus = make_corpus(root, n_patients=3, seed=5)
    # start from the good cohort only
    for d in corpus.damaged:
        d.path.unlink()
    cfg = load_config(corpus.demo.config)
    assert invoke("update", "-c", str(corpus.demo.config), "--no-progress")[0] in (0, 3)
    lake = Path(cfg.store.lake.path)
    before = lake_files(lake)
    m = _Maker(corpus.demo, 23)
    m.rle_files = set(corpus.extra_good)
    m.conflict_same_study()
    m.conflict_other_study()
    code, out = invoke("update", "-c", str(corpus.demo.config), "--no-progress", "--full")
    assert "Traceback" not in out and code == 3, out[-2000:]
    assert lake_files(lake) == before  # nothing replaced, nothing added
    rows = {r["sop_uid"]: r for r in conflicts(cfg)}
    for d in m.out:
        assert rows[d.sop_uid]["resolution"] == "kept_stored"
        assert rows[d.sop_uid]["source_b"] == str(d.path)
        assert rows[d.sop_uid]["sha256_b"] == sha(d.path)
    shutil.rmtree(root)


# -- the real Orthanc -------------------------------------------------------------------------------
def _orthanc_runs(base: Path, n_patients: int, seed: int, n_damaged: int | None = None, dimse: bool = True):
    """Upload the corpus (damaged first) to a private Orthanc; two Orthanc-source runs, one DIMSE C-GET run."""
    from tests.fixtures.pacs import run_with_source
    from tests.servers.orthanc import orthanc_available, start_orthanc, stop_and_remove

    missing = orthanc_available()
    if missing:
        pytest.skip(f"!!! PACS TESTS SKIPPED: {missing}")
    corpus = make_corpus(base / "demo", n_patients=n_patients, seed=seed, n_damaged=n_damaged)
    srv = start_orthanc(base / "orthanc-server")
    try:
        # damaged first: a damaged copy Orthanc accepts under an instance's identity is what it serves
        served: dict[str, Path] = {}  # Orthanc instance ID -> the file it holds
        status: dict[Path, str] = {}
        for p in [d.path for d in corpus.damaged] + corpus.good:
            r = srv.http.post(f"{srv.url}/instances", data=p.read_bytes(), timeout=60)
            if r.status_code >= 400:
                status[p] = f"HTTP {r.status_code}"
                continue
            answer = r.json()
            status[p] = answer["Status"]
            served.setdefault(answer["ID"], p)
        runs = []
        for _ in range(2):
            state, summary = run_with_source("orthanc", corpus.demo, srv, base)
            cfg = load_config(corpus.demo.config, {"project.state_dir": str(state / "state")})
            lake = state / "lake"
            runs.append({"summary": summary, "after": lake_files(lake), "state": catalog_state(cfg)})
        out = {"corpus": corpus, "served": set(served.values()), "status": status, "cfg": cfg, "lake": lake,
               "runs": runs}
        if dimse:
            wstate, wsummary = run_with_source("dicomweb", corpus.demo, srv, base)
            out["dicomweb"] = {"summary": wsummary, "lake": wstate / "lake", "after": lake_files(wstate / "lake"),
                               "cfg": load_config(corpus.demo.config, {"project.state_dir": str(wstate / "state")})}
            # the same PACS over DIMSE C-GET: Orthanc re-encodes what it sends (DCMTK), so what arrives
            # is whatever its encoder makes of each damaged file
            dstate, dsummary = run_with_source("dimse-get", corpus.demo, srv, base)
            out["dimse"] = {"summary": dsummary, "lake": dstate / "lake",
                            "cfg": load_config(corpus.demo.config, {"project.state_dir": str(dstate / "state")})}
        return out
    finally:
        stop_and_remove(srv)


@pytest.fixture(scope="module")
def orthanc_runs(tmp_path_factory):
    return _orthanc_runs(tmp_path_factory.mktemp("damaged-orthanc"), 5, 29)


def _served(o, kinds=None) -> list[Damaged]:
    return [d for d in o["corpus"].damaged if d.path in o["served"] and (kinds is None or d.expect in kinds)]


def test_orthanc_refuses_some_damage_and_serves_the_rest(orthanc_runs):
    status = orthanc_runs["status"]
    got = {d.kind: status[d.path] for d in orthanc_runs["corpus"].damaged}
    # Orthanc's own parser (DCMTK) refuses what it cannot read at all; the rest it stores as it is
    assert got["zeroed_head"].startswith("HTTP 4") and got["truncated_in_pixels"].startswith("HTTP 4")
    assert got["flip_uid_SOPInstanceUID"] == "Success"
    checks = {d.expect for d in _served(orthanc_runs)} - {"duplicate", "conflict"}
    assert len(checks) >= 4, checks  # enough kinds of damage get through to test the REST path


def test_orthanc_runs_end_partial(orthanc_runs):
    for run in orthanc_runs["runs"]:
        assert run["summary"].status == "partial" and run["summary"].exit_code == 3, run["summary"].message


def test_orthanc_every_served_good_file_arrives_byte_identical(orthanc_runs):
    corpus, served = orthanc_runs["corpus"], orthanc_runs["served"]
    in_lake = set(orthanc_runs["runs"][0]["after"].values())
    twinned = {x for d in corpus.damaged if d.expect == "conflict" and d.path in served for x in (d.path, d.original)}
    good = [f for f in corpus.ingested_good if f in served and f not in twinned]
    assert len(good) > 30
    missing = [f for f in good if sha(f) not in in_lake]
    assert not missing, f"{len(missing)} good files Orthanc serves are not in the lake byte-identical: {missing[:3]}"
    # the valid copies Orthanc serves as an instance's only version are stored as they are
    for d in _served(orthanc_runs, {"duplicate", "conflict"}):
        if d.original not in served:
            assert sha(d.path) in in_lake, d.kind


def test_orthanc_no_damaged_file_in_the_lake(orthanc_runs):
    in_lake = set(orthanc_runs["runs"][0]["after"].values())
    damaged = _served(orthanc_runs, set(CHECK_NAMES))
    assert damaged
    assert not [d.kind for d in damaged if sha(d.path) in in_lake]


def test_orthanc_each_served_damaged_file_is_a_failure_naming_the_instance_and_check(orthanc_runs):
    from ingest.validate import show

    fails = failures(orthanc_runs["cfg"])
    wrong = []
    for d in _served(orthanc_runs, set(CHECK_NAMES)):
        named = [f for f in fails if (f["target"] == d.study_uid or (d.sop_uid and show(d.sop_uid) in f["target"]))
                 and CHECK.search(f["reason"]) and CHECK.search(f["reason"]).group(1) == d.expect]
        if not named:
            wrong.append((d.kind, d.expect, [f["reason"] for f in fails if d.sop_uid and d.sop_uid in f["target"]]))
    assert not wrong, wrong


def test_orthanc_conflicts_recorded_and_second_run_changes_nothing(orthanc_runs, section="damaged_orthanc"):
    corpus, served = orthanc_runs["corpus"], orthanc_runs["served"]
    rows = conflicts(orthanc_runs["cfg"])
    after = orthanc_runs["runs"][0]["after"]
    for d in _served(orthanc_runs, {"conflict"}):
        if d.original not in served:
            continue  # Orthanc holds one version only: no conflict reaches rtlake
        mine = [r for r in rows if r["sop_uid"] == d.sop_uid]
        assert len(mine) == 1 and mine[0]["resolution"] == "kept_stored", mine
        assert {mine[0]["sha256_a"], mine[0]["sha256_b"]} == {sha(d.original), sha(d.path)}
        assert len(stored_as(after, d.sop_uid)) == 1
    first, second = orthanc_runs["runs"]
    assert second["after"] == first["after"]
    assert second["state"] == first["state"]
    refused_at_upload = sum(orthanc_runs["status"][d.path].startswith("HTTP") for d in corpus.damaged)
    record_result(section, figures(corpus, orthanc_runs["cfg"], first["after"], _served(orthanc_runs), served,
                                   uploaded=len(corpus.damaged), refused_by_orthanc=refused_at_upload,
                                   outcomes=[r["summary"].status for r in orthanc_runs["runs"]]))


def test_orthanc_over_dicomweb_refuses_the_same_damage(orthanc_runs):
    """QIDO-RS + WADO-RS against the same Orthanc: the same served damage is refused, by the same check."""
    from ingest.validate import show

    w = orthanc_runs["dicomweb"]
    assert w["summary"].status == "partial", w["summary"].message
    in_lake = set(w["after"].values())
    assert not [d.kind for d in _served(orthanc_runs, set(CHECK_NAMES)) if sha(d.path) in in_lake]
    fails = failures(w["cfg"])
    missing = []
    for d in _served(orthanc_runs, set(CHECK_NAMES)):
        named = [f for f in fails if (f["target"] == d.study_uid or (d.sop_uid and show(d.sop_uid) in f["target"]))
                 and CHECK.search(f["reason"]) and CHECK.search(f["reason"]).group(1) == d.expect]
        if not named:
            missing.append((d.kind, d.expect))
    assert not missing, missing
    good = [f for f in orthanc_runs["corpus"].ingested_good if f in orthanc_runs["served"]]
    assert sum(sha(f) in in_lake for f in good) >= len(good) - 2  # at most the conflict pair differs


def test_orthanc_over_dimse_c_get_stores_only_whole_instances(orthanc_runs):
    from ingest.validate import validate_file

    d = orthanc_runs["dimse"]
    assert d["summary"].status == "partial", d["summary"].message
    stored = sorted(d["lake"].rglob("*.dcm"))
    assert len(stored) > 30
    assert [str(p) for p in stored if not validate_file(p).ok] == []
    fails = failures(d["cfg"])
    refused = [f for f in fails if CHECK.search(f["reason"])]
    assert refused, "Orthanc sends some of the damaged instances it accepted; they must be refused, by check"
    assert {CHECK.search(f["reason"]).group(1) for f in refused} <= set(CHECK_NAMES)


# -- the size: 24 patients, 100 damaged files (make test-all / make reliability) ------------------
FOLDER_CHECKS = [test_folder_runs_end_partial_without_a_traceback, test_folder_every_good_file_arrives_byte_identical,
                 test_folder_no_damaged_file_in_the_lake,
                 test_folder_each_damaged_file_is_a_failure_naming_it_and_the_check,
                 test_folder_exact_duplicates_are_one_instance_and_no_failure,
                 test_folder_conflicts_are_recorded_with_both_sources_and_never_first_wins]
ORTHANC_CHECKS = [test_orthanc_runs_end_partial, test_orthanc_every_served_good_file_arrives_byte_identical,
                  test_orthanc_no_damaged_file_in_the_lake,
                  test_orthanc_each_served_damaged_file_is_a_failure_naming_the_instance_and_check]


@pytest.mark.slow
def test_full_size_corpus_through_folder_and_orthanc(tmp_path):
    big = _folder_runs(tmp_path / "folder" / "demo", 24, 19, n_damaged=100)
    for check in FOLDER_CHECKS:
        check(big)
    test_folder_second_run_changes_nothing(big, section="damaged_folder_full")
    o = _orthanc_runs(tmp_path / "orthanc", 24, 29, n_damaged=100, dimse=False)
    for check in ORTHANC_CHECKS:
        check(o)
    test_orthanc_conflicts_recorded_and_second_run_changes_nothing(o, section="damaged_orthanc_full")
