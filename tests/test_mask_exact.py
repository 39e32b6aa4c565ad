"""Exactness on every real trace: the ids written are the tokenizer's own tokenization of the
rendered conversation (`apply_chat_template(messages, tokenize=True)`), and the trained tokens
decode to exactly the assistant contents with their end-of-turn tokens. One masker per tokenizer
masks all rows in turn, so its piece cache is warm: this is what proves the cache safe."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from transformers import AutoTokenizer

from streamproc.prepare.chat import CHATML_TEMPLATE
from streamproc.prepare.mask import IGNORE, Masker, MaskOptions
from streamproc.records import row_from_dict

# (model directory, chat template choice): Qwen3's own template drops earlier <think> blocks, so a
# whole conversation is not its render; it is checked here through the faithful ChatML template,
# and with its own template turn by turn in tests/test_samples_oracle.py.
CASES = [("qwen2.5-instruct-tokenizer", "auto"), ("smollm2-135m-instruct-gguf", "auto"), ("qwen3-tokenizer", "chatml")]


@pytest.fixture(scope="module")
def rows(real_rows):
    return [row_from_dict(d) for d in real_rows]


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def masker(request, models_dir):
    name, choice = request.param
    return Masker(AutoTokenizer.from_pretrained(models_dir / name), MaskOptions(chat_template=choice))


def reference(masker: Masker, msgs) -> list[int]:
    out = masker.tokenizer.apply_chat_template([m.as_dict() for m in msgs], chat_template=masker.template, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def trained_text(masker: Masker, seq) -> str:
    return masker.tokenizer.decode(seq.input_ids[seq.labels != IGNORE])


def test_every_real_trace_is_exact(masker, rows):
    assert masker._piecewise  # the cached path is the one under test
    for row in rows:
        res = masker.mask(row)
        msgs = masker.messages(row)
        assert res.samples == 1 and res.tokens_cut == 0
        (seq,) = res.seqs
        assert seq.input_ids.dtype == np.int32 and seq.labels.dtype == np.int32
        assert seq.input_ids.tolist() == reference(masker, msgs), row.id
        keep = seq.labels != IGNORE
        assert (seq.labels[keep] == seq.input_ids[keep]).all()
        want = "".join(m.content + masker.info.eot for m in msgs if m.role == "assistant")
        assert trained_text(masker, seq) == want, row.id


def test_qwen3_own_template_is_accepted_and_chatml_stays_a_choice(models_dir):
    """Qwen3's template drops earlier reasoning: it is rendered turn by turn (tests/test_samples_oracle.py)."""
    tok = AutoTokenizer.from_pretrained(models_dir / "qwen3-tokenizer")
    m = Masker(tok)
    assert not m.info.verbatim and m.info.per_turn and "rendered as" in m.info.problem
    assert Masker(tok, MaskOptions(chat_template="chatml")).template == CHATML_TEMPLATE


def test_extended_tokenizer_is_exact(models_dir, rows):
    """--add-tokens: <think> and </think> as single special tokens of Qwen2.5."""
    tok = AutoTokenizer.from_pretrained(models_dir / "qwen2.5-instruct-tokenizer")
    before = Masker(tok).tokenizer_hash
    assert tok.add_tokens(["<think>", "</think>"], special_tokens=True) == 2
    m = Masker(tok)
    assert m.tokenizer_hash != before
    think = tok.convert_tokens_to_ids("<think>")
    for row in rows[:20]:
        (seq,) = m.mask(row).seqs
        assert seq.input_ids.tolist() == reference(m, m.messages(row))
        if any(v.startswith("<think>") for f, v in row.conversations if f == "gpt"):
            assert think in seq.labels


def test_conversation_without_system_is_exact(models_dir, rows):
    """Qwen2.5 and SmolLM2 inject a default system prompt then: it is in the ids, never in the labels."""
    for name in ("qwen2.5-instruct-tokenizer", "smollm2-135m-instruct-gguf"):
        m = Masker(AutoTokenizer.from_pretrained(models_dir / name))
        assert m.info.injects_system
        row = rows[0]
        row = row_from_dict({"id": "nosys", "conversations": [{"from": f, "value": v} for f, v in row.conversations[1:]]})
        (seq,) = m.mask(row).seqs
        assert seq.input_ids.tolist() == reference(m, m.messages(row))
        assert trained_text(m, seq) == "".join(v + "<|im_end|>" for f, v in row.conversations if f == "gpt")


