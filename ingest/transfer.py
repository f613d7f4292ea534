"""How we talk to a PACS politely and without losing studies: retries, throttle, schedule window,
concurrency limit and the partial-transfer check.

Every source wraps each network request in `Transfer.call`, so the policy is the same whatever
the protocol and the update run never has to know about it. Retries use tenacity (exponential
backoff with jitter) and only for TransientError: a wrong password is not retried.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import tenacity

from .errors import ConfigError, TransientError

log = logging.getLogger(__name__)
T = TypeVar("T")


# -- schedule window ----------------------------------------------------------------------
@dataclass(frozen=True)
class ScheduleWindow:
    """Allowed hours for moves in a timezone, e.g. 19:00-07:00 Europe/London (may wrap midnight).

    Why: hospital PACS teams ask for bulk pulls out of clinical hours; a run that starts (or is
    still going) when the window closes must pause, not fail.
    """

    start: dt.time
    end: dt.time
    tz: ZoneInfo

    @classmethod
    def parse(cls, spec: str | None, timezone: str = "Europe/London") -> "ScheduleWindow | None":
        """'HH:MM-HH:MM' → window; None/'' → always open.

        Raises:
            ConfigError: the spec or the timezone cannot be read.
        """
        if not spec:
            return None
        try:
            a, b = (part.strip() for part in spec.split("-"))
            start = dt.time.fromisoformat(a)
            end = dt.time.fromisoformat(b)
        except ValueError:
            raise ConfigError(f"[source.transfer] window {spec!r}: expected 'HH:MM-HH:MM'") from None
        if start == end:
            raise ConfigError(f"[source.transfer] window {spec!r}: start equals end (use no window for always)")
        try:
            tz = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"[source.transfer] timezone {timezone!r} is not a known IANA timezone") from None
        return cls(start, end, tz)

    def is_open(self, now: dt.datetime) -> bool:
        t = now.astimezone(self.tz).time()
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end

    def seconds_until_open(self, now: dt.datetime) -> float:
        if self.is_open(now):
            return 0.0
        local = now.astimezone(self.tz)
        opening = dt.datetime.combine(local.date(), self.start, tzinfo=self.tz)
        if opening <= local:
            opening += dt.timedelta(days=1)
        return max((opening - local).total_seconds(), 0.0)

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M} {self.tz.key}"


# -- throttle ------------------------------------------------------------------------------
class Throttle:
    """Two token buckets (requests/s and bytes/s), shared by every thread talking to one PACS.

    A caller asks before it sends (`request()`) and after it has read a chunk (`data(n)`); when
    the budget is spent the caller sleeps just long enough to stay under the limit.
    """

    def __init__(self, requests_per_second: float | None = None, megabytes_per_second: float | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.rps = requests_per_second
        self.bps = megabytes_per_second * 1_000_000 if megabytes_per_second else None
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._next_request = 0.0
        self._data_debt_until = 0.0
        self.waited = 0.0  # seconds spent waiting (for logs and tests)

    def _wait_until(self, until: float) -> None:
        delay = until - self._clock()
        if delay > 0:
            self.waited += delay
            self._sleep(delay)

    def request(self) -> None:
        if not self.rps:
            return
        with self._lock:
            now = self._clock()
            slot = max(now, self._next_request)
            self._next_request = slot + 1.0 / self.rps
        self._wait_until(slot)

    def data(self, nbytes: int) -> None:
        if not self.bps or nbytes <= 0:
            return
        with self._lock:
            now = self._clock()
            start = max(now, self._data_debt_until)
            self._data_debt_until = start + nbytes / self.bps
            until = self._data_debt_until
        # Allow one second of burst so small reads do not sleep on every chunk.
        self._wait_until(until - 1.0)


# -- retries -------------------------------------------------------------------------------
def retrying(retries: int, backoff: float, what: str = "request",
             sleep: Callable[[float], None] = time.sleep) -> tenacity.Retrying:
    """A tenacity policy: retry TransientError `retries` times, exponential backoff with jitter."""

    def _log(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("%s failed (attempt %d/%d): %s; retrying in %.1f s", what, state.attempt_number, retries + 1,
                    exc, state.next_action.sleep if state.next_action else 0.0)

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(TransientError),
        stop=tenacity.stop_after_attempt(retries + 1),
        wait=(tenacity.wait_exponential(multiplier=backoff, max=backoff * 32) + tenacity.wait_random(0, backoff))
        if backoff > 0 else tenacity.wait_none(),
        before_sleep=_log,
        reraise=True,
        sleep=sleep,
    )


# -- the combined policy -------------------------------------------------------------------
class Transfer:
    """Retry + throttle + concurrency limit + schedule window for one PACS.

    `call(fn)` is the one entry point: it waits for the window, takes a concurrency slot, spends a
    request token, and runs `fn` under the retry policy (each attempt re-checks the window, so a
    run pauses when the window closes between attempts or between instances of a study).
    """

    def __init__(self, name: str = "pacs", *, retries: int = 4, backoff: float = 1.0, read_timeout: float = 60.0,
                 concurrency: int = 4, requests_per_second: float | None = None,
                 megabytes_per_second: float | None = None, window: ScheduleWindow | None = None,
                 now: Callable[[], dt.datetime] | None = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.retries, self.backoff, self.read_timeout = retries, backoff, read_timeout
        self.concurrency = concurrency
        self.slots = threading.BoundedSemaphore(concurrency)
        self.throttle = Throttle(requests_per_second, megabytes_per_second, clock=clock, sleep=sleep)
        self.window = window
        self._now = now or (lambda: dt.datetime.now(dt.timezone.utc))
        self._sleep = sleep
        self.paused_seconds = 0.0

    @classmethod
    def from_config(cls, tcfg, name: str = "pacs") -> "Transfer":
        """Build from `[source.transfer]` (ingest.config.TransferConfig)."""
        return cls(name, retries=tcfg.retries, backoff=tcfg.backoff_seconds, read_timeout=tcfg.read_timeout,
                   concurrency=tcfg.concurrency, requests_per_second=tcfg.requests_per_second,
                   megabytes_per_second=tcfg.megabytes_per_second,
                   window=ScheduleWindow.parse(tcfg.window, tcfg.timezone))

    def wait_for_window(self, what: str = "transfer") -> None:
        """Block while the schedule window is closed (logging once per pause)."""
        if self.window is None:
            return
        logged = False
        while True:
            delay = self.window.seconds_until_open(self._now())
            if delay <= 0:
                if logged:
                    log.warning("%s: schedule window %s open again; resuming %s", self.name, self.window, what)
                return
            if not logged:
                log.warning("%s: schedule window %s is closed; pausing %s for %.0f s", self.name, self.window,
                            what, delay)
                logged = True
            step = min(delay, 60.0)
            self.paused_seconds += step
            self._sleep(step)

    def call(self, fn: Callable[[], T], what: str = "request") -> T:
        """Run `fn` under the whole policy; re-raises the last error after the retries are spent."""
        for attempt in retrying(self.retries, self.backoff, f"{self.name}: {what}", sleep=self._sleep):
            with attempt:
                self.wait_for_window(what)
                with self.slots:
                    self.throttle.request()
                    return fn()
        raise AssertionError("unreachable")  # pragma: no cover


# -- partial-transfer check ------------------------------------------------------------------
@dataclass(frozen=True)
class Completeness:
    expected: int | None
    received: int
    missing: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        if self.missing:
            return False
        return self.expected is None or self.received >= self.expected

    def describe(self) -> str:
        exp = "?" if self.expected is None else str(self.expected)
        extra = f", {len(self.missing)} SOP instances missing" if self.missing else ""
        return f"{self.received}/{exp} instances received{extra}"


def check_complete(expected: int | None, received_sops: set[str], listed_sops: set[str] | None = None) -> Completeness:
    """Compare what arrived with what the query promised (count, and the SOP list when we have one).

    Why both: NumberOfStudyRelatedInstances can be stale on some PACS; the SOP list names exactly
    what to fetch again.
    """
    missing = tuple(sorted(listed_sops - received_sops)) if listed_sops is not None else ()
    return Completeness(expected, len(received_sops), missing)


def fetch_study_checked(
    transfer: Transfer,
    label: str,
    expected: int | None,
    received: Callable[[], set[str]],
    fetch_all: Callable[[], object] | None,
    list_instances: Callable[[], dict[str, object]] | None = None,
    fetch_one: Callable[[str, object], object] | None = None,
) -> Completeness:
    """Pull a whole study, compare with what the query promised, and fetch only what is missing.

    `received()` gives the SOPInstanceUIDs on disk so far; `list_instances()` maps each SOP the PACS
    holds to whatever `fetch_one(sop, key)` needs (its series UID, an Orthanc ID...). With
    `fetch_all=None` the study is pulled instance by instance (in `transfer.concurrency` threads).
    A study whose whole-study pull failed after retries is still rescued instance by instance.

    Raises:
        SourceError/SourceUnavailable: nothing at all could be received (the last error).
    """
    from concurrent.futures import ThreadPoolExecutor

    from .errors import SourceError

    first_error: Exception | None = None
    if fetch_all is not None:
        try:
            transfer.call(fetch_all, f"retrieve {label}")
        except SourceError as exc:
            first_error = exc
            log.warning("%s: whole-study retrieve of %s failed: %s", transfer.name, label, exc)
            if list_instances is None or fetch_one is None:
                raise
        got = received()
        if first_error is None and (expected is None or len(got) >= expected):
            return check_complete(expected, got)
        if list_instances is None or fetch_one is None:
            return check_complete(expected, got)
    got = received()
    try:
        listed = transfer.call(list_instances, f"list instances of {label}")  # type: ignore[arg-type]
    except SourceError:
        if first_error is not None:
            raise first_error from None
        raise
    missing = [sop for sop in listed if sop not in got]
    if missing and fetch_all is not None:
        log.warning("%s: %s: %d of %d instances missing after the study pull; fetching them one by one",
                    transfer.name, label, len(missing), len(listed))
    errors: list[Exception] = []

    def one(sop: str) -> None:
        try:
            transfer.call(lambda: fetch_one(sop, listed[sop]), f"retrieve instance {sop} of {label}")  # type: ignore[misc]
        except SourceError as exc:
            errors.append(exc)
            log.warning("%s: instance %s of %s failed: %s", transfer.name, sop, label, exc)

    if len(missing) > 1 and transfer.concurrency > 1:
        with ThreadPoolExecutor(min(transfer.concurrency, len(missing)), thread_name_prefix="rtlake-fetch") as pool:
            list(pool.map(one, missing))
    else:
        for sop in missing:
            one(sop)
    got = received()
    if not got and (errors or first_error):
        raise (errors[-1] if errors else first_error)  # type: ignore[misc]
    exp = max(expected or 0, len(listed))
    return check_complete(exp, got, set(listed))
