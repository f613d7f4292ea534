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
    """Internal: the server said 401 to a logged-in session."""


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
    """Lazily connected xnatpy session plus the retry/re-login/error-naming policy."""

    def __init__(self, settings: XnatSettings) -> None:
        self.s = settings
        self._session: Any = None
        self.logins = 0
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
            return _from_netrc(self.url)
        return user, password

    def _login_status(self, user: str, password: str) -> int | None:
        """HTTP status of one login request (XNAT's `PUT /data/services/auth`); None when unreachable."""
        try:
            r = requests.put(self.url.rstrip("/") + "/data/services/auth",
                             data={"username": user, "password": password},
                             timeout=min(self.s.timeout, 30.0), verify=self.s.verify)
        except requests.RequestException:
            return None
        r.close()
        return r.status_code

    def connect(self) -> Any:
        import xnat
        from xnat import exceptions as xe

        user, password = self._credentials()
        if not user:
            raise StoreError(f"XNAT {self.url}: no credentials: set ${self.s.username_env} and "
                             f"${self.s.password_env}, or add a ~/.netrc entry for the host")
        if not password:
            raise StoreError(f"XNAT {self.url}: ${self.s.password_env} is not set (user from ${self.s.username_env})")
        try:
            with _ca_bundle(self.s.verify):
                session = xnat.connect(self.url, user=user, password=password, verify=bool(self.s.verify),
                                       logger=self._xlog, default_timeout=self.s.timeout,
                                       pilot_timeout=min(self.s.timeout, 30.0))
            if isinstance(self.s.verify, str):
                _pin_verify(session.interface, self.s.verify)
        except (requests.exceptions.SSLError, xe.XNATSSLError):
            raise StoreError(f"XNAT {self.url}: TLS certificate not trusted; set [store.xnat] ca_bundle to the "
                             f"CA that signed it (verification stays on)") from None
        except (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                xe.XNATConnectionError) as exc:
            # xnatpy wraps a connection reset or close during login as XNATConnectionError: a network
            # blip like any other, so retried rather than failing every study of the run.
            raise StoreUnavailable(f"XNAT {self.url}: cannot connect ({type(exc).__name__})") from None
        except xe.XNATAuthError:
            # xnatpy reports any non-200 login answer as an auth error, 503s included. Ask once more
            # ourselves to tell a server blip (retry) from refused credentials (stop).
            code = self._login_status(user, password)
            if code is None or code >= 500 or code in (408, 429) or code == 200:
                raise StoreUnavailable(f"XNAT {self.url}: login did not complete "
                                       f"(server answered {code or 'nothing'}); will retry") from None
            raise StoreError(f"XNAT {self.url}: login refused for the user in ${self.s.username_env} "
                             f"(or ~/.netrc); check the credentials") from None
        except xe.XNATError as exc:
            code = status_of(exc)
            if code is not None and code >= 500:
                raise StoreUnavailable(f"XNAT {self.url}: server error {code} while connecting") from None
            raise StoreError(f"XNAT {self.url}: connect failed: {_body_of(exc) or type(exc).__name__}") from None
        self.logins += 1
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
            StoreError: refused (401 after re-login, 403, 404, other 4xx, malformed answers).
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
            if code is not None and (code >= 500 or code in (408, 429)):
                raise StoreUnavailable(f"XNAT {self.url}: {what}: server error {code}: {detail}") from None
            if code is not None and code < 300:
                # e.g. a proxy's HTML error page with status 200: not XNAT's answer, worth another try
                raise StoreUnavailable(f"XNAT {self.url}: {what}: answered {code} with a page that is not "
                                       f"XNAT data: {detail[:80]}") from None
            if code == 403:
                raise StoreError(f"XNAT {self.url}: {what}: forbidden (403): {detail}") from None
            if code is not None:
                raise StoreError(f"XNAT {self.url}: {what}: refused ({code}): {detail}") from None
            raise StoreError(f"XNAT {self.url}: {what}: {type(exc).__name__}: "
                             f"{self._scrub(str(exc), scrub)[:200]}") from None

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
