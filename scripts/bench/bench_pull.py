"""Pull benchmark: studies from a local Orthanc into files, rtlake vs raw baselines, best of 3 interleaved.

  1. pull:          OrthancSource.retrieve (WADO-RS per study, streamed; each instance validated and
                    written as <SOPInstanceUID>.dcm in the scratch folder)
                    vs raw WADO-RS multipart (requests, whole response, split parts, write files)   goal >= 0.9
                    vs a per-instance GET /instances/{id}/file loop with requests' default gzip
                    (PDCP's way)                                                         goal >= 5
  2. pull to lake:  what `rtlake update` does after the harvest — UpdateRun.ingest: fetch in worker
                    threads, store each study in the lake (files flushed to disk), record sessions,
                    scans and files in the catalog — vs the same raw WADO-RS baseline
  3. C-GET:         DimseSource.retrieve (c-get) vs raw pynetdicom C-GET of the same study on one
                    association (TCP_NODELAY, as in bench_harvest), writing each data set it receives
                                                                                         goal >= 0.8

Parts 1 and 3 write to memory (/dev/shm, `--out` to change; see _default_out), part 2 to disk. Each
contender starts from an emptied output folder and a `sync`, outside its timing.

Where the time goes (10 x 100 CT slices of 39 KB, per instance; the raw loop costs ~0.2-0.3 ms, of
which ~0.15 is the transfer and the rest its file writes):
  validation on arrival (issue 19)  ~0.3 ms -> ~0.02 ms: the element walk runs in C
                    (ingest/_dicomwalk.c, ~4 us for CT_small's 263 headers; any fault goes to the Python
                    walk for its message), UID validity and whole pixel lengths are remembered per series
                    (the regex and the attribute decoding ran for every slice), the Verdict is built
                    without a frozen dataclass's per-field setattr (3 us)
  write to scratch  temp name + rename -> written in place with os-level calls (the folder is private to
                    the run and new for each transfer; one writer per SOP; a failed write leaves nothing);
                    pathlib and buffered file objects cost ~5 us a file
  the lake          validation of the pulled file ~0 (the pull's verdict is reused while path, inode,
                    size and mtime are unchanged); pydicom header read ~3 ms -> 0 (the walk keeps the
                    series keys); copy into the lake -> one rename (the scratch copy is the run's own;
                    EXDEV falls back to a copy); an fsync per file 2-4 ms -> one syncfs per study
                    ~0.2 ms; catalog ~0.3 ms (one transaction per study)
So part 1 is now within a few per cent of the raw loop (it streams where the raw loop holds whole
responses, which is why it is faster with --matrix 512); part 2 is bound by the durable writes and
the catalog. C-GET: all 120 storage contexts cost ~90 ms of negotiation per study; the 32 common ones
are proposed first. README "PACS benchmarks" has the table.

Loopback only; figures in instances/s; the load average is printed with the results.
Usage: python scripts/bench/bench_pull.py [--studies 10 --instances 100] [--matrix 512] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import tempfile
from pathlib import Path

from _pacs_common import fresh_dir, load_note, need_orthanc, product_source, start_orthanc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--studies", type=int, default=10)
    ap.add_argument("--instances", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--matrix", type=int, default=0,
                    help="rewrite the slices as MATRIX x MATRIX 16-bit images (512: a clinical CT slice, 512 KB; "
                         "default: pydicom's 128 x 128 CT_small, 39 KB)")
    ap.add_argument("--out", default=_default_out(),
                    help="where parts 1 and 3 write what they pull (default: a folder in /dev/shm, memory: see below)")
    args = ap.parse_args()
    need_orthanc()

    import time

    import requests
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import CTImageStorage, MRImageStorage
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET
    from pydicom.dataset import Dataset

    from ingest.sources._http import iter_multipart, multipart_boundary
    from tests.fixtures.pacs import make_cohort

    tmp = fresh_dir("rtlake-bench-pull-")
    srv = start_orthanc(tmp / "orthanc")
    try:
        cohort = make_cohort(tmp / "cohort", n_patients=args.studies, studies_per_patient=1,
                             instances=args.instances, seed=33)
        if args.matrix:
            resize(cohort, args.matrix)
        srv.upload([f for st in cohort for f in st.files])
        total = sum(len(st.files) for st in cohort)
        size = sum(f.stat().st_size for st in cohort for f in st.files)
        print(f"Orthanc {srv.url}: {len(cohort)} studies, {total} instances, {size / 1e6:.1f} MB; {load_note()}")
        raw = requests.Session()
        raw.auth = (srv.username, srv.password)
        out = Path(tempfile.mkdtemp(prefix="rtlake-bench-pull-out-", dir=args.out))
        print(f"parts 1 and 3 write to {out}; the lake of part 2 is on {tmp}")

        def reset() -> None:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()

        def raw_wado() -> None:
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

        ids = {}
        for st in cohort:
            oid = raw.post(f"{srv.url}/tools/lookup", data=st.study_uid).json()[0]["ID"]
            ids[st.study_uid] = [i["ID"] for i in raw.get(f"{srv.url}/studies/{oid}/instances").json()]

        def raw_per_instance_gzip() -> None:
            n = 0
            for st in cohort:
                for iid in ids[st.study_uid]:
                    r = raw.get(f"{srv.url}/instances/{iid}/file", timeout=60)  # requests sends gzip, deflate
                    r.raise_for_status()
                    (out / f"{n}.dcm").write_bytes(r.content)
                    n += 1
            assert n == total

        # -- 1. pull into a scratch folder (the query is bench_harvest's job) --------------------
        wado = product_source("orthanc", srv, tmp / "s-wado")
        recs = [next(r for r in wado.query_patient(st.patient_id) if r.study_uid == st.study_uid) for st in cohort]

        def rtlake_pull(src) -> None:
            n = 0
            for rec in recs:
                got = src.retrieve(rec, out / rec.study_uid)
                assert not got.partial
                n += len(got.files)
            assert n == total

        # -- 2. pull to the lake: UpdateRun.ingest on a harvested catalog, fresh each round ----------
        lake_runs = LakeRuns(srv, tmp, cohort)

        def rtlake_to_lake() -> float:
            return lake_runs.ingest_next(total)  # times the ingest only, not the catalog set-up

        # -- 3. C-GET --------------------------------------------------------------------------------
        class RawNodelayAE(AE):
            def _create_socket(self, assoc, address, tls_args):
                s = super()._create_socket(assoc, address, tls_args)
                s.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return s

        got_count = [0]

        def raw_cget() -> None:
            got_count[0] = 0

            def on_store(event):
                got_count[0] += 1
                with open(out / f"{got_count[0]}.dcm", "wb") as fh:
                    fh.write(event.encoded_dataset())
                return 0x0000

            ae = RawNodelayAE(ae_title=srv.scu_aet)
            ae.add_requested_context(GET)
            for cx in (CTImageStorage, MRImageStorage):
                ae.add_requested_context(cx)
            roles = [build_role(cx, scp_role=True) for cx in (CTImageStorage, MRImageStorage)]
            for st in cohort:
                assoc = ae.associate("127.0.0.1", srv.dicom_port, ae_title=srv.aet, ext_neg=roles,
                                     evt_handlers=[(evt.EVT_C_STORE, on_store)])
                ds = Dataset()
                ds.QueryRetrieveLevel = "STUDY"
                ds.StudyInstanceUID = st.study_uid
                for _status, _ in assoc.send_c_get(ds, GET):
                    pass
                assoc.release()
            assert got_count[0] == total, got_count[0]

        cget = product_source("dimse", srv, tmp / "s-dimse")
        inst = product_source("orthanc", srv, tmp / "s-inst", retrieve="instances")
        fns = {"raw WADO-RS": raw_wado, "raw gzip": raw_per_instance_gzip, "pull": lambda: rtlake_pull(wado),
               "pull instances": lambda: rtlake_pull(inst), "to lake": rtlake_to_lake,
               "raw C-GET": raw_cget, "C-GET": lambda: rtlake_pull(cget)}
        best = {k: float("inf") for k in fns}
        for _ in range(args.rounds):
            for k, fn in fns.items():
                # untimed: empty the output folder and let the disk settle, so no contender pays for
                # deleting (ext4 `discard`) or writing back the files of the one before it
                reset()
                os.sync()
                t = time.perf_counter()
                own = fn()
                best[k] = min(best[k], own if isinstance(own, float) else time.perf_counter() - t)
        rate = {k: total / v for k, v in best.items()}
        w = rate["raw WADO-RS"]
        print(f"raw WADO-RS multipart:                       {w:8.0f} inst/s")
        print(f"raw per-instance GET, gzip (PDCP):           {rate['raw gzip']:8.0f} inst/s")
        print(f"rtlake pull, orthanc wado-rs:                {rate['pull']:8.0f} inst/s  ratio {rate['pull'] / w:.2f} "
              f"vs raw WADO-RS (goal >= 0.9), {rate['pull'] / rate['raw gzip']:.1f}x vs per-instance gzip (goal >= 5)")
        print(f"rtlake pull, orthanc instances (identity):   {rate['pull instances']:8.0f} inst/s")
        print(f"rtlake pull to the lake (ingest, durable):   {rate['to lake']:8.0f} inst/s  ratio "
              f"{rate['to lake'] / w:.2f} vs raw WADO-RS")
        print(f"raw pynetdicom C-GET, one association/study: {rate['raw C-GET']:8.0f} inst/s")
        print(f"rtlake dimse C-GET:                          {rate['C-GET']:8.0f} inst/s  ratio "
              f"{rate['C-GET'] / rate['raw C-GET']:.2f} vs raw C-GET (goal >= 0.8)")
        print(f"done; {load_note()}")
        for src in (wado, inst, cget):
            src.close()
        lake_runs.close()
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)


def _default_out() -> str | None:
    """/dev/shm when there is one. Why memory: on this shared VM the disk's cost per file creation
    varies tenfold within an hour (0.03-0.4 ms for a 39 KB file, ext4 with online discard), which
    swamps both contenders alike and hides what rtlake itself adds to the transport. In memory
    the comparison is the strict one: the transport, plus rtlake's checks, against the transport.
    Part 2 (the lake, durable) stays on disk: its flushes are what it measures."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def resize(cohort, matrix: int) -> None:
    """Give every slice a matrix x matrix 16-bit image (noise), as a clinical CT slice has."""
    import numpy as np
    import pydicom

    rng = np.random.default_rng(5)
    for st in cohort:
        for p in st.files:
            ds = pydicom.dcmread(p)
            ds.Rows = ds.Columns = matrix
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.PixelData = rng.integers(-1000, 2000, size=(matrix, matrix), dtype=np.int16).tobytes()
            ds.save_as(p, enforce_file_format=True)


