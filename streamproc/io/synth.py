"""Seeded synthetic traces in the exact layout of lambda/hermes-agent-reasoning-traces (FORMAT.md).

Every row is a pure function of (seed, row index): the same rows come out for any output format
or size, and files of any size stream out in constant memory. Speed comes from pools built once
per process (tool lists and system prompts per toolset, a corpus that tool outputs are sliced
from), so a row is assembled from ready pieces.

Turn and call counts follow the dataset card per config; `both` interleaves the configs in the
card's proportion (kimi 7,646 : glm-5.1 7,055), so every row group holds both.
"""

from __future__ import annotations

import functools
import json
import os
import random
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import orjson

from streamproc.io.files import atomic_path, jsonl_writer, output_format

DATA = Path(__file__).parents[1] / "data"


@dataclass(slots=True, frozen=True)
class Profile:
    """One config's totals from the dataset card; the generator aims at their per-row means."""

    rows: int
    turns: int
    calls: int
    kimi_spacing: bool  # kimi: one space opens reasoning, one or two open the text after it

    @property
    def rounds(self) -> float:
        """Mean assistant turns with tool calls: messages = system + human + answer + 2 per round."""
        return (self.turns / self.rows - 3 - 2 * FOLLOWUP) / 2

    @property
    def parallel(self) -> float:
        """Share of call turns with 2-4 calls that gives the card's calls per row."""
        return (self.calls / self.rows / self.rounds - 1) / (_MEAN_PARALLEL - 1)


FOLLOWUP = 0.08  # rows where the user asks again after an answer (two more messages)
FAIL = 0.15  # per call; gives the card's "81% of trajectories include a tool failure" (kimi)
UNKNOWN = 0.004  # responses whose name the harness could not match, written as `unknown`
LONG = 0.02  # tool outputs of tens of KB
RARE_LINE = 0.0007  # tool-output lines ending in a Chinese word, a symbol or an emoji (see _corpus)
EMPTY_THINK = 0.05
TEXT = 0.3  # call turns with text between the reasoning and the calls
MAX_MESSAGES = 54
_PARALLEL = ((2, 3, 4), (0.6, 0.25, 0.15))
_MEAN_PARALLEL = sum(n * w for n, w in zip(*_PARALLEL))

PROFILES = {
    "kimi": Profile(7_646, 185_798, 106_222, kimi_spacing=True),
    "glm-5.1": Profile(7_055, 134_918, 68_328, kimi_spacing=False),
}
CONFIG_CHOICES = (*PROFILES, "both")


def configs_of(choice: str) -> tuple[str, ...]:
    return tuple(PROFILES) if choice == "both" else (choice,)


def _dumps(obj: Any) -> str:
    # The harness writes json.dumps(ensure_ascii=False): ", " and ": " separators, raw non-ASCII.
    return json.dumps(obj, ensure_ascii=False)


# ----------------------------------------------------------------------------- pools


@dataclass(slots=True, frozen=True)
class _Pools:
    pieces: dict[str, Any]
    tools: dict[str, str]  # toolset -> `tools` column
    prompts: dict[str, str]  # toolset -> system prompt
    corpus: str
    line_starts: list[int]
    categories: list[tuple[str, str, str, list[str]]]  # (category, subcategory, toolset, tasks)


@functools.cache
def _pools() -> _Pools:
    prompt = json.loads((DATA / "hermes_prompt.json").read_text(encoding="utf-8"))
    pieces = json.loads((DATA / "synth_pieces.json").read_text(encoding="utf-8"))
    defs = {t["function"]["name"]: t for t in prompt["tools"] + pieces["browser_tools"]}
    tools = {name: _dumps([defs[n] for n in sorted(names)]) for name, names in pieces["toolsets"].items()}
    prompts = {name: prompt["prefix"] + t + prompt["suffix"] for name, t in tools.items()}
    corpus, starts = _corpus(pieces["corpus"])
    cats = [
        (cat, sub, spec["toolset"], tasks)
        for cat, spec in pieces["categories"].items()
        for sub, tasks in spec["subcategories"].items()
    ]
    return _Pools(pieces, tools, prompts, corpus, starts, cats)


