"""A self-contained HTML page per patient: DVH plot, metrics table, notes and previews.

The DVH plot is inline SVG and previews are inlined (base64), so the page can be mailed or
archived on its own.
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reporting.sanitise import html_text

from ..atomic import write_text
from .dvh import Dvh
from .verify import PatientNotes


def plotted(dvhs: list[Dvh]) -> list[Dvh]:
    """The DVHs that have a curve to draw (a structure with no volume or no dose bins has none)."""
    return [d for d in dvhs if d.volume_cc > 0 and len(d.bins_gy)]


def dvh_plot_svg(dvhs: list[Dvh], relative: bool = True) -> str:
    """Cumulative DVHs as inline SVG; each curve's element id is `series-<n>` (n in plot order),
    so a browser check can count them. The legend sits beside the axes, never over the curves."""
    fig = Figure(figsize=(7.5, 4.5), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    curves = plotted(dvhs)
    for n, d in enumerate(curves):
        y = d.cumulative_cc / d.volume_cc * 100.0 if relative else d.cumulative_cc
        (line,) = ax.step(d.bins_gy, y, where="post", label=d.roi, linewidth=1.0)
        line.set_gid(f"series-{n}")
    ax.set_xlabel("Dose (Gy)")
    ax.set_ylabel("Volume (%)" if relative else "Volume (cc)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.set_title("Cumulative DVH")
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(fontsize=7, ncol=2 if len(curves) > 16 else 1, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  borderaxespad=0, frameon=False)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.find("<svg"):]


def _img(png: bytes, width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    return f'<img{w} src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _fmt(v) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.3f}"
    return html_text(v)


def write_report(target: Path, notes: PatientNotes, dvhs: list[Dvh], previews: dict[str, Path]) -> None:
    e = html_text  # ROI names and labels come from the files: escaped, control characters replaced
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>RT conversion: {e(notes.patient)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:12px}"
        ".scroll{max-width:100%;overflow-x:auto}.plot svg{max-width:100%;height:auto}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eee}"
        ".EXCLUDE{color:#b00}.REVIEW{color:#b60}.WARN{color:#960}.PROCEED{color:#060}"
        ".pv{display:inline-block;margin:4px;text-align:center;font-size:11px}li{overflow-wrap:anywhere}</style></head><body>",
        f"<h1>{e(notes.patient)}</h1>",
        f"<p>Status: <b>{e(notes.status)}</b>; files ready: {notes.patientimagingfilesready}</p>",
    ]
    if dvhs:
        parts.append(f"<div class='plot'>{dvh_plot_svg(dvhs)}</div>")
        keys = list(dvhs[0].metrics)
        parts.append("<h2>Metrics</h2><div class='scroll'><table><tr><th>ROI</th>"
                     + "".join(f"<th>{e(k)}</th>" for k in keys) + "</tr>")
        for d in dvhs:
            parts.append(f"<tr><td style='text-align:left'>{e(d.roi)}</td>" + "".join(f"<td>{_fmt(d.metrics.get(k))}</td>" for k in keys) + "</tr>")
        parts.append("</table></div>")
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
