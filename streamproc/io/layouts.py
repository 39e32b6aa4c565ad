"""Row layouts: what a record's columns say it is, and how it becomes a `Row`.

Two layouts are read, told apart per row by their columns (so one file, one row group or one run
may mix them):

- ShareGPT `conversations` of `{from, value}` (records.row_from_dict), tags in the text; also
  its tool-calling variant with `from` = `function_call` (a JSON `{name, arguments}`) and
  `observation` (the result), as LLaMA-Factory and APIGen-MT write it.
- the chat `messages` layout (OpenAI, TRL): `{role, content}` with `tool_calls` (`arguments` an
  object or a JSON string), tool results as role `tool` (`tool_call_id`, or `tool_call_ids`, or
  `name`) or role `function` (Qwen-Agent: an assistant `function_call` per call, no ids),
  reasoning in `reasoning_content` / `reasoning` / `thinking` or as `<think>` in `content`.
  `messages` (or SWE-agent's `history`) and `tools` (or `available_tools`) may be nested values
  or JSON strings.

A chat-layout row is written as the ShareGPT text the hermes harness would have written for it
(`Row.conversations`: `<think>`, `<tool_call>` and `<tool_response>` blocks), so every stage that
reads text works unchanged, and its structure is kept (`Row.chat`): the parsed turns are built
from it directly (no text is scanned), calls paired with results by `tool_call_id` where given,
by name and order otherwise. The same trace in either layout parses to the same `Trace`.

`openai_record` and `sharegpt_record` write a trace in either layout (`streamproc export
--layout`, `synth --layout`); `arrow_schema` is their Parquet schema.
"""

from __future__ import annotations

import json
from typing import Any, Callable, NoReturn

import orjson

from streamproc.parse.parser import parse_turn
from streamproc.parse.turns import REASONING, TEXT, TOOL_CALL, TOOL_RESPONSE, Segment, ToolCall, ToolResponse, Turn
from streamproc.records import BadRow, ChatLayout, Location, Row, RowError, Trace, content_id, row_from_dict

LAYOUTS = ("sharegpt", "openai")
MESSAGE_KEYS = ("messages", "history")  # history: SWE-agent trajectories
TOOLS_KEYS = ("tools", "available_tools")  # available_tools: Toucan
ID_KEYS = ("id", "uuid")
CALL_FROMS = ("function_call", "observation")
"""ShareGPT `from` values of the tool-calling variant."""

_ROLE = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool", "function": "tool"}
_FROM = {"system": "system", "user": "human", "assistant": "gpt", "tool": "tool"}
_REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
_STR_FIELDS = ("category", "subcategory", "task")
# Text that would make the parser read an assistant turn's text differently from its structure.
_TAGS = ("<think>", "</think>", "<tool_call>")


def _dumps(obj: Any) -> str:
    # As the hermes harness writes its JSON: json.dumps(ensure_ascii=False), ", " and ": ".
    return json.dumps(obj, ensure_ascii=False)


# ----------------------------------------------------------------------------- reading


def row_from_record(d: Any, loc: Location, source: str) -> Row:
    """Validate one decoded record in whichever layout its columns say. Raises RowError naming
    the row and the field; a record of neither layout names the columns it has."""
    if isinstance(d, dict) and "conversations" not in d:
        key = next((k for k in MESSAGE_KEYS if k in d), None)
        if key is None:
            _bad(loc, d, "conversations", f"missing: a row of unknown layout, with columns {', '.join(map(str, d)) or 'none'} "
                 "(expected `conversations` of from/value, or chat `messages` of role/content)")
        return row_from_messages(d, key, loc, source)
    try:
        return row_from_dict(d, loc, source)
    except RowError as e:
        # The tool-calling ShareGPT variant is met only when a `from` is refused: plain rows pay nothing.
        if e.bad.field.endswith(".from") and any(isinstance(t, dict) and t.get("from") in CALL_FROMS for t in d["conversations"]):
            return _row_from_function_roles(d, loc, source)
        raise


