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
from functools import lru_cache
from json.encoder import encode_basestring  # a string as json.dumps(ensure_ascii=False) writes it
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


def _json_text(s: str) -> str:
    """A long string as JSON, as _dumps writes it, at orjson's speed (faster than the standard
    encoder on long text, slower on short)."""
    try:
        return orjson.dumps(s).decode()
    except orjson.JSONEncodeError:  # a lone surrogate, which orjson refuses
        return _dumps(s)


_json_name = lru_cache(maxsize=4096)(encode_basestring)
"""A tool name as JSON: names repeat, so each is encoded once."""


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
            # One call, or a list of parallel ones.
            messages.append({"role": "assistant", "content": "", **({"tool_calls": call} if isinstance(call, list) else {"function_call": call})})
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
    tools = "" if tools_key is None else d[tools_key]
    if type(tools) is not str:  # a nested list: kept as JSON text, like the dataset's column
        tools = _dumps(tools)
    chat, conversations = _build(messages, key, loc, d)
    rid = d.get("id")
    if rid is None or rid == "":
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
        tools=tools,
        source=src if isinstance(src, str) and src else source,
        source_in_data=isinstance(src, str) and bool(src),
        extra={k: v for k, v in d.items() if k not in used},
        loc=loc,
        chat=chat,
        **strs,
    )


@lru_cache(maxsize=64)
def tool_definitions(text: str) -> list[dict] | None:
    """The tool definitions of a tools column (JSON text), in the OpenAI form templates read;
    None where there are none, or the text is not a JSON list of objects (which stats report
    as unreadable tools JSON). Cached: the list returned is shared, never to be changed."""
    try:
        v = orjson.loads(text) if text.strip() else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(v, list) or not all(isinstance(t, dict) for t in v):
        return None
    # Bare {name, description, parameters} schemas (glaive) in the form templates read.
    return [t if "function" in t else {"type": "function", "function": t} for t in v]


def _bad(loc: Location, d: Any, field: str, message: str) -> NoReturn:
    raise RowError(BadRow(loc, field, message, d))


def _content(c: Any, field: str, bad: Callable[[str, str], NoReturn]) -> str:
    """A content that is not a string: none, or a list of text parts."""
    if c is None:
        return ""
    if isinstance(c, list):  # content parts: text ones only
        parts = []
        for k, p in enumerate(c):
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                bad(f"{field}.content[{k}]", "is not a text part ({type: text, text: ...})")
            parts.append(p["text"])
        return "".join(parts)
    bad(f"{field}.content", f"is a {type(c).__name__}, not a string")


def _call_field(key: str, i: int, label: str, k: int) -> str:
    return f"{key}[{i}].{label}[{k}]" if label == "tool_calls" else f"{key}[{i}].{label}"


def _bad_call(c: Any, fn: Any, name: Any, field: str, bad: Callable[[str, str], NoReturn]) -> NoReturn:
    if type(c) is not dict:
        bad(field, f"is a {type(c).__name__}, not an object")
    if type(fn) is not dict:
        bad(f"{field}.function", f"is a {type(fn).__name__}, not an object")
    bad(f"{field}.name", "missing" if name is None else f"{name!r} is not a tool name")


def _listed_id(m: dict) -> str | None:
    """A result's call id from SWE-agent's `tool_call_ids` list (its first), else None."""
    ids = m.get("tool_call_ids")
    return next((i for i in ids if isinstance(i, str) and i), None) if isinstance(ids, list) else None


