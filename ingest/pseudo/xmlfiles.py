"""XML files that travel with studies (planning-system exports, segmentation logs).

DAMS found patient names, IDs and birth dates in such files. Elements or attributes named in
the profile's [xml] section are blanked (IDs get the pseudonym, birth dates follow
keep_birth_year); every other text and attribute value is cleaned of the patient's known
identifiers, and anything shaped like a DICOM UID is remapped with the same key as the images,
so a UID in the XML still points at the pseudonymised object. Parsing goes through defusedxml:
these files come from outside and must not be able to expand entities or reach the network.
"""

from __future__ import annotations

import re
from pathlib import Path
from xml.etree.ElementTree import ElementTree

import defusedxml.ElementTree as DET
from defusedxml import DefusedXmlException

from ..atomic import atomic_path
from ..errors import InputFileError
from .deid import _clean_text
from .profile import Profile
from .uids import UidRemapper

_UID_RE = re.compile(r"(?<![\d.])([0-9]+(?:\.[0-9]+){3,})(?![\d.])")


def is_xml(path: Path) -> bool:
    return path.suffix.lower() == ".xml"


def _local(name: str) -> str:
    return name.rsplit("}", 1)[-1].lower()


def _text(value: str, terms: dict[str, str], remap: UidRemapper) -> str:
    value = _clean_text(value, terms)
    return _UID_RE.sub(lambda m: remap(m.group(1)) if len(m.group(1)) <= 64 else m.group(1), value)


def _field(name: str, value: str, profile: Profile, pseudonym: str) -> str | None:
    """Replacement for a named identifying field, or None when the name is not one."""
    lname = _local(name)
    if lname in {n.lower() for n in profile.xml.id_names}:
        return pseudonym if value.strip() else value
    if lname in {n.lower() for n in profile.xml.birth_names}:
        digits = re.sub(r"\D", "", value)
        if profile.options.keep_birth_year and len(digits) >= 4:
            year = digits[:4] if digits[:2] in ("19", "20") else digits[-4:]
            return f"{year}0101"
        return ""
    if lname in {n.lower() for n in profile.xml.blank}:
        return ""
    return None


def pseudonymise_xml(src: Path, dst: Path, profile: Profile, terms: dict[str, str], remap: UidRemapper,
                     pseudonym: str) -> None:
    """Write a pseudonymised copy of `src` to `dst` (atomically; `src` is only read).

    Raises:
        InputFileError: not well-formed XML, or it uses DTD entities (refused for safety).
    """
    try:
        tree = DET.parse(str(src), forbid_dtd=True)
    except DefusedXmlException as exc:
        raise InputFileError(src, f"XML refused: {type(exc).__name__} (DTDs and entities are not allowed)") from None
    except (SyntaxError, OSError) as exc:  # ParseError is a SyntaxError
        raise InputFileError(src, f"not well-formed XML: {type(exc).__name__}") from None
    for el in tree.iter():
        if not isinstance(el.tag, str):
            continue
        for attr, value in list(el.attrib.items()):
            repl = _field(attr, value, profile, pseudonym)
            el.set(attr, repl if repl is not None else _text(value, terms, remap))
        if el.text is not None:
            repl = _field(el.tag, el.text, profile, pseudonym)
            el.text = repl if repl is not None else _text(el.text, terms, remap)
        if el.tail is not None and el.tail.strip():
            el.tail = _text(el.tail, terms, remap)
    with atomic_path(dst) as tmp:
        ElementTree(tree.getroot()).write(tmp, encoding="utf-8", xml_declaration=True)
