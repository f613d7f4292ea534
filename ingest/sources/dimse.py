"""A classic DIMSE PACS: C-ECHO, C-FIND (Study Root), and C-GET or C-MOVE to our own storage SCP.

Why the care: most PACS match case-sensitively (Orthanc's and dcmtk's DIMSE do), so description
filters are applied here after folding both sides; a calling AE title the PACS does not know
often gets an association but *no* C-FIND answer, which we report as a configuration problem
rather than "no studies"; and every failure carries the DIMSE status code.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, build_role, evt
from pynetdicom import sop_class
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind as FIND,
    StudyRootQueryRetrieveInformationModelGet as GET,
    StudyRootQueryRetrieveInformationModelMove as MOVE,
    Verification,
)

from ..errors import SourceError, SourceUnavailable
from ..records import RetrievedStudy, StudyRecord
from ..transfer import Transfer, fetch_study_checked
from ..validate import show, validate_bytes
from ._files import ReceivedStudy
from ._net import NodelayAE, hold_reactor, park_reactor
from ._query import QueryLookups, StudyQuery, description_matches, dicom_date_range, parse_dicom_date
from .base import Source

log = logging.getLogger(__name__)

PENDING = (0xFF00, 0xFF01)
#: C-STORE status for a damaged data set (PS3.4 B.2.3: Cxxx "Error: cannot understand"); it is recorded too
STORE_DAMAGED = 0xC000


def _final_status(responses) -> Dataset | None:
    """The last non-pending status of a C-GET/C-MOVE; None when the peer stopped answering mid-way."""
    final = None
    for status, _ in responses:
        if not status or "Status" not in status:
            return None
        if status.Status not in PENDING:
            final = status
    return final
# C-GET asks for storage contexts in the same association (max 128 contexts in all).
_GET_STORAGE = tuple(cx.abstract_syntax for cx in StoragePresentationContexts[:120])
# Asked for first: the storage classes a radiotherapy imaging lake mostly holds. Why not always all
# 120: the PACS weighs every proposed context and role at each association, measured at ~90 ms per
# study against Orthanc 1.10 (C-GET of 100 CT slices: 132 -> 150 instances/s, bench_pull.py). A
# study that holds another class comes up short and is asked for again with all 120 (`retrieve`).
_COMMON_STORAGE = tuple(getattr(sop_class, name) for name in (
    "CTImageStorage", "EnhancedCTImageStorage", "MRImageStorage", "EnhancedMRImageStorage",
    "PositronEmissionTomographyImageStorage", "EnhancedPETImageStorage", "NuclearMedicineImageStorage",
    "RTImageStorage", "RTDoseStorage", "RTStructureSetStorage", "RTPlanStorage", "RTIonPlanStorage",
    "RTBeamsTreatmentRecordStorage", "SegmentationStorage", "SpatialRegistrationStorage",
    "DeformableSpatialRegistrationStorage", "SecondaryCaptureImageStorage", "ComputedRadiographyImageStorage",
    "DigitalXRayImageStorageForPresentation", "DigitalXRayImageStorageForProcessing",
    "DigitalMammographyXRayImageStorageForPresentation", "UltrasoundImageStorage",
    "UltrasoundMultiFrameImageStorage", "XRayAngiographicImageStorage", "XRayRadiofluoroscopicImageStorage",
    "BasicTextSRStorage", "EnhancedSRStorage", "ComprehensiveSRStorage", "EncapsulatedPDFStorage",
    "GrayscaleSoftcopyPresentationStateStorage", "KeyObjectSelectionDocumentStorage", "RawDataStorage"))
_STATUS_TEXT = {
    0xA700: "out of resources", 0xA701: "out of resources (number of matches)",
    0xA702: "out of resources (sub-operations)", 0xA801: "move destination unknown",
    0xA900: "identifier does not match SOP class", 0xB000: "sub-operations completed with failures",
    0xC000: "unable to process (unknown study or destination?)", 0xFE00: "cancelled",
    0x0122: "SOP class not supported", 0x0124: "not authorised",
}


def status_text(code: int) -> str:
    text = _STATUS_TEXT.get(code) or ("unable to process" if 0xC000 <= code <= 0xCFFF else "failure")
    return f"DIMSE status 0x{code:04X} ({text})"


class _MoveRouter:
    """The built-in storage SCP for C-MOVE: sends each incoming instance to the study being moved."""

    def __init__(self, ae_title: str, port: int, nodelay: bool, pacs: str, idle_timeout: float | None = None) -> None:
        self.pacs = pacs
        self.active: dict[str, ReceivedStudy] = {}
        self.errors: list[str] = []
        self.lock = threading.Lock()
        ae = NodelayAE(ae_title, nodelay, idle_timeout=idle_timeout)
        ae.network_timeout = idle_timeout
        # every transfer syntax, compressed ones too: the lake stores what the PACS holds, as it is,
        # and each instance is validated on arrival whatever its encoding
        for cx in StoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.maximum_pdu_size = 0
        self.server = ae.start_server(("127.0.0.1" if port == 0 else "", port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = self.server.server_address[1]

    def _on_store(self, event) -> int:
        """Route one incoming instance to the move waiting for its study; a damaged one gets 0xC000.

        The bytes are validated before anything is decoded (a damaged data set must not be parsed
        by pydicom to find its study), and the refusal is recorded on the study it names.
        """
        data = event.encoded_dataset()
        verdict = validate_bytes(data)
        uid = verdict.study_uid
        with self.lock:
            rec = self.active.get(uid)
            if rec is None and not verdict.ok and len(self.active) == 1:
                rec = next(iter(self.active.values()))  # unreadable study UID, but only one move is running
        if rec is None:
            log.warning("%s: C-STORE for study %s that no move is waiting for; refused", self.pacs, show(uid))
            return 0xA801 if not uid else 0xC000
        try:
            sop = rec.add_bytes(data, "C-STORE sub-operation", verdict)
        except SourceError as exc:
            with self.lock:
                self.errors.append(str(exc))
            log.warning("%s", exc)
            return 0xC000
        return STORE_DAMAGED if sop is None else 0x0000

    def stop(self) -> None:
        self.server.shutdown()


class DimseSource(QueryLookups, Source):
    def __init__(self, host: str, port: int, called_aet: str, calling_aet: str = "RTLAKE", *,
                 retrieve: str = "c-get", move_port: int = 11113, tcp_nodelay: bool = True,
                 case_insensitive: bool = True, transfer: Transfer | None = None, name: str = "dimse",
                 move_aet: str | None = None) -> None:
        self.host, self.port = host, port
        self.called_aet, self.calling_aet = called_aet, calling_aet
        self.mode = retrieve
        self.move_aet = move_aet or calling_aet  # destination AE of C-MOVE (our built-in SCP)
        self.move_port = move_port
        self.nodelay = tcp_nodelay
        self.case_insensitive = case_insensitive
        self.transfer = transfer or Transfer(name)
        self.name = name
        self._find_assoc = None
        self._find_held = False
        self._find_lock = threading.Lock()
        self._router: _MoveRouter | None = None
        self._router_lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg) -> "DimseSource":
        d = cfg.source.dimse
        return cls(d.host, d.port, d.called_aet, d.calling_aet, retrieve=d.retrieve, move_port=d.move_port,
                   tcp_nodelay=d.tcp_nodelay, case_insensitive=d.case_insensitive,
                   transfer=Transfer.from_config(cfg.source.transfer, cfg.source.name), name=cfg.source.name)

    @property
    def peer(self) -> str:
        return f"{self.name} ({self.called_aet}@{self.host}:{self.port})"

    # -- associations ------------------------------------------------------------------------
    def _ae(self) -> NodelayAE:
        t = self.transfer.read_timeout
        ae = NodelayAE(self.calling_aet, self.nodelay, idle_timeout=t)
        ae.acse_timeout = t
        ae.dimse_timeout = t  # waits for the next message: an idle timeout, not a whole-move deadline
        ae.network_timeout = t
        ae.connection_timeout = min(10.0, t)
        ae.maximum_pdu_size = 0
        return ae

    def _associate(self, ae: NodelayAE, what: str, **kw):
        # A peer that rejects and closes at once (dcmtk does) can reach pynetdicom as an abort when
        # the close is read before the A-ASSOCIATE-RJ. A few quick extra attempts give the rejection a
        # chance to show; a peer that is really down fails all three the same way.
        for attempt in range(5):
            assoc = ae.associate(self.host, self.port, ae_title=self.called_aet, **kw)
            if assoc.is_established or assoc.is_rejected:
                break
            time.sleep(0.05 * attempt)  # under load the close can win the race several times in a row
        if assoc.is_established:
            return assoc
        if assoc.is_rejected:
            rej = assoc.acceptor.primitive
            detail = ""
            if rej is not None:
                detail = f" (result {rej.result}, source {rej.result_source}, reason {rej.diagnostic})"
            raise SourceError(f"{self.peer}: association rejected for {what}{detail}; "
                              f"check the called AE title and that {self.calling_aet} is registered on the PACS")
        raise SourceUnavailable(f"{self.peer}: could not open an association for {what} "
                                f"(connection refused, aborted or timed out)")

    def _echo_once(self) -> None:
        ae = self._ae()
        ae.add_requested_context(Verification)
        assoc = self._associate(ae, "C-ECHO")
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        if not status or "Status" not in status:
            raise SourceUnavailable(f"{self.peer}: no C-ECHO response")
        if status.Status != 0:
            raise SourceError(f"{self.peer}: C-ECHO failed with {status_text(status.Status)}")

    def echo(self) -> None:
        """C-ECHO with the transfer's retries, so a misconfigured PACS fails at start-up with a clear message.

        Raises:
            SourceUnavailable/SourceError: unreachable, rejected, or a non-success status.
        """
        self.transfer.call(self._echo_once, "C-ECHO")

    def check(self) -> str:
        """One C-ECHO (no retries): the association is accepted and Verification answers success."""
        self._echo_once()
        return f"{self.name}: C-ECHO to {self.called_aet}@{self.host}:{self.port} as {self.calling_aet} succeeded"

    # -- queries -----------------------------------------------------------------------------
    def _find_association(self):
        if self._find_assoc is None or not self._find_assoc.is_established:
            ae = self._ae()
            ae.add_requested_context(FIND)
            self._find_assoc = self._associate(ae, "C-FIND")
            self._find_held = hold_reactor(self._find_assoc)
        return self._find_assoc

    def _c_find(self, ds: Dataset, what: str) -> list[Dataset]:
        """One C-FIND on a kept-open association (re-opened when the PACS dropped it)."""
        with self._find_lock:
            assoc = self._find_association()
            answers: list[Dataset] = []
            final = None
            try:
                if not self._find_held:
                    park_reactor(assoc)
                for status, ident in assoc.send_c_find(ds, FIND):
                    if not status or "Status" not in status:
                        break
                    if status.Status in PENDING:
                        if ident is not None:
                            answers.append(ident)
                        continue
                    final = status.Status
            except (OSError, RuntimeError) as exc:
                final = None
                log.debug("C-FIND error: %s", exc)
            if final is None:
                why = self._why_no_answer(assoc)
                self._drop_find_assoc()
                raise SourceUnavailable(f"{self.peer}: {what}: no C-FIND response ({why})")
            if final != 0x0000:
                if final >= 0xA000:
                    self._drop_find_assoc()
                err = SourceUnavailable if final in (0xA700, 0xA701, 0xA702) else SourceError
                raise err(f"{self.peer}: {what}: C-FIND failed with {status_text(final)}")
            return answers

    def _why_no_answer(self, assoc) -> str:
        """Why an established association gave no answer. The AE-title hint fits only a PACS that
        ended the association itself (A-ABORT or release, typical of an unknown calling AE) or
        kept it open without answering; a dropped connection (reset, closed socket) is the
        network's doing and says nothing about the AE title."""
        acse = getattr(assoc, "acse", None)
        if acse is not None and acse.is_aborted("a-p-abort"):
            return "connection lost"
        if acse is not None and acse.is_aborted("a-abort") or assoc.is_released:
            return (f"the PACS ended the association without answering; is calling AE {self.calling_aet} "
                    "allowed to query it?")
        return f"no answer in time; is calling AE {self.calling_aet} allowed to query this PACS?"

    def _drop_find_assoc(self) -> None:
        if self._find_assoc is not None:
            try:
                self._find_assoc.abort()
            except Exception:  # noqa: BLE001 - closing a broken association must not mask the real error
                pass
            self._find_assoc = None

    def find(self, q: StudyQuery) -> list[StudyRecord]:
        """Study-level C-FIND; description filtered client-side when matching is case-insensitive."""
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.PatientID = q.patient_id or ""
        ds.AccessionNumber = q.accession or ""
        ds.StudyInstanceUID = q.study_uid or ""
        ds.StudyDate = dicom_date_range(q.date_from, q.date_to)
        send_desc = bool(q.description) and not self.case_insensitive
        ds.StudyDescription = q.description if send_desc else ""
        ds.ModalitiesInStudy = ""
        ds.NumberOfStudyRelatedInstances = ""
        ds.StudyID = ""
        what = f"C-FIND ({q.describe()})"
        answers = self.transfer.call(lambda: self._c_find(ds, what), what)
        out = []
        for a in answers:
            uid = str(a.get("StudyInstanceUID", "") or "")
            if not uid:
                log.warning("%s: %s: skipped an answer without StudyInstanceUID", self.peer, what)
                continue
            desc = str(a.get("StudyDescription", "") or "")
            if q.description and not description_matches(q.description, desc, case_sensitive=send_desc):
                continue
            mods = a.get("ModalitiesInStudy", "") or ""
            mods = tuple(str(m) for m in (mods if not isinstance(mods, str) else mods.split("\\")) if m)
            n = str(a.get("NumberOfStudyRelatedInstances", "") or "").strip()
            rec = StudyRecord(
                study_uid=uid,
                patient_id=str(a.get("PatientID", "") or ""),
                accession=str(a.get("AccessionNumber", "") or ""),
                study_date=parse_dicom_date(str(a.get("StudyDate", "") or "")),
                description=desc,
                modalities=mods,
                n_instances=int(n) if n.isdigit() else None,
                study_id=str(a.get("StudyID", "") or ""),
                source=self.name,
            )
            if not q.date_ok(rec.study_date) and rec.study_date is not None:
                continue
            out.append(rec)
        if any(not r.modalities for r in out):
            out = [r if r.modalities else replace(r, modalities=self._series_modalities(r.study_uid)) for r in out]
        return out

    def _series_modalities(self, study_uid: str) -> tuple[str, ...]:
        """Modalities from a SERIES-level C-FIND, for PACS that do not return ModalitiesInStudy (dcmqrscp)."""
        ds = Dataset()
        ds.QueryRetrieveLevel = "SERIES"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = ""
        ds.Modality = ""
        what = f"C-FIND series of study {study_uid}"
        answers = self.transfer.call(lambda: self._c_find(ds, what), what)
        mods: list[str] = []
        for a in answers:
            m = str(a.get("Modality", "") or "")
            if m and m not in mods:
                mods.append(m)
        return tuple(mods)

    def list_instances(self, study_uid: str) -> dict[str, str]:
        """SOPInstanceUID → SeriesInstanceUID from an IMAGE-level C-FIND (for the missing-instance pass)."""
        ds = Dataset()
        ds.QueryRetrieveLevel = "IMAGE"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = ""
        ds.SOPInstanceUID = ""
        answers = self._c_find(ds, f"C-FIND instances of study {study_uid}")
        return {str(a.SOPInstanceUID): str(a.get("SeriesInstanceUID", "")) for a in answers
                if a.get("SOPInstanceUID")}

    # -- retrieval ---------------------------------------------------------------------------
    def _router_for_move(self) -> _MoveRouter:
        with self._router_lock:
            if self._router is None:
                try:
                    self._router = _MoveRouter(self.move_aet, self.move_port, self.nodelay, self.peer,
                                               idle_timeout=max(self.transfer.read_timeout, 30.0))
                except OSError as exc:
                    raise SourceError(f"{self.peer}: cannot start the C-MOVE storage SCP on port "
                                      f"{self.move_port}: {exc}") from None
            return self._router

    def _identifier(self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = "IMAGE" if sop_uid else "STUDY"
        ds.StudyInstanceUID = study_uid
        if sop_uid:
            ds.SeriesInstanceUID = series_uid or ""
            ds.SOPInstanceUID = sop_uid
        return ds

    def _check_final(self, final: Dataset | None, op: str, what: str, got: int) -> None:
        if final is None:
            raise SourceUnavailable(f"{self.peer}: {op} {what}: no final response after {got} instances "
                                    "(association dropped or timed out)")
        code = final.Status
        if code in (0x0000, 0xB000):
            return  # B000 = some sub-operations failed: the partial check and the re-try pass handle it
        err = SourceUnavailable if code in (0xA700, 0xA701, 0xA702) else SourceError
        raise err(f"{self.peer}: {op} {what} failed with {status_text(code)} after {got} instances")

    def _c_get(self, ident: Dataset, rec: ReceivedStudy, what: str,
               storage: tuple[str, ...] = _GET_STORAGE) -> None:
        ae = self._ae()
        ae.add_requested_context(GET)
        roles = []
        for uid in storage:
            ae.add_requested_context(uid)
            roles.append(build_role(uid, scp_role=True))
        errors: list[str] = []

        def on_store(event) -> int:
            try:
                data = event.encoded_dataset()
                self.transfer.throttle.data(len(data))
                sop = rec.add_bytes(data, "C-STORE sub-operation")
            except SourceError as exc:
                errors.append(str(exc))
                return 0xC000
            return STORE_DAMAGED if sop is None else 0x0000

        refused_before = len(rec.refused)
        assoc = self._associate(ae, f"C-GET {what}", ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        try:
            final = _final_status(assoc.send_c_get(ident, GET))
        finally:
            if assoc.is_established:
                assoc.release()
        if errors and not rec.sops:
            raise SourceError(errors[0])
        if len(rec.refused) > refused_before and final is not None and final.Status not in (0x0000, 0xB000):
            # we answered failure to damaged instances: a peer may then end the whole C-GET as failed
            log.warning("%s: C-GET %s ended with %s after refusing damaged instances", self.peer, what,
                        status_text(final.Status))
            return
        self._check_final(final, "C-GET", what, len(rec.sops))

    def _c_move(self, ident: Dataset, rec: ReceivedStudy, what: str) -> None:
        router = self._router_for_move()
        ae = self._ae()
        ae.add_requested_context(MOVE)
        with router.lock:
            router.active[rec.study_uid] = rec
        final = None
        try:
            assoc = self._associate(ae, f"C-MOVE {what}")
            try:
                final = _final_status(assoc.send_c_move(ident, self.move_aet, MOVE))
            finally:
                if assoc.is_established:
                    assoc.release()
        finally:
            with router.lock:
                router.active.pop(rec.study_uid, None)
        if final is not None and rec.refused and final.Status not in (0x0000, 0xB000, 0xA801):
            log.warning("%s: C-MOVE %s ended with %s after refusing damaged instances", self.peer, what,
                        status_text(final.Status))
            return
        if final is not None and final.Status == 0xA801 or (final is not None and final.Status == 0xC000
                                                             and not rec.sops):
            raise SourceError(f"{self.peer}: C-MOVE {what} failed with {status_text(final.Status)}: is the move "
                              f"destination {self.move_aet} (this host, port {router.port}) registered on the PACS?")
        self._check_final(final, "C-MOVE", what, len(rec.sops))

    def _pull(self, ident: Dataset, rec: ReceivedStudy, what: str) -> None:
        (self._c_move if self.mode == "c-move" else self._c_get)(ident, rec, what)

    def retrieve(self, study: StudyRecord, dest: Path) -> RetrievedStudy:
        """C-GET/C-MOVE the study; when fewer instances arrive than the query promised, list the
        study at IMAGE level and fetch the missing instances one by one.

        Raises:
            SourceError/SourceUnavailable (with the DIMSE status): nothing could be received.
        """
        uid = study.study_uid
        rec = ReceivedStudy(dest, uid, self.peer)
        listing: dict[str, str] = {}

        def list_instances() -> dict[str, str]:
            if not listing:
                listing.update(self.list_instances(uid))
            return listing

        expected = study.n_instances
        if expected is None:
            expected = len(self.transfer.call(list_instances, f"list instances of study {uid}"))

        def whole_study() -> None:
            if self.mode == "c-move":
                self._c_move(self._identifier(uid), rec, f"study {uid}")
                return
            try:
                self._c_get(self._identifier(uid), rec, f"study {uid}", _COMMON_STORAGE)
            except SourceUnavailable:
                raise
            except SourceError:  # e.g. every sub-operation failed for want of a context: the full set decides
                pass
            if len(rec.settled) < expected:  # a storage class outside the common ones? ask with all 120
                self._c_get(self._identifier(uid), rec, f"study {uid}")

        result = fetch_study_checked(
            self.transfer, f"study {uid}", expected, lambda: rec.settled,
            whole_study,
            list_instances,
            lambda sop, series: self._pull(self._identifier(uid, str(series), sop), rec, f"instance {sop} of study {uid}"))
        if rec.nothing():
            raise SourceError(f"{self.peer}: study {uid}: no instances received")
        if not result.complete:
            log.warning("%s: study %s partial: %s", self.peer, uid, result.describe())
        return RetrievedStudy(study=study, files=rec.files, expected=result.expected, refused=rec.refused,
                              conflicts=rec.conflicts)

    def close(self) -> None:
        with self._find_lock:
            if self._find_assoc is not None and self._find_assoc.is_established:
                self._find_assoc.release()
            self._find_assoc = None
        with self._router_lock:
            if self._router is not None:
                self._router.stop()
                self._router = None