def _build(messages: list, key: str, loc: Location, d: dict) -> tuple[ChatLayout, list[tuple[str, str]]]:
    """Normalize and validate the messages; build the ShareGPT text and the parsed turns together.
    Written for speed (the chat layout parses at least as fast as ShareGPT text): the common
    case of every field is tested first, field names are made only for an error."""

    def bad(field: str, message: str) -> NoReturn:
        _bad(loc, d, field, message)

    turn_of: list[int] = []
    turns: list[Turn] = []
    calls: list[tuple[int, int]] = []
    responses: list[tuple[int, int]] = []
    call_ids: list[str | None] = []  # per call, its id
    made: list[ToolCall] = []  # per call, the record
    pending: list[int] = []  # calls not answered yet, in order
    # The tool turn being gathered (consecutive results): its text pieces, segments, results.
    t_parts: list[str] = []
    t_segments: list[Segment] = []
    t_results: list[ToolResponse] = []
    t_pos = 0
    for i, m in enumerate(messages):
        if type(m) is not dict:
            bad(f"{key}[{i}]", f"is a {type(m).__name__}, not an object")
        role = m.get("role")
        role = _ROLE.get(role) if type(role) is str else None
        if role is None:
            bad(f"{key}[{i}].role", f"{m.get('role')!r} is not one of {', '.join(_ROLE)}")
        content = m.get("content")
        if type(content) is not str:
            content = _content(content, f"{key}[{i}]", bad)
        if role == "tool":
            cid = m.get("tool_call_id")
            if type(cid) is not str or not cid:
                cid = _listed_id(m)
            name = m.get("name")
            if type(name) is not str:
                name = None
            if pending and cid is not None and call_ids[pending[0]] == cid:  # results in call order
                ci = pending.pop(0)
            else:
                ci = _answers(cid, name, pending, call_ids, f"{key}[{i}]", bad, turns, calls)
                pending.remove(ci)
            call = made[ci]
            if cid is None:
                cid = call_ids[ci]
            if name is None:
                name = call.name
            turn_of.append(len(turns))
            call.response = len(responses)
            responses.append((len(turns), len(t_results)))
            value = _result_value(content) if content[:1] == "{" else content
            # An object result is embedded as written; text is written as a JSON string.
            body = f'\n{{"tool_call_id": {"null" if cid is None else encode_basestring(cid)}, "name": {_json_name(name)}, "content": {content if value is not content else _json_text(content)}}}\n'
            if t_results:  # results are joined by newlines
                t_segments.append(Segment(TEXT, t_pos, t_pos + 1, t_pos, t_pos + 1))
                t_parts.append("\n")
                t_pos += 1
            end = t_pos + 31 + len(body)  # <tool_response> and </tool_response>
            t_results.append(ToolResponse(cid, name, value, body, None, len(t_segments), ci))
            t_segments.append(Segment(TOOL_RESPONSE, t_pos, end, t_pos + 15, end - 16))
            t_parts += ("<tool_response>", body, "</tool_response>")
            t_pos = end
            continue
        if t_results:
            turns.append(Turn("tool", "".join(t_parts), t_segments, [], [], "", t_results))
            t_parts, t_segments, t_results, t_pos = [], [], [], 0
        if role == "assistant":
            reasoning = m.get("reasoning_content")
            if type(reasoning) is not str:
                reasoning = next((m[k] for k in _REASONING_KEYS if isinstance(m.get(k), str)), None)
            turn, ids = _assistant_turn(m, content, reasoning, key, i, bad)
            t = len(turns)
            first = len(turn.tool_calls) - len(ids)  # calls written as text in `content` come first
            for k, c in enumerate(turn.tool_calls):
                pending.append(len(calls))
                calls.append((t, k))
                call_ids.append(ids[k - first] if k >= first else None)
                made.append(c)
            turns.append(turn)
        else:
            if pending:
                t, k = calls[pending[0]]
                bad(f"{key}[{turn_of.index(t)}].tool_calls[{k}]", f"call {call_ids[pending[0]] or turns[t].tool_calls[k].name!r} "
                    f"is never answered: message {i} ({role}) comes before its result")
            turns.append(Turn(role, content, [Segment(TEXT, 0, len(content), 0, len(content))] if content else []))
        turn_of.append(len(turns) - 1)
    if t_results:
        turns.append(Turn("tool", "".join(t_parts), t_segments, [], [], "", t_results))
    conversations = [(_FROM[t.role], t.text) for t in turns]
    return ChatLayout(messages, turn_of, turns, calls, responses), conversations


