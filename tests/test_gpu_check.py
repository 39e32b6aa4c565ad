"""benches/gpu_check.py: its masks keep packed sequences apart (shared prefixes included), and its
dry run (the GPU check's steps at toy size on CPU) runs end to end and reports what it checked."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benches" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up by name
_spec.loader.exec_module(gpu_check)

VOCAB = 211
SETUP = replace(gpu_check.DRY, tolerance=1e-4, logit_stride=1)


def tiny():
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()


def rows(prefixes: list[int], lens: list[list[int]], seed: int = 3) -> list[dict]:
    """Rows in the shard format: `prefix_len` tokens shared, then the sequences (`seq_lens`)."""
    g = np.random.default_rng(seed)
    out = []
    for p, ls in zip(prefixes, lens):
        ids = g.integers(0, VOCAB, p + sum(ls)).tolist()
        labels = [-100] * p + ids[p:]
        if p:  # as `pack --share-prefix` writes them: a remainder's first token is never trained
            for start in np.cumsum([p, *ls[:-1]]):
                labels[start] = -100
        out.append({"input_ids": ids, "labels": labels, "seq_lens": ls, "prefix_len": p})
    return out


def test_segments_follow_the_shard_format_as_the_trainer_reads_it():
    r = rows([3, 0], [[2, 1], [2, 2]])
    seg, sees, pos = gpu_check.segments(r)
    assert seg.tolist() == [0, 0, 0, 1, 1, 2, 3, 3, 4, 4]
    assert sees.tolist() == [-1, -1, -1, 0, 0, 0, -1, -1, -1, -1]
    assert pos.tolist() == [0, 1, 2, 3, 4, 3, 0, 1, 0, 1]  # after a prefix, positions continue from it
    batch = gpu_check.trainer_batch(r, "cpu")
    assert batch["position_ids"][0].tolist() == pos.tolist()
    assert batch["segments"][0].tolist() == seg.tolist()
    control = gpu_check.causal_mask(10, "cpu", "sdpa")[0, 0]
    assert control[5].tolist() == [True] * 6 + [False] * 4  # boundaries ignored: everything before


@pytest.mark.parametrize("prefixes", [[0, 0], [40, 25], [30, 0]])
def test_isolation_holds_and_its_control_fails(prefixes):
    model = tiny()
    r = rows(prefixes, [[37, 5, 60, 1], [50, 9]])
    attn = "sdpa"  # on CPU the shared-prefix path is SDPA with the 4D mask, as the trainer's
    good = gpu_check.isolation(model, r, attn, "test", SETUP, control=False)
    bad = gpu_check.isolation(model, r, attn, "test", SETUP, control=True)
    assert good.sequences == bad.sequences == sum(p > 0 for p in prefixes) + 6
    assert good.ok and good.worst <= 1e-4
    assert bad.ok and bad.worst > 1e-2  # ignoring the boundaries is caught
    assert bad.first <= 1e-4  # nothing precedes the row's first sequence


def sequence_with_turns(turn: int, seed: int = 5) -> dict:
    """One packed sequence laid out as a trace: system, user, then assistant turns (trained after
    their 3-token header) and tool results, each turn opening with `turn`."""
    g = np.random.default_rng(seed)
    ids, labels = [], []
    for role, n in (("system", 30), ("user", 8), ("assistant", 12), ("tool", 9), ("assistant", 7), ("tool", 5), ("assistant", 10)):
        body = g.integers(10, VOCAB, n).tolist()
        ids += [turn, *body]
        labels += [IGNORE] * 4 + body[3:] if role == "assistant" else [IGNORE] * (n + 1)
    return {"input_ids": ids, "labels": labels, "seq_lens": [len(ids)], "prefix_len": 0}


IGNORE = -100
TURN = 7


def test_rows_with_a_prefix_past_the_system_turn():
    seq = sequence_with_turns(TURN)
    [row] = gpu_check.longer_prefix_rows([seq], TURN)
    starts = [i for i, t in enumerate(seq["input_ids"]) if t == TURN]
    # Three assistant turns: the prefix ends before the second, past system, user, assistant and tool turns.
    assert row["prefix_len"] == starts[4] > starts[1]
    p = row["prefix_len"]
    assert row["input_ids"][:p] == seq["input_ids"][:p] and row["labels"][:p] == [IGNORE] * p
    bounds = np.cumsum([p, *row["seq_lens"]])
    assert len(row["seq_lens"]) == 2 and bounds[-1] == len(row["input_ids"])
    for (a, b), end in zip(zip(bounds[:-1], bounds[1:]), (starts[5], len(seq["input_ids"]))):
        ids, labels = row["input_ids"][a:b], row["labels"][a:b]
        assert seq["input_ids"][:p] + ids == seq["input_ids"][:end]  # prefix + remainder: a prefix of the trace
        trained = [i for i, x in enumerate(labels) if x != IGNORE]
        assert labels[0] == IGNORE and trained and trained[0] > b - a - 12  # only the remainder's last assistant turn
        assert [labels[i] for i in trained] == [seq["labels"][p + i] for i in trained]
    gpu_check.trainer_batch([row], "cpu")  # the trainer's collator takes it
    # One assistant turn: the prefix is the system and user turns; none: no row.
    for end, prefix in ((starts[3], starts[2]), (starts[2], None)):
        cut = {**seq, "input_ids": seq["input_ids"][:end], "labels": seq["labels"][:end], "seq_lens": [end]}
        assert [r["prefix_len"] for r in gpu_check.longer_prefix_rows([cut], TURN)] == ([prefix] if prefix else [])


def test_isolation_holds_on_rows_with_a_longer_prefix_and_its_control_fails():
    rows = gpu_check.longer_prefix_rows([sequence_with_turns(TURN, seed=k) for k in range(2)], TURN)
    model = tiny()
    good = gpu_check.isolation(model, rows, "sdpa", "test", SETUP, control=False)
    bad = gpu_check.isolation(model, rows, "sdpa", "test", SETUP, control=True)
    assert good.sequences == 2 + 4 and good.ok and good.worst <= 1e-4
    assert bad.ok and bad.worst > 1e-2


def test_trained_tokens_and_flat_labels():
    # A remainder after a prefix is predicted from it (pack leaves its first label untrained).
    assert gpu_check.trained_in(rows([4, 0], [[3, 2], [5]])) == 2 + 1 + 4
    r = rows([0, 0], [[3, 2], [5]])
    assert gpu_check.trained_in(r) == 2 + 1 + 4
    labels = gpu_check.flat_inputs(r, "cpu")["labels"][0].tolist()
    assert [labels[i] for i in (0, 3, 5)] == [-100] * 3  # each sequence's first: never predicted from another
    assert sum(x != -100 for x in labels[1:]) == 7


@pytest.mark.slow
def test_dry_run_end_to_end(tmp_path):
    """The whole GPU check at toy size on CPU: packs the sample, checks isolation and its
    control, times padded / packed / logits-everywhere steps, trains with `streamproc train`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(["bash", str(ROOT / "benches" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["failures"] == []
    iso = {(r["path"], r["control"]): r for r in report["isolation"]}
    # pack --share-prefix rows too, and rows whose prefix runs past the system turn
    paths = ["SDPA, padding-free position ids", "SDPA, shared-prefix 4D mask (CPU)", "SDPA, shared-prefix 4D mask (CPU), prefix past the system turn"]
    assert {p for p, _ in iso} == set(paths)
    for p in paths:
        assert iso[(p, False)]["ok"] and iso[(p, False)]["worst"] <= 1e-4 and iso[(p, False)]["sequences"] >= 2
        assert iso[(p, True)]["ok"] and iso[(p, True)]["worst"] > 1e-4
    assert any("flash_attention_2" in s for s in report["skipped"])
    assert any(s.startswith("QLoRA: no CUDA GPU") for s in report["skipped"])
    assert report["setup"]["longer_prefix_rows"]["rows"] >= 2
    modes = {r["mode"]: r for r in report["throughput"]}
    longer = "shared-prefix rows, prefix past the system turn"
    assert {"packed rows", "padded batches", "packed rows, logits everywhere", "shared-prefix rows", longer} <= set(modes)
    assert modes["shared-prefix rows"]["trained"] > 0 and modes[longer]["trained"] > 0
    assert {"packed rows, full fine-tune", "packed rows, LoRA r=16"} <= set(modes)
    assert modes["packed rows, LoRA r=16"]["tokens"] == modes["packed rows, full fine-tune"]["tokens"] == modes["packed rows"]["tokens"]
    assert modes["packed rows"]["tokens"] == modes["padded batches"]["tokens"]  # the same sequences
    assert modes["padded batches"]["computed"] >= modes["padded batches"]["tokens"]  # one sequence a step here: no padding
    assert {"packed / padded, tokens/s", "shared-prefix / packed, trained tokens/s", "prefix past the system turn / packed, trained tokens/s",
            "LoRA r=16 / full fine-tune, tokens/s"} <= set(report["ratios"])  # fmt: skip
    lora = report["train_adapters"]["lora"]
    assert lora["returncode"] == 0 and all(lora["files"].values()) and lora["steps"] == 2
    assert 0 < lora["parameters"]["trainable"] < lora["parameters"]["total"] / 20
    assert "qlora" not in report["train_adapters"]
    train = report["train"]
    assert train["steps"] == 3 and train["loss_last"] < train["loss_first"]
    assert "tool_selection" in train["eval_before"] and "tool_selection" in train["eval_after"]
    assert (tmp_path / "train_metrics.json").exists()
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| SDPA, padding-free position ids |" in md and "Failures: none." in md
    assert "`streamproc train --lora 16 --merge`: 2 steps" in md
    assert not (tmp_path / "work").exists()  # shards and checkpoints stay out of OUT


def test_padding_is_a_sequence_of_its_own():
    r = gpu_check.padded_to(rows([4], [[3, 2]]), 16)
    assert gpu_check.trained_in(r) == gpu_check.trained_in(r[:1])
    seg, sees, pos = gpu_check.segments(r)
    assert len(seg) == 16 and set(seg[9:]) == {3} and sees[9:].tolist() == [-1] * 7


def test_flops_of_rows_without_a_prefix_are_the_bench_count():
    from streamproc.benchmarks.train import flops

    model = tiny()
    assert gpu_check.shared_flops(model, rows([0], [[30, 50]]), 40) == pytest.approx(flops(model, [30, 50], 40))
    # A prefix shared by two sequences costs less than each sequence with its own copy.
    assert gpu_check.shared_flops(model, rows([20], [[30, 50]]), 40) < flops(model, [50, 70], 40)
