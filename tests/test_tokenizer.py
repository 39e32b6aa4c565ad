"""Tokenizers loaded without transformers agree with transformers' own loading and rendering, on
the real tokenizers: vocabulary, special tokens, chat templates, and random conversations rendered
to the same text and the same ids."""

from __future__ import annotations

import shutil

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from transformers import AutoTokenizer

from streamproc.prepare.chat import CHATML_TEMPLATE
from streamproc.prepare.mask import load_tokenizer
from streamproc.prepare.tokenizer import TokenizerError, load

MODELS = ["qwen2.5-instruct-tokenizer", "qwen3-tokenizer", "smollm2-135m-instruct-gguf"]


@pytest.fixture(scope="module", params=MODELS)
def pair(request, models_dir):
    d = models_dir / request.param
    return load(d), AutoTokenizer.from_pretrained(d)


def test_loads_what_transformers_loads(pair):
    lean, hf = pair
    assert lean.special_tokens_map == hf.special_tokens_map
    assert lean.get_added_vocab() == hf.get_added_vocab()
    assert lean.get_vocab() == hf.get_vocab() and len(lean) == len(hf)
    assert (lean.pad_token_id, lean.eos_token_id, lean.bos_token_id) == (hf.pad_token_id, hf.eos_token_id, hf.bos_token_id)
    assert lean.chat_template == hf.chat_template
    text = "<|im_start|>user\n  数字 12345 😀 <tool_call>\n{}\n</tool_call><|im_end|>\n"
    assert lean.encode(text) == hf.encode(text, add_special_tokens=False)
    assert lean.decode(lean.encode(text)) == hf.decode(hf.encode(text, add_special_tokens=False)) == text


def test_separate_template_files_take_priority(models_dir, tmp_path):
    """chat_template.jinja replaces the config's template; additional_chat_templates/ adds named ones."""
    src = models_dir / "qwen2.5-instruct-tokenizer"
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(src / name, tmp_path / name)
    (tmp_path / "chat_template.jinja").write_text(CHATML_TEMPLATE, encoding="utf-8")
    assert load(tmp_path).chat_template == AutoTokenizer.from_pretrained(tmp_path).chat_template == CHATML_TEMPLATE
    (tmp_path / "additional_chat_templates").mkdir()
    (tmp_path / "additional_chat_templates" / "tool_use.jinja").write_text("{{ messages[0]['content'] }}", encoding="utf-8")
    lean, hf = load(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    assert lean.chat_template == hf.chat_template == {"default": CHATML_TEMPLATE, "tool_use": "{{ messages[0]['content'] }}"}
    msgs = [{"role": "user", "content": "hi"}]
    assert lean.apply_chat_template(msgs, chat_template="tool_use") == hf.apply_chat_template(msgs, chat_template="tool_use", tokenize=False) == "hi"


def test_added_tokens_saved_and_read_back_by_both(models_dir, tmp_path):
    tok = load_tokenizer()
    assert tok.add_tokens(["<think>", "</think>"], special_tokens=True) == 2
    tok.save_pretrained(tmp_path)
    again, hf = load(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    assert again.get_added_vocab() == hf.get_added_vocab() == tok.get_added_vocab()
    assert again.encode("<think>\nx") == hf.encode("<think>\nx", add_special_tokens=False) == [len(tok) - 2, 198, 87]
    assert again.apply_chat_template([{"role": "user", "content": "x"}]) == tok.apply_chat_template([{"role": "user", "content": "x"}])


def test_missing_tokenizer_names_the_path(tmp_path):
    with pytest.raises(TokenizerError, match="/nope: no such directory"):
        load("/nope")
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerError, match=f"cannot read {tmp_path}"):
        load(tmp_path)


# Contents made of what templates and tokenizers treat specially: tags, specials, whitespace,
# unicode, JSON, Jinja-looking text, and empty strings.
_BITS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<|im_start|>",
         "<|im_end|>", "<|endoftext|>", "\n", "\n\n", " ", "\t", "数字", "😀", "é", "{\"name\": \"f\", \"arguments\": {}}",
         "{{ x }}", "{% if %}", "</s>", "assistant", "user", "12345", ""]
