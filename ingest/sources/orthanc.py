"""Orthanc over its REST API: one `POST /tools/find` per patient, WADO-RS (or per-instance GET) to pull.

Why /tools/find and not QIDO on Orthanc: its JSON body needs no URL encoding (the Debian 1.10
build does not decode query strings) and it answers in ~2 ms. Why `Accept-Encoding: identity`:
Orthanc gzips /instances/{id}/file on the fly otherwise, which halves throughput.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from pathlib import Path

from ..errors import SourceError, SourceUnavailable
from ..records import RetrievedStudy, StudyRecord
from ..transfer import Transfer, fetch_study_checked
from ._files import ReceivedStudy
from ._http import HttpClient, WadoRs, env_hint, make_session
from ._query import QueryLookups, StudyQuery, description_matches, dicom_date_range, parse_dicom_date
from .base import ChangeFeed, Source

log = logging.getLogger(__name__)


class OrthancSource(QueryLookups, Source):
    """An Orthanc server (or an Orthanc gateway in front of a hospital PACS)."""

    def __init__(self, url: str, client: HttpClient, *, name: str = "orthanc", retrieve: str = "wado-rs",
                 dicomweb_root: str | None = None, series_details: bool = True) -> None:
        self.url = url.rstrip("/")
        self.client = client
        self.transfer = client.transfer
        self.name = name
        self.mode = retrieve
        self.series_details = series_details
        self.wado = WadoRs(client, dicomweb_root or f"{self.url}/dicom-web")
        self._ids: dict[str, str] = {}  # StudyInstanceUID -> Orthanc study ID, filled by queries
        self.change_page = 1000

    @classmethod
    def from_config(cls, cfg) -> "OrthancSource":
        sec = cfg.source.orthanc
        transfer = Transfer.from_config(cfg.source.transfer, cfg.source.name)
        session = make_session(sec, transfer.concurrency)
        client = HttpClient(session, transfer, cfg.source.name, env_hint(sec), tls_section="[source.orthanc]")
        src = cls(sec.url, client, name=cfg.source.name, retrieve=sec.retrieve, series_details=sec.series_details)
        src.change_page = cfg.harvest.change_log_page
        return src

    # -- health and change log ---------------------------------------------------------------
    def check(self) -> str:
        """GET /system once: reachable, credentials accepted, and which Orthanc answered."""
        info = self.client.json("GET", f"{self.url}/system", "GET /system")
        if not isinstance(info, dict):
            raise SourceError(f"{self.name}: GET /system: unexpected answer (not an object)")
        return f"{self.name}: Orthanc {info.get('Version', '?')} ({info.get('Name', '?')}) at {self.url}"

    def changes(self, cursor: str | None, cohort: set[str], page: int | None = None,
                max_lookups: int | None = None) -> ChangeFeed:
        """Cohort patients with new or changed resources since `cursor`, from Orthanc's change log.

        Why: a run with nothing new then costs a couple of requests instead of one query per patient.
        How: `GET /changes?since=N&limit=…` (paged until `Done`); Patient-level entries are matched
        locally (Orthanc's patient ID is the SHA-1 of PatientID); every other changed resource is
        mapped to its patient with `POST /tools/bulk-content` (`Level: Patient`), one request for many.
        The log cannot cover the gap, and the feed says so (`patients=None`), when there is no cursor
        yet, when Orthanc's log restarted below it (a reset or a new database) or skips ahead of it
        (cleared with DELETE /changes), or when resolving would cost more requests than listing
        every patient.
        """
        page = page or self.change_page
        requests = 0
        start = self.client.json("GET", f"{self.url}/changes?last", "GET /changes?last")
        requests += 1
        last = int((start or {}).get("Last", 0))
        if cursor is None:
            return ChangeFeed(str(last), None, requests, "no change-log position yet")
        since = int(cursor)
        if last < since:
            return ChangeFeed(str(last), None, requests, f"change log restarted (now at {last}, we had {since})")
        if last == since:
            return ChangeFeed(str(last), frozenset(), requests)
        by_orthanc_id = {_orthanc_patient_id(h): h for h in cohort}
        patients: set[str] = set()
        others: set[str] = set()
        pos, first = since, True
        while True:
            what = f"GET /changes?since={pos}"
            body = self.client.json("GET", f"{self.url}/changes?since={pos}&limit={page}", what)
            requests += 1
            entries = (body or {}).get("Changes") or []
            if first and entries and int(entries[0].get("Seq", 0)) > since + 1:
                return ChangeFeed(str(last), None, requests,
                                  f"change log has a gap after {since} (cleared or pruned)")
            first = False
            for ch in entries:
                seq = int(ch.get("Seq", pos))
                pos = max(pos, seq)
                if seq > last:
                    continue  # arrived after we started; the next run reads it
                kind, rid = ch.get("ResourceType"), ch.get("ID")
                if ch.get("ChangeType") in _NO_NEW_CONTENT or not rid:
                    continue
                if kind == "Patient":
                    if rid in by_orthanc_id:
                        patients.add(by_orthanc_id[rid])
                else:
                    others.add(rid)
            if (body or {}).get("Done", True) or not entries or pos >= last:
                break
        budget = max_lookups if max_lookups is not None else len(cohort)
        chunk = 5000
        if -(-len(others) // chunk) > max(budget, 1):
            return ChangeFeed(str(last), None, requests, f"{len(others)} changed resources: a full listing is cheaper")
        ids = sorted(others)
        for i in range(0, len(ids), chunk):
            what = "POST /tools/bulk-content (parents of changed resources)"
            try:
                answer = self.client.json("POST", f"{self.url}/tools/bulk-content", what,
                                          json={"Resources": ids[i:i + chunk], "Level": "Patient"})
            except SourceUnavailable:
                raise
            except SourceError as exc:  # Orthanc before 1.9.4 has no bulk-content: list everyone instead
                return ChangeFeed(str(last), None, requests + 1, f"cannot resolve changes ({exc})")
            requests += 1
            for item in answer if isinstance(answer, list) else []:
                pid = by_orthanc_id.get(item.get("ID", "")) if isinstance(item, dict) else None
                if pid:
                    patients.add(pid)
        return ChangeFeed(str(last), frozenset(patients), requests)

    # -- queries ---------------------------------------------------------------------------
    def find(self, q: StudyQuery) -> list[StudyRecord]:
        """Studies matching the query (description matched client-side, folded)."""
        query: dict[str, str] = {}
        if q.patient_id:
            query["PatientID"] = q.patient_id
        if q.accession:
            query["AccessionNumber"] = q.accession
        if q.study_uid:
            query["StudyInstanceUID"] = q.study_uid
        dates = dicom_date_range(q.date_from, q.date_to)
        if dates:
            query["StudyDate"] = dates
        body = {"Level": "Study", "Query": query, "Expand": True}
        what = f"/tools/find ({q.describe()})"
        answer = self.transfer.call(lambda: self.client.json("POST", f"{self.url}/tools/find", what, json=body), what)
        if not isinstance(answer, list):
            raise SourceError(f"{self.name}: {what}: unexpected answer (not a list)")
        out = []
        ids: dict[str, str] = {}
        for item in answer:
            rec = self._record(item, what)
            if rec is None or not description_matches(q.description, rec.description):
                continue
            out.append(rec)
            ids[rec.study_uid] = item.get("ID", "")
        if out and self.series_details:
            details = self._series_details(query, q)
            out = [replace(r, modalities=details[ids[r.study_uid]][0], n_instances=details[ids[r.study_uid]][1])
                   if ids.get(r.study_uid) in details else r for r in out]
        return out

    def _series_details(self, query: dict[str, str], q: StudyQuery) -> dict[str, tuple[tuple[str, ...], int]]:
        """Orthanc study ID -> (modalities, instance count), from one Series-level /tools/find.

        Why: Orthanc 1.10 returns neither ModalitiesInStudy nor an instance count at Study level,
        and both matter (session type; partial-transfer check).
        """
        what = f"/tools/find series ({q.describe()})"
        body = {"Level": "Series", "Query": query, "Expand": True}
        answer = self.transfer.call(lambda: self.client.json("POST", f"{self.url}/tools/find", what, json=body), what)
        mods: dict[str, list[str]] = {}
        counts: dict[str, int] = {}
        for item in answer if isinstance(answer, list) else []:
            parent = item.get("ParentStudy", "")
            m = (item.get("MainDicomTags") or {}).get("Modality", "")
            lst = mods.setdefault(parent, [])
            if m and m not in lst:
                lst.append(m)
            counts[parent] = counts.get(parent, 0) + len(item.get("Instances") or [])
        return {k: (tuple(v), counts.get(k, 0)) for k, v in mods.items()}

    def _record(self, item: dict, what: str) -> StudyRecord | None:
        if not isinstance(item, dict):
            raise SourceError(f"{self.name}: {what}: malformed study entry")
        tags = item.get("MainDicomTags") or {}
        ptags = item.get("PatientMainDicomTags") or {}
        uid = tags.get("StudyInstanceUID", "")
        if not uid:
            log.warning("%s: %s: skipped a study without StudyInstanceUID (Orthanc ID %s)", self.name, what,
                        item.get("ID"))
            return None
        if item.get("ID"):
            self._ids[uid] = item["ID"]
        mods = tags.get("ModalitiesInStudy", "")
        return StudyRecord(
            study_uid=uid,
            patient_id=ptags.get("PatientID", ""),
            accession=tags.get("AccessionNumber", ""),
            study_date=parse_dicom_date(tags.get("StudyDate")),
            description=tags.get("StudyDescription", ""),
            modalities=tuple(m for m in mods.split("\\") if m),
            n_instances=None,
            study_id=tags.get("StudyID", ""),
            source=self.name,
        )

    # -- retrieval -------------------------------------------------------------------------
    def _orthanc_id(self, study: StudyRecord) -> str:
        if study.study_uid not in self._ids:
            if not self.find_study(study.study_uid):
                raise SourceError(f"{self.name}: study {study.study_uid} not found on the PACS")
        return self._ids[study.study_uid]

    def _list(self, oid: str, uid: str) -> dict[str, object]:
        what = f"instance list of study {uid}"
        items = self.client.json("GET", f"{self.url}/studies/{oid}/instances", what)
        out: dict[str, object] = {}
        for it in items if isinstance(items, list) else []:
            sop = (it.get("MainDicomTags") or {}).get("SOPInstanceUID")
            if sop:
                out[sop] = it.get("ID")
        return out

    def _instance_file(self, instance_id: object, uid: str, rec: ReceivedStudy) -> None:
        what = f"instance {instance_id} of study {uid}"
        r = self.client.request("GET", f"{self.url}/instances/{instance_id}/file", what, stream=True,
                                headers={"Accept-Encoding": "identity", "Accept": "application/dicom"})
        rec.add_bytes(b"".join(self.client.chunks(r, what)), what)

    def retrieve(self, study: StudyRecord, dest: Path) -> RetrievedStudy:
        """Pull one study into `dest`, re-fetching missing instances; partial results are reported, not raised.

        Raises:
            SourceError/SourceUnavailable: the study is unknown or nothing could be received.
        """
        uid = study.study_uid
        rec = ReceivedStudy(dest, uid, self.name)
        oid = self._orthanc_id(study)
        listing: dict[str, object] = {}

        def list_instances() -> dict[str, object]:
            if not listing:
                listing.update(self._list(oid, uid))
            return listing

        expected = study.n_instances
        if expected is None:  # /tools/find has no instance count on 1.10: ask once, so partials show
            expected = len(self.transfer.call(list_instances, f"list instances of study {uid}"))
        fetch_all = None
        if self.mode == "wado-rs":
            def fetch_all() -> None:
                self.wado.study(uid, rec)

        result = fetch_study_checked(
            self.transfer, f"study {uid}", expected, lambda: rec.settled, fetch_all,
            list_instances, lambda sop, iid: self._instance_file(iid, uid, rec))
        if rec.nothing():
            raise SourceError(f"{self.name}: study {uid}: no instances received")
        expected = result.expected if result.expected is not None else expected
        if not result.complete:
            log.warning("%s: study %s partial: %s", self.name, uid, result.describe())
        return RetrievedStudy(study=study, files=rec.files, expected=expected, refused=rec.refused,
                              conflicts=rec.conflicts)

    def close(self) -> None:
        self.client.session.close()


# Change types that never mean new or changed DICOM content (Orthanc's ChangeType enumeration):
# "stable" fires StableAge seconds after the last instance, deletions leave nothing to harvest.
# Anything not listed (NewInstance, NewSeries, ModifiedStudy, UpdatedAttachment, …) sends the
# patient for a listing, so an unknown future type errs on the side of looking.
_NO_NEW_CONTENT = frozenset({"StablePatient", "StableStudy", "StableSeries", "Deleted", "CompletedSeries",
                             "JobSubmitted", "JobSuccess", "JobFailure", "UpdatedMetadata"})


def _orthanc_patient_id(patient_id: str) -> str:
    """Orthanc's resource ID of a patient: SHA-1 of the PatientID, in five dash-separated groups."""
    h = hashlib.sha1(patient_id.encode("utf-8")).hexdigest()
    return "-".join(h[i:i + 8] for i in range(0, 40, 8))