def chat_messages(chat: ChatLayout) -> list[dict[str, Any]]:
    """The row's messages normalized, as a chat template reads them: roles system / user /
    assistant / tool, `content` a string, `reasoning_content` where the row had reasoning,
    `tool_calls` as `{id, type, function: {name, arguments}}` with `arguments` an object (as
    decoded when read), results with the `tool_call_id` and `name` of the call they answer."""
    out: list[dict[str, Any]] = []
    j = 0  # the next result of the tool turn
    for m, t in zip(chat.source, chat.turn_of):
        role = _ROLE[m["role"]]
        content = m.get("content")
        if type(content) is not str:
            content = _content(content, "", _never)
        if role == "tool":
            j = j + 1 if out and out[-1]["role"] == "tool" else 0
            r = chat.turns[t].tool_responses[j]
            out.append({"role": "tool", "content": content, "tool_call_id": r.tool_call_id, "name": r.name})
            continue
        msg: dict[str, Any] = {"role": role, "content": content}
        if role == "assistant":
            reasoning = next((m[k] for k in _REASONING_KEYS if isinstance(m.get(k), str)), None)
            if reasoning is not None:
                msg["reasoning_content"] = reasoning
            raw = m.get("tool_calls")
            if raw is None:  # as _assistant_turn reads them
                raw = [] if m.get("function_call") is None else [m["function_call"]]
            made = chat.turns[t].tool_calls[len(chat.turns[t].tool_calls) - len(raw) :]
            if raw:
                msg["tool_calls"] = [
                    {"id": c.get("id") or None, "type": "function", "function": {"name": k.name, "arguments": k.arguments}} for c, k in zip(raw, made)
                ]
        out.append(msg)
    return out


def _never(field: str, message: str) -> NoReturn:
    raise AssertionError(f"{field}: {message} (the row was validated when read)")


