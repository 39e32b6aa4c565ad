"""The mypyc build of the parser against its own Python source: same records for every text,
and a build of other source than the one beside it is not used."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import streamproc
from streamproc._compiled import MODULES, parser_build
from streamproc.parse.parser import parse_turn
from streamproc.io.sources import SAMPLE, iter_rows

TAGS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
PIECES = TAGS + [
    "<", ">", "\n", " ", "x", "🚀", "错误", '"', "{", "}", '{"name": "t", "arguments": {"a": 1}}',
    '{"name": "t", "arguments": "{\\"a\\": 1}"}', '{"tool_call_id": "functions.t:0", "name": "t", "content": {"ok": true}}',
    '{"name": "</tool_call>", "arguments": {}}', "[1, 2]", '"just a string"', "{bad json",
]
PURE = """
import json, sys
from streamproc._compiled import parser_build
from streamproc.parse.parser import parse_turn
assert parser_build() == "python", parser_build()
for role, text in json.load(sys.stdin):
    print(repr(parse_turn(role, text)))
"""

compiled_only = pytest.mark.skipif(
    parser_build() != "mypyc",
    reason="the parser is not compiled in this install (no C compiler or mypyc, or STREAMPROC_PURE_PYTHON=1)",
)


def tag_soup(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Random texts made of tags, JSON bodies and noise: every state of the parser and its
    fallbacks, many times over."""
    rnd = random.Random(seed)
    roles = ["gpt", "tool", "human", "system"]
    return [(rnd.choice(roles), "".join(rnd.choices(PIECES, k=rnd.randint(0, 24)))) for _ in range(n)]


def pure_python(turns: list[tuple[str, str]]) -> list[str]:
    env = {**os.environ, "STREAMPROC_PURE_PYTHON": "1"}
    out = subprocess.run(
        [sys.executable, "-c", PURE], input=json.dumps(turns), env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.splitlines()


def assert_same_records(turns: list[tuple[str, str]]) -> None:
    compiled = [repr(parse_turn(role, text)) for role, text in turns]
    python = pure_python(turns)
    assert len(python) == len(turns)
    for (role, text), c, p in zip(turns, compiled, python):
        assert c == p, (role, text)


@compiled_only
def test_compiled_parser_equals_its_source():
    assert_same_records(tag_soup(20_000) + [(f, v) for row in iter_rows([SAMPLE]) for f, v in row.conversations])


@compiled_only
def test_compiled_parser_equals_its_source_on_real_traces(real_rows, kimi_fragments):
    turns = [(t["from"], t["value"]) for row in real_rows for t in row["conversations"]]
    assert_same_records(turns + [(f["from"], f["value"]) for f in kimi_fragments])


@compiled_only
def test_a_build_of_other_source_is_not_used(tmp_path):
    pkg = Path(streamproc.__file__).parent
    copy = tmp_path / "streamproc"
    shutil.copytree(pkg, copy, ignore=shutil.ignore_patterns("data", "__pycache__"))
    probe = "from streamproc._compiled import parser_build; print(parser_build())"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}

    def build_in_use() -> tuple[str, str]:
        run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True, cwd=tmp_path)
        return run.stdout.strip(), run.stderr

    assert build_in_use() == ("mypyc", "")
    source = copy.joinpath(*MODULES[1].split(".")[1:]).with_suffix(".py")
    source.write_text(source.read_text() + "# edited after the build\n")
    used, warned = build_in_use()
    assert used == "python" and "changed since the build" in warned
    source.write_text(source.read_text().removesuffix("# edited after the build\n"))  # file times do not matter
    assert build_in_use() == ("mypyc", "")


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler here, so pip installs the parser as Python")
@pytest.mark.skipif(os.environ.get("STREAMPROC_PURE_PYTHON") == "1", reason="STREAMPROC_PURE_PYTHON=1 asks for the source")
def test_an_install_with_a_compiler_runs_the_compiled_parser():
    # The README's speed figures are the compiled parser's; an install that quietly fell back to
    # Python (a type error mypyc refused, a stale build) should not pass for it.
    assert parser_build() == "mypyc"


def test_version_names_the_parser_build(capsys):
    from streamproc.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"streamproc {streamproc.__version__} (parser: {parser_build()})"


LAYOUTS_PURE = """
import json, sys
from streamproc.io.layouts import row_from_record
from streamproc.records import Location
for d in json.load(sys.stdin):
    print(repr(row_from_record(d, Location("x", 0), "x").chat.turns))
"""


@compiled_only
def test_compiled_chat_layout_reader_equals_its_source(real_dir):
    from streamproc.io.layouts import row_from_record
    from streamproc.records import Location

    rows = [json.loads(line) for p in sorted((real_dir / "chat-layout").glob("*.jsonl")) for line in p.open()]
    env = {**os.environ, "STREAMPROC_PURE_PYTHON": "1"}
    python = subprocess.run([sys.executable, "-c", LAYOUTS_PURE], input=json.dumps(rows), env=env, capture_output=True, text=True, check=True)
    assert python.stdout.splitlines() == [repr(row_from_record(d, Location("x", 0), "x").chat.turns) for d in rows]
