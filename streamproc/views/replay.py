"""Step through a trace one assistant step at a time.

A step is one assistant turn: the user messages that led to it, its reasoning, each tool call
with the response it got, and its answer. `steps` and `step_lines` are pure; `play` is the
interactive loop over a stream of commands (n / p / a number / q), read from a terminal key by
key or from any text stream line by line, so it can be driven by a test or a script.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Iterator, TextIO

from streamproc.records import Trace
from streamproc.views.render import DEFAULT, HEADER, NOTE, Limits, Line, assistant_lines, response_lines, to_text, user_lines
from streamproc.views.safe import visible
from streamproc.views.terminal import wrap

HELP = "n/Enter/Right: next  p/Left: previous  <number>Enter: jump to step  q: quit"
KEYS = "←/→ or p/n: step  ↑/↓ PgUp/PgDn: scroll  N Enter: jump  q: quit"


@dataclass(slots=True, frozen=True)
class Step:
    number: int  # 1-based
    turn: int  # the assistant turn
    before: tuple[int, ...] = ()  # user turns (and any stray tool turn) since the previous step
    after: tuple[int, ...] = ()  # tool turns answering it, and user turns after the last step


def steps(trace: Trace) -> list[Step]:
    """The assistant steps of a trace; every turn but the system prompt belongs to one."""
    out: list[Step] = []
    before: list[int] = []
    after: list[int] = []
    for ti, turn in enumerate(trace.turns):
        if turn.role == "assistant":
            if out:
                out[-1] = replace(out[-1], after=tuple(after))
            out.append(Step(len(out) + 1, ti, tuple(before)))
            before, after = [], []
        elif turn.role == "tool" and out and not before:
            after.append(ti)
        elif turn.role != "system":
            before.append(ti)
    if out:
        out[-1] = replace(out[-1], after=tuple(after + before))
    return out


def step_lines(trace: Trace, step: Step, total: int, limits: Limits | None = DEFAULT) -> list[Line]:
    out = [Line(HEADER, f"━━ STEP {step.number}/{total}  (turn {step.turn + 1})  {trace.id}")]
    out.extend(_side_lines(trace, step.before, limits))
    out.extend(assistant_lines(trace, step.turn, limits, with_responses=True))
    out.extend(_side_lines(trace, step.after, limits))
    return out


def _side_lines(trace: Trace, turns: Iterable[int], limits: Limits | None) -> list[Line]:
    """User turns in full; of tool turns only what is not already shown under its call."""
    out: list[Line] = []
    for ti in turns:
        turn = trace.turns[ti]
        if turn.role == "user":
            out.extend(user_lines(turn.text, ti, limits))
            continue
        for resp in turn.tool_responses:
            if resp.call is None:
                out.extend(response_lines(resp, None, limits))
        if not turn.tool_responses and turn.text:
            out.append(Line(NOTE, f"── tool turn {ti + 1} holds no <tool_response>: {turn.text[:200]!r}"))
    return out


# ----------------------------------------------------------------------------- interactive loop

ARROWS = {"C": "right", "D": "left", "A": "up", "B": "down", "5~": "pgup", "6~": "pgdn", "H": "home", "F": "end"}
"""Keys sent as escape sequences (ESC [ X, or ESC O X): the command each one is."""
SCROLL = {"up", "down", "pgup", "pgdn", "home", "end"}


def parse_command(text: str, current: int, total: int) -> int | None | str:
    """The step index (0-based) a command moves to, None to quit, or a message to show."""
    cmd = text.strip().lower()
    if cmd in ("", "n", " ", "right"):
        return current + 1 if current + 1 < total else "already at the last step"
    if cmd in ("p", "left"):
        return current - 1 if current > 0 else "already at the first step"
    if cmd == "q":
        return None
    if cmd.isdigit():
        k = int(cmd)
        return k - 1 if 1 <= k <= total else f"no step {k}: steps are 1 to {total}"
    if cmd in SCROLL:
        return "scrolling works on a terminal"
    return f"unknown command {text.strip()!r}"


@dataclass(slots=True)
class Screen:
    """A terminal the replay redraws in place: the step's header stays at the top, the status
    line at the bottom, and the lines between scroll (up/down, PgUp/PgDn, Home/End)."""

    size: Callable[[], tuple[int, int]]  # (columns, lines), asked again at every redraw
    offset: int = 0

    def draw(self, out: TextIO, lines: list[Line], where: str, note: str, color: bool) -> None:
        width, height = self.size()
        head, *body = lines
        # escaped before wrapping and cutting, so each line fits the width as printed
        body = [Line(b.style, part) for b in body for part in wrap(visible(b.text), width).split("\n")]
        room = max(height - 2, 1)
        self.offset = min(max(self.offset, 0), max(len(body) - room, 0))
        shown = body[self.offset : self.offset + room]
        more = f" lines {self.offset + 1}-{self.offset + len(shown)} of {len(body)}" if len(body) > room else ""
        text = to_text([Line(head.style, visible(head.text)[:width]), *shown], color)
        tail = to_text([Line(NOTE, visible(f"[{where}{more}] {note}")[: width - 1])], color).rstrip("\n")
        # home, clear, draw; the status line goes on the last row whatever the step's length
        out.write(f"\x1b[H\x1b[2J{text}\x1b[{height};1H{tail}")
        out.flush()

    def scroll(self, key: str) -> None:
        height = self.size()[1]
        step = {"up": -1, "down": 1, "pgup": 2 - height, "pgdn": height - 2, "home": -(1 << 30), "end": 1 << 30}[key]
        self.offset += step


def play(
    trace: Trace,
    commands: Iterable[str],
    out: TextIO,
    *,
    start: int = 1,
    limits: Limits | None = DEFAULT,
    color: bool = False,
    screen: Screen | None = None,
) -> int:
    """Show step `start`, then move as the commands say until q or the end of input. Returns
    the number of the step shown last. With a `screen`, each step replaces the last on the
    terminal's alternate screen (the shell's screen is back as it was on exit); without one,
    steps follow each other in `out`."""
    all_steps = steps(trace)
    if not all_steps:
        out.write(visible(f"trace {trace.id} has no assistant turn to step through\n"))
        return 0
    i = min(max(start, 1), len(all_steps)) - 1
    total = len(all_steps)

    def show(k: int, note: str = "") -> None:
        lines = step_lines(trace, all_steps[k], total, limits)
        if screen is not None:
            screen.draw(out, lines, f"step {k + 1}/{total}", note or KEYS, color)
            return
        out.write(to_text(lines, color))
        out.write(f"[step {k + 1}/{total}] {HELP}\n")
        out.flush()

    if screen is not None:
        out.write("\x1b[?1049h\x1b[?25l")  # alternate screen, cursor hidden
    try:
        show(i)
        for text in commands:
            if screen is not None and text in SCROLL:
                screen.scroll(text)
                show(i)
                continue
            where = parse_command(text, i, total)
            if where is None:
                break
            if isinstance(where, str):
                if screen is not None:
                    show(i, where)
                else:
                    out.write(visible(f"{where}\n{HELP}\n"))
                    out.flush()
                continue
            i = where
            if screen is not None:
                screen.offset = 0
            show(i)
    finally:
        if screen is not None:
            out.write("\x1b[?25h\x1b[?1049l")
            out.flush()
    return i + 1


def lines_of(stream: TextIO) -> Iterator[str]:
    """Commands from a pipe or file: one per line."""
    for line in stream:
        yield line.rstrip("\n")


def keys_of(stream: TextIO, echo: TextIO) -> Iterator[str]:
    """Commands from a terminal in cbreak mode, key by key: n, p, q, space, Enter and the
    arrow and paging keys act at once; digits gather until Enter (echoed, so the user sees the
    number typed)."""
    digits = ""
    while True:
        ch = stream.read(1)
        if not ch or ch == "\x04":  # end of input, Ctrl-D
            return
        if ch.isdigit():
            digits += ch
            echo.write(ch)
            echo.flush()
        elif ch in "\r\n":
            echo.write("\n")
            yield digits
            digits = ""
        elif ch == "\x7f" and digits:  # backspace
            digits = digits[:-1]
            echo.write("\b \b")
            echo.flush()
        elif ch == "\x1b":
            digits = ""
            key = _escape(stream)
            if key:
                yield key
        else:
            digits = ""
            yield ch


def _escape(stream: TextIO) -> str | None:
    """The key an escape sequence stands for, read after its ESC; None for a lone Esc or a
    sequence this does not know (read to its end, so its bytes are not taken for keys)."""
    if not _ready(stream):
        return None
    if stream.read(1) not in "[O":
        return None
    seq = ""
    while _ready(stream):
        ch = stream.read(1)
        seq += ch
        if ch.isalpha() or ch == "~":
            break
    return ARROWS.get(seq)


def _ready(stream: TextIO, timeout: float = 0.05) -> bool:
    """Whether another byte arrives soon: an escape sequence's bytes come together; a lone Esc
    is followed by nothing."""
    import select

    try:
        return bool(select.select([stream], [], [], timeout)[0])
    except (TypeError, ValueError, OSError):  # not a file descriptor: a test's text stream
        return True
@contextlib.contextmanager
def commands_from(stream: TextIO = sys.stdin, echo: TextIO = sys.stdout) -> Iterator[Iterator[str]]:
    """The commands of `stream`. A terminal is put in cbreak mode on entry, before the first
    step is shown, so a key pressed as soon as the prompt appears is not echoed and held for
    Enter; it is restored on exit."""
    if not stream.isatty():
        yield lines_of(stream)
        return
    import termios
    import tty

    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield keys_of(_Unbuffered(fd), echo)
    finally:
        with contextlib.suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class _Unbuffered:
    """A terminal read one character at a time straight from its file descriptor, so that
    `select` sees exactly what is left of an escape sequence (a buffered reader would have taken
    it already)."""

    def __init__(self, fd: int):
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def read(self, n: int = 1) -> str:
        import os

        first = os.read(self.fd, 1)
        if not first:
            return ""
        # a UTF-8 lead byte says how many continuation bytes follow
        more = 3 if first[0] >= 0xF0 else 2 if first[0] >= 0xE0 else 1 if first[0] >= 0xC0 else 0
        data = first + (os.read(self.fd, more) if more else b"")
        return data.decode("utf-8", errors="replace")
