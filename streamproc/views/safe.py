"""Text from the data, made safe to print for a person: what a terminal would obey is shown instead.

Datasets are other people's text. A tool result holding `ESC ] 0 ; title BEL` or `ESC [ 2 J` would
retitle or clear the terminal of whoever views it; OSC 52 writes the clipboard in many terminals
and OSC 8 hides a link's target. Every human view (show, replay, ls, the stats tables, count and
error lines) passes data text through `visible`, wherever it goes: a terminal, a pipe or a file
that is `cat` later. Data outputs (`-o -`, `--json -`, JSONL, Parquet) never do: they stay
byte-exact.

What is escaped, in Python's own notation so the escape reads as what it stands for:
- C0 controls but newline and tab (`\\x1b`, `\\x07`, `\\x00`; carriage return as `\\r`, since it
  lets a line overwrite itself and hide what came before), DEL (`\\x7f`) and the C1 controls
  U+0080-U+009F (`\\x9b` is CSI on its own in some terminals);
- the bidirectional embeddings, overrides and isolates U+202A-U+202E and U+2066-U+2069 (`\\u202e`):
  they reorder what is displayed, so shown text would not be the text ("Trojan Source"). The
  marks U+200E, U+200F and U+061C are left alone: right-to-left text uses them and they reorder
  nothing beyond a neutral character;
- lone surrogates (`\\udc80`): no terminal encoding can write them, so printing one would fail.

Backslashes are not doubled: a literal `\\x1b` in the data looks like an escaped ESC, but paths and
code in traces stay readable, and nothing written obeys either.
"""

from __future__ import annotations

import re

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    c = match.group()
    if c == "\r":
        return "\\r"
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """`text` with every character a terminal would act on (other than newline and tab) shown as
    its escape: `\\x1b`, `\\r`, `\\x9b`, `\\u202e`. Printable text is returned as it is."""
    return _CONTROL.sub(_escape, text)

