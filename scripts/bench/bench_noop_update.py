"""No-op update benchmark: a whole `rtlake update` with nothing new, against Orthanc with 1,000 patients.

Counts the HTTP requests the run makes (every `requests.Session.send` in this process) and times it, beside
the raw per-patient loop (one POST /tools/find per patient, what a run without the change log needs
at the very least), measured in the same run, best of 3 interleaved rounds.

Goal: fewer than 10 requests for the no-op run (the change log: GET /system, GET /changes?last).
Usage: python scripts/bench/bench_noop_update.py [--patients 1000]
"""

from __future__ import annotations

import argparse
import os

from _pacs_common import fresh_dir, interleaved_best, need_orthanc, start_orthanc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=1000)
    args = ap.parse_args()
    need_orthanc()

    import requests

    from ingest.config import load_config
    from ingest.run import run_update
    from tests.fixtures.pacs import make_cohort
    tmp = fresh_dir("rtlake-bench-noop-")
    srv = start_orthanc(tmp / "orthanc")
    sent = {"n": 0}
    real_send = requests.Session.send

    def counting_send(self, request, **kw):
        sent["n"] += 1
        return real_send(self, request, **kw)

    requests.Session.send = counting_send
    try:
        cohort = make_cohort(tmp / "cohort", n_patients=args.patients, studies_per_patient=1, instances=1, seed=23)
        srv.upload([f for st in cohort for f in st.files])
        pids = sorted({st.patient_id for st in cohort})
        (tmp / "cohort.csv").write_text("HospitalID,NHSNumber\n" + "".join(f"{p},\n" for p in pids))
        os.environ["RTLAKE_BENCH_PACS_USER"], os.environ["RTLAKE_BENCH_PACS_PASSWORD"] = srv.username, srv.password
        (tmp / "rtlake.toml").write_text(
            f'[project]\nstate_dir = "state"\n[source]\nkind = "orthanc"\n[source.orthanc]\n'
            f'url = "{srv.url}"\nusername_env = "RTLAKE_BENCH_PACS_USER"\n'
            f'password_env = "RTLAKE_BENCH_PACS_PASSWORD"\n[store.lake]\npath = "lake"\n'
            f'[inputs]\ncohort = "cohort.csv"\n[report]\noutbox = "outbox"\n')
        cfg = load_config(tmp / "rtlake.toml")
        first = run_update(cfg, show_progress=True, build_report=False)
        print(f"Orthanc {srv.url}: {len(pids)} patients; first run {first.status}: {first.counts['ingested']} "
              f"studies ingested ({first.harvest_mode})")

        raw = requests.Session()
        raw.auth = (srv.username, srv.password)

        def raw_loop() -> None:  # its requests are counted too, but only the no-op's are reported
            for pid in pids:
                r = raw.post(f"{srv.url}/tools/find",
                             json={"Level": "Study", "Query": {"PatientID": pid}, "Expand": True}, timeout=30)
                r.raise_for_status()

        counts: list[int] = []

        def noop() -> None:
            before = sent["n"]
            s = run_update(cfg, show_progress=False, build_report=False)
            assert s.status == "done" and s.counts["new_studies"] == 0, (s.status, s.counts)
            counts.append(sent["n"] - before)

        b = interleaved_best({"raw": raw_loop, "noop": noop})
        print(f"raw per-patient /tools/find loop: {b['raw']:7.3f} s  ({len(pids)} requests)")
        print(f"rtlake no-op update (whole run):  {b['noop']:7.3f} s  ({max(counts)} requests)  "
              f"ratio {b['noop'] / b['raw']:.2f} of the per-patient loop")
        print(f"requests: {max(counts)} (goal < 10)  " + ("OK" if max(counts) < 10 else "MISSED"))
    finally:
        requests.Session.send = real_send
        srv.stop()


if __name__ == "__main__":
    main()
