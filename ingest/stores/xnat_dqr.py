"""XNAT pulls the studies itself: drive its DICOM query-retrieve (DQR) plugin and collect failures.

This replaces the manual routine of the SOP (another team pushes the selected accession numbers
through XNAT's query-retrieve and pastes back the failures as JSON): rtlake sends the selected
studies in batches, waits for XNAT's import queue to settle, and keeps every failure.

Flow per `put_studies` batch:
  1. `POST /xapi/dqr/query/batch` (multipart CSV, ≤ `query_batch` rows a call): which of our
     studies can XNAT see on its PACS? A study the query does not return is a failure
     ("not found on PACS"), as the SOP's cancelled/never-acquired studies are.
  2. `POST /xapi/dqr/import` (JSON, ≤ `import_batch` studies a call) with a relabel map so the
     session lands under our subject (NHS number / NN_<id>) and label (accession).
  3. `GET /xapi/dqr/import/history/{id}` until each queue entry is final or `dqr_wait_seconds`
     pass; FAILED entries are failures, still-running ones are transient (the next run asks
     `has_session` and re-queues only what did not arrive).
Answers saying "There was a problem", non-JSON answers and 5xx are retried with backoff.

The plugin's API is known only from client code that drives it (see notes/xnat.md §7), not
from its documentation; the shapes here follow that code.

Every failure comes back as a StoreError naming the DQR status (the run records it in the
catalog), and the raw failure records, in the shape users already receive them (accessionNumber,
modalitiesInStudy, patient{id,name,sex}, studyDate, studyDescription, studyId,
studyInstanceUid), are written atomically to `<state_dir>/dqr-failures/<timestamp>.json` for
the reporting importer. That file holds patient identifiers, so it is written owner-only.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from ..atomic import write_text
from ..config import Config
from ..errors import StoreError, StoreUnavailable
from ..records import SessionPlan, StoredSession
from ._xnat_client import XnatClient, XnatSettings
from .base import Store
from .xnat import XnatStore

log = logging.getLogger(__name__)

PROBLEM_MARKER = "There was a problem"
#: Queue statuses after which XNAT will not touch an entry again. GUESS from client code.
DONE_STATUSES = frozenset({"RECEIVED", "ARCHIVED", "COMPLETE", "COMPLETED", "SUCCESS", "IMPORTED"})
FAILED_STATUSES = frozenset({"FAILED", "ERROR", "REJECTED", "CANCELLED", "CANCELED", "NOT_FOUND"})
FAILURE_KEYS = ("accessionNumber", "modalitiesInStudy", "patient", "studyDate", "studyDescription", "studyId",
                "studyInstanceUid")


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


class XnatDqrStore(Store):
    name = "xnat-dqr"
    needs_files = False

    def __init__(self, client: XnatClient, project: str, pacs_id: int = 1, query_batch: int = 200,
                 import_batch: int = 50, wait_seconds: float = 600.0, failures_dir: Path | None = None,
                 overwrite: str = "none", create_project: bool = True, poll_seconds: float = 2.0) -> None:
        self.client = client
        self.project = project
        self.pacs_id = pacs_id
        self.query_batch = query_batch
        self.batch_size = import_batch
        self.wait_seconds = wait_seconds
        self.failures_dir = failures_dir
        self.force = overwrite != "none"
        self.poll_seconds = poll_seconds
        self.archive = XnatStore(client, project, overwrite=overwrite, create_project=create_project)
        self.failure_files: list[Path] = []

    @classmethod
    def from_config(cls, cfg: Config) -> "XnatDqrStore":
        x = cfg.store.xnat
        # The plugin says "There was a problem" for minutes at a time: longer, slower retries than
        # ordinary REST calls (operators' scripts waited 120 s between tries).
        settings = dataclasses.replace(XnatSettings.from_config(cfg), retries=x.dqr_retries,
                                       backoff=x.dqr_backoff_seconds, max_backoff=300.0)
        return cls(XnatClient(settings), cfg.project.name, pacs_id=x.pacs_id,
                   query_batch=x.query_batch, import_batch=x.import_batch, wait_seconds=x.dqr_wait_seconds,
                   failures_dir=x.dqr_failures_dir or (cfg.state_dir / "dqr-failures"), overwrite=x.overwrite,
                   create_project=x.create_project)

    @property
    def url(self) -> str:
        return self.client.url

    def has_session(self, plan: SessionPlan) -> bool:
        return self.archive.has_session(plan)

    def put_study(self, plan: SessionPlan, files: list[Path]) -> StoredSession:
        result = self.put_studies([(plan, files)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    # -- the batch -----------------------------------------------------------------------------
    def put_studies(self, items: list[tuple[SessionPlan, list[Path]]]) -> list[StoredSession | Exception]:
        plans = [p for p, _ in items]
        results: dict[int, StoredSession | Exception] = {}
        records: dict[int, dict] = {i: _own_record(p) for i, p in enumerate(plans)}
        try:
            self.archive.ensure_project()
        except StoreError as exc:
            return [exc for _ in plans]

        # 0. sessions already archived (by hand, or by an earlier run) are not queued again
        todo = []
        for i, p in enumerate(plans):
            try:
                known = self.archive._load_sessions().get(p.label)
            except StoreError as exc:
                return [exc for _ in plans]
            if known is not None and known.uid == p.study.study_uid and not self.force:
                results[i] = StoredSession(plan=p, location=f"{self.url}/data/experiments/{known.id}")
            else:
                todo.append((i, p))

        # 1. ask XNAT which studies its PACS has
        found: dict[int, dict] = {}
        for chunk in _chunks(todo, self.query_batch):
            try:
                answer = self._query(chunk)
            except StoreError as exc:
                for i, p in chunk:
                    results[i] = _for_study(exc, p)
                continue
            by_uid = {s.get("studyInstanceUid"): s for row in answer for s in (row.get("studies") or [])
                      if isinstance(s, dict)}
            for i, p in chunk:
                hit = by_uid.get(p.study.study_uid)
                if hit is None:
                    results[i] = StoreError(f"XNAT {self.url}: DQR: study {p.study.study_uid} "
                                            f"(accession {p.study.accession or '-'}): status NOT_FOUND "
                                            f"(the PACS query through XNAT did not return it)")
                else:
                    found[i] = hit
                    records[i] = _record_from(hit, records[i])

        # 2. queue the found ones, 3. wait for the queue
        for chunk in _chunks(sorted(found), self.batch_size):
            try:
                entries = self._import([(i, plans[i], found[i]) for i in chunk])
            except StoreError as exc:
                for i in chunk:
                    results[i] = _for_study(exc, plans[i])
                continue
            results.update(self._settle(entries, plans))

        failed = [records[i] for i in sorted(results) if isinstance(results[i], Exception)]
        if failed:
            self._write_failures(failed)
        return [results.get(i, StoreError(f"XNAT {self.url}: DQR: study {p.study.study_uid}: no outcome"))
                for i, p in enumerate(plans)]

    # -- calls -------------------------------------------------------------------------------------
    def _post(self, session: Any, path: str, **kw: Any) -> Any:
        """POST to the plugin; the JSON answer, or an error the client policy understands."""
        resp = session.interface.post(self.url + path, timeout=(30.0, self.client.s.timeout), **kw)
        return self._json(resp, path)

    def _json(self, resp: requests.Response, path: str) -> Any:
        if resp.status_code == 204:
            return []
        if resp.status_code >= 400:
            raise requests.HTTPError(f"status {resp.status_code} {resp.text[:200]}", response=resp)
        if PROBLEM_MARKER.lower() in resp.text.lower():
            raise StoreUnavailable(f"XNAT {self.url}: {path}: XNAT answered '{PROBLEM_MARKER}…'")
        try:
            return resp.json()
        except ValueError:
            kind = resp.headers.get("Content-Type", "unknown type")
            raise StoreUnavailable(f"XNAT {self.url}: {path}: answer is not JSON ({kind})") from None

    def _query(self, chunk: list[tuple[int, SessionPlan]]) -> list[dict]:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["accessionNumber", "patientId", "studyDate", "Subject", "Session"])
        for _, p in chunk:
            d = p.study.study_date.strftime("%Y%m%d") if p.study.study_date else ""
            w.writerow([p.study.accession, "" if p.study.accession else p.study.patient_id, d, p.subject, p.label])
        body = buf.getvalue().encode()
        first = chunk[0][1].study.study_uid
        answer = self.client.call(
            lambda s: self._post(s, "/xapi/dqr/query/batch", files={"file": ("rtlake-query.csv", body, "text/csv")},
                                 data={"pacsId": str(self.pacs_id)}),
            f"DQR batch query of {len(chunk)} studies (first {first})", scrub=_idents(chunk))
        if not isinstance(answer, list):
            raise StoreError(f"XNAT {self.url}: DQR batch query: expected a JSON list, got {type(answer).__name__}")
        return [row for row in answer if isinstance(row, dict)]

    def _import(self, batch: list[tuple[int, SessionPlan, dict]]) -> dict[int, dict]:
        studies = []
        for _, p, hit in batch:
            studies.append({
                "studyInstanceUid": p.study.study_uid,
                "studyId": hit.get("studyId", p.study.study_id),
                "accessionNumber": hit.get("accessionNumber", p.study.accession),
                "studyDate": hit.get("studyDate", ""),
                "patient": hit.get("patient") or {"id": p.study.patient_id},
                "relabelMap": {"Subject": p.subject, "Session": p.label},
            })
        payload = {"pacsId": self.pacs_id, "projectId": self.project, "forceImport": self.force, "studies": studies}
        first = batch[0][1].study.study_uid
        answer = self.client.call(lambda s: self._post(s, "/xapi/dqr/import", json=payload),
                                  f"DQR import of {len(batch)} studies (first {first})",
                                  scrub=_idents([(i, p) for i, p, _ in batch]))
        if not isinstance(answer, list):
            raise StoreError(f"XNAT {self.url}: DQR import: expected a JSON list, got {type(answer).__name__}")
        by_uid = {e.get("studyInstanceUid"): e for e in answer if isinstance(e, dict) and e.get("studyInstanceUid")}
        by_acc = {e.get("accessionNumber"): e for e in answer if isinstance(e, dict) and e.get("accessionNumber")}
        out: dict[int, dict] = {}
        for n, (i, p, _) in enumerate(batch):
            e = by_uid.get(p.study.study_uid) or (by_acc.get(p.study.accession) if p.study.accession else None)
            if e is None and len(answer) == len(batch) and isinstance(answer[n], dict):
                e = answer[n]  # GUESS: entries come back in request order when they carry no UID
            out[i] = e or {}
        return out

    def _history(self, qid: Any) -> dict:
        def get(session: Any) -> Any:
            resp = session.interface.get(f"{self.url}/xapi/dqr/import/history/{qid}",
                                         timeout=(30.0, self.client.s.timeout))
            return self._json(resp, f"/xapi/dqr/import/history/{qid}")

        answer = self.client.call(get, f"DQR queue entry {qid}")
        return answer if isinstance(answer, dict) else {}

    def _settle(self, entries: dict[int, dict], plans: list[SessionPlan]) -> dict[int, StoredSession | Exception]:
        out: dict[int, StoredSession | Exception] = {}
        pending = {i: e for i, e in entries.items()}
        for i, e in list(pending.items()):
            if not e.get("id") and e.get("id") != 0:
                p = plans[i]
                out[i] = StoreError(f"XNAT {self.url}: DQR: study {p.study.study_uid} (accession "
                                    f"{p.study.accession or '-'}): status NOT_QUEUED (the import answer has no entry)")
                pending.pop(i)
        deadline = time.monotonic() + self.wait_seconds
        status = {i: str(e.get("status", "")).upper() for i, e in pending.items()}

        def resolve() -> None:
            for i in list(pending):
                if i in out:
                    pending.pop(i)
                elif status[i] in DONE_STATUSES | FAILED_STATUSES:
                    out[i] = self._outcome(plans[i], pending.pop(i), status[i])

        resolve()
        while pending:
            for i, e in pending.items():
                try:
                    status[i] = str(self._history(e["id"]).get("status", "")).upper()
                except StoreError as exc:
                    out[i] = _for_study(exc, plans[i])
            resolve()
            if not pending:
                break
            if time.monotonic() >= deadline:
                for i, e in pending.items():
                    p = plans[i]
                    out[i] = StoreUnavailable(
                        f"XNAT {self.url}: DQR: study {p.study.study_uid} (accession {p.study.accession or '-'}): "
                        f"status {status[i] or 'UNKNOWN'} after waiting {self.wait_seconds:.0f} s "
                        f"(queue entry {e['id']})")
                break
            time.sleep(min(self.poll_seconds, max(deadline - time.monotonic(), 0.0)))
        return out

    def _outcome(self, p: SessionPlan, entry: dict, status: str) -> StoredSession | Exception:
        what = f"study {p.study.study_uid} (accession {p.study.accession or '-'})"
        if status in FAILED_STATUSES:
            return StoreError(f"XNAT {self.url}: DQR: {what}: status {status} (queue entry {entry.get('id')})")
        location = f"{self.url}/xapi/dqr/import/history/{entry.get('id')}"
        try:
            k = self.archive._refresh_label(p.label)
        except StoreError:
            k = None
        if k is not None and k.uid == p.study.study_uid and k.id:
            location = f"{self.url}/data/experiments/{k.id}"
        return StoredSession(plan=p, location=location)

    def _write_failures(self, records: list[dict]) -> Path | None:
        if self.failures_dir is None:
            return None
        stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S%f")
        path = Path(self.failures_dir) / f"{stamp}.json"
        clean = [{k: r.get(k, "" if k != "modalitiesInStudy" else []) for k in FAILURE_KEYS} for r in records]
        write_text(path, json.dumps(clean, indent=2, sort_keys=True) + "\n", mode=0o600)
        self.failure_files.append(path)
        log.warning("XNAT %s: %d DQR failure records written to %s", self.url, len(clean), path)
        return path

    def list_sessions(self) -> list[dict]:
        return self.archive.list_sessions()

    def close(self) -> None:
        self.client.close()


def _own_record(p: SessionPlan) -> dict:
    """A failure record from what we asked for (used when XNAT never saw the study)."""
    s = p.study
    return {
        "accessionNumber": s.accession, "modalitiesInStudy": list(s.modalities),
        "patient": {"id": s.patient_id, "name": "", "sex": ""},
        "studyDate": s.study_date.strftime("%Y%m%d") if s.study_date else "",
        "studyDescription": s.description, "studyId": s.study_id, "studyInstanceUid": s.study_uid,
    }


def _record_from(hit: dict, own: dict) -> dict:
    """XNAT's own description of the study, with our fields filling any gaps."""
    rec = dict(own)
    for k in FAILURE_KEYS:
        if hit.get(k) not in (None, ""):
            rec[k] = hit[k]
    return rec


def _for_study(exc: StoreError, p: SessionPlan) -> StoreError:
    """The batch error, restated for one study so each failure row names its own study."""
    cls = type(exc) if isinstance(exc, StoreError) else StoreError
    return cls(f"study {p.study.study_uid} (accession {p.study.accession or '-'}): {exc}")


def _idents(chunk: list[tuple[int, SessionPlan]]) -> tuple[str, ...]:
    out: list[str] = []
    for _, p in chunk:
        out += [x for x in (p.subject, p.hospital_id, p.study.patient_id) if x]
    return tuple(out)
