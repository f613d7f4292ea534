"""The interface every store implements.

A store takes the files of one study under a planned project/subject/session label and says
what it now holds. `has_session` lets a re-run skip work already done, which is what makes
runs idempotent against stores rtlake does not own (XNAT, Orthanc).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from pathlib import Path

from ..records import SessionPlan, StoredSession


class Store(abc.ABC):
    name: str = "store"
    #: False for stores that pull the study themselves (XNAT DQR): then no files are retrieved.
    needs_files: bool = True

    @abc.abstractmethod
    def has_session(self, plan: SessionPlan) -> bool:
        """True when this study is already stored under this label."""

    @abc.abstractmethod
    def put_study(self, plan: SessionPlan, files: list[Path]) -> StoredSession:
        """Store the files as one session; atomic per file, safe to repeat.

        Raises:
            StoreError (TransientError subclasses are retried by the caller).
        """

    #: How many studies `put_studies` takes at once (stores that queue work remotely batch it).
    batch_size: int = 1
    #: Set by the update run: SOPInstanceUIDs -> (study UID, location) of those already stored, from
    #: the catalog. A store uses it so a valid file of another study never joins a stored instance
    #: (issue 19: conflicting duplicates are recorded, never "first wins").
    stored_instances: Callable[[set[str]], dict[str, tuple[str, str]]] | None = None
    #: Set by the update run: its scratch folder. Files under it are the run's own copies, deleted
    #: after the put, so a store may move them instead of copying (the lake renames them in).
    scratch: Path | None = None

    def put_studies(self, items: list[tuple[SessionPlan, list[Path]]]) -> list[StoredSession | Exception]:
        """Store several studies; one result per item, an exception object where that study failed.

        The default calls put_study per item. Stores that hand work to a remote queue (XNAT DQR)
        override it to send whole batches; the run calls it with at most `batch_size` items.
        """
        out: list[StoredSession | Exception] = []
        for plan, files in items:
            try:
                out.append(self.put_study(plan, files))
            except Exception as exc:  # noqa: BLE001 - returned, recorded by the caller
                out.append(exc)
        return out

    def check(self) -> list[str]:
        """Probe that the store is reachable, accepts the configured credentials and can be written.

        Called once at the start of every run (and by `rtlake check`), so a store that cannot take
        anything stops the run in seconds instead of failing every study the same way.

        Returns:
            One line per thing checked, for people.
        Raises:
            StoreUnavailable: cannot be reached (worth trying again later).
            StoreError: refuses us (credentials, permissions); the message names the setting to fix.
        """
        return [f"{self.name}: no check available"]

    def move_session(self, project: str, old_subject: str, new_subject: str, label: str) -> str:
        """Move a stored session to another subject (its NHS number was found or corrected).

        Returns:
            The session's new location.
        Raises:
            NotImplementedError: the store cannot move sessions; the message tells the admin what to do.
            StoreError: the move was refused or failed half-way (the message says what state it is in).
        """
        raise NotImplementedError(
            f"the {self.name} store cannot move sessions between subjects: move {project}/{old_subject}/{label} "
            f"to subject {new_subject} by hand, then run `rtlake update` again")

    def list_sessions(self) -> list[dict]:
        """Rows of (project, subject, label, modality, date, study_uid, ...) the store holds."""
        return []

    def close(self) -> None:  # noqa: B027
        """Release connections."""