_content = st.lists(st.sampled_from(_BITS) | st.text(max_size=8), max_size=12).map("".join)
_message = st.builds(lambda role, content: {"role": role, "content": content}, st.sampled_from(["system", "user", "assistant", "tool"]), _content)
_reasoning = st.builds(lambda c, r: {"role": "assistant", "content": c, "reasoning_content": r}, _content, _content)
_conversation = st.lists(_message | _reasoning, min_size=1, max_size=7)


def _render(tok, msgs, template, gen, tokenize):
    try:
        out = tok.apply_chat_template(msgs, chat_template=template, add_generation_prompt=gen, tokenize=tokenize)
    except Exception as e:  # a template that refuses the conversation must refuse it in both
        return ("error", type(e).__name__, str(e))
    return list(out["input_ids"]) if tokenize and hasattr(out, "keys") else out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_conversation, st.booleans(), st.booleans())
def test_random_conversations_render_alike(pair, msgs, gen, chatml):
    lean, hf = pair
    template = CHATML_TEMPLATE if chatml else None
    text = _render(lean, msgs, template, gen, False)
    assert text == _render(hf, msgs, template, gen, False)
    if isinstance(text, str):
        assert _render(lean, msgs, template, gen, True) == _render(hf, msgs, template, gen, True)


# Templates that read attributes the sandbox allows and refuses, of dicts (keys, methods, a key
# named like a method), strings (their methods called, str.format, which it wraps), lists, the loop
# and a namespace, each on every message: the environment remembers what it found safe, so later
# reads take the quick way, and must still give the stock sandbox's text or error.
_SANDBOX_PROBES = [
    "{% for m in messages %}{{ m.role }}{{ m.missing is defined }}{{ m.content.upper() }}{{ m.content.split('x')|length }}{{ loop.index0 }}{{ loop.last }}{% endfor %}",
    "{% for m in messages %}{{ m.keys()|list|length }}{{ m.get('role') }}{{ m.items is callable }}{{ m['items'] is callable }}{% endfor %}",
    "{% for m in messages %}{{ m.content.format(1) }}{{ m.role.format_map({}) }}{% endfor %}",
    "{% for m in messages %}{{ '{0.__class__}'.format(m.content) }}{% endfor %}",
    "{% for m in messages %}{{ m.content.__class__ is defined }}{{ m.__class__ is defined }}{{ loop.__class__ is defined }}{{ m.content|attr('__len__') is defined }}{% endfor %}",
    "{% for m in messages %}{{ m.pop('role') }}{% endfor %}",
    "{% for m in messages %}{{ m.clear() }}{% endfor %}",
    "{% for m in messages %}{{ messages.append(1) }}{% endfor %}",
    "{% set ns = namespace(a=1) %}{% for m in messages %}{% set ns.a = m.content %}{{ ns.a.upper() }}{{ ns.b is defined }}{% endfor %}",
    "{% for m in messages %}{{ messages|attr(1) }}{% endfor %}",
    "{% for m in messages %}{{ m.content.split('x', maxsplit=1)|length }}{{ m.content.replace('x', m.role) }}{{ m.content.strip().upper() }}{% endfor %}",
    "{% for m in messages %}{% set r = m.role.upper %}{{ r() }}{{ m.content.index('o') }}{% endfor %}",
]


@pytest.mark.parametrize("template", _SANDBOX_PROBES)
def test_sandbox_answers_as_transformers_does(models_dir, template):
    d = models_dir / "qwen2.5-instruct-tokenizer"
    lean, hf = load(d), AutoTokenizer.from_pretrained(d)
    msgs = [{"role": "user", "content": "hi {0} x"}, {"role": "assistant", "content": "ok", "items": "shadow"}, {"role": "user", "content": "x"}]
    for _ in range(2):  # the second render finds the environment's memory filled
        assert _render(lean, msgs, template, False, False) == _render(hf, msgs, template, False, False)
