"""Held-out evaluation: loss, and whether the model picks the right tool.

Tool selection is read off the eval shards themselves: in each packed sequence, a run of trained
(labelled) tokens is one assistant turn. Where the reference turn calls tools, the tokens before
the run are the preceding context; greedy decoding from it must name the same first tool. Both
names come from `parse.parse_turn`, so a call the parser would not accept does not count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import islice
from typing import Iterable, Iterator

import numpy as np

from streamproc.prepare.pack import IGNORE
from streamproc.parse.parser import parse_turn

STOP = "</tool_call>"


@dataclass(slots=True)
class ToolPrompt:
    """The context before an assistant turn that calls tools, and the first tool it calls."""

    trace_id: str
    prompt: list[int]
    expected: str


@dataclass(slots=True)
class ToolSelection:
    total: int = 0
    called: int = 0  # generated a parseable tool call at all (format)
    correct: int = 0  # ... naming the expected first tool (choice)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.total if self.total else None

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "accuracy": self.accuracy,
            "call_rate": self.called / self.total if self.total else None,
            "accuracy_when_called": self.correct / self.called if self.called else None,
        }


def first_tool_name(text: str) -> str | None:
    calls = parse_turn("assistant", text).tool_calls
    return (calls[0].name or None) if calls else None


def tool_prompts(rows: Iterable[dict], tokenizer) -> Iterator[ToolPrompt]:
    """Every assistant turn with a tool call in packed rows (input_ids, labels, seq_lens, trace_ids,
    prefix_len), each sequence whole (a shared prefix in front of its remainder)."""
    from streamproc.prepare.shards import sequences

    for row in rows:
        for trace_id, ids, labels in sequences(row):
            seq, mask = np.asarray(ids), np.asarray(labels) != IGNORE
            for a, b in _runs(mask):
                name = first_tool_name(tokenizer.decode(seq[a:b].tolist()))
                if name and a > 0:
                    yield ToolPrompt(trace_id, seq[:a].tolist(), name)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def tool_selection(model, tokenizer, prompts: Iterable[ToolPrompt], max_new_tokens: int = 512) -> ToolSelection:
    """Greedy-decode each prompt up to the first `</tool_call>` and compare the first tool name."""
    import torch

    out = ToolSelection()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for p in prompts:
            with torch.no_grad():
                gen = model.generate(
                    torch.tensor([p.prompt], device=device),
                    attention_mask=torch.ones(1, len(p.prompt), dtype=torch.long, device=device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    use_cache=True,
                    stop_strings=[STOP],
                    tokenizer=tokenizer,
                    pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
                )
            name = first_tool_name(tokenizer.decode(gen[0, len(p.prompt) :].tolist()))
            out.total += 1
            out.called += name is not None
            out.correct += name == p.expected
    finally:
        model.train(was_training)
    return out


def evaluate(trainer, cfg) -> dict:
    """Eval loss over the eval shards, and tool selection on up to `cfg.tool_eval_max` prompts,
    split across ranks and summed."""
    import torch
    import torch.distributed as dist

    from streamproc.prepare.shards import read_shard
    from streamproc.prepare.shards import shard_paths

    loss = trainer.evaluate()["eval_loss"]
    result = {"loss": loss}
    if cfg.tool_eval_max > 0:
        rows = (r for path in shard_paths(cfg.eval_shards, "eval") for r in read_shard(path).to_pylist())
        prompts = list(islice(tool_prompts(rows, trainer.processing_class), cfg.tool_eval_max))
        rank, world = trainer.args.process_index, trainer.args.world_size
        sel = tool_selection(trainer.model, trainer.processing_class, prompts[rank::world], cfg.tool_eval_new_tokens)
        if world > 1 and dist.is_initialized():
            counts = torch.tensor([sel.total, sel.called, sel.correct], dtype=torch.long, device=trainer.args.device)
            dist.all_reduce(counts)
            sel = ToolSelection(*counts.tolist())
        result["tool_selection"] = sel.as_dict()
    return result

