"""Apply a resolved profile to one dataset, in place, elements and sequences alike.

Order of precedence for each element: private tags (removed unless listed), repeating groups
(overlay/curve data), the profile's resolved action, then a default by VR for attributes the
table does not list (person names emptied, dates shifted, UIDs remapped, unknown public
elements of VR UN removed, the rest kept, as Annex E keeps unlisted attributes).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from . import profile as P
from .keys import PseudoKey
from .uids import NEVER_REMAP, UidRemapper

DEID_METHOD_CODES = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "descriptors": ("113105", "Clean Descriptors Option"),
    "dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "characteristics": ("113108", "Retain Patient Characteristics Option"),
    "institution": ("113112", "Retain Institution Identity Option"),
    "private": ("113111", "Retain Safe Private Option"),
}

_DUMMY = {"PN": "ANONYMOUS", "DA": "19000101", "DT": "19000101000000", "TM": "000000", "AS": "000Y",
          "IS": "0", "DS": "0", "AE": "ANONYMOUS", "CS": "ANONYMOUS"}
_NUMERIC = {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "AT"}
_BYTES = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}
#: File meta elements that can carry the sending site's identity.
_META_DROP = (0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102)


@dataclass
class PatientContext:
    """What is needed to pseudonymise one patient's objects."""

    original_id: str
    pseudonym: str
    shift_days: int
    #: case-insensitive term → replacement, applied to cleaned (kept) text
    scrub: dict[str, str] = field(default_factory=dict)


