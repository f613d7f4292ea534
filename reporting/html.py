"""The failure-investigation report: one self-contained HTML file (plots as inline SVG).

For the XNAT admin, not the EDW: what failed, by modality and status; rtlake's own failures
(harvest, retrieve, store, input files: open and resolved) beside the imported lists; whether
each run's and each imported list's failure rate is in line with history; which un-ingested
studies are worth a manual pull (PET-CTs above all, and anything the admin found "Available on
PACS"); and every failed study in detail. No external CSS, scripts or images, so it can be
mailed or archived as it is.
"""

from __future__ import annotations

import datetime as dt
import io
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ingest.atomic import write_text  # noqa: E402

from .failures import STATUSES  # noqa: E402
from .master import failure_modality  # noqa: E402,F401 - re-exported
from .own_failures import OwnFailure, by_stage, summary  # noqa: E402
from .rates import RunRate  # noqa: E402
from .sanitise import html_text as esc  # noqa: E402

#: Session types whose failures are most worth a manual pull (the SOP singles out PET-CT).
PULL_MODALITIES = ("PET", "NM")
_SKIP_CATEGORIES = {"Cancelled", "No images on PACS", "Scheduled but not completed", "Images under another study"}

_CSS = """
body{font-family:system-ui,Segoe UI,Arial,sans-serif;margin:2em;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f0f0f0} td.num{text-align:right}
.warn{background:#fff3cd;border:1px solid #e0b000;padding:.6em 1em;margin:.3em 0}
.ok{background:#e8f5e9;border:1px solid #7cb342;padding:.6em 1em}
.plot svg{max-width:100%;height:auto}
.scroll{max-width:100%;overflow-x:auto}
li,.warn,p{overflow-wrap:anywhere}
"""


def worth_manual_pull(row: dict) -> bool:
    if row.get("category") in _SKIP_CATEGORIES:
        return False
    if row.get("category") == "Available on PACS":
        return True
    return failure_modality(row) in PULL_MODALITIES


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.find("<svg"):]


def series_id(name: str) -> str:
    """SVG id prefix of one plotted series (`series-<name>`), so a browser check can count them."""
    return "series-" + "".join(c if c.isalnum() else "_" for c in name)


def _legend_outside(ax) -> None:
    # beside the axes, never over the data; bbox_inches="tight" keeps it inside the picture
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False)


def _plot_by_modality(rows: Sequence[dict]) -> str | None:
    """Stacked bars per modality, one series per status that occurs (absent statuses are left out
    of both the bars and the legend)."""
    if not rows:
        return None
    counts = Counter((failure_modality(r), r.get("status") or "") for r in rows)
    mods = sorted({m for m, _ in counts})
    statuses = [s for s in STATUSES if any(counts.get((m, s), 0) for m in mods)]
    statuses += sorted({s for _, s in counts} - set(statuses) - set(STATUSES))  # unknown statuses stay visible
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bottom = [0] * len(mods)
    for status in statuses:
        vals = [counts.get((m, status), 0) for m in mods]
        # a status keeps its colour whichever others are absent
        colour = f"C{STATUSES.index(status)}" if status in STATUSES else None
        bars = ax.bar(mods, vals, bottom=bottom, label=status or "(none)", color=colour)
        for i, patch in enumerate(bars.patches):
            patch.set_gid(f"{series_id(status or '(none)')}--{i}")
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("failed studies")
    ax.set_title("Failures by modality and status")
    _legend_outside(ax)
    return _svg(fig)


