"""Shared-prefix rows train exactly as their sequences alone: logits, loss and gradients, with a
tiny Qwen2-shaped model and SmolLM2-135M's real weights; and the shards hold the same sequences
as packing without sharing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from streamproc.prepare.pack import IGNORE
from streamproc.train.trainer import PackedCollator, packed_loss, prefix_attention_mask

VOCAB = 211
# fp32 on CPU: the packed row and the sequence alone differ only in summation order.
ATOL, RTOL = 1e-4, 1e-4


def tiny_qwen2(attn: str):
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
    )
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()


def make_rows(rows_spec: list[tuple[int, list[int]]], vocab: int, seed: int = 0, pool=None):
    """Rows (prefix_len, remainder lengths) as `packed_dataset` yields them, and every sequence
    whole: (ids, labels). A prefix and each remainder's first token train nothing (as pack writes)."""
    g = np.random.default_rng(seed)

    def draw(n):
        return (g.choice(pool, n) if pool is not None else g.integers(0, vocab, n)).tolist()

    rows, alone = [], []
    for p, lens in rows_spec:
        prefix = draw(p)
        ids, labels = list(prefix), [IGNORE] * p
        for n in lens:
            part = draw(n)
            lab = [t if g.random() < 0.6 else IGNORE for t in part]
            if p:
                lab[0] = IGNORE
            ids += part
            labels += lab
            alone.append((prefix + part, [IGNORE] * p + lab))
        rows.append({"input_ids": ids, "labels": labels, "seq_lengths": lens, "prefix_len": p})
    return rows, alone


SPEC = [(40, [13, 7, 30, 1]), (0, [25, 9]), (17, [5, 60])]


def flat_logits(model, batch):
    inputs = {k: batch[k] for k in ("input_ids", "position_ids")}
    if "segments" in batch:
        inputs["attention_mask"] = prefix_attention_mask(batch["segments"][0], batch["bases"][0], model.config._attn_implementation)
    return model(**inputs, use_cache=False).logits[0]


def alone_loss_sum(model, ids, labels) -> torch.Tensor:
    x = torch.tensor([ids])
    logits = model(input_ids=x, use_cache=False).logits[0, :-1]
    target = torch.tensor(labels[1:])
    return torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum")


def check_exact(model, rows, alone, atol=ATOL, rtol=RTOL):
    batch = PackedCollator()(rows)
    # Logits: each remainder (and prefix) equals the same tokens run alone after their prefix.
    with torch.no_grad():
        packed = flat_logits(model, batch)
        pos = 0
        k = 0
        for row in rows:
            p = row["prefix_len"]
            if p:
                ref = model(input_ids=torch.tensor([alone[k][0]]), use_cache=False).logits[0]
                torch.testing.assert_close(packed[pos : pos + p], ref[:p], atol=atol, rtol=rtol)
            pos += p
            for n in row["seq_lengths"]:
                ids, _ = alone[k]
                ref = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
                torch.testing.assert_close(packed[pos : pos + n], ref[p:], atol=atol, rtol=rtol)
                pos += n
                k += 1
        assert pos == packed.shape[0]
    # Loss: the trained-token-weighted mean of the sequences' losses alone.
    trained = sum(sum(t != IGNORE for t in lab[1:]) for _, lab in alone)
    model.zero_grad()
    loss, kept = packed_loss(model, batch, num_items_in_batch=trained)
    assert kept == trained
    loss.backward()
    grads = {n: q.grad.clone() for n, q in model.named_parameters()}
    model.zero_grad()
    ref_sum = sum(alone_loss_sum(model, ids, lab) for ids, lab in alone)
    (ref_sum / trained).backward()
    torch.testing.assert_close(loss.detach(), (ref_sum / trained).detach(), atol=atol, rtol=rtol)
    # Gradients: the sum of the gradients of the sequences alone (each over all trained tokens).
    for n, q in model.named_parameters():
        torch.testing.assert_close(grads[n], q.grad, atol=atol, rtol=rtol, msg=lambda m: f"{n}: {m}")
    model.zero_grad()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_tiny_qwen2_prefix_rows_equal_sequences_alone(attn):
    model = tiny_qwen2(attn)
    rows, alone = make_rows(SPEC, VOCAB)
    check_exact(model, rows, alone)


def test_without_the_mask_remainders_would_see_each_other():
    # Control: the same flat row with position ids but the plain causal mask is not exact.
    model = tiny_qwen2("sdpa")
    rows, alone = make_rows([(20, [10, 12])], VOCAB)
    batch = PackedCollator()(rows)
    with torch.no_grad():
        crossed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        second = model(input_ids=torch.tensor([alone[1][0]]), use_cache=False).logits[0][20:]
    assert (crossed[30:] - second).abs().max() > 1e-2


def test_a_batch_without_prefix_keeps_the_padding_free_path():
    rows, _ = make_rows([(0, [5, 6]), (0, [3])], VOCAB)
    batch = PackedCollator()(rows)
    assert "segments" not in batch and "attention_mask" not in batch
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 0, 1, 2]