def _answers(cid: str | None, name: str | None, pending: list[int], call_ids: list, field: str,
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


def _assistant_turn(m: dict, content: str, reasoning: str | None, key: str, i: int, bad: Callable[[str, str], NoReturn]) -> tuple[Turn, list[str | None]]:
    """The assistant message as the ShareGPT turn the harness writes (`<think>` block, text, one
    `<tool_call>` block per call) with the segments, thoughts and calls the parser finds in that
    text (parse_turn of the text gives the same Turn: tested), and its calls' ids. One pass, for speed."""
    raw = m.get("tool_calls")
    label = "tool_calls"
    if raw is None:
        fc = m.get("function_call")  # Qwen-Agent, the older OpenAI API: one call, no id
        raw, label = ((), label) if fc is None else ((fc,), "function_call")
    elif type(raw) is not list:
        bad(f"{key}[{i}].tool_calls", f"is a {type(raw).__name__}, not a list")
    parts: list[str] = []
    segments: list[Segment] = []
    thoughts: list[str] = []
    made: list[ToolCall] = []
    ids: list[str | None] = []
    pos = at = 0  # pos: end of the last segment; at: end of the text so far
    if reasoning is not None:
        if reasoning:
            parts += ("<think>\n", reasoning, "\n</think>")
            pos = at = 17 + len(reasoning)
        else:
            parts.append("<think>\n</think>")
            pos = at = 16
        segments.append(Segment(REASONING, 0, pos, 7, pos - 8))
        thoughts.append(reasoning.strip())
        if content or raw:  # the newline after </think> is text, as the parser sees it; a turn that is only reasoning ends at </think>
            parts.append("\n")
            at += 1
    if content:
        parts.append(content)
        at += len(content)
    for k, c in enumerate(raw):
        fn = c.get("function", c) if type(c) is dict else None
        name = fn.get("name") if type(fn) is dict else None
        if type(name) is not str or not name:
            _bad_call(c, fn, name, _call_field(key, i, label, k), bad)
        # Arguments as an object, and as the JSON text the ShareGPT call embeds: a string is
        # embedded as written (it decodes to the same object), not encoded again.
        args_text = fn.get("arguments")  # type: ignore[union-attr]
        if type(args_text) is str:
            try:
                args = orjson.loads(args_text)
            except orjson.JSONDecodeError as e:
                if args_text.strip():
                    bad(f"{_call_field(key, i, label, k)}.arguments", f"is not JSON: {e}")
                args, args_text = {}, "{}"  # some writers give a function without parameters ""
        elif args_text is None:
            args, args_text = {}, "{}"
        else:
            args = args_text
        if type(args) is not dict:
            bad(f"{_call_field(key, i, label, k)}.arguments", f"is a JSON {type(args).__name__}, not an object")
        if type(args_text) is not str:
            args_text = _dumps(args)
        cid = c.get("id")  # type: ignore[union-attr]
        ids.append(cid if type(cid) is str and cid else None)
        if k or content:
            parts.append("\n")
            at += 1
        if at > pos:
            segments.append(Segment(TEXT, pos, at, pos, at))
        body = f'\n{{"name": {_json_name(name)}, "arguments": {args_text}}}\n'
        made.append(ToolCall(name, args, body, True, None, len(segments)))
        pos = at + 23 + len(body)  # <tool_call> and </tool_call>
        segments.append(Segment(TOOL_CALL, at, pos, at + 11, pos - 12))
        parts += ("<tool_call>", body, "</tool_call>")
        at = pos
    text = "".join(parts)
    if "<" in content and any(tag in content for tag in _TAGS) or reasoning is not None and "</think>" in reasoning:
        return parse_turn("assistant", text), ids  # text that holds tags of its own: the parser reads it
    if at > pos:
        segments.append(Segment(TEXT, pos, at, pos, at))
    return Turn("assistant", text, segments, thoughts, made, content.strip(), []), ids


# ----------------------------------------------------------------------------- writing


def sharegpt_record(row: Row, with_source: bool = True) -> dict[str, Any]:
    """A row in the dataset schema (ShareGPT `conversations`, tags in the text), whichever
    layout it was read from, every extra column carried; `source` where the input gave one, or
    `with_source`."""
    rec = {
        "id": row.id,
        "conversations": [{"from": f, "value": v} for f, v in row.conversations],
        "tools": row.tools,
        "category": row.category,
        "subcategory": row.subcategory,
        "task": row.task,
    }
    if with_source or row.source_in_data:
        rec["source"] = row.source
    rec.update(row.extra)
    return rec


def openai_record(trace: Trace) -> dict[str, Any]:
    """A trace in the chat `messages` layout: structured `tool_calls` (arguments as JSON strings,
    as the OpenAI API writes them, so every row has one Arrow schema), `tool_call_id`s,
    `reasoning_content`, and the `tools` column as JSON text; every extra column carried."""
    return {
        "id": trace.id,
        "messages": openai_messages(trace),
        "tools": trace.tools,
        "category": trace.category,
        "subcategory": trace.subcategory,
        "task": trace.task,
        "source": trace.source,
        **trace.extra,
    }


def openai_messages(trace: Trace) -> list[dict[str, Any]]:
    """The chat messages of a trace: `role`, `content`, and `reasoning_content`, `tool_calls`,
    `tool_call_id`, `name` where set (Parquet writes the unset ones as nulls)."""
    if trace.chat is not None:
        return [_written(m) for m in chat_messages(trace.chat)]
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
    return {"role": role, "content": content, **{f: v for f, v in fields.items() if v is not None}}


def _written(m: dict) -> dict[str, Any]:
    """A normalized message as written: arguments as JSON text."""
    calls = m.get("tool_calls")
    if not calls:
        return m
    calls = [{"id": c["id"], "type": "function", "function": {"name": c["function"]["name"], "arguments": _dumps(c["function"]["arguments"])}} for c in calls]
    return {**m, "tool_calls": calls}


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
    """The Parquet schema of `sharegpt_record` / `openai_record` rows (their extra columns,
    whose types differ from row to row, are left out)."""
    import pyarrow as pa

    s = pa.string()
    if layout == "sharegpt":
        turns = ("conversations", pa.list_(pa.struct([("from", s), ("value", s)])))
    else:
        call = pa.struct([("id", s), ("type", s), ("function", pa.struct([("name", s), ("arguments", s)]))])
        message = pa.struct([("role", s), ("content", s), ("reasoning_content", s), ("tool_calls", pa.list_(call)), ("tool_call_id", s), ("name", s)])
        turns = ("messages", pa.list_(message))
    return pa.schema([("id", s), turns, ("tools", s), ("category", s), ("subcategory", s), ("task", s), ("source", s)])
