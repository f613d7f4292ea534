"""Failure rates for imported lists (per batch, per modality) and rtlake's own failures, in the
CLI and the HTML report. Expected figures are worked out by hand in the comments."""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

from ingest.catalog import Catalog
from reporting.build import build_reports
from reporting.history import import_failure_file
from reporting.own_failures import own_failures, summary
from reporting.rates import failure_rates

BASELINE = {"CT": 0.07, "MR": 0.07}


def _run_r1(cat: Catalog) -> None:
    """Run r1 selected 40 CT (2 failed in the run) and 20 MR studies (all ingested)."""
    cat.execute("INSERT INTO runs (run_id, started_at, status) VALUES ('r1', '2024-01-01', 'done')")
    for mod, n, n_failed in (("CT", 40, 2), ("MR", 20, 0)):
        for i in range(n):
            cat.execute("INSERT INTO studies_seen (study_uid, hospital_id, accession, modalities, decision, state,"
                        " updated_run) VALUES (?, 'H001', ?, ?, 'include', ?, 'r1')",
                        [f"1.2.{mod}.{i}", f"A{mod}{i}", mod, "failed" if i < n_failed else "ingested"])


def _list(tmp_path: Path, name: str, studies: list[dict]) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(studies), encoding="utf-8")
    return p


def _rates(cat):
    return {(r.kind, r.run_id, r.modality): (r.attempted, r.failed, r.rate_text(), r.batch_of)
            for r in failure_rates(cat, BASELINE)}


