"""One logged-in `xnat` (xnatpy) session with the error policy both XNAT stores share.

Why a wrapper: xnatpy neither re-logs in when XNAT expires the server session nor retries
(its import makes a single attempt with no timeout), and its error messages carry request URLs
that contain subject labels, i.e. NHS numbers. Every call therefore goes through `call()`,
which re-logs in once on 401, retries timeouts/5xx with tenacity, and turns whatever happened
into a StoreError / StoreUnavailable that names the server and the study, never the patient.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import requests
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from ..config import Config, secret_from_env
from ..errors import StoreError, StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class XnatSettings:
    url: str
    username_env: str
    password_env: str
    verify: bool | str = True
    timeout: float = 60.0
    retries: int = 4
    backoff: float = 1.0
    identifiers_in_logs: bool = False
    max_backoff: float | None = None  # cap on one wait; None = 16 × backoff

    @classmethod
    def from_config(cls, cfg: Config) -> "XnatSettings":
        x = cfg.store.xnat
        verify: bool | str = str(x.ca_bundle) if (x.verify_tls and x.ca_bundle) else x.verify_tls
        t = cfg.source.transfer
        return cls(url=x.url.rstrip("/"), username_env=x.username_env, password_env=x.password_env,
                   verify=verify, timeout=t.read_timeout, retries=t.retries, backoff=t.backoff_seconds,
                   identifiers_in_logs=cfg.logging.identifiers_in_logs)


class _Relogin(Exception):
    """Internal: the server no longer knows our session (401, or we were quietly made the guest user)."""


class XnatConflict(StoreError):
    """XNAT refused an import because of what it already holds (409, or 400 from the DICOM-zip
    importer): the caller re-reads the label before deciding what it means."""


#: Words of PrearcSessionArchiver's conflict messages, for sites whose importer answers them with 400.
_CONFLICT_WORDS = ("already exists", "invalid modification of session", "matching files",
                   "already contains a scan")


def status_of(exc: BaseException) -> int | None:
    """HTTP status behind an xnatpy or requests error, when there is one."""
    resp = getattr(exc, "response", None)
    if resp is not None and getattr(resp, "status_code", None) is not None:
        return int(resp.status_code)
    m = re.search(r"[Ss]tatus(?: code)?[ (]+(\d{3})", str(exc))
    return int(m.group(1)) if m else None


def _body_of(exc: BaseException) -> str:
    resp = getattr(exc, "response", None)
    text = getattr(resp, "text", None)
    if text is None:
        m = re.search(r"response text (.*)", str(exc), re.S)
        text = m.group(1) if m else ""
    text = re.sub(r"<[^>]+>", " ", text or "")
    return " ".join(text.split())[:200]


class XnatClient:
    """Lazily connected xnatpy session plus the retry/re-login/error-naming policy.

    Logging in is done here, with one `PUT /data/services/auth` whose status we can see (xnatpy
    turns every non-200 into the same error and would make us ask twice). A refusal — 401, 403,
    or the 500 XNAT answers a wrong password with — is remembered: every later call of the run
    fails at once with the same message and no further login is tried, so a wrong password
    costs one failed login, not one per study (enough to lock an account).
    """

    def __init__(self, settings: XnatSettings) -> None:
        self.s = settings
        self._session: Any = None
        self.logins = 0  # successful logins
        self.login_attempts = 0  # password logins sent
        self.refused: str | None = None  # why XNAT refused our credentials, once it has
        self.user: str | None = None
        self._from_netrc = False
        # xnatpy logs request URLs (with subject labels) at debug/verbose level, and chats at warning
        # level about cookies; our own messages say what matters.
        self._xlog = logging.getLogger(f"{__name__}.xnatpy")
        if not settings.identifiers_in_logs:
            self._xlog.setLevel(logging.ERROR)

    @property
    def url(self) -> str:
        return self.s.url

    # -- connection ------------------------------------------------------------------------
    def _credentials(self) -> tuple[str | None, str | None]:
        user = secret_from_env(self.s.username_env, "XNAT user")
        password = secret_from_env(self.s.password_env, "XNAT password")
        if user is None and password is None:
            self._from_netrc = True
            return _from_netrc(self.url)
        return user, password

    def _where(self) -> str:
        return "~/.netrc" if self._from_netrc else f"${self.s.username_env} / ${self.s.password_env}"

    def _login(self, user: str, password: str) -> str:
        """One password login; the JSESSION id, or an error that says whether to try again."""
        self.login_attempts += 1
        try:
            r = requests.put(self.url.rstrip("/") + "/data/services/auth",
                             data={"username": user, "password": password},
                             timeout=min(self.s.timeout, 30.0), verify=self.s.verify)
        except requests.exceptions.SSLError:
            raise StoreError(f"XNAT {self.url}: TLS certificate not trusted; set [store.xnat] ca_bundle to the "
                             f"CA that signed it (verification stays on)") from None
        except (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise StoreUnavailable(f"XNAT {self.url}: cannot connect ({type(exc).__name__})") from None
        code, text = r.status_code, r.text.strip()
        r.close()
        if code == 200 and re.fullmatch(r"[\w\-.]{8,}", text):
            return text
        if code == 404:
            self.refused = (f"XNAT {self.url}: no XNAT login service at /data/services/auth (HTTP 404); "
                            f"check [store.xnat] url (the XNAT base URL, e.g. https://host/xnat)")
            raise StoreError(self.refused)
        if code in (401, 403, 500) or 400 <= code < 500 and code not in (408, 429):
            self.refused = (f"XNAT {self.url}: login refused (HTTP {code}) for the user in {self._where()}; "
                            f"check the credentials. rtlake does not try again in this run, so refused "
                            f"credentials cost one failed login")
            raise StoreError(self.refused)
        # 502/503/504 (a proxy or XNAT starting up), 408/429, or a 200 that is not a session id
        raise StoreUnavailable(f"XNAT {self.url}: login did not complete (server answered {code}); will retry")

    def connect(self) -> Any:
        import xnat
        from xnat import exceptions as xe

        if self.refused:
            raise StoreError(self.refused)
        user, password = self._credentials()
        if not user:
            raise StoreError(f"XNAT {self.url}: no credentials: set ${self.s.username_env} and "
                             f"${self.s.password_env}, or add a ~/.netrc entry for the host")
        if not password:
            raise StoreError(f"XNAT {self.url}: ${self.s.password_env} is not set (user from ${self.s.username_env})")
        token = self._login(user, password)
        try:
            with _ca_bundle(self.s.verify):
                session = xnat.connect(self.url, jsession=token, verify=bool(self.s.verify),
                                       logger=self._xlog, default_timeout=self.s.timeout,
                                       pilot_timeout=min(self.s.timeout, 30.0))
            if isinstance(self.s.verify, str):
                _pin_verify(session.interface, self.s.verify)
        except (requests.exceptions.SSLError, xe.XNATSSLError):
            raise StoreError(f"XNAT {self.url}: TLS certificate not trusted; set [store.xnat] ca_bundle to the "
                             f"CA that signed it (verification stays on)") from None
        except (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                xe.XNATConnectionError, xe.XNATAuthError) as exc:
            # The password was accepted; a reset, a blip or a session dropped while xnatpy reads the
            # data model is worth another try (which logs in again).
            raise StoreUnavailable(f"XNAT {self.url}: connect did not complete ({type(exc).__name__})") from None
        except xe.XNATError as exc:
            code = status_of(exc)
            if code is not None and (code >= 500 or code in (401, 408, 429)):
                raise StoreUnavailable(f"XNAT {self.url}: server error {code} while connecting") from None
            raise StoreError(f"XNAT {self.url}: connect failed: {_body_of(exc) or type(exc).__name__}") from None
        self.logins += 1
        self.user = user
        self._session = session
        return session

    @property
    def session(self) -> Any:
        return self._session if self._session is not None else self.connect()

    def reconnect(self) -> Any:
        self.close()
        log.info("XNAT %s: server session expired; logging in again", self.url)
        return self.connect()

    def close(self) -> None:
        if self._session is not None:
            try:
                self._session.disconnect()
            except Exception:  # noqa: BLE001 - the server may already have dropped the session
                # xnatpy stops its keep-alive thread only after the logout request succeeded: stop it
                # anyway, or it goes on calling a server we have left.
                try:
                    from xnat.session import BaseXNATSession

                    BaseXNATSession.disconnect(self._session)
                except Exception:  # noqa: BLE001
                    pass
            self._session = None

    # -- the policy ----------------------------------------------------------------------------
    def call(self, fn: Callable[[Any], T], what: str, scrub: tuple[str, ...] = (),
             on_retry: Callable[[], T | None] | None = None) -> T:
        """Run `fn(session)` with re-login on 401 and retries on timeouts and 5xx.

        `what` names the object ("study 1.2.3 (session ACC1)"); `scrub` lists identifiers to blank
        out of server messages. `on_retry`, if given, is asked before each retry whether the last
        attempt in fact succeeded server-side (a timed-out import XNAT finished anyway); a non-None
        answer is returned as the result.

        Raises:
            StoreUnavailable: still failing transiently after the configured retries.
            XnatConflict: XNAT refused because of what it holds (409).
            StoreError: refused (credentials, 401 after re-login, 403, 404, other 4xx, malformed answers).
        """
        attempt = 0

        def once() -> T:
            nonlocal attempt
            attempt += 1
            if attempt > 1 and on_retry is not None:
                done = on_retry()
                if done is not None:
                    return done
            try:
                return self._once(fn, what, scrub)
            except _Relogin:
                self.reconnect()
                try:
                    return self._once(fn, what, scrub)
                except _Relogin:
                    raise StoreError(f"XNAT {self.url}: {what}: refused with 401 even after logging in again") from None

        retrying = Retrying(
            retry=retry_if_exception_type(StoreUnavailable),
            stop=stop_after_attempt(self.s.retries + 1),
            wait=wait_exponential_jitter(multiplier=self.s.backoff, jitter=self.s.backoff,
                                         max=self.s.max_backoff or max(self.s.backoff * 16, 1.0)),
            reraise=True,
        )
        return retrying(once)

    def _once(self, fn: Callable[[Any], T], what: str, scrub: tuple[str, ...]) -> T:
        from xnat import exceptions as xe

        session = self.session
        try:
            return fn(session)
        except StoreError:
            raise
        except (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            # a body cut short is a network blip like a reset: retried
            raise StoreUnavailable(f"XNAT {self.url}: {what}: {type(exc).__name__} (no answer)") from None
        except (xe.XNATError, requests.RequestException) as exc:
            code = status_of(exc)
            detail = self._scrub(_body_of(exc), scrub)
            if code == 401:
                raise _Relogin() from None
            if code in (403, 404) and not self._still_ours(session):
                # sites with guest access serve a dead session as the guest user: 403/404, not 401
                raise _Relogin() from None
            if code is not None and (code >= 500 or code in (408, 429)):
                raise StoreUnavailable(f"XNAT {self.url}: {what}: server error {code}: {detail}") from None
            if code is not None and code < 300:
                # e.g. a proxy's HTML error page with status 200: not XNAT's answer, worth another try
                raise StoreUnavailable(f"XNAT {self.url}: {what}: answered {code} with a page that is not "
                                       f"XNAT data: {detail[:80]}") from None
            if code == 409 or (code == 400 and any(w in detail.lower() for w in _CONFLICT_WORDS)):
                raise XnatConflict(f"XNAT {self.url}: {what}: refused ({code}): {detail}") from None
            if code == 403:
                raise StoreError(f"XNAT {self.url}: {what}: forbidden (403): {detail}") from None
            if code is not None:
                raise StoreError(f"XNAT {self.url}: {what}: refused ({code}): {detail}") from None
            raise StoreError(f"XNAT {self.url}: {what}: {type(exc).__name__}: "
                             f"{self._scrub(str(exc), scrub)[:200]}") from None

    def _still_ours(self, session: Any) -> bool:
        """Is the server session still logged in as our user (`GET /data/auth`)?"""
        try:
            r = session.interface.get(self.url + "/data/auth", timeout=min(self.s.timeout, 30.0))
        except requests.RequestException:
            return True  # cannot tell; keep the original error
        m = re.search(r"User '([^']+)' is logged in", r.text or "")
        return r.status_code == 200 and m is not None and m.group(1) == self.user

    @staticmethod
    def _scrub(text: str, scrub: tuple[str, ...]) -> str:
        for ident in scrub:
            if ident:
                text = text.replace(ident, "<subject>")
        return text

    # -- small REST helpers ------------------------------------------------------------------
    def get_rows(self, session: Any, path: str, query: dict[str, str]) -> list[dict]:
        """A ResultSet listing as a list of dicts (raises on a non-JSON answer)."""
        data = session.get_json(path, query=query)
        try:
            return list(data["ResultSet"]["Result"])
        except (KeyError, TypeError):
            raise StoreError(f"XNAT {self.url}: {path}: answer is not an XNAT ResultSet") from None

    def request(self, session: Any, method: str, path: str, timeout: Any = None, **kw: Any) -> requests.Response:
        """A raw call through the logged-in session (for calls xnatpy does not wrap the way XNAT needs);
        a non-2xx answer raises requests.HTTPError carrying the response, for `call()` to judge."""
        resp = session.interface.request(method, self.url + path, timeout=timeout or (30.0, self.s.timeout), **kw)
        if resp.status_code >= 300:
            raise requests.HTTPError(f"status {resp.status_code}", response=resp)
        return resp


_ENV_LOCK = threading.Lock()


@contextlib.contextmanager
def _ca_bundle(verify: bool | str) -> Iterator[None]:
    """Make xnatpy's login requests trust a custom CA bundle.

    xnatpy 0.8.1 only passes verify=False through to its requests session; a CA bundle path is
    dropped. requests reads REQUESTS_CA_BUNDLE at request time, so it is set just while connecting;
    afterwards the session's own `verify` holds the path.
    """
    if not isinstance(verify, str):
        yield
        return
    with _ENV_LOCK:
        old = os.environ.get("REQUESTS_CA_BUNDLE")
        os.environ["REQUESTS_CA_BUNDLE"] = verify
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("REQUESTS_CA_BUNDLE", None)
            else:
                os.environ["REQUESTS_CA_BUNDLE"] = old


def _pin_verify(interface: requests.Session, ca_bundle: str) -> None:
    """Pass the CA bundle with every request: requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE in
    the environment override a session's own `verify`, but not a per-request one."""
    original = interface.request

    def request(method: str, url: str, **kw: Any) -> requests.Response:
        kw.setdefault("verify", ca_bundle)
        return original(method, url, **kw)

    interface.request = request  # type: ignore[method-assign]


def _from_netrc(url: str) -> tuple[str | None, str | None]:
    """~/.netrc (or $NETRC) entry for host:port, else for the host alone (xnatpy only tries host:port)."""
    import netrc
    from urllib.parse import urlparse

    path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
    try:
        entries = netrc.netrc(path)
    except (OSError, netrc.NetrcParseError):
        return None, None
    parsed = urlparse(url)
    for host in (parsed.netloc, parsed.hostname):
        auth = entries.authenticators(host) if host else None
        if auth:
            return auth[0], auth[2]
    return None, None


def scratch_dir(cfg: Config) -> Path:
    """Where upload zips are built (not under state/scratch, which the run clears while we work)."""
    return cfg.state_dir / "xnat-upload"
