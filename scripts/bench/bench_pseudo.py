"""Benchmark: pseudonymising a planning study vs the raw cost of reading and writing it.

Both steps run in this process on the same synthetic RT course (ingest.synth.rtset: planning CT,
RTSTRUCT, RTPLAN, RTDOSE). The baseline reads every file with pydicom and writes it back
unchanged (atomically, like rtlake does); the measured step is `pseudonymise_for_store`, the
update-run hook: header pass, segmentation fix-up plan, full profile walk of every element,
UID remapping, atomic write, and the mapping-table write (DuckDB, 0600). Each is run `--repeat`
times; the best time counts. The ratio says what pseudonymisation adds on top of the file I/O a
store already does.

    python scripts/bench/bench_pseudo.py                 # 80-slice 256x256 CT
    python scripts/bench/bench_pseudo.py --slices 200 --size 512
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pydicom  # noqa: E402

from ingest.atomic import atomic_path  # noqa: E402
from ingest.config import load_config  # noqa: E402
from ingest.pseudo.apply import pseudonymise_for_store  # noqa: E402
from ingest.records import SessionPlan, StudyRecord  # noqa: E402
from ingest.synth.dicom import PatientInfo  # noqa: E402
from ingest.synth.rtset import write_rt_set  # noqa: E402


def baseline(files: list[Path], out: Path) -> None:
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        with atomic_path(out / f"{i}.dcm") as tmp:
            ds.save_as(tmp)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=80)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    os.environ.setdefault("RTLAKE_PSEUDO_KEY", "bench-key-0123456789abcdefghij")
    work = Path(tempfile.mkdtemp(prefix="bench-pseudo-"))
    try:
        info = write_rt_set(work / "in", PatientInfo("BENCH01", "Bench^Mark", dt.date(1950, 1, 1), "M"),
                            shape=(args.slices, args.size, args.size), spacing=(2.5, 1.0, 1.0), layout="flat",
                            dose_factor=(1, 4, 4))
        files = info.paths
        mb = sum(f.stat().st_size for f in files) / 1e6
        cfg_path = work / "rtlake.toml"
        cfg_path.write_text("[project]\nstate_dir = 'state'\n[pseudo]\nenabled = true\n", encoding="utf-8")
        cfg = load_config(cfg_path)
        study = StudyRecord(study_uid=info.study_uid, patient_id="BENCH01", study_date=dt.date(2020, 1, 6),
                            modalities=info.modalities)
        plan = SessionPlan("BENCH", "9990000001", "BENCH_RT_1", study, "BENCH01")
        t_base, t_pseudo = [], []
        for r in range(args.repeat):
            out = work / f"base{r}"
            t0 = time.perf_counter()
            baseline(files, out)
            t_base.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            pseudonymise_for_store(cfg, plan, files, work / f"pseudo{r}")
            t_pseudo.append(time.perf_counter() - t0)
        b, p = min(t_base), min(t_pseudo)
        print(f"study: {len(files)} files, {mb:.1f} MB ({args.slices} CT slices of {args.size}x{args.size} + RT objects)")
        print(f"baseline  read+write (pydicom, atomic): {b:.3f} s  ({len(files) / b:.0f} files/s)")
        print(f"rtlake    pseudonymise_for_store       : {p:.3f} s  ({len(files) / p:.0f} files/s)")
        print(f"ratio pseudonymise / raw read+write: {p / b:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