class LakeRuns:
    """A harvested update run per round (fresh state and lake), so each round's ingest starts from
    the same catalog: cohort patients known, studies selected, nothing stored yet."""

    def __init__(self, srv, tmp, cohort) -> None:
        self.srv, self.tmp, self.n = srv, tmp, 0
        (tmp / "cohort.csv").write_text("HospitalID,NHSNumber\n" + "".join(f"{st.patient_id},\n" for st in cohort))
        (tmp / "lists.yaml").write_text("include:\n  - 'glob:*'\nexclude: []\n")
        os.environ["RTLAKE_BENCH_USER"], os.environ["RTLAKE_BENCH_PASSWORD"] = srv.username, srv.password
        self.open: list = []

    def _prepared(self):
        from ingest.catalog import Catalog
        from ingest.config import load_config
        from ingest.run import UpdateRun, _progress
        from ingest.sources import open_source
        from ingest.stores import open_store

        self.n += 1
        d = self.tmp / f"lake-run{self.n}"
        cfg = load_config(None, {
            "project.state_dir": str(d / "state"), "store.lake.path": str(d / "lake"), "source.kind": "orthanc",
            "source.orthanc.url": self.srv.url, "source.orthanc.username_env": "RTLAKE_BENCH_USER",
            "source.orthanc.password_env": "RTLAKE_BENCH_PASSWORD", "inputs.cohort": str(self.tmp / "cohort.csv"),
            "criteria.lists": str(self.tmp / "lists.yaml")})
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        cat = Catalog(cfg.catalog_path)
        run = UpdateRun(cfg, cat, _progress(False))
        run.source, run.store = open_source(cfg), open_store(cfg)
        run.harvest(run.load_patients())
        return run, run.select(), cat, d

    def ingest_next(self, total: int) -> float:
        """Prepare a run (untimed), then time its ingest; returns the seconds the ingest took."""
        run, todo, cat, d = self._prepared()
        import time

        os.sync()  # the harvest's catalog writes are not the ingest's to flush
        t = time.perf_counter()
        run.ingest(todo)
        elapsed = time.perf_counter() - t
        assert run.summary.counts["files"] == total, run.summary.counts
        run.source.close()
        run.store.close()
        cat.close()
        shutil.rmtree(d, ignore_errors=True)
        return elapsed

    def close(self) -> None:
        pass


if __name__ == "__main__":
    main()
