"""No identifying element survives: every element of every output, sequences, private tags and
file meta included, is checked against the resolved profile, and the raw bytes are searched
for every identifier and every original UID."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import tag_for_keyword

from ingest.errors import ConfigError
from ingest.pseudo import profile as P
from ingest.pseudo.annex_e import ANNEX_E
from ingest.pseudo.apply import Pseudonymiser
from ingest.pseudo.keys import PseudoKey, load_key
from ingest.pseudo.profile import load_profile
from ingest.pseudo.uids import NEVER_REMAP, is_well_known, iter_uid_values
from tests.fixtures.pseudo import PRIVATE_CREATOR, make_rt_set

KEY = PseudoKey(b"unit-test-key-0123456789abcdef")


def _run(files, out: Path, key=KEY, profile=None):
    pz = Pseudonymiser(key, profile or load_profile(None), "2.25")
    outcome = pz.process(files, lambda ds: out / f"{ds.SOPInstanceUID}.dcm")
    return pz, outcome


def _walk(ds, path=()):
    for elem in ds:
        yield path, elem
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                yield from _walk(item, path + (elem.keyword, i))


def _original_uids(files) -> set[str]:
    uids = set()
    for f in files:
        ds = pydicom.dcmread(f)
        for source in (ds, ds.file_meta):
            uids |= {v for t, v in iter_uid_values(source) if not is_well_known(v) and int(t) not in NEVER_REMAP}
    return uids


def test_every_keyword_of_the_table_is_in_pydicoms_dictionary():
    assert len(ANNEX_E) > 300
    assert [k for k in ANNEX_E if tag_for_keyword(k) is None] == []
    assert set(ANNEX_E.values()) <= {"D", "Z", "X", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}


def test_no_identifying_element_survives(tmp_path):
    s = make_rt_set(tmp_path / "in")
    profile = load_profile(None)
    resolved = profile.resolved()
    before = _original_uids(s.all_dicom)
    pz, outcome = _run(s.all_dicom, tmp_path / "out")
    assert outcome.problems == []
    assert len(outcome.written) == len(s.all_dicom)
    pseudonym = pz.patient_pseudonym(s.patient_id)
    for out in outcome.written.values():
        raw = out.read_bytes()
        for ident in s.identifiers + ["HOSPITALPACS", "9434765919", "20210314", "LINAC_ELSEWHERE", "SN123"]:
            assert ident.encode() not in raw, f"{ident!r} survived in {out.name}"
        for uid in before:
            assert uid.encode() not in raw, f"original UID {uid} survived in {out.name}"
        ds = pydicom.dcmread(out)
        assert "SourceApplicationEntityTitle" not in ds.file_meta
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.PatientIdentityRemoved == "YES"
        for where, elem in _walk(ds):
            assert not elem.tag.is_private, f"private {elem.tag} survived at {where} in {out.name}"
            action = resolved.get(int(elem.tag))
            if action == P.REMOVE:
                pytest.fail(f"{elem.keyword} should have been removed ({where}, {out.name})")
            elif action == P.EMPTY and elem.VR != "SQ":
                assert elem.value in (None, "", b""), f"{elem.keyword} not emptied"
            elif action in (P.PSEUDO_ID, P.PSEUDO_NAME):
                assert str(elem.value) == pseudonym
            elif action == P.BIRTH_YEAR:
                assert str(elem.value) == s.birth_date[:4] + "0101"
            if elem.VR == "PN" and action is None:
                assert not elem.value, f"unlisted person name {elem.keyword} kept"


def test_dates_shift_by_one_keyed_offset_per_patient(tmp_path):
    s = make_rt_set(tmp_path / "in")
    pz, outcome = _run(s.all_dicom, tmp_path / "out")
    shift = KEY.date_shift_days(s.patient_id, 365)
    assert 1 <= shift <= 365
    import datetime as dt

    expected = (dt.date(2021, 3, 14) - dt.timedelta(days=shift)).strftime("%Y%m%d")
    for out in outcome.written.values():
        ds = pydicom.dcmread(out)
        assert ds.StudyDate == expected
        assert ds.StudyTime == "101500"  # times of day are kept with date shifting
        assert ds.LongitudinalTemporalInformationModified == "MODIFIED"


def test_descriptions_kept_but_cleaned_and_rt_names_kept(tmp_path):
    s = make_rt_set(tmp_path / "in")
    pz, outcome = _run(s.all_dicom, tmp_path / "out")
    rs = pydicom.dcmread(outcome.written[s.files["rtstruct"][0]])
    assert rs.StructureSetROISequence[0].ROIName == "PTV"
    assert rs.StudyDescription == f"RT planning CT {pz.patient_pseudonym(s.patient_id)}"
    assert "Smithson" not in rs.SeriesDescription


def test_profile_options_off_follow_the_basic_profile(tmp_path):
    prof_path = tmp_path / "strict.toml"
    prof_path.write_text(
        "name = 'strict'\n[options]\nkeep_birth_year = false\ndate_shift = false\nkeep_descriptions = false\n"
        "remove_institution = true\nkeep_patient_characteristics = false\n",
        encoding="utf-8",
    )
    s = make_rt_set(tmp_path / "in")
    pz, outcome = _run(s.all_dicom, tmp_path / "out", profile=load_profile(prof_path))
    ds = pydicom.dcmread(outcome.written[s.files["ct"][0]])
    assert ds.PatientBirthDate in ("", None)
    assert ds.StudyDate in ("", None)
    assert "SeriesDate" not in ds and "StudyDescription" not in ds and "ImageComments" not in ds
    assert ds.PatientSex in ("", None)
    assert ds.LongitudinalTemporalInformationModified == "REMOVED"
    rs = pydicom.dcmread(outcome.written[s.files["rtstruct"][0]])
    assert rs.StructureSetROISequence[0].ROIName in ("", None)


def test_listed_private_tag_is_kept_and_its_uid_remapped(tmp_path):
    prof_path = tmp_path / "private.toml"
    prof_path.write_text(
        f"[private]\nkeep = [{{ creator = '{PRIVATE_CREATOR}', group = '3253', element = '11' }}]\n", encoding="utf-8"
    )
    s = make_rt_set(tmp_path / "in")
    pz, outcome = _run(s.all_dicom, tmp_path / "out", profile=load_profile(prof_path))
    ds = pydicom.dcmread(outcome.written[s.files["ct"][0]])
    block = ds.private_block(0x3253, PRIVATE_CREATOR)
    assert str(block[0x11].value) == str(ds.StudyInstanceUID)  # remapped with the same key
    assert 0x10 not in block  # the unlisted one (a name) is gone
    assert any(it.CodeValue == "113111" for it in ds.DeidentificationMethodCodeSequence)


def test_institution_kept_when_asked(tmp_path):
    prof_path = tmp_path / "inst.toml"
    prof_path.write_text("[options]\nremove_institution = false\n", encoding="utf-8")
    s = make_rt_set(tmp_path / "in")
    _, outcome = _run(s.all_dicom[:1], tmp_path / "out", profile=load_profile(prof_path))
    ds = pydicom.dcmread(next(iter(outcome.written.values())))
    assert ds.InstitutionName == "St Elsewhere"


def test_bad_profiles_are_config_errors_naming_the_file(tmp_path):
    for text, needle in [
        ("[actions]\nNotAKeyword = 'K'\n", "NotAKeyword"),
        ("[actions]\nPatientAge = 'Q'\n", "actions.PatientAge"),
        ("[options]\nunknown = 1\n", "options.unknown"),
        ("[descriptions]\nkeep = ['Nope']\n", "Nope"),
        ("not toml = = 1", "not valid TOML"),
    ]:
        p = tmp_path / "bad.toml"
        p.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError) as exc:
            load_profile(p)
        assert str(p) in str(exc.value) and needle in str(exc.value)
    with pytest.raises(ConfigError, match="not found"):
        load_profile(tmp_path / "missing.toml")


def test_bad_files_are_named_and_originals_untouched(tmp_path):
    s = make_rt_set(tmp_path / "in")
    junk = tmp_path / "in" / "notes.txt"
    junk.write_text("not dicom", encoding="utf-8")
    no_uid = tmp_path / "in" / "nouid.dcm"
    ds = pydicom.dcmread(s.files["ct"][0])
    del ds.SeriesInstanceUID
    ds.save_as(no_uid)
    burned = tmp_path / "in" / "burned.dcm"
    ds = pydicom.dcmread(s.files["ct"][1])
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
    ds.BurnedInAnnotation = "YES"
    ds.save_as(burned)
    files = s.all_dicom + [junk, no_uid, burned]
    digests = {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    _, outcome = _run(files, tmp_path / "out")
    reasons = dict(outcome.problems)
    assert "not a readable DICOM file" in reasons[str(junk)]
    assert "missing SeriesInstanceUID" in reasons[str(no_uid)]
    assert "BurnedInAnnotation" in reasons[str(burned)]
    assert len(outcome.written) == len(s.all_dicom)
    assert all(hashlib.sha256(f.read_bytes()).hexdigest() == d for f, d in digests.items())
    for _, reason in outcome.problems:
        assert s.patient_id not in reason and "Smithson" not in reason


def test_missing_or_short_key_is_a_config_error(monkeypatch):
    monkeypatch.delenv("RTLAKE_PSEUDO_KEY", raising=False)
    with pytest.raises(ConfigError, match="RTLAKE_PSEUDO_KEY is not set"):
        load_key("RTLAKE_PSEUDO_KEY")
    monkeypatch.setenv("RTLAKE_PSEUDO_KEY", "short")
    with pytest.raises(ConfigError, match="shorter than"):
        load_key("RTLAKE_PSEUDO_KEY")


def test_date_shift_handles_ranges_datetimes_and_bad_values():
    from ingest.pseudo.deid import shift_date, shift_datetime

    assert shift_date("20210314", 14) == "20210228"
    assert shift_date("20200301", 1) == "20200229"
    assert shift_date("20210101-20210131", 31) == "20201201-20201231"
    assert shift_date("2021", 3) == "" and shift_date("notadate", 3) == ""
    assert shift_datetime("20210314101500.123+0100", 14) == "20210228101500.123+0100"
    assert shift_datetime("2021", 5) == ""
