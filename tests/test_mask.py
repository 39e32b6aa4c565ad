"""Masking options, overflow handling and the Masker's API, on the shipped Qwen2.5 tokenizer and
real traces."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from streamproc.prepare.chat import TemplateError
from streamproc.prepare.mask import (
    DEFAULT_TOKENIZER,
    IGNORE,
    Masker,
    MaskOptions,
    chat_template_hash,
    load_tokenizer,
)
from streamproc.parse.parser import parse_turn
from streamproc.records import Location, RowError, row_from_dict
from streamproc.parse.turns import REASONING
from streamproc.run.runner import map_ordered
from streamproc.io.sources import SAMPLE, good_rows, iter_rows, plan


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()  # the shipped copy, offline


@pytest.fixture(scope="module")
def rows(real_rows):
    # Rows with reasoning, tool calls and a final answer.
    out = [row_from_dict(d) for d in real_rows]
    return [r for r in out if sum(f == "gpt" for f, _ in r.conversations) >= 3][:8]


def trained(tok, seq) -> str:
    return tok.decode(seq.input_ids[seq.labels != IGNORE])


def assistant(row):
    return [v for f, v in row.conversations if f == "gpt"]


def without_reasoning(text: str) -> str:
    """The turn with its reasoning segments (as the parser finds them, stray </think> included) cut out."""
    return "".join(text[s.start : s.end] for s in parse_turn("gpt", text).segments if s.kind != REASONING)


def test_default_tokenizer_ships_and_loads_offline(tok):
    assert (DEFAULT_TOKENIZER / "tokenizer.json").is_file()
    assert tok.encode("Hello world") == [9707, 1879]
    assert load_tokenizer("Qwen/Qwen2.5-0.5B-Instruct").get_vocab() == tok.get_vocab()


def test_scope_last(tok, rows):
    m = Masker(tok, MaskOptions(scope="last"))
    for row in rows:
        (seq,) = m.mask(row).seqs
        assert trained(tok, seq) == assistant(row)[-1] + "<|im_end|>"


def test_reasoning_left_out(tok, rows):
    """Without a `</think>` token, the token `>\n` straddles the block's end and stays out with
    it; with `<think>`/`</think>` added as tokens (--add-tokens) the cut is exact."""
    full = Masker(tok)
    ext = load_tokenizer()
    ext.add_tokens(["<think>", "</think>"], special_tokens=True)
    for t in (tok, ext):
        m = Masker(t, MaskOptions(train_reasoning=False))
        for row in rows:
            (seq,) = m.mask(row).seqs
            text = trained(t, seq)
            assert "<think>" not in text and "</think>" not in text
            want = "".join(without_reasoning(a) + "<|im_end|>" for a in assistant(row))
            if t is ext:
                assert text == want
            else:
                assert (seq.input_ids == full.mask(row).seqs[0].input_ids).all()  # same tokens, fewer labels
                assert text.replace("\n", "") == want.replace("\n", "")


def test_tool_call_turns_left_out(tok, rows):
    m = Masker(tok, MaskOptions(train_tool_calls=False))
    for row in rows:
        res = m.mask(row)
        want = "".join(a + "<|im_end|>" for a in assistant(row) if "<tool_call>" not in a)
        if want:
            assert trained(tok, res.seqs[0]) == want
        else:  # nothing to train: the trace is dropped and counted
            assert res.dropped and res.seqs == [] and res.tokens_cut > 0


def test_overflow_truncate_and_drop(tok, rows):
    row = rows[0]
    n = len(Masker(tok).mask(row).seqs[0].input_ids)
    limit = n - 100
    t = Masker(tok, MaskOptions(overflow="truncate", max_len=limit)).mask(row)
    assert len(t.seqs[0].input_ids) == limit and t.tokens_cut == 100 and t.samples == 1
    d = Masker(tok, MaskOptions(overflow="drop", max_len=limit)).mask(row)
    assert d.dropped and d.seqs == [] and d.tokens_cut == n
    ok = Masker(tok, MaskOptions(overflow="drop", max_len=n)).mask(row)
    assert not ok.dropped and ok.samples == 1


def test_split_keeps_every_trained_turn_when_it_fits(tok, rows):
    """With room for the system prompt and any one step, windows hold every assistant turn once."""
    row = rows[0]
    whole = Masker(tok).mask(row).seqs[0]
    n_system = len(tok.apply_chat_template([{"role": "system", "content": row.conversations[0][1]}], tokenize=True))
    m = Masker(tok, MaskOptions(max_len=n_system + (len(whole.input_ids) - n_system) * 2 // 3))
    res = m.mask(row)
    assert res.samples >= 2 and res.tokens_cut == 0
    assert "".join(trained(tok, s) for s in res.seqs) == trained(tok, whole)


def test_split_when_the_system_prompt_alone_is_too_long(tok, rows):
    res = Masker(tok, MaskOptions(max_len=100)).mask(rows[0])
    assert res.dropped and res.samples == 0 and res.tokens_cut > 100


def test_history_rewriting_template_is_rendered_turn_by_turn_and_chatml_works(tok, rows):
    """A template that drops reasoning is decided by rendering: each turn is trained as the
    template renders it after its context (this one has no generation prompt, so its header is
    part of the turn); a template whose render of a turn does not extend its context is refused."""
    drops_think = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'].split('</think>')[-1] + '<|im_end|>\\n' }}{% endfor %}"
    )
    m = Masker(tok, MaskOptions(chat_template=drops_think))
    assert not m.info.verbatim and m.info.per_turn
    res = m.mask(rows[0])
    want = "".join("<|im_start|>assistant\n" + a.split("</think>")[-1] + "<|im_end|>" for a in assistant(rows[0]))
    assert "".join(trained(tok, s) for s in res.seqs) == want
    counts = "{{ messages|length }}" + drops_think  # every render starts with the number of messages
    with pytest.raises(TemplateError, match="cannot give exact samples.*does not begin with.*chatml"):
        Masker(tok, MaskOptions(chat_template=counts))
    m = Masker(tok, MaskOptions(chat_template="chatml"))
    assert m.chat_template_hash == chat_template_hash(m.template) != Masker(tok).chat_template_hash
    assert trained(tok, m.mask(rows[0]).seqs[0]) == "".join(a + "<|im_end|>" for a in assistant(rows[0]))


def test_row_the_template_cannot_render_is_a_row_error(tok):
    alternating = (
        "{% for m in messages %}{% if loop.index0 > 0 and m['role'] == messages[loop.index0 - 1]['role'] %}"
        "{{ raise_exception('roles must alternate') }}{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    )
    m = Masker(tok, MaskOptions(chat_template=alternating))
    row = row_from_dict({"id": "x", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}, {"from": "gpt", "value": "c"}]}, Location("f.jsonl", 7))
    with pytest.raises(RowError, match=r"f.jsonl:row 7.*trace x.*alternate") as e:
        m.mask(row)
    assert e.value.bad.field == "conversations"


def test_mask_many_equals_one_at_a_time_and_keeps_going_past_a_bad_row(tok, rows):
    """Batches tokenize the pieces of many rows together; the results are those of mask(), in
    order, and a row the template cannot render is yielded as its RowError."""
    refusing = (
        "{% for m in messages %}{% if m['content'] == 'boom' %}{{ raise_exception('boom is refused') }}{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    )
    bad = row_from_dict({"id": "x", "conversations": [{"from": "human", "value": "boom"}, {"from": "gpt", "value": "c"}]})
    batch = [rows[0], bad, *rows[1:]]
    for options in (MaskOptions(chat_template=refusing), MaskOptions(chat_template=refusing, max_len=12000)):
        m = Masker(tok, options)
        got = list(m.mask_many(batch, batch=3))
        assert [r.id for r, _ in got] == [r.id for r in batch]
        assert isinstance(got[1][1], RowError) and "boom is refused" in str(got[1][1])
        alone = Masker(tok, options)
        for row, res in got[:1] + got[2:]:
            want = alone.mask(row)
            assert [s.input_ids.tolist() for s in res.seqs] == [s.input_ids.tolist() for s in want.seqs]
            assert [s.labels.tolist() for s in res.seqs] == [s.labels.tolist() for s in want.seqs]
            assert (res.tokens_cut, res.samples) == (want.tokens_cut, want.samples)
        assert any(res.samples > 1 for _, res in got[2:]) == (options.max_len is not None)


def test_no_assistant_turn_is_dropped(tok):
    row = row_from_dict({"id": "q", "conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "hi"}]})
    res = Masker(tok).mask(row)
    assert res.dropped and res.tokens_cut > 0


class _MaskShard:
    def __init__(self, masker):
        self.masker = masker

    def __call__(self, shard):
        return [s.input_ids.tolist() for r in good_rows(shard, "skip", []) for s in self.masker.mask(r).seqs]


def test_masker_pickles_into_workers(tok, real_row_files):
    m = Masker(tok)
    m.mask(row_from_dict({"id": "w", "conversations": [{"from": "human", "value": "warm"}, {"from": "gpt", "value": "up"}]}))
    assert len(pickle.loads(pickle.dumps(m))._cache.d) == 0  # the cache stays home
    shards = plan(real_row_files)  # one per file: the masker is pickled once per shard
    assert len(shards) == 2
    one = list(map_ordered(_MaskShard(m), shards, 1))
    two = list(map_ordered(_MaskShard(m), shards, 2))
    assert one == two and sum(map(len, one)) > 0


def test_options_are_checked():
    with pytest.raises(ValueError, match="scope"):
        MaskOptions(scope="first")
    with pytest.raises(ValueError, match="overflow"):
        MaskOptions(overflow="wrap")
    with pytest.raises(ValueError, match="max_len"):
        MaskOptions(max_len=0)


def test_builtin_sample_no_sequence_trains_a_turn_without_the_task_or_the_turn_it_answers(tok):
    """Default options (seq-len 8192, --overflow split) on the built-in sample: every sequence's first
    trained turn sees the task (the first user message) and the turn it answers."""
    m = Masker(tok, MaskOptions(max_len=8192))
    lacking = sequences = 0
    for row in iter_rows([SAMPLE]):
        msgs = m.messages(row)
        task = next(x.content for x in msgs if x.role == "user")
        for seq in m.mask(row).seqs:
            first = int(np.argmax(seq.labels != IGNORE))
            before, after = tok.decode(seq.input_ids[:first]), tok.decode(seq.input_ids[first:])
            k = next(i for i, x in enumerate(msgs) if x.role == "assistant" and after.startswith(x.content))
            lacking += task not in before or msgs[k - 1].content not in before
            sequences += 1
    assert sequences > 300 and lacking == 0
