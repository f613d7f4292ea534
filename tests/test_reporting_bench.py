"""The master-sheet benchmark runs, checks its output against the pandas baseline and prints a ratio."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "scripts" / "bench" / "bench_master.py"


def test_bench_master_prints_ratio_and_outputs_match():
    r = subprocess.run([sys.executable, str(BENCH), "--patients", "300"], capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "outputs identical on 300 sampled subjects: True" in r.stdout
    m = re.search(r"ratio: rtlake is ([0-9.]+)x faster", r.stdout)
    assert m and float(m.group(1)) > 0
    assert re.search(r"rtlake \(DuckDB pivot\):\s+[0-9.]+ s\s+extra peak RSS\s+\d+ MiB", r.stdout)