def test_logits_only_where_trained_leave_the_loss_unchanged():
    # packed_loss computes the head at trained positions only; the full-logits loss is the same.
    model = tiny_qwen2("sdpa")
    rows, _ = make_rows([(0, [30, 9]), (0, [21])], VOCAB, seed=3)
    batch = PackedCollator()(rows)
    with torch.no_grad():
        loss, kept = packed_loss(model, batch)
        full = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        shift = batch["shift_labels"][0]
        ref = torch.nn.functional.cross_entropy(full, shift, ignore_index=IGNORE)
    assert kept == int((shift != IGNORE).sum()) < len(shift)
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-6)


def test_a_remainder_whose_first_token_trains_is_refused():
    from streamproc.prepare.shards import ShardFormatError

    rows = [{"input_ids": [1, 2, 3, 4], "labels": [IGNORE, IGNORE, 3, 4], "seq_lengths": [2], "prefix_len": 2}]
    with pytest.raises(ShardFormatError, match="first token trains"):
        PackedCollator()(rows)


def test_flash_attention_is_refused_for_prefix_rows():
    from streamproc.train.trainer import ShardMismatch

    s = torch.tensor([0, 0, 1]), torch.tensor([0, 0, 0])
    with pytest.raises(ShardMismatch, match="shared prefix"):
        prefix_attention_mask(*s, "flash_attention_2")


def planned_rows(vocab: int, seed: int = 0, pool=None):
    """Rows as pack writes them (the Packer's plan, the shard table's columns) for the samples of
    two traces that share a system turn, each trace's samples also sharing its task and first turn:
    each row's prefix is system + task + turn (longer than the system turn). With every sequence
    whole, as the masker writes it."""
    from test_pack import trace_sample

    from streamproc.prepare.pack import Packer
    from streamproc.prepare.shards import to_table

    g = np.random.default_rng(seed)

    def draw(n):
        return np.asarray(g.choice(pool, n) if pool is not None else g.integers(0, vocab, n), np.int32)

    system = draw(12)
    seqs = []
    for t in range(2):
        turns = [system, draw(9), draw(14)]
        seqs += [trace_sample(f"t{t}-{k}", turns, 3, draw(n), g) for k, n in enumerate((11, 6, 17))]
    packer = Packer(80, row_len=100, share_prefix=True)
    packer.add(seqs)
    table = to_table(packer.flush())
    rows = [{**r, "seq_lengths": r.pop("seq_lens")} for r in table.to_pylist()]
    by_id = {s.trace_id: s for s in seqs}
    alone = [(by_id[t].input_ids.tolist(), by_id[t].labels.tolist()) for r in rows for t in r["trace_ids"]]
    assert [r["prefix_len"] for r in rows] == [35, 35]  # system 12 + task 9 + turn 14, in each row
    return rows, alone


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_tiny_qwen2_rows_sharing_task_and_turns_equal_sequences_alone(attn):
    model = tiny_qwen2(attn)
    rows, alone = planned_rows(VOCAB)
    check_exact(model, rows, alone)


@pytest.mark.slow
def test_smollm2_real_weights_prefix_rows_equal_sequences_alone(models_dir):
    pytest.importorskip("gguf")
    from streamproc.train.trainer import load_model

    from test_train import SMOL

    model = load_model(str(models_dir / SMOL), attn="sdpa").eval()
    # Real text tokens (a real system prompt's ids as the prefix pool) keep the activations realistic.
    from streamproc.prepare.mask import load_tokenizer

    tok = load_tokenizer(str(models_dir / SMOL))
    pool = np.array(tok.encode("You are a helpful agent. Call tools with JSON arguments; think before answering."))
    rows, alone = make_rows([(24, [9, 14, 6]), (0, [11])], model.config.vocab_size, seed=5, pool=pool)
    check_exact(model, rows, alone, atol=2e-4, rtol=2e-4)
    rows, alone = planned_rows(model.config.vocab_size, seed=5, pool=pool)  # prefixes past the system turn
    check_exact(model, rows, alone, atol=2e-4, rtol=2e-4)


# ----------------------------------------------------------------------------- real shards


def pack_real(out, files, tokenizer, seq_len, **kw):
    from streamproc.prepare.job import PackOptions, pack_to_dir
    from streamproc.io.sources import plan

    return pack_to_dir(plan([str(f) for f in files]), out, PackOptions(seq_len=seq_len, tokenizer=str(tokenizer), **kw))


@pytest.fixture(scope="module")
def kimi_shared(tmp_path_factory, real_dir, models_dir) -> str:
    from test_train import KIMI, SMOL

    out = tmp_path_factory.mktemp("kimi-shared")
    pack_real(out, [real_dir / KIMI], models_dir / SMOL, 1024, row_len=4096, share_prefix=True, eval_fraction=0.3)
    return str(out)


