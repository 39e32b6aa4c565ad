"""streamproc train: packed rows train as if each sequence were alone, on real shards, with resume."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

VOCAB = 211


def tiny(kind: str, attn: str):
    torch.manual_seed(0)
    common = dict(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
    )
    config = LlamaConfig(**common) if kind == "llama" else Qwen2Config(**common)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()


def packed_rows(lens_per_row: list[list[int]], seed: int = 1) -> tuple[list[dict], list[torch.Tensor]]:
    """Rows as `packed_dataset` yields them, and every sequence on its own."""
    g = torch.Generator().manual_seed(seed)
    rows, seqs = [], []
    for lens in lens_per_row:
        parts = [torch.randint(0, VOCAB, (n,), generator=g) for n in lens]
        seqs += parts
        ids = torch.cat(parts).tolist()
        rows.append({"input_ids": ids, "labels": ids, "seq_lengths": lens})
    return rows, seqs


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_sequence_logits_equal_alone(kind, attn):
    model = tiny(kind, attn)
    rows, seqs = packed_rows([[37, 5, 120, 1, 64], [200, 9]])
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(rows)
    assert "attention_mask" not in batch  # a mask would hide the boundaries in position_ids
    with torch.no_grad():
        packed = model(**batch, use_cache=False).logits[0]
        alone = torch.cat([model(input_ids=s[None], use_cache=False).logits[0] for s in seqs])
        # Control: the same flat row read as one sequence attends across boundaries.
        crossed = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
    assert packed.shape == alone.shape
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-4)
    assert (crossed - alone).abs().max() > 1e-2


def test_packed_loss_equals_loss_of_sequences_alone():
    model = tiny("llama", "sdpa")
    rows, seqs = packed_rows([[30, 12, 50], [7, 90]], seed=2)
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(rows)
    # Each sequence's first token would be predicted from the previous sequence: never trained.
    assert (batch["labels"][batch["position_ids"] == 0] == -100).all()
    with torch.no_grad():
        packed = model(**batch, use_cache=False).loss
        sums = [model(input_ids=s[None], labels=s[None], use_cache=False).loss * (len(s) - 1) for s in seqs]
    expected = torch.stack(sums).sum() / sum(len(s) - 1 for s in seqs)
    torch.testing.assert_close(packed, expected, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- real shards


SMOL = "smollm2-135m-instruct-gguf"
KIMI = "hermes_harness__hermeswith_kimi.jsonl"  # short traces, no tool calls
QWEN = "hermes_harness__neurareport_qwen.jsonl"  # long system prompts, tool calls


def pack(tmp_path_factory, name: str, files: list, tokenizer, seq_len: int, limit=None, shard_rows=2048) -> str:
    from streamproc.prepare.job import PackOptions, pack_to_dir
    from streamproc.io.sources import plan

    out = tmp_path_factory.mktemp(name)
    opts = PackOptions(seq_len=seq_len, tokenizer=str(tokenizer), eval_fraction=0.5, shard_rows=shard_rows)
    pack_to_dir(plan([str(f) for f in files], limit=limit), out, opts)
    return str(out)


@pytest.fixture(scope="session")
def short_shards(tmp_path_factory, real_dir, models_dir) -> str:
    """The short real traces, SmolLM2-tokenized, one packed row per shard file."""
    return pack(tmp_path_factory, "short", [real_dir / KIMI], models_dir / SMOL, 512, shard_rows=1)


@pytest.fixture(scope="session")
def tool_shards(tmp_path_factory, real_dir, models_dir) -> str:
    """Real traces with tool calls (their ~6,000-token system prompts need long rows)."""
    return pack(tmp_path_factory, "tools", [real_dir / QWEN], models_dir / SMOL, 12288, limit=4)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, models_dir) -> str:
    """A tiny Llama config beside SmolLM2's tokenizer: `--init-random` builds the model from it."""
    import shutil

    d = tmp_path_factory.mktemp("tiny-model")
    LlamaConfig(
        vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=16384, tie_word_embeddings=True,
    ).save_pretrained(d)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(models_dir / SMOL / f, d / f)
    return str(d)


def test_tool_prompts_end_where_the_reference_turn_starts(tool_shards, tiny_model_dir, real_dir):
    from streamproc.train.evaluate import tool_prompts
    from transformers import AutoTokenizer
    from streamproc.parse.parser import parse_trace
    from streamproc.prepare.shards import read_shards
    from streamproc.io.sources import iter_rows

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = read_shards(tool_shards, "train").to_pylist() + read_shards(tool_shards, "eval").to_pylist()
    prompts = list(tool_prompts(rows, tok))
    assert prompts
    called = {}
    for row in iter_rows([str(real_dir / QWEN)], limit=4):
        trace = parse_trace(row)
        called[trace.id] = {trace.call(i).name for i in range(len(trace.calls))}
    for p in prompts:
        assert tok.decode(p.prompt).endswith("<|im_start|>assistant\n")
        assert p.expected in called[p.trace_id]


