"""`rtlake status`: what the lake holds, how the last runs ended, what is still open.

Read-only on the catalog (a running update keeps its lock on the state folder, not on reads),
so an operator can look at any time. Gathering and printing are separate: the data is a plain
dict of row lists, ready for tables, CSV or JSON.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

from .catalog import Catalog
from .config import Config
from .run import reason_group


def gather_status(cfg: Config, n_runs: int = 5) -> dict[str, Any]:
    """Lake totals, recent runs, open failures by stage and reason, review queue, relabels, conflicts."""
    cat = Catalog(cfg.catalog_path, read_only=True)
    try:
        subjects, sessions, planned = cat.execute(
            "SELECT count(DISTINCT subject) FILTER (WHERE state = 'stored'), count(*) FILTER (WHERE state = 'stored'), "
            "count(*) FILTER (WHERE state <> 'stored') FROM sessions").fetchone()
        files = cat.execute("SELECT count(*) FROM files").fetchone()[0]
        decisions = dict(cat.execute("SELECT decision, count(*) FROM studies_seen GROUP BY 1").fetchall())
        review = cat.execute("SELECT count(DISTINCT description_norm) FROM studies_seen "
                             "WHERE decision = 'review' AND state <> 'ingested'").fetchone()[0]
        runs = []
        for r in cat.query_dicts("SELECT run_id, started_at, finished_at, status, message, counts FROM runs "
                                 "WHERE run_id NOT LIKE 'report-%' ORDER BY started_at DESC, run_id DESC LIMIT ?",
                                 [n_runs]):
            c = json.loads(r["counts"] or "{}")
            runs.append({"run": r["run_id"], "started": str(r["started_at"] or ""), "status": r["status"],
                         "ingested": c.get("ingested", 0), "failed": c.get("failed", 0),
                         "message": r["message"] or ""})
        groups: dict[tuple[str, str], int] = {}
        for stage, reason in cat.execute("SELECT stage, reason FROM failures WHERE resolved_run IS NULL").fetchall():
            key = (stage, reason_group(reason))
            groups[key] = groups.get(key, 0) + 1
        open_failures = [{"stage": s, "reason": r, "count": n}
                         for (s, r), n in sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))]
        relabels = cat.query_dicts(
            "SELECT run_id AS run, old_subject, new_subject, label, status FROM relabels "
            "ORDER BY relabelled_at DESC LIMIT 20")
        tables = {r[0] for r in cat.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        conflicts: list[dict] = []
        if "conflicts" in tables:  # duplicate SOPInstanceUIDs with different content (damaged-file checks)
            conflicts = cat.query_dicts(
                "SELECT sop_uid, resolution, source_a, source_b, last_run FROM conflicts WHERE resolved_run IS NULL "
                "ORDER BY last_run DESC, sop_uid LIMIT 50")
    finally:
        cat.close()
    return {
        "lake": {"subjects": subjects or 0, "sessions": sessions or 0, "files": files or 0,
                 "sessions_pending": planned or 0},
        "decisions": decisions,
        "review_queue": review or 0,
        "runs": runs,
        "open_failures": open_failures,
        "relabels": relabels,
        "conflicts": conflicts,
    }


def print_status(st: dict[str, Any], console: Console, fmt: str = "table") -> None:
    """Headline lines, then each list through `ingest.output.emit` (fits the terminal; never cuts IDs).

    `fmt="json"` prints the whole status as one JSON object for scripts."""
    import json as _json

    from .output import Column, emit

    if fmt == "json":
        print(_json.dumps(st, default=str, indent=1, sort_keys=True))
        return
    lake = st["lake"]
    console.print(f"lake: {lake['subjects']} subjects, {lake['sessions']} sessions, {lake['files']} files"
                  f" ({lake['sessions_pending']} sessions planned, not yet stored)")
    d = st["decisions"]
    console.print("studies seen: " + ", ".join(f"{k} {v}" for k, v in sorted(d.items())) if d else "studies seen: 0")
    console.print(f"review queue: {st['review_queue']} descriptions (rtlake review export)")
    console.file.flush()
    if st["runs"]:
        emit(st["runs"], [Column("run", "Run"), Column("started", "Started"), Column("status", "Outcome"),
                          Column("ingested", "Ingested", numeric=True), Column("failed", "Failed", numeric=True),
                          Column("message", "Message", wrap=True)], "table", title="Last runs")
    n = sum(g["count"] for g in st["open_failures"])
    if st["open_failures"]:
        emit(st["open_failures"], [Column("stage", "Stage"), Column("reason", "Reason", wrap=True),
                                   Column("count", "Count", numeric=True)], "table",
             title=f"open failures: {n} (rtlake failures list)")
    else:
        console.print("open failures: 0")
    if st["relabels"]:
        emit(st["relabels"], ["run", "old_subject", "new_subject", "label", "status"], "table",
             title="Subject relabels (NHS number found or corrected)")
    if st["conflicts"]:
        emit(st["conflicts"], list(st["conflicts"][0]), "table",
             title="Conflicting duplicates (same SOPInstanceUID, different content)")
