"""streamproc train under torchrun: 2 CPU processes (gloo), DDP, each rank on its own shard files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from test_shared_prefix import kimi_shared  # noqa: F401  (fixtures)
from test_train import short_shards, tiny_model_dir  # noqa: F401  (fixtures)


@pytest.mark.slow
def test_two_cpu_processes_train_one_epoch(short_shards, tiny_model_dir, tmp_path):  # noqa: F811
    from streamproc.prepare.shards import read_shards

    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "streamproc", "train", "--shards", short_shards, "--model", tiny_model_dir,
        "--output", str(out), "--init-random", "--tool-eval-max", "0", "--save-steps", "100",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2
    train_rows = read_shards(short_shards, "train")
    # One epoch: every train row once, half on each rank (one row per shard file, step and rank).
    assert m["steps"] == train_rows.num_rows // 2
    assert m["tokens"] == sum(len(r) for r in train_rows.column("input_ids").to_pylist())
    assert m["eval_after"]["loss"] > 0


@pytest.mark.slow
def test_two_cpu_processes_train_lora_on_shared_prefix_rows(kimi_shared, tiny_model_dir, tmp_path):  # noqa: F811
    """LoRA under DDP on rows with a shared prefix (their masks built per rank): both ranks train
    the same adapters, rank 0 writes the adapter directory."""
    out = tmp_path / "ddp-lora"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "streamproc", "train", "--shards", kimi_shared, "--model", tiny_model_dir, "--output", str(out),
        "--init-random", "--tool-eval-max", "0", "--save-steps", "100", "--max-steps", "2", "--lora", "8",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["steps"] == 2 and m["config"]["lora"] == 8 and m["shards_manifest"]["share_prefix"]
    assert 0 < m["parameters"]["trainable"] < m["parameters"]["total"] / 100
    assert (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists()
    assert proc.stderr.count("LoRA r=8:") == 1  # counted once, by rank 0
