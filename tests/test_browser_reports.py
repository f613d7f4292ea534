"""The HTML reports as a person sees them: rendered in headless Chromium, measured, screenshotted.

Scenarios (from the issue): the failure-rate plot drew all-zero lines on top of each other under
a nine-entry legend; the last table overflowed a 1400 px window; the RT report's DVH legend
covered the curves and its metrics table was cut off. Each check below is on the rendered page
(layout boxes, the browser's own console), not on the HTML text. Screenshots go to build/ for a
person to look at.

Chromium is Debian's `chromium` package (installed by `make system-deps`, as Orthanc is);
without it these tests skip, with the reason.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from reporting.failures import STATUS_BOTH, STATUS_NO_STUDY_ID, STATUS_NO_UID
from reporting.html import write_report
from reporting.rates import RunRate
from tests.servers.chromium import Chromium, chromium_path

pytestmark = pytest.mark.skipif(chromium_path() is None,
                                reason="!!! BROWSER TESTS SKIPPED: chromium not installed (make system-deps)")

BUILD = Path(__file__).resolve().parent.parent / "build" / "browser"

#: Per plot: its size, and the series drawn in it (element ids `series-<name>[--<bar>]`), each
#: with the bounding box of all its elements; then every element that sticks out of the viewport
#: without being inside a scrolling container.
MEASURE = r"""
(() => {
  const vw = document.documentElement.clientWidth;
  const plots = [...document.querySelectorAll('svg')].map(svg => {
    const r = svg.getBoundingClientRect();
    const series = {};
    for (const el of svg.querySelectorAll('[id^="series-"]')) {
      const name = el.id.split('--')[0];
      const b = el.getBoundingClientRect();
      const s = series[name] || (series[name] = {l: Infinity, t: Infinity, r: -Infinity, b: -Infinity});
      s.l = Math.min(s.l, b.left); s.t = Math.min(s.t, b.top); s.r = Math.max(s.r, b.right); s.b = Math.max(s.b, b.bottom);
    }
    return {w: r.width, h: r.height, right: r.right,
            series: Object.fromEntries(Object.entries(series).map(([k, s]) => [k, [s.r - s.l, s.b - s.t]]))};
  });
  const scrolls = el => { for (let p = el.parentElement; p; p = p.parentElement) {
      const o = getComputedStyle(p).overflowX; if (o === 'auto' || o === 'scroll' || o === 'hidden') return true; }
    return false; };
  const wide = [...document.body.querySelectorAll('*')]
    .filter(el => !(el.closest('svg') && el.tagName.toLowerCase() !== 'svg'))
    .filter(el => { const b = el.getBoundingClientRect(); return (b.right > vw + 1 || b.width > vw + 1) && !scrolls(el); })
    .map(el => el.tagName + (el.className && typeof el.className === 'string' ? '.' + el.className : ''));
  const scrollers = [...document.querySelectorAll('.scroll')].map(d => ({client: d.clientWidth, scroll: d.scrollWidth}));
  return {vw, pageWidth: document.documentElement.scrollWidth, plots, wide, scrollers};
})()
"""


@pytest.fixture(scope="module")
def browser():
    with Chromium() as b:
        yield b


def check_page(browser, html: Path, shot: str, width: int) -> dict:
    page = browser.open(html, width=width, height=900)
    m = page.evaluate(MEASURE)
    page.screenshot(BUILD / f"{shot}-{width}.png")
    assert page.console_errors == [], page.console_errors
    assert m["pageWidth"] <= m["vw"], f"page scrolls sideways: {m['pageWidth']} > {m['vw']}"
    assert m["wide"] == [], f"wider than the {m['vw']} px viewport: {m['wide']}"
    for p in m["plots"]:
        assert p["w"] > 100 and p["h"] > 50 and p["right"] <= m["vw"] + 1, p
        for name, (w, h) in p["series"].items():
            assert w > 0 and h > 0, (name, w, h)
    return m


# -- the failure-investigation report ------------------------------------------------------------------
UID = "1.2.826.0.1.3680043.8.498.{:064d}"


def _failures() -> list[dict]:
    def row(n, mods, status, desc="CT Neck with contrast and a long description of the protocol used"):
        return {"subject": f"NN_H{n:03d}", "study_date": dt.date(2024, 1, n), "accession": f"RJZ50{n:05d}",
                "study_id": str(5500 + n), "study_uid": UID.format(n)[:64], "modalities": mods,
                "description": desc, "status": status, "category": None, "category_note": None,
                "first_seen_run": "20240301T010203-abcdef", "last_seen_run": "20240302T010203-abcdef",
                "source_file": "/srv/xnat/failures/PACs-failures-2024-03-02.txt", "source_line": n}
    # CT: 3 no images, 1 should have been ingested; MR: 2 should have been ingested;
    # PET-CT: 1 no images. No study has the third status (accession wrong).
    return [row(1, "CT", STATUS_NO_UID), row(2, "CT", STATUS_NO_UID), row(3, "CT", STATUS_NO_UID),
            row(4, "CT", STATUS_BOTH), row(5, "MR", STATUS_BOTH), row(6, "MR", STATUS_BOTH),
            row(7, "PT\\CT", STATUS_NO_UID)]


def _rates() -> list[RunRate]:
    runs = ["20240301T010203-abcdef", "20240302T010203-abcdef", "20240303T010203-abcdef"]
    out = []
    for i, run in enumerate(runs):
        out.append(RunRate(run, "CT", 40, [3, 1, 0][i], 0.07))
        out.append(RunRate(run, "MR", 20, [0, 2, 0][i], 0.07))
        for mod in ("PET", "DX", "CR", "US", "XA", "RF", "SR"):  # never failed: one shared zero line
            out.append(RunRate(run, mod, 5, 0, None))
    return out


@pytest.mark.parametrize("width", [1400, 800])
def test_failure_report_in_a_browser(browser, tmp_path, width):
    assert STATUS_NO_STUDY_ID not in {r["status"] for r in _failures()}
    html = write_report(tmp_path / "failure-report.html", failures=_failures(), rates=_rates(),
                        warnings=["CT failure rate 7.5% (3/40) in run 20240301T010203-abcdef is out of line"],
                        problems=["/srv/xnat/failures/PACs-failures-2024-03-02.txt:12: could not read a record"],
                        run_id="20240303T010203-abcdef")
    m = check_page(browser, html, "failure-report", width)
    by_modality, rates = m["plots"]
    # two statuses occur, so two bar series (the absent third one is neither drawn nor in the legend)
    assert sorted(by_modality["series"]) == sorted(["series-no_images_found", "series-should_have_been_ingested"])
    # CT and MR failed in some run; the seven modalities that never failed share one line
    assert sorted(rates["series"]) == ["series-CT", "series-MR", "series-no_failures"]
    # the wide detail table scrolls inside its own box instead of widening the page
    assert any(s["scroll"] > s["client"] for s in m["scrollers"]) or width >= 1400


def test_failure_report_plots_start_at_zero_with_whole_counts(tmp_path):
    """The SVG text itself: with one failed study the count axis still has whole ticks (it had
    0.2, 0.4, …) starting at 0."""
    import re

    html = write_report(tmp_path / "r.html", failures=_failures()[:1], rates=_rates(), warnings=[])
    text = html.read_text()
    first_svg = text[text.find("<svg"):text.find("</svg>")]
    ticks = re.findall(r"<!-- (\d+(?:\.\d+)?) -->", first_svg)
    assert ticks, "no tick labels found"
    assert all(float(t).is_integer() for t in ticks), ticks
    assert "0" in ticks and "1" in ticks


# -- an RT conversion report -------------------------------------------------------------------------------
def test_rt_report_in_a_browser(browser, tmp_path):
    from typer.testing import CliRunner

    from ingest.cli import app
    from tests.fixtures.rt import small_phantom

    small_phantom(tmp_path / "in" / "P001", "P001")
    cfg = tmp_path / "rtlake.toml"
    cfg.write_text('[project]\nstate_dir = "state"\n')
    r = CliRunner().invoke(app, ["rt", "convert", "-c", str(cfg), "--input", str(tmp_path / "in"),
                                 "--output", str(tmp_path / "rt"), "--serial", "--no-progress"])
    assert r.exit_code == 0, r.output
    (html,) = (tmp_path / "rt").rglob("report.html")
    for width in (1400, 800):
        m = check_page(browser, html, "rt-report", width)
        (dvh,) = [p for p in m["plots"] if p["series"]]
        # the phantom has three structures (sphere, ring, box): three DVH curves
        assert sorted(dvh["series"]) == ["series-0", "series-1", "series-2"]
    # the metrics table is there whole: it scrolls inside its box at 800 px rather than being cut
    page = browser.open(html, width=800, height=900)
    assert page.evaluate("document.querySelectorAll('.scroll table tr').length") == 4  # header + 3 ROIs
