"""Masking throughput: masked tokens per second of `Masker.mask_many` against the guide's Step 7
per-message recipe (target >= 3x) and against a bare `encode_batch` of the same rendered text
(target >= 1x: the piece cache pays for rendering and masking).

All three run in this process on the same rows, with the shipped Qwen2.5 tokenizer (the recipe
through transformers' tokenizer, as it is written; streamproc through its own loader). Every rate
is the exact tokens of those rows (what `Masker` writes) over the contender's time, so ratios
are time ratios. The bare encoder gets the rendered text for free; the masker starts each round
with an empty cache.
"""

from __future__ import annotations

from typing import Sequence

from streamproc.prepare.mask import DEFAULT_TOKENIZER, Masker
from streamproc.records import Row
from streamproc.benchmarks import Context, Result, best_times
from streamproc.benchmarks.guide import build_masked_example

GUIDE = "the per-message recipe"
BARE = "bare encode_batch of rendered text"
OURS = "streamproc Masker.mask_many"


def contenders(rows: Sequence[Row], masker: Masker) -> tuple[dict, int]:
    """The three timed functions over `rows`, and the exact token count of the rows."""
    from transformers import AutoTokenizer

    tok = masker.tokenizer
    hf = AutoTokenizer.from_pretrained(DEFAULT_TOKENIZER)
    dicts = [[{"from": f, "value": v} for f, v in r.conversations] for r in rows]
    texts = [tok.apply_chat_template([m.as_dict() for m in masker.messages(r)], tokenize=False) for r in rows]
    backend = tok.backend_tokenizer
    tokens = sum(len(s.input_ids) for r in rows for s in masker.mask(r).seqs)

    def ours():
        masker.clear_cache()
        for _ in masker.mask_many(rows):
            pass

    return {
        GUIDE: lambda: [build_masked_example(c, hf, max_length=1 << 30) for c in dicts],
        BARE: lambda: backend.encode_batch(texts, add_special_tokens=False),
        OURS: ours,
    }, tokens


def timed_rows(ctx: Context) -> list[Row]:
    """The rows masked: the first 150 of the input (30 with --quick)."""
    return ctx.rows()[: 30 if ctx.quick else 150]


def run(ctx: Context) -> list[Result]:
    rows = timed_rows(ctx)
    fns, tokens = contenders(rows, Masker(None))
    t = best_times(fns, min(ctx.repeat, 3))
    data = f"first {len(rows):,} rows of {ctx.label} ({tokens:,} tokens), Qwen2.5 tokenizer, 1 process"
    rate = {k: tokens / v for k, v in t.items()}
    return [
        Result("mask", GUIDE, rate[GUIDE], "tokens/s", data),
        Result("mask", BARE, rate[BARE], "tokens/s", data),
        Result("mask", OURS, rate[OURS], "tokens/s", data, GUIDE, t[GUIDE] / t[OURS], ">= 3"),
        Result("mask", OURS, rate[OURS], "tokens/s", data, BARE, t[BARE] / t[OURS], ">= 1",
               note="exact ids and labels; the bare encoder gets the rendered text for free"),
    ]