def test_long_traces_keep_their_task_and_the_turn_each_answers(masker, rows):
    """--overflow split: every sample opens with the system prompt and the task, holds the turn its
    first trained turn answers, fits max_len and is exactly its own tokenization; every assistant
    turn is trained in exactly one sample or listed as not trained."""
    row = max(rows, key=lambda r: sum(len(v) for _, v in r.conversations))
    msgs = masker.messages(row)
    tok = masker.tokenizer
    task = next(i for i, m in enumerate(msgs) if m.role == "user")
    head = tok.apply_chat_template([m.as_dict() for m in msgs[: task + 1]], chat_template=masker.template, tokenize=False)
    system = tok.apply_chat_template([msgs[0].as_dict()], chat_template=masker.template, tokenize=False)
    n_full = len(masker.mask(row).seqs[0].input_ids)
    n_system = len(tok(system, add_special_tokens=False)["input_ids"])
    limit = n_system + (n_full - n_system) // 3
    m = Masker(tok, MaskOptions(chat_template=masker.options.chat_template, max_len=limit))
    res = m.mask(row)
    assert res.samples == len(res.seqs) >= 3 and not res.dropped and res.turns_shortened > 0
    replies = [i for i, mm in enumerate(msgs) if mm.role == "assistant"]
    untrained = {t for t, _ in res.untrained}
    seen: list[int] = []
    for seq in res.seqs:
        assert len(seq.input_ids) <= limit
        text = tok.decode(seq.input_ids)
        assert tok(text, add_special_tokens=False)["input_ids"] == seq.input_ids.tolist()
        assert text.startswith(head)
        first = int(np.argmax(seq.labels != IGNORE))
        before, after = tok.decode(seq.input_ids[:first]), tok.decode(seq.input_ids[first:])
        k = next(i for i in replies if i not in seen and after.startswith(msgs[i].content))
        assert msgs[k - 1].content in before[len(head) :] or k - 1 == task  # the turn it answers
        seen += replies[replies.index(k) : replies.index(k) + len(trained_runs(seq))]
    assert sorted(seen) == seen and sorted(seen + [i for i in replies if msgs[i].turn in untrained]) == replies
    trained = "".join(trained_text(masker, s) for s in res.seqs)
    assert trained == "".join(msgs[i].content + m.info.eot for i in replies if msgs[i].turn not in untrained)


def trained_runs(seq) -> list[tuple[int, int]]:
    on = np.concatenate([[False], seq.labels != IGNORE, [False]])
    edges = np.flatnonzero(on[1:] != on[:-1])
    return list(zip(edges[::2], edges[1::2]))


# Text made of the boundaries that matter: specials, whitespace runs, digits, CJK, emoji, tags.
_BITS = ["<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<think>", "\n", "\n\n", " ", "  ", "\t",
         "12345", "数字", "😀", "é", "the", " The", "'s", "{\"a\": 1}", "<", ">", "assistant", "</tool_response>"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(_BITS) | st.text(max_size=6), max_size=40))
def test_cached_pieces_equal_whole_text(masker, bits):
    text = "".join(bits)
    ids, starts = masker.encode(text)
    enc = masker.tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
    assert ids.tolist() == enc.ids
    assert starts.tolist() == [o[0] for o in enc.offsets]


def test_long_pieces_are_tokenized_in_chunks_exactly(masker, rows):
    """A piece longer than CHUNK_CHARS (a huge tool output) is cut into chunks at pre-token
    boundaries; ids and starts equal the whole text's, on real text."""
    from streamproc.prepare.mask import CHUNK_CHARS

    assert masker._chunked
    text = "\n".join(v for r in rows for f, v in r.conversations if f in ("tool", "gpt"))
    for special in masker._added:  # one piece: no added token inside
        text = text.replace(special, "")
    text = (text * (1 + 3 * CHUNK_CHARS // len(text)))[: 3 * CHUNK_CHARS]
    assert len(masker._cuts(text)) >= 3
    masker.clear_cache()
    ids, starts = masker.encode(text)
    enc = masker.tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
    assert ids.tolist() == enc.ids
    assert starts.tolist() == [o[0] for o in enc.offsets]
