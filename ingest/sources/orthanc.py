"""Orthanc over its REST API: a patient's own listing to harvest, WADO-RS (or per-instance GET) to pull.

Why the REST API and not QIDO on Orthanc: Orthanc's DICOMweb plugin answers a QIDO study query
with an extra listing and a read of one file per study (~2x slower), and the Debian 1.10 build
does not decode query strings. Why a patient's listing (`/patients/<id>/studies`) and not
`/tools/find`: it is an ID look-up, exact on PatientID, where /tools/find folds case. Why `Accept-Encoding: identity`:
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
        self._hashed: bool | None = None  # patient IDs are SHA-1 of PatientID (checked once)
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

    def changes(self, cursor: str | None, cohort: set[str], page: int | None = None) -> ChangeFeed:
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
        start = self.client.json("GET", f"{self.url}/changes?last", "GET /changes?last")
        last = int((start or {}).get("Last", 0))
        if cursor is None:
            return ChangeFeed(str(last), None, "no change-log position yet")
        since = int(cursor)
        if last < since:
            return ChangeFeed(str(last), None, f"change log restarted (now at {last}, we had {since})")
        if last == since:
            return ChangeFeed(str(last), frozenset())
        by_orthanc_id = {_orthanc_patient_id(h): h for h in cohort}
        patients: set[str] = set()
        others: set[str] = set()
        pos, first = since, True
        while True:
            what = f"GET /changes?since={pos}"
            body = self.client.json("GET", f"{self.url}/changes?since={pos}&limit={page}", what)
            entries = (body or {}).get("Changes") or []
            if first and entries and int(entries[0].get("Seq", 0)) > since + 1:
                return ChangeFeed(str(last), None, f"change log has a gap after {since} (cleared or pruned)")
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
        chunk = 5000
        if -(-len(others) // chunk) > max(len(cohort), 1):
            return ChangeFeed(str(last), None, f"{len(others)} changed resources: a full listing is cheaper")
        ids = sorted(others)
        for i in range(0, len(ids), chunk):
            what = "POST /tools/bulk-content (parents of changed resources)"
            try:
                answer = self.client.json("POST", f"{self.url}/tools/bulk-content", what,
                                          json={"Resources": ids[i:i + chunk], "Level": "Patient"})
            except SourceUnavailable:
                raise
            except SourceError as exc:  # Orthanc before 1.9.4 has no bulk-content: list everyone instead
                return ChangeFeed(str(last), None, f"cannot resolve changes ({exc})")
            for item in answer if isinstance(answer, list) else []:
                pid = by_orthanc_id.get(item.get("ID", "")) if isinstance(item, dict) else None
                if pid:
                    patients.add(pid)
        return ChangeFeed(str(last), frozenset(patients))

    # -- queries ---------------------------------------------------------------------------
    def find(self, q: StudyQuery) -> list[StudyRecord]:
        """Studies matching the query (description and dates matched client-side, folded).

        A patient's listing (the harvest) goes by the patient's Orthanc ID, the others through
        `/tools/find`; both ask for modalities and instance counts (see `_patient_studies`).
        """
        if q.patient_id and not q.accession and not q.study_uid and not _has_wildcard(q.patient_id) \
                and self._patient_ids_are_hashes():
            return self._patient_studies(q)
        return self._tools_find(q)

    def _patient_studies(self, q: StudyQuery) -> list[StudyRecord]:
        """One patient's studies with modalities and instance counts, in as few requests as the server allows.

        Measured on Orthanc 1.10.1 (scripts/bench/bench_harvest.py, notes in the README):
        - `/tools/find` matches PatientID case-insensitively and with wildcards (`rtp1` finds `RTP1`);
          the patient's own resource (`/patients/<SHA-1 of PatientID>`) is exact and needs no search.
        - Neither Study- nor Series-level answers carry both the study's tags and its instance
          count: Series-level `Expand` gives only series tags and `ParentStudy`, and 1.10 ignores
          `RequestedTags`. So 1.10 takes a second listing, `/patients/<id>/series?expand`, for
          modalities and counts. Orthanc >= 1.11 computes ModalitiesInStudy and
          NumberOfStudyRelatedInstances for `requestedTags` (ServerContext::ComputeStudyTags), so
          the first answer carries them and the second request is skipped.
        - A patient unknown to the PACS is Orthanc's 404 "Unknown resource": no studies.
        Both listings are plain ID look-ups, cheaper for Orthanc than a tag search.
        """
        oid = _orthanc_patient_id(q.patient_id or "")
        what = f"patient studies ({q.describe()})"
        url = f"{self.url}/patients/{oid}/studies?expand"
        if self.series_details:
            url += f"&requestedTags={';'.join(_COMPUTED)}"
        answer = self._listing(url, what)
        if answer is None:
            return []
        out: list[StudyRecord] = []
        ids: dict[str, str] = {}
        for item in answer:
            rec = self._record(item, what)
            if rec is None or rec.patient_id != q.patient_id or not q.date_ok(rec.study_date) \
                    or not description_matches(q.description, rec.description):
                continue
            out.append(rec)
            ids[rec.study_uid] = item.get("ID", "")
        if out and self.series_details and any(r.n_instances is None for r in out):
            series = self._listing(f"{self.url}/patients/{oid}/series?expand", f"patient series ({q.describe()})")
            out = _with_details(out, ids, _series_summary(series or []))
        return out

    def _listing(self, url: str, what: str) -> list | None:
        """GET a resource listing; None when Orthanc says the resource does not exist."""
        status, answer = self.transfer.call(
            lambda: self.client.json_status("GET", url, what, accept=_ABSENT), what)
        if status == 404:
            if isinstance(answer, dict) and answer.get("OrthancStatus") == _UNKNOWN_RESOURCE:
                return None
            raise SourceError(f"{self.name}: HTTP 404 for {what} (not an Orthanc answer: check [source.orthanc] url)")
        if not isinstance(answer, list):
            raise SourceError(f"{self.name}: {what}: unexpected answer (not a list)")
        return answer

    def _patient_ids_are_hashes(self) -> bool:
        """Orthanc names a patient by the SHA-1 of its PatientID: checked once on a real patient.

        Why check: every patient listing relies on it, and if a server named patients otherwise
        every listing would come back "unknown patient" — silently empty. One request per run;
        a PACS with no patient yet is asked again next time.
        """
        if self._hashed is None:
            what = "GET /patients?expand&since=0&limit=1 (how Orthanc names patients)"
            answer = self.transfer.call(
                lambda: self.client.json("GET", f"{self.url}/patients?expand&since=0&limit=1", what), what)
            item = answer[0] if isinstance(answer, list) and answer and isinstance(answer[0], dict) else None
            if item is None:
                return True  # nothing to check against; nothing to find either
            pid = (item.get("MainDicomTags") or {}).get("PatientID")
            self._hashed = pid is not None and _orthanc_patient_id(pid) == item.get("ID")
            if not self._hashed:
                log.warning("%s: Orthanc does not name patients by the SHA-1 of PatientID; "
                            "patient listings use /tools/find", self.name)
        return self._hashed

    def _tools_find(self, q: StudyQuery) -> list[StudyRecord]:
        """Accession, UID, date-range and wildcard look-ups: one Study-level /tools/find (+ series on 1.10)."""
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
        body: dict = {"Level": "Study", "Query": query, "Expand": True}
        if self.series_details:
            body["RequestedTags"] = list(_COMPUTED)  # honoured from Orthanc 1.11 on, ignored by 1.10
        what = f"/tools/find ({q.describe()})"
        answer = self.transfer.call(lambda: self.client.json("POST", f"{self.url}/tools/find", what, json=body), what)
        if not isinstance(answer, list):
            raise SourceError(f"{self.name}: {what}: unexpected answer (not a list)")
        out = []
        ids: dict[str, str] = {}
        exact_id = q.patient_id if q.patient_id and not _has_wildcard(q.patient_id) else None
        for item in answer:
            rec = self._record(item, what)
            if rec is None or not description_matches(q.description, rec.description):
                continue
            if exact_id is not None and rec.patient_id != exact_id:
                continue  # /tools/find folds case on PatientID: `rtp1` would find `RTP1`'s studies
            out.append(rec)
            ids[rec.study_uid] = item.get("ID", "")
        if out and self.series_details and any(r.n_instances is None for r in out):
            out = _with_details(out, ids, self._series_details(query, q))
        return out

    def _series_details(self, query: dict[str, str], q: StudyQuery) -> dict[str, tuple[tuple[str, ...], int]]:
        """Orthanc study ID -> (modalities, instance count), from one Series-level /tools/find (Orthanc 1.10)."""
        what = f"/tools/find series ({q.describe()})"
        body = {"Level": "Series", "Query": query, "Expand": True}
        answer = self.transfer.call(lambda: self.client.json("POST", f"{self.url}/tools/find", what, json=body), what)
        return _series_summary(answer if isinstance(answer, list) else [])

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
        computed = item.get("RequestedTags") or {}
        mods = computed.get("ModalitiesInStudy") or tags.get("ModalitiesInStudy", "")
        n = str(computed.get("NumberOfStudyRelatedInstances", "")).strip()
        return StudyRecord(
            study_uid=uid,
            patient_id=ptags.get("PatientID", ""),
            accession=tags.get("AccessionNumber", ""),
            study_date=parse_dicom_date(tags.get("StudyDate")),
            description=tags.get("StudyDescription", ""),
            modalities=tuple(m for m in str(mods).split("\\") if m),
            n_instances=int(n) if n.isdigit() else None,
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


# Computed study tags asked for on every listing (Orthanc >= 1.11 answers them in "RequestedTags").
_COMPUTED = ("ModalitiesInStudy", "NumberOfStudyRelatedInstances")
_ABSENT = frozenset({404})
_UNKNOWN_RESOURCE = 17  # Orthanc's ErrorCode_UnknownResource, in the JSON body of its 404


def _has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def _series_summary(series: list) -> dict[str, tuple[tuple[str, ...], int]]:
    """Orthanc study ID -> (modalities in order of appearance, instance count) from expanded series."""
    mods: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for item in series:
        if not isinstance(item, dict):
            continue
        parent = item.get("ParentStudy", "")
        m = (item.get("MainDicomTags") or {}).get("Modality", "")
        lst = mods.setdefault(parent, [])
        if m and m not in lst:
            lst.append(m)
        counts[parent] = counts.get(parent, 0) + len(item.get("Instances") or [])
    return {k: (tuple(v), counts.get(k, 0)) for k, v in mods.items()}


def _with_details(records: list[StudyRecord], ids: dict[str, str],
                  details: dict[str, tuple[tuple[str, ...], int]]) -> list[StudyRecord]:
    """Fill modalities and counts from a series summary where the study answer lacked them."""
    out = []
    for r in records:
        d = details.get(ids.get(r.study_uid, ""))
        if r.n_instances is None and d is not None:
            r = replace(r, modalities=d[0] or r.modalities, n_instances=d[1])
        out.append(r)
    return out


def _orthanc_patient_id(patient_id: str) -> str:
    """Orthanc's resource ID of a patient: SHA-1 of the PatientID, in five dash-separated groups."""
    h = hashlib.sha1(patient_id.encode("utf-8")).hexdigest()
    return "-".join(h[i:i + 8] for i in range(0, 40, 8))
