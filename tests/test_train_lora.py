"""`streamproc train --lora`: peft LoRA adapters on the packed rows as they are. A tiny
Qwen2-shaped model (real weights file, random values) with the real Qwen2.5 tokenizer, on real
traces packed with and without a shared prefix: the loss falls, only the adapters train, the
adapter directory loads with peft and reproduces the trained model, the merged model is base +
adapter, and a packed row's adapter gradients are the sum of its sequences' alone."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_shared_prefix import alone_loss_sum, make_rows
from test_train import KIMI
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

from streamproc.prepare.mask import DEFAULT_TOKENIZER
from streamproc.train.config import read_config
from streamproc.train.trainer import PackedCollator, TrainConfig, packed_loss, train

R = 8
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SHAPE = dict(
    vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=8192, tie_word_embeddings=True,
    initializer_range=0.2,  # at 0.02 the frozen embeddings make near-uniform logits that adapters can hardly move
)  # fmt: skip


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> str:
    """A tiny Qwen2 with saved (random) weights beside the shipped Qwen2.5 tokenizer."""
    d = tmp_path_factory.mktemp("tiny-qwen2")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(Qwen2Config(**SHAPE)).save_pretrained(d)
    for f in DEFAULT_TOKENIZER.iterdir():
        shutil.copy(f, d / f.name)
    return str(d)


@pytest.fixture(scope="module")
def kimi_shards(tmp_path_factory, real_dir) -> dict[str, str]:
    """The short real traces, Qwen2.5-tokenized, packed as usual and with a shared prefix."""
    from streamproc.io.sources import plan
    from streamproc.prepare.job import PackOptions, pack_to_dir

    out = {}
    for kind, extra in (("standard", {}), ("shared", {"share_prefix": True, "row_len": 4096})):
        d = tmp_path_factory.mktemp(f"kimi-{kind}")
        pack_to_dir(plan([str(real_dir / KIMI)]), d, PackOptions(seq_len=1024, tokenizer=str(DEFAULT_TOKENIZER), eval_fraction=0.4, **extra))
        out[kind] = str(d)
    from streamproc.prepare.shards import read_shards

    assert any(read_shards(out["shared"], "train").column("prefix_len").to_pylist())  # rows that share a prefix
    return out


def adapter_parameters() -> int:
    """r x (in + out) for each linear layer of each block."""
    h, i = SHAPE["hidden_size"], SHAPE["intermediate_size"]
    kv = SHAPE["num_key_value_heads"] * h // SHAPE["num_attention_heads"]
    dims = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]  # q, k, v, o, gate, up, down
    return SHAPE["num_hidden_layers"] * R * sum(a + b for a, b in dims)


def load_base(base_dir: str):
    return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="sdpa").eval()


def eval_loss(model, shards: str) -> float:
    """The Trainer's eval loss as `streamproc train` computes it: the mean over eval rows (one per
    batch) of each row's packed_loss."""
    from streamproc.prepare.shards import read_shards
    from streamproc.train.trainer import SEQ_LENGTHS

    losses = []
    with torch.no_grad():
        for row in read_shards(shards, "eval").to_pylist():
            batch = PackedCollator()([{**row, SEQ_LENGTHS: row["seq_lens"]}])
            losses.append(float(packed_loss(model, batch)[0]))
    return sum(losses) / len(losses)


def adapter_delta(adapter, name: str) -> torch.Tensor:
    """scale * B @ A of the adapter on module `name` (a PeftModel's state dict keys)."""
    sd = adapter.state_dict()
    a = sd[f"base_model.model.{name}.lora_A.default.weight"]
    b = sd[f"base_model.model.{name}.lora_B.default.weight"]
    return (b @ a) * (adapter.peft_config["default"].lora_alpha / R)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["standard", "shared"])
