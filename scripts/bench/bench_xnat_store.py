"""Benchmark: XnatStore.has_session over a cohort vs one REST lookup per session (raw baseline).

Both run against the XNAT REST emulator (tests/servers/xnat_emulator.py) in this process, with the
same logged-in xnatpy session, so the ratio measures the request pattern, not the server. Prints
seconds and the ratio baseline/store (higher = the store is faster). A real XNAT answers each
request in tens of milliseconds rather than one, so the gap there is wider, not narrower.

    .venv/bin/python scripts/bench/bench_xnat_store.py [n_sessions]
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ingest.records import SessionPlan, StudyRecord  # noqa: E402
from ingest.stores._xnat_client import XnatClient, XnatSettings  # noqa: E402
from ingest.stores.xnat import XnatStore  # noqa: E402
from tests.servers.xnat_emulator import XnatEmulator  # noqa: E402


def main(n: int = 500) -> None:
    emu = XnatEmulator().start()
    emu.add_project("BENCH")
    plans = []
    with emu.lock:
        for k in range(n):
            subj = emu._subject("BENCH", f"NN_H{k // 4:05d}", create=True)
            e = emu._new_experiment("BENCH", subj["ID"], f"ACC{k:06d}", "xnat:ctSessionData", "rtlake")
            e.uid = f"1.2.826.0.1.3680043.10.1.{k}"
            rec = StudyRecord(study_uid=e.uid, patient_id=f"H{k // 4:05d}", accession=e.label,
                              study_date=dt.date(2020, 1, 1))
            plans.append(SessionPlan("BENCH", subj["label"], e.label, rec))
    os.environ["BENCH_XNAT_USER"], os.environ["BENCH_XNAT_PASS"] = "rtlake", "secret"
    client = XnatClient(XnatSettings(url=emu.url, username_env="BENCH_XNAT_USER", password_env="BENCH_XNAT_PASS"))
    session = client.session
    try:
        t0 = time.perf_counter()
        raw = 0
        for p in plans:  # baseline: ask XNAT about each session
            rows = session.get_json("/data/projects/BENCH/experiments",
                                    query={"label": p.label, "columns": "ID,label,UID"})["ResultSet"]["Result"]
            raw += any(r["UID"] == p.study.study_uid for r in rows)
        t_raw = time.perf_counter() - t0

        store = XnatStore(client, "BENCH", create_project=False)
        t0 = time.perf_counter()
        ours = sum(store.has_session(p) for p in plans)
        t_store = time.perf_counter() - t0
    finally:
        client.close()
        emu.stop()
    assert raw == ours == n, (raw, ours, n)
    print(f"has_session for {n} sessions: per-session lookups {t_raw:.3f} s, XnatStore {t_store:.3f} s, "
          f"ratio {t_raw / t_store:.1f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)