def test_first_tool_name_reads_real_kimi_turns(kimi_fragments):
    import json

    from streamproc.train.evaluate import first_tool_name

    with_calls = [f["value"] for f in kimi_fragments if f["from"] == "gpt" and "<tool_call>" in f["value"]]
    assert with_calls
    for text in with_calls:
        body = text.split("<tool_call>", 1)[1].split("</tool_call>", 1)[0]
        assert first_tool_name(text) == json.loads(body)["name"]
    # What a generation cut off inside the JSON still names, and what names nothing.
    assert first_tool_name('<think>\nx\n</think>\n<tool_call>\n{"name": "terminal", "argu') == "terminal"
    assert first_tool_name("<think>\nx\n</think>\nDone.") is None


def test_tool_selection_decodes_every_prompt(tool_shards, tiny_model_dir):
    from streamproc.train.evaluate import tool_prompts, tool_selection
    from transformers import AutoTokenizer
    from streamproc.prepare.shards import read_shards
    from streamproc.train.trainer import load_model

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = list(tool_prompts(read_shards(tool_shards, "eval").to_pylist(), tok))
    model = load_model(tiny_model_dir, init_random=True)
    sel = tool_selection(model, tok, prompts, max_new_tokens=4)
    assert sel.total == len(prompts) >= 1
    assert 0 <= sel.correct <= sel.called <= sel.total
    assert sel.as_dict()["accuracy"] == sel.correct / sel.total
    assert model.training  # left as it was found


def test_train_evaluate_checkpoint_and_resume(short_shards, tiny_model_dir, tmp_path):
    """A short CPU run on real packed shards with held-out loss before and after (the eval split
    of the same pack); then a resumed run continues from the last checkpoint."""
    import json

    from streamproc.train.trainer import TrainConfig, train

    out = tmp_path / "run"
    cfg = dict(shards=short_shards, model=tiny_model_dir, output=str(out), init_random=True, save_steps=2, learning_rate=1e-3)
    m = train(TrainConfig(**cfg, max_steps=2))
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2
    assert [h["step"] for h in m["loss_history"]] == [1, 2]
    assert all(0 < h["loss"] < 20 for h in m["loss_history"])
    assert m["tokens"] > 0 and m["tokens_per_second"] > 0
    assert m["eval_before"]["loss"] > 0 and m["eval_after"]["loss"] > 0
    assert m["eval_after"]["tool_selection"]["total"] == 0  # these short traces call no tools
    assert (out / "checkpoint-2" / "trainer_state.json").exists()

    m2 = train(TrainConfig(**cfg, max_steps=3, resume=True))
    assert m2["steps"] == 3
    assert [h["step"] for h in m2["loss_history"]] == [1, 2, 3]  # the state carried over from checkpoint-2
    assert m2["eval_before"] is None and m2["eval_after"]["loss"] > 0


def test_shards_of_another_tokenizer_are_refused(short_shards, tmp_path, capsys):
    from streamproc.cli import main

    # A model whose tokenizer (the shipped Qwen2.5 one) is not the one the shards were made with.
    from streamproc.prepare.mask import DEFAULT_TOKENIZER

    rc = main(["train", "--shards", short_shards, "--model", str(DEFAULT_TOKENIZER), "--output", str(tmp_path), "--init-random"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "manifest.json" in err and "streamproc pack --tokenizer" in err
    assert not (tmp_path / "metrics.json").exists()


def test_each_rank_reads_its_own_shard_files(short_shards):
    """What accelerate does under DDP when the dataset has a source shard per rank or more:
    `IterableDataset.shard`, so each rank opens only its own files."""
    from streamproc.prepare.shards import read_shards
    from streamproc.prepare.shards import shard_paths
    from streamproc.train.trainer import packed_dataset

    ds = packed_dataset(short_shards, "train")
    assert ds.n_shards == len(shard_paths(short_shards, "train")) >= 2
    ranks = [[r["input_ids"] for r in ds.shard(num_shards=2, index=k)] for k in range(2)]
    everything = read_shards(short_shards, "train").column("input_ids").to_pylist()
    assert sorted(ranks[0] + ranks[1]) == sorted(everything)
    assert ranks[0] and ranks[1] and not any(r in ranks[1] for r in ranks[0])


def test_benchmark_compares_the_same_sequences(short_shards):
    """Packed and padded batches of the train benchmark hold exactly the same sequences."""
    from streamproc.benchmarks.train import _sequences, batches

    packed, padded = batches(short_shards, rows_per_step=1, steps=2)
    assert len(packed) == len(padded) == 2
    flat = lambda bs: sorted(tuple(s["input_ids"]) for b in bs for s in _sequences(b))  # noqa: E731
    assert flat(packed) == flat(padded)
    assert all(s["labels"] and len(s["labels"]) == len(s["input_ids"]) for b in padded for s in b)