def _corpus(spec: dict, lines: int = 60_000) -> tuple[str, list[int]]:
    """Tool-output lines (listings, logs, code, test results), made once from a fixed seed.

    Outputs are slices of it at random offsets: a few MB, so Parquet pages rarely repeat each
    other and compress about as well as real terminal text.

    Non-ASCII is rare in real tool output: in the real hermes traces in ../shared about 2.5% of
    tool messages hold any non-ASCII character and none an emoji (FORMAT.md: Chinese and emoji
    do occur). So a share RARE_LINE of the lines ends with a word from `rare` (Chinese, a
    symbol, an emoji): about 2.5% of tool messages then hold one, under 1% an emoji. Density
    matters beyond looks: one emoji makes Python store a whole message 4 bytes per character.
    """
    r = random.Random(0)
    words, rare, dirs, exts = spec["words"], spec["rare"], spec["dirs"], spec["exts"]

    def name() -> str:
        return f"{r.choice(dirs)}/{r.choice(words)}_{r.choice(words)}.{r.choice(exts)}"

    kinds = [
        lambda: f"-rw-rw-r--  1 ubuntu ubuntu {r.randint(0, 99999):6d} Mar {r.randint(1, 31):2d} {r.randint(0, 23):02d}:{r.randint(0, 59):02d} {name()}",
        lambda: f"2025-03-{r.randint(1, 28):02d} {r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d} "
        f"{r.choice(('INFO', 'DEBUG', 'WARN', 'ERROR'))} {' '.join(r.choices(words, k=r.randint(3, 12)))}",
        lambda: "    " * r.randint(0, 3) + f"{r.choice(('def', 'return', 'if', 'self.', 'import'))} "
        f"{'_'.join(r.choices(words, k=3))}({', '.join(r.choices(words, k=r.randint(0, 3)))})",
        lambda: f"{name()}::test_{r.choice(words)}_{r.randint(0, 99)} {r.choice(('PASSED', 'PASSED', 'PASSED', 'FAILED'))}",
        lambda: f"{name()}:{r.randint(1, 900)}: {' '.join(r.choices(words, k=r.randint(2, 8)))}",
        lambda: f"{r.getrandbits(64):016x} {' '.join(r.choices(words, k=r.randint(1, 6)))}",
    ]
    text = [r.choice(kinds)() for _ in range(lines)]
    for i in range(lines):
        if r.random() < RARE_LINE:
            text[i] += " " + r.choice(rare)
    starts, pos = [], 0
    for t in text:
        starts.append(pos)
        pos += len(t) + 1
    return "\n".join(text) + "\n", starts


# ----------------------------------------------------------------------------- rows


def rows(n: int, seed: int = 0, configs: Sequence[str] = tuple(PROFILES), start: int = 0, layout: str = "sharegpt") -> Iterator[dict]:
    """Rows start..start+n-1 as dataset records (id, conversations, tools, category,
    subcategory, task, source), or with `layout="openai"` the same traces in the chat messages
    layout (io/layouts.openai_record)."""
    if layout == "openai":
        from streamproc.io.layouts import openai_record
        from streamproc.parse.parser import parse_trace

        for rec in rows(n, seed, configs, start):
            yield openai_record(parse_trace(rec))
        return
    for i in range(start, start + n):
        yield row(seed, i, _config_at(i, configs))


def _config_at(i: int, configs: Sequence[str]) -> str:
    # A golden-ratio (Weyl) sequence spreads the configs evenly in proportion to their rows,
    # and depends on i alone, so any slice of rows can be made on its own.
    u = (i * 0.6180339887498949) % 1.0
    total = sum(PROFILES[c].rows for c in configs)
    for c in configs:
        u -= PROFILES[c].rows / total
        if u < 0:
            return c
    return configs[-1]


def row(seed: int, index: int, config: str) -> dict:
    """One synthetic row: a pure function of its arguments."""
    return _Row(random.Random(f"{seed}:{config}:{index}"), config, _pools()).build()


