"""A DICOMweb PACS: QIDO-RS to query, WADO-RS to pull.

Two things bite in practice: StudyDescription (0008,1030) is not a default QIDO return key (so
we always ask for it with includefield), and some servers (the Debian Orthanc 1.10 build) do
not URL-decode query values, so `raw_query_values` sends them unencoded with spaces as `?`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from urllib.parse import quote

from ..errors import SourceError
from ..records import RetrievedStudy, StudyRecord
from ..transfer import Transfer, fetch_study_checked
from ._files import ReceivedStudy
from ._http import HttpClient, WadoRs, _dj, dicom_json_values, env_hint, make_session
from ._query import QueryLookups, StudyQuery, description_matches, dicom_date_range, parse_dicom_date
from .base import Source

log = logging.getLogger(__name__)

# StudyDescription, NumberOfStudyRelatedInstances, ModalitiesInStudy, StudyID, StudyDate, AccessionNumber
INCLUDE_FIELDS = ("00081030", "00201208", "00080061", "00200010", "00080020", "00080050")
PAGE = 500
_RAW_UNSAFE = re.compile(r"[^A-Za-z0-9*?._~-]")


class DicomWebSource(QueryLookups, Source):
    def __init__(self, root: str, client: HttpClient, *, name: str = "dicomweb", raw_query_values: bool = False,
                 page_size: int = PAGE) -> None:
        self.root = root.rstrip("/")
        self.client = client
        self.transfer = client.transfer
        self.name = name
        self.raw = raw_query_values
        self.page_size = page_size
        self.wado = WadoRs(client, self.root)

    @classmethod
    def from_config(cls, cfg) -> "DicomWebSource":
        sec = cfg.source.dicomweb
        transfer = Transfer.from_config(cfg.source.transfer, cfg.source.name)
        client = HttpClient(make_session(sec, transfer.concurrency), transfer, cfg.source.name, env_hint(sec),
                            tls_section="[source.dicomweb]")
        return cls(sec.url, client, name=cfg.source.name, raw_query_values=sec.raw_query_values)

    def _qs(self, params: list[tuple[str, str]]) -> str:
        """Build the query string ourselves.

        Raw mode (servers that do not URL-decode): `*`, `?`, `-` and `.` go as they are; any other
        character that would need percent-encoding (space, `^`, `&`...) becomes the one-character
        wildcard `?` (requests/urllib3 would re-encode it anyway), and the answers are then
        filtered client-side on the exact value.
        """
        if self.raw:
            return "&".join(f"{k}={_RAW_UNSAFE.sub('?', v)}" for k, v in params)
        return "&".join(f"{k}={quote(v, safe='')}" for k, v in params)

    def check(self) -> str:
        """One QIDO-RS request (`/studies?limit=1`): reachable, credentials accepted, answers DICOM JSON."""
        answer = self.client.json("GET", f"{self.root}/studies?limit=1", "QIDO-RS /studies?limit=1",
                                  headers={"Accept": "application/dicom+json"})
        if answer is not None and not isinstance(answer, list):
            raise SourceError(f"{self.name}: QIDO-RS /studies: answer is not a DICOM JSON array")
        return f"{self.name}: DICOMweb QIDO-RS answered at {self.root}"

    def find(self, q: StudyQuery) -> list[StudyRecord]:
        params: list[tuple[str, str]] = []
        if q.patient_id:
            params.append(("PatientID", q.patient_id))
        if q.accession:
            params.append(("AccessionNumber", q.accession))
        if q.study_uid:
            params.append(("StudyInstanceUID", q.study_uid))
        dates = dicom_date_range(q.date_from, q.date_to)
        if dates:
            params.append(("StudyDate", dates))
        params += [("includefield", f) for f in INCLUDE_FIELDS]
        what = f"QIDO-RS studies ({q.describe()})"
        out: list[StudyRecord] = []
        offset = 0
        while True:
            page = params + [("limit", str(self.page_size)), ("offset", str(offset))]
            url = f"{self.root}/studies?{self._qs(page)}"
            answer = self.transfer.call(
                lambda url=url: self.client.json("GET", url, what, headers={"Accept": "application/dicom+json"}),
                what)
            if answer is None:  # 204 No Content = no match
                answer = []
            if not isinstance(answer, list):
                raise SourceError(f"{self.name}: {what}: answer is not a DICOM JSON array")
            for item in answer:
                rec = self._record(item, what)
                if rec is None or not description_matches(q.description, rec.description):
                    continue
                if not (_exact(q.patient_id, rec.patient_id) and _exact(q.accession, rec.accession)
                        and _exact(q.study_uid, rec.study_uid)):
                    continue  # a raw-mode '?' stood in for a character and matched another one
                out.append(rec)
            if len(answer) < self.page_size:
                return out
            offset += len(answer)

    def _record(self, item: dict, what: str) -> StudyRecord | None:
        if not isinstance(item, dict):
            raise SourceError(f"{self.name}: {what}: malformed DICOM JSON entry")
        uid = _dj(item, "0020000D")
        if not uid:
            log.warning("%s: %s: skipped an answer without StudyInstanceUID", self.name, what)
            return None
        n = _dj(item, "00201208")
        return StudyRecord(
            study_uid=uid,
            patient_id=_dj(item, "00100020"),
            accession=_dj(item, "00080050"),
            study_date=parse_dicom_date(_dj(item, "00080020")),
            description=_dj(item, "00081030"),
            modalities=tuple(m for m in dicom_json_values(item, "00080061") if m),
            n_instances=int(n) if n.isdigit() else None,
            study_id=_dj(item, "00200010"),
            source=self.name,
        )

    def retrieve(self, study: StudyRecord, dest: Path) -> RetrievedStudy:
        """WADO-RS the whole study, then fetch instances QIDO lists but the pull missed.

        Raises:
            SourceError/SourceUnavailable: nothing could be received.
        """
        uid = study.study_uid
        rec = ReceivedStudy(dest, uid, self.name)
        result = fetch_study_checked(
            self.transfer, f"study {uid}", study.n_instances, lambda: rec.settled,
            lambda: self.wado.study(uid, rec),
            lambda: self.wado.list_instances(uid),
            lambda sop, series: self.wado.instance(uid, str(series), sop, rec))
        if rec.nothing():
            raise SourceError(f"{self.name}: study {uid}: no instances received")
        if not result.complete:
            log.warning("%s: study %s partial: %s", self.name, uid, result.describe())
        return RetrievedStudy(study=study, files=rec.files, expected=result.expected, refused=rec.refused,
                              conflicts=rec.conflicts)

    def close(self) -> None:
        self.client.session.close()


def _exact(wanted: str | None, got: str) -> bool:
    """True unless an exact (wildcard-free) key was asked for and the answer differs."""
    return not wanted or "*" in wanted or "?" in wanted or wanted == got