def test_imported_lists_get_rates_per_batch_and_modality(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb")
    _run_r1(cat)
    # A: CSC ingested 30 MR studies on its own (none of them in rtlake's catalog); 3 failed.
    a = _list(tmp_path, "csc_mr.json", [{"accessionNumber": f"X{i}", "studyId": "", "studyInstanceUid": "",
                                         "modalitiesInStudy": ["MR"], "studyDate": "20240105"} for i in range(3)])
    import_failure_file(cat, a, "imp-1", attempted={"MR": 30})
    # B: names 2 CT studies r1 ingested, and one study without modality that r1 selected as MR.
    b = _list(tmp_path, "csc_r1.json", [
        {"studyInstanceUid": "1.2.CT.10", "accessionNumber": "ACT10", "studyId": "1", "modalitiesInStudy": ["CT"]},
        {"studyInstanceUid": "1.2.CT.11", "accessionNumber": "ACT11", "studyId": "1", "modalitiesInStudy": ["CT"]},
        {"accessionNumber": "AMR5", "studyId": "", "studyInstanceUid": ""}])
    res_b = import_failure_file(cat, b, "imp-2")
    assert res_b.batch_run == "r1" and "3 of 3 records" in res_b.batch_note
    # C: 50 studies sent, modality split unknown; 2 failed (one CT, one without modality).
    c = _list(tmp_path, "csc_total.json", [
        {"accessionNumber": "Y1", "studyId": "", "modalitiesInStudy": ["CT"]}, {"accessionNumber": "Y2", "studyId": ""}])
    import_failure_file(cat, c, "imp-3", attempted={"*": 50})
    # D: no size given, names nothing rtlake selected.
    d = _list(tmp_path, "csc_unknown.json", [{"accessionNumber": "Z1", "studyId": "", "modalitiesInStudy": ["MR"]}])
    res_d = import_failure_file(cat, d, "imp-4")
    assert res_d.batch_run is None
    assert _rates(cat) == {
        # r1: CT 2 failed in the run + 2 named by list B = 4/40; MR: AMR5 named by B = 1/20
        ("run", "r1", "CT"): (40, 4, "10.0%", ""),
        ("run", "r1", "MR"): (20, 1, "5.0%", ""),
        ("list", "csc_mr.json", "MR"): (30, 3, "10.0%", ""),
        # B answers r1's selection: CT 2/40, MR (AMR5's modality from the selection) 1/20
        ("list", "csc_r1.json", "CT"): (40, 2, "5.0%", "r1"),
        ("list", "csc_r1.json", "MR"): (20, 1, "5.0%", "r1"),
        ("list", "csc_total.json", "CT"): (None, 1, "unknown", ""),
        ("list", "csc_total.json", "unknown"): (None, 1, "unknown", ""),
        ("list", "csc_total.json", "all"): (50, 2, "4.0%", ""),
        ("list", "csc_unknown.json", "MR"): (None, 1, "unknown", ""),
    }
    stored = cat.query_dicts("SELECT path, batch_run, attempted FROM failure_imports ORDER BY imported_at, path")
    assert {Path(r["path"]).name: (r["batch_run"], r["attempted"]) for r in stored} == {
        "csc_mr.json": (None, '{"MR": 30}'), "csc_r1.json": ("r1", None), "csc_total.json": (None, '{"*": 50}'),
        "csc_unknown.json": (None, None)}
    cat.close()


def test_a_list_out_of_line_warns():
    from reporting.rates import RunRate

    r = RunRate("csc_mr.json", "MR", 30, 9, 0.07, kind="list")  # 30 % of 30, alarm above 7 % + 3·4.7 % = 21.0 %
    assert r.out_of_line and "failure list csc_mr.json" in r.warning() and "30.0% (9/30)" in r.warning()
    assert not RunRate("x", "MR", None, 9, 0.07, kind="list").out_of_line  # unknown size: no alarm, no 0 %


class _Text(HTMLParser):
    def __init__(self):
        super().__init__()
        self.text: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._row: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("class") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._row.append("")

    def handle_endtag(self, tag):
        if tag == "tr" and self._row is not None and self._table is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        self.text.append(data)
        if self._row is not None and self._row:
            self._row[-1] += data


def _own(cat: Catalog) -> None:
    cat.record_failure("r1", "harvest", "patient:H777", "C-FIND timed out", error_type="SourceUnavailable",
                       hospital_id="H777")
    cat.record_failure("r1", "retrieve", "1.2.CT.0", "C-MOVE failed: 0xA701", study_uid="1.2.CT.0")
    cat.record_failure("r1", "store", "1.2.CT.1", "XNAT 409 Session already exists", study_uid="1.2.CT.1")
    cat.record_failure("r1", "retrieve", "1.2.CT.5", "C-MOVE failed: 0xA702", study_uid="1.2.CT.5")
    cat.resolve_failures("r2", "1.2.CT.5")


def test_report_shows_own_failures_beside_imported_ones(reporting_env, tmp_path):
    cfg, cat = reporting_env
    _run_r1(cat)
    _own(cat)
    import_failure_file(cat, _list(tmp_path, "csc_mr.json", [
        {"accessionNumber": f"X{i}", "studyId": "", "modalitiesInStudy": ["MR"], "studyDate": "20240105"}
        for i in range(3)]), "imp-1", attempted={"MR": 30})
    own = own_failures(cat)
    assert summary(own) == "3 open (harvest 1, retrieve 1, store 1), 1 resolved"
    page = build_reports(cfg, cat, run_id="r1")[-1].read_text(encoding="utf-8")
    p = _Text()
    p.feed(page)
    text = " ".join(p.text)
    assert "0 failed studies on record" not in text
    assert "3 failed studies in imported failure lists" in text
    assert "rtlake's own failures: 3 open (harvest 1, retrieve 1, store 1), 1 resolved" in text
    assert p.tables["own-by-stage"][1:] == [["harvest (PACS query)", "1", "0"], ["retrieve (PACS transfer)", "1", "1"],
                                            ["store", "1", "0"]]
    open_rows = p.tables["own-open"][1:]
    assert sorted((r[0], r[1], r[2], r[3]) for r in open_rows) == [
        ("harvest (PACS query)", "patient:H777", "NN_H777", "C-FIND timed out"),  # the admin's report names the subject
        ("retrieve (PACS transfer)", "1.2.CT.0", "", "C-MOVE failed: 0xA701"),
        ("store", "1.2.CT.1", "", "XNAT 409 Session already exists")]
    assert [(r[1], r[-1]) for r in p.tables["own-resolved"][1:]] == [("1.2.CT.5", "r2")]
    rates = {(r[0], r[1], r[3]): r[4:7] for r in p.tables["rates"][1:]}
    assert rates[("list", "csc_mr.json", "MR")] == ["30", "3", "10.0%"]  # not 0.0 % beside 3 MR failures
    assert rates[("run", "r1", "CT")] == ["40", "2", "5.0%"]


def test_cli_list_shows_own_failures(tmp_path):
    cfg = tmp_path / "rtlake.toml"
    cfg.write_text('[project]\nstate_dir = "state"\n')
    from ingest.config import load_config

    cat = Catalog(load_config(cfg).catalog_path)
    _own(cat)
    cat.close()

    def run(*args):
        return subprocess.run([sys.executable, "-m", "ingest.cli", "failures", "list", "-c", str(cfg), *args],
                              capture_output=True, text=True, cwd=tmp_path, timeout=120,
                              env={"COLUMNS": "250", "PATH": "/usr/bin:/bin"})

    r = run()
    assert r.returncode == 0, r.stderr
    assert "rtlake's own failures: 3 open (harvest 1, retrieve 1, store 1), 1 resolved" in r.stdout
    assert "C-FIND timed out" in r.stdout and "XNAT 409 Session already exists" in r.stdout
    assert "0xA702" not in r.stdout and "1 resolved failures not shown" in r.stdout
    r = run("--include-resolved")
    assert "0xA702" in r.stdout and "resolved (r2)" in r.stdout
    assert "patient:<hospital id>" in r.stdout and "H777" not in r.stdout  # no hospital ID on the console
    r = run("--subjects")
    assert "patient:H777" in r.stdout and "NN_H777" in r.stdout