def test_shared_rows_hold_the_sequences_of_unshared_packing(tmp_path, kimi_shared, real_dir, models_dir):
    # prefix + remainder is, id for id and label for label, the sequence the masker writes alone.
    from streamproc.prepare.shards import read_manifest, read_shards, sequences
    from test_train import KIMI, SMOL

    plain = tmp_path / "plain"
    pack_real(plain, [real_dir / KIMI], models_dir / SMOL, 1024, eval_fraction=0.3)

    def seqs(d, split):
        return sorted((tid, ids, labels) for row in read_shards(d, split).to_pylist() for tid, ids, labels in sequences(row))

    for split in ("train", "eval"):
        assert seqs(kimi_shared, split) == seqs(plain, split)
    shared, m = read_shards(kimi_shared, "train"), read_manifest(kimi_shared)
    assert m["format"] == "streamproc-packed/2" and m["share_prefix"] and m["row_len"] == 4096
    assert any(p > 0 for p in shared.column("prefix_len").to_pylist())
    c = m["counts"]["train"]
    assert c["tokens"] < c["sequence_tokens"] == read_manifest(plain)["counts"]["train"]["tokens"]
    assert c["prefix_tokens_saved"] == c["sequence_tokens"] - c["tokens"]


def test_train_on_shared_prefix_shards(kimi_shared, models_dir, tmp_path):
    from test_train import SMOL  # noqa: F401  (the tiny model beside SmolLM2's tokenizer)
    from transformers import LlamaConfig
    import shutil

    from streamproc.train.trainer import TrainConfig, train

    d = tmp_path / "tiny"
    LlamaConfig(
        vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=8192, tie_word_embeddings=True,
    ).save_pretrained(d)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(models_dir / "smollm2-135m-instruct-gguf" / f, d / f)
    m = train(TrainConfig(shards=kimi_shared, model=str(d), output=str(tmp_path / "run"), init_random=True,
                          max_steps=2, save_steps=1000, tool_eval_max=0))
    assert m["attn_implementation"] == "sdpa" and m["steps"] == 2
    assert all(np.isfinite(h["loss"]) for h in m["loss_history"])
    assert np.isfinite(m["eval_after"]["loss"])


@pytest.mark.parametrize("name", ["qwen3-tokenizer", "qwen2.5-instruct-tokenizer"])
def test_boundaries_end_whole_untrained_turns_as_transformers_renders_them(name, models_dir, real_rows):
    # Each offset a row may end its prefix at is the tokenization of apply_chat_template of the
    # conversation's first messages, with nothing trained up to the token after it. Qwen3's
    # samples (one per user message) share turns past the task.
    from transformers import AutoTokenizer

    from streamproc.prepare.mask import Masker, MaskOptions
    from streamproc.records import row_from_dict

    tok = AutoTokenizer.from_pretrained(models_dir / name)
    masker = Masker(tok, MaskOptions(max_len=16384))
    past_task = 0
    for d in real_rows:
        row = row_from_dict(d)
        msgs = [m.as_dict() for m in masker.messages(row)]
        heads = {tok.apply_chat_template(msgs[:i], chat_template=masker.template, tokenize=False) for i in range(1, len(msgs))}
        for s in masker.mask(row).seqs:
            ends = s.boundaries.tolist()
            assert ends == sorted(set(ends)) and (s.prefix_len == 0 or ends[0] == s.prefix_len)
            for e in ends:
                assert (s.labels[: e + 1] == IGNORE).all(), f"{row.id}: a trained token in the prefix ending at {e}"
                text = tok.decode(s.input_ids[:e])
                assert text in heads, f"{row.id}: the prefix ending at {e} is not a render of the first messages"
                assert tok(text, add_special_tokens=False)["input_ids"] == s.input_ids[:e].tolist()
            past_task += len(ends) > 2
    assert past_task > 0 or name != "qwen3-tokenizer"


@pytest.mark.slow
def test_longer_prefixes_give_the_same_shards_for_1_and_2_workers(tmp_path, real_row_files, models_dir):
    # Qwen3's own template on the real traces: samples per user message share turns past the task.
    from streamproc.cli import main
    from streamproc.prepare.mask import load_tokenizer
    from streamproc.prepare.shards import read_shards

    qwen3 = models_dir / "qwen3-tokenizer"
    for w in (1, 2):
        args = ["pack", *map(str, real_row_files), "-o", str(tmp_path / f"w{w}"), "--tokenizer", str(qwen3), "--seq-len", "16384",
                "--row-len", "32768", "--share-prefix", "--shard-rows", "4", "--workers", str(w)]
        assert main(args) == 0
    files = sorted(p.name for p in (tmp_path / "w1").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "w2").iterdir()) and any(f.endswith(".arrow") for f in files)
    for f in files:
        assert (tmp_path / "w1" / f).read_bytes() == (tmp_path / "w2" / f).read_bytes(), f
    im_start = load_tokenizer(str(qwen3)).convert_tokens_to_ids("<|im_start|>")
    rows = read_shards(tmp_path / "w1", "train").to_pylist()
    assert any(row["input_ids"][: row["prefix_len"]].count(im_start) > 2 for row in rows)  # system, task and more
