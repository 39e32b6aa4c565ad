"""Curation: features checked by hand on real traces and on sample rows with injected failures;
`streamproc filter` accounting, idempotence, worker independence, dedup, and its output read
back by stats and pack; the --where/--preset/--dedup view of the other commands."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from streamproc.cli import main
from streamproc.analyze.features import features
from streamproc.curate.conditions import PRESETS, ConditionError, conditions_of
from streamproc.curate.curator import Curator
from streamproc.curate.dedup import exact_key, near_key
from streamproc.curate.job import filter_to_file, row_record
from streamproc.curate.stage import ConditionView, CurateStage, DedupView, view
from streamproc.parse.parser import parse_trace
from streamproc.run.runner import Gather, run_jobs
from streamproc.io.sources import SAMPLE, iter_rows, plan


def sample_rows(n: int = 40) -> list[dict]:
    return pq.read_table(SAMPLE).slice(0, n).to_pylist()


def write_jsonl(path: Path, rows: list, bad_lines: dict[int, bytes] | None = None) -> Path:
    lines = [orjson.dumps(r) for r in rows]
    for at, line in sorted((bad_lines or {}).items()):
        lines.insert(at, line)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


# ----------------------------------------------------------------------------- features by hand


def test_features_of_real_traces(real_dir):
    """neurareport_qwen row 2, read by hand: 10 messages, 5 assistant turns, one call to
    `session_get_state`, which the row's 14 declared tools do not include; its response says
    "Tool 'session_get_state' does not exist" (error_text), and nothing succeeds after it; the
    last assistant turn answers."""
    rows = [json.loads(line) for line in (real_dir / "hermes_harness__neurareport_qwen.jsonl").open()]
    f = features(parse_trace(rows[2]))
    assert f["id"] == "e9169b34-f294-5eeb-abbe-5ce9177875a7"
    assert (f["messages"], f["assistant_turns"], f["tool_calls"], f["tool_responses"]) == (10, 5, 1, 1)
    assert (f["distinct_tools"], f["max_parallel_calls"], f["declared_tools"]) == (1, 1, 14)
    assert (f["unknown_tool_calls"], f["missing_arguments"], f["malformed_calls"]) == (1, 0, 0)
    assert (f["failed_responses"], f["failed_error_text"], f["unrecovered_failures"]) == (1, 1, 1)
    assert (f["calls_without_response"], f["responses_without_call"]) == (0, 0)
    assert f["ends_with_answer"] is True
    values = [t["value"] for t in rows[2]["conversations"]]
    assert f["chars"] == sum(map(len, values)) and f["longest_value_chars"] == max(map(len, values))

    # Row 1: a `verify_template` response with status "unknown" (the harness could not tell).
    f = features(parse_trace(rows[1]))
    assert (f["failed_responses"], f["failed_unknown"], f["unknown_tool_calls"]) == (1, 1, 0)

    # kimi row 0: a plain question and answer: no tool, one think block, 22 answer characters.
    kimi = json.loads((real_dir / "hermes_harness__hermeswith_kimi.jsonl").open().readline())
    f = features(parse_trace(kimi))
    assert (f["messages"], f["tool_calls"], f["think_blocks"], f["answer_chars"]) == (3, 0, 1, 22)
    assert f["ends_with_answer"] and f["declared_tools"] == 0


def _call_turns(row: dict) -> list[int]:
    return [i for i, t in enumerate(row["conversations"]) if t["from"] == "gpt" and "<tool_call>" in t["value"]]


def _first_call(row: dict) -> tuple[int, dict]:
    i = _call_turns(row)[0]
    v = row["conversations"][i]["value"]
    body = v[v.index("<tool_call>") + len("<tool_call>") : v.index("</tool_call>")]
    return i, json.loads(body)


def _set_first_call(row: dict, new_body: str) -> None:
    i = _call_turns(row)[0]
    v = row["conversations"][i]["value"]
    a, b = v.index("<tool_call>") + len("<tool_call>"), v.index("</tool_call>")
    row["conversations"][i]["value"] = v[:a] + new_body + v[b:]


@pytest.fixture(scope="module")
def clean_row() -> dict:
    """A sample row that the `clean` preset keeps, with a tool call that has a required argument."""
    for row in sample_rows(300):
        f = features(parse_trace(row))
        tools = {t["function"]["name"]: t["function"] for t in json.loads(row["tools"])}
        if f["tool_calls"] and all(f[k] == 0 for k in ("malformed_calls", "unknown_tool_calls", "missing_arguments", "calls_without_response", "failed_responses")) and f["ends_with_answer"]:
            _, call = _first_call(row)
            if tools[call["name"]]["parameters"].get("required"):
                return row
    pytest.fail("no clean sample row with a required argument")


def injected(clean_row: dict) -> dict[str, dict]:
    """Copies of a clean row, each with one known failure."""
    out = {}
    _, call = _first_call(clean_row)

    r = copy.deepcopy(clean_row)
    _set_first_call(r, '\n{"name": "' + call["name"] + '", "arguments": {"x": 1,}}\n')  # trailing comma: not JSON
    out["no_malformed_calls"] = r

    r = copy.deepcopy(clean_row)
    _set_first_call(r, "\n" + json.dumps({"name": "launch_rocket", "arguments": call["arguments"]}) + "\n")
    out["no_undeclared_tools"] = r

    r = copy.deepcopy(clean_row)
    required = json.loads(r["tools"])
    req = next(t["function"]["parameters"]["required"] for t in required if t["function"]["name"] == call["name"])
    _set_first_call(r, "\n" + json.dumps({"name": call["name"], "arguments": {k: v for k, v in call["arguments"].items() if k not in req}}) + "\n")
    out["no_missing_arguments"] = r

    r = copy.deepcopy(clean_row)  # the conversation stops at the last call: unanswered, no answer
    r["conversations"] = r["conversations"][: _call_turns(r)[-1] + 1]
    out["every_call_answered"] = r

    r = copy.deepcopy(clean_row)  # stops after the last tool response: every call answered, no answer
    r["conversations"] = r["conversations"][: _call_turns(r)[-1] + 2]
    out["ends_with_answer"] = r
    return out


def test_features_of_injected_failures(clean_row):
    base = features(parse_trace(clean_row))
    rows = injected(clean_row)
    f = features(parse_trace(rows["no_malformed_calls"]))
    assert f["malformed_calls"] == base["malformed_calls"] + 1 and f["tool_calls"] == base["tool_calls"]
    f = features(parse_trace(rows["no_undeclared_tools"]))
    assert f["unknown_tool_calls"] == 1 and f["distinct_tools"] >= 1
    f = features(parse_trace(rows["no_missing_arguments"]))
    assert f["missing_arguments"] == 1 and f["unknown_tool_calls"] == 0
    f = features(parse_trace(rows["every_call_answered"]))
    assert f["calls_without_response"] >= 1 and not f["ends_with_answer"]
    f = features(parse_trace(rows["ends_with_answer"]))
    assert not f["ends_with_answer"] and f["calls_without_response"] == 0 and rows["ends_with_answer"]["conversations"][-1]["from"] == "tool"


def test_unrecovered_failures_counts_failures_no_later_success_repairs():
    def resp(name: str, content) -> dict:
        return {"from": "tool", "value": "<tool_response>\n" + json.dumps({"tool_call_id": None, "name": name, "content": content}) + "\n</tool_response>"}

    def call(name: str) -> dict:
        return {"from": "gpt", "value": "<think>\nx\n</think>\n<tool_call>\n" + json.dumps({"name": name, "arguments": {}}) + "\n</tool_call>"}

    bad, ok = {"exit_code": 1, "output": "boom"}, {"exit_code": 0, "output": "fine"}
    convo = [{"from": "human", "value": "go"}]
    # terminal fails, terminal succeeds (recovers it), web fails, terminal fails (nothing after): 2 unrecovered.
    for name, content in [("terminal", bad), ("terminal", ok), ("web", bad), ("terminal", bad)]:
        convo += [call(name), resp(name, content)]
    convo.append({"from": "gpt", "value": "<think>\n</think>\ndone"})
    f = features(parse_trace({"id": "u", "conversations": convo}))
    assert (f["failed_responses"], f["failed_exit_code"], f["unrecovered_failures"]) == (3, 3, 2)
    assert (f["empty_think_blocks"], f["think_blocks"], f["answer_chars"]) == (1, 5, 4)


# ----------------------------------------------------------------------------- conditions


def test_presets_remove_each_injected_failure_by_its_condition(tmp_path, clean_row):
    rows = injected(clean_row)
    src = write_jsonl(tmp_path / "in.jsonl", [clean_row, *rows.values()])
    curator = Curator(PRESETS["clean"])
    doc, _ = filter_to_file(plan([src]), str(tmp_path / "out.jsonl"), curator, removed=str(tmp_path / "gone.jsonl"))
    assert doc["kept"] == 1 and doc["read"] == 6
    gone = read_jsonl(tmp_path / "gone.jsonl")
    assert [g["removed_reason"] for g in gone] == list(rows)
    assert all(doc["removed_by"][name] == 1 for name in rows)
    assert read_jsonl(tmp_path / "out.jsonl")[0]["id"] == clean_row["id"]


def test_a_bad_condition_fails_before_any_data_is_read(tmp_path, capsys):
    missing = str(tmp_path / "nowhere.parquet")
    assert main(["filter", missing, "-o", str(tmp_path / "o.jsonl"), "--where", "tool_callz > 2"]) == 2
    err = capsys.readouterr().err
    assert 'column "tool_callz" not found' in err and "valid columns: id (text)" in err and "nowhere" not in err
    assert main(["stats", missing, "--where", "chars + 1"]) == 2
    assert "not a true/false condition" in capsys.readouterr().err
    assert main(["pack", missing, "-o", str(tmp_path / "p"), "--where", "chars >"]) == 2
    assert "syntax error" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    with pytest.raises(ConditionError, match="tokens"):
        Curator(conditions_of("tokens > 10", None))  # token columns need --tokenizer
    Curator(conditions_of("tokens > 10", None), tokens=True)


# ----------------------------------------------------------------------------- the filter pass


@st.composite
def datasets(draw):
    """Sample rows, repeated (exact duplicates) or lightly edited, with broken lines among them."""
    pool = sample_rows(25)
    picks = draw(st.lists(st.integers(0, len(pool) - 1), min_size=0, max_size=30))
    rows = []
    for k in picks:
        r = copy.deepcopy(pool[k])
        if draw(st.booleans()):
            r["conversations"][-1]["value"] += draw(st.sampled_from([" ", "  \n", " Thanks!"]))
        rows.append(r)
    bad = draw(st.dictionaries(st.integers(0, len(rows)), st.sampled_from([b"{broken", b'{"id": 1}', b"[]"]), max_size=3))
    return rows, bad


SETTINGS = dict(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@settings(**SETTINGS)
@given(data=datasets(), where=st.sampled_from(["tool_calls > 3", "failed_responses = 0 OR answer_chars > 100", "true"]),
       preset=st.sampled_from([None, "clean", "strict"]), dedup=st.sampled_from([None, "exact", "near"]))
def test_accounting_adds_up_and_filtering_twice_changes_nothing(tmp_path_factory, data, where, preset, dedup):
    rows, bad = data
    d = tmp_path_factory.mktemp("acct")
    src = write_jsonl(d / "in.jsonl", rows, bad)
    doc, tally = filter_to_file(plan([src]), str(d / "once.jsonl"), Curator(conditions_of(where, preset), dedup), removed=str(d / "gone.jsonl"))
    assert doc["read"] == doc["kept"] + doc["removed"] + doc["rejected"] == len(rows) + len(bad)
    assert doc["rejected"] == len(bad) == len(tally.rejected)
    assert len(read_jsonl(d / "gone.jsonl")) == doc["removed"]
    again, _ = filter_to_file(plan([d / "once.jsonl"]), str(d / "twice.jsonl"), Curator(conditions_of(where, preset), dedup))
    assert again["kept"] == again["read"] == doc["kept"] and again["removed"] == 0
    assert read_jsonl(d / "twice.jsonl") == read_jsonl(d / "once.jsonl")
    # The view other commands' runs are given (conditions decided in the pass, or rows removed by
    # a first pass for dedup), in small splits: exactly the kept rows, and the same account.
    splits = plan([src], shard_bytes=3000)
    v = view(splits, Curator(conditions_of(where, preset), dedup))
    job = Gather(CurateStage(keep_rows=True))
    run_jobs(splits, [job], view=v)
    assert [r.id for p in job.partials for r in p.rows] == [r["id"] for r in read_jsonl(d / "once.jsonl")]
    assert job.tally.read == doc["kept"] + doc["rejected"] and len(job.tally.rejected) == doc["rejected"]
    assert {k: v for k, v in v.acct.to_json().items()} == {k: doc[k] for k in v.acct.to_json()}


def test_kept_rows_are_unchanged_with_extra_columns(tmp_path):
    rows = sample_rows(10)
    for i, r in enumerate(rows):
        r["quality_score"] = i / 10
        r["meta"] = {"annotator": f"a{i}"}
    src = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)
    for out in ("k.parquet", "k.jsonl", "k.jsonl.zst"):
        assert main(["filter", str(src), "-o", str(tmp_path / out), "--where", "true", "--workers", "1"]) == 0
        if out.endswith(".parquet"):
            back = pq.read_table(tmp_path / out).to_pylist()
        else:
            back = [row_record(r) for r in iter_rows([tmp_path / out])]
        assert back == rows
    summary = json.loads((tmp_path / "k.parquet.summary.json").read_text())
    assert summary["kept"] == summary["read"] == 10


def test_same_output_for_one_and_two_workers(tmp_path):
    rows = sample_rows(60)
    near = copy.deepcopy(rows[3])
    near["id"] = "near-copy"
    near["conversations"][-1]["value"] += " One more sentence at the end."
    exact = copy.deepcopy(rows[5])
    exact["id"] = "exact-copy"
    exact["conversations"][1]["value"] = "  " + exact["conversations"][1]["value"].replace(" ", "   ") + "\n"
    src = write_jsonl(tmp_path / "in.jsonl", rows + [near, exact], {30: b"{oops"})
    shards = plan([src], shard_bytes=200_000)
    assert len(shards) > 3
    outs = {}
    for dedup in ("exact", "near"):
        for workers in (1, 2):
            out = tmp_path / f"{dedup}{workers}.parquet"
            doc, _ = filter_to_file(shards, str(out), Curator(conditions_of("tool_calls >= 1", None), dedup), workers=workers, removed=str(tmp_path / f"{dedup}{workers}.gone.jsonl"))
            doc.pop("output"), doc.pop("removed_rows"), doc["dedup"].pop("index_bytes"), doc["dedup"].pop("index_mib_per_million_rows")
            outs[dedup, workers] = (out.read_bytes(), (tmp_path / f"{dedup}{workers}.gone.jsonl").read_bytes(), doc)
        assert outs[dedup, 1] == outs[dedup, 2]
    gone_exact = read_jsonl(tmp_path / "exact1.gone.jsonl")
    assert [g["id"] for g in gone_exact if g["removed_reason"].startswith("dedup_exact")] == ["exact-copy"]
    gone_near = read_jsonl(tmp_path / "near1.gone.jsonl")
    assert {"near-copy", "exact-copy"} <= {g["id"] for g in gone_near if g["removed_reason"].startswith("dedup_near")}


def test_dedup_keys():
    rows = sample_rows(2)
    a = parse_trace(rows[0])
    spaced = copy.deepcopy(rows[0])
    spaced["conversations"][0]["value"] = " \n" + spaced["conversations"][0]["value"].replace(" ", "\t ")
    assert exact_key(parse_trace(spaced)) == exact_key(a) != exact_key(parse_trace(rows[1]))
    assert (near_key(a) == near_key(parse_trace(rows[0]))).all()
    assert near_key(a).shape == (128,)


# ----------------------------------------------------------------------------- read back; the view


def test_filtered_file_read_back_by_stats_and_pack_and_the_view_matches(tmp_path, clean_row):
    rows = sample_rows(30) + list(injected(clean_row).values())
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    kept = tmp_path / "kept.parquet"
    assert main(["filter", str(src), "-o", str(kept), "--preset", "clean", "--workers", "1"]) == 0
    summary = json.loads((tmp_path / "kept.parquet.summary.json").read_text())
    assert summary["kept"] == 30 and summary["removed"] == 5

    assert main(["stats", str(kept), "--workers", "1", "--json", str(tmp_path / "a.json")]) == 0
    assert main(["stats", str(src), "--preset", "clean", "--workers", "1", "--json", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert a["traces"] == 30
    # The same figures either way; `source` differs only by name (the filter writes the input's label).
    assert {k: v for k, v in a.items() if k != "by_source"} == {k: v for k, v in b.items() if k != "by_source"}

    assert main(["pack", str(kept), "-o", str(tmp_path / "p1"), "--workers", "1", "--seq-len", "4096"]) == 0
    assert main(["pack", str(src), "--preset", "clean", "-o", str(tmp_path / "p2"), "--workers", "1", "--seq-len", "4096"]) == 0
    m1, m2 = (json.loads((tmp_path / p / "manifest.json").read_text()) for p in ("p1", "p2"))
    c = m1["counts"]["train"]
    assert c["traces"] + c["dropped"] == 30 and c["traces"] > 0  # dropped: a system prompt longer than 4096 leaves no room
    assert m2["counts"] == m1["counts"]


def test_a_view_of_conditions_reads_the_input_once_and_dedup_twice(tmp_path, clean_row):
    """Conditions are decided in the command's own pass (the view given to the run): nothing is
    read before it. Dedup needs input order, so its decisions come from a first pass. Both views
    give the same kept rows and account as `filter`; the splits carry neither."""
    from streamproc.analyze.job import StatsJob

    rows = sample_rows(30) + list(injected(clean_row).values())
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    splits = plan([src], shard_bytes=50_000)
    before = [s.key() for s in splits]
    gated = view(splits, Curator(PRESETS["clean"]), workers=2)
    assert isinstance(gated, ConditionView) and gated.acct.read == 0  # nothing read yet
    job = StatsJob()
    run_jobs(splits, [job], view=gated, workers=2)
    acct, tally = gated.acct, job.tally
    assert (acct.read, acct.kept, acct.removed, tally.read) == (35, 30, 5, 30) and tally.parsed == 30

    deduped = view(splits, Curator(PRESETS["clean"], "exact"), workers=2)
    acct2 = deduped.acct
    assert isinstance(deduped, DedupView) and acct2.read == 35 and sum(map(len, deduped.removed)) == acct2.removed
    job = StatsJob()
    run_jobs(splits, [job], view=deduped, workers=1)
    assert job.tally.parsed == acct2.kept
    assert [s.key() for s in splits] == before
    summary, _ = filter_to_file(splits, str(tmp_path / "kept.parquet"), Curator(PRESETS["clean"], "exact"), workers=2)
    assert (summary["kept"], summary["removed"]) == (acct2.kept, acct2.removed)


def test_split_keys_are_the_same_in_every_process(tmp_path):
    """A pack run's plan is made of Split.key() and the view's definition (not a repr): stable
    across processes (hash seeds), so an interrupted pack of a view resumes."""
    import subprocess
    import sys

    code = (
        "from streamproc.io.sources import SAMPLE, plan; from streamproc.curate.curator import Curator; from streamproc.curate.conditions import PRESETS; from streamproc.curate.stage import view; "
        "from streamproc.run.runner import plan_key; s = plan([SAMPLE]); print(plan_key(s, view(s, Curator(PRESETS['strict'], 'exact'))) + plan_key(s, view(s, Curator(PRESETS['agentic']))))"
    )
    root = str(Path(__file__).resolve().parents[1])
    keys = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": seed, "PYTHONPATH": root, "PATH": "/usr/bin:/bin"}).stdout
        for seed in ("1", "2")
    }
    assert len(keys) == 1
    key = keys.pop()
    assert '"dedup":"exact","threshold":0.8' in key and key.count('"where":[') == 2 and " at 0x" not in key


def test_features_command(tmp_path, real_row_files):
    out = tmp_path / "f.parquet"
    assert main(["features", *map(str, real_row_files), "-o", str(out), "--workers", "1", "--tokenizer"]) == 0
    t = pq.read_table(out)
    assert t.num_rows == 55 and {"tokens", "trained_tokens", "system_prompt_tokens", "unrecovered_failures"} <= set(t.column_names)
    d = t.to_pylist()
    assert all(0 < r["system_prompt_tokens"] < r["tokens"] and 0 < r["trained_tokens"] < r["tokens"] for r in d)


def test_docs_define_every_feature_and_preset():
    from streamproc.analyze.features import FEATURES, TOKEN_FEATURES

    doc = (Path(__file__).resolve().parents[1] / "docs" / "curate.md").read_text()
    for name, _, definition in FEATURES + TOKEN_FEATURES:
        assert f"| `{name}` |" in doc and definition in doc, name
    for name, conds in PRESETS.items():
        assert f"**{name}**" in doc and "\nAND ".join(c.sql for c in conds) in doc, name


def test_bench_section_runs(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", sample_rows(20))
    assert main(["bench", "--quick", "--section", "filter", str(src), "--json", str(tmp_path / "b.json")]) == 0
    got = {r["name"]: r for r in json.loads((tmp_path / "b.json").read_text())}
    assert got["filter --preset clean"]["baseline"] == "stats pass (parse + aggregate)" and got["filter --preset clean"]["value"] > 0
    assert got["near-dedup index"]["unit"] == "GiB per million rows" and got["near-dedup index"]["value"] > 0


def test_every_preset_has_its_help_and_its_conditions():
    from streamproc.curate.conditions import PRESETS
    from streamproc.curate.options import PRESET_HELP

    assert list(PRESET_HELP) == list(PRESETS)


def planted_near_copies(n: int, seed: int = 7) -> list[dict]:
    """n rows: originals of 40 to 80 words from a 3,000-word vocabulary, and copies of earlier
    rows with 0 to 8 words changed (Jaccard of their shingles from 1 down to under 0.5, across
    the threshold), some copies of copies."""
    import random

    rnd = random.Random(seed)
    vocab = [f"w{i}" for i in range(3000)]
    texts: list[list[str]] = []
    for _ in range(n):
        if texts and rnd.random() < 0.4:
            words = list(rnd.choice(texts[-500:]))
            for _ in range(rnd.choice((0, 1, 1, 2, 2, 3, 4, 8))):
                words[rnd.randrange(len(words))] = rnd.choice(vocab)
        else:
            words = rnd.choices(vocab, k=rnd.randint(40, 80))
        texts.append(words)
    return [{"conversations": [{"from": "human", "value": " ".join(w[:10])}, {"from": "gpt", "value": " ".join(w[10:])}]} for w in texts]


def test_near_index_removes_the_same_rows_as_datasketch_lsh():
    """10,000 rows with planted near-copies: the compact index removes exactly the rows
    datasketch's MinHashLSH removes, naming the same earlier row, and holds at most 0.4 GiB per
    million rows."""
    from datasketch import MinHash, MinHashLSH

    from streamproc.curate.dedup import MINHASH_SCHEME, NUM_PERM, NearIndex, _permutations

    signatures = [near_key(parse_trace(r)) for r in planted_near_copies(10_000)]
    for threshold in (0.8, 0.5):
        lsh, index = MinHashLSH(threshold=threshold, num_perm=NUM_PERM), NearIndex(threshold)
        want, got = [], []
        for position, sig in enumerate(signatures):
            m = MinHash(num_perm=NUM_PERM, seed=1, hashvalues=sig, permutations=_permutations(NUM_PERM), scheme=MINHASH_SCHEME)
            found = lsh.query(m)
            want.append(min(found) if found else None)
            if not found:
                lsh.insert(position, m, check_duplication=False)
            got.append(index.first_similar(sig, position))
        assert got == want
        removed = sum(g is not None for g in got)
        assert 1_000 < removed < 3_800, removed  # many of the ~4,000 copies, not all: the copies cross the threshold
        kept = len(signatures) - removed
        assert index.nbytes() / kept * 1e6 <= 0.4 * 2**30


def test_curator_near_dedup_reports_the_earlier_row():
    rows = [{"conversations": r["conversations"], "id": str(i)} for i, r in enumerate(planted_near_copies(300, seed=3))]
    c = Curator((), "near")
    keys = [near_key(parse_trace(r)) for r in rows]
    reasons = c.decide(pa.table({"id": [r["id"] for r in rows]}), keys)
    index = __import__("streamproc.curate.dedup", fromlist=["NearIndex"]).NearIndex(0.8)
    assert reasons == [None if (p := index.first_similar(k, i)) is None else f"dedup_near (similar to good row {p} of the input, counted from 0)" for i, k in enumerate(keys)]
    assert c.summary()["dedup"]["index_bytes"] > 0
