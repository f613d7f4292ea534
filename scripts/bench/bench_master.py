"""Benchmark: the master availability sheet, rtlake (DuckDB pivot) vs the seed algorithm in pandas.

Both run in this process on the same synthetic long table (N patients × 9 session types, about
20 sessions per patient). The baseline is a straightforward pandas version of what the SOP's
XNATImagingSummary script does: per session type, group by subject, loop over each subject's
sessions to fill Date/Difference/ID/UID/Scans slots, then outer-merge the per-type frames and the
reference dates. Both produce the same rendered table (checked on a sample of subjects).

Peak memory is the process's peak resident set (VmHWM, reset through /proc/self/clear_refs
before each step) minus the resident set when the step started — the extra memory the step
needed on top of the shared input data.

    python scripts/bench/bench_master.py                    # quick: 10,000 patients
    python scripts/bench/bench_master.py --patients 100000  # the figure for the README (~2 M sessions)
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from reporting.master import NOT_APPLICABLE, NULL, build_master  # noqa: E402

MODALITIES = ["MR", "CT", "PET", "CR", "DX", "RF", "SR", "XA", "NM"]


def synth(n_patients: int, seed: int = 1) -> tuple[pd.DataFrame, dict[str, dt.date]]:
    rng = np.random.default_rng(seed)
    per_mod = 20 / len(MODALITIES)
    counts = rng.poisson(per_mod, size=(n_patients, len(MODALITIES)))
    subj_idx = np.repeat(np.arange(n_patients), counts.sum(axis=1))
    mod_idx = np.concatenate([np.repeat(np.arange(len(MODALITIES)), c) for c in counts]) if n_patients else np.array([])
    n = len(subj_idx)
    subjects = np.array([f"NN_{i:07d}" if i % 10 == 0 else f"{9000000000 + i * 7:010d}" for i in range(n_patients)])
    base = np.datetime64("2015-01-01")
    days = rng.integers(0, 3650, size=n)
    dates = (base + days.astype("timedelta64[D]")).astype("datetime64[ns]")
    df = pd.DataFrame({
        "subject": subjects[subj_idx],
        "modality": np.array(MODALITIES)[mod_idx],
        "session": np.char.add("S", np.arange(n).astype(str)),
        "date": dates,
        "session_id": np.char.add("XNAT_E", np.arange(n).astype(str)),
        "uid": np.char.add("1.2.826.0.1.3680043.10.", np.arange(n).astype(str)),
        "scans": rng.integers(1, 9, size=n).astype(str),
        "source": "bench",
    })
    has_ref = rng.random(n_patients) < 0.95
    ref_days = rng.integers(0, 3650, size=n_patients)
    refs = {subjects[i]: dt.date(2015, 1, 1) + dt.timedelta(days=int(ref_days[i])) for i in range(n_patients) if has_ref[i]}
    return df, refs


def seed_pandas(sessions: pd.DataFrame, refs: dict[str, dt.date], slots_min: int = 5) -> pd.DataFrame:
    """The seed algorithm, straightforwardly in pandas (per-type frames, a loop per subject)."""
    ref_df = pd.DataFrame({"Subject": list(refs), "Reference Date": pd.to_datetime(list(refs.values()))})
    wide_frames = []
    order = MODALITIES
    slots = {}
    for mod in order:
        df = sessions[sessions["modality"] == mod].sort_values(["subject", "date", "uid"])
        rows = []
        most = 0
        for subject, g in df.groupby("subject", sort=True):
            row = {"Subject": subject}
            for i, rec in enumerate(g.itertuples(index=False), start=1):
                row[f"{mod} Date {i}"] = rec.date
                row[f"{mod} ID {i}"] = rec.session_id
                row[f"{mod} UID {i}"] = rec.uid
                row[f"{mod} Scans {i}"] = rec.scans
            most = max(most, len(g))
            rows.append(row)
        slots[mod] = max(slots_min, most)
        wide_frames.append(pd.DataFrame(rows))
    out = pd.DataFrame({"Subject": sorted(set(sessions["subject"]) | set(refs))})
    out = out.merge(ref_df, on="Subject", how="left")
    for f in wide_frames:
        if len(f):
            out = out.merge(f, on="Subject", how="left")
    cols = ["Subject", "Reference Date"]
    result = {"Subject": out["Subject"].to_numpy(dtype=object)}
    ref = out["Reference Date"]
    result["Reference Date"] = np.where(ref.isna(), NOT_APPLICABLE, ref.dt.date.astype(object))
    for mod in order:
        for i in range(1, slots[mod] + 1):
            dcol = f"{mod} Date {i}"
            date = out[dcol] if dcol in out else pd.Series(pd.NaT, index=out.index)
            present = date.notna() | (out[f"{mod} ID {i}"].notna() if f"{mod} ID {i}" in out else False)
            diff = (date - ref).dt.days
            vals = {
                "Date": np.where(date.isna(), NULL, date.dt.date.astype(object)),
                # no session date: null (as the SOP script writes it); no reference date: not applicable
                "Difference from Reference Date": np.where(date.isna(), NULL, np.where(
                    diff.isna(), NOT_APPLICABLE, diff.astype("Int64").astype(object))),
            }
            for f in ("ID", "UID", "Scans"):
                c = f"{mod} {f} {i}"
                s = out[c] if c in out else pd.Series(None, index=out.index, dtype=object)
                vals[f] = np.where(s.isna(), NULL, s.astype(object))
            for f in ("Date", "Difference from Reference Date", "ID", "UID", "Scans"):
                col = f"{mod} {f} {i}"
                result[col] = np.where(present, vals[f], NULL)
                cols.append(col)
    return pd.DataFrame(result, columns=cols)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measure(fn):
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        pass
    start_rss = _rss_kib("VmRSS")
    t0 = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - t0
    peak = _rss_kib("VmHWM")
    return result, elapsed, max(peak - start_rss, 0) / 1024, peak / 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=10_000, help="number of synthetic patients (README: 100000)")
    ap.add_argument("--check", type=int, default=500, help="subjects compared cell by cell between the two")
    ap.add_argument("--skip-baseline", action="store_true", help="time rtlake only")
    args = ap.parse_args(argv)

    sessions, refs = synth(args.patients)
    print(f"synthetic input: {args.patients:,} patients, {len(sessions):,} sessions, {len(MODALITIES)} session types")

    def ours():
        sheet = build_master(sessions, refs, slots_per_modality=5, modalities=MODALITIES)
        table = sheet.rendered()
        return table.drop(columns=[c for c in table.columns if c.startswith("Failure ") or c == "Notes"])

    ours_table, t_ours, mem_ours, peak_ours = measure(ours)
    print(f"rtlake (DuckDB pivot): {t_ours:8.2f} s   extra peak RSS {mem_ours:8.0f} MiB (process peak {peak_ours:.0f} MiB)"
          f"   {ours_table.shape[0]:,} rows × {ours_table.shape[1]} columns")
    if args.skip_baseline:
        return 0
    base_table, t_base, mem_base, peak_base = measure(lambda: seed_pandas(sessions, refs))
    print(f"pandas seed algorithm: {t_base:8.2f} s   extra peak RSS {mem_base:8.0f} MiB (process peak {peak_base:.0f} MiB)"
          f"   {base_table.shape[0]:,} rows × {base_table.shape[1]} columns")

    same_cols = list(ours_table.columns) == list(base_table.columns)
    sample = ours_table["Subject"].sample(min(args.check, len(ours_table)), random_state=1)
    a = ours_table.set_index("Subject").loc[sample].astype(str)
    b = base_table.set_index("Subject").loc[sample].astype(str) if same_cols else None
    same = same_cols and a.equals(b)
    print(f"outputs identical on {len(sample)} sampled subjects: {same}")
    print(f"ratio: rtlake is {t_base / t_ours:.1f}x faster than the pandas seed algorithm "
          f"(peak RSS {peak_ours / 1024:.2f} GiB vs {peak_base / 1024:.2f} GiB)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
