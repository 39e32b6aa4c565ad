"""The guide's code, as the baselines streamproc's benchmarks measure against.

"The guide" is the notebook workflow users follow today (the article kept as
../shared/seeds/000_*.txt). Its functions are copied here as written there, so a benchmark
compares streamproc with what a user would otherwise run; only the `print` calls are left out.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Iterable

# ----------------------------------------------------------------------------- Step 2: parsing

THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)
TOOL_CALL_RE = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)
TOOL_RESPONSE_RE = re.compile(r"<tool_response>\s*(.*?)\s*</tool_response>", re.DOTALL)


def parse_assistant_message(text):
    thoughts = [m.strip() for m in THINK_RE.findall(text)]

    tool_calls = []
    for raw_call in TOOL_CALL_RE.findall(text):
        try:
            tool_calls.append(json.loads(raw_call))
        except json.JSONDecodeError:
            tool_calls.append({"name": "<malformed>", "arguments": {}})

    final_answer = THINK_RE.sub("", text)
    final_answer = TOOL_CALL_RE.sub("", final_answer).strip()

    return {
        "thoughts": thoughts,
        "tool_calls": tool_calls,
        "final_answer": final_answer,
    }


def parse_tool_message(text):
    match = TOOL_RESPONSE_RE.search(text)
    if not match:
        return {"raw": text}

    body = match.group(1)
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        return {"raw": body}


# ----------------------------------------------------------------------------- Step 3: metrics


def tool_use_metrics(subset: Iterable[dict]) -> dict:
    """The guide's Step 3 loop over rows in the dataset schema; returns what it prints."""
    tool_counter = Counter()
    parallel_widths = Counter()
    turns_per_trace = []
    calls_per_trace = []
    errors_per_trace = []
    category_counter = Counter()

    for example in subset:
        category_counter[example["category"]] += 1
        tool_calls_in_trace = 0
        errors_in_trace = 0
        turns_per_trace.append(len(example["conversations"]))

        for turn in example["conversations"]:
            if turn["from"] == "gpt":
                parsed = parse_assistant_message(turn["value"])
                calls = parsed["tool_calls"]

                if calls:
                    parallel_widths[len(calls)] += 1

                for call in calls:
                    tool_counter[call.get("name", "<unknown>")] += 1

                tool_calls_in_trace += len(calls)

            elif turn["from"] == "tool":
                parsed_tool = parse_tool_message(turn["value"])
                text_blob = json.dumps(parsed_tool).lower()

                if "error" in text_blob or "traceback" in text_blob or '"exit_code": 1' in text_blob:
                    errors_in_trace += 1

        calls_per_trace.append(tool_calls_in_trace)
        errors_per_trace.append(errors_in_trace)

    return {
        "scanned_traces": len(turns_per_trace),
        "tool_counter": tool_counter,
        "parallel_widths": parallel_widths,
        "turns_per_trace": turns_per_trace,
        "calls_per_trace": calls_per_trace,
        "errors_per_trace": errors_per_trace,
        "category_counter": category_counter,
    }


# ----------------------------------------------------------------------------- Steps 6-7: masking
# The guide's chat messages and per-message masking recipe, as written there (Steps 6 and 7).
# Not exact: each message is rendered alone, so Qwen2.5's template puts its default system
# prompt in front of every one of them (see README "Masking").

ROLE_MAP = {
    "system": "system",
    "human": "user",
    "gpt": "assistant",
    "tool": "tool",
}


def to_chat_messages(conversation):
    return [
        {"role": ROLE_MAP[turn["from"]], "content": turn["value"]}
        for turn in conversation
    ]


def normalize_for_training(conversation):
    messages = to_chat_messages(conversation)

    for message in messages:
        if message["role"] == "tool":
            message["role"] = "user"
            message["content"] = "[TOOL OUTPUT]\n" + message["content"]

    return messages


def build_masked_example(conversation, tokenizer, max_length=2048):
    messages = normalize_for_training(conversation)

    input_ids = []
    labels = []

    for message in messages:
        text = tokenizer.apply_chat_template(
            [message],
            tokenize=False,
            add_generation_prompt=False,
        )
        ids = tokenizer.encode(text, add_special_tokens=False)

        input_ids.extend(ids)

        if message["role"] == "assistant":
            labels.extend(ids)
        else:
            labels.extend([-100] * len(ids))

    return {
        "input_ids": input_ids[:max_length],
        "labels": labels[:max_length],
    }
