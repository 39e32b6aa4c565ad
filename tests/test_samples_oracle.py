"""What the model sees when it acts, checked against transformers on every real trace.

For every assistant turn k, some sample of the trace begins with the ids of
`apply_chat_template(messages[:k], add_generation_prompt=True)` followed by the template's turn k
(what `apply_chat_template(messages[:k + 1])` adds after that, through its end-of-turn token),
every id of the turn trained. Qwen3's own template drops the reasoning of turns before the last
user message, so its samples are one per user message; Qwen2.5's and SmolLM2's keep history, so a
trace is one sample. The family templates in ../shared/models/families each give exact samples or
are refused with the reason; where only a template was found (GLM, Kimi, Qwen3.5, Qwen3-Coder,
Hermes 3) it is rendered with Qwen3's vocabulary, whose tokens split its role markers: the samples
are then tokenized as text around them, context and turn apart where the cut is not a token
boundary, which is what the check sees.
"""

from __future__ import annotations

import os
import re

import pytest
from transformers import AutoTokenizer

from streamproc.prepare.chat import TemplateError
from streamproc.prepare.mask import IGNORE, Masker, MaskOptions
from streamproc.records import RowError, row_from_dict

OWN = ["qwen3-tokenizer", "qwen2.5-instruct-tokenizer", "smollm2-135m-instruct-gguf"]

# (template file under families/, tokenizer directory under families/ or None for Qwen3's vocabulary
# where only the template was found, expected: "exact" or a pattern of the refusal's reason)
FAMILIES = [
    ("llama-3.1-3.2/templates/meta-llama-Llama-3.1-8B-Instruct.jinja", "llama-3.1-3.2", "exact"),
    ("llama-3.1-3.2/templates/meta-llama-Llama-3.2-3B-Instruct.jinja", "llama-3.1-3.2", "exact"),
    ("mistral-nemo/templates/mistralai-Mistral-Nemo-Instruct-2407.jinja", "mistral-nemo", "system message is not rendered in place.*does not begin with"),
    ("mistral-nemo/templates/Mistral-Small-3.2-24B-Instruct-2506.jinja", "mistral-nemo", "exact"),
    ("gpt-oss/templates/openai-gpt-oss-120b.jinja", "gpt-oss", "exact"),
    ("deepseek-r1-distill-qwen/chat_template.from-gguf.jinja", "deepseek-r1-distill-qwen/derived-NOT-AS-FOUND", "exact"),
    ("deepseek-r1-distill-qwen/llama.cpp-templates/deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", "deepseek-r1-distill-qwen/derived-NOT-AS-FOUND", "does not begin with"),
    ("glm-4.x/GLM-4.6.jinja", None, "exact"),
    ("glm-4.x/GLM-4.7-Flash.jinja", None, "exact"),
    ("glm-4.x/glm_4_5.llama.cpp-variant.jinja", None, "exact"),
    ("kimi-k2/moonshotai-Kimi-K2.jinja", None, "exact"),
    ("kimi-k2/Kimi-K2-Instruct.jinja", None, "exact"),
    ("kimi-k2/Kimi-K2-Thinking.jinja", None, "exact"),
    ("qwen3-coder-qwen3.5/Qwen3.5-4B.jinja", None, "exact"),
    ("qwen3-coder-qwen3.5/Qwen3-Coder.jinja", None, "exact"),
    ("mistral-nemo/templates/mistralai-Ministral-3-14B-Reasoning-2512.jinja", "mistral-nemo", "exact"),
    ("deepseek-r1-distill-qwen/llama.cpp-templates/llama-cpp-deepseek-r1.jinja", "deepseek-r1-distill-qwen/derived-NOT-AS-FOUND", "cannot give exact samples"),
    ("hermes-3/NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja", None, "cannot render a plain system/user/assistant conversation"),
]