def test_lora_trains_only_adapters_that_reload_and_merge(kind, kimi_shards, base_dir, tmp_path):
    from peft import PeftModel

    out = tmp_path / "run"
    m = train(TrainConfig(
        shards=kimi_shards[kind], model=base_dir, output=str(out), max_steps=10, learning_rate=2e-2,
        save_steps=1000, tool_eval_max=2, tool_eval_new_tokens=4, lora=R, merge=True, shuffle_buffer=0,
    ))  # fmt: skip
    losses = [h["loss"] for h in m["loss_history"]]
    assert len(losses) == 10 and sum(losses[-3:]) < 0.9 * sum(losses[:3]), losses
    assert m["eval_after"]["loss"] < m["eval_before"]["loss"]

    # Only the adapters train.
    base = load_base(base_dir)
    assert m["parameters"] == {"trainable": adapter_parameters(), "total": sum(p.numel() for p in base.parameters()) + adapter_parameters()}

    # A standard peft adapter directory, no full model; the resolved configuration beside the metrics.
    assert json.loads((out / "adapter_config.json").read_text())["r"] == R
    assert (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists()
    assert TrainConfig(**read_config(out / "train_config.yaml")) == TrainConfig(**m["config"])

    # The adapter, loaded by peft on the base, is the trained model: its eval loss is the one
    # measured in memory after training.
    adapter = PeftModel.from_pretrained(load_base(base_dir), str(out)).eval()
    assert eval_loss(adapter, kimi_shards[kind]) == pytest.approx(m["eval_after"]["loss"], rel=1e-5)
    assert eval_loss(load_base(base_dir), kimi_shards[kind]) == pytest.approx(m["eval_before"]["loss"], rel=1e-5)

    # Merged = base + scale * B @ A on every targeted layer, every other weight the base's.
    merged = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32, attn_implementation="sdpa").eval()
    base_sd, merged_sd = base.state_dict(), merged.state_dict()
    assert merged_sd.keys() == base_sd.keys()
    moved = 0
    c = Qwen2Config(**SHAPE)
    for key, w in base_sd.items():
        module = key.removesuffix(".weight")
        if module.split(".")[-1] in LINEAR:
            delta = adapter_delta(adapter, module)
            torch.testing.assert_close(merged_sd[key], w + delta, atol=1e-6, rtol=1e-5)
            moved += bool(delta.abs().max() > 1e-4)
        else:
            assert torch.equal(merged_sd[key], w), key  # embeddings, norms: frozen
    assert moved == c.num_hidden_layers * len(LINEAR)  # every adapter trained
    ids = torch.tensor([[151644, 872, 198, 9707, 0, 151645, 198, 151644, 77091, 198]])  # <|im_start|>user ...
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapter(ids).logits, atol=1e-5, rtol=1e-4)
        assert (merged(ids).logits - base(ids).logits).abs().max() > 1e-3


@pytest.mark.slow
def test_lora_resumes_from_its_checkpoint(kimi_shards, base_dir, tmp_path):
    """A run resumed from an adapter checkpoint continues as the uninterrupted run did: its
    adapters, optimizer and schedule came back."""
    cfg = dict(shards=kimi_shards["standard"], model=base_dir, save_steps=2, learning_rate=1e-2, lora=R, tool_eval_max=0, max_steps=3)
    whole = train(TrainConfig(**cfg, output=str(tmp_path / "whole")))
    checkpoint = tmp_path / "whole" / "checkpoint-2"
    assert (checkpoint / "adapter_model.safetensors").exists() and not (checkpoint / "model.safetensors").exists()
    m = train(TrainConfig(**cfg, output=str(tmp_path / "resumed"), resume=str(checkpoint)))
    assert m["steps"] == 3 and [h["step"] for h in m["loss_history"]] == [1, 2, 3]
    assert m["eval_before"] is None
    assert m["loss_history"][2]["loss"] == pytest.approx(whole["loss_history"][2]["loss"], rel=1e-5)
    assert m["eval_after"]["loss"] == pytest.approx(whole["eval_after"]["loss"], rel=1e-5)


def lora_tiny(seed: int):
    """tests/test_shared_prefix's tiny Qwen2 in float64 (packed_loss takes the cross-entropy in
    fp32: the sums agree to about 1e-8), wrapped with LoRA whose B is not zero, so every adapter
    weight has a gradient."""
    from peft import LoraConfig, get_peft_model
    from test_shared_prefix import tiny_qwen2

    model = tiny_qwen2("sdpa").double()
    torch.manual_seed(seed)
    return get_peft_model(model, LoraConfig(r=R, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))


rows_spec = st.lists(
    st.tuples(st.sampled_from([0, 0, 9, 31]), st.lists(st.integers(2, 40), min_size=1, max_size=4)), min_size=1, max_size=3
)


@settings(max_examples=12, deadline=None)
@given(spec=rows_spec, seed=st.integers(0, 2**16))
def test_lora_gradients_of_a_packed_row_are_the_sum_alone(spec, seed):
    """The isolation test, for adapters: the gradient of every LoRA weight over packed rows (with
    or without a shared prefix) equals the sum of its gradients over each sequence alone."""
    from test_shared_prefix import VOCAB

    model = lora_tiny(seed)
    rows, alone = make_rows(spec, VOCAB, seed=seed)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    loss, kept = packed_loss(model, PackedCollator()(rows), num_items_in_batch=1)  # the sum over trained tokens
    loss.backward()
    packed = {n: p.grad.clone() for n, p in trainable.items()}
    model.zero_grad()
    total = sum(alone_loss_sum(model, ids, labels) for ids, labels in alone)
    if kept == 0:  # nothing trains in these rows
        assert float(total) == 0.0
        return
    total.backward()
    torch.testing.assert_close(loss.detach().double(), total.detach(), atol=1e-6, rtol=1e-6)
    for n, g in packed.items():
        torch.testing.assert_close(g, trainable[n].grad, atol=1e-6, rtol=1e-5, msg=lambda m, n=n: f"{n}: {m}")
    assert any(g.abs().max() > 1e-6 for g in packed.values())


