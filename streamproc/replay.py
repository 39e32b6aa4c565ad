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
from typing import Iterable, Iterator, TextIO

from .records import Trace
from .render import DEFAULT, HEADER, NOTE, Limits, Line, assistant_lines, response_lines, to_text, user_lines

HELP = "n/Enter: next  p: previous  <number>Enter: jump to step  q: quit"


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


def parse_command(text: str, current: int, total: int) -> int | None | str:
    """The step index (0-based) a command moves to, None to quit, or a message to show."""
    cmd = text.strip().lower()
    if cmd in ("", "n", " "):
        return current + 1 if current + 1 < total else "already at the last step"
    if cmd == "p":
        return current - 1 if current > 0 else "already at the first step"
    if cmd == "q":
        return None
    if cmd.isdigit():
        k = int(cmd)
        return k - 1 if 1 <= k <= total else f"no step {k}: steps are 1 to {total}"
    return f"unknown command {text.strip()!r}"


def play(
    trace: Trace,
    commands: Iterable[str],
    out: TextIO,
    *,
    start: int = 1,
    limits: Limits | None = DEFAULT,
    color: bool = False,
) -> int:
    """Show step `start`, then move as the commands say until q or the end of input. Returns
    the number of the step shown last."""
    all_steps = steps(trace)
    if not all_steps:
        out.write(f"trace {trace.id} has no assistant turn to step through\n")
        return 0
    i = min(max(start, 1), len(all_steps)) - 1
    prompt = f"{HELP}\n"

    def show(k: int) -> None:
        out.write(to_text(step_lines(trace, all_steps[k], len(all_steps), limits), color))
        out.write(f"[step {k + 1}/{len(all_steps)}] {prompt}")
        out.flush()

    show(i)
    for text in commands:
        where = parse_command(text, i, len(all_steps))
        if where is None:
            break
        if isinstance(where, str):
            out.write(f"{where}\n{prompt}")
            out.flush()
            continue
        i = where
        show(i)
    return i + 1


def lines_of(stream: TextIO) -> Iterator[str]:
    """Commands from a pipe or file: one per line."""
    for line in stream:
        yield line.rstrip("\n")


def keys_of(stream: TextIO, echo: TextIO) -> Iterator[str]:
    """Commands from a terminal in cbreak mode, key by key: n, p, q, space and Enter act at
    once; digits gather until Enter (echoed, so the user sees the number typed)."""
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
        else:
            digits = ""
            yield ch


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
        yield keys_of(stream, echo)
    finally:
        with contextlib.suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
