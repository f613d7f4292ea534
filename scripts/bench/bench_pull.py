"""Pull benchmark: move studies from a local Orthanc into a folder, rtlake vs raw baselines.

  rtlake OrthancSource.retrieve (WADO-RS per study, each instance validated and named by SOP UID)
  vs raw WADO-RS multipart (requests, split parts, write files)        goal: ratio >= 0.8
  vs a per-instance GET /instances/{id}/file loop with requests' default gzip (PDCP's way)  goal: >= 5

Also prints rtlake's per-instance mode (identity, `concurrency` threads) and DIMSE C-GET for reference.
Loopback only; best of 3 interleaved rounds; figures in instances/s.
Usage: python scripts/bench/bench_pull.py [--studies 10 --instances 100]
"""

from __future__ import annotations

import argparse
import shutil

from _pacs_common import best_of, fresh_dir, interleaved_best, need_orthanc, start_orthanc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--studies", type=int, default=10)
    ap.add_argument("--instances", type=int, default=100)
    args = ap.parse_args()
    need_orthanc()

    import requests

    from ingest.sources._http import HttpClient, iter_multipart, multipart_boundary
    from ingest.sources.dimse import DimseSource
    from ingest.sources.orthanc import OrthancSource
    from ingest.transfer import Transfer
    from tests.fixtures.pacs import make_cohort

    tmp = fresh_dir("rtlake-bench-pull-")
    srv = start_orthanc(tmp / "orthanc")
    try:
        cohort = make_cohort(tmp / "cohort", n_patients=args.studies, studies_per_patient=1,
                             instances=args.instances, seed=33)
        srv.upload([f for st in cohort for f in st.files])
        total = sum(len(st.files) for st in cohort)
        size = sum(f.stat().st_size for st in cohort for f in st.files)
        print(f"Orthanc {srv.url}: {len(cohort)} studies, {total} instances, {size / 1e6:.1f} MB")
        raw = requests.Session()
        raw.auth = (srv.username, srv.password)
        out = tmp / "out"

        def reset() -> None:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()

        def raw_wado() -> None:
            reset()
            n = 0
            for st in cohort:
                r = raw.get(f"{srv.url}/dicom-web/studies/{st.study_uid}",
                            headers={"Accept": 'multipart/related; type="application/dicom"'}, timeout=120)
                r.raise_for_status()
                b = multipart_boundary(r.headers["Content-Type"])
                for part in iter_multipart([r.content], b):
                    (out / f"{n}.dcm").write_bytes(part)
                    n += 1
            assert n == total

        ids = {st.study_uid: [] for st in cohort}
        for st in cohort:
            oid = raw.post(f"{srv.url}/tools/lookup", data=st.study_uid).json()[0]["ID"]
            ids[st.study_uid] = [i["ID"] for i in raw.get(f"{srv.url}/studies/{oid}/instances").json()]

        def raw_per_instance_gzip() -> None:
            reset()
            n = 0
            for st in cohort:
                for iid in ids[st.study_uid]:
                    r = raw.get(f"{srv.url}/instances/{iid}/file", timeout=60)  # requests sends gzip, deflate
                    r.raise_for_status()
                    (out / f"{n}.dcm").write_bytes(r.content)
                    n += 1
            assert n == total

        def make_source(mode: str, kind: str = "orthanc"):
            if kind == "orthanc":
                s = requests.Session()
                s.auth = (srv.username, srv.password)
                return OrthancSource(srv.url, HttpClient(s, Transfer("bench"), "bench"), retrieve=mode)
            return DimseSource("127.0.0.1", srv.dicom_port, srv.aet, srv.scu_aet, transfer=Transfer("bench"))

        # the query is the harvest's job (bench_harvest); here only the pull is timed, as for the raw loops
        sources = {m: make_source(m) for m in ("wado-rs", "instances")}
        sources["c-get"] = make_source("c-get", "dimse")
        recs = [next(r for r in sources["wado-rs"].query_patient(st.patient_id) if r.study_uid == st.study_uid)
                for st in cohort]

        def rtlake(mode: str, kind: str = "orthanc") -> None:
            reset()
            src = sources[mode]
            n = 0
            for rec in recs:
                got = src.retrieve(rec, out / rec.study_uid)
                assert not got.partial
                n += len(got.files)
            assert n == total

        b = interleaved_best({"wado": raw_wado, "gzip": raw_per_instance_gzip, "rt": lambda: rtlake("wado-rs"),
                              "rti": lambda: rtlake("instances")})
        t_wado, t_gzip, t_rt, t_rti = b["wado"], b["gzip"], b["rt"], b["rti"]
        t_get = best_of(lambda: rtlake("c-get", "dimse"), rounds=1)
        rate = lambda t: total / t  # noqa: E731
        print(f"raw WADO-RS multipart:                 {rate(t_wado):8.0f} inst/s")
        print(f"raw per-instance GET, gzip (PDCP):     {rate(t_gzip):8.0f} inst/s")
        print(f"rtlake orthanc wado-rs:                {rate(t_rt):8.0f} inst/s  "
              f"ratio {t_wado / t_rt:.2f} vs raw WADO-RS (goal >= 0.8), {t_gzip / t_rt:.1f}x vs per-instance gzip "
              "(goal >= 5)")
        print(f"rtlake orthanc instances (identity):   {rate(t_rti):8.0f} inst/s")
        print(f"rtlake dimse C-GET (NODELAY):          {rate(t_get):8.0f} inst/s")
        for src in sources.values():
            src.close()
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