def _row_from_function_roles(d: dict, loc: Location, source: str) -> Row:
    """ShareGPT with `function_call` / `observation` turns, as chat messages."""
    messages = []
    for i, t in enumerate(d["conversations"]):
        if not isinstance(t, dict):
            _bad(loc, d, f"conversations[{i}]", f"is a {type(t).__name__}, not an object")
        frm, value = t.get("from"), t.get("value")
        if not isinstance(value, str):
            _bad(loc, d, f"conversations[{i}].value", f"is a {type(value).__name__}, not a string")
        if frm == "function_call":
            try:
                call = orjson.loads(value)
            except orjson.JSONDecodeError as e:
                _bad(loc, d, f"conversations[{i}].value", f"a function_call that is not JSON: {e}")
            messages.append({"role": "assistant", "content": "", "function_call": call})
        elif frm == "observation":
            messages.append({"role": "tool", "content": value})
        elif frm in ("system", "human", "gpt"):
            messages.append({"role": {"human": "user", "gpt": "assistant"}.get(frm, frm), "content": value})
        else:
            _bad(loc, d, f"conversations[{i}].from", f"{frm!r} is not one of system, human, gpt, function_call, observation")
    return _row(d, messages, "conversations", loc, source)


def row_from_messages(d: dict, key: str, loc: Location, source: str) -> Row:
    """A record of the chat `messages` layout (the list under `key`) as a Row."""
    messages = d[key]
    if isinstance(messages, str):
        try:
            messages = orjson.loads(messages)
        except orjson.JSONDecodeError as e:
            _bad(loc, d, key, f"is a string that is not JSON: {e}")
    if not isinstance(messages, list):
        _bad(loc, d, key, f"is a {type(messages).__name__}, not a list of messages")
    return _row(d, messages, key, loc, source)


def _row(d: dict, messages: list, key: str, loc: Location, source: str) -> Row:
    tools_key = next((k for k in TOOLS_KEYS if d.get(k) is not None), None)
    tools_text, tools = _tools(d, tools_key, loc)
    chat, conversations = _build(messages, key, tools, loc, d)
    rid = next((d[k] for k in ID_KEYS if d.get(k) not in (None, "")), None)
    strs = {}
    for f in _STR_FIELDS:
        v = d.get(f)
        if v is not None and not isinstance(v, str):
            _bad(loc, d, f, f"is a {type(v).__name__}, not a string")
        strs[f] = v or ""
    src = d.get("source")
    used = {key, "id", "source", *_STR_FIELDS, *([tools_key] if tools_key else ())}
    if rid is not None and "id" not in d:
        used.add(next(k for k in ID_KEYS if d.get(k) == rid))
    return Row(
        id=content_id(conversations) if rid is None else str(rid),
        conversations=conversations,
        tools=tools_text,
        source=src if isinstance(src, str) and src else source,
        extra={k: v for k, v in d.items() if k not in used},
        loc=loc,
        chat=chat,
        **strs,
    )


def _tools(d: dict, key: str | None, loc: Location) -> tuple[str, list[dict] | None]:
    """The tools column as JSON text (Row.tools) and as OpenAI-form definitions for a template."""
    if key is None:
        return "", None
    v = d[key]
    text = v if isinstance(v, str) else _dumps(v)
    if isinstance(v, str):
        if not v.strip():
            return "", None
        try:
            v = orjson.loads(v)
        except orjson.JSONDecodeError as e:
            _bad(loc, d, key, f"is a string that is not JSON: {e}")
    if not isinstance(v, list) or not all(isinstance(t, dict) for t in v):
        _bad(loc, d, key, f"is a {type(v).__name__}, not a list of tool definitions")
    # Bare {name, description, parameters} schemas (glaive) in the form templates read.
    return text, [t if "function" in t else {"type": "function", "function": t} for t in v]


