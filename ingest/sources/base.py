"""The interface every PACS source implements.

A source answers two questions: which studies does this patient have (optionally since a
date), and give me the files of this study. Everything else (selection, storing, catalog)
is the same whatever the protocol.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..records import RetrievedStudy, StudyRecord


@dataclass(frozen=True)
class ChangeFeed:
    """What a PACS's change log says happened since a cursor.

    `patients` holds the hospital IDs (PatientID) of every patient with a new or changed study,
    series or instance; None means the log cannot cover the gap (first run, a reset or pruned log,
    too many changes to resolve cheaply) and every patient must be listed in full. `cursor` is the
    position to resume from next time, read *before* anything else so nothing that arrives during
    the run is skipped.
    """

    cursor: str
    patients: frozenset[str] | None
    note: str = ""


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

    def check(self) -> str:
        """One quick probe that the source answers with the configured credentials (no retries).

        Returns a one-line description of what answered (for `rtlake check`).

        Raises:
            SourceUnavailable: cannot be reached (refused, timed out, 5xx).
            SourceError: answers but refuses us (credentials, AE title) or with something unusable.
        """
        return f"{self.name}: no check available"

    def changes(self, cursor: str | None, cohort: set[str]) -> ChangeFeed | None:
        """Patients changed since `cursor`, from the PACS's own change log; None when it has none.

        Raises:
            SourceUnavailable, SourceError: as for query_patient.
        """
        return None

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
