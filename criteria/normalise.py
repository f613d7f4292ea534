"""One folding for study descriptions, applied to both the lists and what the PACS returns.

PACS and exports disagree about case, spacing, trailing dots and even characters: Orthanc's
C-FIND in Latin-1 turns an en dash into spaces, so dashes are folded to spaces too. Anything
compared must go through `normalise` on both sides.
"""

from __future__ import annotations

import re
import unicodedata

BLANK = "(blank)"

_DASHES = re.compile(r"[\u2010-\u2015\u2212_\-]+")
_SPACES = re.compile(r"\s+")
_TRAILING = re.compile(r"[\s.,;:!]+$")


def normalise(description: str | None) -> str:
    """Casefold, fold dashes to spaces, collapse whitespace, strip trailing punctuation.

    An empty description becomes the literal `(blank)` so lists can name it.
    """
    if description is None:
        return BLANK
    text = unicodedata.normalize("NFKC", str(description))
    text = _DASHES.sub(" ", text.casefold())
    text = _SPACES.sub(" ", text).strip()
    text = _TRAILING.sub("", text)
    return text if text else BLANK