def _bad(loc: Location, d: Any, field: str, message: str) -> NoReturn:
    raise RowError(BadRow(loc, field, message, d))


def _content(m: dict, field: str, bad: Callable[[str, str], NoReturn]) -> str:
    c = m.get("content")
    if c is None:
        return ""
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # content parts: text ones only
        parts = []
        for k, p in enumerate(c):
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                bad(f"{field}.content[{k}]", "is not a text part ({type: text, text: ...})")
            parts.append(p["text"])
        return "".join(parts)
    bad(f"{field}.content", f"is a {type(c).__name__}, not a string")


def _arguments(v: Any, field: str, bad: Callable[[str, str], NoReturn]) -> dict:
    if v is None:
        return {}
    if isinstance(v, str):
        if not v.strip():  # some writers give a function without parameters ""
            return {}
        try:
            v = orjson.loads(v)
        except orjson.JSONDecodeError as e:
            bad(field, f"is not JSON: {e}")
    if not isinstance(v, dict):
        bad(field, f"is a JSON {type(v).__name__}, not an object")
    return v


def _calls(m: dict, field: str, bad: Callable[[str, str], NoReturn]) -> list[dict]:
    """An assistant message's calls as `{id, type, function: {name, arguments}}`, arguments decoded."""
    raw = m.get("tool_calls")
    if raw is None:
        fc = m.get("function_call")  # Qwen-Agent, the older OpenAI API: one call, no id
        raw, field = ([fc], f"{field}.function_call") if fc is not None else ([], field)
    elif not isinstance(raw, list):
        bad(f"{field}.tool_calls", f"is a {type(raw).__name__}, not a list")
    else:
        field = f"{field}.tool_calls"
    calls = []
    for k, c in enumerate(raw):
        f = f"{field}[{k}]" if field.endswith("tool_calls") else field
        if not isinstance(c, dict):
            bad(f, f"is a {type(c).__name__}, not an object")
        fn = c.get("function", c)
        if not isinstance(fn, dict):
            bad(f"{f}.function", f"is a {type(fn).__name__}, not an object")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            bad(f"{f}.name", "missing" if name is None else f"{name!r} is not a tool name")
        cid = c.get("id")
        calls.append({"id": cid if isinstance(cid, str) and cid else None, "type": "function",
                      "function": {"name": name, "arguments": _arguments(fn.get("arguments"), f"{f}.arguments", bad)}})
    return calls


def _result_ids(m: dict) -> list[str]:
    ids = m.get("tool_call_ids")  # SWE-agent: a list
    one = m.get("tool_call_id")
    if isinstance(one, str) and one:
        return [one]
    return [i for i in ids if isinstance(i, str) and i] if isinstance(ids, list) else []


