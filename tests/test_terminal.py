"""The terminal views under a real pseudo-terminal at 80 and 200 columns, on the built-in sample and
the real traces: stats tables that fit, colour only on a terminal, `ls` and its filters, id
prefixes, the pager, wrapped lines, and `replay` redrawing in place with arrow keys."""

from __future__ import annotations

import dataclasses
import fcntl
import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from streamproc.cli import main
from streamproc.views.listing import summarize, unique_prefix_length
from streamproc.parse.parser import parse_trace
from streamproc.views.render import status, to_text, trace_lines
from streamproc.analyze.metrics import Stats, add_trace
from streamproc.views import report
from streamproc.io.sources import plan, read
from streamproc.views.tables import QUALITY
from streamproc.views.terminal import print_tables, wrap

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    """A command on a pseudo-terminal of the given size; `until` waits for output."""

    def __init__(self, args: list[str], cols: int, rows: int = 40, env: dict | None = None):
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": str(cols), "LINES": str(rows), "TERM": "xterm"}
        full_env.pop("NO_COLOR", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "streamproc", *args], stdin=slave, stdout=slave,
                                     stderr=slave, close_fds=True, env={**full_env, **(env or {})})
        os.close(slave)
        self.seen = b""

    def until(self, pattern: bytes, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while pattern not in self.seen:
            left = end - time.monotonic()
            assert left > 0, f"{pattern!r} never appeared; got {self.seen[-600:]!r}"
            if select.select([self.master], [], [], left)[0]:
                try:
                    data = os.read(self.master, 65536)
                except OSError:
                    data = b""
                if not data:
                    assert pattern in self.seen, f"{pattern!r} never appeared; got {self.seen[-600:]!r}"
                self.seen += data

    def finish(self, timeout: float = 120) -> str:
        """Everything the command wrote, once it has exited."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if select.select([self.master], [], [], 0.2)[0]:
                try:
                    data = os.read(self.master, 65536)
                except OSError:
                    break
                if not data:
                    break
                self.seen += data
            elif self.proc.poll() is not None:
                break
        self.proc.wait(timeout=30)
        os.close(self.master)
        return self.seen.decode("utf-8", errors="replace").replace("\r\n", "\n")

    def write(self, data: bytes) -> None:
        os.write(self.master, data)


def run_tty(args: list[str], cols: int, rows: int = 40, env: dict | None = None) -> str:
    return Terminal(args, cols, rows, env).finish()


def visible(text: str) -> list[str]:
    return [ANSI.sub("", line) for line in text.split("\n")]


# ----------------------------------------------------------------------------- stats


@pytest.mark.parametrize("cols", [80, 200])
def test_stats_tables_fit_the_terminal_and_colour_what_needs_attention(cols):
    out = run_tty(["stats", "--workers", "1", "-q"], cols)
    lines = visible(out)
    assert max(len(line) for line in lines) <= cols
    text = "\n".join(lines)
    # The sample has two sources: at 200 columns one Figures table holds all, at 80 they stack.
    if cols == 200:
        assert re.search(r"^figure\s+all\s+glm-5\.1\s+kimi$", text, re.M)
    else:
        assert [m for m in re.findall(r"^Figures: (.+)$", text, re.M)] == ["all", "glm-5.1", "kimi"]
    # The sample has no data-quality problem: one line, not seven rows of zeros.
    assert "no data-quality problems" in text
    assert not any(q in text for q in ("malformed tool calls", "calls with no response"))
    assert "\x1b[1;31m" in out  # failures in red
    assert "Top 10 tools" in text and "terminal" in text
    plain = run_tty(["stats", "--workers", "1", "-q"], cols, env={"NO_COLOR": "1"})
    assert "\x1b[" not in plain and visible(plain) == lines


ODD = {"id": "odd", "conversations": [
    {"from": "human", "value": "go"},
    {"from": "gpt", "value": '<tool_call>{"arguments": {}}</tool_call>'},  # no name: malformed
    {"from": "tool", "value": '<tool_response>{"content": {"error": "boom"}}</tool_response>'},  # failed
]}


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_and_folding_follow_the_figures_keys_not_their_labels(monkeypatch):
    """Renaming every label changes what is printed, never which rows are red, yellow or folded."""
    monkeypatch.setattr(report, "FIGURES", [dataclasses.replace(f, label=f"<{f.label.upper()}>") for f in report.FIGURES])
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("NO_COLOR", raising=False)
    stats = Stats()
    add_trace(stats.source("s"), parse_trace(ODD))
    out = _Tty()
    print_tables(stats, 10, out)
    text = out.getvalue()
    assert re.search(r"<FAILED TOOL RESPONSES>\s+\x1b\[1;31m\s*1 of 1", text)  # a failure: red
    assert re.search(r"<MALFORMED TOOL CALLS>\s+\x1b\[33m\s*1\x1b", text)  # a data-quality problem: yellow
    assert "<CALLS WITH NO RESPONSE>" not in text  # a check that found nothing is folded
    quiet = sum(f.mark == QUALITY for f in report.FIGURES) - 1
    assert f"{quiet} other data-quality checks found nothing" in text
    assert re.search(r"<TRACES>\s+1\n", ANSI.sub("", text))


def test_stats_piped_is_plain_and_unwrapped(capsys):
    assert main(["stats", "--workers", "1", "-q"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out
    assert re.search(r"^reasoning chars per trace \(mean / p50 / p90 / max\)\s+\S", out, re.M)  # never wrapped
    assert not any(line.endswith(" ") for line in out.split("\n"))


# ----------------------------------------------------------------------------- ls and ids


@pytest.fixture(scope="module")
def sample_rows():
    return [r for shard in plan([]) for r in read(shard)]


def test_ls_filters_as_the_page_does(sample_rows, capsys):
    summaries = {r.id: summarize(r) for r in sample_rows}
    assert main(["ls", "--failed-tool", "browser_navigate", "--workers", "2"]) == 0
    printed = capsys.readouterr()
    listed = [line.split("\t") for line in printed.out.splitlines()]
    ids = [f[0] for f in listed]
    expected = [
        r.id for r in sample_rows
        if any(status(t.response(i)) and t.response(i).name == "browser_navigate" for t in [parse_trace(r)] for i in range(len(t.responses)))
    ]
    assert ids == expected and len(ids) > 3
    assert f"{len(ids)} of {len(sample_rows)} traces match" in printed.err
    # "called browser_navigate and had an error" is a wider set: another tool may have failed
    assert main(["ls", "--tool", "browser_navigate", "--errors"]) == 0
    wider = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert set(ids) < set(wider)
    assert all("browser_navigate" in summaries[i].tools and summaries[i].errors for i in wider)
    # source, category, failure class and text, all at once
    assert main(["ls", "--from", "kimi", "--category", "browser automation", "--failure", "error_field", "--search", "HTTPBIN"]) == 0
    for line in capsys.readouterr().out.splitlines():
        s = summaries[line.split("\t")[0]]
        row = next(r for r in sample_rows if r.id == s.id)
        assert s.source == "kimi" and s.category == "Browser Automation" and "error_field" in s.classes
        assert "httpbin" in (s.task + "".join(v for _, v in row.conversations)).lower()
    assert main(["ls", "--search", "no such text anywhere, surely"]) == 1
    assert "0 of 300 traces match" in capsys.readouterr().err


def test_ls_on_a_terminal_prints_short_ids_that_show_accepts(sample_rows):
    out = run_tty(["ls", "--failure", "traceback", "--workers", "1", "--no-pager", "-q"], 80)
    lines = visible(out)
    assert max(len(line) for line in lines) <= 80
    prefix = unique_prefix_length([r.id for r in sample_rows])
    rows = [line for line in lines[1:] if line.strip()]
    assert rows and all(len(line.split()[0]) == prefix for line in rows)
    short = rows[0].split()[0]
    full = next(r.id for r in sample_rows if r.id.startswith(short))
    by_prefix = subprocess.run([sys.executable, "-m", "streamproc", "show", "--id", short, "-q"], capture_output=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert by_prefix.returncode == 0 and f"id: {full}".encode() in by_prefix.stdout


def test_ambiguous_prefix_names_the_ids_and_shared_ids_are_reported(sample_rows, tmp_path, capsys):
    prefix = sample_rows[0].id[:1]
    matching = sorted({r.id for r in sample_rows if r.id.startswith(prefix)})
    assert main(["show", "--id", prefix]) == 2
    err = capsys.readouterr().err
    assert f"id prefix {prefix!r} matches {len(matching)} traces: {matching[0]}" in err
    # Two files hold the same id: the first is shown, the other's file and row are named.
    raw = {"id": "dup-1", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps(raw) + "\n")
    b.write_text(json.dumps({"id": "x"}) + "\n" + json.dumps({**raw, "conversations": raw["conversations"][:1]}) + "\n")
    assert main(["show", str(a), str(b), "--id", "dup", "--workers", "2"]) == 0
    printed = capsys.readouterr()
    assert "hello" in printed.out
    assert f"2 rows have id 'dup-1': showing {a}:row 0; the others: {b}:row 1" in printed.err


def test_unique_prefix_length():
    assert unique_prefix_length(["abcdefgh1", "abcdefgh2", "zz"]) == 9
    assert unique_prefix_length(["a", "b"]) == 8


# ----------------------------------------------------------------------------- show


def test_show_wraps_at_words_and_pages_on_a_terminal(sample_rows):
    row = max(sample_rows, key=lambda r: len(r.conversations))
    trace = parse_trace(row)
    plain = to_text(trace_lines(trace))
    pager = f"{sys.executable} -c \"import sys; [print('P|' + l, end='') for l in sys.stdin]\""
    out = run_tty(["show", "--id", trace.id, "-q", "--color", "never"], 80, 30, env={"PAGER": pager})
    lines = [line for line in out.split("\n") if line]
    assert lines and all(line.startswith("P|") for line in lines)  # through $PAGER: taller than 30 rows
    body = [line[2:] for line in lines]
    assert max(len(line) for line in body) <= 80
    words = lambda text: text.split()  # noqa: E731 - every word intact, in order: wrapped at spaces only
    assert words("\n".join(body)) == words(plain)
    # a continuation line keeps the indent of the line it continues, plus two
    long = next(line for line in plain.split("\n") if len(line) > 100 and line.startswith("    "))
    head, second = wrap(long, 80).split("\n")[:2]
    first = body.index(head)
    assert body[first + 1] == second and second.startswith("      ")
    unpaged = run_tty(["show", "--id", trace.id, "-q", "--no-pager", "--color", "never"], 200, 30, env={"PAGER": pager})
    assert "P|" not in unpaged


def test_show_has_no_null_errors_and_numbers_from_one(sample_rows, capsys):
    trace = parse_trace(next(r for r in sample_rows if len(r.conversations) > 6))
    assert main(["show", "--id", trace.id, "-q"]) == 0
    out = capsys.readouterr().out
    assert "error: null" not in out and "error: None" not in out
    assert "── CALL #1 " in out and "── CALL #0 " not in out and "(turn 0)" not in out
    assert "numbered from 1" in out


def test_wrap_keeps_short_lines_and_indents_continuations():
    assert wrap("short", 80) == "short"
    text = "    " + " ".join(["word"] * 40)
    lines = wrap(text, 30).split("\n")
    assert all(len(line) <= 30 for line in lines) and lines[0].startswith("    word")
    assert all(line.startswith("      word") for line in lines[1:])


# ----------------------------------------------------------------------------- replay


def test_replay_redraws_in_place_and_follows_arrow_keys(sample_rows):
    trace = parse_trace(max(sample_rows, key=lambda r: len(r.conversations)))
    term = Terminal(["replay", "--id", trace.id, "-q", "--color", "never"], 80, 24)
    try:
        term.until(b"[step 1/")
        assert b"\x1b[?1049h" in term.seen  # the alternate screen
        term.write(b"\x1b[C")  # Right
        term.until(b"[step 2/")
        term.write(b"\x1b[C")
        term.until(b"[step 3/")
        term.write(b"\x1b[D")  # Left
        term.until(b"STEP 2/")
        mark = len(term.seen)
        term.write(b"\x1b[B")  # Down: the same step, scrolled one line
        term.until(b"lines 2-")
        assert b"STEP 2/" in term.seen[mark:]  # the header stays on top
        term.write(b"q")
        out = term.finish()
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    assert "unknown command" not in out
    assert out.count("\x1b[2J") >= 5  # each view drawn on a cleared screen, not appended
    assert out.rstrip().endswith("\x1b[?1049l")  # the shell's screen back
    for frame in out.split("\x1b[2J")[1:]:
        assert all(len(line) <= 80 for line in visible(frame.split("\x1b[?25h")[0]))