@pytest.fixture(scope="module")
def rows(real_rows):
    return [row_from_dict(d) for d in real_rows]


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def check_oracle(masker: Masker, row) -> int:
    """Assert the oracle for every assistant turn of a row; the number of turns checked."""
    tok, template = masker.tokenizer, masker.template
    specials = re.compile("|".join(re.escape(t) for t in sorted(tok.get_added_vocab(), key=len, reverse=True)))
    msgs = [m.as_dict() for m in masker.messages(row)]
    seqs = [(s.input_ids.tolist(), s.labels.tolist()) for s in masker.mask(row).seqs]
    checked = 0
    for k, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        context = tok.apply_chat_template(msgs[:k], chat_template=template, add_generation_prompt=True, tokenize=False)
        through = tok.apply_chat_template(msgs[: k + 1], chat_template=template, tokenize=False)
        if through.startswith(context):
            target = through[len(context) :]
        else:  # the turn before was rewritten (Qwen3: an empty think block dropped): the turn follows the generation prompt
            prompt = context[len(tok.apply_chat_template(msgs[:k], chat_template=template, tokenize=False)) :]
            parted = len(os.path.commonprefix([context, through]))
            target = through[through.index(prompt, max(0, parted - len(prompt))) + len(prompt) :]
        ends = [e.end() for e in specials.finditer(target)]
        want_context, want_turn = ids(tok, context), ids(tok, target[: ends[-1] if ends else len(target)])
        n = len(want_context)
        hits = [
            (i, l) for i, l in seqs
            if i[:n] == want_context and i[n : n + len(want_turn)] == want_turn and all(x != IGNORE for x in l[n : n + len(want_turn)])
        ]
        assert hits, f"{row.id} turn {k}: no sample begins with its context and trains the template's turn"
        checked += 1
    return checked


@pytest.mark.parametrize("name", OWN)
def test_every_assistant_turn_is_trained_on_what_the_model_sees(name, models_dir, rows):
    masker = Masker(AutoTokenizer.from_pretrained(models_dir / name))  # the tokenizer's own template
    checked = sum(check_oracle(masker, row) for row in rows)
    assert checked == sum(1 for r in rows for f, _ in r.conversations if f == "gpt")
    if name == "qwen3-tokenizer":
        assert not masker.info.verbatim and masker.info.per_turn


def test_qwen3_samples_are_one_per_user_message(models_dir, rows):
    """Qwen3 drops the reasoning of turns before the last user message, so each user message
    starts a sample; it also drops an empty think block once the conversation goes on past its
    turn, so each such turn (the harness writes `<think>\n</think>\n` for no reasoning) may start one more."""
    masker = Masker(AutoTokenizer.from_pretrained(models_dir / "qwen3-tokenizer"))
    for row in rows:
        conv = row.conversations
        gpt = [i for i, (f, _) in enumerate(conv) if f == "gpt"]
        users = {sum(f == "human" for f, _ in conv[:i]) for i in gpt}  # user messages answered
        empty = sum(conv[i][1].startswith("<think>\n</think>") for i in gpt[:-1])
        samples = masker.mask(row).samples
        assert len(users) <= samples <= len(users) + empty, row.id
        if not empty:
            assert samples == len(users), row.id


def test_qwen3_without_reasoning_loss(models_dir, rows):
    """--no-reasoning-loss: the think blocks the template renders (its own, reformatted) are out of
    the loss, the rest of each turn is trained."""
    tok = AutoTokenizer.from_pretrained(models_dir / "qwen3-tokenizer")
    m = Masker(tok, MaskOptions(train_reasoning=False))
    think, end = tok.convert_tokens_to_ids("<think>"), tok.convert_tokens_to_ids("</think>")
    for row in rows[:10]:
        for s in m.mask(row).seqs:
            trained = s.input_ids[s.labels != IGNORE].tolist()
            assert trained and think not in trained and end not in trained
            assert trained.count(tok.convert_tokens_to_ids("<|im_end|>")) >= 1


@pytest.mark.parametrize("template,tokenizer,expected", FAMILIES, ids=[f[0].split("/")[-1] for f in FAMILIES])
def test_family_templates_are_exact_or_refused_with_the_reason(template, tokenizer, expected, models_dir, rows):
    fam = models_dir / "families"
    tok = AutoTokenizer.from_pretrained(fam / tokenizer if tokenizer else models_dir / "qwen3-tokenizer")
    text = (fam / template).read_text(encoding="utf-8")
    if expected != "exact":
        with pytest.raises(TemplateError, match=expected):
            Masker(tok, MaskOptions(chat_template=text))
        return
    masker = Masker(tok, MaskOptions(chat_template=text))
    checked = refused = 0
    for row in rows:
        try:
            checked += check_oracle(masker, row)
        except RowError as e:  # a row this template cannot render (say, roles that must alternate): set aside, with why
            assert "trace" in str(e) and str(e).split(": ", 2)[-1]
            refused += 1
    assert checked > 0, f"{template}: every row refused"
