"""Text from the data never drives the terminal (issue 25): control characters, DEL, C1, bidi
overrides and rich markup in a trace are shown, not obeyed, by every human view (show, replay, ls,
the stats tables, count, reject and error lines) on a terminal, a pipe or a file; data outputs
(`-o -`, `--json -`, JSONL, Parquet) keep them byte for byte; the report page runs no script from
the data; plots with long or hostile names print no warning."""

from __future__ import annotations

import fcntl
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
import unicodedata
from pathlib import Path

import pyarrow.parquet as pq
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from streamproc.cli import main
from streamproc.views.safe import visible

ROOT = Path(__file__).resolve().parents[1]

BIDI = [chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]]
CONTROLS = [chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)] if chr(c) not in "\n\t"] + BIDI
PAYLOADS = [
    "\x1b]0;PWNED title\x07",  # retitle the terminal
    "\x1b[2J\x1b[H",  # clear it
    "\x1b]52;c;cm0gLXJmIH4=\x07",  # write the clipboard
    "\x1b]8;;https://evil.example/\x1b\\harmless link\x1b]8;;\x1b\\",  # a link hiding its target
    "\x9b31m",  # CSI as one C1 character
    "\rover\x1b[K",  # overwrite the line
    "[red]red[/red] [bold]bold[/] [link=https://evil.example]x[/link]",  # rich markup
    "\u202eevil\u202c",  # reversed display
]
SGR = re.compile(r"\x1b\[[0-9;]*m")  # the colours the views themselves write


def unsafe(text: str) -> list[str]:
    """The characters of `text` a terminal would act on, by Unicode's own classes (not by the
    code under test): controls other than newline and tab, surrogates, bidi embeddings/overrides/isolates."""
    return [c for c in text if (unicodedata.category(c) == "Cc" and c not in "\n\t")
            or unicodedata.category(c) == "Cs" or c in BIDI]


hostile = st.lists(st.one_of(st.sampled_from(PAYLOADS), st.sampled_from(CONTROLS), st.text(max_size=6)),
                   min_size=1, max_size=6).map("".join)


def _call(name: str, args: dict) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": args}, ensure_ascii=False) + "\n</tool_call>"


def _response(name: str, content) -> str:
    return ("<tool_response>\n" + json.dumps({"tool_call_id": "functions.x:0", "name": name, "content": content},
                                             ensure_ascii=False) + "\n</tool_response>")


def hostile_row(text: str, tool: str, row_id: str = "hostile-1") -> dict:
    """A trace with `text` in every place a view prints: task, category, user message, reasoning,
    a call's name and argument, its result, the answer."""
    return {
        "id": row_id, "task": "task " + text, "category": "cat " + text, "subcategory": text, "tools": "[]",
        "conversations": [
            {"from": "system", "value": "system " + text},
            {"from": "human", "value": "user " + text},
            {"from": "gpt", "value": f"<think>\nthink {text}\n</think>\n" + _call(tool, {"command": "ls " + text})},
            {"from": "tool", "value": _response(tool, {"output": "out " + text, "exit_code": 1, "error": "err " + text})},
            {"from": "gpt", "value": f"<think>\n</think>\nanswer {text}"},
        ],
    }


