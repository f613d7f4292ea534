"""The outbox writers (reporting/edw.py, reporting/xlsx_stream.py) read back by independent readers.

What the EDW and the people opening the workbook rely on, written down before the code:
- NHS numbers, hospital IDs with leading zeros and UIDs stay text (never numbers, never floats);
- dates are real date cells shown yyyy-mm-dd; day differences and Scans counts are numbers;
- the markers `null` / `not applicable` are text; an empty cell leaves the next cells in place;
- the header is bold and frozen (with the Subject column), filters cover the whole table;
- text that XML cannot hold is replaced (U+FFFD), never crashes the writer; text Excel would take
  for a formula stays text; leading/trailing spaces survive;
- the CSV is what Python's csv module writes for the same values (QUOTE_MINIMAL), dates as ISO text;
- a second table of the same shape is never written with the first one's cells.
"""

from __future__ import annotations

import csv
import datetime as dt
import io

import openpyxl
import pandas as pd
import pytest

from reporting import edw, xlsx_stream

N = 80  # > 64 distinct strings in a column: the column-at-once path is used too


def _table() -> pd.DataFrame:
    subjects = [f"999{i:07d}" for i in range(N)]
    subjects[1] = "0012345678"          # leading zero: text
    subjects[2] = "=HYPERLINK(\"x\")"  # formula-like, in the many-strings column
    subjects[3] = " lead and tail "
    subjects[4] = "ctl\x01char"
    subjects[5] = "NN_H0005"
    dates = [dt.date(2020, 1, 1) + dt.timedelta(days=i) for i in range(N)]
    dates[6] = "null"
    dates[7] = "not applicable"
    diffs = [i - 40 for i in range(N)]
    diffs[8] = "not applicable"
    text = ["null"] * N
    text[0], text[1], text[2], text[3] = 'a<b&c>"d', "=SUM(A1)", "-5", "é – ü"
    text[9] = "nul\x00inside"
    scans = [str(i % 9 + 1) for i in range(N)]
    scans[10], scans[11] = "null", "12345678901"
    mixed = [None if i % 7 == 3 else 2.5 for i in range(N)]
    mixed[12] = dt.datetime(2021, 5, 6, 7, 8, 9)
    after = [f"after{i}" for i in range(N)]
    return pd.DataFrame({"Subject": subjects, "CT Date 1": dates, "CT Difference from Reference Date 1": diffs,
                         "CT ID 1": text, "CT Scans 1": scans, "Mixed": mixed, "After": after}, dtype=object)


@pytest.fixture(params=["mostly-distinct text written from the table's strings", "every column factorised"])
def small_blocks(request, monkeypatch):
    """Blocks of 7 rows, so row blocks begin and end mid-table (the real size is 2,000); and both ways
    of writing a column: four columns look mostly distinct in a sample of their first 10 rows
    (the real sample is 2,000 rows of a table of at least 8,000)."""
    monkeypatch.setattr(xlsx_stream, "ROWS_PER_BLOCK", 7)
    monkeypatch.setattr(edw, "ROWS_PER_BLOCK", 7)
    sample = 10 if request.param.startswith("mostly") else 10**9
    monkeypatch.setattr(xlsx_stream.Encoded, "SAMPLE", sample)
    xlsx_stream._LAST_ENCODED.clear()
    if sample == 10:
        assert set(xlsx_stream.Encoded(_table()).text) == {0, 3, 4, 6}  # Subject, CT ID 1, CT Scans 1, After


def test_xlsx_read_back_by_openpyxl(tmp_path, small_blocks):
    table = _table()
    path = edw.write_xlsx([("Master", table)], tmp_path / "m.xlsx", {"run_id": "r1", "slots": ["a", "b"]},
                          ["CT Scans 1"])
    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == ["Master", "Provenance"]
    ws = wb["Master"]
    assert ws.freeze_panes == "B2"
    assert ws.auto_filter.ref == f"A1:G{N + 1}"
    header = [c.value for c in ws[1]]
    assert header == list(table.columns) and all(c.font.b for c in ws[1])
    rows = list(ws.iter_rows(min_row=2, values_only=True))
    assert len(rows) == N
    # text stays text
    assert rows[0][0] == "9990000000" and rows[1][0] == "0012345678" and rows[5][0] == "NN_H0005"
    assert rows[3][0] == " lead and tail "
    assert rows[4][0] == "ctl\ufffdchar"
    # formula-like text is text, shown with the quote prefix (so editing it keeps it text)
    assert rows[2][0] == '=HYPERLINK("x")' and ws.cell(4, 1).data_type == "s" and ws.cell(4, 1).quotePrefix
    assert rows[1][3] == "=SUM(A1)" and ws.cell(3, 4).quotePrefix
    assert rows[2][3] == "-5" and not ws.cell(4, 4).quotePrefix  # a number-looking text is not a formula
    assert rows[0][3] == 'a<b&c>"d' and rows[3][3] == "é – ü" and rows[9][3] == "nul\ufffdinside"
    # dates are dates, formatted; markers are text
    assert rows[0][1] == dt.datetime(2020, 1, 1) and ws.cell(2, 2).number_format == "yyyy-mm-dd"
    assert not ws.cell(2, 1).quotePrefix
    assert rows[79][1] == dt.datetime(2020, 3, 20)
    assert rows[6][1] == "null" and rows[7][1] == "not applicable"
    # numbers
    assert rows[0][2] == -40 and rows[8][2] == "not applicable"
    assert rows[0][4] == 1 and rows[10][4] == "null" and rows[11][4] == "12345678901"
    assert rows[0][5] == 2.5 and rows[12][5] == dt.datetime(2021, 5, 6, 7, 8, 9)
    # an empty cell keeps the next ones in their columns
    assert rows[3][5] is None and rows[3][6] == "after3"
    assert [r[6] for r in rows] == [f"after{i}" for i in range(N)]
    prov = list(wb["Provenance"].iter_rows(values_only=True))
    assert prov == [("key", "value"), ("run_id", "r1"), ("slots", "a; b")]


