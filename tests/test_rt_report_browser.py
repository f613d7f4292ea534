"""The RT report with 50 structures, as a person sees it in headless Chromium.

Scenario (issue #16): with 50 ROIs a legend inside the axes covers the curves. The legend now
sits beside the plot, one checkbox per curve; unticking one hides exactly that curve, "none"
hides them all. Checked on the rendered page (layout boxes, the browser's console), at a wide
and a narrow window; screenshots go to build/browser/ for a person to look at.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ingest.rt.dvh import Dvh
from ingest.rt.report_html import write_report
from ingest.rt.verify import PatientNotes
from tests.servers.chromium import Chromium, chromium_path

pytestmark = pytest.mark.skipif(chromium_path() is None,
                                reason="!!! BROWSER TESTS SKIPPED: chromium not installed (make system-deps)")

BUILD = Path(__file__).resolve().parent.parent / "build" / "browser"


def _dvhs(n: int) -> list[Dvh]:
    out = []
    for k in range(n):
        bins = np.arange(0, 70, 0.1)
        cum = 10.0 / (1 + np.exp((bins - (5 + 1.2 * k)) / 2.0))  # sigmoid curves spread over 5…65 Gy
        out.append(Dvh(f"Organ at risk {k:02d}", 10.0, 100, 0.1, {"volume_cc": 10.0, "Dmean_Gy": 5 + 1.2 * k},
                       bins, -np.diff(cum, append=0), cum))
    return out


def test_fifty_structures_legend_outside_and_curves_toggle(tmp_path):
    notes = PatientNotes("P50", status="SUCCESS", patientimagingfilesready=True)
    notes.linkage["plan"] = {"label": "HN", "name": "Head and neck", "approval": "APPROVED", "fractions": 35,
                             "fraction_dose_gy": 2.0, "prescriptions": [{"dose_gy": 70.0, "source": "DoseReferenceSequence",
                                                                        "description": "PTV70"}]}
    notes.linkage["dose_summation"] = "PLAN"
    page_file = tmp_path / "report.html"
    write_report(page_file, notes, _dvhs(50), {})
    with Chromium() as browser:
        for width in (1400, 800):
            page = browser.open(page_file, width=width, height=900)
            page.screenshot(BUILD / f"rt-report-50-{width}.png")
            assert page.console_errors == [], page.console_errors
            m = page.evaluate("""(() => {
              const vw = document.documentElement.clientWidth;
              const svg = document.querySelector('.plot svg').getBoundingClientRect();
              const legend = document.querySelector('.dvh-legend').getBoundingClientRect();
              const curves = [...document.querySelectorAll('[id^="series-"]')].map(e => e.getBoundingClientRect());
              return {vw, page: document.documentElement.scrollWidth, svg: [svg.left, svg.top, svg.right, svg.bottom],
                      legend: [legend.left, legend.top, legend.right, legend.bottom],
                      n: curves.length, drawn: curves.filter(b => b.width > 0 && b.height > 0).length,
                      boxes: document.querySelectorAll('.dvh-legend input[type=checkbox]').length};
            })()""")
            assert m["page"] <= m["vw"], m
            assert m["n"] == 50 and m["drawn"] == 50 and m["boxes"] == 50
            sl, st, sr, sb = m["svg"]
            ll, lt, lr, lb = m["legend"]
            # the legend never lies over the plot: beside it (wide window) or below it (narrow)
            assert ll >= sr - 1 or lt >= sb - 1, m
            assert sr - sl > 300
        # untick curve 7: it alone disappears; "none" hides all, "all" brings them back
        hidden = page.evaluate("""(() => {
          const box = document.querySelector('.dvh-legend input[data-n="7"]'); box.click();
          const shown = [...document.querySelectorAll('[id^="series-"]')]
            .filter(e => e.getBoundingClientRect().width > 0).map(e => e.id);
          return shown;
        })()""")
        assert len(hidden) == 49 and "series-7" not in hidden
        none = page.evaluate("""(() => { document.querySelectorAll('.dvh-legend a')[1].click();
          return [...document.querySelectorAll('[id^="series-"]')].filter(e => e.getBoundingClientRect().width > 0).length; })()""")
        assert none == 0
        back = page.evaluate("""(() => { document.querySelectorAll('.dvh-legend a')[0].click();
          return [...document.querySelectorAll('[id^="series-"]')].filter(e => e.getBoundingClientRect().width > 0).length; })()""")
        assert back == 50
        text = page.evaluate("document.body.innerText")
        assert "70 Gy (DoseReferenceSequence: PTV70)" in text and "35 × 2 Gy" in text and "PLAN" in text