def _plot_rates(rates: Sequence[RunRate]) -> str | None:
    """Failure rate per run, one line per modality that ever failed; modalities that never
    failed are drawn once, together, as a single "0 %" line (not as coincident lines hidden
    under each other), and the y axis starts at 0."""
    rates = [r for r in rates if r.rate is not None]  # a list whose batch size is unknown has no rate to plot
    if not rates:
        return None
    runs = list(dict.fromkeys(r.run_id for r in rates))
    mods = sorted({r.modality for r in rates})
    zero = [m for m in mods if all(r.failed == 0 for r in rates if r.modality == m)]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    top = 0.0
    for mod in [m for m in mods if m not in zero]:
        pts = [(runs.index(r.run_id), r.rate * 100) for r in rates if r.modality == mod]
        line = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=mod)[0]
        line.set_gid(series_id(mod))
        top = max(top, *(p[1] for p in pts))
        base = next((r.baseline for r in rates if r.modality == mod and r.baseline is not None), None)
        if base is not None:
            ax.axhline(base * 100, linestyle="--", color=line.get_color(), linewidth=0.8)
            top = max(top, base * 100)
    if zero:
        xs = sorted({runs.index(r.run_id) for r in rates if r.modality in zero})
        label = ", ".join(zero) if len(zero) <= 4 else f"{', '.join(zero[:3])} +{len(zero) - 3} more"
        line = ax.plot(xs, [0] * len(xs), marker=".", color="0.6", label=f"{label}: no failures")[0]
        line.set_gid(series_id("no failures"))
    ax.set_xticks(range(len(runs)))
    ax.set_xticklabels([r[:15] for r in runs], rotation=30, ha="right", fontsize=7)
    ax.set_ylim(0, max(top * 1.15, 1.0))
    ax.set_ylabel("failure rate (%)")
    ax.set_title("Failure rate per run (dashed: historic baseline)")
    _legend_outside(ax)
    return _svg(fig)


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], cls: str = "") -> str:
    out = [f'<div class="scroll"><table class="{cls}"><thead><tr>' + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr></thead><tbody>"]
    for row in rows:
        cells = []
        for v in row:
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            text = "" if v is None else (v.isoformat() if isinstance(v, dt.date) else str(v))
            cells.append(f'<td class="num">{esc(text)}</td>' if num else f"<td>{esc(text)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _own_section(own: Sequence[OwnFailure]) -> str:
    """rtlake's own failures: counts by stage, every open one, the resolved ones folded away."""
    open_ = [f for f in own if f.open]
    resolved = [f for f in own if not f.open]
    out = ["<h2 id='own-failures'>rtlake's own failures</h2>",
           "<p>What rtlake itself could not do (query, retrieve, store, read an input file). A failure stays "
           "open until a later run succeeds where it failed.</p>"]
    if not own:
        out.append("<div class='ok'>None on record.</div>")
        return "".join(out)
    n_open, n_res = by_stage(open_), by_stage(resolved)
    stages = sorted(set(n_open) | set(n_res))
    label = {f.stage: f.stage_label for f in own}
    out.append(_table(["Stage", "Open", "Resolved"], [[label[s], n_open.get(s, 0), n_res.get(s, 0)] for s in stages],
                      "own-by-stage"))
    headers = ["Stage", "Target", "Subject", "Reason", "First seen in run", "Last seen in run", "Seen at"]

    def row(f: OwnFailure) -> list[object]:
        return [f.stage_label, f.target, f.subject, f.reason, f.run_id, f.last_seen_run, f.seen_at]

    if open_:
        out.append(_table(headers, [row(f) for f in open_], "own-open"))
    else:
        out.append("<div class='ok'>No open failures.</div>")
    if resolved:
        out.append(f"<details><summary>{len(resolved)} resolved</summary>")
        out.append(_table(headers + ["Resolved by run"], [row(f) + [f.resolved_run] for f in resolved],
                          "own-resolved"))
        out.append("</details>")
    return "".join(out)


def render_report(
    failures: Sequence[dict],
    rates: Sequence[RunRate],
    warnings: Sequence[str],
    problems: Sequence[str] = (),
    title: str = "rtlake failure investigation",
    run_id: str = "",
    own: Sequence[OwnFailure] = (),
) -> str:
    """The HTML text. `failures` are failure_history rows without placeholders; `own` are the
    catalog's own failure rows (open and resolved)."""
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
             f"<style>{_CSS}</style></head><body>"]
    parts.append(f"<h1>{esc(title)}</h1>")
    parts.append(f"<p>Run <code>{esc(run_id)}</code>, built {dt.datetime.now():%Y-%m-%d %H:%M}. "
                 f"{len(failures)} failed studies in imported failure lists (scheduled-date placeholders left "
                 f"out); rtlake's own failures: {esc(summary(list(own)))} "
                 f"(<a href='#own-failures'>below</a>).</p>")

    parts.append("<h2 id='warnings'>Failure rate check</h2>")
    if warnings:
        parts.extend(f"<div class='warn'>⚠ {esc(w)}</div>" for w in warnings)
    else:
        parts.append("<div class='ok'>No run is out of line with the historic baseline.</div>")

    parts.append("<h2 id='by-modality'>Failures by modality and status</h2>")
    counts = Counter((failure_modality(r), r.get("status") or "") for r in failures)
    mods = sorted({m for m, _ in counts})
    parts.append(_table(["Modality", *STATUSES, "Total"],
                        [[m, *[counts.get((m, s), 0) for s in STATUSES], sum(counts.get((m, s), 0) for s in STATUSES)]
                         for m in mods], "by-modality"))
    svg = _plot_by_modality(failures)
    if svg:
        parts.append(f"<div class='plot'>{svg}</div>")
    cats = Counter(r.get("category") or "(not investigated)" for r in failures)
    parts.append(_table(["Investigation category", "Studies"], sorted(cats.items()), "categories"))

    parts.append(_own_section(own))

    parts.append("<h2 id='rates'>Failure rate per run and per imported list against the baseline</h2>")
    parts.append("<p>Run rows: studies an update run tried to ingest, failed in the run or named by a failure "
                 "list later. List rows: the studies an imported list names, against the batch it answers "
                 "(<code>--attempted</code> at import, else the studies that batch's run selected); "
                 "<em>unknown</em> when neither is known.</p>")
    parts.append(_table(
        ["Kind", "Run / list", "Batch of run", "Modality", "Attempted", "Failed", "Rate", "Baseline", "Alarm above",
         "Out of line"],
        [[r.kind, r.run_id, r.batch_of, r.modality, r.attempted, r.failed, r.rate_text(),
          "" if r.baseline is None else f"{r.baseline:.1%}",
          "" if r.threshold is None else f"{r.threshold:.1%}", "YES" if r.out_of_line else ""] for r in rates],
        "rates"))
    svg = _plot_rates(rates)
    if svg:
        parts.append(f"<div class='plot'>{svg}</div>")

    pull = [r for r in failures if worth_manual_pull(r)]
    parts.append("<h2 id='manual-pull'>Not ingested, worth a manual pull</h2>")
    parts.append("<p>PET-CT and nuclear medicine failures not explained as cancelled/absent, and everything the "
                 "admin marked <em>Available on PACS</em>.</p>")
    parts.append(_table(["Subject", "Study date", "Accession", "Modality", "Description", "StudyInstanceUID", "Category"],
                        [[r.get("subject"), r.get("study_date"), r.get("accession"), failure_modality(r),
                          r.get("description"), r.get("study_uid"), r.get("category")] for r in pull], "manual-pull"))

    parts.append("<h2 id='detail'>Every failed study</h2>")
    parts.append(_table(
        ["Subject", "Study date", "Accession", "Study ID", "StudyInstanceUID", "Modality", "Description", "Status",
         "Category", "Note", "First seen", "Last seen", "Source"],
        [[r.get("subject"), r.get("study_date"), r.get("accession"), r.get("study_id"), r.get("study_uid"),
          failure_modality(r), r.get("description"), r.get("status"), r.get("category"), r.get("category_note"),
          r.get("first_seen_run"), r.get("last_seen_run"),
          r.get("_sources") or f"{r.get('source_file') or ''}:{r.get('source_line') or ''}"]
         for r in failures], "detail"))

    if problems:
        parts.append("<h2 id='problems'>Input problems</h2><ul>")
        parts.extend(f"<li>{esc(p)}</li>" for p in problems)
        parts.append("</ul>")
    parts.append("</body></html>")
    return "".join(parts)


def write_report(path: Path, **kw) -> Path:
    write_text(Path(path), render_report(**kw))
    return Path(path)
