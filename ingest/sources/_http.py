"""HTTP plumbing shared by the Orthanc and DICOMweb sources: session, error mapping, WADO-RS.

Why requests' read timeout: it is an idle timeout (seconds between bytes), so a 5 GB study that
keeps flowing never times out while a stalled one fails fast. Retries are not done here but by
`Transfer.call`, so one policy covers queries, whole-study pulls and per-instance re-tries.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

import requests

from ..config import secret_from_env
from ..errors import SourceError, SourceUnavailable
from ..transfer import Transfer
from ._files import ReceivedStudy

log = logging.getLogger(__name__)

RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}
DICOM_MULTIPART = 'multipart/related; type="application/dicom"'


def make_session(section, concurrency: int) -> requests.Session:
    """Session with credentials from the named env vars (else ~/.netrc), the environment read once.

    Why once: with `trust_env` on, requests re-reads the proxy variables, no_proxy, netrc and the
    CA-bundle variables on every request — two walks of `os.environ` per call, measured at ~0.7 ms
    of a ~1.7 ms loopback query (scripts/bench/bench_harvest.py). A harvest makes one or two
    small requests per patient, so that was the largest cost on our side. The same settings are
    resolved here for the configured URL and kept on the session: netrc credentials when no
    environment variable names them, HTTP(S)_PROXY/NO_PROXY, and REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE
    when verification is on without a configured `ca_bundle` (a configured one still wins).
    """
    s = requests.Session()
    url = str(getattr(section, "url", "") or "")
    user = secret_from_env(section.username_env, "user")
    password = secret_from_env(section.password_env, "password")
    if user is not None:
        s.auth = (user, password or "")
    elif url:
        s.auth = requests.utils.get_netrc_auth(url)
    s.verify = str(section.ca_bundle) if section.ca_bundle else section.verify_tls
    if s.verify is True:
        s.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    if url:
        s.proxies = requests.utils.get_environ_proxies(url)
    s.trust_env = False
    adapter = requests.adapters.HTTPAdapter(pool_connections=2, pool_maxsize=max(concurrency * 2, 4), max_retries=0)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    s.headers["User-Agent"] = "rtlake"
    return s


def _orthanc_message(r: requests.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return ""
    if isinstance(body, dict):
        msg = body.get("Message") or body.get("Details") or ""
        return f": {str(msg)[:200]}" if msg else ""
    return ""


def check_status(r: requests.Response, pacs: str, what: str, auth_hint: str = "") -> None:
    """Turn an HTTP status into our errors, naming the PACS, the target and the code.

    Raises:
        SourceUnavailable: 408/429/5xx (worth a retry).
        SourceError: 401/403 (credentials), 404 and other 4xx (will not get better).
    """
    code = r.status_code
    if code < 400:
        return
    if code in RETRYABLE_HTTP:
        raise SourceUnavailable(f"{pacs}: HTTP {code} for {what}")
    if code in (401, 403):
        raise SourceError(f"{pacs}: HTTP {code} for {what}: authentication failed{auth_hint}")
    raise SourceError(f"{pacs}: HTTP {code} for {what}{_orthanc_message(r)}")


class HttpClient:
    """requests + our error mapping + throttle accounting for one PACS."""

    def __init__(self, session: requests.Session, transfer: Transfer, pacs: str, auth_hint: str = "",
                 tls_section: str = "[source.*]") -> None:
        self.session = session
        self.transfer = transfer
        self.pacs = pacs
        self.auth_hint = auth_hint
        self.tls_section = tls_section
        # Passed on every request: requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE in the environment
        # override a session-level `verify`, and the configured ca_bundle must win.
        self.verify = session.verify
        self.timeout = (min(10.0, transfer.read_timeout), transfer.read_timeout)

    def request(self, method: str, url: str, what: str, *, stream: bool = False, accept: frozenset[int] = frozenset(),
                **kw: Any) -> requests.Response:
        """One attempt (no retry): returns a response with a 2xx status (or one in `accept`), else raises
        SourceError/SourceUnavailable."""
        kw.setdefault("verify", self.verify)
        try:
            r = self.session.request(method, url, timeout=self.timeout, stream=stream, **kw)
        except requests.exceptions.SSLError as exc:
            # Not transient: retrying an untrusted certificate only delays the same answer.
            reason = "CERTIFICATE_VERIFY_FAILED" if "CERTIFICATE_VERIFY_FAILED" in str(exc) else _short(exc)
            raise SourceError(f"{self.pacs}: {what}: SSLError ({reason}): the server's TLS certificate is not "
                              f"trusted; set ca_bundle in {self.tls_section} to the CA that signed it "
                              f"(verification stays on)") from None
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError) as exc:
            # A body cut short arrives here as ChunkedEncodingError when not streaming: a network
            # blip like a reset, so it is retried.
            raise SourceUnavailable(f"{self.pacs}: {what}: {type(exc).__name__} ({_short(exc)})") from None
        except requests.RequestException as exc:
            raise SourceError(f"{self.pacs}: {what}: {type(exc).__name__} ({_short(exc)})") from None
        if r.status_code in accept:
            return r
        try:
            check_status(r, self.pacs, what, self.auth_hint)
        except Exception:
            r.close()
            raise
        return r

    def json(self, method: str, url: str, what: str, **kw: Any) -> Any:
        return self.json_status(method, url, what, **kw)[1]

    def json_status(self, method: str, url: str, what: str, **kw: Any) -> tuple[int, Any]:
        """(HTTP status, decoded JSON body or None); statuses other than 2xx only when passed in `accept`."""
        r = self.request(method, url, what, **kw)
        try:
            body = r.content
        except (requests.RequestException, OSError) as exc:
            raise SourceUnavailable(f"{self.pacs}: {what}: {type(exc).__name__} while reading") from None
        self.transfer.throttle.data(len(body))
        if not body.strip():
            return r.status_code, None  # 204 No Content: QIDO's way of saying "no match"
        try:
            return r.status_code, json.loads(body)
        except ValueError:
            raise SourceError(f"{self.pacs}: {what}: answer is not JSON "
                              f"(Content-Type {r.headers.get('Content-Type', '?')})") from None

    def chunks(self, r: requests.Response, what: str, size: int = 256 * 1024) -> Iterator[bytes]:
        """Stream the body, charging the bandwidth throttle; a broken stream is a transient error."""
        try:
            for chunk in r.iter_content(size):
                self.transfer.throttle.data(len(chunk))
                yield chunk
        except (requests.RequestException, OSError) as exc:
            raise SourceUnavailable(f"{self.pacs}: {what}: stream broke ({type(exc).__name__})") from None
        finally:
            r.close()


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 160 else text[:160] + "..."


def multipart_boundary(content_type: str) -> bytes | None:
    if not content_type.lower().startswith("multipart/"):
        return None
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary":
            return value.strip().strip('"').encode("latin-1")
    return None


def iter_multipart(chunks: Iterable[bytes], boundary: bytes) -> Iterator[bytes]:
    """Yield the bodies of a multipart stream one part at a time, without holding the whole response.

    Raises:
        SourceUnavailable: the stream ended before the closing delimiter (a truncated transfer).
    """
    delim = b"--" + boundary
    body_end = b"\r\n" + delim
    buf = bytearray()
    state = "preamble"
    scan_from = 0
    for chunk in chunks:
        buf += chunk
        while True:
            if state == "preamble":
                i = buf.find(delim)
                if i < 0:
                    del buf[: max(0, len(buf) - len(delim))]
                    break
                del buf[: i + len(delim)]
                state = "next"
            if state == "next":
                if len(buf) < 2:
                    break
                if buf[:2] == b"--":
                    return
                j = buf.find(b"\r\n\r\n")
                if j < 0:
                    break
                del buf[: j + 4]
                state, scan_from = "body", 0
            if state == "body":
                k = buf.find(body_end, scan_from)
                if k < 0:
                    scan_from = max(0, len(buf) - len(body_end))
                    break
                yield bytes(buf[:k])
                del buf[: k + len(body_end)]
                state = "next"
    raise SourceUnavailable("multipart stream ended before its closing boundary (truncated transfer)")


class WadoRs:
    """WADO-RS retrieval into a ReceivedStudy: a whole study, or one instance (for the missing-ones pass)."""

    def __init__(self, client: HttpClient, root: str) -> None:
        self.client = client
        self.root = root.rstrip("/")

    def _pull(self, url: str, rec: ReceivedStudy, what: str) -> int:
        r = self.client.request("GET", url, what, stream=True,
                                headers={"Accept": f"{DICOM_MULTIPART}; transfer-syntax=*",
                                         "Accept-Encoding": "identity"})
        ctype = r.headers.get("Content-Type", "")
        boundary = multipart_boundary(ctype)
        if boundary is None:
            r.close()
            raise SourceError(f"{self.client.pacs}: {what}: expected multipart/related, got {ctype or 'no Content-Type'}")
        n = 0
        try:
            for part in iter_multipart(self.client.chunks(r, what), boundary):
                rec.add_bytes(part, what)
                n += 1
        except SourceUnavailable as exc:
            raise SourceUnavailable(f"{self.client.pacs}: {what}: {exc} after {n} instances") from None
        return n

    def study(self, study_uid: str, rec: ReceivedStudy) -> int:
        return self._pull(f"{self.root}/studies/{study_uid}", rec, f"WADO-RS study {study_uid}")

    def instance(self, study_uid: str, series_uid: str, sop_uid: str, rec: ReceivedStudy) -> int:
        return self._pull(f"{self.root}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}", rec,
                          f"WADO-RS instance {sop_uid} of study {study_uid}")

    def list_instances(self, study_uid: str) -> dict[str, str]:
        """SOPInstanceUID → SeriesInstanceUID for every instance the PACS lists (QIDO-RS)."""
        what = f"QIDO-RS instances of study {study_uid}"
        body = self.client.json("GET", f"{self.root}/studies/{study_uid}/instances", what,
                                headers={"Accept": "application/dicom+json"})
        out: dict[str, str] = {}
        for item in body or []:
            sop = _dj(item, "00080018")
            if sop:
                out[sop] = _dj(item, "0020000E")
        return out


def _dj(item: dict, tag: str) -> str:
    """First value of a DICOM JSON attribute as text ('' when absent); PN becomes its Alphabetic form."""
    v = (item.get(tag) or {}).get("Value") or []
    if not v:
        return ""
    first = v[0]
    if isinstance(first, dict):
        return str(first.get("Alphabetic", ""))
    return str(first)


def dicom_json_values(item: dict, tag: str) -> list[str]:
    return [str(x) for x in ((item.get(tag) or {}).get("Value") or [])]


def env_hint(section) -> str:
    return f" (check {section.username_env}/{section.password_env} or ~/.netrc)"


