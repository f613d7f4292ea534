"""Benchmark: the master availability sheet and the whole outbox (`rtlake report`), time and peak memory.

1. The sheet alone, rtlake (DuckDB pivot) vs the seed algorithm in pandas.
2. The whole `rtlake report` (`reporting.build.build_reports`): a real catalog with N patients and
   their sessions and failure history, the cohort and reference-date CSVs, then build + xlsx (Master,
   Failures, Problems, Provenance) + master CSV + failures CSV + HTML report, in a process of its
   own (as `rtlake report` runs), so its peak resident memory is the report's. Goal at 100,000
   patients: <= 60 s and < 2 GiB peak resident memory. Raw baseline measured in the same run:
   pandas `DataFrame.to_csv` of the same rendered master table (what writing the data costs with
   no formatting at all).
3. The xlsx writer chosen by measurement: openpyxl write-only, XlsxWriter constant_memory and
   rtlake's streaming writer on the same first rows of the master table (µs per cell, interleaved
   best of 3), so the per-cell figures can be compared at trust scale.

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
import json
import os
import subprocess
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


def _nhs(i: int) -> str:
    """A valid NHS number in the 999 test range for patient i (mod-11 check digit; 10 is skipped)."""
    for k in range(9 * i, 9 * i + 9):  # 9 bodies per patient: one of them has a usable check digit
        body = f"999{k:06d}"
        total = sum(int(d) * (10 - n) for n, d in enumerate(body))
        check = (11 - total % 11) % 11
        if check != 10:
            return body + str(check)
    raise AssertionError("unreachable")


def make_catalog(root: Path, n_patients: int, seed: int = 1):
    """A catalog, cohort and reference-date CSV for N patients: sessions as `synth`, 1 % failures."""
    from ingest.catalog import Catalog

    sessions, _refs = synth(n_patients, seed)
    rng = np.random.default_rng(seed + 1)
    hids = np.array([f"H{i:07d}" for i in range(n_patients)])
    nhs = np.array([_nhs(i) if i % 10 else "" for i in range(n_patients)], dtype=object)
    subjects = np.where(nhs == "", np.char.add("NN_", hids), nhs).astype(object)
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"HospitalID": hids, "NHSNumber": nhs}).to_csv(root / "cohort.csv", index=False)
    has_ref = rng.random(n_patients) < 0.95
    ref_days = rng.integers(0, 3650, size=n_patients)
    ref = pd.DataFrame({"Subject": subjects[has_ref],
                        "Reference Date": (np.datetime64("2015-01-01") + ref_days[has_ref].astype("timedelta64[D]"))
                        .astype(str)})
    ref.to_csv(root / "reference_dates.csv", index=False)
    # sessions: synth numbers its subjects 0..N-1 in order; map them to the hospital IDs
    subj_index = {s: i for i, s in enumerate(sorted(set(sessions["subject"])))}
    pidx = sessions["subject"].map(subj_index).to_numpy()
    order = np.argsort([f"{9000000000 + i * 7:010d}" if i % 10 else f"NN_{i:07d}" for i in range(n_patients)],
                       kind="stable")
    pidx = order[pidx]  # the i-th sorted synth subject is patient order[i]
    n = len(sessions)
    mod = sessions["modality"].replace({"PET": "PT"})
    sess_df = pd.DataFrame({
        "study_uid": sessions["uid"], "project": "RTLAKE", "subject": subjects[pidx], "label": sessions["session"],
        "hospital_id": hids[pidx], "accession": sessions["session"], "study_date": sessions["date"].dt.date,
        "modality": mod, "store": "lake", "location": "", "state": "stored",
        "n_scans": sessions["scans"].astype(int), "n_files": 100, "planned_run": "r1", "stored_run": "r1"})
    k = max(1, n // 100)
    fi = rng.choice(n_patients, size=k)
    fail_df = pd.DataFrame({
        "record_key": [f"uid:2.25.{i}" for i in range(k)], "study_uid": [f"2.25.{i}" for i in range(k)],
        "accession": [f"FACC{i}" for i in range(k)], "study_id": None, "hospital_id": hids[fi],
        "subject": subjects[fi],
        "study_date": (np.datetime64("2016-01-01") + rng.integers(0, 3000, k).astype("timedelta64[D]")).astype(
            "datetime64[s]").astype(object),
        "description": "CT THORAX", "modalities": "CT", "status": "FAILED", "origin": "csc",
        "placeholder": False, "first_seen_run": "r1", "last_seen_run": "r1",
        "first_seen_at": dt.datetime(2026, 1, 1), "last_seen_at": dt.datetime(2026, 1, 1)})
    cat = Catalog(root / "state" / "catalog.duckdb")
    con = cat.con
    con.register("p_in", pd.DataFrame({"hospital_id": hids, "nhs_number": np.where(nhs == "", None, nhs),
                                       "subject": subjects}))
    con.execute("INSERT INTO patients (hospital_id, nhs_number, subject, deceased, first_seen_run) "
                "SELECT hospital_id, nhs_number, subject, FALSE, 'r1' FROM p_in")
    con.register("s_in", sess_df)
    con.execute("INSERT INTO sessions BY NAME SELECT * FROM s_in")
    con.register("f_in", fail_df)
    con.execute("INSERT INTO failure_history BY NAME SELECT * FROM f_in")
    for name in ("p_in", "s_in", "f_in"):
        con.unregister(name)
    con.execute("CHECKPOINT")
    return cat, n


def bench_outbox(n_patients: int) -> tuple[float, float]:
    """Time and peak memory of the whole `rtlake report` at N patients; prints the raw baseline ratio."""
    import shutil
    import tempfile

    from ingest.config import load_config
    from reporting.build import build_reports

    import logging

    logging.disable(logging.WARNING)  # the synthetic inputs are clean; keep the figures readable
    root = Path(tempfile.mkdtemp(prefix="rtlake-bench-outbox-"))
    try:
        cat, n_sessions = make_catalog(root, n_patients)
        cfg = load_config(None, {"project.state_dir": str(root / "state"), "report.outbox": str(root / "outbox"),
                                 "inputs.cohort": str(root / "cohort.csv"),
                                 "inputs.reference_dates": str(root / "reference_dates.csv")})
        print(f"catalog: {n_patients:,} patients, {n_sessions:,} stored sessions, "
              f"{cat.execute('SELECT count(*) FROM failure_history').fetchone()[0]:,} failure records")
        cat.close()
        # The report runs in a fresh process, as `rtlake report` does: its peak resident memory is then
        # the report's own, not this process's (which built the synthetic catalog).
        child = subprocess.run([sys.executable, __file__, "--report-child", str(root)], capture_output=True,
                               text=True, check=True)
        t_report, peak, sizes = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"rtlake report (build + xlsx + CSV + HTML), own process: {t_report:7.2f} s   peak RSS "
              f"{peak / 1024:.2f} GiB   goal <= 60 s and < 2 GiB")
        print(f"  outputs: {sizes}")
        from ingest.catalog import Catalog

        cat = Catalog(root / "state" / "catalog.duckdb")
        from reporting.catalog_source import sessions_from_catalog
        from reporting.master import build_master

        sheet = build_master(sessions_from_catalog(cat), {}, slots_per_modality=5)
        table = sheet.rendered()
        _, t_raw, _, _ = measure(lambda: table.to_csv(root / "raw.csv", index=False))
        print(f"raw baseline, pandas to_csv of the {table.shape[0]:,} x {table.shape[1]} master table: {t_raw:7.2f} s   "
              f"ratio report/raw {t_report / t_raw:.2f}")
        cat.close()
        return t_report, peak
    finally:
        shutil.rmtree(root, ignore_errors=True)


def report_child(root: Path) -> None:
    """Child process: one `build_reports` on the prepared catalog; prints [seconds, peak MiB, sizes]."""
    import logging

    from ingest.catalog import Catalog
    from ingest.config import load_config
    from reporting.build import build_reports

    logging.disable(logging.WARNING)
    cfg = load_config(None, {"project.state_dir": str(root / "state"), "report.outbox": str(root / "outbox"),
                             "inputs.cohort": str(root / "cohort.csv"),
                             "inputs.reference_dates": str(root / "reference_dates.csv")})
    cat = Catalog(root / "state" / "catalog.duckdb")
    t0 = time.perf_counter()
    paths = build_reports(cfg, cat, "bench-run")
    elapsed = time.perf_counter() - t0
    cat.close()
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.0f} MB" for p in paths)
    print(json.dumps([elapsed, _rss_kib("VmHWM") / 1024, sizes]))


def bench_writers(table: pd.DataFrame, rows: int = 2000) -> None:
    """µs per cell of three xlsx writers on the same rows (interleaved best of 3)."""
    import tempfile

    from openpyxl import Workbook

    from reporting import edw

    part = table.head(rows)
    cells = part.size
    out = Path(tempfile.mkdtemp(prefix="rtlake-bench-xlsx-"))

    def openpyxl_write_only() -> None:
        wb = Workbook(write_only=True)
        ws = wb.create_sheet("Master")
        ws.append(list(part.columns))
        for row in part.itertuples(index=False, name=None):
            ws.append(list(row))
        wb.save(out / "openpyxl.xlsx")

    def xlsxwriter_constant_memory() -> None:
        import xlsxwriter

        wb = xlsxwriter.Workbook(str(out / "xlsxwriter.xlsx"), {"constant_memory": True})
        ws = wb.add_worksheet("Master")
        datef = wb.add_format({"num_format": "yyyy-mm-dd"})
        ws.write_row(0, 0, list(part.columns))
        for i, row in enumerate(part.itertuples(index=False, name=None), start=1):
            for j, v in enumerate(row):
                if isinstance(v, dt.date):
                    ws.write_datetime(i, j, dt.datetime(v.year, v.month, v.day), datef)
                elif isinstance(v, str):
                    ws.write_string(i, j, v)
                elif v is not None:
                    ws.write_number(i, j, v)
        ws.freeze_panes(1, 1)
        ws.autofilter(0, 0, len(part), len(part.columns) - 1)
        wb.close()

    def rtlake_stream() -> None:
        edw.write_xlsx([("Master", part)], out / "rtlake.xlsx", None, [c for c in part.columns if " Scans " in c])

    fns = {"openpyxl write-only": openpyxl_write_only, "rtlake streaming": rtlake_stream}
    try:
        import xlsxwriter  # noqa: F401

        fns["XlsxWriter constant_memory"] = xlsxwriter_constant_memory
    except ImportError:
        print("  (XlsxWriter not installed: pip install XlsxWriter to compare it too)")
    best = {k: float("inf") for k in fns}
    for _ in range(3):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t)
    base = best["openpyxl write-only"]
    print(f"xlsx writers on {rows:,} rows x {part.shape[1]} columns ({cells:,} cells), best of 3 interleaved:")
    for k, v in best.items():
        print(f"  {k:28s} {1e6 * v / cells:7.2f} µs/cell   {base / v:6.1f}x openpyxl   "
              f"(at 50 M cells: {50e6 * v / cells / 60:6.1f} min)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=10_000, help="number of synthetic patients (README: 100000)")
    ap.add_argument("--check", type=int, default=500, help="subjects compared cell by cell between the two")
    ap.add_argument("--skip-baseline", action="store_true", help="time rtlake only")
    ap.add_argument("--outbox-only", action="store_true", help="only the whole-report benchmark (part 2)")
    ap.add_argument("--report-child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.report_child:
        report_child(args.report_child)
        return 0
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    if args.outbox_only:
        t, peak = bench_outbox(args.patients)
        return 0 if (args.patients < 100_000 or (t <= 60 and peak < 2048)) else 1

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
    del base_table
    bench_writers(ours_table)
    del ours_table, sessions
    gc.collect()
    t, peak = bench_outbox(args.patients)
    print(f"done; load average {os.getloadavg()[0]:.2f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
