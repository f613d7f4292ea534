"""Writes the synthetic bad-input corpus for the reporting tests (no real patient data).

Run from anywhere: `python tests/data/reporting/_generate.py`. The files are committed; this
script documents how each was made and re-creates them byte for byte.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

HERE = Path(__file__).parent

# Synthetic studies. NHS numbers below pass mod-11 but are not real people (test ranges).
STUDIES = [
    {"accessionNumber": "RX100001", "modalitiesInStudy": ["CT"], "patient": {"id": "H001", "name": "TEST^ONE", "sex": "F"},
     "studyDate": "20240220", "studyDescription": "CT Neck with contrast", "studyId": "5501",
     "studyInstanceUid": "1.2.826.0.1.3680043.10.1.1"},
    {"accessionNumber": "RX100002", "modalitiesInStudy": ["MR"], "patient": {"id": "H002", "name": "TEST^TWO", "sex": "M"},
     "studyDate": "20240305", "studyDescription": "MRI Head and Neck", "studyId": "5502",
     "studyInstanceUid": ""},
    {"accessionNumber": "RX100003", "modalitiesInStudy": ["PT", "CT"], "patient": {"id": "0012345", "name": "TEST^THREE", "sex": "F"},
     "studyDate": "20240110", "studyDescription": "PET-CT FDG skull base to thigh", "studyId": "",
     "studyInstanceUid": ""},
    {"accessionNumber": "RX100004", "modalitiesInStudy": ["CT"], "patient": {"id": "H001", "name": "TEST^ONE", "sex": "F"},
     "studyDate": "20990101", "studyDescription": "CT Chest", "studyId": "",
     "studyInstanceUid": ""},
    {"accessionNumber": "RX100005", "modalitiesInStudy": ["DX"], "patient": {"id": "H004", "name": "TEST^FOUR", "sex": "M"},
     "studyDate": "20231201", "studyDescription": "OPG dental", "studyId": "5505",
     "studyInstanceUid": "1.2.826.0.1.3680043.10.1.5"},
]


def w(name: str, text: str | bytes) -> None:
    p = HERE / name
    if isinstance(text, str):
        text = text.encode("utf-8")
    p.write_bytes(text)


def query_results() -> list[dict]:
    out = []
    for s in STUDIES:
        out.append({"criteria": {"accessionNumber": s["accessionNumber"], "pacsId": 1},
                    "relabelMap": {"Subject": s["patient"]["id"], "Session": s["accessionNumber"]},
                    "studies": [s]})
    return out


def csv_cells() -> str:
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(["json"])
    for s in STUDIES:
        wr.writerow([json.dumps(s)])
    return buf.getvalue()


def messy() -> str:
    """Pasted by hand: doubled quotes, line wraps inside keys/values, keys reordered, extra keys."""
    parts = []
    for k, s in enumerate(STUDIES):
        items = list(s.items())
        items = items[::-1] if k % 2 else items[2:] + items[:2]
        body = []
        for key, val in items:
            if key == "studyInstanceUid" and val:
                v = '""' + val[:14] + '\n   ' + val[14:] + '""'
            elif isinstance(val, dict):
                v = "{" + ", ".join(f'""{a}"": ""{b}""' for a, b in val.items()) + "}"
            elif isinstance(val, list):
                v = "[" + ",".join(f'""{x}""' for x in val) + "]"
            else:
                v = f'""{val}""'
            kk = key if key != "studyDescription" else "study\nDescription"
            body.append(f'""{kk}""  :  {v}')
        body.append('""xnatExtra"": ""queued""')
        parts.append('"{' + ",\n  ".join(body) + ',}"')
    return "Failures pasted from CSC e-mail 2024-03-10\n\n" + "\n\n".join(parts) + "\n"


def main() -> None:
    # --- the three accepted shapes of the same five failures --------------------------------
    w("failures_query.json", json.dumps(query_results(), indent=2))
    w("failures_bare.json", json.dumps(STUDIES, indent=1))
    w("failures_cells.csv", csv_cells())
    w("PACs-failures.txt", messy())

    # --- failure files that are damaged -----------------------------------------------------
    w("bad_failures_empty.json", "")
    w("bad_failures_whitespace.txt", "  \n\n \t\n")
    full = json.dumps(STUDIES, indent=2)
    w("bad_failures_truncated.json", full[: full.index('"studyInstanceUid": "1.2.826.0.1.3680043.10.1.5"') + 30])
    unk = [dict(s, scheduledBy="robot", priority=3) for s in STUDIES[:2]]
    w("bad_failures_unknown_keys.json", json.dumps(unk, indent=2))
    broken = json.dumps(STUDIES[:3], indent=2).replace('"studyId": "5502",', '"studyId": "5502" ::: oops,')
    w("bad_failures_garbled_record.json", broken)
    w("bad_failures_trailing_commas.json", json.dumps(STUDIES[:2], indent=2).replace('"\n  }', '",\n  }'))
    w("bad_failures_not_json.txt", "accession RX1 failed\nplease check\n")
    w("bad_failures_empty_studies.json", json.dumps([{"criteria": {"accessionNumber": "RX100099", "pacsId": 1},
                                                        "relabelMap": {}, "studies": []}], indent=2))
    w("bad_failures_cp1252.txt", json.dumps([dict(STUDIES[0], studyDescription="CT Nëck – post op")], ensure_ascii=False).encode("cp1252"))
    w("bad_failures_bom.json", "\ufeff" + json.dumps(STUDIES[:1]))
    w("bad_failures_float_ids.json", json.dumps([dict(STUDIES[0], accessionNumber=100001.0, studyId=5501.0)]))
    w("bad_failures_bad_date.json", json.dumps([dict(STUDIES[0], studyDate="31/31/2024")]))
    w("bad_failures_csv_row_without_json.csv", "json\n" + csv_cells().split("\n", 1)[1] + "just a note\n")

    # --- cohort lists (HospitalID-NHSNumber.csv) --------------------------------------------
    w("cohort_blank_nhs.csv", "HospitalID,NHSNumber\nH001,9434765919\nH002,\nH003,   \n")
    w("cohort_float_nhs.csv", "HospitalID,NHSNumber\nH001,9434765919.0\nH005,4010232137.0\n")
    w("cohort_spaces_dashes.csv", "HospitalID,NHSNumber\nH001,943 476 5919\nH005,401-023-2137\n")
    w("cohort_duplicate_ids.csv", "HospitalID,NHSNumber\nH001,9434765919\nH001,4010232137\nH001,9434765919\n")
    w("cohort_same_nhs_two_ids.csv", "HospitalID,NHSNumber\nH001,9434765919\nH009,9434765919\n")
    w("cohort_bad_checkdigit.csv", "HospitalID,NHSNumber\nH001,9434765918\nH002,12345\n")
    w("cohort_leading_zeros.csv", "HospitalID,NHSNumber\n0012345,\n000777,4010232137\n")
    w("cohort_bom.csv", "\ufeffHospitalID,NHSNumber\nH001,9434765919\n")
    w("cohort_cp1252.csv", "HospitalID,NHSNumber,Note\nH001,9434765919,café\n".encode("cp1252"))
    w("cohort_empty.csv", "")
    w("cohort_missing_columns.csv", "HospitalID,NHSNumber\nH001\nH002,4010232137\n")
    w("cohort_no_id_column.csv", "Patient,NHS\nH001,9434765919\n")

    # --- reference dates ---------------------------------------------------------------------
    w("refdates_mixed_formats.csv",
      "Subject,Reference Date\n9434765919,2024-03-01\n4010232137,01/02/2024\nNN_H002,20240115\nNN_0012345,15.01.2024\n")
    w("refdates_integer_dates.csv", "Subject,Reference Date\n9434765919,20240301\n4010232137,20240201.0\n")
    w("refdates_float_subjects.csv", "Subject,Reference Date\n9434765919.0,2024-03-01\n9.434765919E9,2024-03-01\n")
    w("refdates_bad_rows.csv", "Subject,Reference Date\n9434765919,2024-13-45\n,2024-01-01\nNN_H002,\n1234567890,2024-01-01\n")
    w("refdates_missing_column.csv", "Subject,Date of RT\n9434765919,2024-03-01\n")
    w("refdates_bom_semicolon.csv", "\ufeffSubject;Reference Date\n9434765919;01/03/2024\n")

    # --- XNAT session CSVs (the SOP's dated folder) -------------------------------------------
    d = HERE / "xnat_folder"
    d.mkdir(exist_ok=True)
    (d / "CT.csv").write_text(
        "Subject,Date,XNAT_CTSESSIONDATA ID,UID,Scans\n"
        "9434765919,2024-02-20,XNAT_E00001,1.2.826.0.1.1,3\n"
        "9434765919,20240401,XNAT_E00002,1.2.826.0.1.2,1\n"
        "NN_H002,bad-date,XNAT_E00009,1.2.826.0.1.9,1\n", encoding="utf-8")
    (d / "MR.csv").write_text(
        "\ufeffSubject,Date,MR ID,Scanner,Scans\n9434765919.0,25/02/2024,XNAT_E00003,Avanto,2\n", encoding="utf-8")
    (d / "PET.csv").write_text(
        "Subject,Date,XNAT_PETSESSIONDATA ID,UID,Scans\nNN_H002,2024-01-10,XNAT_E00004,1.2.826.0.1.4,2\n",
        encoding="utf-8")
    (d / "CR.csv").write_text("Subject,Date,XNAT_CRSESSIONDATA ID,ID,Session\n", encoding="utf-8")
    (d / "DX.csv").write_bytes(b"")
    (d / "RF.csv").write_text("Subject,Date,XNAT_RFSESSIONDATA ID,ID,Session\nNN_H002,2024-02-02\n", encoding="utf-8")
    (d / "SR.csv").write_text("Subject,Date,XNAT_SRSESSIONDATA ID,ID,Creator\n", encoding="utf-8")
    # XA.csv deliberately missing
    (d / "reference_dates.csv").write_text("Subject,Reference Date\n9434765919,2024-03-01\nNN_H002,01/02/2024\n",
                                           encoding="utf-8")
    (d / "PACs-failures.txt").write_text(json.dumps(STUDIES[:3], indent=2), encoding="utf-8")
    (d / "HospitalID-NHSNumber.csv").write_text("HospitalID,NHSNumber\nH001,9434765919\nH002,\n0012345,\n",
                                                encoding="utf-8")


if __name__ == "__main__":
    main()
