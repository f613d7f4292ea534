"""The SOP's eight session listings (MR.csv … XA.csv), written from the catalog or from XNAT.

The SOP's master-sheet step starts from CSVs an admin downloads from XNAT's search pages, one
per session type, five columns each: Subject, Date, then three type-specific columns (its
table, reproduced in TYPES below). rtlake writes the same files so the downstream scripts and
`reporting.xnat_folder` keep working, whether the sessions are known from rtlake's own catalog
or read from an XNAT server's experiment search.

From the catalog the listings name what the store holds (research side): with pseudonymisation
the subject and session pseudonyms, the pseudonymous StudyInstanceUID, the shifted date and the
cleaned description, so every row can be found in the lake and none re-identifies anyone.
`identified=True` lists the catalog's identified names instead (NHS number, accession-based
label, the PACS's UID and date), for the admin on the identified side.

Column meanings (what XNAT's listing shows; where the catalog has no such field, the nearest one):
  Subject             subject label: the store's (pseudonym, or NHS number / NN_<hospital id>)
  Date                session date, YYYY-MM-DD
  MR ID / XNAT_<T> ID session label (the store's: pseudonym, or the accession number / RT label)
  UID                 StudyInstanceUID (the store's)
  ID                  XNAT experiment ID (XNAT_E…); from the catalog, the ID in the store location
                      when it has one, else the session label
  Scans               number of scans (series) in the session
  Scanner             scanner (XNAT's `scanner` field; the catalog does not hold it: blank)
  Session             session type (XNAT fills it from StudyDescription; catalog: the description)
  Creator             the XNAT user who created the session (catalog: "rtlake")
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingest.atomic import write_text
from ingest.errors import RtlakeError

from . import sanitise

if TYPE_CHECKING:
    from ingest.catalog import Catalog
    from ingest.stores.xnat import XnatStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionType:
    name: str  # file stem and SOP session type
    xsi_type: str  # XNAT data type listed for it
    modalities: tuple[str, ...]  # catalog `sessions.modality` values filed under it
    columns: tuple[str, str, str, str, str]
    fields: tuple[str, str, str, str, str]  # keys of a normalised session row, per column

    @property
    def filename(self) -> str:
        return f"{self.name}.csv"


def _t(name: str, xsi: str, mods: tuple[str, ...], c3: str, c4: str, c5: str) -> SessionType:
    field = {"MR ID": "label", "UID": "study_uid", "ID": "id", "Scans": "n_scans", "Scanner": "scanner",
             "Session": "session_type", "Creator": "creator"}
    col3 = c3
    return SessionType(name, xsi, mods, ("Subject", "Date", col3, c4, c5),
                       ("subject", "date", field.get(c3, "label"), field[c4], field[c5]))


#: The SOP table, in its order.
TYPES: tuple[SessionType, ...] = (
    _t("MR", "xnat:mrSessionData", ("MR",), "MR ID", "Scanner", "Scans"),
    _t("CT", "xnat:ctSessionData", ("CT",), "XNAT_CTSESSIONDATA ID", "UID", "Scans"),
    _t("PET", "xnat:petSessionData", ("PT", "PET"), "XNAT_PETSESSIONDATA ID", "UID", "Scans"),
    _t("CR", "xnat:crSessionData", ("CR",), "XNAT_CRSESSIONDATA ID", "ID", "Session"),
    _t("DX", "xnat:dxSessionData", ("DX",), "XNAT_DXSESSIONDATA ID", "UID", "Scans"),
    _t("RF", "xnat:rfSessionData", ("RF",), "XNAT_RFSESSIONDATA ID", "ID", "Session"),
    _t("SR", "xnat:srSessionData", ("SR",), "XNAT_SRSESSIONDATA ID", "ID", "Creator"),
    _t("XA", "xnat:xaSessionData", ("XA",), "XNAT_XASESSIONDATA ID", "ID", "Creator"),
)


@dataclass
class ExportResult:
    files: dict[str, Path]
    counts: dict[str, int]
    skipped: dict[str, int]  # sessions of types the SOP does not list, by modality

    def describe(self) -> str:
        lines = [f"{name}: {self.counts[name]} sessions → {path}" for name, path in self.files.items()]
        if self.skipped:
            other = ", ".join(f"{m} {n}" for m, n in sorted(self.skipped.items()))
            lines.append(f"not in the SOP's eight listings: {other}")
        return "\n".join(lines)


def _sort_key(r: dict) -> tuple:
    return (str(r.get("subject") or ""), str(r.get("date") or ""), str(r.get("label") or ""))


def write_listings(rows_by_type: dict[str, list[dict]], out_dir: Path,
                   skipped: dict[str, int] | None = None) -> ExportResult:
    """Write all eight CSVs (header only when a type has no sessions), each atomically."""
    out_dir = Path(out_dir)
    files, counts = {}, {}
    for t in TYPES:
        rows = sorted(rows_by_type.get(t.name, []), key=_sort_key)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(t.columns)
        for r in rows:
            w.writerow([sanitise.csv_value("" if r.get(f) is None else str(r.get(f))) for f in t.fields])
        path = out_dir / t.filename
        write_text(path, buf.getvalue())
        files[t.name], counts[t.name] = path, len(rows)
    return ExportResult(files, counts, dict(skipped or {}))


def _date(value: Any) -> str:
    if value is None:
        return ""
    if hasattr(value, "isoformat"):
        return value.isoformat()[:10]
    s = str(value).strip()
    if re.fullmatch(r"\d{8}", s):
        return f"{s[:4]}-{s[4:6]}-{s[6:]}"
    return s


_XNAT_ID = re.compile(r"/data/experiments/([^/?#]+)")


class StoreNamesMissing(RtlakeError):
    """Pseudonymised sessions whose store names the catalog does not hold yet."""


#: What the store holds for a session, and (identified) what the catalog knows it as.
_STORE_NAMES = """coalesce(s.store_subject, s.subject) AS subject, coalesce(s.store_study_date, s.study_date) AS date,
               coalesce(s.store_label, s.label) AS label, coalesce(s.store_study_uid, s.study_uid) AS study_uid,
               coalesce(s.store_description, st.description, '') AS session_type"""
_IDENTIFIED = """coalesce(p.subject, s.subject) AS subject, s.study_date AS date, s.label AS label,
               s.study_uid AS study_uid, coalesce(st.description, '') AS session_type"""


def rows_from_catalog(catalog: "Catalog", identified: bool = False,
                      pseudonymised: bool = False) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """Stored sessions of the catalog, grouped by SOP type; other modalities counted apart.

    Raises:
        StoreNamesMissing: `pseudonymised` and some sessions were stored before the catalog kept
            the store's names (the next `rtlake update` records them); listing their identified
            names instead would put identifiers in a research-side file.
    """
    if pseudonymised and not identified:
        n = catalog.execute("SELECT count(*) FROM sessions WHERE state = 'stored' AND store_subject IS NULL"
                            ).fetchone()[0]
        if n:
            raise StoreNamesMissing(f"{n} stored session(s) have no store (pseudonymous) names in the catalog yet: "
                                    "run `rtlake update` once to record them (or use --identified)")
    sql = f"""
        SELECT {_IDENTIFIED if identified else _STORE_NAMES},
               s.location AS location, upper(coalesce(s.modality, '')) AS modality,
               coalesce(sc.n, s.n_scans, 0) AS n_scans
        FROM sessions s
        LEFT JOIN patients p ON p.hospital_id = s.hospital_id
        LEFT JOIN (SELECT study_uid, count(*) AS n FROM scans GROUP BY study_uid) sc ON sc.study_uid = s.study_uid
        LEFT JOIN studies_seen st ON st.study_uid = s.study_uid
        WHERE s.state = 'stored'
    """
    by_mod = {m: t.name for t in TYPES for m in t.modalities}
    out: dict[str, list[dict]] = {t.name: [] for t in TYPES}
    skipped: Counter[str] = Counter()
    for r in catalog.query_dicts(sql):
        name = by_mod.get(r["modality"])
        if name is None:
            skipped[r["modality"] or "unknown"] += 1
            continue
        m = _XNAT_ID.search(r["location"] or "")
        out[name].append({
            "subject": r["subject"], "date": _date(r["date"]), "label": r["label"], "study_uid": r["study_uid"],
            "id": m.group(1) if m else r["label"], "n_scans": int(r["n_scans"] or 0), "scanner": "",
            "session_type": r["session_type"], "creator": "rtlake",
        })
    return out, dict(skipped)


def rows_from_xnat(store: "XnatStore") -> dict[str, list[dict]]:
    """One experiment search per SOP type on the store's project (scan rows folded per session)."""
    out: dict[str, list[dict]] = {}
    for t in TYPES:
        rows = store.session_rows(t.xsi_type)
        out[t.name] = [{**r, "date": _date(r.get("date"))} for r in rows]
    return out


def export_from_catalog(catalog: "Catalog", out_dir: Path, identified: bool = False,
                        pseudonymised: bool = False) -> ExportResult:
    rows, skipped = rows_from_catalog(catalog, identified, pseudonymised)
    result = write_listings(rows, out_dir, skipped)
    if skipped:
        log.info("sessions of other types not listed: %s", skipped)
    return result


def export_from_xnat(store: "XnatStore", out_dir: Path) -> ExportResult:
    return write_listings(rows_from_xnat(store), out_dir)
