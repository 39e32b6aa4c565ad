"""The pack job's stage: masked sequences of a split's rows, train or eval by trace id.

Apart from pack_job.py so that a worker, which unpickles this stage, imports the masker and
not the packer, the shard writer or numba.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

from streamproc.prepare.mask import MaskOptions, MaskedSeq, cached_masker
from streamproc.records import PARTITIONS, BadRow, Row, RowError, Trace
from streamproc.run.runner import Stage

if TYPE_CHECKING:
    from streamproc.prepare.shards import ShardInfo


def is_eval(trace_id: str, fraction: float) -> bool:
    """The eval set (the held-out partition), by a hash of the trace id: stable across runs, machines and workers."""
    h = int.from_bytes(hashlib.blake2b(trace_id.encode(), digest_size=8).digest(), "big")
    return h < fraction * 2**64


@dataclass(slots=True)
class PartitionCounts:
    """Per-partition counts (train, eval). Workers fill the trace-level ones; shards give the token-level ones."""

    traces: int = 0  # traces with at least one sequence written
    dropped: int = 0  # traces with nothing written (too long for --overflow drop, or no trained token)
    tokens_cut: int = 0  # tokens tokenized but not written
    sequences: int = 0
    tokens: int = 0
    trainable: int = 0
    rows: int = 0
    sequence_tokens: int = 0  # tokens the sequences hold whole; more than `tokens` where rows share a prefix
    system_prompt_tokens: int = 0  # of those, in the system turns the sequences begin with
    turns_trained: int = 0  # assistant turns with trained tokens
    turns_shortened: int = 0  # of those, turns whose sequence lacks some earlier message (a long trace)
    turns_untrained: int = 0  # turns the options train that could not fit with their context (dropped.jsonl)
    context_repeated: int = 0  # tokens before the first trained turn of each sequence after a trace's first

    def add(self, o: "PartitionCounts") -> None:
        for f in self.__slots__:
            setattr(self, f, getattr(self, f) + getattr(o, f))

    def add_shard(self, s: ShardInfo) -> None:
        self.sequences += s.sequences
        self.tokens += s.tokens
        self.trainable += s.trainable
        self.rows += s.rows
        self.sequence_tokens += s.sequence_tokens

    def summary(self, row_len: int) -> dict:
        capacity = self.rows * row_len
        return {
            **asdict(self),
            "padding": capacity - self.tokens,
            "packing_efficiency": round(self.tokens / capacity, 6) if capacity else None,
            "tokens_per_trained_token": round(self.tokens / self.trainable, 4) if self.trainable else None,
            "prefix_tokens_saved": self.sequence_tokens - self.tokens,
        }


# ----------------------------------------------------------------------------- workers

@dataclass(slots=True)
class MaskedSplit:
    """A split's masked sequences and trace counts, per partition (train, eval)."""

    seqs: dict[str, list[MaskedSeq]]
    counts: dict[str, PartitionCounts]
    dropped: list[dict] = field(default_factory=list)  # traces nothing was written of, and turns not trained (with "turn"): id, split, reason, file, row
    min_system: int = 0  # tokens of the shortest system turn seen (0: none)


def min_system(a: int, b: int) -> int:
    """The shorter of two system-turn lengths, 0 meaning none seen."""
    return min(a, b) if a and b else a or b


class MaskStage(Stage):
    """Masked sequences of a split's rows, train or eval by trace id. Each worker loads the
    tokenizer (by name or directory) once, itself."""

    name = "mask"
    needs_trace = True  # the masker renders the parsed turns: tool turns are not parsed again

    def __init__(self, tokenizer: str, options: MaskOptions, eval_fraction: float):
        self.tokenizer, self.options, self.eval_fraction = tokenizer, options, eval_fraction

    def start(self) -> MaskedSplit:
        return MaskedSplit({s: [] for s in PARTITIONS}, {s: PartitionCounts() for s in PARTITIONS})

    def fold_batch(self, acc: MaskedSplit, rows: list[tuple[Row, Trace | None]]) -> list[tuple[int, BadRow]]:
        bad = []
        masker = cached_masker(self.tokenizer, self.options)
        traces = [trace for _, trace in rows]
        for i, (_, res) in enumerate(masker.mask_many(traces, batch=len(rows) or 1)):
            row = rows[i][0]
            if isinstance(res, RowError):
                bad.append((i, replace(res.bad, loc=row.loc) if row.loc else res.bad))  # a Trace does not know its place
                continue
            part = "eval" if is_eval(row.id, self.eval_fraction) else "train"
            c = acc.counts[part]
            c.traces += not res.dropped
            c.dropped += res.dropped
            acc.min_system = min_system(acc.min_system, res.system_tokens)
            loc = row.loc
            where = {"file": loc.file if loc else None, "row": loc.row if loc else None}
            if res.dropped:
                acc.dropped.append({"id": row.id, "split": part, "reason": res.reason, **where})
            else:
                acc.dropped += [{"id": row.id, "split": part, "turn": t, "reason": why, **where} for t, why in res.untrained]
                c.turns_untrained += len(res.untrained)
            c.turns_trained += res.turns_trained
            c.turns_shortened += res.turns_shortened
            c.context_repeated += res.context_repeated
            c.tokens_cut += res.tokens_cut
            c.system_prompt_tokens += sum(s.prefix_len for s in res.seqs)
            acc.seqs[part].extend(res.seqs)
        return bad
