"""The few exception types rtlake raises.

Transient errors are worth a retry (network blips, 5xx, busy PACS); permanent ones are not
(bad credentials, malformed data). Messages name the study (UID or accession) or the file,
never a patient's name.
"""

from __future__ import annotations


class RtlakeError(Exception):
    """Root of every error rtlake raises on purpose."""


class TransientError(RtlakeError):
    """Might succeed if tried again later."""


class PermanentError(RtlakeError):
    """Will fail the same way however often it is tried."""


class ConfigError(PermanentError):
    """The configuration file or an option is wrong; the message names the key and the file."""


class SourceError(RtlakeError):
    """A PACS or folder source could not answer a query or deliver a study."""


class SourceUnavailable(SourceError, TransientError):
    """The source could not be reached (refused, timed out, 5xx)."""


class StoreError(RtlakeError):
    """A store refused or failed to take a study."""


class StoreUnavailable(StoreError, TransientError):
    """The store could not be reached or answered with a server error (timeout, 5xx)."""


class InputFileError(PermanentError):
    """A side input (CSV, xlsx, JSON, DICOM) cannot be read; names file and row or line."""

    def __init__(self, path: object, message: str, line: int | None = None) -> None:
        where = f"{path}" if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


class RunLocked(RtlakeError):
    """Another update run holds the lock on this state directory."""
