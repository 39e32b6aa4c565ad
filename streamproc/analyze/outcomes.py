"""What happened when a tool ran, and whether a call fits the tools the row declares.

The single place for this logic: `stats` counts with it and the trace viewer colours with it.

Tool failures are read from the response's structure, not from the substring "error": every
terminal result carries `"error": null`, so that substring flags successes too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from streamproc.parse.turns import ToolCall, ToolResponse

# Error classes `classify` returns, most specific first; the README documents each.
UNKNOWN = "unknown"  # the harness could not tell: name `unknown` (unmatched) or status `unknown`
EXIT_CODE = "exit_code"  # a non-zero exit_code
TRACEBACK = "traceback"  # a Python traceback or `SomethingError:` / `...Exception:` line in the output
ERROR_FIELD = "error_field"  # a non-null, non-empty `error`
FAILED = "failed"  # success: false, or a failing status / error_type
ERROR_TEXT = "error_text"  # plain-text output that starts by saying it failed
ERROR_CLASSES = (UNKNOWN, EXIT_CODE, TRACEBACK, ERROR_FIELD, FAILED, ERROR_TEXT)

_FAILED_STATUS = {"error", "failed", "failure", "fail", "exception", "timeout", "denied", "rejected"}
_TRACEBACK_RE = re.compile(r"Traceback \(most recent call last\)|^\s*[A-Z]\w*(?:Error|Exception): ", re.M)
_ERROR_TEXT_RE = re.compile(r"\s*(?:error\b|fatal\b|failed\b|exception\b|tool '[^']*' does not exist)", re.I)
_OUTPUT_KEYS = ("output", "stderr", "message", "result")


def classify(response: ToolResponse) -> str | None:
    """The error class of a tool response (one of ERROR_CLASSES), or None when it looks ok."""
    if response.name == "unknown":
        return UNKNOWN
    content = _decoded(response.content)
    if isinstance(content, dict):
        return _classify_object(content)
    if isinstance(content, str):
        if _has_traceback(content):
            return TRACEBACK
        if _ERROR_TEXT_RE.match(content):
            return ERROR_TEXT
    return None


def _decoded(content: Any) -> Any:
    # Some tools return their JSON result as a string inside `content`.
    if isinstance(content, str) and content[:1] == "{" and content[-1:] == "}":
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError:
            return content
    return content


def _classify_object(c: dict) -> str | None:
    status = c.get("status")
    if isinstance(status, str) and status.lower() == "unknown":
        return UNKNOWN
    code = c.get("exit_code")
    if isinstance(code, (int, float)) and not isinstance(code, bool) and code != 0:
        return EXIT_CODE
    err = c.get("error")
    if err not in (None, "", False, [], {}):
        return TRACEBACK if isinstance(err, str) and _has_traceback(err) else ERROR_FIELD
    if c.get("success") is False or c.get("ok") is False:
        return FAILED
    if isinstance(status, str) and status.lower() in _FAILED_STATUS or c.get("error_type"):
        return FAILED
    for key in _OUTPUT_KEYS:
        v = c.get(key)
        if isinstance(v, str) and _has_traceback(v):
            return TRACEBACK
    return None


def _has_traceback(text: str) -> bool:
    # Substring tests first: the multi-line pattern is five times slower on long outputs.
    return ("Traceback (" in text or "Error: " in text or "Exception: " in text) and bool(_TRACEBACK_RE.search(text))


def flagged_by_substring(response: ToolResponse) -> bool:
    """What a naive check says: `"error"`, `"traceback"` or `"exit_code": 1` in the dumped response.
    It flags every terminal result (they all carry `"error": null`); kept only to contrast with
    `classify` in reports."""
    blob = response.raw.lower()
    return "error" in blob or "traceback" in blob or '"exit_code": 1' in blob


# ----------------------------------------------------------------------------- tool schemas


@dataclass(slots=True, frozen=True)
class ToolSpec:
    name: str
    required: frozenset[str]
    properties: frozenset[str] | None  # None: any argument is accepted


# Problems `check_call` reports.
UNKNOWN_TOOL = "unknown_tool"
MISSING_ARGUMENT = "missing_argument"
UNKNOWN_ARGUMENT = "unknown_argument"


@lru_cache(maxsize=64)
def parse_tools(tools: str) -> dict[str, ToolSpec] | None:
    """Tool specs by name from a row's `tools` JSON: {} when none are declared, None when unreadable.

    Accepts OpenAI style `{"type": "function", "function": {...}}` and hermes style
    `{"name", "description", "parameters"}`. Cached: the same list repeats in every row.
    """
    if not tools or tools.isspace():
        return {}
    try:
        items = orjson.loads(tools)
    except orjson.JSONDecodeError:
        return None
    if isinstance(items, dict):
        items = items.get("tools", [items])
    if not isinstance(items, list):
        return None
    specs = {}
    for item in items:
        spec = _spec(item)
        if spec is not None:
            specs[spec.name] = spec
    return specs


def _spec(item: Any) -> ToolSpec | None:
    if not isinstance(item, dict):
        return None
    fn = item.get("function") if isinstance(item.get("function"), dict) else item
    name = fn.get("name")
    if not isinstance(name, str):
        return None
    params = fn.get("parameters")
    if not isinstance(params, dict):
        return ToolSpec(name, frozenset(), None)
    props = params.get("properties")
    required = params.get("required")
    required = frozenset(r for r in required if isinstance(r, str)) if isinstance(required, list) else frozenset()
    open_ = not isinstance(props, dict) or params.get("additionalProperties") not in (None, False)
    return ToolSpec(name, required, None if open_ else frozenset(props))


def check_call(call: ToolCall, specs: dict[str, ToolSpec] | None) -> list[str]:
    """Schema problems of a valid call against the row's tools: [] when it fits or nothing is declared."""
    if not specs or not call.valid:
        return []
    spec = specs.get(call.name)
    if spec is None:
        return [UNKNOWN_TOOL]
    args = call.arguments
    problems = []
    if not spec.required <= args.keys():
        problems.append(MISSING_ARGUMENT)
    if spec.properties is not None and not args.keys() <= spec.properties:
        problems.append(UNKNOWN_ARGUMENT)
    return problems


# ----------------------------------------------------------------------------- status

MALFORMED_CALL = "malformed_call"
"""The failure class of a call whose JSON did not parse (beside the response classes above)."""
UNPARSED = "unparsed"
"""The status of a tool response whose body the parser could not read."""


def status(response: ToolResponse) -> str | None:
    """The error class of a tool response (None when it succeeded); a response that was not
    readable JSON counts as UNPARSED."""
    return classify(response) or (UNPARSED if response.error else None)