def _build(messages: list, key: str, tools: list[dict] | None, loc: Location, d: dict) -> tuple[ChatLayout, list[tuple[str, str]]]:
    """Normalize and validate the messages; build the ShareGPT text and the parsed turns together."""

    def bad(field: str, message: str) -> NoReturn:
        _bad(loc, d, field, message)

    norm: list[dict] = []
    turn_of: list[int] = []
    turns: list[Turn] = []
    calls: list[tuple[int, int]] = []
    responses: list[tuple[int, int]] = []
    call_ids: list[str | None] = []  # per call, its id
    answered: list[bool] = []
    pending: list[int] = []  # calls not answered yet, in order
    open_tool: list[tuple[dict, ToolResponse]] = []  # the tool turn being gathered: (message, response)

    def close_tool() -> None:
        if open_tool:
            turns.append(_tool_turn(open_tool))
            open_tool.clear()

    for i, m in enumerate(messages):
        field = f"{key}[{i}]"
        if not isinstance(m, dict):
            bad(field, f"is a {type(m).__name__}, not an object")
        role = _ROLE.get(m.get("role"))  # type: ignore[arg-type]
        if role is None:
            bad(f"{field}.role", f"{m.get('role')!r} is not one of {', '.join(_ROLE)}")
        content = _content(m, field, bad)
        if role == "tool":
            ids = _result_ids(m)
            name = m.get("name") if isinstance(m.get("name"), str) else None
            ci = _answers(ids[0] if ids else None, name, pending, call_ids, answered, field, bad, turns, calls)
            pending.remove(ci)
            answered[ci] = True
            call = turns[calls[ci][0]].tool_calls[calls[ci][1]]
            cid = ids[0] if ids else call_ids[ci]
            name = name or call.name
            norm.append({"role": "tool", "content": content, "tool_call_id": cid, "name": name})
            turn_of.append(len(turns))
            ri = len(responses)
            call.response = ri
            responses.append((len(turns), len(open_tool)))
            open_tool.append((norm[-1], ToolResponse(cid, name, _result_value(content), "", None, 0, ci)))
            continue
        close_tool()
        if pending and role != "assistant":
            ci = pending[0]
            bad(_call_field(key, norm, turn_of, calls[ci]), f"call {call_ids[ci] or turns[calls[ci][0]].tool_calls[calls[ci][1]].name!r} "
                f"is never answered: message {i} ({role}) comes before its result")
        msg: dict[str, Any] = {"role": role, "content": content}
        if role != "assistant":
            turns.append(parse_turn(role, content))
        else:
            reasoning = next((m[k] for k in _REASONING_KEYS if isinstance(m.get(k), str)), None)
            made = _calls(m, field, bad)
            if reasoning is not None:
                msg["reasoning_content"] = reasoning
            if made:
                msg["tool_calls"] = made
            turn = _assistant_turn(reasoning, content, made)
            t = len(turns)
            first = len(turn.tool_calls) - len(made)  # calls written as text in `content` come first
            for k in range(len(turn.tool_calls)):
                pending.append(len(calls))
                calls.append((t, k))
                call_ids.append(made[k - first]["id"] if k >= first else None)
                answered.append(False)
            turns.append(turn)
        norm.append(msg)
        turn_of.append(len(turns) - 1)
    close_tool()
    conversations = [(_FROM[t.role], t.text) for t in turns]
    return ChatLayout(norm, turn_of, tools, turns, calls, responses), conversations


def _call_field(key: str, norm: list[dict], turn_of: list[int], at: tuple[int, int]) -> str:
    i = turn_of.index(at[0])
    return f"{key}[{i}].tool_calls[{at[1]}]"


def _answers(cid: str | None, name: str | None, pending: list[int], call_ids: list, answered: list, field: str,
             bad: Callable[[str, str], NoReturn], turns: list[Turn], calls: list) -> int:
    """The call a tool result answers: the unanswered one with its id, else the first unanswered
    one of its name, else the first unanswered one."""
    if cid is not None:
        for ci in pending:
            if call_ids[ci] == cid:
                return ci
        if cid in call_ids:
            bad(f"{field}.tool_call_id", f"{cid!r} answers a call that was answered already")
        if any(call_ids[ci] is not None for ci in pending) or not pending:
            bad(f"{field}.tool_call_id", f"{cid!r} names no call made before it")
        return pending[0]  # the calls had no ids (Toucan): in order
    if not pending:
        bad(field, "a tool result with no call before it to answer")
    if name:
        for ci in pending:
            if turns[calls[ci][0]].tool_calls[calls[ci][1]].name == name:
                return ci
    return pending[0]


def _result_value(content: str) -> Any:
    """A tool result's content as the harness writes it: the object when the tool returned a
    JSON object, else the text."""
    if content[:1] == "{" and content[-1:] == "}":
        try:
            v = orjson.loads(content)
            if type(v) is dict:
                return v
        except orjson.JSONDecodeError:
            pass
    return content


