"""Transfer policy: schedule window (with timezone, pausing mid-transfer), throttle, retries,
partial-transfer detection and the missing-instance pass. Time is simulated (a fake clock that
sleep() advances), never measured."""

from __future__ import annotations

import datetime as dt
import logging
from zoneinfo import ZoneInfo

import pytest

from ingest.errors import ConfigError, SourceError, SourceUnavailable
from ingest.transfer import ScheduleWindow, Throttle, Transfer, fetch_study_checked

UTC = dt.timezone.utc


class FakeTime:
    """A clock that only moves when someone sleeps (or a test moves it)."""

    def __init__(self, start: dt.datetime) -> None:
        self.now_dt = start
        self.slept = 0.0

    def now(self) -> dt.datetime:
        return self.now_dt

    def monotonic(self) -> float:
        return (self.now_dt - dt.datetime(2020, 1, 1, tzinfo=UTC)).total_seconds()

    def sleep(self, s: float) -> None:
        self.slept += s
        self.now_dt += dt.timedelta(seconds=s)


def test_window_wraps_midnight_in_its_timezone():
    w = ScheduleWindow.parse("19:00-07:00", "Europe/London")
    london = ZoneInfo("Europe/London")
    assert w.is_open(dt.datetime(2026, 7, 1, 20, 0, tzinfo=london))
    assert w.is_open(dt.datetime(2026, 7, 1, 6, 59, tzinfo=london))
    assert not w.is_open(dt.datetime(2026, 7, 1, 7, 0, tzinfo=london))
    # 18:30 UTC in July is 19:30 in London (BST): open; in January it is 18:30: closed
    assert w.is_open(dt.datetime(2026, 7, 1, 18, 30, tzinfo=UTC))
    assert not w.is_open(dt.datetime(2026, 1, 15, 18, 30, tzinfo=UTC))
    assert w.seconds_until_open(dt.datetime(2026, 1, 15, 18, 30, tzinfo=UTC)) == 30 * 60
    assert ScheduleWindow.parse(None) is None
    for bad, tz in (("7-19", "UTC"), ("19:00-19:00", "UTC"), ("19:00-07:00", "Mars/Olympus")):
        with pytest.raises(ConfigError):
            ScheduleWindow.parse(bad, tz)


def test_call_waits_for_the_window_and_logs(caplog):
    ft = FakeTime(dt.datetime(2026, 1, 15, 12, 0, tzinfo=UTC))
    t = Transfer("pacs1", window=ScheduleWindow.parse("19:00-07:00", "UTC"), now=ft.now, sleep=ft.sleep,
                 clock=ft.monotonic)
    seen = []
    with caplog.at_level(logging.WARNING):
        t.call(lambda: seen.append(ft.now()), "retrieve study 1.2.3")
    assert seen == [dt.datetime(2026, 1, 15, 19, 0, tzinfo=UTC)]
    assert t.paused_seconds == 7 * 3600
    assert "schedule window" in caplog.text and "closed" in caplog.text and "1.2.3" in caplog.text


def test_retrieve_pauses_when_the_window_closes_mid_study_and_resumes(orthanc_loaded, pacs_cohort, tmp_path):
    """Real Orthanc, simulated clock: the window closes after the first instance; the study finishes next evening."""
    import requests

    from ingest.sources._http import HttpClient
    from ingest.sources.orthanc import OrthancSource

    ft = FakeTime(dt.datetime(2026, 1, 15, 6, 59, 59, tzinfo=UTC))
    t = Transfer("pacs1", retries=0, backoff=0, concurrency=1, window=ScheduleWindow.parse("19:00-07:00", "UTC"),
                 now=ft.now, sleep=ft.sleep, clock=ft.monotonic)
    s = requests.Session()
    s.auth = (orthanc_loaded.username, orthanc_loaded.password)
    src = OrthancSource(orthanc_loaded.url, HttpClient(s, t, "pacs1"), retrieve="instances")
    study = next(iter(src.query_patient(pacs_cohort[0].patient_id)))
    # every request costs a simulated second, so the 07:00 close falls inside the transfer
    orig = src.client.request

    def slow_request(*a, **kw):
        ft.now_dt += dt.timedelta(seconds=1)
        return orig(*a, **kw)

    src.client.request = slow_request
    ft.now_dt = dt.datetime(2026, 1, 15, 6, 59, 58, tzinfo=UTC)
    got = src.retrieve(study, tmp_path / "s")
    assert not got.partial and len(got.files) == study.n_instances
    assert t.paused_seconds > 11 * 3600  # waited for 19:00
    assert ft.now_dt.hour == 19


