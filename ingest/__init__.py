"""rtlake: keep a radiotherapy research imaging lake up to date from hospital PACS."""

__version__ = "0.1.0"
