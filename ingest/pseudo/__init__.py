"""Pseudonymisation: keyed, deterministic, reference-preserving copies of DICOM studies.

Same input and same key give byte-identical output; another key gives other pseudonyms.
The original files are never modified; the link back to the originals lives only in the
owner-only mapping table (`mapping.py`), readable through `rtlake pseudo lookup`.
"""
