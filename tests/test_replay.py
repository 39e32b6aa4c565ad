"""`streamproc replay` on real traces: steps, the command loop fed by stdin, and key presses on a terminal."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from streamproc.cli import main
from streamproc.parse.parser import parse_trace
from streamproc.views.render import to_text
from streamproc.views.replay import play, step_lines, steps


@pytest.fixture(scope="module")
def traces(real_rows):
    return [parse_trace(r) for r in real_rows]


@pytest.fixture(scope="module")
def busy(traces):
    """A real trace with many steps and tool calls."""
    return max(traces, key=lambda t: (len(steps(t)), len(t.calls)))


def test_each_assistant_turn_is_a_step_and_every_turn_is_in_one(traces):
    for trace in traces:
        all_steps = steps(trace)
        assert [s.turn for s in all_steps] == [i for i, t in enumerate(trace.turns) if t.role == "assistant"]
        assert [s.number for s in all_steps] == list(range(1, len(all_steps) + 1))
        placed = sorted(i for s in all_steps for i in (*s.before, s.turn, *s.after))
        assert placed == [i for i, t in enumerate(trace.turns) if t.role != "system"]


def test_a_step_shows_each_call_followed_by_its_response(busy):
    for step in steps(busy):
        text = to_text(step_lines(busy, step, 99))
        turn = busy.turns[step.turn]
        pos = 0
        for k, call in enumerate(turn.tool_calls):
            n = busy.calls.index((step.turn, k))
            pos = text.index(f"── CALL #{n + 1} {call.name}", pos)
            if call.response is not None:
                pos = text.index(f"── RESULT #{n + 1} ", pos)
        for ti in step.before:
            if busy.turns[ti].role == "user":
                assert f"── USER (turn {ti + 1})" in text


def _shown(out: str) -> list[int]:
    return [int(m) for m in re.findall(r"━━ STEP (\d+)/", out)]


def test_play_follows_next_previous_jump_and_quit(busy):
    total = len(steps(busy))
    out = io.StringIO()
    last = play(busy, ["n", "", "p", "4", str(total + 5), "x", "p", "q", "n"], out)
    text = out.getvalue()
    assert _shown(text) == [1, 2, 3, 2, 4, 3]
    assert last == 3
    assert f"no step {total + 5}: steps are 1 to {total}" in text
    assert "unknown command 'x'" in text
    out = io.StringIO()
    play(busy, ["p", "n"], out, start=total)
    assert _shown(out.getvalue()) == [total, total - 1, total]


def test_play_ends_at_end_of_input_and_stays_at_the_last_step(busy):
    total = len(steps(busy))
    out = io.StringIO()
    assert play(busy, [str(total), "n"], out) == total
    assert "already at the last step" in out.getvalue()


def test_replay_cli_step_and_piped_keys(real_row_files, monkeypatch, capsys):
    path = real_row_files[-1]
    rows = [json.loads(line) for line in path.open(encoding="utf-8")]
    index = max(range(len(rows)), key=lambda i: len(rows[i]["conversations"]))
    trace = parse_trace(rows[index], source=path.name.removesuffix(".jsonl"))
    all_steps = steps(trace)
    assert main(["replay", str(path), "--id", trace.id, "--step", "3", "--workers", "1"]) == 0
    assert capsys.readouterr().out == to_text(step_lines(trace, all_steps[2], len(all_steps)))
    assert main(["replay", str(path), "--id", trace.id, "--step", str(len(all_steps) + 1)]) == 2
    assert f"has {len(all_steps)} steps" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n5\nq\n"))
    assert main(["replay", str(path), "--index", str(index)]) == 0
    assert _shown(capsys.readouterr().out) == [1, 2, 5]


def test_replay_on_a_terminal_acts_on_single_keys(real_row_files):
    """A real pseudo-terminal: n and p act without Enter, digits wait for it, q quits."""
    path = real_row_files[-1]
    rows = [json.loads(line) for line in path.open(encoding="utf-8")]
    index = max(range(len(rows)), key=lambda i: len(rows[i]["conversations"]))
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamproc", "replay", str(path), "--index", str(index), "--color", "never"],
        stdin=slave, stdout=slave, stderr=slave, close_fds=True, env={**os.environ, "COLUMNS": "200"},
    )
    os.close(slave)
    seen = b""

    def until(pattern: bytes, timeout: float = 30) -> None:
        nonlocal seen
        end = time.monotonic() + timeout
        while pattern not in seen:
            left = end - time.monotonic()
            assert left > 0, f"{pattern!r} never appeared; got {seen[-500:]!r}"
            if select.select([master], [], [], left)[0]:
                try:
                    seen += os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break

    try:
        until(b"[step 1/")
        os.write(master, b"n")
        until(b"[step 2/")
        os.write(master, b"1")
        os.write(master, b"2")
        time.sleep(0.3)
        assert b"[step 12/" not in seen  # digits wait for Enter
        os.write(master, b"\r")
        until(b"[step 12/")
        os.write(master, b"p")
        until(b"[step 11/")
        os.write(master, b"q")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