def test_lora_gradients_differ_when_sequences_see_each_other():
    """The control: the same flat row with plain causal attention (boundaries ignored) does not
    give the sum of the sequences' gradients, so the test above can fail."""
    from test_shared_prefix import VOCAB

    model = lora_tiny(1)
    rows, alone = make_rows([(12, [20, 15]), (0, [30, 10])], VOCAB, seed=1)
    batch = PackedCollator()(rows)
    crossed = {k: batch[k] for k in ("input_ids", "shift_labels")}
    crossed["position_ids"] = torch.arange(batch["input_ids"].shape[1])[None]
    packed_loss(model, crossed, num_items_in_batch=1)[0].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    sum(alone_loss_sum(model, ids, labels) for ids, labels in alone).backward()
    worst = max(float((g - dict(model.named_parameters())[n].grad).abs().max()) for n, g in grads.items())
    assert worst > 1e-4


# ----------------------------------------------------------------------------- options


def test_lora_rank_must_be_positive_and_options_need_lora(tmp_path, capsys):
    from streamproc.cli import main

    for extra, said in ((["--lora", "0"], "at least 1"), (["--merge"], "--merge without --lora"), (["--lora", "4", "--lora-dropout", "1"], "[0, 1)")):
        rc = main(["train", "--shards", str(tmp_path / "none"), "--model", "m", "--output", str(tmp_path / "o"), *extra])
        assert rc == 2 and said in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no CUDA GPU is")
def test_load_in_4bit_without_a_gpu_is_one_error_before_any_work(tmp_path, capsys):
    from streamproc.cli import main

    # The shards and model do not exist: the error comes before either is looked at.
    rc = main(["train", "--shards", str(tmp_path / "no-shards"), "--model", str(tmp_path / "no-model"),
               "--output", str(tmp_path / "out"), "--lora", "16", "--load-in-4bit"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err == ["streamproc train: error: --load-in-4bit needs a CUDA GPU (bitsandbytes' 4-bit kernels): none is visible here"]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_tokens_that_pack_added_train_their_embeddings(real_dir, base_dir, tmp_path):
    """`pack --add-tokens <think> </think>` (Qwen2.5 has neither): with LoRA their embedding rows
    train too (peft's trainable tokens), every other row stays the base's."""
    from peft import PeftModel

    from streamproc.io.sources import plan
    from streamproc.prepare.job import PackOptions, pack_to_dir
    from streamproc.train.trainer import fit_embeddings

    shards = tmp_path / "shards"
    opts = PackOptions(seq_len=1024, tokenizer=str(DEFAULT_TOKENIZER), eval_fraction=0.4, add_tokens=("<think>", "</think>"))
    pack_to_dir(plan([str(real_dir / KIMI)]), shards, opts)
    out = tmp_path / "run"
    m = train(TrainConfig(shards=str(shards), model=base_dir, output=str(out), max_steps=3, learning_rate=1e-2, save_steps=1000,
                          tool_eval_max=0, lora=R, merge=True))  # fmt: skip
    new = [151665, 151666]  # the first ids after Qwen2.5's own tokens
    assert m["parameters"]["trainable"] == adapter_parameters() + len(new) * SHAPE["hidden_size"]

    merged = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32).get_input_embeddings().weight
    base = load_base(base_dir)
    assert merged.shape[0] == base.get_input_embeddings().num_embeddings  # Qwen2.5's spare rows held the new ids
    unchanged = torch.ones(merged.shape[0], dtype=torch.bool)
    unchanged[new] = False
    assert torch.equal(merged[unchanged], base.get_input_embeddings().weight[unchanged])
    assert (merged[new] - base.get_input_embeddings().weight[new]).abs().max() > 1e-4
    # The adapter directory carries those rows: loaded by peft it gives the merged model's logits.
    fit_embeddings(base, AutoTokenizer.from_pretrained(out))
    adapter = PeftModel.from_pretrained(base, str(out)).eval()
    ids = torch.tensor([[151644, 77091, 198, new[0], 9707, new[1], 198]])
    with torch.no_grad():
        whole = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32).eval()
        torch.testing.assert_close(whole(ids).logits, adapter(ids).logits, atol=1e-5, rtol=1e-4)
