"""Harvest benchmark: query 1,000 patients one by one, rtlake vs raw loops, on a local Orthanc 1.10.1.

  REST:     OrthancSource.query_patient with modalities + instance counts (the default), and without
            (`series_details = false`), vs a raw `requests` loop of Study-level POST /tools/find (Expand)
  DICOMweb: DicomWebSource.query_patient vs a raw QIDO-RS loop asking for the same includefields
  DIMSE:    DimseSource.query_patient vs raw pynetdicom C-FIND on one association, TCP_NODELAY set

Every rtlake source is built as `rtlake update` builds it (open_source on a validated config), and
its answers are checked: one study per patient, with the right modality and instance count.
Goal: each ratio (rtlake time / raw time) <= 1.2. Loopback only; best of 3 interleaved rounds.

What Orthanc 1.10.1 answers (tried here, README "PACS benchmarks"): no single REST request gives a
study's tags together with its instance count — Series-level /tools/find `Expand` has only the
series' tags and `ParentStudy`, `RequestedTags` is ignored before 1.11 — so rtlake lists the
patient's studies, then the patient's series, by the patient's Orthanc ID (SHA-1 of PatientID).
Both are ID look-ups, cheaper for Orthanc than the raw loop's tag search; and the session reads the
environment once instead of on every request (~0.7 ms of a ~1.7 ms request on loopback).
Usage: python scripts/bench/bench_harvest.py [--patients 1000]
"""

from __future__ import annotations

import argparse
import shutil
import socket

from _pacs_common import (best_of, count_requests, fresh_dir, interleaved_best, load_note, need_orthanc,
                          product_source, start_orthanc)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=1000)
    args = ap.parse_args()
    need_orthanc()

    import requests
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    from ingest.sources.dimse import DimseSource
    from ingest.transfer import Transfer
    from tests.fixtures.pacs import make_cohort

    tmp = fresh_dir("rtlake-bench-harvest-")
    srv = start_orthanc(tmp / "orthanc")
    try:
        cohort = make_cohort(tmp / "cohort", n_patients=args.patients, studies_per_patient=1, instances=1, seed=21)
        srv.upload([f for st in cohort for f in st.files])
        pids = [st.patient_id for st in cohort]
        print(f"Orthanc {srv.url}: {len(pids)} patients, {srv.study_count()} studies; {load_note()}")

        # -- REST -------------------------------------------------------------------------
        raw = requests.Session()
        raw.auth = (srv.username, srv.password)

        def raw_rest() -> None:
            for pid in pids:
                r = raw.post(f"{srv.url}/tools/find",
                             json={"Level": "Study", "Query": {"PatientID": pid}, "Expand": True}, timeout=30)
                r.raise_for_status()
                assert len(r.json()) == 1

        full = product_source("orthanc", srv, tmp / "s-full")
        lean = product_source("orthanc", srv, tmp / "s-lean", series_details=False)
        n_full = count_requests(full.client.session)
        n_lean = count_requests(lean.client.session)
        truth = {st.patient_id: (st.modality, len(st.files)) for st in cohort}

        def rtlake_rest(src, counts: bool) -> None:
            for pid in pids:
                (rec,) = src.query_patient(pid)
                if counts:  # modalities and instance counts must be right, not just present
                    assert (rec.modalities, rec.n_instances) == ((truth[pid][0],), truth[pid][1])

        b = interleaved_best({"raw": raw_rest, "full": lambda: rtlake_rest(full, True),
                              "lean": lambda: rtlake_rest(lean, False)})
        t_raw, t_lean, t_full = b["raw"], b["lean"], b["full"]
        per = lambda n: (n[0] - 1) / (3 * len(pids))  # noqa: E731 - minus the one naming check per source
        print(f"REST raw /tools/find loop (requests):        {t_raw:7.3f} s  ({1000 * t_raw / len(pids):.2f} ms/patient)")
        print(f"REST rtlake, modalities + counts (default):  {t_full:7.3f} s  ratio {t_full / t_raw:.2f}  (goal <= 1.2; "
              f"{per(n_full):.2f} requests/patient)")
        print(f"REST rtlake, series_details=false:           {t_lean:7.3f} s  ratio {t_lean / t_raw:.2f}  "
              f"({per(n_lean):.2f} requests/patient, no counts)")
        full.close()
        lean.close()

        # -- DICOMweb (QIDO-RS) -------------------------------------------------------------
        from ingest.sources.dicomweb import INCLUDE_FIELDS

        inc = "&".join(f"includefield={f}" for f in INCLUDE_FIELDS)

        def raw_qido() -> None:
            for pid in pids:
                r = raw.get(f"{srv.url}/dicom-web/studies?PatientID={pid}&{inc}",
                            headers={"Accept": "application/dicom+json"}, timeout=30)
                r.raise_for_status()
                assert len(r.json()) == 1

        web = product_source("dicomweb", srv, tmp / "s-web")
        n_web = count_requests(web.client.session)
        b = interleaved_best({"raw": raw_qido, "rtlake": lambda: rtlake_rest(web, True)})
        print(f"QIDO-RS raw loop, same includefields:        {b['raw']:7.3f} s  ({1000 * b['raw'] / len(pids):.2f} ms/patient)")
        print(f"QIDO-RS rtlake, modalities + counts:         {b['rtlake']:7.3f} s  ratio {b['rtlake'] / b['raw']:.2f}  "
              f"(goal <= 1.2; {n_web[0] / (3 * len(pids)):.2f} requests/patient)")
        web.close()

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
            rtlake_rest(dimse, True)

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
        print(f"done; {load_note()}")
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
