"""The real SmolLM2-135M-Instruct weights (GGUF) fine-tune on real traces: the loss falls."""

from __future__ import annotations

import pytest

from test_train import KIMI, SMOL, pack


@pytest.mark.slow
def test_smollm2_gguf_loss_falls_in_20_steps(tmp_path_factory, real_dir, models_dir):
    pytest.importorskip("gguf")
    from streamproc.train.trainer import TrainConfig, train

    # Short real traces (about 400 tokens each) keep a step of a 135M model on CPU to seconds.
    shards = pack(tmp_path_factory, "smol", [real_dir / KIMI], models_dir / SMOL, 512)
    out = tmp_path_factory.mktemp("smol-run")
    m = train(TrainConfig(
        shards=shards, model=str(models_dir / SMOL), output=str(out), max_steps=20, learning_rate=1e-4,
        save_steps=1000, tool_eval_max=0, seed=0,
    ))
    losses = [h["loss"] for h in m["loss_history"]]
    assert len(losses) == 20
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.8 * first, losses
    assert m["eval_after"]["loss"] < m["eval_before"]["loss"]
