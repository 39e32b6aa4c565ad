"""Unix manners of the command line, on the built-in sample: `-` is stdout (and then stdout holds
the data alone), bare and mistyped commands, --quiet, help, and option values refused at parse time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from streamproc.cli import COMMANDS, build_parser, main
from streamproc.io.sources import SAMPLE

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streamproc", *args], capture_output=True, cwd=cwd, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


SAMPLE_ROWS = pq.ParquetFile(SAMPLE).metadata.num_rows


def test_parse_to_stdout_writes_jsonl_there_and_nothing_else(tmp_path):
    p = cli("parse", "-o", "-", "--workers", "2", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    records = [json.loads(line) for line in p.stdout.splitlines()]
    assert len(records) == SAMPLE_ROWS and all(r["turns"] for r in records)
    assert f"{SAMPLE_ROWS} rows read, {SAMPLE_ROWS} parsed, 0 rejected" in p.stderr.decode()
    assert list(tmp_path.iterdir()) == []  # no file named `-`, no temporary left


def test_stats_json_to_stdout_is_the_json_alone(tmp_path):
    p = cli("stats", "--json", "-", "--workers", "1", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)  # would fail with the tables printed before it
    assert doc["traces"] == SAMPLE_ROWS and doc["rows"]["parsed"] == SAMPLE_ROWS
    assert list(tmp_path.iterdir()) == []


def test_export_to_stdout_says_how_many_records_it_wrote(tmp_path):
    p = cli("export", "-o", "-", "--format", "pairs", "--workers", "1", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    n = len(p.stdout.splitlines())
    assert n > SAMPLE_ROWS  # one pair per assistant turn
    assert f"wrote {n:,} pairs records from {SAMPLE_ROWS} traces to stdout" in p.stderr.decode()
    out = tmp_path / "m.parquet"
    assert main(["export", "-o", str(out), "--workers", "1"]) == 0
    assert pq.ParquetFile(out).metadata.num_rows == SAMPLE_ROWS


def test_quiet_prints_nothing_but_the_data(tmp_path, capsys):
    assert main(["parse", "-o", str(tmp_path / "p.jsonl"), "-q", "--workers", "1"]) == 0
    assert capsys.readouterr() == ("", "")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n')
    assert main(["parse", str(bad), "-o", str(tmp_path / "b.jsonl"), "-q"]) == 0
    assert "1 rejected" in capsys.readouterr().err  # errors still are
    assert os.environ.get("STREAMPROC_PROGRESS") is None  # --quiet leaves the environment as it was


def test_bare_command_prints_help_and_a_typo_gets_a_suggestion():
    bare = cli()
    assert bare.returncode == 0 and b"COMMAND" in bare.stdout and all(c.encode() in bare.stdout for c in COMMANDS)
    typo = cli("stat")
    assert typo.returncode == 2
    assert b"unknown command 'stat'; did you mean 'stats'?" in typo.stderr and b"Traceback" not in typo.stderr
    assert b"did you mean 'replay'" in cli("replya").stderr
    assert b"commands: run, parse" in cli("zzz").stderr


@pytest.mark.parametrize("name", [c for c in COMMANDS])
def test_every_command_has_a_description_examples_and_input_options_last(name):
    parser = build_parser(name)
    sub = next(a for a in parser._subparsers._group_actions).choices[name]
    text = sub.format_help()
    assert sub.description and "examples:\n  streamproc" in text or "examples:\n  torchrun" in text
    if "input options:" in text:
        assert text.index("options:\n") < text.index("input options:")
    for word in ("guide",):
        assert word not in text.lower()


def test_options_without_help_are_gone():
    for name in COMMANDS:
        sub = next(a for a in build_parser(name)._subparsers._group_actions).choices[name]
        for action in sub._actions:
            if action.dest in ("split", "rows", "seed", "title"):
                assert action.help and ("default" in action.help or action.required), (name, action.dest)


@pytest.mark.parametrize(
    "args, option",
    [
        (["parse", "-o", "x.jsonl", "--workers", "0"], "--workers"),
        (["stats", "--workers", "-3"], "--workers"),
        (["parse", "-o", "x.jsonl", "--limit", "-1"], "--limit"),
        (["pack", "-o", "d", "--seq-len", "0"], "--seq-len"),
        (["pack", "-o", "d", "--buffer-size", "0"], "--buffer-size"),
        (["run", "--eval-fraction", "1.0"], "--eval-fraction"),
        (["pack", "-o", "d", "--eval-fraction", "abc"], "--eval-fraction"),
        (["synth", "--rows", "-5", "-o", "x.parquet"], "--rows"),
    ],
)
def test_values_out_of_range_are_usage_errors(args, option, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and ("must be" in err or "expected a number" in err)
    assert list(tmp_path.iterdir()) == []


def test_limit_makes_the_progress_bar_count_rows(tmp_path):
    p = cli("parse", "--limit", "50", "-o", str(tmp_path / "p.jsonl"), "--workers", "1", env={"STREAMPROC_PROGRESS": "1"})
    assert p.returncode == 0
    err = p.stderr.decode()
    assert "50/50" in err and "rows/s" in err and "MB" not in err.split("rejected")[0]


def test_a_closed_pipe_ends_quietly():
    """`streamproc ls | head -1`: the reader goes away early; no BrokenPipeError traceback."""
    p = subprocess.Popen([sys.executable, "-m", "streamproc", "ls", "-q", "--workers", "1"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    first = p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=120) == 0 and first.count(b"\t") == 7
    assert b"Traceback" not in err and b"Broken" not in err


def test_stats_without_an_output_writes_no_rejects_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "in.jsonl"
    bad.write_text('{"id": 1}\n')
    assert main(["stats", str(bad), "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert "1 rejected" in err and "--rejects FILE keeps them all" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
    assert main(["stats", str(bad), "--rejects", "r.jsonl"]) == 0
    assert json.loads((tmp_path / "r.jsonl").read_text())["row"] == 0