def test_xlsx_via_pandas_matches_the_table(tmp_path, small_blocks):
    """pandas' own reader gives back the same strings as the table for the text columns."""
    table = _table()
    path = edw.write_xlsx([("Master", table)], tmp_path / "m.xlsx")
    back = pd.read_excel(path, sheet_name="Master", dtype=object, keep_default_na=False)
    assert list(back["After"]) == list(table["After"])
    assert list(back["Subject"])[5:] == list(table["Subject"])[5:]


def _csv_module(table: pd.DataFrame) -> str:
    """The reference: Python's csv module with the documented cell conversions (reporting.sanitise's
    csv_value: control characters and lone surrogates replaced)."""
    from reporting import sanitise

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(list(table.columns))
    for row in table.itertuples(index=False, name=None):
        out = []
        for v in row:
            if v is None or (isinstance(v, float) and v != v):
                out.append("")
            elif isinstance(v, dt.datetime):
                out.append(v.isoformat(sep=" "))
            elif isinstance(v, dt.date):
                out.append(v.isoformat())
            else:
                out.append(sanitise.csv_value(v))
        w.writerow(out)
    return buf.getvalue()


def test_csv_is_what_the_csv_module_writes(tmp_path, small_blocks):
    table = _table().drop(columns=["CT ID 1"])  # NUL: the csv module itself cannot write it
    text = edw.write_csv(table, tmp_path / "m.csv").read_text(encoding="utf-8")
    assert text == _csv_module(table)
    lines = text.splitlines()
    assert lines[1].startswith("9990000000,2020-01-01,-40,1,2.5,after0")
    assert lines[3].startswith('"=HYPERLINK(""x"")",2020-01-03,-38,')


def test_csv_quotes_as_the_rule_says(tmp_path):
    table = pd.DataFrame({"a": ['x,y', 'say "hi"', "two\nlines", "tab\tkept", "plain", None]}, dtype=object)
    text = edw.write_csv(table, tmp_path / "q.csv").read_text(encoding="utf-8")
    # a line break inside a value would break line-oriented readers: replaced (reporting.sanitise)
    assert text == 'a\n"x,y"\n"say ""hi"""\ntwo\ufffdlines\ntab\tkept\nplain\n\n'


def test_same_shape_tables_are_not_confused(tmp_path):
    """The master table's encoding is kept for its CSV; another table never reuses it."""
    a = pd.DataFrame({f"c{j}": [f"a{i}-{j}" for i in range(20_000)] for j in range(6)}, dtype=object)
    b = pd.DataFrame({f"c{j}": [f"b{i}-{j}" for i in range(20_000)] for j in range(6)}, dtype=object)
    edw.write_xlsx([("A", a)], tmp_path / "a.xlsx")
    edw.write_csv(a, tmp_path / "a.csv")
    edw.write_csv(b, tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_text().splitlines()[1] == ",".join(f"a0-{j}" for j in range(6))
    assert (tmp_path / "b.csv").read_text().splitlines()[-1] == ",".join(f"b19999-{j}" for j in range(6))
    ws = openpyxl.load_workbook(tmp_path / "a.xlsx", read_only=True)["A"]
    last = list(ws.iter_rows(min_row=20_001, values_only=True))
    assert last == [tuple(f"a19999-{j}" for j in range(6))]


def test_empty_tables_still_make_valid_workbooks(tmp_path):
    empty = pd.DataFrame(columns=["File", "Line", "Problem"])
    path = edw.write_xlsx([("Problems", empty), ("Nothing", pd.DataFrame())], tmp_path / "e.xlsx")
    wb = openpyxl.load_workbook(path)
    assert [c.value for c in wb["Problems"][1]] == ["File", "Line", "Problem"]
    assert wb["Problems"].max_row == 1
    assert edw.write_csv(empty, tmp_path / "e.csv").read_text() == "File,Line,Problem\n"