class _Row:
    """Builds one conversation; holds the running call counter the call ids need."""

    def __init__(self, r: random.Random, config: str, pools: _Pools):
        self.r, self.config, self.p, self.profile = r, config, pools, PROFILES[config]
        self.n_calls = 0

    def build(self) -> dict:
        r, p, prof = self.r, self.p, self.profile
        cat, sub, toolset, tasks = r.choice(p.categories)
        self.fill = {k: r.choice(v) for k, v in p.pieces["fill"].items()}
        self.tool_names, self.weights = self._tool_weights(cat, toolset)
        task = r.choice(tasks).format(**self.fill)[:100]
        human = task if r.random() < 0.6 else f"{task} {r.choice(p.pieces['human_extra'])}"
        self.fill["goal"] = task[0].lower() + task[1:]

        # Rounds of (assistant call turn, tool turn), 1..25, mean from the card.
        m = (prof.rounds - 1) / 24
        k = 1 + round(24 * r.betavariate(2.0, 2.0 * (1 - m) / m))
        # A follow-up (answer, new human turn) goes between two rounds: 5 + 2k messages at most.
        follow = r.random() < FOLLOWUP and 2 <= k <= (MAX_MESSAGES - 5) // 2
        split = r.randint(1, k - 1) if follow else k

        conv = [("system", p.prompts[toolset]), ("human", human)]
        for j in range(k):
            if j == split:
                conv += [("gpt", self._answer()), ("human", r.choice(p.pieces["followup"]))]
            calls = self._calls()
            conv.append(("gpt", self._call_turn(calls)))
            conv.append(("tool", "\n".join(self._response(name) for name, _ in calls)))
        conv.append(("gpt", self._answer()))
        return {
            "id": str(uuid.UUID(int=r.getrandbits(128), version=4)),
            "conversations": [{"from": f, "value": v} for f, v in conv],
            "tools": p.tools[toolset],
            "category": cat,
            "subcategory": sub,
            "task": task,
            "source": self.config,
        }

    def _tool_weights(self, cat: str, toolset: str) -> tuple[list[str], list[float]]:
        pieces = self.p.pieces
        focus = set(pieces["categories"][cat]["focus"])
        names = pieces["toolsets"][toolset]
        return names, [pieces["call_weights"][n] * (30 if n in focus else 1) for n in names]

    # -- assistant turns

    def _think(self) -> str:
        r, pieces = self.r, self.p.pieces
        lead = " " if self.profile.kimi_spacing else ""
        if r.random() < EMPTY_THINK:
            return "<think>\n</think>\n"
        sents = [s.format(tool=r.choice(self.tool_names), **self.fill) for s in r.sample(pieces["reasoning"], r.randint(1, 5))]
        body = " ".join(sents)
        if r.random() < 0.25:
            steps = r.sample(pieces["plan_items"], r.randint(2, 4))
            body += "\n\nPlan:\n" + "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1))
        return f"<think>\n{lead}{body}\n</think>\n"

    def _text_lead(self) -> str:
        return self.r.choice((" ", " ", "  ")) if self.profile.kimi_spacing else ""

    def _calls(self) -> list[tuple[str, dict]]:
        r = self.r
        n = r.choices(*_PARALLEL)[0] if r.random() < self.profile.parallel else 1
        return [(name, self._arguments(name)) for name in r.choices(self.tool_names, self.weights, k=n)]

    def _call_turn(self, calls: list[tuple[str, dict]]) -> str:
        text = ""
        if self.r.random() < TEXT:
            text = f"{self._text_lead()}{self.r.choice(self.p.pieces['text'])}\n"
        body = "\n".join(f"<tool_call>\n{_dumps({'name': n, 'arguments': a})}\n</tool_call>" for n, a in calls)
        return (self._think() + text + body).rstrip()

    def _answer(self) -> str:
        answer = self.r.choice(self.p.pieces["answer"]).format(**self.fill)
        return (self._think() + self._text_lead() + answer).strip()

    def _arguments(self, name: str) -> dict:
        r = self.r
        # Half the calls stay on the task's own path and subject, half wander.
        f = self.fill if r.random() < 0.5 else {k: r.choice(v) for k, v in self.p.pieces["fill"].items()} | {"goal": self.fill["goal"]}
        if name == "terminal":
            cmd = r.choice((f["command"], f"ls -la {f['path'].rsplit('/', 1)[0]}", f"grep -rn \"{f['thing2']}\" . | head -50", f"cat {f['path']}"))
            return {"command": cmd} if r.random() < 0.8 else {"command": cmd, "timeout": 300}
        if name == "read_file":
            return {"path": f["path"], "offset": r.choice((1, 1, 200, 500)), "limit": 500}
        if name == "write_file":
            return {"path": f["path"], "content": self._output(r.randint(5, 80))}
        if name == "patch":
            return {"mode": "replace", "path": f["path"], "old_string": self._output(2), "new_string": self._output(3)}
        if name == "search_files":
            return {"pattern": f["thing2"], "target": r.choice(("content", "files")), "path": "."}
        if name == "process":
            return {"action": r.choice(("poll", "log", "wait", "kill")), "session_id": f"proc_{r.getrandbits(32):08x}"}
        if name == "todo":
            items = r.sample(self.p.pieces["plan_items"], 3)
            return {"todos": [{"id": str(i), "content": c, "status": r.choice(("pending", "in_progress", "completed"))} for i, c in enumerate(items, 1)]}
        if name == "execute_code":
            return {"code": f"from hermes_tools import terminal\nprint(terminal({f['command']!r})['output'][:500])"}
        if name == "browser_navigate":
            return {"url": f["url"]}
        if name in ("browser_click", "browser_type"):
            ref = {"ref": f"@e{r.randint(1, 60)}"}
            return ref | {"text": f["thing"]} if name == "browser_type" else ref
        if name == "browser_scroll":
            return {"direction": r.choice(("down", "up"))}
        if name == "browser_press":
            return {"key": r.choice(("Enter", "Tab", "Escape"))}
        if name == "browser_vision":
            return {"question": f"Is {f['thing']} visible on the page?"}
        if name in ("session_search", "skills_list", "skill_view", "skill_manage", "memory", "clarify", "delegate_task"):
            return {
                "session_search": {"query": f["thing"]},
                "skills_list": {},
                "skill_view": {"name": "git-workflows"},
                "skill_manage": {"action": "create", "name": "deploy-staging", "content": self._output(10)},
                "memory": {"action": "add", "target": "memory", "content": f"User prefers {f['thing']} 👍"},
                "clarify": {"question": f"Which {f['thing']} do you mean?", "choices": ["the old one", "the new one"]},
                "delegate_task": {"goal": self.fill["goal"], "context": f"Project files live under {f['path']}"},
            }[name]
        return {}

    # -- tool turns

    def _output(self, lines: int) -> str:
        starts = self.p.line_starts
        a = self.r.randrange(len(starts) - lines - 1)
        return self.p.corpus[starts[a] : starts[a + lines] - 1]

    def _output_lines(self) -> int:
        if self.r.random() < LONG:
            return self.r.randint(250, 900)  # 15-60 KB
        return min(400, int(self.r.lognormvariate(2.8, 1.2)) + 1)

    def _response(self, name: str) -> str:
        n = self.n_calls
        self.n_calls += 1
        content = self._content(name, self.r.random() < FAIL)
        shown = "unknown" if self.r.random() < UNKNOWN else name
        return f"<tool_response>\n{_dumps({'tool_call_id': f'functions.{name}:{n}', 'name': shown, 'content': content})}\n</tool_response>"

    def _content(self, name: str, fail: bool) -> Any:
        r = self.r
        err = r.choice(self.p.pieces["errors"]).replace("{n}", str(r.randint(1, 60)))
        if name in ("terminal", "process"):
            if fail:
                code = r.choice((1, 2, 124, 127, 137))
                return {"output": self._output(r.randint(0, 15)) + f"\n{err}", "exit_code": code, "error": err if code == 124 else None}
            return {"output": self._output(self._output_lines()), "exit_code": 0, "error": None}
        if name == "execute_code" and fail:
            return f'Traceback (most recent call last):\n  File "<string>", line {r.randint(1, 40)}, in <module>\n{err}'
        if name.startswith("browser_") or name in ("execute_code", "delegate_task"):
            return f"Error: {err}" if fail else self._output(self._output_lines())  # these return plain text
        if fail:
            return {"success": False, "error": err} if r.random() < 0.7 else {"error": err}
        if name == "read_file":
            n = self._output_lines()
            return {"content": self._output(n), "total_lines": n + r.randint(0, 2000), "truncated": r.random() < 0.3}
        if name == "search_files":
            return {"total_count": r.randint(0, 120), "matches": self._output(min(50, self._output_lines())).split("\n")}
        if name == "write_file":
            return {"bytes_written": r.randint(40, 20000), "dirs_created": r.random() < 0.2}
        return {"success": True, "result": self._output(r.randint(1, 12))}