def _assistant_turn(reasoning: str | None, content: str, calls: list[dict]) -> Turn:
    """The assistant turn as ShareGPT text, `<think>` block, text, then one `<tool_call>` block per
    call, with the segments, thoughts and calls the parser finds in that text (parse_turn of the
    text gives the same Turn: tested)."""
    head = "" if reasoning is None else "<think>\n</think>" if reasoning == "" else f"<think>\n{reasoning}\n</think>"
    think = head + "\n" if head and (content or calls) else head  # a turn that is only reasoning ends at </think>
    bodies = [f"\n{_dumps({'name': c['function']['name'], 'arguments': c['function']['arguments']})}\n" for c in calls]
    blocks = [f"<tool_call>{b}</tool_call>" for b in bodies]
    text = think + content + ("\n" if content and blocks else "") + "\n".join(blocks)
    if any(tag in content for tag in _TAGS) or (reasoning is not None and "</think>" in reasoning):
        return parse_turn("assistant", text)  # text that holds tags of its own: the parser reads it
    segments: list[Segment] = []
    thoughts = []
    pos = 0
    if head:
        pos = len(head)  # the newline after </think> is text, as the parser sees it
        segments.append(Segment(REASONING, 0, pos, 7, pos - 8))
        thoughts.append(reasoning.strip())  # type: ignore[union-attr]
    made = []
    at = len(think) + len(content) + (1 if content else 0)  # where the first block starts
    for body, block, c in zip(bodies, blocks, calls):
        if at > pos:
            segments.append(Segment(TEXT, pos, at, pos, at))
        made.append(ToolCall(c["function"]["name"], c["function"]["arguments"], body, True, None, len(segments)))
        pos = at + len(block)
        segments.append(Segment(TOOL_CALL, at, pos, at + 11, pos - 12))
        at = pos + 1
    if pos < len(text):
        segments.append(Segment(TEXT, pos, len(text), pos, len(text)))
    return Turn("assistant", text, segments, thoughts, made, content.strip(), [])


def _tool_turn(results: list[tuple[dict, ToolResponse]]) -> Turn:
    """Consecutive tool results as one ShareGPT tool turn: `<tool_response>` blocks joined by newlines."""
    parts, segments, out = [], [], []
    pos = 0
    for k, (m, r) in enumerate(results):
        if k:
            segments.append(Segment(TEXT, pos, pos + 1, pos, pos + 1))
            parts.append("\n")
            pos += 1
        body = f"\n{_dumps({'tool_call_id': m['tool_call_id'], 'name': m['name'], 'content': r.content})}\n"
        block = f"<tool_response>{body}</tool_response>"
        r.raw, r.segment = body, len(segments)
        segments.append(Segment(TOOL_RESPONSE, pos, pos + len(block), pos + 15, pos + 15 + len(body)))
        parts.append(block)
        pos += len(block)
        out.append(r)
    return Turn("tool", "".join(parts), segments, [], [], "", out)


# ----------------------------------------------------------------------------- writing


def sharegpt_record(row: Row) -> dict[str, Any]:
    """A row in the dataset schema (ShareGPT `conversations`, tags in the text)."""
    return {
        "id": row.id,
        "conversations": [{"from": f, "value": v} for f, v in row.conversations],
        "tools": row.tools,
        "category": row.category,
        "subcategory": row.subcategory,
        "task": row.task,
        "source": row.source,
    }


def openai_record(trace: Trace) -> dict[str, Any]:
    """A trace in the chat `messages` layout: structured `tool_calls` (arguments as JSON strings,
    as the OpenAI API writes them, so every row has one Arrow schema), `tool_call_id`s,
    `reasoning_content`, and the `tools` column as JSON text."""
    return {
        "id": trace.id,
        "messages": openai_messages(trace),
        "tools": trace.tools,
        "category": trace.category,
        "subcategory": trace.subcategory,
        "task": trace.task,
        "source": trace.source,
    }


MESSAGE_FIELDS = ("role", "content", "reasoning_content", "tool_calls", "tool_call_id", "name")


