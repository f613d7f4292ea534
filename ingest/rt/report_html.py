"""A self-contained HTML page per patient: plan, DVH plot, metrics, TPS check, notes, previews.

Everything is inlined (SVG plot, base64 previews, a few lines of script), so the page can be
mailed or archived on its own; wide tables scroll inside their box rather than the page. The DVH plot is an SVG whose curves can be switched on and
off from the legend beside it: with 50 structures a static legend inside the axes hides the
curves, so the legend lives outside the plot, in columns, one checkbox per structure.
"""

from __future__ import annotations

import base64
import io
import math
import re
from pathlib import Path

from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure

from reporting.sanitise import html_text

from ..atomic import write_text
from .dvh import Dvh
from .verify import PatientNotes



def _colours(n: int) -> list[tuple[tuple[float, ...], str]]:
    from matplotlib import colormaps

    base = list(colormaps["tab20"].colors) + list(colormaps["tab20b"].colors)
    styles = ["-", "--", ":"]
    return [(base[i % len(base)], styles[(i // len(base)) % len(styles)]) for i in range(n)]


def plotted(dvhs: list[Dvh]) -> list[Dvh]:
    """The DVHs that have a curve to draw (a structure with no volume or no dose bins has none)."""
    return [d for d in dvhs if d.volume_cc > 0 and len(d.bins_gy)]


def dvh_plot_svg(dvhs: list[Dvh], relative: bool = True) -> str:
    """Cumulative DVHs as inline SVG; curve n (in plotted() order) has the element id `series-<n>`,
    which the legend's checkboxes toggle and a browser check counts."""
    fig = Figure(figsize=(7.5, 4.6), dpi=90)
    FigureCanvasSVG(fig)
    ax = fig.add_subplot(1, 1, 1)
    curves = plotted(dvhs)
    for n, (d, (colour, style)) in enumerate(zip(curves, _colours(len(curves)))):
        y = d.cumulative_cc / d.volume_cc * 100.0 if relative else d.cumulative_cc
        (line,) = ax.step(d.bins_gy, y, where="post", color=colour, linestyle=style, linewidth=1.2)
        line.set_gid(f"series-{n}")
    ax.set_xlabel("Dose (Gy)")
    ax.set_ylabel("Volume (%)" if relative else "Volume (cc)")
    ax.set_title("Cumulative DVH")
    ax.set_ylim(0, 105 if relative else None)
    ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.11, top=0.93)
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]  # drop the XML prolog and DOCTYPE: the page inlines it


def _img(png: bytes, width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    return f'<img{w} src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _fmt(v, digits: int = 3) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.{digits}f}"
    if v is None:
        return ""
    return html_text(v)


_SCRIPT = """<script>
function dvhToggle(n, on) { var g = document.getElementById('series-' + n); if (g) g.style.display = on ? '' : 'none'; }
function dvhAll(on) { document.querySelectorAll('.dvh-legend input').forEach(function (c) { c.checked = on; dvhToggle(c.dataset.n, on); }); }
</script>"""


def _dvh_block(dvhs: list[Dvh]) -> list[str]:
    e = html_text  # names and labels come from the files: escaped, control characters replaced
    curves = plotted(dvhs)
    parts = ["<div class='dvh'><div class='plot'>", dvh_plot_svg(dvhs), "</div><div class='dvh-legend'>",
             "<div><a href='#' onclick='dvhAll(true);return false'>all</a> · "
             "<a href='#' onclick='dvhAll(false);return false'>none</a></div>"]
    for n, (d, (colour, style)) in enumerate(zip(curves, _colours(len(curves)))):
        rgb = "#%02x%02x%02x" % tuple(int(255 * c) for c in colour[:3])
        dash = {"-": "solid", "--": "dashed", ":": "dotted"}[style]
        parts.append(f"<label><input type='checkbox' checked data-n='{n}' onchange='dvhToggle({n}, this.checked)'>"
                     f"<span class='sw' style='border-top:3px {dash} {rgb}'></span>{e(d.roi)}</label>")
    parts.append("</div></div>")
    return parts


def _plan_block(notes: PatientNotes) -> list[str]:
    e = html_text  # names and labels come from the files: escaped, control characters replaced
    plan = notes.linkage.get("plan") or {}
    rows = []
    if plan:
        label = plan.get("label") or ""
        name = plan.get("name") or ""
        rows.append(("Plan", f"{label}{' — ' + name if name and name != label else ''}" or "(no label)"))
        rx = plan.get("prescriptions") or []
        if rx:
            rows.append(("Prescription", "; ".join(
                f"{p['dose_gy']:.4g} Gy ({p['source']}{': ' + p['description'] if p.get('description') else ''})" for p in rx)))
        else:
            rows.append(("Prescription", "not stated in the plan"))
        fx = plan.get("fractions")
        fd = plan.get("fraction_dose_gy")
        rows.append(("Fractions", f"{fx}" + (f" × {fd:.4g} Gy" if fd else "") if fx else "not stated"))
        rows.append(("Approval", (plan.get("approval") or "no ApprovalStatus") + (f" ({plan['review']})" if plan.get("review") else "")))
        if plan.get("intent"):
            rows.append(("Intent", plan["intent"]))
    else:
        rows.append(("Plan", "no RTPLAN linked"))
    summation = notes.linkage.get("dose_summation")
    rows.append(("Dose summation", summation or "no dose"))
    if notes.outputs.get("dvh_method"):
        rows.append(("DVH method", notes.outputs["dvh_method"]))
    out = ["<table class='plan'>"]
    out += [f"<tr><th>{e(k)}</th><td style='text-align:left'>{e(str(v))}</td></tr>" for k, v in rows]
    out.append("</table>")
    return out


def _qa_block(notes: PatientNotes) -> list[str]:
    qa = notes.dvh_qa
    if not qa:
        return []
    e = html_text  # names and labels come from the files: escaped, control characters replaced
    out = [f"<h2>Check against the planning system's DVHs</h2><p>Stored DVHs of RTDOSE {e(qa['source_rtdose'])}; "
           f"stated values read as {e(qa['stated_scale'])}; our method: {e(qa['method'])}. "
           f"<b>{qa['compared'] - qa['failed']} of {qa['compared']}</b> structures within tolerance.</p>"]
    if qa.get("hint"):
        out.append(f"<p class='WARN'>{e(qa['hint'])}</p>")
    metrics = [("volume_cc", "Volume (cc)"), ("mean_gy", "Mean (Gy)"), ("d95_gy", "D95 (Gy)"), ("d2_gy", "D2 (Gy)"),
               ("max_gy", "Max (Gy)")]
    out.append("<div class='wide'><table><tr><th>ROI</th><th>result</th>" + "".join(f"<th colspan=3>{e(t)}</th>" for _, t in metrics) + "</tr>")
    out.append("<tr><th></th><th></th>" + "<th>ours</th><th>TPS</th><th>Δ %</th>" * len(metrics) + "</tr>")
    for r in qa["structures"]:
        cells = []
        for m, _ in metrics:
            ok = r["passed"].get(m)
            cls = "" if ok is None else ("ok" if ok else "bad")
            cells.append(f"<td>{_fmt(r['ours'].get(m))}</td><td>{_fmt(r['tps'].get(m))}</td>"
                         f"<td class='{cls}' title='tolerance {e(r['tolerance'].get(m, ''))}'>{_fmt(r['diff_pct'].get(m), 2)}</td>")
        status = "PROCEED" if r["status"] == "pass" else "EXCLUDE"
        out.append(f"<tr><td style='text-align:left'>{e(r['roi'])}</td><td class='{status}'>{e(r['status'])}</td>{''.join(cells)}</tr>")
    out.append("</table></div>")
    if qa.get("not_compared"):
        out.append("<p>Not compared: " + "; ".join(e(x) for x in qa["not_compared"]) + "</p>")
    return out


def write_report(target: Path, notes: PatientNotes, dvhs: list[Dvh], previews: dict[str, Path]) -> None:
    e = html_text  # ROI names and labels come from the files: escaped, control characters replaced
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>RT conversion: {e(notes.patient)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:12px;margin-bottom:1em}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eee}"
        ".EXCLUDE{color:#b00}.REVIEW{color:#b60}.WARN{color:#960}.PROCEED{color:#060}"
        "td.ok{background:#e6f4e6}td.bad{background:#f8d7d7;font-weight:bold}"
        ".scroll,.wide{max-width:100%;overflow-x:auto}li,p{overflow-wrap:anywhere}"
        ".dvh{display:flex;flex-wrap:wrap;align-items:flex-start;gap:1em}"
        ".dvh .plot{flex:0 1 675px;min-width:0}.plot svg{max-width:100%;height:auto}"
        ".dvh-legend{flex:1 1 14em;font-size:11px;columns:3 11em;max-height:420px;overflow:auto}"
        ".dvh-legend label{display:block;white-space:nowrap;break-inside:avoid}"
        ".dvh-legend .sw{display:inline-block;width:18px;margin:0 4px 3px 2px;vertical-align:middle}"
        ".pv{display:inline-block;margin:4px;text-align:center;font-size:11px}</style>",
        _SCRIPT, "</head><body>",
        f"<h1>{e(notes.patient)}</h1>",
        f"<p>Status: <b>{e(notes.status)}</b>; files ready: {notes.patientimagingfilesready}</p>",
    ]
    parts += _plan_block(notes)
    if dvhs:
        parts += _dvh_block(dvhs)
        keys = list(dvhs[0].metrics)
        parts.append("<h2>Metrics</h2><div class='scroll'><table><tr><th>ROI</th>"
                     + "".join(f"<th>{e(k)}</th>" for k in keys) + "</tr>")
        for d in dvhs:
            parts.append(f"<tr><td style='text-align:left'>{e(d.roi)}</td>" + "".join(f"<td>{_fmt(d.metrics.get(k))}</td>" for k in keys) + "</tr>")
        parts.append("</table></div>")
    parts += _qa_block(notes)
    parts.append("<h2>Notes</h2><ul>")
    for n in notes.notes:
        roi = f" [{e(n.roi)}]" if n.roi else ""
        parts.append(f"<li class='{e(n.outcome)}'>{e(n.code)} {e(n.outcome)}{roi}: {e(n.message)}</li>")
    parts.append("</ul>")
    if previews:
        parts.append("<h2>Previews</h2>")
        for name, p in previews.items():
            try:
                png = Path(p).read_bytes()
            except OSError:
                continue
            parts.append(f"<div class='pv'>{_img(png, 220)}<br>{e(name)}</div>")
    parts.append("</body></html>")
    write_text(target, "\n".join(parts))


def svg_curve_ids(page: str) -> list[str]:
    """The toggleable curve ids in a report page (for tests and tools)."""
    return re.findall(r'id="(series-\d+)"', page)
