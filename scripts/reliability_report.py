#!/usr/bin/env python3
"""Print the reliability figures as a Markdown table.

    python scripts/reliability_report.py                 # read build/reliability/results.json
    python scripts/reliability_report.py --run           # run the reliability tests first (all of them)
    python scripts/reliability_report.py --run --quick   # only the default-suite share (a few minutes)
    python scripts/reliability_report.py --json          # the raw figures

The figures are written by the tests themselves (tests/test_reliability_*.py through
`record_result` in tests/fixtures/reliability.py), so the table always shows what was actually
run and checked, never a number typed in. A section that has not run says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(os.environ.get("RTLAKE_RELIABILITY_RESULTS", REPO / "build" / "reliability" / "results.json"))


def run_tests(quick: bool) -> int:
    marker = "not slow and not reliability" if quick else "not slow"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", marker, *sorted(str(p) for pattern in
           ("test_reliability_*.py", "test_damaged_runs.py") for p in (REPO / "tests").glob(pattern))]
    print("$", " ".join(cmd), file=sys.stderr)
    return subprocess.call(cmd, cwd=REPO)


def _ok(flag: bool) -> str:
    return "pass" if flag else "**FAIL**"


def rows(data: dict) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []

    for key, title in (("kill_resume", "Kill-and-resume, Orthanc source, 20 seeded SIGKILLs"),
                       ("kill_resume_reduced", "Kill-and-resume, Orthanc source, reduced (default suite)")):
        k = data.get(key)
        if not k:
            out.append((title, "not run", "-"))
            continue
        phases = ", ".join(f"{p} {n}" for p, n in k.get("by_phase", {}).items() if n)
        clean = k["lost"] == k["duplicated"] == k["half_written"] == 0 and k["survived"] == k["kills"]
        missed = k.get("attempts", k["kills"]) - k["kills"]
        phases += f"; {missed} delayed kill(s) missed their step and were redrawn" if missed else ""
        out.append((title, f"{k['survived']}/{k['kills']} kills survived ({phases}); lost {k['lost']}, "
                           f"duplicated {k['duplicated']}, half-written {k['half_written']}", _ok(clean)))

    fault_keys = sorted(k for k in data if k.startswith("faults_"))
    if not fault_keys:
        out.append(("Fault injection", "not run", "-"))
    for key in fault_keys:
        f = data[key]
        name, _, rate = key.removeprefix("faults_").partition("_")
        side = "store" if name == "xnat" else "source"
        title = f"Faults: {name} {side} at {rate.split('_')[0]} % of requests"
        if key.endswith("_seeds"):
            title += f" ({f.get('seeds', f.get('runs', '?'))} more seeds, make reliability)"
        detail = (f"{f['faults_injected']} faults injected; {f['stored']}/{f['included']} studies stored, "
                  f"{f['failed_with_reason']} failed with a reason; after a clean re-run lost "
                  f"{f.get('lost_after_rerun', 0)}, duplicated {f.get('duplicated', 0)}")
        if "requests" in f and "clean_requests" in f:
            detail += f"; {f['requests']} requests (clean run {f['clean_requests']})"
        if "seconds" in f:
            detail += f"; {f['seconds']} s"
        out.append((title, detail, _ok(f.get("lost_after_rerun", 0) == 0 and f.get("duplicated", 0) == 0)))

    c = data.get("concurrency_same_state")
    out.append(("Two updates at once, one state folder",
                f"{c['refused']} of {c['rounds']} concurrent starts refused (exit 3), outcomes {c['outcomes']}; "
                "no duplicate files" if c else "not run", _ok(bool(c and c["refused"])) if c else "-"))
    c = data.get("concurrency_shared_lake")
    out.append(("Two updates at once, two state folders, one lake",
                f"both finished; {c['lake_files']} lake files, {c['duplicates']} duplicates" if c else "not run",
                _ok(c["duplicates"] == 0) if c else "-"))

    b = data.get("badinput")
    if b:
        handled = ", ".join(f"{how} {n}" for how, n in sorted(b["handled"].items()))
        gaps = len(b.get("known_gaps", []))
        out.append(("Bad-input corpus", f"{b['tried']} of {b['files']} files fed to their readers: {handled}; "
                                        f"{gaps} known gap(s) (strict xfail)", _ok(b["tried"] >= 60)))
    else:
        out.append(("Bad-input corpus", "not run", "-"))

    for key, title in (("damaged_folder", "Damaged DICOM, folder PACS (default suite)"),
                       ("damaged_folder_full", "Damaged DICOM, folder PACS, 24 patients (make test-all)"),
                       ("damaged_orthanc", "Damaged DICOM, served by Orthanc (default suite)"),
                       ("damaged_orthanc_full", "Damaged DICOM, served by Orthanc, 24 patients (make test-all)")):
        d = data.get(key)
        if not d:
            out.append((title, "not run", "-"))
            continue
        checks = ", ".join(f"{c} {n}" for c, n in d["refused_by_check"].items())
        if "uploaded" in d:
            tried = (f"{d['uploaded']} damaged files uploaded, Orthanc refused {d['refused_by_orthanc']} and "
                     f"served {d['damaged_files']} ({d['kinds']} kinds) beside {d['good_files']} good")
        else:
            tried = f"{d['damaged_files']} damaged files ({d['kinds']} kinds) beside {d['good_files']} good"
        held = d.get("good_held_back", 0)
        held = f" ({held} held back: another valid version of the instance came too)" if held else ""
        out.append((title, f"{tried}; good stored byte-identical {d['stored_good_identical']} of "
                           f"{d['stored_good_identical'] + d.get('good_held_back', 0)}{held}; refused with the "
                           f"check named {d['refused']} ({checks}); duplicates stored once {d['duplicates']}; "
                           f"conflicts recorded {d['conflicts_recorded']}; damaged in the lake "
                           f"{d['damaged_in_lake']}; crashes {d['crashes']}",
                    _ok(d["damaged_in_lake"] == 0 and d["crashes"] == 0)))

    t = data.get("tls")
    out.append(("TLS", "; ".join(f"{k}: {v}" for k, v in t.items() if k != "at") if t else "not run",
                _ok(all(v is True for k, v in t.items() if k != "at")) if t else "-"))
    cr = data.get("credentials")
    out.append(("Credentials on disk", f"{cr['files_scanned']} files + catalog scanned, {cr['hits']} hits"
                if cr else "not run", _ok(cr["hits"] == 0) if cr else "-"))
    p = data.get("phi")
    out.append(("Identifiers in logs (whole session)",
                f"{p['lines_scanned']} distinct log/exception/CLI lines scanned for {p['identifiers']} synthetic "
                f"identifiers: {p['hits']} hits" if p else "not run", _ok(p["hits"] == 0) if p else "-"))
    return out


def markdown(data: dict) -> str:
    lines = ["| check | figures | result |", "|---|---|---|"]
    for check, figures, result in rows(data):
        lines.append(f"| {check} | {figures.replace('|', '/')} | {result} |")
    stamps = sorted(v.get("at", "") for v in data.values() if isinstance(v, dict))
    if stamps:
        lines.append("")
        lines.append(f"Figures recorded between {stamps[0]} and {stamps[-1]} (UTC) in {RESULTS.relative_to(REPO)}"
                     if RESULTS.is_relative_to(REPO) else f"Figures from {RESULTS}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="store_true", help="run the reliability tests first")
    ap.add_argument("--quick", action="store_true", help="with --run: only the default-suite share")
    ap.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    args = ap.parse_args(argv)
    code = run_tests(args.quick) if args.run else 0
    try:
        data = json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        print(f"no results at {RESULTS}: run `make test` / `make reliability` or pass --run", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=1, sort_keys=True) if args.json else markdown(data))
    return code


if __name__ == "__main__":
    sys.exit(main())
