"""Rebuild the reduced Eclipse validation data in this folder from the public originals.

Not run by the tests (they read what this wrote). Sources, both public, both permissive:

* prostate: SlicerRT's test data (github.com/SlicerRt/SlicerRT, MIT licence), `Testing/Data/`:
  EclipseProstate_Structures.seg/*.vtp (the RTSTRUCT's planar contours, in RAS), EclipseProstate_Dose.nrrd
  (the Eclipse dose, float Gy) and EclipseProstate_DvhTable_Eclipse.csv (Eclipse's exported DVH table);
  the CT geometry is the segmentation's reference geometry in Testing/Data/Scenes/EclipseProstate_Dvh_Scene.mrml.
* breast: dicompyler-core 0.5.6's example plan (PyPI sdist, BSD licence), `tests/testdata/example_data/`:
  rtss.dcm, rtplan.dcm, rtdose.dcm (with Eclipse's DVHSequence) and ct.0.dcm (one CT slice: the geometry).

    python derive.py --slicerrt /path/to/SlicerRT.git --dicompyler-sdist dicompyler-core-0.5.6.tar.gz

What is reduced (everything else is byte-for-byte the original, xz-compressed):
* doses are stored as uint16 on two slopes: 0.1 mGy steps up to 20 mGy, then 1 mGy (breast) or
  2 mGy (prostate) steps, i.e. within 0.05 mGy of the original at low dose, where BODY's TPS volume
  is read at half a 10 mGy bin (one linear 1 mGy quantum moved that volume by 0.35 %), and within
  0.5 / 1 mGy above; meta.json gives the decoding;
* the RTDOSE is kept without its PixelData (the loader puts the quantised dose back);
* the prostate contours are kept as LPS points on a 1e-4 mm grid (the VTP float32s round-trip to 5e-5 mm);
* the one CT slice is reduced to its geometry (ct.json); the slice positions and image UIDs of the
  breast CT come from the RTSTRUCT's contour references.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import lzma
import struct
import subprocess
import tarfile
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SLICERRT_COMMIT = "df6ef69cfeaae8f2892bbd6612e2be6be4e6858f"


def _xz(data: bytes) -> bytes:
    return lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _vtk_array(text: str, dtype: str) -> np.ndarray:
    """One zlib-compressed, base64 'binary' VTK XML array (UInt32 header)."""
    text = text.strip()
    nb = struct.unpack("<I", base64.b64decode(text[:8])[:4])[0]
    hlen = 4 * (3 + nb)
    hchars = ((hlen + 2) // 3) * 4
    head = struct.unpack(f"<{3 + nb}I", base64.b64decode(text[:hchars])[:hlen])
    data = base64.b64decode(text[hchars:])
    out, pos = [], 0
    for c in head[3:]:
        out.append(zlib.decompress(data[pos : pos + c]))
        pos += c
    return np.frombuffer(b"".join(out), dtype=dtype)


def _read_vtp(xml: bytes) -> tuple[str, list[np.ndarray]]:
    types = {"Float32": "<f4", "Float64": "<f8", "Int64": "<i8", "Int32": "<i4", "UInt8": "u1"}
    root = ET.fromstring(xml)
    name = ""
    for a in root.iter("Array"):
        if a.get("Name") == "Segment_Name":
            name = bytes(_vtk_array(a.text, "u1")).rstrip(b"\0").decode()
    piece = root.find(".//Piece")
    pts = piece.find("Points/DataArray")
    P = _vtk_array(pts.text, types[pts.get("type")]).reshape(-1, 3).astype(np.float64)
    conn = off = None
    for da in piece.find("Lines").findall("DataArray"):
        v = _vtk_array(da.text, types[da.get("type")])
        if da.get("Name") == "connectivity":
            conn = v
        else:
            off = v
    polys, start = [], 0
    for o in off:
        p = P[conn[start:o]]
        start = o
        if len(p) > 1 and np.allclose(p[0], p[-1]):
            p = p[:-1]  # VTK closes the polyline by repeating the first point
        polys.append(np.column_stack([-p[:, 0], -p[:, 1], p[:, 2]]))  # RAS → LPS
    return name, polys


KNEE_GY, FINE_GY = 0.02, 0.0001


def _encode(gy: np.ndarray, coarse_gy: float) -> tuple[np.ndarray, dict]:
    gy = np.clip(gy, 0, None)
    q = np.where(gy < KNEE_GY, gy / FINE_GY, KNEE_GY / FINE_GY + (gy - KNEE_GY) / coarse_gy)
    q = np.round(q)
    assert q.max() < 65536
    enc = {"encoding": "uint16 q: D = q * fine_gy for q < knee_gy / fine_gy, else knee_gy + (q - knee_gy / fine_gy) * coarse_gy",
           "knee_gy": KNEE_GY, "fine_gy": FINE_GY, "coarse_gy": coarse_gy}
    return q.astype("<u2"), enc


def _git_show(gitdir: Path, path: str) -> bytes:
    return subprocess.run(["git", "--git-dir", str(gitdir), "show", f"{SLICERRT_COMMIT}:{path}"], check=True,
                          capture_output=True).stdout


def prostate(gitdir: Path) -> None:
    import SimpleITK as sitk

    out = HERE / "prostate"
    out.mkdir(exist_ok=True)
    sources = {}
    vtm = _git_show(gitdir, "Testing/Data/EclipseProstate_Structures.seg.vtm")
    files = [d.get("file") for d in ET.fromstring(vtm).iter("DataSet")]
    rois, lens, points = [], [], []
    for n, f in enumerate(files, start=1):
        raw = _git_show(gitdir, f"Testing/Data/{f}")
        sources[f"Testing/Data/{f}"] = hashlib.sha256(raw).hexdigest()
        name, polys = _read_vtp(raw)
        rois.append({"number": n, "name": name, "type": "EXTERNAL" if name == "BODY" else "ORGAN", "contours": len(polys)})
        lens += [len(p) for p in polys]
        points += polys
    q = np.round(np.concatenate(points) * 1e4).astype(np.int64)
    (out / "contours.npy.xz").write_bytes(_xz(_npy(np.diff(q, axis=0, prepend=0).astype("<i4"))))
    nrrd = _git_show(gitdir, "Testing/Data/EclipseProstate_Dose.nrrd")
    sources["Testing/Data/EclipseProstate_Dose.nrrd"] = hashlib.sha256(nrrd).hexdigest()
    tmp = out / ".dose.nrrd"
    tmp.write_bytes(nrrd)
    img = sitk.ReadImage(str(tmp))
    tmp.unlink()
    gy = sitk.GetArrayFromImage(img).astype(np.float64)
    q, enc = _encode(gy, 0.002)
    (out / "dose.npy.xz").write_bytes(_xz(_npy(q)))
    csv = _git_show(gitdir, "Testing/Data/EclipseProstate_DvhTable_Eclipse.csv")
    sources["Testing/Data/EclipseProstate_DvhTable_Eclipse.csv"] = hashlib.sha256(csv).hexdigest()
    (out / "eclipse_dvh_table.csv.xz").write_bytes(_xz(csv))
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    meta = {
        "source": f"github.com/SlicerRt/SlicerRT@{SLICERRT_COMMIT}", "sha256": sources,
        "rois": rois, "contour_lengths": lens, "points": "int32 deltas of LPS mm × 1e4 (cumulative sum restores them)",
        # the segmentation's reference geometry (EclipseProstate_Dvh_Scene.mrml): the planning CT
        "ct": {"origin": [-250.0, -250.0, -122.5], "row_dir": [1, 0, 0], "col_dir": [0, 1, 0],
               "spacing": [0.976562, 0.976562, 2.5], "shape": [92, 512, 512]},
        "dose": {"origin": list(img.GetOrigin()), "row_dir": d[:, 0].tolist(), "col_dir": d[:, 1].tolist(),
                 "spacing": list(img.GetSpacing()), "shape": list(gy.shape), **enc},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def breast(sdist: Path) -> None:
    import pydicom

    out = HERE / "breast"
    out.mkdir(exist_ok=True)
    base = "dicompyler-core-0.5.6/tests/testdata/example_data/"
    with tarfile.open(sdist) as tf:
        raw = {n: tf.extractfile(base + n).read() for n in ("rtss.dcm", "rtplan.dcm", "rtdose.dcm", "ct.0.dcm")}
    sources = {f"{base}{n}": hashlib.sha256(b).hexdigest() for n, b in raw.items()}
    (out / "rtss.dcm.xz").write_bytes(_xz(raw["rtss.dcm"]))
    (out / "rtplan.dcm.xz").write_bytes(_xz(raw["rtplan.dcm"]))
    rd = pydicom.dcmread(io.BytesIO(raw["rtdose.dcm"]))
    gy = rd.pixel_array.astype(np.float64) * float(rd.DoseGridScaling)
    q, enc = _encode(gy, 0.001)
    (out / "dose.npy.xz").write_bytes(_xz(_npy(q)))
    del rd.PixelData
    buf = io.BytesIO()
    rd.save_as(buf)
    (out / "rtdose_without_pixels.dcm.xz").write_bytes(_xz(buf.getvalue()))
    ct = pydicom.dcmread(io.BytesIO(raw["ct.0.dcm"]), stop_before_pixels=True)
    rs = pydicom.dcmread(io.BytesIO(raw["rtss.dcm"]))
    # CT slice positions and image UIDs: each contour references the image it was drawn on.
    z_of_uid: dict[str, float] = {}
    for rc in rs.ROIContourSequence:
        for c in rc.get("ContourSequence", []):
            for ci in c.get("ContourImageSequence", []):
                z_of_uid.setdefault(str(ci.ReferencedSOPInstanceUID), float(c.ContourData[2]))
    z_of_uid[str(ct.SOPInstanceUID)] = float(ct.ImagePositionPatient[2])
    uids = sorted(z_of_uid, key=z_of_uid.get)
    top = float(ct.ImagePositionPatient[2])  # ct.0 is the last slice; positions in 3 mm steps below it
    step = float(ct.SliceThickness)
    n = len(uids)
    meta = {
        "source": "dicompyler-core 0.5.6 sdist (PyPI), tests/testdata/example_data", "sha256": sources,
        "ct": {"origin": [float(ct.ImagePositionPatient[0]), float(ct.ImagePositionPatient[1]), top - (n - 1) * step],
               "row_dir": [float(v) for v in ct.ImageOrientationPatient[:3]],
               "col_dir": [float(v) for v in ct.ImageOrientationPatient[3:]],
               "spacing": [float(ct.PixelSpacing[1]), float(ct.PixelSpacing[0]), step], "shape": [n, int(ct.Rows), int(ct.Columns)],
               "study_uid": str(ct.StudyInstanceUID), "series_uid": str(ct.SeriesInstanceUID),
               "frame_of_reference": str(ct.FrameOfReferenceUID), "sop_uids_by_position": uids},
        "dose": {**enc, "original_scaling": str(rd.DoseGridScaling), "shape": list(gy.shape)},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slicerrt", type=Path, required=True, help="a git directory of github.com/SlicerRt/SlicerRT")
    ap.add_argument("--dicompyler-sdist", type=Path, required=True, help="dicompyler-core-0.5.6.tar.gz from PyPI")
    args = ap.parse_args()
    prostate(args.slicerrt)
    breast(args.dicompyler_sdist)


if __name__ == "__main__":
    main()
