"""Benchmark: XnatStore against raw REST calls, on the XNAT emulator in this process.

1. has_session over a cohort vs one REST lookup per session (raw baseline): the ratio
   baseline/store shows what listing the project once saves (higher = the store is faster).
2. put_study of small studies (zip, import, then reading scans and file URLs back from XNAT) vs a
   raw import POST of the same zips: the ratio raw/store is the price of checking what XNAT
   really holds (1.0 = free). A real XNAT spends seconds archiving each upload, which dwarfs the
   extra listings, so there the price is smaller than here.

Both use the same logged-in xnatpy session, so the ratios measure request patterns, not the server.

    .venv/bin/python scripts/bench/bench_xnat_store.py [n_sessions] [n_uploads]
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


def main(n: int = 500, n_uploads: int = 20) -> None:
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
    uploads(n_uploads)


def uploads(k: int) -> None:
    import tempfile

    from ingest.stores._xnat_zip import pack_study
    from tests.fixtures.xnat import write_study

    emu = XnatEmulator().start()
    emu.add_project("BENCH")
    client = XnatClient(XnatSettings(url=emu.url, username_env="BENCH_XNAT_USER", password_env="BENCH_XNAT_PASS"))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            studies = [write_study(Path(tmp) / f"s{i}", f"H{i:04d}", f"UP{i:04d}", n_series=2, n_instances=4)
                       for i in range(2 * k)]
            session = client.session
            t0 = time.perf_counter()
            for i, st in enumerate(studies[:k]):  # baseline: zip and import, nothing checked or read back
                z = pack_study(st.study_uid, st.files, Path(tmp) / f"raw{i}.zip").zip_path
                with open(z, "rb") as fh:
                    client.request(session, "POST", "/data/services/import", data=fh,
                                   params={"dest": "/archive", "project": "BENCH", "subject": f"S{i}",
                                           "session": f"RAW{i}"}, headers={"Content-Type": "application/zip"})
            t_raw = time.perf_counter() - t0
            store = XnatStore(client, "BENCH", create_project=False)
            t0 = time.perf_counter()
            for st in studies[k:]:
                rec = StudyRecord(study_uid=st.study_uid, patient_id=st.patient_id, accession=st.accession,
                                  study_date=st.study_date, modalities=("CT",))
                store.put_study(SessionPlan("BENCH", f"NN_{st.patient_id}", st.accession, rec), st.files)
            t_store = time.perf_counter() - t0
    finally:
        client.close()
        emu.stop()
    print(f"put_study for {k} studies (2 series x 4 files): raw zip+import {t_raw:.3f} s, XnatStore with "
          f"read-back {t_store:.3f} s, ratio {t_raw / t_store:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500, int(sys.argv[2]) if len(sys.argv) > 2 else 20)