# ----------------------------------------------------------------------------- files


def write(
    path: str | os.PathLike,
    n: int,
    *,
    seed: int = 0,
    configs: Sequence[str] = tuple(PROFILES),
    row_group: int = 128,
    on_rows: Callable[[int], None] | None = None,
    layout: str = "sharegpt",
) -> int:
    """Write n rows to Parquet (zstd, `row_group` rows per group) or JSONL (.gz/.zst by
    extension), atomically, in the dataset's layout or (`layout="openai"`) the chat messages
    layout. Returns the number of bytes written. `on_rows(k)` is told of every k rows written
    (a progress bar)."""
    path = Path(path)
    if n < 0 or row_group < 1:
        raise ValueError(f"rows must be >= 0 and row_group >= 1 (got {n}, {row_group})")
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    fmt = output_format(path)
    with atomic_path(path) as tmp:
        if fmt.kind == "parquet" and layout == "openai":
            _write_openai_parquet(tmp, n, seed, configs, row_group, on_rows or _ignore)
        elif fmt.kind == "parquet":
            _write_parquet(tmp, n, seed, configs, row_group, on_rows or _ignore)
        else:
            with jsonl_writer(tmp, fmt.compression) as f:
                for i, rec in enumerate(rows(n, seed, configs, layout=layout), 1):
                    f.write(orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE))
                    if on_rows and (i % 256 == 0 or i == n):
                        on_rows(256 if i % 256 == 0 else i % 256)
    return path.stat().st_size


