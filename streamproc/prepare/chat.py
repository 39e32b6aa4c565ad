"""Chat messages from dataset rows, and what a tokenizer's chat template does with them.

Roles map human -> user, gpt -> assistant, system -> system, tool -> tool. Assistant content of
a ShareGPT row is passed as written (reasoning, text and `<tool_call>` blocks), never as
structured `tool_calls`, and `tools=` is not given: the system prompt already lists the tools.

A row read from the chat `messages` layout (`Row.chat`) is rendered as the model sees it at
inference, where the template can (`TemplateInfo.renders_calls`): its calls go to the template
as `tool_calls` (arguments as objects), its results as tool messages, its `tools` column as
`tools=`; reasoning stays in the content as a `<think>` block, as for ShareGPT rows. A template
that renders no tool calls (ChatML) gets the row's ShareGPT text instead. `conversation` is the
one way to the messages of a row.

Tool turns already carry `<tool_response>` tags. A template that wraps tool content in those
tags itself (Qwen) gets one tool message per response with the tags taken off, so the rendered
text holds each tag once; a template that renders the tool role as is (SmolLM2, ChatML) gets the
turn unchanged; a template that cannot render it gets a user message with a prefix.

`inspect_template` learns all this by rendering probe conversations with sentinel strings, and
also whether every assistant content reaches the text verbatim (Qwen3's template drops earlier
`<think>` blocks). `render` turns a whole conversation into text plus the character span of each
assistant turn's trainable region: its content and the end-of-turn token after it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from streamproc.io.layouts import chat_messages, tool_definitions
from streamproc.parse.parser import RESP_CLOSE, RESP_OPEN, parse_turn
from streamproc.records import ROLES, ChatLayout, Row, Trace
from streamproc.prepare.tokenizer import render_chat
from streamproc.parse.turns import REASONING, TOOL_CALL, TOOL_RESPONSE, Segment

TOOL_FALLBACK = "[TOOL OUTPUT]\n"
"""Prefix of a tool turn sent as a user message when the template has no tool role (the guide's)."""

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
"""A faithful ChatML template: every message verbatim, any role, no default system prompt."""

class TemplateError(ValueError):
    """A chat template that cannot give exact labels for these conversations."""


@dataclass(slots=True)
class Message:
    role: str
    content: str
    turn: int  # index of the row's turn it came from
    tool_calls: list[dict[str, Any]] | None = None  # structured calls, after the content (chat layout)
    tool_call_id: str | None = None  # a tool result's call
    name: str | None = None
    tools: str = ""  # the row's tools column (JSON text) for the template's tools=; "" for none

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            d["tool_calls"] = self.tool_calls
        if self.tool_call_id is not None:
            d["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            d["name"] = self.name
        return d


@dataclass(slots=True, frozen=True)
class TemplateInfo:
    """What a chat template does, learned from probe renders."""

    template: str
    tool_role: bool  # renders a tool message (else: user fallback)
    wraps_tool: bool  # puts <tool_response> tags around tool content itself
    verbatim: bool  # every assistant content reaches the text unchanged
    per_turn: bool  # each assistant turn's render extends the render before it with the generation prompt
    injects_system: bool  # adds a default system prompt when there is none
    header: str  # text right before an assistant content, e.g. "<|im_start|>assistant\n"
    eot: str  # text right after it, up to and including the end-of-turn token
    problem: str = ""  # why it is not verbatim
    turn_problem: str = ""  # why it cannot give exact samples turn by turn either
    renders_calls: bool = False  # renders structured tool_calls after the content, before `eot`

    @property
    def tool_mode(self) -> str:
        return "unwrap" if self.tool_role and self.wraps_tool else "keep" if self.tool_role else "user"


@dataclass(slots=True)
class AssistantSpan:
    """An assistant turn in rendered text: [start, end) is its content plus end-of-turn token."""

    turn: int
    start: int
    end: int
    reasoning: list[tuple[int, int]] = field(default_factory=list)  # <think> blocks, absolute
    tool_calls: bool = False


@dataclass(slots=True)
class Rendered:
    text: str
    spans: list[AssistantSpan]
    ends: list[int]  # per message: where its content ends in text


# ----------------------------------------------------------------------------- messages


def conversation(row: Row | Trace, info: TemplateInfo, tool_fallback: str = TOOL_FALLBACK) -> list[Message]:
    """The chat messages a template renders for a row or its parsed trace: a chat-layout row's
    structure where the template renders tool calls, else the turns' text (tool turns per
    `info.tool_mode`; a trace's parsed segments spare parsing them again)."""
    if row.chat is not None and info.renders_calls:
        return structured_messages(row.chat, row.tools, info, tool_fallback)
    if isinstance(row, Row):
        return to_messages(row.conversations, info.tool_mode, tool_fallback)
    return to_messages([(t.role, t.text) for t in row.turns], info.tool_mode, tool_fallback, [t.segments for t in row.turns])


def structured_messages(chat: ChatLayout, tools: str, info: TemplateInfo, tool_fallback: str = TOOL_FALLBACK) -> list[Message]:
    """A chat-layout row as the model sees it: assistant content is the turn's text before its
    first call (the `<think>` block and text, as ShareGPT writes them), calls go as `tool_calls`
    with their arguments as objects, results as tool messages (a user message with
    `tool_fallback` where the template has no tool role); every message carries `tools`."""
    out = []
    for m, t in zip(chat_messages(chat), chat.turn_of):
        role = m["role"]
        if role == "tool":
            if info.tool_role:
                out.append(Message("tool", m["content"], t, tool_call_id=m["tool_call_id"], name=m["name"], tools=tools))
            else:
                out.append(Message("user", tool_fallback + m["content"], t, tools=tools))
        elif role == "assistant" and m.get("tool_calls"):
            turn = chat.turns[t]
            calls = m["tool_calls"]
            text = turn.text[: turn.segments[turn.tool_calls[-len(calls)].segment].start]
            content = text[:-1] if text.endswith("\n") else text  # the template writes the newline before a call
            out.append(Message("assistant", content, t, tool_calls=calls, tools=tools))
        else:
            out.append(Message(role, chat.turns[t].text if role == "assistant" else m["content"], t, tools=tools))
    return out


def to_messages(
    conversations: Sequence[tuple[str, str]],
    tool_mode: str = "keep",
    tool_fallback: str = TOOL_FALLBACK,
    segments: Sequence[list[Segment]] | None = None,
) -> list[Message]:
    """Chat messages for a row's (from, value) turns. tool_mode: keep | unwrap | user.
    `segments`, each turn's as the parser found them, spares unwrapping a second parse."""
    out = []
    for i, (frm, value) in enumerate(conversations):
        role = ROLES.get(frm, frm)
        if role != "tool" or tool_mode == "keep":
            out.append(Message(role, value, i))
        elif tool_mode == "user":
            out.append(Message("user", tool_fallback + value, i))
        else:
            out.extend(Message("tool", body, i) for body in unwrap_tool(value, segments[i] if segments else None))
    return out


def unwrap_tool(text: str, segments: list[Segment] | None = None) -> list[str]:
    """The responses of a tool turn without their tags, when the turn is exactly responses joined
    by newlines (as the harness writes it); else the turn as one piece, which the template then
    wraps once. `segments`: the turn's, parsed already."""
    segs = parse_turn("tool", text).segments if segments is None else segments
    bodies = [text[s.body_start + 1 : s.body_end - 1] for s in segs if s.kind == TOOL_RESPONSE]
    # The harness writes each response on lines of its own: the tags, a newline, the body, a newline.
    if bodies and "\n".join(f"{RESP_OPEN}\n{b}\n{RESP_CLOSE}" for b in bodies) == text:
        return bodies
    return [text]


# ----------------------------------------------------------------------------- templates


def render_text(tokenizer, messages: Sequence[Message], template: str, add_generation_prompt: bool = False) -> str:
    """The text transformers' apply_chat_template(tokenize=False, tools=...) gives, without
    transformers; `tools` are the messages' (a chat-layout row's tools column)."""
    tools = tool_definitions(messages[0].tools) if messages and messages[0].tools else None
    return render_chat(template, [m.as_dict() for m in messages], tokenizer.special_tokens_map, add_generation_prompt, tools=tools)


_R = "\u27e6probe-{}\u27e7"  # sentinels no template or tokenizer treats specially


def _probe_assistant(k: int, call: bool) -> str:
    text = f"<think>\n{_R.format(f'reason{k}')}\n</think>\n{_R.format(f'text{k}')}"
    if call:
        text += '\n<tool_call>\n{"name": "probe", "arguments": {}}\n</tool_call>'
    return text


def inspect_template(tokenizer, template: str) -> TemplateInfo:
    """Render probe conversations through `template` and report what it does (see TemplateInfo)."""
    specials = sorted(tokenizer.get_added_vocab(), key=len, reverse=True)
    sys_, user = _R.format("system"), _R.format("user")
    a1, a2 = _probe_assistant(1, True), _probe_assistant(2, False)
    convo = [("system", sys_), ("human", user), ("gpt", a1), ("human", _R.format("user2")), ("gpt", a2)]
    try:
        text = render_text(tokenizer, to_messages(convo), template)
    except Exception as e:
        raise TemplateError(f"the chat template cannot render a plain system/user/assistant conversation: {e}") from e

    problem = "" if sys_ in text else "the system message is not rendered in place (moved or dropped)"
    for k, a in ((1, a1), (2, a2)) if not problem else ():
        if a not in text:
            problem = f"assistant turn {a!r} is rendered as {_around(text, k)!r}"
            break
    header = eot = ""
    if not problem:
        header = _header(text, a2, specials)
        eot = _eot(text, a1, specials)
        if eot != _eot(text, a2, specials) or not text[: text.index(a1)].endswith(header):
            problem = "assistant turns are not rendered alike"

    tool = _R.format("tool")
    wrapped = f"{RESP_OPEN}\n{tool}\n{RESP_CLOSE}"
    try:
        with_tool = render_text(tokenizer, to_messages(convo[:3] + [("tool", tool)] + convo[4:]), template)
        tool_role = tool in with_tool
    except Exception:
        with_tool, tool_role = "", False
    # Turn by turn: what the template writes for each probe turn after its context with the
    # generation prompt. A whole render gives those samples only if that is the content itself.
    per_turn, turn_problem = True, ""
    probe = to_messages(convo)
    for k, (n, a) in ((2, (1, a1)), (4, (2, a2))):
        try:
            turn = render_turn(tokenizer, probe, k, template)
        except TemplateError as e:
            per_turn, turn_problem = False, str(e).split(": ", 1)[-1] if str(e).startswith("turn ") else str(e)
            break
        written = turn.through[len(turn.context) :]
        if _R.format(f"text{n}") not in written:
            per_turn, turn_problem = False, "an assistant turn's text is not in what it renders for the turn"
            break
        if not problem and not written.startswith(a) and not written.startswith(header + a):  # (a template without a generation prompt writes the header)
            problem = f"it writes {written[: written.find(a) if a in written else 40]!r} of its own between the generation prompt and an assistant turn's content"
    sys_header = text[: text.index(sys_)] if sys_ in text else ""
    no_sys = render_text(tokenizer, to_messages(convo[1:]), template)
    return TemplateInfo(
        template=template,
        tool_role=tool_role,
        wraps_tool=tool_role and wrapped in with_tool,
        verbatim=not problem,
        per_turn=not problem or per_turn,
        injects_system=bool(sys_header) and sys_header in no_sys,
        header=header,
        eot=eot,
        problem=problem,
        turn_problem=turn_problem,
        renders_calls=not problem and _renders_calls(tokenizer, template, header, eot),
    )


def _renders_calls(tokenizer, template: str, header: str, eot: str) -> bool:
    """Whether the template writes a structured call after the assistant content and before the
    end of the turn, where the model writes it."""
    name, content = _R.format("call"), _R.format("said")
    call = {"type": "function", "function": {"name": name, "arguments": {"k": 1}}}
    msgs = [Message("user", _R.format("user"), 0), Message("assistant", content, 1, tool_calls=[call])]
    try:
        text = render_text(tokenizer, msgs, template)
    except Exception:
        return False
    i = text.find(header + content)
    j = text.find(eot, i + len(header) + len(content)) if i >= 0 else -1
    return j >= 0 and name in text[i:j]


def _around(text: str, k: int) -> str:
    """The rendered text of probe assistant turn k, up to its text sentinel."""
    sentinel = _R.format(f"text{k}")
    i = text.find(sentinel)
    return text[max(0, i - 60) : i + len(sentinel)] + "..." if i >= 0 else "(missing)"


def _header(text: str, content: str, specials: list[str]) -> str:
    """From the last added token before `content` up to it, e.g. `<|im_start|>assistant\\n`."""
    i = text.index(content)
    start = max((text.rfind(s, 0, i) for s in specials), default=-1)
    return text[start:i] if start >= 0 else ""


def _eot(text: str, content: str, specials: list[str]) -> str:
    """From the end of `content` up to and including the first added token after it."""
    i = text.index(content) + len(content)
    hits = [(j, s) for s in specials if (j := text.find(s, i)) >= 0]
    if not hits:
        return ""
    j, s = min(hits, key=lambda h: (h[0], -len(h[1])))
    return text[i : j + len(s)]


def template_of(tokenizer, choice: str) -> str:
    """The template string for a choice: `auto` (the tokenizer's own), `chatml`, or Jinja text."""
    if choice == "chatml":
        return CHATML_TEMPLATE
    if choice == "auto":
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError("the tokenizer has no chat template; use the faithful ChatML template (chat_template='chatml', CLI --chat-template chatml)")
        t = tokenizer.chat_template
        return t if isinstance(t, str) else t["default"]
    return choice


def check_faithful(info: TemplateInfo, tokenizer, name: str = "the tokenizer's") -> None:
    """Refuse a template that can give no exact sample (one that changes an assistant turn even
    right after its own context), or ChatML on a tokenizer without its tokens."""
    if not info.per_turn:
        raise TemplateError(
            f"{name} chat template cannot give exact samples: it does not render the conversation verbatim "
            f"({info.problem}), and {info.turn_problem}; the model would be trained on text it never sees. "
            "Render through a faithful ChatML template instead: chat_template='chatml' (CLI: --chat-template chatml)."
        )
    if info.template == CHATML_TEMPLATE:
        missing = [t for t in ("<|im_start|>", "<|im_end|>") if t not in tokenizer.get_added_vocab()]
        if missing:
            raise TemplateError(f"ChatML needs {', '.join(missing)} as single tokens: add them with --add-tokens {','.join(missing)}")


# ----------------------------------------------------------------------------- rendering


def render(tokenizer, messages: Sequence[Message], info: TemplateInfo) -> Rendered:
    """Render a whole conversation once; locate every message's content in order.

    Each content is searched from the end of the previous one, an assistant content together
    with its header and followed by the end-of-turn text, so template text between messages can
    never be taken for content. A content the template changed is not found: TemplateError.
    """
    try:
        text = render_text(tokenizer, messages, info.template)
    except Exception as e:  # e.g. a template that insists on alternating roles
        raise TemplateError(f"the chat template cannot render this conversation: {e}") from e
    spans, ends = [], []
    pos = 0
    for m in messages:
        if m.role == "assistant" and m.tool_calls:
            # The content, then the calls as the template writes them, up to the end of the turn.
            j = text.find(info.header + m.content, pos)
            k = text.find(info.eot, j + len(info.header) + len(m.content)) if j >= 0 else -1
            if k < 0:
                raise TemplateError(f"turn {m.turn}: the chat template changed this assistant content")
            start, pos = j + len(info.header), k
            spans.append(_span(m.turn, text[start:pos], start, pos + len(info.eot)))
        elif m.role == "assistant":
            j = text.find(info.header + m.content + info.eot, pos)
            if j < 0:
                raise TemplateError(f"turn {m.turn}: the chat template changed this assistant content")
            start = j + len(info.header)
            pos = start + len(m.content)
            spans.append(_span(m.turn, m.content, start, pos + len(info.eot)))
        else:
            j = text.find(m.content, pos)
            if j < 0:
                raise TemplateError(f"turn {m.turn}: the chat template changed this {m.role} content")
            pos = j + len(m.content)
        ends.append(pos)
    return Rendered(text, spans, ends)


def _span(turn: int, written: str, start: int, end: int) -> AssistantSpan:
    """The span of an assistant turn whose text `written` (its content, and calls where the
    template wrote them) starts at `start`."""
    segs = parse_turn("assistant", written).segments
    return AssistantSpan(
        turn=turn,
        start=start,
        end=end,
        reasoning=[(start + s.start, start + s.end) for s in segs if s.kind == REASONING],
        tool_calls=any(s.kind == TOOL_CALL for s in segs),
    )


# ----------------------------------------------------------------------------- turn by turn


@dataclass(slots=True, frozen=True)
class TurnRender:
    """What the model sees when it acts at assistant turn k, and what it writes."""

    context: str  # the render of messages[:k] with the generation prompt
    through: str  # the render of messages[:k + 1]; begins with `context`


def render_turn(tokenizer, messages: Sequence[Message], k: int, template: str) -> TurnRender:
    """The renders around assistant message k: the context the model acts on, and the context
    followed by what the template writes for turn k when the conversation goes on through it.
    Where the render through turn k does not begin with the context (Qwen3 drops the empty think
    block of an assistant turn once another assistant turn follows it), turn k is what follows
    the generation prompt in that render, after the point where the two part. TemplateError where
    there is no such turn (the template has no generation prompt, or rewrites that too)."""
    try:
        context = render_text(tokenizer, messages[:k], template, True)
        through = render_text(tokenizer, messages[: k + 1], template)
        if through.startswith(context):
            return TurnRender(context, through)
        prompt = context[len(render_text(tokenizer, messages[:k], template)) :]
    except Exception as e:
        raise TemplateError(f"the chat template cannot render this conversation: {e}") from e
    parted = len(os.path.commonprefix([context, through]))
    j = through.find(prompt, max(0, parted - len(prompt))) if prompt else -1
    if j < 0:
        raise TemplateError(f"turn {messages[k].turn}: the chat template's render through this assistant turn does not begin with its render of the turns before it")
    return TurnRender(context, context + through[j + len(prompt) :])


def extends(later: TurnRender, earlier: TurnRender) -> bool:
    """Whether one sample can train both turns: the later turn's context begins with the render
    through the earlier turn (the template did not rewrite it when the conversation went on)."""
    return later.context.startswith(earlier.through)


def render_sample(turns: Sequence[tuple[Message, TurnRender]], end_token) -> Rendered:
    """One sample training consecutive assistant turns whose renders extend one another: the text
    is the render through the last; each turn's span starts where its context ends and ends after
    the last added token (`end_token`, a compiled pattern of them) of what the template wrote for
    it, so the text after its end-of-turn token is context, as with whole renders."""
    text = turns[-1][1].through
    spans = []
    for m, r in turns:
        start = len(r.context)
        target = r.through[start:]
        ends = [e.end() for e in end_token.finditer(target)]
        if not text.startswith(r.through):
            raise TemplateError(f"turn {m.turn}: the chat template rewrites this assistant turn later in the same sample")
        spans.append(_span(m.turn, target, start, start + (ends[-1] if ends else len(target))))
    return Rendered(text, spans, [])
