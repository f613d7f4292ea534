"""The pseudonymisation profile: the Annex E table plus the options a project chose.

Loading resolves every attribute to one concrete action up front (keyword → action), so the
per-element work in `deid.py` is a dictionary lookup, and a test can check the output of a
run against exactly the same resolved table.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydicom.datadict import dictionary_VR, tag_for_keyword

from ..errors import ConfigError
from .annex_e import ANNEX_E, REPEATING_GROUP_ACTIONS

# Concrete actions after resolution.
KEEP, REMOVE, EMPTY, DUMMY, CLEAN, UID, SHIFT = "K", "X", "Z", "D", "C", "U", "SHIFT"
BIRTH_YEAR, PSEUDO_ID, PSEUDO_NAME = "BIRTHYEAR", "PSEUDO_ID", "PSEUDO_NAME"

#: Attributes that are Type 1 or 2 in CT/MR/PT/RT IODs although Annex E allows removing them:
#: emptied rather than removed, so the objects stay valid.
_REQUIRED_KEEP_PRESENT = {"RTPlanDate", "RTPlanTime", "TreatmentMachineName", "ContentDate", "ContentTime",
                          "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName"}

INSTITUTION = ("InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
               "InstitutionCodeSequence", "InstitutionalDepartmentTypeCodeSequence")
CHARACTERISTICS = ("PatientSex", "PatientAge", "PatientSize", "PatientWeight")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProfileOptions(_Model):
    keep_birth_year: bool = True
    remove_institution: bool = True
    date_shift: bool = True
    date_shift_max_days: int = Field(365, ge=1, le=36500)
    keep_descriptions: bool = True
    keep_patient_characteristics: bool = True
    fix_segmentations: bool = True
    reject_burned_in: bool = True
    patient_prefix: str = Field("P", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,7}$")
    session_prefix: str = Field("S", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,7}$")


class Descriptions(_Model):
    keep: list[str] = []


class PrivateKeep(_Model):
    creator: str
    group: str
    element: str

    def key(self) -> tuple[str, int, int]:
        return (self.creator.strip(), int(self.group, 16), int(self.element, 16))


class PrivateSection(_Model):
    keep: list[PrivateKeep] = []


class XmlSection(_Model):
    blank: list[str] = []
    id_names: list[str] = []
    birth_names: list[str] = []


class Profile(_Model):
    name: str = "custom"
    options: ProfileOptions = ProfileOptions()
    descriptions: Descriptions = Descriptions()
    actions: dict[str, Literal["K", "X", "Z", "D", "C"]] = {}
    private: PrivateSection = PrivateSection()
    xml: XmlSection = XmlSection()
    source: str = Field("", exclude=True)

    @field_validator("actions")
    @classmethod
    def _known_keywords(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = [k for k in v if tag_for_keyword(k) is None]
        if unknown:
            raise ValueError(f"not DICOM keywords: {', '.join(sorted(unknown))}")
        return v

    # -- resolution -----------------------------------------------------------------------
    def resolved(self) -> dict[int, str]:
        """tag → concrete action for every attribute the profile mentions."""
        out: dict[int, str] = {}
        opts = self.options
        for kw, basic in ANNEX_E.items():
            out[tag_for_keyword(kw)] = resolve_action(kw, basic, opts.date_shift)
        if opts.keep_descriptions:
            for kw in self.descriptions.keep:
                out[tag_for_keyword(kw)] = CLEAN
        if not opts.remove_institution:
            for kw in INSTITUTION:
                out[tag_for_keyword(kw)] = KEEP
        if opts.keep_patient_characteristics:
            for kw in CHARACTERISTICS:
                out[tag_for_keyword(kw)] = KEEP
        out[tag_for_keyword("PatientID")] = PSEUDO_ID
        out[tag_for_keyword("PatientName")] = PSEUDO_NAME
        out[tag_for_keyword("PatientBirthDate")] = BIRTH_YEAR if opts.keep_birth_year else EMPTY
        for kw, act in self.actions.items():
            tag = tag_for_keyword(kw)
            out[tag] = SHIFT if (act in (KEEP, CLEAN, DUMMY) and opts.date_shift and _is_date(tag)) else act
        return out

    def private_keep(self) -> set[tuple[str, int, int]]:
        return {p.key() for p in self.private.keep}


def _is_date(tag: int) -> bool:
    try:
        return dictionary_VR(tag) in ("DA", "DT")
    except KeyError:
        return False


def resolve_action(keyword: str, basic: str, date_shift: bool) -> str:
    """One concrete action from an Annex E code.

    Compound codes leave the choice to the attribute's type in the IOD: we remove (X) where
    allowed, except for the few attributes CT/MR/PT/RT objects require, which are emptied.
    With date shifting on, dates that would be kept, emptied or dummied are shifted instead,
    and times of day are kept.
    """
    tag = tag_for_keyword(keyword)
    vr = dictionary_VR(tag)
    choices = basic.rstrip("*").split("/")
    if "U" in choices and vr == "SQ":
        return KEEP  # X/Z/U*: keep the sequence, its UIDs are remapped
    if "U" in choices:
        return UID
    if date_shift and vr in ("DA", "DT", "TM") and choices != ["X"]:
        return SHIFT if vr != "TM" else KEEP
    if len(choices) == 1:
        return choices[0]
    if keyword in _REQUIRED_KEEP_PRESENT:
        return EMPTY if "Z" in choices else DUMMY
    if "X" in choices:
        return REMOVE
    return EMPTY if "Z" in choices else DUMMY


def repeating_action(group: int, element: int) -> str | None:
    for lo, hi, elem, action in REPEATING_GROUP_ACTIONS:
        if lo <= group <= hi and (group % 2 == 0) and (elem == -1 or elem == element):
            return action
    return None


def load_profile(path: Path | None) -> Profile:
    """Read a profile TOML; None = the shipped default.

    Raises:
        ConfigError: missing file, bad TOML, unknown key or keyword, bad action; names the file.
    """
    if path is None:
        text = resources.files("ingest.pseudo").joinpath("default_profile.toml").read_text(encoding="utf-8")
        where = "<built-in default profile>"
    else:
        where = str(path)
        if not Path(path).is_file():
            raise ConfigError(f"{where}: pseudonymisation profile not found")
        text = Path(path).read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    try:
        prof = Profile.model_validate(data)
    except ValidationError as exc:
        problems = [f"{where}: [{'.'.join(str(x) for x in e['loc'])}] {e['msg']}" for e in exc.errors()]
        raise ConfigError("\n".join(problems)) from None
    bad = [k for k in prof.descriptions.keep if tag_for_keyword(k) is None]
    if bad:
        raise ConfigError(f"{where}: [descriptions.keep] not DICOM keywords: {', '.join(bad)}")
    prof.source = where
    return prof
