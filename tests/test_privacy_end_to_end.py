"""Privacy end to end: with `[pseudo] enabled = true`, the research side carries no original identifier.

The scenario, written down before the code (issue 15):

  1. The demo cohort (ingest/demo.py: 8 patients, names with accents, NHS numbers, patients
     without one, RT courses, a truncated file and a text file named .dcm in its PACS) goes
     through the CLI as an operator would run it, at -vv: `rtlake update` → `rtlake rt convert`
     → `rtlake report` → `rtlake export sessions`.
  2. The realistic two-batch PACS scenario (tests/scenario_pacs.py) on a real Orthanc, over
     Orthanc REST (DICOMweb and DIMSE C-GET in the slow variant), the same way; its second batch
     corrects an NHS number, which a pseudonymised lake cannot follow (a relabel failure: its
     message must not name the accession either).

  Then every original identifier of the input — names, hospital IDs, NHS numbers, birth dates,
  accession numbers and every instance UID in the PACS files (Study/Series/SOP, frames of
  reference, references), collected from the input only (tests/privacy_scan.py) — is looked for
  in every file and folder name under the lake, the RT output and the session exports, in every
  DICOM element (file meta, nested sequences, private tags), in CSV/JSON/HTML text, NIfTI headers
  and PNG text, and in everything the four commands printed: 0 hits.

  And the identified side still links: the outbox's master sheet carries, beside each NHS
  number, the pseudonym the lake uses, and per session the PACS UID next to the lake's session
  label and UID. The expected pseudonyms are computed here from the documented rule
  (docs/pseudo.md: HMAC-SHA256(key, domain ‖ 0x00 ‖ value); prefix + 16 base32 characters; UIDs
  2.25.<first 128 bits>), not taken from rtlake.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import hashlib
import hmac
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ingest.demo import SyntheticStudy
from tests import scenario_pacs as S
from tests.fixtures.pacs import source_overrides
from tests.privacy_scan import Identifiers, scan_text, scan_tree

REPO = Path(__file__).resolve().parents[1]
KEY = "rtlake-privacy-e2e-key-0123456789abcdef"


# -- the rule, by hand ---------------------------------------------------------------------------------------
def _digest(domain: str, value: str) -> bytes:
    return hmac.new(KEY.encode(), domain.encode() + b"\x00" + value.encode(), hashlib.sha256).digest()


def pseudonym(domain: str, value: str, prefix: str) -> str:
    return prefix + base64.b32encode(_digest(domain, value)).decode()[:16]


def pseudo_uid(uid: str) -> str:
    return "2.25." + str(int.from_bytes(_digest("uid", uid)[:16], "big"))


# -- running it as an operator would ------------------------------------------------------------------------
def rtlake(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(REPO), "RTLAKE_PSEUDO_KEY": KEY, "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "ingest.cli", "-vv", *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=600)


def run_chain(config: Path, root: Path, updates: list, env: dict | None = None
              ) -> dict[str, subprocess.CompletedProcess]:
    """update (one per `updates` step: a callable preparing the PACS/inputs first) → rt convert → report → export."""
    out: dict[str, subprocess.CompletedProcess] = {}
    for n, prepare in enumerate(updates, start=1):
        prepare()
        out[f"update {n}"] = rtlake("update", "-c", str(config), "--no-progress", cwd=root, env=env)
    out["rt convert"] = rtlake("rt", "convert", "-c", str(config), "--serial", "--no-progress", cwd=root, env=env)
    out["report"] = rtlake("report", "-c", str(config), cwd=root, env=env)
    out["export sessions"] = rtlake("export", "sessions", "-c", str(config), "-o", str(root / "exports"), cwd=root,
                                    env=env)
    return out


def enable_pseudo(config: Path) -> None:
    with open(config, "a", encoding="utf-8") as fh:
        fh.write('\n[pseudo]\nenabled = true\n\n[rt]\noutput = "rt"\n')


def scan_everything(ids: Identifiers, trees: list[Path], runs: dict[str, subprocess.CompletedProcess]):
    hits, files = [], 0
    for tree in trees:
        h, n = scan_tree(tree, ids)
        hits += h
        files += n
    for name, res in runs.items():
        hits += scan_text(res.stdout + "\n" + res.stderr, ids, f"console of rtlake {name}")
    return hits, files


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def master_rows(outbox: Path) -> dict[str, dict]:
    (path,) = sorted(outbox.glob("master-availability-*.csv"))
    return {r["Subject"]: r for r in read_csv(path)}


def slots(row: dict) -> list[tuple[str, str, str]]:
    """(PACS UID, store session label, store UID) of every filled session slot of a master-sheet row."""
    out = []
    for col, value in row.items():
        if " Pseudonymised UID " in col and value != "null":
            mod, _, i = col.partition(" Pseudonymised UID ")
            out.append((row[f"{mod} UID {i}"], row[f"{mod} Pseudonymised Session {i}"], value))
    return out


def lake_sessions(lake: Path) -> list[dict]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(lake.rglob("session.json"))]


def assert_owner_only(trees: list[Path]) -> None:
    loose = [f"{p} {stat.S_IMODE(p.stat().st_mode):04o}" for t in trees for p in [t, *t.rglob("*")]
             if stat.S_IMODE(p.stat().st_mode) & 0o077]
    assert loose == []


def assert_linked(outbox: Path, lake: Path, subjects_of: dict[str, str], original_uid: dict[str, str]) -> None:
    """Every lake session is in the master sheet, beside its NHS number and PACS UID.

    `subjects_of`: identified subject label → its pseudonym by the rule; `original_uid`: store
    UID by the rule → PACS StudyInstanceUID.
    """
    rows = master_rows(outbox)
    sessions = lake_sessions(lake)
    assert sessions
    for sess in sessions:
        subject = next(s for s, p in subjects_of.items() if p == sess["subject"])  # the rule names its owner
        row = rows[subject]
        assert row["Subject Pseudonym"] == sess["subject"]
        assert (original_uid[sess["study_uid"]], sess["label"], sess["study_uid"]) in slots(row), subject
    # and nothing else: every filled slot is a lake session
    stored = {(s["subject"], s["label"], s["study_uid"]) for s in sessions}
    listed = {(r["Subject Pseudonym"], lab, uid) for r in rows.values() for _, lab, uid in slots(r)}
    assert listed == stored


# -- 1. the demo cohort ---------------------------------------------------------------------------------------
def demo_identifiers(demo) -> Identifiers:
    ids = Identifiers()
    for p in demo.patients:
        ids.add_token(p.hospital_id, "hospital_id")
        ids.add_token(p.nhs_number, "nhs_number")
        ids.add_name(p.name)
        ids.add_birth_date(p.birth_date.strftime("%Y%m%d"))
        for s in p.studies:  # including studies only the failure list names
            ids.add_token(s.accession, "accession")
            if s.study_uid:
                ids.add_uid(s.study_uid, "study_uid")
    for f in demo.broken:  # named by a UID of its own
        ids.add_uid(f.stem, "file name")
    n = ids.add_dicom_files(sorted(demo.pacs.rglob("*.dcm")))
    assert n > 100
    return ids


def add_messy_rt_course(demo) -> str:
    """An RT course as real exports carry it, for a demo patient without one: identifiers in a
    vendor private block (name, study UID), in nested sequences (requesting physician, a referenced
    procedure step UID), in OtherPatientIDs (the NHS number), ImageComments (hospital ID, birth date),
    the accession and the institution. Returns its StudyInstanceUID."""
    import pydicom

    from ingest.synth.descriptions import RT_COURSE_DESCRIPTION
    from tests.fixtures.pseudo import make_rt_set

    p = next(x for x in demo.patients if x.nhs_number and not x.deceased and x.rt_start is None)
    course = make_rt_set(demo.root / "messy-course", patient_id=p.hospital_id, patient_name=p.name,
                         birth_date=p.birth_date.strftime("%Y%m%d"), seed=15)
    study_uid = ""
    for kind in ("ct", "rtstruct", "rtplan", "rtdose", "seg"):
        for f in course.files[kind]:
            ds = pydicom.dcmread(f)
            ds.OtherPatientIDs = [p.nhs_number]
            ds.StudyDescription = RT_COURSE_DESCRIPTION
            ds.StudyID = "RT2"
            study_uid = ds.StudyInstanceUID
            dst = demo.pacs / "messy-course" / kind / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(dst, enforce_file_format=True)
    shutil.rmtree(demo.root / "messy-course")
    p.studies.append(SyntheticStudy(study_uid, f"ACC{p.hospital_id}", dt.date(2021, 3, 14), RT_COURSE_DESCRIPTION,
                                    RT_COURSE_DESCRIPTION, "rt", ("CT", "RTSTRUCT", "RTPLAN", "RTDOSE", "SEG"), "RT2"))
    p.rt_start = dt.date(2021, 3, 28)
    return study_uid


@pytest.fixture(scope="module")
def demo_chain(demo_cohort, tmp_path_factory):
    root = tmp_path_factory.mktemp("privacy-demo")
    shutil.copytree(demo_cohort.root, root / "demo", symlinks=True)
    demo = demo_cohort.relocated(root / "demo")
    add_messy_rt_course(demo)
    enable_pseudo(demo.config)
    runs = run_chain(demo.config, root, [lambda: None])
    return demo, root, runs


def test_demo_research_side_carries_no_original_identifier(demo_chain):
    demo, root, runs = demo_chain
    assert runs["update 1"].returncode == 3, runs["update 1"].stderr[-3000:]  # partial: the two broken files
    for name in ("rt convert", "report", "export sessions"):
        assert runs[name].returncode == 0, (name, runs[name].stderr[-3000:])
    ids = demo_identifiers(demo)
    trees = [demo.root / "lake", demo.root / "rt", root / "exports"]
    hits, files = scan_everything(ids, trees, runs)
    assert hits == [], "\n".join(map(str, hits[:40]))
    assert sum(1 for p in (demo.root / "lake").rglob("*.dcm")) > 100
    assert files > 150 and (demo.root / "rt" / "dvh.csv").is_file()
    # the scan is not blind: the identified outbox, scanned the same way, is full of identifiers
    outbox_hits, _ = scan_tree(demo.root / "outbox", ids)
    assert {"nhs_number", "accession", "study_uid"} <= {h.kind for h in outbox_hits}
    assert_owner_only(trees)


def test_demo_outbox_links_each_pseudonym_to_its_nhs_number(demo_chain):
    demo, root, _ = demo_chain
    lake = demo.root / "lake"
    subjects_of = {p.subject: pseudonym("subject", p.subject, "P") for p in demo.patients}
    original = {pseudo_uid(s.study_uid): s.study_uid for s in demo.studies if s.study_uid}
    assert_linked(demo.root / "outbox", lake, subjects_of, original)
    # what was stored: living patients' included and RT studies in the PACS, never placeholders
    expected = {pseudo_uid(s.study_uid) for p in demo.patients if not p.deceased for s in p.studies
                if s.in_pacs and not s.placeholder and s.category in ("include", "rt")}
    assert {s["study_uid"] for s in lake_sessions(lake)} == expected
    # session labels by the rule: the pseudonym of <project>/<accession>
    # (RT: <hospital id>_RT_<year>_<accession or StudyID>)
    labels = {s["label"] for s in lake_sessions(lake)}
    for p in demo.patients:
        for s in p.studies:
            if pseudo_uid(s.study_uid) in expected:
                rt = f"{p.hospital_id}_RT_{s.study_date.year}_{s.accession or s.study_id}"
                label = rt if s.category == "rt" else s.accession
                assert pseudonym("session", f"HNC_DEMO/{label}", "S") in labels, (s.description, label)


def test_demo_rt_outputs_and_exports_are_keyed_by_the_lake_pseudonyms(demo_chain):
    demo, root, _ = demo_chain
    lake_subjects = {p.name for p in (demo.root / "lake" / "HNC_DEMO").iterdir()}
    rt = demo.root / "rt"
    assert {p.name for p in rt.iterdir() if p.is_dir()} == lake_subjects
    assert {r["patient"] for r in read_csv(rt / "patients.csv")} == lake_subjects
    with_rt = {pseudonym("subject", p.subject, "P") for p in demo.patients if p.rt_start and not p.deceased}
    assert {r["patient"] for r in read_csv(rt / "dvh.csv")} == with_rt
    sessions = {(s["subject"], s["study_uid"]) for s in lake_sessions(demo.root / "lake")}
    listed = set()
    for name in ("CT", "MR", "PET", "CR", "DX", "RF", "SR", "XA"):
        for r in read_csv(root / "exports" / f"{name}.csv"):
            assert r["Subject"] in lake_subjects
            listed.add((r["Subject"], r.get("UID")))
    assert {(s, u) for s, u in listed if u} <= sessions  # the UID columns name the lake's study UIDs


def test_identified_export_is_the_admins_and_says_so(demo_chain):
    demo, root, _ = demo_chain
    res = rtlake("export", "sessions", "-c", str(demo.config), "-o", str(root / "identified"), "--identified",
                 cwd=root)
    assert res.returncode == 0, res.stderr
    assert "identified side" in res.stdout
    ct = read_csv(root / "identified" / "CT.csv")
    by_uid = {s.study_uid: (p, s) for p in demo.patients for s in p.studies}
    assert ct
    for r in ct:  # NHS numbers (or NN_<hospital id>), the PACS's UIDs and dates
        p, s = by_uid[r["UID"]]
        assert r["Subject"] == p.subject and r["Date"] == s.study_date.isoformat()


# -- 2. the realistic PACS scenario on a real Orthanc -----------------------------------------------------------
def scenario_identifiers(files: list[Path]) -> Identifiers:
    ids = Identifiers()
    for k, hid in S.PATIENTS.items():
        ids.add_token(hid, "hospital_id")
        ids.add_token(S.NHS[k], "nhs_number")
    first = S.batch1()
    for st in first + S.batch2(first):
        ids.add_token(st.accession, "accession")
        ids.add_uid(st.uid, "study_uid")
    assert ids.add_dicom_files(files) == len(files)
    return ids


@pytest.fixture(scope="module")
def scenario_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("privacy-scenario-files")
    first = S.batch1()
    return S.write_files(first, root / "b1"), S.write_files(S.batch2(first), root / "b2")


def scenario_chain(kind: str, srv, files, root: Path):
    b1, b2 = files
    srv.clear()
    config = S.write_config(root)  # state, lake and outbox under root, as source_overrides has them
    sections: dict[str, list[str]] = {}
    for k, v in source_overrides(kind, srv, root).items():
        if k.startswith("source."):
            sec, _, key = k.rpartition(".")
            sections.setdefault(sec, []).append(f"{key} = {json.dumps(v)}")
    with open(config, "a", encoding="utf-8") as fh:
        fh.write("".join(f"\n[{sec}]\n" + "\n".join(kv) + "\n" for sec, kv in sections.items()))
    enable_pseudo(config)
    env = {"RTLAKE_TEST_PACS_USER": srv.username, "RTLAKE_TEST_PACS_PASSWORD": srv.password}

    def stage(n: int, batch: list[Path]):
        def prepare():
            srv.upload(batch)
            S.write_inputs(root, stage=n)
        return prepare

    return config, run_chain(config, root, [stage(1, b1), stage(2, b2)], env)


def check_scenario(kind: str, srv, files, root: Path) -> None:
    config, runs = scenario_chain(kind, srv, files, root)
    assert runs["update 1"].returncode == 0, runs["update 1"].stderr[-3000:]
    # P5's NHS number arrives in batch 2: a pseudonymised session cannot follow it (relabel failure)
    assert runs["update 2"].returncode == 3, runs["update 2"].stderr[-3000:]
    assert "relabel" in runs["update 2"].stdout
    for name in ("rt convert", "report", "export sessions"):
        assert runs[name].returncode == 0, (name, runs[name].stderr[-3000:])
    ids = scenario_identifiers(files[0] + files[1])
    lake = root / "lake"
    trees = [lake, root / "rt", root / "exports"]
    hits, n = scan_everything(ids, trees, runs)
    assert hits == [], "\n".join(map(str, hits[:40]))
    assert n >= 30
    outbox_hits, _ = scan_tree(root / "outbox", ids)
    assert {"nhs_number", "accession", "study_uid"} <= {h.kind for h in outbox_hits}
    # every stored scenario study is in the lake under its pseudonyms, linked in the outbox
    stored = {s.uid for s in S.batch1() + S.batch2(S.batch1()) if s.name in S.STORED_AFTER_2}
    assert {s["study_uid"] for s in lake_sessions(lake)} == {pseudo_uid(u) for u in stored}
    subjects = {S.NHS[k] for k in S.PATIENTS} | {f"NN_{h}" for h in S.PATIENTS.values()}
    subjects_of = {s: pseudonym("subject", s, "P") for s in subjects}
    original = {pseudo_uid(u): u for u in stored}
    rows = master_rows(root / "outbox")
    # P5's session stays under the pseudonym of NN_SCN0005 (stored before the correction); the sheet
    # files it under P5's new NHS number, beside that old pseudonym: the link the admin needs to fix it.
    p5 = rows[S.NHS["P5"]]
    assert p5["Subject Pseudonym"] == subjects_of["NN_SCN0005"]
    subjects_of[S.NHS["P5"]] = subjects_of.pop("NN_SCN0005")
    assert_linked(root / "outbox", lake, subjects_of, original)
    assert_owner_only(trees)


def test_scenario_on_orthanc_research_side_carries_no_original_identifier(orthanc, scenario_files, tmp_path):
    check_scenario("orthanc", orthanc, scenario_files, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dicomweb", "dimse-get"])
def test_scenario_other_protocols_research_side_carries_no_original_identifier(kind, orthanc, scenario_files,
                                                                                tmp_path):
    check_scenario(kind, orthanc, scenario_files, tmp_path)


# -- 3. rtlake's own commands on a lake: session.json is not DICOM, paths are not printed -----------------------
def test_rt_link_on_a_lake_session_counts_no_bookkeeping_file(demo_chain):
    demo, root, _ = demo_chain
    manifests = [p for p in (demo.root / "lake").rglob("session.json")
                 if "RTSTRUCT" in json.loads(p.read_text(encoding="utf-8"))["modalities"]]
    assert manifests
    folder = manifests[0].parent
    res = rtlake("rt", "link", str(folder), cwd=root)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    scans = json.loads(manifests[0].read_text(encoding="utf-8"))["scans"]
    assert got["images_summary"]["number_of_unreadable_files"] == 0  # session.json is not counted
    assert got["images_summary"]["number_of_CT_instances"] == sum(s["files"] for s in scans if s["modality"] == "CT")
    assert got["status"] == "LINKED"
    assert scan_text(res.stdout + res.stderr, demo_identifiers(demo), "rt link") == []


def test_pseudo_run_on_an_identified_lake_names_no_patient(demo_chain, tmp_path):
    """An identified lake (subject folders are NHS numbers, sessions accessions) with one broken file."""
    demo, root, _ = demo_chain
    lake = tmp_path / "lake" / "HNC_DEMO"
    p = next(x for x in demo.patients if x.nhs_number and not x.deceased)
    n = 0
    for s in p.studies:
        src = sorted(set(demo.pacs.glob(f"*/{s.study_uid}/*/*.dcm")) - set(demo.broken)) if s.study_uid else []
        if not src or not s.accession:
            continue
        sess = lake / p.nhs_number / s.accession
        for f in src:
            dst = sess / "scans" / "1" / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dst)
            n += 1
        (sess / "session.json").write_text(json.dumps({"subject": p.nhs_number, "label": s.accession}))
        broken = sess / "scans" / "1" / "zz-truncated.dcm"
    assert n
    shutil.copy(demo.broken[0], broken)  # the demo's DICOM cut inside its pixel data (an interrupted transfer)
    res = rtlake("pseudo", "run", str(tmp_path / "lake"), "-o", str(tmp_path / "out"), "-c", str(demo.config),
                 "--no-catalog", cwd=root)
    assert res.returncode == 1, res.stdout + res.stderr  # the broken file, and only it
    assert res.stderr.count("FAILED ") == 1 and "session.json" not in res.stderr, res.stderr
    assert "not a readable DICOM file: struct.error" in res.stderr
    assert f"{n} DICOM and 0 XML files" in res.stdout
    ids = Identifiers()
    ids.add_token(p.nhs_number, "nhs_number")
    for s in p.studies:
        ids.add_token(s.accession, "accession")
    assert scan_text(res.stdout + res.stderr, ids, "pseudo run") == []


# -- the detector itself --------------------------------------------------------------------------------------
def test_the_scan_finds_identifiers_where_real_files_hide_them(tmp_path):
    from tests.fixtures.pseudo import make_rt_set
    from tests.privacy_scan import scan_dicom

    course = make_rt_set(tmp_path / "in", patient_id="RJZ1234567", patient_name="NÍ BHRIAIN^Siobhán",
                         birth_date="19561231")
    ids = Identifiers()
    assert ids.add_dicom_files(course.all_dicom) == len(course.all_dicom)
    ids.add_token("9434765919", "nhs_number")
    where = {h.where.split(" ", 1)[1] for h in scan_dicom(course.files["rtstruct"][0], ids, "rs")}
    assert any("(3253,1010) private" in w for w in where)  # the vendor block's patient name
    assert any("(3253,1011) private" in w for w in where)  # and its study UID
    assert any("ReferencedSOPInstanceUID" in w for w in where)  # deep in the referenced-frame tree
    assert any("MediaStorageSOPInstanceUID" in w for w in where)  # file meta
    study = str(__import__("pydicom").dcmread(course.files["ct"][0]).StudyInstanceUID)
    texts = {
        "a": "subject 943 476 5919 stored",
        "b": "NN_RJZ1234567/x.dcm",
        "c": "born 31/12/1956, seen by Siobhán",
        "d": f"study {study}.",
        "e": f"study {study}.7 and 19434765919 and XRJZ1234567 and 2.25.{study[-8:]}",  # longer tokens: no hit
    }
    kinds = {t: {h.kind for h in scan_text(text, ids, t)} for t, text in texts.items()}
    assert kinds == {"a": {"nhs_number"}, "b": {"hospital_id"}, "c": {"birth_date", "name"},
                     "d": {"StudyInstanceUID"}, "e": set()}