def scrub_terms(ds: Dataset, pseudonym: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Identifiers of this patient that must not survive inside kept free text."""
    terms: dict[str, str] = {}
    pid = str(ds.get("PatientID", "") or "").strip()
    if pid:
        terms[pid] = pseudonym
    name = str(ds.get("PatientName", "") or "")
    for part in re.split(r"[\^=\s,]+", name):
        if len(part) >= 3:
            terms[part] = ""
    others = ds.get("OtherPatientIDs", None)
    others = [others] if isinstance(others, str) else list(others or [])
    for other in others:
        if str(other).strip():
            terms[str(other).strip()] = ""
    bd = str(ds.get("PatientBirthDate", "") or "").strip()
    if len(bd) == 8:
        terms[bd] = ""
    for k, v in (extra or {}).items():
        if k and len(k) >= 3:
            terms[k] = v
    return terms


def shift_date(value: str, days: int) -> str:
    """YYYYMMDD moved back `days`; '' when it is not a full date (a partial one could still identify)."""
    value = value.strip()
    if "-" in value:  # a range (query-style); shift both ends
        return "-".join(shift_date(v, days) if v else "" for v in value.split("-"))
    try:
        d = dt.datetime.strptime(value[:8], "%Y%m%d").date()
    except ValueError:
        return ""
    return (d - dt.timedelta(days=days)).strftime("%Y%m%d")


def shift_datetime(value: str, days: int) -> str:
    value = value.strip()
    if len(value) < 8:
        return ""
    head = shift_date(value[:8], days)
    return head + value[8:] if head else ""


def _clean_text(text: str, terms: dict[str, str]) -> str:
    """Replace every term in one pass (so a replacement is never itself rescanned)."""
    if not terms or not text:
        return text
    lower = {k.lower(): v for k, v in terms.items()}
    pattern = "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))
    return re.sub(pattern, lambda m: lower.get(m.group(0).lower(), ""), text, flags=re.IGNORECASE)


class Deidentifier:
    """A resolved profile bound to a key and a UID remapper; `apply` works in place."""

    def __init__(self, key: PseudoKey, profile: P.Profile, remapper: UidRemapper) -> None:
        self.key = key
        self.profile = profile
        self.actions = profile.resolved()
        self.private_keep = profile.private_keep()
        self.remap = remapper

    # -- per element ---------------------------------------------------------------------------
    def _default_action(self, vr: str) -> str:
        if vr == "PN":
            return P.EMPTY
        if vr in ("DA", "DT") and self.profile.options.date_shift:
            return P.SHIFT
        if vr == "UN":
            return P.REMOVE
        return P.KEEP

    def _keep_private(self, ds: Dataset, tag: BaseTag) -> bool:
        if not self.private_keep:
            return False
        group, elem = tag.group, tag.element
        if 0x0010 <= elem <= 0x00FF:  # a private creator: kept while it has kept members
            creator = str(ds[tag].value).strip()
            return any(c == creator and g == group for c, g, _ in self.private_keep)
        creator_tag = BaseTag((group << 16) | (elem >> 8))
        if creator_tag not in ds:
            return False
        creator = str(ds[creator_tag].value).strip()
        return (creator, group, elem & 0xFF) in self.private_keep

    def _remap_value(self, value):
        if isinstance(value, (list, tuple, MultiValue)):
            return [self.remap(v) for v in value]
        return self.remap(value) if value else value

    def _walk(self, ds: Dataset, ctx: PatientContext) -> None:
        for tag in list(ds.keys()):
            if tag not in ds:
                continue
            if tag.element == 0x0000:  # group lengths are obsolete and would now be wrong
                del ds[tag]
                continue
            if tag.is_private:
                if self._keep_private(ds, tag):
                    elem = ds[tag]
                    if elem.VR == "SQ":
                        for item in elem.value:
                            self._walk(item, ctx)
                    elif elem.VR == "UI":
                        elem.value = self._remap_value(elem.value)
                else:
                    del ds[tag]
                continue
            rep = P.repeating_action(tag.group, tag.element)
            if rep == P.REMOVE:
                del ds[tag]
                continue
            # Look at the raw element first: most elements are kept as they are, and leaving
            # them unconverted saves parsing (and re-encoding) values like ContourData.
            raw = ds.get_item(tag)
            vr = raw.VR
            if vr in (None, "UN") or " or " in str(vr):
                try:
                    vr = dictionary_VR(tag)
                except KeyError:
                    vr = "UN"
            action = self.actions.get(int(tag)) or self._default_action(vr)
            if action == P.REMOVE:
                del ds[tag]
                continue
            if action == P.KEEP and vr not in ("SQ", "UI"):
                continue
            elem = ds[tag]
            vr = elem.VR
            if vr == "SQ":
                if action == P.EMPTY:
                    elem.value = Sequence()
                else:
                    for item in elem.value:
                        self._walk(item, ctx)
                continue
            if vr == "UI":
                if int(tag) not in NEVER_REMAP:
                    elem.value = self._remap_value(elem.value)
                continue
            self._apply(elem, action, ctx)

    def _apply(self, elem, action: str, ctx: PatientContext) -> None:
        vr = elem.VR
        if action == P.KEEP:
            return
        if action in (P.PSEUDO_ID, P.PSEUDO_NAME):
            elem.value = ctx.pseudonym
        elif action == P.EMPTY:
            elem.value = None
        elif action == P.DUMMY:
            if vr in _NUMERIC:
                elem.value = 0
            elif vr in _BYTES:
                elem.value = b""
            else:
                elem.value = _DUMMY.get(vr, "ANONYMOUS")
        elif action == P.CLEAN:
            if isinstance(elem.value, (list, tuple, MultiValue)):
                elem.value = [_clean_text(str(v), ctx.scrub) for v in elem.value]
            elif isinstance(elem.value, str):
                elem.value = _clean_text(elem.value, ctx.scrub)
            elif vr == "PN":
                elem.value = _clean_text(str(elem.value), ctx.scrub)
        elif action == P.SHIFT:
            fn = shift_datetime if vr == "DT" else shift_date
            if vr not in ("DA", "DT"):
                return  # a TM kept as is; other VRs are not dates
            values = elem.value if isinstance(elem.value, (list, tuple, MultiValue)) else [elem.value]
            shifted = [fn(str(v), ctx.shift_days) for v in values if v not in (None, "")]
            elem.value = (shifted[0] if len(shifted) == 1 else shifted) if shifted else None
        elif action == P.BIRTH_YEAR:
            v = str(elem.value or "").strip()
            elem.value = (v[:4] + "0101") if len(v) >= 4 and v[:4].isdigit() else None
        else:  # "U" on a non-UI element cannot happen with our table; be safe
            elem.value = None

    # -- per dataset -----------------------------------------------------------------------------
    def apply(self, ds: Dataset, ctx: PatientContext) -> None:
        """Pseudonymise `ds` in place (file meta too) and mark it as de-identified."""
        self._walk(ds, ctx)
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            for t in _META_DROP:
                if t in meta:
                    del meta[t]
            if "SOPInstanceUID" in ds:
                meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        self._mark(ds)

    def _mark(self, ds: Dataset) -> None:
        opts = self.profile.options
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = f"rtlake pseudo; profile {self.profile.name}"[:64]
        codes = ["basic"]
        if opts.keep_descriptions:
            codes.append("descriptors")
        if opts.date_shift:
            codes.append("dates")
        if opts.keep_patient_characteristics:
            codes.append("characteristics")
        if not opts.remove_institution:
            codes.append("institution")
        if self.private_keep:
            codes.append("private")
        seq = Sequence()
        for c in codes:
            item = Dataset()
            item.CodeValue, item.CodeMeaning = DEID_METHOD_CODES[c]
            item.CodingSchemeDesignator = "DCM"
            seq.append(item)
        ds.DeidentificationMethodCodeSequence = seq
        ds.LongitudinalTemporalInformationModified = "MODIFIED" if opts.date_shift else "REMOVED"
