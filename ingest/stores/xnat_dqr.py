"""XNAT pulls the studies itself: drive its DICOM query-retrieve (DQR) plugin and collect failures.

This replaces the manual routine of the SOP (another team pushes the selected accession numbers
through XNAT's query-retrieve and pastes back the failures as JSON): rtlake sends the selected
studies in batches, follows XNAT's queue until the sessions are in the archive, and keeps every
failure. The calls follow the plugin's source (dicom-query-retrieve `rest/DicomQueryRetrieveApi`,
`services/impl/basic/BasicDicomQueryRetrieveService`, `events/PacsDequeueThread`; citations in
tests/servers/xnat_emulator.py) and NRG's own test of it (xnat-rest-tests `TestDicomQueryRetrieve`).

Flow per `put_studies` batch:
  1. `POST /xapi/dqr/query/batch`, the CSV in the multipart part `csv_to_store` with the plugin's
     headers (`Study Instance UID`, and `Subject`/`Session` for relabelling), ≤ `query_batch` rows
     (the plugin takes at most 1,000): which of our studies can XNAT see on its PACS? The plugin
     drops rows it cannot use without a word, so a study missing from the answer is NOT_FOUND.
  2. `POST /xapi/dqr/import` with `aeTitle`/`port` of XNAT's own DICOM receiver
     (`[store.xnat] dqr_ae_title`, `dqr_port`) and a relabelMap per study (Subject → PatientName/
     PatientID, Session → StudyID/AccessionNumber), so the session lands under our subject and
     label. `forceImport` stays false: XNAT then refuses, rather than ignores, a relabel its
     receiver cannot apply. A study XNAT finds no series of is left out of the answer: NOT_QUEUED.
  3. Poll `import/queue` (one call per poll) until our entries are gone, then `import/history`
     (entries there have their own IDs; matched by study UID and queue time): FAILED is a failure;
     ISSUED and RECEIVED ("the first object arrived") mean the study is arriving — it counts as
     stored only once the archive shows the session holding every series XNAT asked the PACS for
     (the entry's `seriesIds`), or, when the entry does not list them, with a scan count unchanged
     over `dqr_stable_polls` polls. Still waiting after `dqr_wait_seconds`: transient (the next
     run finds the session, or queues the study again).
Answers saying "There was a problem", non-JSON answers and 5xx are retried with backoff.

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
from .xnat import XnatStore, clean_label

log = logging.getLogger(__name__)

PROBLEM_MARKER = "There was a problem"
#: PacsRequest's status texts (dqr domain/entities/PacsRequest.java).
QUEUED_STATUSES = frozenset({"QUEUED", "PROCESSING"})
ARRIVING_STATUSES = frozenset({"ISSUED", "RECEIVED"})
FAILED_STATUS = "FAILED"
MAX_QUERY_ROWS = 1000
FAILURE_KEYS = ("accessionNumber", "modalitiesInStudy", "patient", "studyDate", "studyDescription", "studyId",
                "studyInstanceUid")


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


@dataclasses.dataclass
class _Pending:
    """One queued study while we wait for it."""

    index: int
    plan: SessionPlan
    subject: str
    label: str
    queue_id: Any
    queued_time: Any
    status: str = "QUEUED"
    history_id: Any = None
    expected: int = 0  # series XNAT asked the PACS for (the entry's seriesIds), 0 = not said
    counts: list[int] = dataclasses.field(default_factory=list)  # scan counts seen in the archive, per poll


class XnatDqrStore(Store):
    name = "xnat-dqr"
    needs_files = False

    def __init__(self, client: XnatClient, project: str, pacs_id: int = 1, ae_title: str = "", port: int = 0,
                 query_batch: int = 200, import_batch: int = 50, wait_seconds: float = 600.0,
                 failures_dir: Path | None = None, overwrite: str = "none", create_project: bool = True,
                 poll_seconds: float = 5.0, stable_polls: int = 2, identity: str = "uid") -> None:
        self.client = client
        self.project = project
        self.pacs_id = pacs_id
        self.ae_title = ae_title
        self.port = port
        self.query_batch = max(1, min(query_batch, MAX_QUERY_ROWS))
        self.batch_size = import_batch
        self.wait_seconds = wait_seconds
        self.failures_dir = failures_dir
        self.overwrite = overwrite
        self.poll_seconds = poll_seconds
        self.stable_polls = max(1, stable_polls)
        self.archive = XnatStore(client, project, overwrite=overwrite, create_project=create_project,
                                 identity=identity)
        self.failure_files: list[Path] = []

    @classmethod
    def from_config(cls, cfg: Config) -> "XnatDqrStore":
        x = cfg.store.xnat
        # The plugin says "There was a problem" for minutes at a time: longer, slower retries than
        # ordinary REST calls (operators' scripts waited 120 s between tries).
        settings = dataclasses.replace(XnatSettings.from_config(cfg), retries=x.dqr_retries,
                                       backoff=x.dqr_backoff_seconds, max_backoff=300.0)
        return cls(XnatClient(settings), cfg.project.name, pacs_id=x.pacs_id, ae_title=x.dqr_ae_title,
                   port=x.dqr_port, query_batch=x.query_batch, import_batch=x.import_batch,
                   wait_seconds=x.dqr_wait_seconds,
                   failures_dir=x.dqr_failures_dir or (cfg.state_dir / "dqr-failures"), overwrite=x.overwrite,
                   create_project=x.create_project, poll_seconds=x.dqr_poll_seconds,
                   stable_polls=x.dqr_stable_polls, identity=x.identity)

    @property
    def url(self) -> str:
        return self.client.url

    def _receiver_error(self) -> StoreError | None:
        if not self.ae_title or not self.port:
            return StoreError(f"XNAT {self.url}: DQR mode needs the AE title and port of XNAT's own DICOM receiver "
                              f"(the one the PACS sends to): set [store.xnat] dqr_ae_title and dqr_port")
        return None

    def check(self) -> list[str]:
        """The archive store's checks, then the receiver settings and the project's DQR switch.

        Raises:
            StoreError: as XnatStore.check, or the receiver not configured, or DQR not enabled on the project.
        """
        err = self._receiver_error()
        if err is not None:
            raise err
        lines = self.archive.check()
        pid = self.project
        if not self.archive._project_exists():
            raise StoreError(f"XNAT {self.url}: DQR imports need project {pid} to exist and be DQR-enabled; "
                             f"an XNAT admin creates it and enables DQR for it")
        enabled = self.client.call(lambda s: self._get(s, f"/xapi/dqr/settings/project/{pid}/enabled"),
                                   f"DQR settings of project {pid}")
        if enabled is not True:
            raise StoreError(f"XNAT {self.url}: project {pid} is not DQR-enabled (XNAT refuses its imports with "
                             f"403); an XNAT admin enables DQR in the project's settings")
        lines.append(f"project {pid} is DQR-enabled; studies are pulled from PACS {self.pacs_id} to the "
                     f"receiver {self.ae_title}:{self.port}")
        return lines

    def has_session(self, plan: SessionPlan) -> bool:
        return self.archive.has_session(plan)

    def move_session(self, project: str, old_subject: str, new_subject: str, label: str) -> str:
        return self.archive.move_session(project, old_subject, new_subject, label)

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
        err = self._receiver_error()
        if err is not None:
            return [err for _ in plans]
        try:
            self.archive.ensure_project()
            known = self.archive._load_sessions()
        except StoreError as exc:
            return [exc for _ in plans]

        # 0. sessions already archived (by hand, or by an earlier run) are not queued again
        todo: list[tuple[int, SessionPlan]] = []
        for i, p in enumerate(plans):
            subject, label = clean_label(p.subject), clean_label(p.label)
            k = known.get(label)
            try:
                if k is None:
                    todo.append((i, p))
                elif self.archive._is_this_study(k, p, subject) and self.overwrite != "delete":
                    results[i] = self.archive._stored(p, k, None, subject, label, uploaded=False)
                elif self.overwrite == "delete":
                    self.archive._delete(k, f"study {p.study.study_uid} (session {label})")
                    todo.append((i, p))
                else:
                    results[i] = StoreError(
                        f"XNAT {self.url}: DQR: study {p.study.study_uid}: label {label} already used in project "
                        f"{self.project} by {self.archive._describe(k)}{self.archive._uid_hint(k)}")
            except StoreError as exc:
                results[i] = _for_study(exc, p)

        # 1. ask XNAT which studies its PACS has
        found: list[int] = []
        for chunk in _chunks(todo, self.query_batch):
            try:
                answer = self._query(chunk)
            except StoreError as exc:
                for i, p in chunk:
                    results[i] = _for_study(exc, p)
                continue
            hits: dict[str, dict] = {}
            for row in answer:
                for s in row.get("studies") or []:
                    if isinstance(s, dict) and s.get("studyInstanceUid"):
                        hits.setdefault(s["studyInstanceUid"], s)
            for i, p in chunk:
                hit = hits.get(p.study.study_uid)
                if hit is None:
                    results[i] = StoreError(f"XNAT {self.url}: DQR: study {p.study.study_uid} "
                                            f"(accession {p.study.accession or '-'}): status NOT_FOUND "
                                            f"(the PACS query through XNAT did not return it)")
                else:
                    found.append(i)
                    records[i] = _record_from(hit, records[i])

        # 2. queue the found ones, 3. follow them into the archive
        for chunk in _chunks(found, self.batch_size):
            try:
                pending = self._import([(i, plans[i]) for i in chunk], results)
            except StoreError as exc:
                for i in chunk:
                    results[i] = _for_study(exc, plans[i])
                continue
            results.update(self._settle(pending))

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

    def _get(self, session: Any, path: str, params: dict | None = None) -> Any:
        resp = session.interface.get(self.url + path, params=params or {}, timeout=(30.0, self.client.s.timeout))
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
        w = csv.writer(buf, lineterminator="\r\n")
        # The plugin's Row class reads these headers exactly; Subject/Session make the relabelMap.
        w.writerow(["Study Instance UID", "Subject", "Session"])
        for _, p in chunk:
            w.writerow([p.study.study_uid, clean_label(p.subject), clean_label(p.label)])
        body = buf.getvalue().encode()
        first = chunk[0][1].study.study_uid
        answer = self.client.call(
            lambda s: self._post(s, "/xapi/dqr/query/batch",
                                 files={"csv_to_store": ("rtlake-query.csv", body, "text/csv")},
                                 data={"pacsId": str(self.pacs_id)}),
            f"DQR batch query of {len(chunk)} studies (first {first})", scrub=_idents(chunk))
        if not isinstance(answer, list):
            raise StoreError(f"XNAT {self.url}: DQR batch query: expected a JSON list, got {type(answer).__name__}")
        return [row for row in answer if isinstance(row, dict)]

    def _import(self, batch: list[tuple[int, SessionPlan]],
                results: dict[int, StoredSession | Exception]) -> list[_Pending]:
        studies = []
        for _, p in batch:
            studies.append({
                "studyInstanceUid": p.study.study_uid, "seriesInstanceUids": [], "seriesDescriptions": [],
                "relabelMap": {"Subject": clean_label(p.subject), "Session": clean_label(p.label)},
            })
        payload = {"pacsId": self.pacs_id, "aeTitle": self.ae_title, "port": self.port,
                   "projectId": self.project, "forceImport": False, "studies": studies}
        first = batch[0][1].study.study_uid
        try:
            answer = self.client.call(lambda s: self._post(s, "/xapi/dqr/import", json=payload),
                                      f"DQR import of {len(batch)} studies (first {first})", scrub=_idents(batch))
        except StoreError as exc:
            if "(403)" in str(exc):
                raise StoreError(f"{exc} — XNAT refuses DQR imports into a project that is not DQR-enabled, or for "
                                 f"a user who may not edit it (project {self.project})") from None
            raise
        if not isinstance(answer, list):
            raise StoreError(f"XNAT {self.url}: DQR import: expected a JSON list, got {type(answer).__name__}")
        by_uid = {e.get("studyInstanceUid"): e for e in answer if isinstance(e, dict) and e.get("studyInstanceUid")}
        pending = []
        for i, p in batch:
            e = by_uid.get(p.study.study_uid)
            if e is None or e.get("id") is None:
                results[i] = StoreError(f"XNAT {self.url}: DQR: study {p.study.study_uid} (accession "
                                        f"{p.study.accession or '-'}): status NOT_QUEUED (XNAT found no series of "
                                        f"it on PACS {self.pacs_id} to retrieve)")
                continue
            pending.append(_Pending(i, p, clean_label(p.subject), clean_label(p.label), e["id"],
                                    e.get("queuedTime"), str(e.get("status") or "QUEUED").upper(),
                                    expected=len(e.get("seriesIds") or [])))
        return pending

    def _list(self, path: str, n: int) -> list[dict]:
        answer = self.client.call(lambda s: self._get(s, path, {"sort": "desc", "page": "1",
                                                              "pageSize": str(max(100, n))}),
                                  f"DQR {path.rsplit('/', 1)[-1]}")
        return [e for e in answer if isinstance(e, dict)] if isinstance(answer, list) else []

    def _settle(self, pending: list[_Pending]) -> dict[int, StoredSession | Exception]:
        """Follow queued studies: queue → history → archive, until each has an outcome or time runs out."""
        out: dict[int, StoredSession | Exception] = {}
        deadline = time.monotonic() + self.wait_seconds
        waiting = list(pending)
        while waiting:
            try:
                self._poll(waiting, out)
            except StoreError as exc:
                for w in waiting:
                    out[w.index] = _for_study(exc, w.plan)
                return out
            waiting = [w for w in waiting if w.index not in out]
            if not waiting:
                break
            if time.monotonic() >= deadline:
                for w in waiting:
                    out[w.index] = StoreUnavailable(
                        f"XNAT {self.url}: DQR: study {w.plan.study.study_uid} (accession "
                        f"{w.plan.study.accession or '-'}): {self._state(w)} after waiting "
                        f"{self.wait_seconds:.0f} s; the next run looks again")
                break
            time.sleep(min(self.poll_seconds, max(deadline - time.monotonic(), 0.0)))
        return out

    @staticmethod
    def _state(w: _Pending) -> str:
        entry = f"queue entry {w.queue_id}" if w.history_id is None else f"history entry {w.history_id}"
        if w.counts:
            of = f" of {w.expected}" if w.expected else ""
            return f"status {w.status} ({entry}), session {w.label} still arriving ({w.counts[-1]}{of} series)"
        return f"status {w.status or 'UNKNOWN'} ({entry})"

    def _poll(self, waiting: list[_Pending], out: dict[int, StoredSession | Exception]) -> None:
        queue = {e.get("id"): e for e in self._list("/xapi/dqr/import/queue", len(waiting))}
        left_queue = [w for w in waiting if w.queue_id not in queue]
        for w in waiting:
            if w.queue_id in queue:
                w.status = str(queue[w.queue_id].get("status") or w.status).upper()
        if not left_queue:
            return
        history: dict[str, list[dict]] = {}
        for h in self._list("/xapi/dqr/import/history", 2 * len(waiting)):
            history.setdefault(h.get("studyInstanceUid", ""), []).append(h)
        arriving = []
        for w in left_queue:
            h = self._history_of(w, history.get(w.plan.study.study_uid, []))
            if h is None:
                w.status = "DEQUEUED"  # gone from the queue, no history entry seen yet
                continue
            w.history_id, w.status = h.get("id"), str(h.get("status") or "").upper()
            if w.status == FAILED_STATUS:
                reason = str(h.get("errorMessage") or "").strip()
                out[w.index] = StoreError(
                    f"XNAT {self.url}: DQR: study {w.plan.study.study_uid} (accession {w.plan.study.accession or '-'}): "
                    f"status FAILED (history entry {w.history_id})" + (f": {reason[:200]}" if reason else ""))
            elif w.status in ARRIVING_STATUSES:
                arriving.append(w)
        if not arriving:
            return
        # RECEIVED means the first object arrived, not that the session is archived: wait for the
        # archive to show it, with a scan count that has stopped growing.
        rows = {r["label"]: r for r in self.archive.session_rows(with_scans=True)}
        for w in arriving:
            r = rows.get(w.label)
            if r is None:
                continue
            k = self.archive._known({"ID": r["id"], "UID": r["study_uid"], "subject_label": r["subject"],
                                     "xsiType": r["xsi_type"]})
            if not self.archive._is_this_study(k, w.plan, w.subject):
                out[w.index] = StoreError(
                    f"XNAT {self.url}: DQR: study {w.plan.study.study_uid}: XNAT archived session {w.label} as "
                    f"{self.archive._describe(k)}{self.archive._uid_hint(k)}")
                continue
            w.counts.append(int(r["n_scans"]))
            recent = w.counts[-self.stable_polls:]
            stable = len(recent) == self.stable_polls and recent[0] > 0 and len(set(recent)) == 1
            # Complete: every series XNAT asked the PACS for is in the archive; when the entry does not
            # say which, a scan count that has stopped growing.
            if (w.expected and w.counts[-1] >= w.expected) or (not w.expected and stable):
                self.archive._load_sessions()[w.label] = k
                try:
                    out[w.index] = self.archive._stored(w.plan, k, None, w.subject, w.label, uploaded=False)
                except StoreError as exc:
                    out[w.index] = _for_study(exc, w.plan)

    @staticmethod
    def _history_of(w: _Pending, entries: list[dict]) -> dict | None:
        """Our history entry: the plugin copies the queue entry's queuedTime into it (PacsDequeueThread)."""
        same = [h for h in entries if w.queued_time is not None and h.get("queuedTime") == w.queued_time]
        if same:
            return max(same, key=lambda h: h.get("id") or 0)
        later = [h for h in entries if isinstance(h.get("executedTime"), (int, float))
                 and isinstance(w.queued_time, (int, float)) and h["executedTime"] >= w.queued_time]
        return max(later, key=lambda h: h.get("executedTime") or 0) if later else None

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
    if p.study.study_uid in str(exc):
        return exc
    cls = type(exc) if isinstance(exc, StoreError) else StoreError
    return cls(f"study {p.study.study_uid} (accession {p.study.accession or '-'}): {exc}")


def _idents(chunk: list[tuple[int, SessionPlan]]) -> tuple[str, ...]:
    out: list[str] = []
    for _, p in chunk:
        out += [x for x in (p.subject, clean_label(p.subject), p.hospital_id, p.study.patient_id) if x]
    return tuple(out)
