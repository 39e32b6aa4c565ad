"""Curation: per-trace quality features, SQL conditions over them, and de-duplication.

The core is pure: `features(trace)` turns one parsed trace into a flat record (the same parser,
outcome classifier and schema checks as `stats`), `dedup_key(trace, mode)` gives what de-duplication
compares, and a `Curator` holds the compiled conditions and the dedup index and decides, row by
row in input order, whether a row is kept or why it is removed. Conditions are SQL evaluated by
DuckDB over Arrow batches of features (chosen over Polars SQL by measurement, docs/curate.md).

`CurateStage` runs this on the stage runner like any other stage (workers, Ray, bad rows and
progress are the runner's); the jobs below (the `filter` and `features` commands, the
`--where/--preset/--dedup` view of the other commands) merge its partials in plan order.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import operator
import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from .curate_options import DEDUP_MODES, PRESET_HELP  # noqa: F401  (PRESET_HELP: part of this module's API)
from .outcomes import ERROR_CLASSES, MISSING_ARGUMENT, UNKNOWN_ARGUMENT, UNKNOWN_TOOL, check_call, classify, parse_tools
from .records import BadRow, Location, Row, RowError, Tally, Trace
from .runner import Engine, Stage, run_jobs
from .sources import Shard

# ----------------------------------------------------------------------------- features

_I, _B, _S = pa.int64(), pa.bool_(), pa.string()

FEATURES: tuple[tuple[str, pa.DataType, str], ...] = (
    ("id", _S, "the row's id"),
    ("source", _S, "the row's source (the file name when the input has no `source` column)"),
    ("category", _S, "the row's category"),
    ("subcategory", _S, "the row's subcategory"),
    ("messages", _I, "entries in `conversations` (system, user, assistant and tool turns)"),
    ("assistant_turns", _I, "assistant (`gpt`) turns"),
    ("tool_calls", _I, "`<tool_call>` blocks in assistant turns, well-formed or not"),
    ("tool_responses", _I, "`<tool_response>` blocks in tool turns"),
    ("distinct_tools", _I, "different tool names among the calls (a call with no readable name counts for none)"),
    ("max_parallel_calls", _I, "the most calls in one assistant turn (0 when no call)"),
    ("failed_responses", _I, "tool responses the outcome classifier marks as failed (any class)"),
    *((f"failed_{c}", _I, f"failed responses of class `{c}` (see the README's failure classes)") for c in ERROR_CLASSES),
    (
        "unrecovered_failures", _I,
        "failed responses after which no later response in the trace from the same tool succeeds "
        "(the tool is the paired call's name, else the response's own name)",
    ),
    ("malformed_calls", _I, "calls the parser marks invalid: body not JSON (or never closed), not an object, no `name`, or `arguments` not an object"),
    ("malformed_responses", _I, "tool responses the parser could not read: body not JSON, or never closed"),
    ("declared_tools", _I, "tools the row's `tools` column declares; NULL when that column is not readable JSON"),
    ("unknown_tool_calls", _I, "well-formed calls to a tool the row does not declare (0 when it declares none)"),
    ("missing_arguments", _I, "well-formed calls to a declared tool that lack one of its required arguments"),
    ("unknown_arguments", _I, "well-formed calls passing an argument the tool's schema does not list (closed schemas only)"),
    ("calls_without_response", _I, "calls no tool response was paired with"),
    ("responses_without_call", _I, "tool responses paired with no call"),
    ("think_blocks", _I, "reasoning blocks in assistant turns as the parser reads them: `<think>...</think>`, and text closed by a stray `</think>`"),
    ("empty_think_blocks", _I, "of those, blocks with only whitespace inside"),
    ("reasoning_chars", _I, "characters of reasoning (inside those blocks, surrounding whitespace stripped)"),
    ("answer_chars", _I, "characters of assistant text outside `<think>` and `<tool_call>` blocks"),
    ("ends_with_answer", _B, "there is an assistant turn and the last one calls no tool"),
    ("longest_value_chars", _I, "characters of the longest `conversations` value"),
    ("chars", _I, "characters of all `conversations` values"),
)
TOKEN_FEATURES: tuple[tuple[str, pa.DataType, str], ...] = (
    ("tokens", _I, "tokens of the conversation rendered by the chat template (what `pack` tokenizes); NULL when it cannot render"),
    ("trained_tokens", _I, "of those, tokens with a loss (assistant turns, as `pack` masks by default)"),
    ("system_prompt_tokens", _I, "tokens of the system message alone, rendered (0 when there is none)"),
)


def feature_schema(tokens: bool = False) -> pa.Schema:
    return pa.schema([(n, t) for n, t, _ in FEATURES + (TOKEN_FEATURES if tokens else ())])


def features_table(records: list[dict[str, Any]], tokens: bool = False) -> pa.Table:
    """Feature records as an Arrow table, built column by column (ten times faster than
    Table.from_pylist, which goes row by row)."""
    schema = feature_schema(tokens)
    return pa.Table.from_arrays([pa.array([r.get(f.name) for r in records], type=f.type) for f in schema], schema=schema)


def features(trace: Trace) -> dict[str, Any]:
    """The quality features of one parsed trace (definitions in FEATURES)."""
    specs = parse_tools(trace.tools)
    assistant = [t for t in trace.turns if t.role == "assistant"]
    names: set[str] = set()
    malformed = unknown_tool = missing = unknown_arg = unanswered = 0
    for i in range(len(trace.calls)):
        call = trace.call(i)
        if call.name:
            names.add(call.name)
        malformed += not call.valid
        unanswered += call.response is None
        for problem in check_call(call, specs):
            unknown_tool += problem == UNKNOWN_TOOL
            missing += problem == MISSING_ARGUMENT
            unknown_arg += problem == UNKNOWN_ARGUMENT
    failed = dict.fromkeys(ERROR_CLASSES, 0)
    unpaired = malformed_resp = unrecovered = 0
    succeeded_later: set[str | None] = set()
    # Backwards, so "a later success from the same tool" is a set lookup.
    for i in reversed(range(len(trace.responses))):
        resp = trace.response(i)
        unpaired += resp.call is None
        malformed_resp += resp.error is not None
        tool = resp.name if resp.call is None else trace.call(resp.call).name
        cls = classify(resp)
        if cls is None:
            succeeded_later.add(tool)
        else:
            failed[cls] += 1
            unrecovered += tool not in succeeded_later
    thoughts = [th for t in assistant for th in t.thoughts]
    lengths = [len(t.text) for t in trace.turns]
    return {
        "id": trace.id,
        "source": trace.source,
        "category": trace.category,
        "subcategory": trace.subcategory,
        "messages": len(trace.turns),
        "assistant_turns": len(assistant),
        "tool_calls": len(trace.calls),
        "tool_responses": len(trace.responses),
        "distinct_tools": len(names),
        "max_parallel_calls": max((len(t.tool_calls) for t in assistant), default=0),
        "failed_responses": sum(failed.values()),
        **{f"failed_{c}": n for c, n in failed.items()},
        "unrecovered_failures": unrecovered,
        "malformed_calls": malformed,
        "malformed_responses": malformed_resp,
        "declared_tools": None if specs is None else len(specs),
        "unknown_tool_calls": unknown_tool,
        "missing_arguments": missing,
        "unknown_arguments": unknown_arg,
        "calls_without_response": unanswered,
        "responses_without_call": unpaired,
        "think_blocks": len(thoughts),
        "empty_think_blocks": thoughts.count(""),
        "reasoning_chars": sum(map(len, thoughts)),
        "answer_chars": sum(len(t.answer) for t in assistant),
        "ends_with_answer": bool(assistant) and not assistant[-1].tool_calls,
        "longest_value_chars": max(lengths, default=0),
        "chars": sum(lengths),
    }


class TokenFeatures:
    """tokens / trained_tokens / system_prompt_tokens through the masker `pack` uses. Picklable;
    the tokenizer loads in the process that first counts."""

    def __init__(self, tokenizer: str):
        self.tokenizer = tokenizer
        self._masker = None

    def __getstate__(self):
        return {"tokenizer": self.tokenizer, "_masker": None}

    def __setstate__(self, state):
        self.__dict__.update(state)

    def masker(self):
        if self._masker is None:
            from .mask import Masker

            self._masker = Masker(None if self.tokenizer == "default" else self.tokenizer)
        return self._masker

    def count(self, traces: Sequence[Trace]) -> list[dict[str, int | None]]:
        from .chat import TemplateError, render

        m = self.masker()
        out = []
        for trace, res in m.mask_many(traces):
            if isinstance(res, RowError):
                out.append(dict.fromkeys(("tokens", "trained_tokens", "system_prompt_tokens")))
                continue
            msgs = m.messages(trace)
            system = 0
            if msgs and msgs[0].role == "system":
                try:
                    system = len(m.encode(render(m.tokenizer, msgs[:1], m.info).text)[0])
                except TemplateError:
                    system = None
            seq = res.seqs[0] if res.seqs else None
            out.append({
                "tokens": 0 if seq is None else len(seq.input_ids),
                "trained_tokens": 0 if seq is None else int((seq.labels != -100).sum()),
                "system_prompt_tokens": system,
            })
        return out


# ----------------------------------------------------------------------------- dedup keys

NUM_PERM = 128
MINHASH_SCHEME = "affine32"
SHINGLE_WORDS = 5


def exact_key(trace: Trace) -> bytes:
    """16-byte digest of the whole conversation (roles and text) with runs of whitespace made one space."""
    h = hashlib.blake2b(digest_size=16)
    for t in trace.turns:
        h.update(t.role.encode())
        h.update(b"\x1f")
        h.update(" ".join(t.text.split()).encode())
        h.update(b"\x1e")
    return h.digest()


def near_key(trace: Trace, num_perm: int = NUM_PERM) -> np.ndarray:
    """MinHash signature (uint32[num_perm]) of the 5-word shingles of the user and assistant text.

    Each distinct word is hashed once with CRC-32 (deterministic in every process, unlike
    `hash`); a shingle's hash combines its words' hashes with numpy, so no shingle string is
    built. datasketch then permutes the distinct shingle hashes (its affine32 scheme) and keeps
    the minima: the signature is a datasketch MinHash's `hashvalues`.
    """
    from datasketch import MinHash

    words = " ".join(t.text for t in trace.turns if t.role in ("user", "assistant")).split()
    vocab = {w: zlib.crc32(w.encode()) for w in set(words)}
    h = np.fromiter((vocab[w] for w in words), dtype=np.uint64, count=len(words))
    n = SHINGLE_WORDS
    if len(h) > n:
        shingles = h[: len(h) - n + 1].copy()
        for k in range(1, n):  # polynomial combination, wrapping mod 2^64, of the n word hashes
            shingles = shingles * np.uint64(_SHINGLE_MULTIPLIER) + h[k : len(h) - n + 1 + k]
    else:
        shingles = h[:1] if len(h) else np.zeros(1, np.uint64)
    m = MinHash(num_perm=num_perm, seed=1, hashfunc=operator.index, permutations=_permutations(num_perm), scheme=MINHASH_SCHEME)
    m.update_batch(np.unique(shingles & np.uint64(0xFFFFFFFF)).tolist())
    return m.hashvalues


_SHINGLE_MULTIPLIER = 0x9E3779B1  # an odd constant (2^32 / golden ratio): spreads each word's bits


@functools.lru_cache(maxsize=4)
def _permutations(num_perm: int) -> np.ndarray:
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=1, scheme=MINHASH_SCHEME).permutations


def dedup_key(trace: Trace, mode: str) -> bytes | np.ndarray:
    return exact_key(trace) if mode == "exact" else near_key(trace)


# ----------------------------------------------------------------------------- conditions

@dataclass(slots=True, frozen=True)
class Condition:
    name: str
    sql: str


PRESETS: dict[str, tuple[Condition, ...]] = {
    "clean": (
        Condition("no_malformed_calls", "malformed_calls = 0"),
        Condition("no_undeclared_tools", "unknown_tool_calls = 0"),
        Condition("no_missing_arguments", "missing_arguments = 0"),
        Condition("every_call_answered", "calls_without_response = 0"),
        Condition("ends_with_answer", "ends_with_answer"),
    ),
}
PRESETS["recovered"] = PRESETS["clean"] + (Condition("no_unrecovered_failures", "unrecovered_failures = 0"),)
PRESETS["strict"] = PRESETS["clean"] + (
    Condition("no_failed_responses", "failed_responses = 0"),
    Condition("no_unknown_arguments", "unknown_arguments = 0"),
    Condition("no_unpaired_responses", "responses_without_call = 0"),
    Condition("no_malformed_responses", "malformed_responses = 0"),
    Condition("no_empty_think", "empty_think_blocks = 0"),
)
PRESETS["agentic"] = PRESETS["clean"] + (Condition("calls_a_tool", "tool_calls > 0"),)
PRESETS["reasoning"] = (
    Condition("has_reasoning", "think_blocks > 0"),
    Condition("no_empty_think", "empty_think_blocks = 0"),
)


class ConditionError(ValueError):
    """A --where / --preset the engine cannot use: says what is wrong and lists the columns."""


def conditions_of(where: str | None, preset: str | None) -> tuple[Condition, ...]:
    conds: tuple[Condition, ...] = ()
    if preset:
        if preset not in PRESETS:
            raise ConditionError(f"no preset {preset!r}; presets: {', '.join(PRESETS)}")
        conds = PRESETS[preset]
    if where and where.strip():
        conds += (Condition("where", where),)
    return conds


class ConditionEngine:
    """Conditions compiled against the feature schema by DuckDB, then evaluated per Arrow batch."""

    def __init__(self, conditions: Sequence[Condition], schema: pa.Schema):
        import duckdb

        self.conditions = tuple(conditions)
        self.schema = schema
        self._con = duckdb.connect()
        # NULL (e.g. a comparison with a NULL feature) does not keep a row.
        cols = ", ".join(f"coalesce(({c.sql}), false) AS c{i}" for i, c in enumerate(self.conditions))
        self._query = f"SELECT {cols} FROM batch" if self.conditions else ""
        for c in self.conditions:
            self._check(c)

    def _check(self, c: Condition) -> None:
        import duckdb

        batch = self.schema.empty_table()  # noqa: F841  (DuckDB reads the local by name)
        try:
            kind = self._con.execute(f"DESCRIBE SELECT ({c.sql}) AS v FROM batch").fetchall()[0][1]
        except duckdb.Error as e:
            msg = str(e).split("\n\nLINE")[0].strip()
            if any(f'"{name}" not found' in msg for name, _, _ in TOKEN_FEATURES):
                msg += "\n(tokens, trained_tokens and system_prompt_tokens: `filter` and `features` with --tokenizer)"
            raise ConditionError(f"{_label(c)}: {msg}\n{self.columns_text()}") from None
        if kind != "BOOLEAN":
            raise ConditionError(f"{_label(c)}: is a {kind}, not a true/false condition\n{self.columns_text()}")

    def columns_text(self) -> str:
        return "valid columns: " + ", ".join(f"{f.name} ({_sql_type(f.type)})" for f in self.schema)

    def evaluate(self, batch: pa.Table) -> np.ndarray:
        """bool[rows, conditions]: whether each row meets each condition."""
        if not self.conditions:
            return np.ones((batch.num_rows, 0), dtype=bool)
        res = self._con.sql(self._query).to_arrow_table()
        return np.column_stack([res.column(i).to_numpy(zero_copy_only=False) for i in range(len(self.conditions))]).astype(bool)

    def judge(self, batch: pa.Table, acct: Accounting) -> list[str | None]:
        """Per row: the first condition it fails, or None; each condition's failures counted in
        `acct.failing` (a row may fail several)."""
        met = self.evaluate(batch)
        names = [c.name for c in self.conditions]
        for j, name in enumerate(names):
            acct.failing[name] += int((~met[:, j]).sum())
        return [names[f[0]] if (f := np.flatnonzero(~row)).size else None for row in met]


def _label(c: Condition) -> str:
    return f"--where {c.sql!r}" if c.name == "where" else f"condition {c.name} ({c.sql})"


def _sql_type(t: pa.DataType) -> str:
    return {_I: "integer", _B: "boolean", _S: "text"}.get(t, str(t))


# ----------------------------------------------------------------------------- the curator

@dataclass(slots=True)
class Accounting:
    """Rows read, kept, removed (by the first condition they fail, or by dedup) and rejected."""

    read: int = 0
    kept: int = 0
    rejected: int = 0
    removed_by: dict[str, int] = field(default_factory=dict)  # first failing condition / dedup -> rows
    failing: dict[str, int] = field(default_factory=dict)  # condition -> rows failing it (overlaps)

    @property
    def removed(self) -> int:
        return sum(self.removed_by.values())

    def count(self, reasons: Sequence[str | None]) -> None:
        """Count decided rows: kept (None) or removed by their reason's name."""
        for reason in reasons:
            if reason is None:
                self.kept += 1
            else:
                self.removed_by[reason.split(" ")[0]] += 1

    def add(self, other: "Accounting") -> None:
        self.read += other.read
        self.kept += other.kept
        self.rejected += other.rejected
        for mine, theirs in ((self.removed_by, other.removed_by), (self.failing, other.failing)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v

    def to_json(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "kept": self.kept,
            "removed": self.removed,
            "rejected": self.rejected,
            "removed_by": self.removed_by,
            "failing": self.failing,
        }


class Curator:
    """Decides keep or remove for each row, in input order: the conditions first (the first one a
    row fails is its reason), then the dedup index over the rows the conditions keep."""

    def __init__(self, conditions: Sequence[Condition] = (), dedup: str | None = None, threshold: float = 0.8, tokens: bool = False):
        if dedup is not None and dedup not in DEDUP_MODES:
            raise ConditionError(f"--dedup {dedup!r}: expected one of {', '.join(DEDUP_MODES)}")
        if not 0 < threshold <= 1:
            raise ConditionError(f"--threshold {threshold}: must be above 0 and at most 1")
        self.engine = ConditionEngine(conditions, feature_schema(tokens))
        self.dedup = dedup
        self.threshold = threshold
        self.acct = Accounting(failing={c.name: 0 for c in conditions}, removed_by={c.name: 0 for c in conditions})
        if dedup:
            self.acct.removed_by[f"dedup_{dedup}"] = 0
        self._seen: dict[bytes, int] = {}  # exact: digest -> input position of the kept row
        self._lsh = None
        self._position = 0  # rows decided so far (input order)
        if dedup == "near":
            from datasketch import MinHashLSH

            self._lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)

    @property
    def conditions(self) -> tuple[Condition, ...]:
        return self.engine.conditions

    def decide(self, batch: pa.Table, keys: Sequence[Any] | None) -> list[str | None]:
        """Per row of `batch` (features, in input order): None to keep, else the reason."""
        reasons = self.engine.judge(batch, self.acct)
        for i, reason in enumerate(reasons):
            position = self._position
            self._position += 1
            if reason is None and self.dedup and keys is not None:
                reasons[i] = self._duplicate(keys[i], position)
        self.acct.count(reasons)
        return reasons

    def decide_split(self, part: "CuratedSplit", tally: Tally) -> list[str | None]:
        """decide() over one split's features, counting its rows read and rejected: splits are
        given in plan order, so the decisions are the same for any number of workers."""
        self.acct.read += tally.read
        self.acct.rejected += len(tally.rejected)
        return self.decide(part.features, part.keys)

    def _duplicate(self, key: Any, position: int) -> str | None:
        if self._lsh is None:
            first = self._seen.setdefault(key, position)
            return None if first == position else f"dedup_exact (same text as good row {first} of the input, counted from 0)"
        from datasketch import MinHash

        m = MinHash(num_perm=NUM_PERM, seed=1, hashvalues=key, permutations=_permutations(NUM_PERM), scheme=MINHASH_SCHEME)
        found = self._lsh.query(m)
        if found:
            return f"dedup_near (similar to good row {min(found)} of the input, counted from 0)"
        self._lsh.insert(position, m, check_duplication=False)
        return None

    def index_bytes(self) -> int:
        """Memory the dedup index holds, measured by walking its containers."""
        if self._lsh is not None:
            return _deep_size(self._lsh.hashtables) + _deep_size(self._lsh.keys)
        return _deep_size(self._seen)

    def summary(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.acct.to_json()
        doc["conditions"] = {c.name: c.sql for c in self.conditions}
        if self.dedup:
            size = self.index_bytes()
            per_million = round(size / max(self.acct.kept, 1) * 1e6 / 2**20, 1)
            doc["dedup"] = {"mode": self.dedup, "index_bytes": size, "index_mib_per_million_rows": per_million}
            if self.dedup == "near":
                doc["dedup"].update(threshold=self.threshold, num_perm=NUM_PERM, shingle_words=SHINGLE_WORDS)
        return doc


def _deep_size(obj: Any) -> int:
    import sys

    seen: set[int] = set()
    total = 0
    stack = [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
        elif hasattr(o, "__dict__"):
            stack.append(vars(o))
    return total


# ----------------------------------------------------------------------------- the stage

@dataclass(slots=True)
class CuratedSplit:
    """A split's features (one per trace the stage kept), with their dedup keys, rows (to be
    written) and locations (for a view's Split.skip), in input order."""

    features: Any  # list of feature dicts while folding; a pa.Table once the split is done
    keys: list[Any] | None
    rows: list[Row] | None
    locs: list[Location | None]


class CurateStage(Stage):
    """Features of a split's traces; dedup keys with `dedup`, the rows with `keep_rows`, token
    counts with `tokenizer` (each worker loads it once, itself). What to keep is decided by a
    Curator in the parent, in plan order (Curator.decide_split), so any --workers gives the same."""

    name = "features"

    def __init__(self, dedup: str | None = None, tokenizer: str | None = None, keep_rows: bool = False):
        self.dedup, self.keep_rows = dedup, keep_rows
        self.tokens = TokenFeatures(tokenizer) if tokenizer else None

    def start(self) -> CuratedSplit:
        return CuratedSplit([], [] if self.dedup else None, [] if self.keep_rows else None, [])

    def fold_batch(self, acc: CuratedSplit, rows: list[tuple[Row, Trace | None]]) -> list[tuple[int, BadRow]]:
        bad = []
        traces = []
        for i, (row, trace) in enumerate(rows):
            try:
                f = features(trace)
                key = dedup_key(trace, self.dedup) if self.dedup else None
            except Exception as e:  # a bug must not end a long run: the row is set aside, named
                bad.append((i, self.reject(row, e)))
                continue
            acc.features.append(f)
            acc.locs.append(row.loc)
            if acc.keys is not None:
                acc.keys.append(key)
            if acc.rows is not None:
                acc.rows.append(row)
            traces.append(trace)
        if self.tokens is not None and traces:
            for f, t in zip(acc.features[-len(traces):], self.tokens.count(traces)):
                f.update(t)
        return bad

    def end(self, acc: CuratedSplit) -> CuratedSplit:
        acc.features = features_table(acc.features, self.tokens is not None)
        return acc


class ConditionGate:
    """A view of conditions only (no dedup), applied inside the command's own pass: the runner
    asks it which parsed rows the command's stages see (runner.fold_items), in the worker, so the
    input is read and parsed once. Each split's Accounting comes back with its results and is
    added to `acct` here, in the process that planned the run (runner.run)."""

    def __init__(self, conditions: Sequence[Condition]):
        self.conditions = tuple(conditions)
        self.acct = self.start()
        self._engine: ConditionEngine | None = None

    def __reduce__(self):  # sent by its conditions: the DuckDB connection is made where it runs
        return ConditionGate, (self.conditions,)

    def __repr__(self) -> str:  # part of a pack run's plan (resume): stable across processes
        return f"ConditionGate({[c.sql for c in self.conditions]})"

    def start(self) -> Accounting:
        names = {c.name: 0 for c in self.conditions}
        return Accounting(failing=dict(names), removed_by=dict(names))

    def keep_batch(self, acct: Accounting, rows: list[tuple[Row, Trace]]) -> tuple[list[bool], list[tuple[int, BadRow]]]:
        """Which rows pass (in order), and the rows set aside because their features fail."""
        if self._engine is None:
            self._engine = ConditionEngine(self.conditions, feature_schema())
        feats, judged, bad = [], [], []
        for i, (row, trace) in enumerate(rows):
            try:
                feats.append(features(trace))
                judged.append(i)
            except Exception as e:  # a bug must not end a long run: the row is set aside, named
                bad.append((i, BadRow(row.loc, "<view>", f"trace {row.id}: {type(e).__name__}: {e}")))
        reasons = self._engine.judge(features_table(feats), acct)
        acct.count(reasons)
        kept = [False] * len(rows)
        for i, reason in zip(judged, reasons):
            kept[i] = reason is None
        return kept, bad

    def add(self, acct: Accounting, tally: Tally) -> None:
        """One split's decisions (runner.run calls this in plan order)."""
        acct.read, acct.rejected = tally.read, len(tally.rejected)
        self.acct.add(acct)


class _ViewJob:
    """The locations of the rows the curator removes, split by split."""

    def __init__(self, curator: Curator):
        self.stages: list[Stage] = [CurateStage(curator.dedup)]
        self.curator = curator
        self.removed: list[frozenset[Location | None]] = []

    def add(self, partials: list[Any], tallies: list[Tally]) -> None:
        part = partials[0]
        reasons = self.curator.decide_split(part, tallies[0])
        self.removed.append(frozenset(loc for loc, why in zip(part.locs, reasons) if why is not None))


def view(shards: Sequence[Shard], curator: Curator, workers: int | Engine = 1, on_error: str = "skip") -> tuple[list[Shard], Accounting]:
    """The shards as a view that only the rows the curator keeps go through, and the Accounting
    that counts the decisions (complete once the command's pass is done).

    Conditions alone are a ConditionGate on each shard, decided in the command's own pass.
    De-duplication needs the rows in input order, so it takes a first pass (features, keys and
    decisions, here) that marks the removed rows to be skipped (Split.skip) by the command's."""
    if not curator.dedup:
        gate = ConditionGate(curator.conditions)
        return [replace(shard, gate=gate) for shard in shards], gate.acct
    job = _ViewJob(curator)
    run_jobs(shards, [job], workers=workers, on_error=on_error, progress="curate")
    return [replace(shard, skip=removed) for shard, removed in zip(shards, job.removed)], curator.acct


# ----------------------------------------------------------------------------- files

ROW_FORMATS = (".parquet", ".jsonl", ".jsonl.zst")


def row_record(row: Row) -> dict[str, Any]:
    """A row back in the dataset schema, every extra column carried."""
    return {
        "id": row.id,
        "conversations": [{"from": f, "value": v} for f, v in row.conversations],
        "tools": row.tools,
        "category": row.category,
        "subcategory": row.subcategory,
        "task": row.task,
        "source": row.source,
        **row.extra,
    }


def check_row_path(path: str) -> None:
    if not str(path).lower().endswith(ROW_FORMATS):
        raise ConditionError(f"{path}: the output must end in {', '.join(ROW_FORMATS)}")


class RowSink:
    """Writes records to .parquet, .jsonl or .jsonl.zst atomically (in place on close only).

    Parquet takes its schema from the first batch; a later batch with a column the first lacked
    is refused by name (JSONL takes any)."""

    def __init__(self, path: str):
        check_row_path(path)
        self.path = str(path)
        self.rows = 0
        self._atomic = None
        self._f = None
        self._writer = None

    def __enter__(self) -> "RowSink":
        from .fileio import atomic_path

        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        low = self.path.lower()
        if low.endswith(".jsonl.zst"):
            import zstandard

            self._raw = open(self._tmp, "wb")
            self._f = zstandard.ZstdCompressor(level=3).stream_writer(self._raw)
        elif low.endswith(".jsonl"):
            self._f = open(self._tmp, "wb")
        return self

    def write(self, rows: list[Row], reasons: list[str] | None = None) -> None:
        """Append rows; with `reasons`, a `removed_reason` column too."""
        if not rows:
            return
        self.rows += len(rows)
        if self._f is not None:
            import orjson

            records = [row_record(r) for r in rows]
            if reasons is not None:
                for rec, why in zip(records, reasons):
                    rec["removed_reason"] = why
            self._f.write(b"".join(orjson.dumps(r, default=str, option=orjson.OPT_APPEND_NEWLINE) for r in records))
            return
        import pyarrow.parquet as pq

        try:
            table = _rows_table(rows, reasons, None if self._writer is None else self._writer.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:  # an extra column whose type changes between batches
            raise ConditionError(f"{self.path}: rows after row {self.rows - len(rows)} do not fit the Parquet schema ({e}); write .jsonl instead") from None
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._tmp, table.schema, compression="zstd")  # as synth writes: half the size of snappy, same CPU
        elif table.schema.names != self._writer.schema.names:
            new = sorted(set(table.schema.names) - set(self._writer.schema.names))
            raise ConditionError(f"{self.path}: column {new[0]!r} first appears after row {self.rows - len(rows)}; write .jsonl instead")
        self._writer.write_table(table)

    def __exit__(self, *exc) -> None:
        try:
            if self._f is not None:
                self._f.close()
            elif self._writer is not None:
                self._writer.close()
            elif exc[0] is None:  # nothing kept: still a valid, empty file
                import pyarrow.parquet as pq

                pq.write_table(DATASET_SCHEMA.empty_table(), self._tmp)
        finally:
            self._atomic.__exit__(*exc)


def _rows_table(rows: list[Row], reasons: list[str] | None, schema: pa.Schema | None) -> pa.Table:
    """Rows as an Arrow table in the dataset schema, built column by column (converting a list
    of nested dicts costs five times as much). Extra columns are typed by Arrow from their
    values, or cast to `schema`, the file's schema once its first batch is written."""
    turns = [t for r in rows for t in r.conversations]
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum([len(r.conversations) for r in rows], out=offsets[1:])
    convs = pa.ListArray.from_arrays(
        pa.array(offsets),
        pa.StructArray.from_arrays([pa.array([t[0] for t in turns], _S), pa.array([t[1] for t in turns], _S)], ["from", "value"]),
    )
    cols: dict[str, pa.Array] = {"id": pa.array([r.id for r in rows], _S), "conversations": convs}
    for name in ("tools", "category", "subcategory", "task", "source"):
        cols[name] = pa.array([getattr(r, name) for r in rows], _S)
    extra = list(dict.fromkeys(k for r in rows for k in r.extra))
    known = {} if schema is None else {f.name: f.type for f in schema}
    for name in extra:
        cols[name] = pa.array([r.extra.get(name) for r in rows], known.get(name))
    if reasons is not None:
        cols["removed_reason"] = pa.array(reasons, _S)
    if schema is not None:  # columns a batch lacks are null, in the file's order
        return pa.table({f.name: cols.get(f.name, pa.nulls(len(rows), f.type)) for f in schema} | {k: v for k, v in cols.items() if k not in known})
    return pa.table(cols)


DATASET_SCHEMA = pa.schema(
    [
        ("id", _S),
        ("conversations", pa.list_(pa.struct([("from", _S), ("value", _S)]))),
        ("tools", _S),
        ("category", _S),
        ("subcategory", _S),
        ("task", _S),
        ("source", _S),
    ]
)


class FilterJob:
    """The rows the curator keeps to one sink, the others (with their reasons) to another."""

    def __init__(self, curator: Curator, kept: "RowSink", gone: "RowSink | _NoSink", tokenizer: str | None = None):
        self.stages: list[Stage] = [CurateStage(curator.dedup, tokenizer, keep_rows=True)]
        self.curator, self.kept, self.gone = curator, kept, gone
        self.tally = Tally()

    def add(self, partials: list[Any], tallies: list[Tally]) -> None:
        part = partials[0]
        self.tally.add(tallies[0])
        reasons = self.curator.decide_split(part, tallies[0])
        self.kept.write([r for r, why in zip(part.rows, reasons) if why is None])
        gone = [(r, why) for r, why in zip(part.rows, reasons) if why is not None]
        self.gone.write([r for r, _ in gone], [why for _, why in gone])

    def summary(self) -> dict[str, Any]:
        doc = self.curator.summary()
        doc["output"] = self.kept.path
        if isinstance(self.gone, RowSink):
            doc["removed_rows"] = self.gone.path
        return doc


@contextlib.contextmanager
def filter_job(out: str, curator: Curator, removed: str | None = None, tokenizer: str | None = None) -> Iterator[FilterJob]:
    """A FilterJob for any engine to run; its files are complete on leaving the block, or absent."""
    check_row_path(out)
    if removed:
        check_row_path(removed)
    with RowSink(out) as kept, (RowSink(removed) if removed else _NoSink()) as gone:
        yield FilterJob(curator, kept, gone, tokenizer)


def filter_to_file(
    shards: Sequence[Shard], out: str, curator: Curator, *, workers: int | Engine = 1, on_error: str = "skip",
    removed: str | None = None, tokenizer: str | None = None,
) -> tuple[dict[str, Any], Tally]:
    """Write the rows the curator keeps to `out`, unchanged, in input order; with `removed`, the
    others there with a `removed_reason` column. Returns the accounting summary and the tally."""
    with filter_job(out, curator, removed, tokenizer) as job:
        run_jobs(shards, [job], workers=workers, on_error=on_error, progress="filter")
    return job.summary(), job.tally


class _NoSink:
    def __enter__(self):
        return self

    def write(self, rows, reasons=None) -> None:
        pass

    def __exit__(self, *exc) -> None:
        pass


class FeaturesJob:
    """One row of features per trace, written as each split arrives; `write` takes a pa.Table."""

    def __init__(self, write: Callable[[pa.Table], None], tokenizer: str | None = None):
        self.stages: list[Stage] = [CurateStage(tokenizer=tokenizer)]
        self.write = write
        self.tally = Tally()
        self.rows = 0

    def add(self, partials: list[Any], tallies: list[Tally]) -> None:
        table = partials[0].features
        self.tally.add(tallies[0])
        self.write(table)
        self.rows += table.num_rows


@contextlib.contextmanager
def features_job(out: str, tokenizer: str | None = None) -> Iterator[FeaturesJob]:
    """A FeaturesJob writing `out` (.parquet, or .jsonl), complete on leaving the block, or absent."""
    import pyarrow.parquet as pq

    from .fileio import atomic_path

    with atomic_path(out) as tmp:
        if str(out).lower().endswith(".parquet"):
            with pq.ParquetWriter(tmp, feature_schema(tokenizer is not None)) as w:
                yield FeaturesJob(w.write_table, tokenizer)
        else:
            import orjson

            with open(tmp, "wb") as f:
                yield FeaturesJob(lambda t: f.writelines(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in t.to_pylist()), tokenizer)


def features_to_file(
    shards: Sequence[Shard], out: str, *, tokenizer: str | None = None, workers: int | Engine = 1, on_error: str = "skip"
) -> tuple[int, Tally]:
    """One row of features per trace to `out` (.parquet, or .jsonl). Returns (rows written, tally)."""
    with features_job(out, tokenizer) as job:
        run_jobs(shards, [job], workers=workers, on_error=on_error, progress="features")
    return job.rows, job.tally
