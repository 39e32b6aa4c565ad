"""Pack of chat-layout rows: rendered as the model sees them, exact to the token.

Structured calls go to the template as `tool_calls` (arguments as objects), results as tool
messages and the `tools` column as `tools=`; the ids are exactly transformers'
`apply_chat_template(messages, tools=..., tokenize=True)` of those messages, and the trained
tokens are each assistant turn as the template wrote it, calls included, which parse back to the
same calls. Real rows of every variant (../shared/data/real/chat-layout) and the real hermes
traces converted to the OpenAI layout, with the Qwen2.5 and Qwen3 tokenizers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import orjson
import pytest
from transformers import AutoTokenizer

from streamproc.io.layouts import openai_record, row_from_record, tool_definitions
from streamproc.io.sources import iter_rows
from streamproc.parse.parser import parse_trace, parse_turn
from streamproc.prepare.chat import inspect_template, render_text, structured_messages, template_of
from streamproc.prepare.mask import IGNORE, Masker, MaskOptions
from streamproc.records import Location

from conftest import REAL, need

CHAT = REAL / "chat-layout"
# (tokenizer, template choice, whether calls go structured): Qwen3's own template drops earlier
# <think> blocks, so the masker refuses it and renders through ChatML, which has no tool calls.
CASES = [("qwen2.5-instruct-tokenizer", "auto", True), ("qwen3-tokenizer", "chatml", False)]


@pytest.fixture(scope="module")
def chat_rows(real_rows):
    rows = [r for p in sorted(need(CHAT).glob("*.jsonl")) for r in iter_rows([p])]
    # The real hermes traces, converted by the project's writer.
    rows += [row_from_record(orjson.loads(orjson.dumps(openai_record(parse_trace(d)))), Location("conv", i), "conv") for i, d in enumerate(real_rows)]
    assert all(r.chat is not None for r in rows)
    return rows


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def masker(request, models_dir):
    name, choice, structured = request.param
    m = Masker(AutoTokenizer.from_pretrained(models_dir / name), MaskOptions(chat_template=choice))
    assert m.info.renders_calls == structured
    return m


def reference(masker: Masker, msgs) -> list[int]:
    tools = tool_definitions(msgs[0].tools) if msgs[0].tools else None
    out = masker.tokenizer.apply_chat_template([m.as_dict() for m in msgs], tools=tools, chat_template=masker.template, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def test_every_chat_layout_row_packs_exactly(masker, chat_rows):
    for row in chat_rows:
        trace = parse_trace(row)
        msgs = masker.messages(trace)
        (seq,) = masker.mask(trace).seqs
        assert seq.input_ids.tolist() == reference(masker, msgs), row.id
        text = masker.tokenizer.decode(seq.input_ids)
        trained = masker.tokenizer.decode(seq.input_ids[seq.labels != IGNORE])
        calls = [c for t in trace.turns for c in t.tool_calls]
        # The trained text holds every call the model made, as the template wrote it.
        made = parse_turn("assistant", trained).tool_calls
        assert [(c.name, c.arguments) for c in made] == [(c.name, c.arguments) for c in calls], row.id
        if masker.info.renders_calls:
            assert all(m.tool_calls for m in msgs if m.role == "assistant" and any(t.tool_calls for t in [trace.turns[m.turn]]))
            if tool_definitions(row.tools):  # the tool definitions sit in the system turn (Qwen2.5's), before any user turn
                head = text[: text.index("<|im_start|>user")]
                assert all(t["function"]["name"] in head for t in tool_definitions(row.tools)), row.id
        else:
            assert not any(m.tool_calls for m in msgs)  # ChatML: the ShareGPT text, calls as tags


def test_qwen25_renders_the_hermes_text_of_a_converted_trace(models_dir, real_rows):
    """Arguments written by the harness (json.dumps) are what Qwen2.5's `tojson` writes: the
    rendered assistant turns are the ShareGPT turns themselves."""
    m = Masker(AutoTokenizer.from_pretrained(models_dir / "qwen2.5-instruct-tokenizer"))
    for d in real_rows[:10]:
        chat = row_from_record(orjson.loads(orjson.dumps(openai_record(parse_trace(d)))), Location("c", 0), "c")
        (seq,) = m.mask(chat).seqs
        trained = m.tokenizer.decode(seq.input_ids[seq.labels != IGNORE])
        assert trained == "".join(t["value"] + "<|im_end|>" for t in d["conversations"] if t["from"] == "gpt")


@pytest.mark.parametrize("name", ["qwen2.5-instruct-tokenizer", "qwen3-tokenizer"])
def test_own_templates_render_structured_calls_as_transformers_does(models_dir, chat_rows, name):
    """The tokenizer's own template (Qwen3's too, which pack refuses for its <think> handling):
    render_text equals apply_chat_template with tools= and tool_calls whose arguments are
    objects (Qwen3 iterates them with `|items`, and fails on strings)."""
    tok = AutoTokenizer.from_pretrained(models_dir / name)
    template = template_of(tok, "auto")
    info = inspect_template(tok, template)
    assert info.renders_calls == info.verbatim  # Qwen3's is not verbatim: its calls are not located either
    info = replace(info, renders_calls=True)
    for row in chat_rows:
        msgs = structured_messages(row.chat, row.tools, info)
        assert all(isinstance(c["function"]["arguments"], dict) for m in msgs for c in m.tool_calls or [])
        tools = tool_definitions(row.tools) if row.tools else None
        want = tok.apply_chat_template([m.as_dict() for m in msgs], tools=tools, chat_template=template, tokenize=False)
        assert render_text(tok, msgs, template) == want, row.id


def test_pack_cli_on_chat_layout_files(tmp_path, models_dir):
    out = tmp_path / "packed"
    files = [str(need(CHAT / f)) for f in ("toucan_kimi_k2_sample.jsonl", "llamafactory_glaive_toolcall_en_demo_subset.jsonl",
                                           "nemotron_agentic_v1_tool_calling_readme_row.jsonl")]
    p = subprocess.run([sys.executable, "-m", "streamproc", "pack", *files, "-o", str(out), "--seq-len", "4096", "-q"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["rows_read"] == 31 and counts["rows_rejected"] == 0 and counts["rows_dropped"] == 0
    assert counts["train"]["traces"] + counts["eval"]["traces"] == 31
    assert counts["train"]["trainable"] > 0 and sorted(out.glob("*.arrow"))