def openai_messages(trace: Trace) -> list[dict[str, Any]]:
    """The chat messages of a trace, every field present (None where unset)."""
    if trace.chat is not None:
        return [_written(m) for m in trace.chat.messages]
    out = []
    ids = _call_ids(trace)
    for ti, t in enumerate(trace.turns):
        if t.role == "assistant":
            out.append(_openai_assistant(ti, t, ids))
        elif t.role == "tool":
            for r in t.tool_responses:
                content = r.content if isinstance(r.content, str) else _dumps(r.content)
                cid = ids[trace.calls[r.call]] if r.call is not None else r.tool_call_id
                out.append(_message("tool", content, tool_call_id=cid, name=r.name))
            if not t.tool_responses:  # plain text output, no blocks
                out.append(_message("tool", t.text))
        else:
            out.append(_message(t.role, t.text))
    return out


def _message(role: str, content: str, **fields: Any) -> dict[str, Any]:
    return {"role": role, "content": content, **{f: fields.get(f) for f in MESSAGE_FIELDS[2:]}}


def _written(m: dict) -> dict[str, Any]:
    calls = m.get("tool_calls")
    if calls:
        calls = [{"id": c["id"], "type": "function", "function": {"name": c["function"]["name"], "arguments": _dumps(c["function"]["arguments"])}} for c in calls]
    return {**_message(m["role"], m["content"]), **{f: m.get(f) for f in MESSAGE_FIELDS[2:]}, "tool_calls": calls or None}


def _call_ids(trace: Trace) -> dict[tuple[int, int], str]:
    """Each call's id by (turn, index in the turn): its result's `tool_call_id`, else
    `functions.<name>:<n>` as the harness numbers them."""
    ids = {}
    for n, at in enumerate(trace.calls):
        c = trace.call(n)
        rid = trace.response(c.response).tool_call_id if c.response is not None else None
        ids[at] = rid or f"functions.{c.name}:{n}"
    return ids


def _openai_assistant(ti: int, t: Turn, ids: dict[tuple[int, int], str]) -> dict[str, Any]:
    """reasoning_content: the body of a `<think>` block that opens the turn; tool_calls: the valid
    calls; content: everything else as written (later think blocks, malformed calls), so reading
    it back finds the same thoughts and calls."""
    reasoning = None
    kept = []
    valid = {c.segment: (k, c) for k, c in enumerate(t.tool_calls) if c.valid}
    tool_calls = []
    for j, s in enumerate(t.segments):
        if j == 0 and s.kind == REASONING and s.closed:
            body = t.text[s.body_start : s.body_end]
            body = body[1:] if body.startswith("\n") else body
            reasoning = body[:-1] if body.endswith("\n") else body
        elif j in valid:
            k, c = valid[j]
            tool_calls.append({"id": ids[(ti, k)], "type": "function", "function": {"name": c.name, "arguments": _dumps(c.arguments)}})
        else:
            kept.append(t.text[s.start : s.end])
    content = "".join(kept)
    if reasoning is not None and content.startswith("\n"):
        content = content[1:]
    if tool_calls:
        content = content.rstrip("\n")
    return _message("assistant", content, reasoning_content=reasoning, tool_calls=tool_calls or None)


def arrow_schema(layout: str):
    """The Parquet schema of `sharegpt_record` / `openai_record` rows."""
    import pyarrow as pa

    s = pa.string()
    if layout == "sharegpt":
        turns = ("conversations", pa.list_(pa.struct([("from", s), ("value", s)])))
    else:
        call = pa.struct([("id", s), ("type", s), ("function", pa.struct([("name", s), ("arguments", s)]))])
        message = pa.struct([("role", s), ("content", s), ("reasoning_content", s), ("tool_calls", pa.list_(call)), ("tool_call_id", s), ("name", s)])
        turns = ("messages", pa.list_(message))
    return pa.schema([("id", s), turns, ("tools", s), ("category", s), ("subcategory", s), ("task", s), ("source", s)])