def test_throttle_spaces_requests_and_bytes():
    ft = FakeTime(dt.datetime(2026, 1, 1, tzinfo=UTC))
    th = Throttle(requests_per_second=5, clock=ft.monotonic, sleep=ft.sleep)
    for _ in range(11):
        th.request()
    assert th.waited == pytest.approx(2.0, abs=1e-3)  # 11 requests at 5/s: the last starts at t=2 s
    ft2 = FakeTime(dt.datetime(2026, 1, 1, tzinfo=UTC))
    tb = Throttle(megabytes_per_second=1, clock=ft2.monotonic, sleep=ft2.sleep)
    for _ in range(30):
        tb.data(100_000)  # 3 MB at 1 MB/s, one second of burst allowed
    assert tb.waited == pytest.approx(2.0, abs=1e-3)


def test_retries_only_transient_errors_with_backoff():
    ft = FakeTime(dt.datetime(2026, 1, 1, tzinfo=UTC))
    t = Transfer("p", retries=3, backoff=0.5, now=ft.now, sleep=ft.sleep, clock=ft.monotonic)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise SourceUnavailable("p: HTTP 503 for x")
        return "ok"

    assert t.call(flaky) == "ok" and len(calls) == 3
    assert 0.5 + 1.0 <= ft.slept <= 0.5 + 1.0 + 2 * 0.5  # exponential, plus jitter up to `backoff` each
    calls.clear()

    def denied():
        calls.append(1)
        raise SourceError("p: HTTP 401 for x: authentication failed")

    with pytest.raises(SourceError):
        t.call(denied)
    assert len(calls) == 1

    def down():
        calls.append(1)
        raise SourceUnavailable("p: refused")

    calls.clear()
    with pytest.raises(SourceUnavailable):
        t.call(down)
    assert len(calls) == 4


def test_missing_instances_are_fetched_one_by_one():
    t = Transfer("p", retries=0, backoff=0, concurrency=2)
    have: set[str] = set()
    listed = {f"1.{i}": f"s{i % 2}" for i in range(5)}
    fetched_singly = []

    def pull_all():
        have.update(["1.0", "1.1"])
        raise SourceUnavailable("p: WADO-RS study 9: stream broke after 2 instances")

    def one(sop, series):
        assert listed[sop] == series
        fetched_singly.append(sop)
        have.add(sop)

    res = fetch_study_checked(t, "study 9", 5, lambda: set(have), pull_all, lambda: listed, one)
    assert res.complete and res.received == 5
    assert sorted(fetched_singly) == ["1.2", "1.3", "1.4"]


def test_partial_transfer_is_reported_not_hidden(orthanc_loaded, pacs_cohort, tmp_path):
    """An instance vanishing between query and pull: the RetrievedStudy says 2 of 3."""
    import requests

    from ingest.sources._http import HttpClient
    from ingest.sources.orthanc import OrthancSource

    o = orthanc_loaded
    st = pacs_cohort[1]
    s = requests.Session()
    s.auth = (o.username, o.password)
    src = OrthancSource(o.url, HttpClient(s, Transfer("p", retries=0, backoff=0), "p"))
    study = next(r for r in src.query_patient(st.patient_id) if r.study_uid == st.study_uid)
    assert study.n_instances == 3
    iid = o.http.post(f"{o.url}/tools/lookup", data=st.sop_uids[0]).json()[0]["ID"]
    o.http.delete(f"{o.url}/instances/{iid}").raise_for_status()
    try:
        got = src.retrieve(study, tmp_path / "p")
        assert got.partial and got.expected == 3 and len(got.files) == 2
        assert {p.stem for p in got.files} == set(st.sop_uids[1:])
    finally:
        o.upload([st.files[0]])
