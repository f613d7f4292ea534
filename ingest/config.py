"""The one TOML configuration file, validated with pydantic.

Every key is documented by its Field description (`rtlake config-reference` prints them).
Unknown keys are errors, so a typo never silently falls back to a default. Relative paths are
resolved against the folder of the config file. Secrets never live here: each section names
the environment variable that holds them (netrc is consulted for HTTP sources when unset).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ProjectConfig(_Section):
    name: str = Field("RTLAKE", description="Project ID in the lake/XNAT (sessions are filed under it).")
    state_dir: Path = Field(Path("state"), description="Folder for the DuckDB catalog, lock and scratch space.")


class HttpAuth(_Section):
    username_env: str = Field("RTLAKE_PACS_USER", description="Environment variable holding the user name.")
    password_env: str = Field("RTLAKE_PACS_PASSWORD", description="Environment variable holding the password.")
    verify_tls: bool = Field(True, description="Verify TLS certificates (keep on; see ca_bundle).")
    ca_bundle: Path | None = Field(None, description="Custom CA bundle file for TLS verification.")


class FolderSourceConfig(_Section):
    path: Path = Field(Path("pacs"), description="Folder of DICOM files treated as a PACS.")


class OrthancSourceConfig(HttpAuth):
    url: str = Field("http://127.0.0.1:8042", description="Orthanc REST base URL.")
    retrieve: Literal["wado-rs", "instances"] = Field("wado-rs", description="How to pull a study.")
    series_details: bool = Field(
        True, description="Modalities and instance counts with each patient's listing (Orthanc 1.10: a second "
                          "listing of the patient's series; 1.11+: computed tags in the same answer)."
    )


class DicomWebSourceConfig(HttpAuth):
    url: str = Field("http://127.0.0.1:8042/dicom-web", description="DICOMweb root (QIDO-RS/WADO-RS).")
    raw_query_values: bool = Field(
        False, description="Send QIDO values unencoded (Orthanc 1.10 Debian does not URL-decode)."
    )


class DimseSourceConfig(_Section):
    host: str = Field("127.0.0.1", description="PACS host.")
    port: int = Field(104, description="PACS DICOM port.")
    called_aet: str = Field("PACS", description="AE title of the PACS.")
    calling_aet: str = Field("RTLAKE", description="Our AE title (must be registered on the PACS).")
    retrieve: Literal["c-get", "c-move"] = Field("c-get", description="Retrieval method.")
    move_port: int = Field(11113, description="Port of the built-in storage SCP for C-MOVE.")
    tcp_nodelay: bool = Field(True, description="Disable Nagle on our sockets (DCMTK peers stall otherwise).")
    case_insensitive: bool = Field(True, description="Match descriptions case-insensitively client-side.")


class TransferConfig(_Section):
    retries: int = Field(4, ge=0, description="Retries per request on transient errors.")
    backoff_seconds: float = Field(1.0, ge=0, description="First backoff; doubles each retry, with jitter.")
    read_timeout: float = Field(60.0, gt=0, description="Idle (per-read) timeout in seconds.")
    concurrency: int = Field(4, ge=1, description="Parallel requests per PACS.")
    requests_per_second: float | None = Field(None, gt=0, description="Throttle on requests; none = unlimited.")
    megabytes_per_second: float | None = Field(None, gt=0, description="Throttle on bandwidth; none = unlimited.")
    window: str | None = Field(None, description="Allowed hours for moves, e.g. '19:00-07:00'; none = always.")
    timezone: str = Field("Europe/London", description="Timezone of the schedule window.")


class SourceConfig(_Section):
    kind: Literal["folder", "orthanc", "dicomweb", "dimse"] = Field("folder", description="Which PACS protocol.")
    name: str = Field("pacs", description="Name of this PACS in logs and the catalog.")
    folder: FolderSourceConfig = FolderSourceConfig()
    orthanc: OrthancSourceConfig = OrthancSourceConfig()
    dicomweb: DicomWebSourceConfig = DicomWebSourceConfig()
    dimse: DimseSourceConfig = DimseSourceConfig()
    transfer: TransferConfig = TransferConfig()


class LakeStoreConfig(_Section):
    path: Path = Field(Path("lake"), description="Root folder of the local lake.")


class XnatStoreConfig(_Section):
    url: str = Field("https://xnat.example.org", description="XNAT base URL.")
    username_env: str = Field("RTLAKE_XNAT_USER", description="Environment variable holding the XNAT user.")
    password_env: str = Field("RTLAKE_XNAT_PASSWORD", description="Environment variable holding the password.")
    verify_tls: bool = Field(True, description="Verify TLS certificates.")
    ca_bundle: Path | None = Field(None, description="Custom CA bundle file.")
    overwrite: Literal["none", "append", "delete"] = Field(
        "none", description="A session already in XNAT: 'none' leaves it, 'append' merges new files into it, "
        "'delete' deletes it and imports the study afresh (also when its label holds another study)."
    )
    pacs_id: int = Field(1, description="DQR mode: XNAT's PACS id.")
    query_batch: int = Field(200, ge=1, description="DQR mode: rows per batch query.")
    import_batch: int = Field(50, ge=1, description="DQR mode: studies per import call.")
    import_timeout: float = Field(
        900.0, gt=0, description="Seconds to wait for XNAT to answer one session upload (it answers after archiving)."
    )
    create_project: bool = Field(True, description="Create the project when it does not exist (needs XNAT admin rights).")
    dqr_wait_seconds: float = Field(
        600.0, ge=0, description="DQR mode: how long to poll XNAT's import history for each batch's outcome."
    )
    dqr_retries: int = Field(
        8, ge=0, description="DQR mode: retries of a call answered 'There was a problem', non-JSON or 5xx."
    )
    dqr_backoff_seconds: float = Field(
        15.0, ge=0, description="DQR mode: first wait before such a retry; doubles each time, at most 5 minutes."
    )
    dqr_failures_dir: Path | None = Field(
        None, description="DQR mode: folder for raw failure JSON records; none = <state_dir>/dqr-failures."
    )
    # issue 14: XNAT stores against a real XNAT
    identity: Literal["uid", "label"] = Field(
        "uid", description="When a session already in XNAT is this study: same label and StudyInstanceUID "
        "('uid'), or same label under the same subject ('label', for sites whose anonymisation script rewrites UIDs)."
    )
    dqr_ae_title: str = Field("", description="DQR mode: AE title of XNAT's own DICOM receiver the PACS sends to.")
    dqr_port: int = Field(0, ge=0, le=65535, description="DQR mode: port of that DICOM receiver.")
    dqr_poll_seconds: float = Field(5.0, gt=0, description="DQR mode: seconds between polls of the queue and archive.")
    dqr_stable_polls: int = Field(
        2, ge=1, description="DQR mode: polls a pulled session's scan count must stay unchanged to count as arrived "
        "(used when XNAT's queue entry does not list the series it asked the PACS for)."
    )


class OrthancStoreConfig(HttpAuth):
    url: str = Field("http://127.0.0.1:8042", description="Orthanc REST base URL to store into.")


class StoreConfig(_Section):
    kind: Literal["lake", "xnat", "xnat-dqr", "orthanc"] = Field("lake", description="Where studies go.")
    lake: LakeStoreConfig = LakeStoreConfig()
    xnat: XnatStoreConfig = XnatStoreConfig()
    orthanc: OrthancStoreConfig = OrthancStoreConfig()


class InputsConfig(_Section):
    cohort: Path = Field(
        Path("HospitalID-NHSNumber.csv"),
        description="Cohort list: CSV with HospitalID and NHSNumber (blank when none).",
    )
    deceased: Path | None = Field(None, description="EDW extract of known-deceased patients (CSV with HospitalID).")
    reference_dates: Path | None = Field(None, description="CSV of Subject and Reference Date (RT start).")


class CriteriaConfig(_Section):
    lists: Path | None = Field(
        None, description="Include/exclude lists: xlsx (INCLUDE/EXCLUDE sheets), CSV or YAML; none = shipped defaults."
    )
    history_dir: Path = Field(Path("criteria-history"), description="Dated copies of the lists after each review import.")


# ARIA's roots for RT verification (portal image / CBCT) studies, as the RT-HaND scripts use them.
# Every other Varian study (planning CT, RTSTRUCT, RTPLAN, RTDOSE) also starts 1.2.246.352.71.1., so
# the old default "1.2.246.352.71.1." skipped real RT data.
ARIA_VERIFICATION_ROOTS = ["1.2.246.352.71.1.658820455611", "1.2.246.352.71.1.850931706547"]


class HarvestConfig(_Section):
    window_days: int | None = Field(
        None, ge=0,
        description="Opt-in StudyDate window: ask each patient only for studies dated after the last harvest "
                    "minus this many days. Unset (default) lists every study each run, so late-arriving studies "
                    "with old dates are found. Set only for a PACS where full per-patient queries are too slow: "
                    "studies imported later with an older date are then MISSED (use `rtlake update --full`).",
    )
    use_change_log: bool = Field(
        True, description="Orthanc REST: visit only patients whose studies changed since the last run "
                          "(GET /changes), falling back to the full listing when the log cannot cover the gap.",
    )
    change_log_page: int = Field(1000, ge=1, description="Orthanc change-log entries read per request.")
    skip_uid_prefixes: list[str] = Field(
        list(ARIA_VERIFICATION_ROOTS),
        description="UID roots of RT verification studies to skip (whole components: a root matches the UID "
                    "itself or UIDs continuing with '.'). Default: the two ARIA verification roots.",
    )
    placeholder_dates: list[str] = Field(["2099-01-01"], description="Study dates that mean 'scheduled, no date'.")
    check_retries: int = Field(
        1, ge=0, description="Retries of the start-of-run check that the source and store answer (kept short: "
                             "a dead PACS stops the run within seconds).",
    )
    max_consecutive_query_failures: int = Field(
        3, ge=1, description="After this many patient queries in a row fail as unreachable, the source is checked "
                             "again; if it does not answer the run stops as failed instead of retrying every patient.",
    )

    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "overlap_days" in data:
            raise ValueError("overlap_days was removed: by default every run lists each patient's studies in full "
                             "(late arrivals with old dates are found); to opt in to a StudyDate window set "
                             "window_days instead")
        return data

    @field_validator("placeholder_dates")
    @classmethod
    def _iso_dates(cls, v: list[str]) -> list[str]:
        import datetime as _dt

        for d in v:
            try:
                _dt.date.fromisoformat(d)
            except ValueError:
                raise ValueError(f"{d!r} is not a YYYY-MM-DD date") from None
        return v


class ReportConfig(_Section):
    outbox: Path = Field(Path("outbox"), description="Folder the EDW picks the master sheet up from.")
    slots_per_modality: int = Field(5, ge=1, description="Minimum number of session slots per modality.")
    baseline_failure_rate: dict[str, float] = Field(
        {"CT": 0.07, "MR": 0.07}, description="Historic failure rate per modality (fraction)."
    )


class LoggingConfig(_Section):
    identifiers_in_logs: bool = Field(
        False, description="Allow patient identifiers in log lines and console output (off: patients are 'a "
                           "patient', file paths are cut to their last part, and while pseudonymising original UIDs "
                           "are shown as their pseudonymous UIDs)."
    )


class SecurityConfig(_Section):
    outbox_group: str | None = Field(
        None, description="Group that may read the EDW outbox (e.g. the EDW service account's group); none = "
                          "owner-only like everything else rtlake writes (files 0600, folders 0700).",
    )
    outbox_mode: str = Field("0640", description="File mode of outbox files when outbox_group is set (octal).")

    @field_validator("outbox_mode")
    @classmethod
    def _octal(cls, v: str) -> str:
        try:
            m = int(v, 8)
        except ValueError:
            raise ValueError(f"{v!r} is not an octal file mode such as '0640'") from None
        if m & 0o007:
            raise ValueError(f"{v!r} gives access to every account on the machine; share with a group instead")
        return v

    @property
    def outbox_mode_bits(self) -> int:
        return int(self.outbox_mode, 8)


class PseudoConfig(_Section):
    enabled: bool = Field(False, description="Pseudonymise studies on the way into the store.")
    profile: Path | None = Field(None, description="Pseudonymisation profile (TOML); none = built-in default.")
    key_env: str = Field("RTLAKE_PSEUDO_KEY", description="Environment variable holding the secret key.")
    uid_root: str = Field("2.25", description="UID root for remapped UIDs.")
    mapping: Path = Field(Path("pseudo-map.duckdb"), description="Mapping table (owner-only permissions).")


class RtDvhQaConfig(_Section):
    small_cc: float = Field(1.0, gt=0, description="Structures below this volume (cc) use small_pct for every check.")
    volume_pct: float = Field(1.0, ge=0, description="Volume tolerance (%) against the TPS's stored DVH.")
    mean_pct: float = Field(0.5, ge=0, description="Mean-dose tolerance (%).")
    dose_pct: float = Field(1.0, ge=0, description="D95/D2 tolerance (%).")
    max_pct: float = Field(2.0, ge=0, description="Maximum-dose tolerance (%).")
    small_pct: float = Field(10.0, ge=0, description="Tolerance (%) of every check for sub-small_cc structures.")
    dose_abs_gy: float = Field(0.05, ge=0, description="Absolute floor (Gy) for mean and D-values (low doses); one TPS bin is added for D-values.")


class RtConfig(_Section):
    output: Path = Field(Path("rt"), description="Folder for NIfTI, DVH and previews.")
    scheduler: str | None = Field(None, description="Dask scheduler address; none = a local cluster.")
    dvh_method: Literal["tps", "voxel"] = Field(
        "tps", description="DVH method: tps (shape-interpolated solid, agrees with Eclipse) or voxel (the NIfTI masks, agrees with plastimatch).")
    dvh_qa: RtDvhQaConfig = RtDvhQaConfig()


class Config(_Section):
    project: ProjectConfig = ProjectConfig()
    source: SourceConfig = SourceConfig()
    store: StoreConfig = StoreConfig()
    inputs: InputsConfig = InputsConfig()
    criteria: CriteriaConfig = CriteriaConfig()
    harvest: HarvestConfig = HarvestConfig()
    report: ReportConfig = ReportConfig()
    logging: LoggingConfig = LoggingConfig()
    security: SecurityConfig = SecurityConfig()
    pseudo: PseudoConfig = PseudoConfig()
    rt: RtConfig = RtConfig()

    # Folder that relative paths are resolved against; set by load_config.
    base_dir: Path = Field(Path("."), exclude=True, description="(internal) folder of the config file.")

    @model_validator(mode="after")
    def _resolve_paths(self) -> "Config":
        _resolve(self, self.base_dir)
        return self

    @property
    def state_dir(self) -> Path:
        return self.project.state_dir

    @property
    def catalog_path(self) -> Path:
        return self.project.state_dir / "catalog.duckdb"


def _resolve(model: BaseModel, base: Path) -> None:
    for name in type(model).model_fields:
        if name == "base_dir":
            continue
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            _resolve(value, base)
        elif isinstance(value, Path) and not value.is_absolute():
            object.__setattr__(model, name, (base / value).resolve())


def load_config(path: str | os.PathLike[str] | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read and validate a config file; with no path, the defaults relative to the current folder.

    Raises:
        ConfigError: the file is missing, is not TOML, or has an unknown key or a bad value;
            the message names the key path and the file.
    """
    data: dict[str, Any] = {}
    where = "<defaults>"
    base = Path.cwd()
    if path is not None:
        p = Path(path)
        where = str(p)
        if not p.is_file():
            raise ConfigError(f"{where}: config file not found")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{where}: not valid TOML: {exc}") from None
        base = p.resolve().parent
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return Config.model_validate({**data, "base_dir": base})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(x) for x in err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{where}: [{key}] {msg}")
        raise ConfigError("\n".join(problems)) from None


def config_reference() -> str:
    """Markdown table of every key, its type, default and description (for the README)."""
    rows = ["| key | type | default | description |", "|---|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, f in model.model_fields.items():
            if name == "base_dir":
                continue
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
                continue
            if get_origin(ann) is Literal:
                tname = " or ".join(f"`{a}`" for a in get_args(ann))
            else:
                tname = getattr(ann, "__name__", None) or str(ann).replace("typing.", "").replace("pathlib.", "")
            tname = tname.replace(" | ", " or ")  # a bare | would split the Markdown table cell
            default = f.default
            if isinstance(default, Path):
                default = str(default)
            rows.append(f"| `{prefix}{name}` | {tname} | `{default!r}` | {f.description or ''} |")

    walk(Config, "")
    return "\n".join(rows)


def secret_from_env(var: str, what: str) -> str | None:
    """Read a credential from the environment; None when unset (callers may fall back to netrc)."""
    value = os.environ.get(var)
    return value if value else None