def write_rows(path: Path, rows: list[dict], bad: str | None = None) -> Path:
    """JSONL with `rows`, and with `bad` a row whose `from` is that text (rejected, and quoted)."""
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    if bad is not None:
        lines.append(json.dumps({"id": "bad", "conversations": [{"from": bad, "value": "x"}]}, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- the escape itself

# unsafe characters, and ASCII but the backslash: what visible writes is then ASCII that reads back
ALPHABET = st.sampled_from([*CONTROLS, "\n", "\t", "\ud800", "\udfff"]) | st.characters(
    min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="\\")


@given(st.text())
def test_printable_text_is_left_as_it_is(text):
    clean = "".join(c for c in text if not unsafe(c))
    assert visible(clean) == clean


@given(st.text(alphabet=ALPHABET))
def test_each_unsafe_character_becomes_its_python_escape(text):
    shown = visible(text)
    assert not unsafe(shown)
    assert visible(shown) == shown  # escaping twice changes nothing: a view may escape what was escaped
    # ASCII in, no backslash: the escapes read back as the very characters they stand for
    assert shown.encode("ascii").decode("unicode_escape") == text


def test_escapes_are_the_familiar_ones():
    assert visible("a\x1b]0;t\x07b\r\n\tc\x7f\x9b\u202e\u2066\ud800é中") == "a\\x1b]0;t\\x07b\\r\n\tc\\x7f\\x9b\\u202e\\u2066\\ud800é中"
    assert visible("\u200f\u061c") == "\u200f\u061c"  # right-to-left marks are text, not overrides


# ----------------------------------------------------------------------------- human views, off a terminal


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=hostile, tool=hostile)
def test_no_control_character_reaches_piped_or_filed_views(text, tool, tmp_path_factory, capsys):
    """`show > t.txt; cat t.txt` is as safe as the terminal: show, replay, ls, stats and the
    count and reject lines, each written to a pipe."""
    path = write_rows(tmp_path_factory.mktemp("rows") / "rows.jsonl", [hostile_row(text, "t" + tool)], bad=text)
    for argv in (["show", "--id", "hostile-1", "--full"], ["show", "--index", "0"], ["replay", "--index", "0", "--step", "1"],
                 ["replay", "--id", "hostile-1", "--step", "2"], ["ls"], ["stats"]):
        assert main([*argv, str(path), "--workers", "1"]) == 0, argv
        out, err = capsys.readouterr()
        assert not unsafe(out) and not unsafe(err), (argv, unsafe(out + err))
        if "[red]red[/red]" in text:  # the markup is there, as text
            assert "[red]red[/red]" in out, argv
        if argv[0] != "stats" and "--index" not in argv:  # read the bad row: counted, and said so
            assert "bad row" in err or "rejected" in err, (argv, err)
    assert main(["show", "--index", "1", str(path)]) == 2  # the bad row itself: an error line quoting it
    err = capsys.readouterr().err
    assert "error:" in err and not unsafe(err), err


def test_error_lines_and_count_lines_escape_a_file_name(tmp_path, capsys):
    name = tmp_path / "rows\x1b]0;PWNED\x07.jsonl"
    write_rows(name, [hostile_row("x", "tool")], bad="\x1b[2J")
    assert main(["stats", str(name), "--workers", "1", "--on-error", "fail"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "\\x1b]0;PWNED\\x07" in err and not unsafe(err)
    assert main(["parse", str(name), "-o", str(tmp_path / "out.jsonl"), "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert "1 rejected" in err and "\\x1b]0;PWNED\\x07" in err and not unsafe(err)


def test_markup_in_the_stats_tables_is_text_on_a_terminal_width(tmp_path):
    """rich is asked for colour here, as on a terminal: a tool name `[red]...` is printed as
    written, not turned into a colour, and the table keeps its width."""
    from io import StringIO

    from streamproc.analyze.metrics import collect
    from streamproc.io.sources import plan
    from streamproc.views.terminal import print_tables, width_of

    class Tty(StringIO):
        def isatty(self):
            return True

    tool = "[red]red[/red]\x1b]0;PWNED\x07"
    stats, _ = collect(plan([write_rows(tmp_path / "m.jsonl", [hostile_row("[bold]x[/bold]", tool)])]))
    out = Tty()
    print_tables(stats, 10, file=out)
    text = SGR.sub("", out.getvalue())
    assert SGR.search(out.getvalue())  # in colour, as on a terminal
    assert "[red]red[/red]\\x1b]0;PWNED\\x07" in text and "cat [bold]x[/bold]" in text and not unsafe(text)
    assert max(map(len, text.splitlines())) <= width_of(out)


# ----------------------------------------------------------------------------- data outputs stay exact


def test_data_outputs_keep_every_character(tmp_path, capsysbinary):
    text = "".join(PAYLOADS) + "".join(CONTROLS)
    tool = "tool" + PAYLOADS[0]
    path = write_rows(tmp_path / "rows.jsonl", [hostile_row(text, tool)])
    assert main(["parse", str(path), "-o", "-", "--workers", "1", "-q"]) == 0
    record = json.loads(capsysbinary.readouterr().out)
    assert record["task"] == "task " + text and record["category"] == "cat " + text
    assert main(["parse", str(path), "-o", str(tmp_path / "r.parquet"), "--workers", "1", "-q"]) == 0
    assert pq.read_table(tmp_path / "r.parquet").column("task").to_pylist() == ["task " + text]
    assert main(["export", str(path), "-o", "-", "--workers", "1", "-q"]) == 0
    exported = capsysbinary.readouterr().out.decode("utf-8")
    assert ("user " + text) in json.loads(exported)["messages"][1]["content"]
    assert main(["stats", str(path), "--json", "-", "--workers", "1", "-q"]) == 0
    assert tool in set(_strings(json.loads(capsysbinary.readouterr().out)))


def _strings(value):
    """Every key and string in a JSON value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


# ----------------------------------------------------------------------------- on a pseudo-terminal


def on_terminal(args: list[str], keys: bytes = b"", cols: int = 100, rows: int = 30, env: dict | None = None,
                timeout: float = 120) -> str:
    """What `streamproc ARGS` writes to a pseudo-terminal (stdout and stderr), byte for byte:
    output processing is off, so no newline becomes CR LF and any CR seen was written."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    attrs = termios.tcgetattr(slave)
    attrs[1] &= ~termios.OPOST
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": str(cols), "LINES": str(rows), "TERM": "xterm",
                "PAGER": "cat", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "streamproc", *args], stdin=slave, stdout=slave, stderr=slave,
                            close_fds=True, env=full_env)
    os.close(slave)
    seen = b""
    end = time.monotonic() + timeout
    sent = False
    while time.monotonic() < end:
        if keys and not sent and b"[step 1/" in seen:
            os.write(master, keys)
            sent = True
        if select.select([master], [], [], 0.2)[0]:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            seen += data
        elif proc.poll() is not None:
            break
    proc.kill()
    proc.wait(timeout=30)
    os.close(master)
    return seen.decode("utf-8", errors="strict")


SCREEN = re.compile(r"\x1b\[(\?1049[hl]|\?25[hl]|H|2J|\d+;1H)")  # what replay's screen writes: its own codes


# Each example starts three processes: few examples, every unsafe character in the first, no shrinking.
@settings(max_examples=5, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=hostile, tool=hostile)
@example(text="".join(PAYLOADS) + "".join(CONTROLS), tool="".join(reversed(CONTROLS)))
def test_no_control_character_reaches_the_terminal(text, tool, tmp_path_factory):
    """show, replay and ls on a real pseudo-terminal, with `--color never` (and NO_COLOR for ls):
    not one control character of the trace, the file name or the rejected row comes through.
    -q: the progress bar's own carriage returns are not the data's."""
    folder = tmp_path_factory.mktemp("rows")
    path = write_rows(folder / ("rows" + PAYLOADS[0] + ".jsonl"), [hostile_row(text, "t" + tool)], bad=text)
    for argv in (["show", "--id", "hostile-1", "--color", "never", "--no-pager"],
                 ["replay", "--id", "hostile-1", "--step", "1", "--color", "never"], ["ls", "--no-pager"]):
        out = on_terminal([*argv, str(path), "--workers", "1", "-q"], env={"NO_COLOR": "1"})
        assert "Traceback" not in out, out[-2000:]
        assert not unsafe(out), (argv, unsafe(out), out[-500:])
        assert "1 bad rows" in out or "1 bad row" in out, out[-500:]  # the bad row's line, quoting it, escaped too


def test_replay_on_a_terminal_and_colour_views_write_only_their_own_codes(tmp_path):
    """Interactive replay (alternate screen, redraws), show and ls in colour: the only escape
    sequences are the ones the views write; every character of the data is escaped."""
    text = "".join(PAYLOADS) + "".join(CONTROLS)
    path = write_rows(tmp_path / "rows.jsonl", [hostile_row(text, "tool" + PAYLOADS[1])])
    out = on_terminal(["replay", "--index", "0", str(path), "--workers", "1", "-q"], keys=b"n\x1b[Bq", cols=200, rows=60)
    assert "[step 2/" in out and out.count("\x1b[2J") >= 3
    assert not unsafe(SCREEN.sub("", SGR.sub("", out))), unsafe(SCREEN.sub("", SGR.sub("", out)))
    assert "\\x1b]0;PWNED title\\x07" in out and "[red]red[/red]" in out
    shown = on_terminal(["show", "--index", "0", str(path), "--workers", "1", "-q", "--color", "always", "--no-pager"])
    assert SGR.search(shown) and not unsafe(SGR.sub("", shown))
    listed = on_terminal(["ls", str(path), "--workers", "1", "-q", "--no-pager"], env={"NO_COLOR": ""})
    assert SGR.search(listed) and "hostile-" in listed and not unsafe(SGR.sub("", listed))


# ----------------------------------------------------------------------------- plots and the report


def test_report_with_a_100_character_tool_name_prints_no_warning(tmp_path):
    """Long names are cut on the plots, control characters escaped, `$` not taken for mathtext:
    `streamproc report` prints nothing but its own lines."""
    rows = [hostile_row("x", "t" * 100, "long"), hostile_row("y", "$\\notacommand{x}$ " + "w" * 80 + PAYLOADS[0], "odd")]
    rows[1]["category"] = "c" * 100
    path = write_rows(tmp_path / ("s" * 90 + ".jsonl"), rows)
    other = write_rows(tmp_path / ("s" * 90 + "2.jsonl"), [hostile_row("z", "t" * 100, "long2")])
    argv = ["report", str(path), str(other), "-o", str(tmp_path / "r.html"), "--workers", "1"]
    proc = subprocess.run([sys.executable, "-W", "default", "-m", "streamproc", *argv], capture_output=True, text=True,
                          timeout=600, check=False, env={**os.environ, "PYTHONPATH": str(ROOT), "STREAMPROC_PROGRESS": "0"})
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr and "warning" not in proc.stderr, proc.stderr
    assert "3 rows read, 3 parsed" in proc.stderr, proc.stderr
    assert not unsafe(proc.stderr)


def test_a_library_warning_is_one_line_naming_the_command(tmp_path, capsys, monkeypatch):
    import warnings

    from streamproc.cli import show

    def warns(args):
        warnings.warn("something odd in \x1b[2J", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(show, "run", warns)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["show", "--index", "0"]) == 0
    err = capsys.readouterr().err
    assert err == "streamproc show: warning: something odd in \\x1b[2J\n"


# ----------------------------------------------------------------------------- the page


SCRIPT = "</script><script>window.pwned=(window.pwned||0)+1</script>"
IMAGE = "<img src=x onerror=\"window.pwned=(window.pwned||0)+1\">"


def test_the_report_page_runs_no_script_from_the_data_and_shows_it_as_text(tmp_path, chromium):
    row = hostile_row(SCRIPT + IMAGE, "tool" + IMAGE + SCRIPT, "xss")
    row["task"] = "task " + SCRIPT + IMAGE
    path = write_rows(tmp_path / "rows.jsonl", [row, hostile_row("plain", "terminal", "plain")])
    out = tmp_path / "r.html"
    assert main(["report", str(path), "-o", str(out), "--workers", "1", "-q"]) == 0
    page = chromium.new_page()
    errors, dialogs = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(("file:", "data:", "blob:")) else r.abort())
    page.goto(out.as_uri())
    page.wait_for_selector("#traces tbody tr")
    page.locator("#traces tbody tr[title=xss]").click()
    page.wait_for_selector("#trace .call")
    page.locator("#trace details").evaluate_all("ds => ds.forEach(d => d.open = true)")
    trace = page.evaluate("document.getElementById('trace').innerText")
    page.click("nav button[data-view=summary]")
    page.wait_for_selector("#view-summary td")
    summary = page.evaluate("document.getElementById('view-summary').innerText")
    assert page.evaluate("window.pwned") is None and not dialogs and not errors
    assert page.locator("img:not(#view-plots img, #zoom img)").count() == 0  # none made from the data
    for text in ("task " + SCRIPT + IMAGE, "user " + SCRIPT + IMAGE, "tool" + IMAGE + SCRIPT, "out " + SCRIPT + IMAGE):
        assert text in trace, (text, trace)
    assert "tool" + IMAGE + SCRIPT in summary  # the Top tools table
    page.close()