SCHEMA_FIELDS = ("id", "conversations", "tools", "category", "subcategory", "task", "source")
LAYOUTS = ("sharegpt", "openai")


def _ignore(k: int) -> None:
    pass


def _write_parquet(tmp: Path, n: int, seed: int, configs: Sequence[str], row_group: int, on_rows: Callable[[int], None]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    s = pa.string()
    schema = pa.schema(
        [("id", s), ("conversations", pa.list_(pa.struct([("from", s), ("value", s)])))]
        + [(f, s) for f in SCHEMA_FIELDS[2:]]
    )
    # Long unique values gain nothing from dictionaries; the few distinct labels do.
    with pq.ParquetWriter(
        tmp, schema, compression="zstd", use_dictionary=["tools", "category", "subcategory", "source"]
    ) as w:
        for start in range(0, n, row_group):
            batch = list(rows(min(row_group, n - start), seed, configs, start))
            froms, values, offsets = [], [], [0]
            for rec in batch:
                for t in rec["conversations"]:
                    froms.append(t["from"])
                    values.append(t["value"])
                offsets.append(len(froms))
            conv = pa.ListArray.from_arrays(
                pa.array(offsets, pa.int32()),
                pa.StructArray.from_arrays([pa.array(froms, s), pa.array(values, s)], names=["from", "value"]),
            )
            cols = [pa.array([rec["id"] for rec in batch], s), conv]
            cols += [pa.array([rec[f] for rec in batch], s) for f in SCHEMA_FIELDS[2:]]
            w.write_table(pa.Table.from_arrays(cols, schema=schema))
            on_rows(len(batch))


def _write_openai_parquet(tmp: Path, n: int, seed: int, configs: Sequence[str], row_group: int, on_rows: Callable[[int], None]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from streamproc.io.layouts import arrow_schema

    schema = arrow_schema("openai")
    with pq.ParquetWriter(tmp, schema, compression="zstd", use_dictionary=["tools", "category", "subcategory", "source"]) as w:
        for start in range(0, n, row_group):
            batch = list(rows(min(row_group, n - start), seed, configs, start, "openai"))
            w.write_table(pa.Table.from_pylist(batch, schema=schema))
            on_rows(len(batch))
