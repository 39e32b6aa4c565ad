"""Messages and template inspection on the real tokenizers and real traces."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from streamproc.prepare.chat import (
    CHATML_TEMPLATE,
    TOOL_FALLBACK,
    inspect_template,
    render,
    template_of,
    to_messages,
    unwrap_tool,
)
from streamproc.records import row_from_dict

# What each real template does (see docs/training-data.md, "Chat messages").
EXPECTED = {
    "qwen2.5-instruct-tokenizer": dict(tool_mode="unwrap", verbatim=True, injects_system=True),
    "qwen3-tokenizer": dict(tool_mode="unwrap", verbatim=False, injects_system=False),
    "smollm2-135m-instruct-gguf": dict(tool_mode="keep", verbatim=True, injects_system=True),
}


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def tok(request, models_dir):
    t = AutoTokenizer.from_pretrained(models_dir / request.param)
    t.name = request.param
    return t


def test_inspect_real_templates(tok):
    info = inspect_template(tok, template_of(tok, "auto"))
    for k, v in EXPECTED[tok.name].items():
        assert getattr(info, k) == v, k
    if info.verbatim:
        assert (info.header, info.eot) == ("<|im_start|>assistant\n", "<|im_end|>")
    else:
        shown = info.problem.split("is rendered as")[1]  # what the template made of the turn:
        assert "probe-text1" in shown and "probe-reason1" not in shown  # its reasoning dropped
    chatml = inspect_template(tok, CHATML_TEMPLATE)
    assert (chatml.tool_mode, chatml.verbatim, chatml.injects_system) == ("keep", True, False)


def test_template_without_tool_role_falls_back_to_user(tok):
    strict = (
        "{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
        "{{ raise_exception('roles must be system, user or assistant') }}{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    )
    info = inspect_template(tok, strict)
    assert info.tool_mode == "user" and info.verbatim
    msgs = to_messages([("human", "q"), ("gpt", "a"), ("tool", "<tool_response>\nr\n</tool_response>")], info.tool_mode, "TOOL SAYS:\n")
    assert msgs[2].role == "user" and msgs[2].content == "TOOL SAYS:\n<tool_response>\nr\n</tool_response>"


def test_roles_and_fallback_prefix():
    convo = [("system", "s"), ("human", "u"), ("gpt", "a"), ("tool", "t")]
    assert [m.role for m in to_messages(convo)] == ["system", "user", "assistant", "tool"]
    assert to_messages(convo, "user")[3].content == TOOL_FALLBACK + "t"
    assert [m.turn for m in to_messages(convo)] == [0, 1, 2, 3]


def test_unwrap_tool_on_real_turns(real_rows):
    """Every real tool turn is responses joined by newlines: unwrapped, then wrapped once by the
    template, it gives the same text back."""
    n = 0
    for d in real_rows:
        for t in d["conversations"]:
            if t["from"] == "tool":
                bodies = unwrap_tool(t["value"])
                assert "\n".join(f"<tool_response>\n{b}\n</tool_response>" for b in bodies) == t["value"]
                assert not any(b.startswith("<tool_response>") for b in bodies)
                n += len(bodies)
    assert n > 100


def test_unwrap_keeps_text_that_is_not_only_responses():
    for text in ["plain output", "<tool_response>\n{}\n</tool_response> trailing", "<tool_response>\n{} unclosed"]:
        assert unwrap_tool(text) == [text]


def test_render_spans_on_real_rows(tok, real_rows):
    info = inspect_template(tok, CHATML_TEMPLATE if tok.name == "qwen3-tokenizer" else template_of(tok, "auto"))
    for d in real_rows[:10]:
        msgs = to_messages(row_from_dict(d).conversations, info.tool_mode)
        r = render(tok, msgs, info)
        assistant = [m for m in msgs if m.role == "assistant"]
        assert [r.text[s.start : s.end] for s in r.spans] == [m.content + "<|im_end|>" for m in assistant]
        assert all(r.text[s.start - len(info.header) : s.start] == info.header for s in r.spans)
        for s, m in zip(r.spans, assistant):
            assert s.tool_calls == ("<tool_call>" in m.content)
            assert all(r.text[a:b].startswith("<think>") or r.text[a:b].endswith("</think>") for a, b in s.reasoning)
