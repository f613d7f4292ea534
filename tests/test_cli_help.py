"""`--help` at 80 columns, for every command: whole option names, literal [section] names.

Scenarios (from the issue, as a new user met them): rich markup ate "[source]" ("Override
.kind."), option names were cut ("--supersample-be…"), and nothing said which config section
a command reads. The walk covers every command the app has, including ones added later, so a
new command cannot slip through with garbled help.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from ingest.cli import app
from ingest.config import Config

from pydantic import BaseModel


def _sections(model: type[BaseModel] = Config, prefix: str = "") -> set[str]:
    out = set()
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.add(prefix + name)
            out |= _sections(ann, f"{prefix}{name}.")
    return out


SECTIONS = _sections()
ROOT = typer.main.get_command(app)


def _walk(cmd, path: tuple[str, ...] = ()):
    # typer ships its own copy of click, so duck-type rather than isinstance(click.Group)
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _walk(sub, (*path, name))
    else:
        yield path, cmd


COMMANDS = dict(_walk(ROOT))

#: Commands that read no config file, by design (their help says so).
NO_CONFIG = {("rt", "link"), ("pseudo", "check"), ("config-reference",), ("init",)}

#: Sections each command's help must name (hand-written from what each command reads).
MUST_NAME = {
    ("update",): ["[source]", "[store]", "[inputs]", "[criteria]", "[report]"],
    ("report",): ["[report]", "[project]"],
    ("check-config",): ["[inputs]", "[criteria]", "[source.folder]", "[pseudo]"],
    ("fetch",): ["[source]", "[source.transfer]", "[source.dimse]"],
    ("rt", "convert"): ["[rt]", "[store.lake]", "[project]"],
    ("failures", "list"): ["[project]", "[harvest]"],
    ("failures", "rates"): ["[report]", "[project]"],
    ("failures", "import"): ["[inputs]", "[harvest]", "[report]"],
    ("failures", "sheet"): ["[report]", "[project]"],
    ("export", "sessions"): ["[store.xnat]", "[project]"],
    ("pseudo", "run"): ["[pseudo]"],
    ("pseudo", "lookup"): ["[pseudo]"],
    ("review", "export"): ["[project]"],
    ("review", "import"): ["[criteria]"],
    ("demo-data",): ["[source]", "[store]"],
    ("init",): ["[project]", "[rt]", "[inputs]"],
    ("check",): ["[source]", "[store]", "[report]"],
    ("status",): ["[project]"],
}


def _help(path: tuple[str, ...]) -> str:
    res = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    return res.output


def test_the_walk_finds_every_command():
    # a floor, not the list: the walk must see nested sub-apps (a broken mount would hide them)
    for must in [("update",), ("init",), ("check-config",), ("failures", "list"), ("rt", "convert"),
                 ("pseudo", "run"), ("export", "sessions"), ("review", "import"), ("fetch",)]:
        assert must in COMMANDS


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=lambda p: " ".join(p))
def test_help_at_80_columns(path):
    text = _help(path)
    cmd = COMMANDS[path]
    assert not re.search(r"-[\w-]*(…|\.\.\.)", text), text  # no option name cut short
    for line in text.splitlines():
        assert len(line) <= 80, f"{len(line)} columns: {line!r}"
    # every option name appears whole, not cut and not swallowed
    for p in cmd.params:
        if p.param_type_name == "option":
            for name in [*p.opts, *p.secondary_opts]:
                assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), f"{name} missing from\n{text}"
    # every [section] written in the help strings survives rendering literally
    written = " ".join(filter(None, [cmd.help, cmd.epilog, *(getattr(p, "help", None) or "" for p in cmd.params)]))
    for token in set(re.findall(r"\[[a-z_.]+\]", written)):
        if token[1:-1] in SECTIONS:
            assert token in text, f"{token} lost from help:\n{text}"
    named = {t for t in re.findall(r"\[([a-z_.]+)\]", text) if t in SECTIONS}
    if path in NO_CONFIG:
        assert "no config file" in text.lower() or path == ("init",), text
    else:
        assert named, f"help names no config section:\n{text}"
    for token in MUST_NAME.get(path, []):
        assert token in text, f"{token} not named:\n{text}"


def test_group_help_lists_every_subcommand_whole():
    text = _help(())
    for name in ROOT.commands:
        assert re.search(rf"^  {re.escape(name)}\s", text, re.M), name
    assert "rtlake init" in text


def test_help_from_a_real_process_at_80_columns():
    """The installed entry point, as a user types it (COLUMNS=80, output a pipe)."""
    r = subprocess.run([sys.executable, "-m", "ingest.cli", "rt", "convert", "--help"], capture_output=True,
                       text=True, env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"}, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "--supersample-below" in r.stdout and "[rt] output" in r.stdout
    assert max(len(line) for line in r.stdout.splitlines()) <= 80


def test_bad_choice_is_a_usage_error_not_a_config_error(tmp_path):
    (tmp_path / "rtlake.toml").write_text("")
    res = CliRunner().invoke(app, ["update", "-c", str(tmp_path / "rtlake.toml"), "--store", "xnatt"])
    assert res.exit_code == 2
    assert "--store" in res.output and "xnatt" in res.output
    assert "config error" not in res.output
    assert not (tmp_path / "state").exists()
