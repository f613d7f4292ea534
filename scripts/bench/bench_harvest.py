"""Harvest benchmark: query 1,000 patients one by one, rtlake vs a raw loop, on a local Orthanc.

  REST:  OrthancSource.query_patient  vs  a raw requests loop of POST /tools/find (Expand)
  DIMSE: DimseSource.query_patient    vs  raw pynetdicom C-FIND on one association, TCP_NODELAY set

Goal: each ratio (rtlake time / raw time) <= 1.2. Loopback only; best of 3 interleaved rounds.
Usage: python scripts/bench/bench_harvest.py [--patients 1000]
"""

from __future__ import annotations

import argparse
import shutil
import socket

from _pacs_common import best_of, fresh_dir, interleaved_best, need_orthanc, start_orthanc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=1000)
    args = ap.parse_args()
    need_orthanc()

    import requests
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    from ingest.sources._http import HttpClient
    from ingest.sources.dimse import DimseSource
    from ingest.sources.orthanc import OrthancSource
    from ingest.transfer import Transfer
    from tests.fixtures.pacs import make_cohort

    tmp = fresh_dir("rtlake-bench-harvest-")
    srv = start_orthanc(tmp / "orthanc")
    try:
        cohort = make_cohort(tmp / "cohort", n_patients=args.patients, studies_per_patient=1, instances=1, seed=21)
        srv.upload([f for st in cohort for f in st.files])
        pids = [st.patient_id for st in cohort]
        print(f"Orthanc {srv.url}: {len(pids)} patients, {srv.study_count()} studies")

        # -- REST -------------------------------------------------------------------------
        raw = requests.Session()
        raw.auth = (srv.username, srv.password)

        def raw_rest() -> None:
            for pid in pids:
                r = raw.post(f"{srv.url}/tools/find",
                             json={"Level": "Study", "Query": {"PatientID": pid}, "Expand": True}, timeout=30)
                r.raise_for_status()
                assert len(r.json()) == 1

        sess = requests.Session()
        sess.auth = (srv.username, srv.password)
        lean = OrthancSource(srv.url, HttpClient(sess, Transfer("bench"), "bench"), series_details=False)
        full = OrthancSource(srv.url, HttpClient(sess, Transfer("bench"), "bench"), series_details=True)

        def rtlake_rest(src) -> None:
            for pid in pids:
                assert len(list(src.query_patient(pid))) == 1

        b = interleaved_best({"raw": raw_rest, "lean": lambda: rtlake_rest(lean), "full": lambda: rtlake_rest(full)})
        t_raw, t_lean, t_full = b["raw"], b["lean"], b["full"]
        print(f"REST raw /tools/find loop:              {t_raw:7.3f} s  ({1000 * t_raw / len(pids):.2f} ms/patient)")
        print(f"REST rtlake (series_details=false):     {t_lean:7.3f} s  ratio {t_lean / t_raw:.2f}  (goal <= 1.2)")
        print(f"REST rtlake (default, +modalities/counts): {t_full:7.3f} s  ratio {t_full / t_raw:.2f}  "
              "(two /tools/find per patient)")

        # -- DIMSE ------------------------------------------------------------------------
        class RawNodelayAE(AE):
            def _create_socket(self, assoc, address, tls_args):
                s = super()._create_socket(assoc, address, tls_args)
                s.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return s

        ae = RawNodelayAE(ae_title=srv.scu_aet)
        ae.add_requested_context(FIND)
        ae.dimse_timeout = 2  # a response swallowed by pynetdicom's reactor race then costs 2 s, not 30
        state = {"assoc": None, "lost": 0}

        def query(assoc, pid):
            ds = Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            ds.PatientID = pid
            for kw in ("StudyInstanceUID", "AccessionNumber", "StudyDate", "StudyDescription",
                       "ModalitiesInStudy", "NumberOfStudyRelatedInstances", "StudyID"):
                setattr(ds, kw, "")
            return [i for s, i in assoc.send_c_find(ds, FIND) if s and s.Status in (0xFF00, 0xFF01)]

        def raw_dimse_reused() -> None:
            for pid in pids:
                a = state["assoc"]
                if a is None or not a.is_established:
                    a = state["assoc"] = ae.associate("127.0.0.1", srv.dicom_port, ae_title=srv.aet)
                if len(query(a, pid)) != 1:
                    state["lost"] += 1

        def raw_dimse_per_query() -> None:
            for pid in pids:
                a = ae.associate("127.0.0.1", srv.dicom_port, ae_title=srv.aet)
                assert len(query(a, pid)) == 1
                a.release()

        dimse = DimseSource("127.0.0.1", srv.dicom_port, srv.aet, srv.scu_aet, transfer=Transfer("bench"))

        def rtlake_dimse() -> None:
            for pid in pids:
                assert len(list(dimse.query_patient(pid))) == 1

        b = interleaved_best({"raw": raw_dimse_reused, "rtlake": rtlake_dimse})
        t_rawd, t_d = b["raw"], b["rtlake"]
        t_rawp = best_of(raw_dimse_per_query, rounds=1)
        if state["assoc"] is not None and state["assoc"].is_established:
            state["assoc"].release()
        dimse.close()
        print(f"DIMSE raw pynetdicom, one association:  {t_rawd:7.3f} s  ({1000 * t_rawd / len(pids):.2f} ms/patient; "
              f"{state['lost']} answers lost to pynetdicom's reactor race in 3 rounds)")
        print(f"DIMSE raw pynetdicom, association/query: {t_rawp:7.3f} s  ({1000 * t_rawp / len(pids):.2f} ms/patient)")
        print(f"DIMSE rtlake C-FIND:                    {t_d:7.3f} s  ratio {t_d / t_rawd:.2f} vs one association, "
              f"{t_d / t_rawp:.2f} vs per query  (goal <= 1.2)")
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
