"""Pseudonymise sets of files: the engine behind `rtlake pseudo run` and the update-run hook.

Two passes over a set of files: headers first (so segmentation fix-ups can see the whole
study), then each file is read, pseudonymised and written to its new place atomically. The
originals are only ever read. Each bad file becomes a problem naming its path and the reason;
the rest go on.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from ..atomic import atomic_path
from ..errors import InputFileError, PermanentError
from ..records import SessionPlan, StudyRecord
from . import segfix
from .deid import Deidentifier, PatientContext, scrub_terms
from .keys import PseudoKey, check_uid_root, load_key
from .mapping import MappingTable
from .profile import Profile, load_profile
from .uids import UidRemapper

log = logging.getLogger(__name__)

_REQUIRED_UIDS = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "SOPClassUID")


def _reason(exc: Exception) -> str:
    """The message of an error without the path prefix InputFileError puts on it."""
    if isinstance(exc, InputFileError):
        text, prefix = str(exc), f"{exc.path}: "
        return text[len(prefix):] if text.startswith(prefix) else text
    return f"{type(exc).__name__}: {exc}"


class PseudoFailed(PermanentError):
    """Some files of a study could not be pseudonymised; `problems` lists (path, reason)."""

    def __init__(self, message: str, problems: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.problems = problems


@dataclass
class Outcome:
    written: dict[Path, Path] = field(default_factory=dict)  # original → pseudonymised copy
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    contexts: dict[str, PatientContext] = field(default_factory=dict)  # by original PatientID


OutPath = Callable[[Dataset], Path]


class Pseudonymiser:
    """One key, one profile, one UID root; collects the mapping rows of everything it did.

    `patient_pseudonym` fixes the pseudonym of every file (the update run passes the subject's);
    otherwise each file's PatientID is pseudonymised. `extra_terms` are further identifiers
    (NHS number, hospital ID) scrubbed from kept text.
    """

    def __init__(self, key: PseudoKey, profile: Profile, uid_root: str,
                 patient_pseudonym: str | None = None, extra_terms: Iterable[str] = ()) -> None:
        self.key = key
        self.profile = profile
        self.remapper = UidRemapper(key, check_uid_root(uid_root))
        self.deid = Deidentifier(key, profile, self.remapper)
        self.fixed_pseudonym = patient_pseudonym
        self.extra_terms = [t for t in extra_terms if t]
        self.rows: set[tuple[str, str, str]] = set()

    # -- per patient -----------------------------------------------------------------------------
    def patient_pseudonym(self, patient_id: str) -> str:
        if self.fixed_pseudonym:
            return self.fixed_pseudonym
        return self.key.pseudonym("patient", patient_id, prefix=self.profile.options.patient_prefix)

    def context(self, ds: Dataset) -> PatientContext:
        pid = str(ds.get("PatientID", "") or "").strip()
        pseud = self.patient_pseudonym(pid)
        opts = self.profile.options
        shift = self.key.date_shift_days(pid, opts.date_shift_max_days) if opts.date_shift else 0
        extra = {t: (pseud if t == pid else "") for t in self.extra_terms}
        ctx = PatientContext(pid, pseud, shift, scrub_terms(ds, pseud, extra))
        # The update run keys pseudonyms by subject, standalone runs by PatientID: different
        # kinds, so both can share one mapping table without clashing.
        self.rows.add(("hospital_id" if self.fixed_pseudonym else "patient_id", pid, pseud))
        if opts.date_shift:
            self.rows.add(("date_shift_days", pid, str(shift)))
        return ctx

    def mapping_rows(self) -> set[tuple[str, str, str]]:
        return self.rows | {("uid", o, n) for o, n in self.remapper.seen.items()}

    # -- files -----------------------------------------------------------------------------------
    def read_headers(self, files: list[Path], outcome: Outcome) -> dict[Path, segfix.Header]:
        headers: dict[Path, segfix.Header] = {}
        for path in files:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception as exc:  # noqa: BLE001 - pydicom raises struct.error, KeyError… on garbage: one file's problem
                name = type(exc).__name__
                name = f"{type(exc).__module__}.{name}" if name.islower() else name  # struct.error, not "error"
                outcome.problems.append((str(path), f"not a readable DICOM file: {name}"))
                continue
            missing = [k for k in _REQUIRED_UIDS if not str(ds.get(k, "") or "").strip()]
            if missing:
                outcome.problems.append((str(path), f"missing {', '.join(missing)}"))
                continue
            if not str(ds.get("PatientID", "") or "").strip() and not self.fixed_pseudonym:
                outcome.problems.append((str(path), "missing PatientID: cannot derive a pseudonym"))
                continue
            if self.profile.options.reject_burned_in and str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
                outcome.problems.append((str(path), "BurnedInAnnotation is YES: pixel data may show identifiers"))
                continue
            headers[path] = segfix.Header.of(path, ds)
        return headers

    def process(self, files: list[Path], out_path: OutPath) -> Outcome:
        """Pseudonymise every DICOM file in `files` to `out_path(pseudonymised dataset)`."""
        outcome = Outcome()
        headers = self.read_headers(sorted(files), outcome)
        patches = segfix.plan_fixes(list(headers.values())) if self.profile.options.fix_segmentations else {}
        produced: dict[Path, Path] = {}
        for path in headers:
            try:
                dst = self._one(path, patches.get(path, {}), out_path, outcome)
            except Exception as exc:  # noqa: BLE001 - one bad file must not stop the study
                outcome.problems.append((str(path), _reason(exc)[:300]))
                continue
            if dst in produced:
                outcome.problems.append((str(path), f"same SOPInstanceUID as {produced[dst]}; second copy not written"))
                continue
            produced[dst] = path
            outcome.written[path] = dst
        return outcome

    def _one(self, path: Path, patch: dict, out_path: OutPath, outcome: Outcome) -> Path:
        ds = pydicom.dcmread(path)
        segfix.apply_patch(ds, patch)
        pid = str(ds.get("PatientID", "") or "").strip()
        ctx = outcome.contexts.get(pid) or self.context(ds)
        outcome.contexts[pid] = ctx
        self.deid.apply(ds, ctx)
        seed = patch.get(segfix.SOP_SEED)
        if seed:
            ds.SOPInstanceUID = self.remapper(seed)
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        dst = out_path(ds)
        if dst.exists() and dst.resolve() == Path(path).resolve():
            raise InputFileError(path, "output would overwrite the original")
        with atomic_path(dst) as tmp:
            ds.save_as(tmp)
        return dst

    # -- study record ----------------------------------------------------------------------------
    def study_record(self, study: StudyRecord, ctx: PatientContext) -> StudyRecord:
        """The StudyRecord as the pseudonymised files describe it (same rules, same key)."""
        ds = Dataset()
        ds.PatientID = study.patient_id
        ds.StudyInstanceUID = study.study_uid
        ds.AccessionNumber = study.accession
        ds.StudyID = study.study_id
        ds.StudyDescription = study.description
        if study.study_date:
            ds.StudyDate = study.study_date.strftime("%Y%m%d")
        self.deid.apply(ds, ctx)
        date = None
        if str(ds.get("StudyDate", "") or ""):
            date = dt.datetime.strptime(str(ds.StudyDate), "%Y%m%d").date()
        return dataclasses.replace(
            study,
            study_uid=str(ds.StudyInstanceUID),
            patient_id=ctx.pseudonym,
            accession=str(ds.get("AccessionNumber", "") or ""),
            study_id=str(ds.get("StudyID", "") or ""),
            description=str(ds.get("StudyDescription", "") or ""),
            study_date=date,
        )


def _setup(cfg, plan: SessionPlan, key: PseudoKey | None = None, profile: Profile | None = None):
    pcfg = cfg.pseudo
    key = key or load_key(pcfg.key_env)
    profile = profile or load_profile(pcfg.profile)
    opts = profile.options
    subject = key.pseudonym("subject", plan.subject, prefix=opts.patient_prefix)
    label = key.pseudonym("session", f"{plan.project}/{plan.label}", prefix=opts.session_prefix)
    extra = [plan.subject, plan.hospital_id, plan.study.patient_id, plan.study.accession]
    pz = Pseudonymiser(key, profile, pcfg.uid_root, patient_pseudonym=subject, extra_terms=extra)
    probe = Dataset()
    probe.PatientID = plan.study.patient_id
    return key, profile, pz, subject, label, probe


def pseudonymise_plan(cfg, plan: SessionPlan, key: PseudoKey | None = None,
                      profile: Profile | None = None) -> SessionPlan:
    """The plan as `pseudonymise_for_store` will return it, computed without files or writes.

    Lets a run ask a store `has_session(pseudonymous plan)` before retrieving anything.
    Subject, label and study UID are exactly those of the hook; the study description can
    differ only if it contains the patient's name (the hook also scrubs names read from the files).

    Raises:
        ConfigError: as for `pseudonymise_for_store`.
    """
    _, _, pz, subject, label, probe = _setup(cfg, plan, key, profile)
    study = pz.study_record(plan.study, pz.context(probe))
    return dataclasses.replace(plan, subject=subject, label=label, study=study, hospital_id="")


def pseudonymise_for_store(cfg, plan: SessionPlan, files: list[Path], scratch: Path) -> tuple[SessionPlan, list[Path]]:
    """The update-run hook: pseudonymised copies in `scratch`, the mapping recorded, the plan renamed.

    subject = keyed pseudonym of the subject label, label = keyed pseudonym of the session
    label; the StudyRecord carries the remapped study UID, the patient pseudonym, the shifted
    date and only what the profile keeps. PatientID/PatientName in the files are the subject
    pseudonym, so lake folders and DICOM headers agree. XML files in `files` are pseudonymised
    too; anything else that is not DICOM is a problem.

    Raises:
        ConfigError: key env var unset or too short, bad profile or uid_root, mapping table
            with loose permissions or made with another key.
        PseudoFailed: one or more files could not be pseudonymised (all are listed; nothing
            is returned for the study, so it is never stored half pseudonymised).
    """
    from .xmlfiles import is_xml, pseudonymise_xml

    pcfg = cfg.pseudo
    key, profile, pz, subject, label, probe = _setup(cfg, plan)
    scratch = Path(scratch)
    dicom_files = [Path(f) for f in files if not is_xml(Path(f))]
    xml_files = [Path(f) for f in files if is_xml(Path(f))]
    outcome = pz.process(dicom_files, lambda ds: scratch / f"{ds.SOPInstanceUID}.dcm")

    # The study's own patient context, even when no DICOM file was given (stores that pull).
    ctx = outcome.contexts.get(plan.study.patient_id) or pz.context(probe)
    xml_terms: dict[str, str] = {}
    for c in [ctx, *outcome.contexts.values()]:
        xml_terms.update(c.scrub)
    written_xml: list[Path] = []
    for path in xml_files:
        try:
            dst = scratch / f"{key.pseudonym('xml', f'{plan.study.study_uid}/{path.name}', prefix='X')}.xml"
            pseudonymise_xml(path, dst, profile, xml_terms, pz.remapper, ctx.pseudonym)
            written_xml.append(dst)
        except InputFileError as exc:
            outcome.problems.append((str(path), _reason(exc)))
    if outcome.problems:
        head = "; ".join(f"{p}: {r}" for p, r in outcome.problems[:5])
        more = f" (+{len(outcome.problems) - 5} more)" if len(outcome.problems) > 5 else ""
        raise PseudoFailed(
            f"study {plan.study.study_uid}: {len(outcome.problems)} file(s) could not be pseudonymised: {head}{more}",
            outcome.problems,
        )
    study = pz.study_record(plan.study, ctx)
    rows = pz.mapping_rows() | {("subject", plan.subject, subject), ("session", f"{plan.project}/{plan.label}", label)}
    with MappingTable(pcfg.mapping, key.fingerprint) as table:
        table.record(rows)
    new_plan = dataclasses.replace(plan, subject=subject, label=label, study=study, hospital_id="")
    # What a store or the log may name from now on: the pseudonymous UIDs (see .redact).
    from .redact import remember_pseudonyms

    remember_pseudonyms(pz.remapper.seen.values())
    log.info("study %s pseudonymised as session %s (%d files)", study.study_uid, label, len(outcome.written))
    return new_plan, sorted(outcome.written.values()) + written_xml
