"""The interface every PACS source implements.

A source answers two questions: which studies does this patient have (optionally since a
date), and give me the files of this study. Everything else (selection, storing, catalog)
is the same whatever the protocol.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

from ..records import RetrievedStudy, StudyRecord


class Source(abc.ABC):
    """A PACS (or something that behaves like one)."""

    name: str = "pacs"

    @abc.abstractmethod
    def query_patient(self, patient_id: str, since: dt.date | None = None) -> Iterator[StudyRecord]:
        """Yield the patient's studies, all history when `since` is None.

        Raises:
            SourceUnavailable: the PACS could not be reached after retries.
            SourceError: the PACS answered with something unusable.
        """

    @abc.abstractmethod
    def retrieve(self, study: StudyRecord, dest: Path) -> RetrievedStudy:
        """Write the study's DICOM files under `dest` (a scratch folder) and list them.

        Raises:
            SourceUnavailable, SourceError: as for query_patient; a partial transfer is
            reported through RetrievedStudy.expected rather than raised.
        """

    def find_accession(self, accession: str) -> list[StudyRecord]:
        """Resolve an accession number to studies (not every source can do this cheaply)."""
        raise NotImplementedError(f"{type(self).__name__} cannot look up accession numbers")

    def failures(self) -> list[tuple[str, str]]:
        """Problems met outside any one study (e.g. unreadable files while indexing): (target, reason)."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
