"""The pack job: source -> mask (worker processes) -> pack -> Arrow shards + manifest.json.

Deterministic: workers return masked sequences per input shard in plan order, and the packers
are flushed only at input-shard boundaries once they hold `buffer_size` sequences (and at the
end), so flush points depend on the data alone, never on `workers`. Each flush is a checkpoint:
its shards are written atomically, then `progress.json` (also atomic) records the input shards
consumed, the shards written and the running counts. A rerun with the same inputs and options
skips what was consumed and ends with the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import orjson

from .fileio import atomic_path, write_json
from .mask import DEFAULT_TOKENIZER_NAME, Masker, MaskOptions, MaskedSeq, load_tokenizer, tokenizer_hash
from .pack import Packer
from .pipeline import Tally
from .records import BadRow, Location, Row, RowError
from .shards import FORMAT, MANIFEST, SPLITS, ShardInfo, write_shards
from .sources import Shard, good_rows
from .workers import map_shards

PROGRESS = "progress.json"
TOKENIZER_DIR = "tokenizer"
DROPPED = "dropped.jsonl"
REJECTS = "rejects.jsonl"
_SHARD_FILE = re.compile(r"(%s)-\d{5}\.arrow" % "|".join(SPLITS))
_OURS = (MANIFEST, PROGRESS, DROPPED, REJECTS)


class PackError(RuntimeError):
    """An output directory that cannot be used as asked (an unfinished run with other options, or
    files pack did not write), or a run that wrote no training data."""


@dataclass(slots=True)
class PackOptions:
    seq_len: int = 8192
    tokenizer: str = DEFAULT_TOKENIZER_NAME  # Hub id or local directory
    mask: MaskOptions = field(default_factory=MaskOptions)  # max_len is always seq_len
    buffer_size: int = 100_000  # sequences packed together; larger packs tighter
    shard_rows: int = 2048  # packed rows per output shard
    eval_fraction: float = 0.0  # share of traces (by id hash) held out in eval shards
    add_tokens: tuple[str, ...] = ()  # added to the tokenizer as single special tokens if missing
    row_len: int | None = None  # tokens per packed row; None: seq_len
    share_prefix: bool = False  # rows hold a shared system-turn prefix once (docs/shared-prefix.md)

    def __post_init__(self) -> None:
        if self.seq_len < 1 or self.buffer_size < 1 or self.shard_rows < 1:
            raise ValueError("seq_len, buffer_size and shard_rows must be at least 1")
        if self.row_len is None:
            self.row_len = self.seq_len
        if self.row_len < self.seq_len:
            raise ValueError(f"row_len {self.row_len} is below seq_len {self.seq_len}: a row must hold any sequence")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction {self.eval_fraction}: must be in [0, 1)")
        self.mask.max_len = self.seq_len


def is_eval(trace_id: str, fraction: float) -> bool:
    """The held-out split, by a hash of the trace id: stable across runs, machines and workers."""
    h = int.from_bytes(hashlib.blake2b(trace_id.encode(), digest_size=8).digest(), "big")
    return h < fraction * 2**64


@dataclass(slots=True)
class SplitCounts:
    """Per-split counts. Workers fill the trace-level ones; shards give the token-level ones."""

    traces: int = 0  # traces with at least one sequence written
    dropped: int = 0  # traces with nothing written (too long for --overflow drop, or no trained token)
    tokens_cut: int = 0  # tokens tokenized but not written
    sequences: int = 0
    tokens: int = 0
    trainable: int = 0
    rows: int = 0
    sequence_tokens: int = 0  # tokens the sequences hold whole; more than `tokens` where rows share a prefix
    system_prompt_tokens: int = 0  # of those, in the system turns the sequences begin with

    def add(self, o: "SplitCounts") -> None:
        for f in self.__slots__:
            setattr(self, f, getattr(self, f) + getattr(o, f))

    def add_shard(self, s: ShardInfo) -> None:
        self.sequences += s.sequences
        self.tokens += s.tokens
        self.trainable += s.trainable
        self.rows += s.rows
        self.sequence_tokens += s.sequence_tokens

    def summary(self, row_len: int) -> dict:
        capacity = self.rows * row_len
        return {
            **asdict(self),
            "padding": capacity - self.tokens,
            "packing_efficiency": round(self.tokens / capacity, 6) if capacity else None,
            "tokens_per_trained_token": round(self.tokens / self.trainable, 4) if self.trainable else None,
            "prefix_tokens_saved": self.sequence_tokens - self.tokens,
        }


# ----------------------------------------------------------------------------- workers

_MASKERS: dict[tuple, Masker] = {}
"""Maskers by (tokenizer, options). The parent fills it before the pool forks, so workers inherit
the loaded tokenizer; a spawned worker builds its own once."""


def _masker(tokenizer: str, options: MaskOptions) -> Masker:
    key = (tokenizer, repr(options))
    if key not in _MASKERS:
        _MASKERS[key] = Masker(load_tokenizer(tokenizer), options)
    return _MASKERS[key]


@dataclass(slots=True)
class _MaskedShard:
    seqs: dict[str, list[MaskedSeq]]
    counts: dict[str, SplitCounts]
    tally: Tally
    dropped: list[dict] = field(default_factory=list)  # traces nothing was written of: id, split, reason, file, row
    min_system: int = 0  # tokens of the shortest system turn seen (0: none)


def _min_system(a: int, b: int) -> int:
    return min(a, b) if a and b else a or b


class _MaskShard:
    """Picklable callable for the worker pool: one input shard -> masked sequences per split."""

    def __init__(self, tokenizer: str, options: MaskOptions, eval_fraction: float, on_error: str):
        self.tokenizer, self.options, self.eval_fraction, self.on_error = tokenizer, options, eval_fraction, on_error

    def __call__(self, shard: Shard) -> _MaskedShard:
        tally = Tally()
        return self.fold(good_rows(shard, self.on_error, tally.rejected), tally)

    def fold(self, rows: Iterable[Row], tally: Tally) -> _MaskedShard:
        """Mask good rows; `tally` already holds the rows rejected on the way (the Ray engine
        calls this on Arrow batches)."""
        masker = _masker(self.tokenizer, self.options)
        out = _MaskedShard({s: [] for s in SPLITS}, {s: SplitCounts() for s in SPLITS}, tally)
        for row, res in masker.mask_many(rows):
            if isinstance(res, RowError):
                if self.on_error == "fail":
                    raise res
                tally.rejected.append(res.bad)
                continue
            tally.parsed += 1
            split = "eval" if is_eval(row.id, self.eval_fraction) else "train"
            c = out.counts[split]
            c.traces += not res.dropped
            c.dropped += res.dropped
            out.min_system = _min_system(out.min_system, res.system_tokens)
            if res.dropped:
                loc = getattr(row, "loc", None)
                out.dropped.append({"id": row.id, "split": split, "reason": res.reason, "file": loc.file if loc else None, "row": loc.row if loc else None})
            c.tokens_cut += res.tokens_cut
            c.system_prompt_tokens += sum(s.prefix_len for s in res.seqs)
            out.seqs[split].extend(res.seqs)
        tally.read = tally.parsed + len(tally.rejected)
        return out


# ----------------------------------------------------------------------------- job


@dataclass(slots=True)
class _State:
    """What a checkpoint records; progress.json holds it between runs."""

    fingerprint: str
    consumed: int = 0  # input shards fully packed and written
    tally: Tally = field(default_factory=Tally)
    counts: dict[str, SplitCounts] = field(default_factory=lambda: {s: SplitCounts() for s in SPLITS})
    shards: list[ShardInfo] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)
    min_system: int = 0

    def to_json(self) -> dict:
        return {
            "dropped": self.dropped,
            "min_system": self.min_system,
            "fingerprint": self.fingerprint,
            "consumed": self.consumed,
            "read": self.tally.read,
            "parsed": self.tally.parsed,
            "rejected": [{"file": b.loc.file, "row": b.loc.row, "field": b.field, "error": b.message} for b in self.tally.rejected],
            "counts": {s: asdict(c) for s, c in self.counts.items()},
            "shards": [asdict(s) for s in self.shards],
        }

    @classmethod
    def from_json(cls, d: dict) -> "_State":
        rejected = [BadRow(Location(b["file"], b["row"]), b["field"], b["error"]) for b in d["rejected"]]
        return cls(
            d["fingerprint"],
            d["consumed"],
            Tally(d["read"], d["parsed"], rejected),
            {s: SplitCounts(**c) for s, c in d["counts"].items()},
            [ShardInfo(**s) for s in d["shards"]],
            d["dropped"],
            d["min_system"],
        )


@dataclass(slots=True)
class PackResult:
    manifest: dict
    tally: Tally
    resumed_after: int  # input shards a previous run had already packed
    nothing_written: str = ""  # why no training data was written, and what would fit; "" when some was


def pack_to_dir(
    shards: Sequence[Shard],
    out_dir: str | os.PathLike,
    options: PackOptions | None = None,
    *,
    workers: int = 1,
    on_error: str = "skip",
    restart: bool = False,
) -> PackResult:
    """Mask, pack and write every row of `shards` into `out_dir`; resume an unfinished run there
    with the same inputs and options unless `restart`."""

    def engine(work: _MaskShard, consumed: int) -> Iterator[_MaskedShard]:
        return map_shards(work, shards[consumed:], workers, progress="pack", rows_of=lambda r: r.tally.read)

    return pack_results(engine, [repr(s) for s in shards], out_dir, options, on_error=on_error, restart=restart)


Engine = Callable[[_MaskShard, int], Iterator[_MaskedShard]]
"""engine(work, consumed): work's result for each unit of the input after the first `consumed`, in order."""


def pack_results(
    engine: Engine,
    plan: list[str],
    out_dir: str | os.PathLike,
    options: PackOptions | None = None,
    *,
    on_error: str = "skip",
    restart: bool = False,
) -> PackResult:
    """The pack job on any engine; `plan` names the input units, for the resume fingerprint."""
    opts = options or PackOptions()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_dir(out)
    tok, tok_ref, added = _tokenizer(opts, out)
    # Built here, so an unusable template fails before any work, and forked workers inherit it.
    masker = _MASKERS[(tok_ref, repr(opts.mask))] = Masker(tok, opts.mask)
    tok_info = {
        "name": opts.tokenizer,
        "hash": tokenizer_hash(tok),
        "vocab_size": len(tok),
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": tok.eos_token_id,
        "added_tokens": added,
        "dir": TOKENIZER_DIR if added else None,
    }
    options_json = _options_json(opts)
    fingerprint = _digest({"options": options_json, "tokenizer": tok_info, "template": masker.chat_template_hash, "plan": plan})
    state = _start(out, fingerprint, restart)
    resumed_after = state.consumed
    packers = {s: Packer(opts.seq_len, opts.buffer_size, opts.row_len, opts.share_prefix) for s in SPLITS}
    for r in engine(_MaskShard(tok_ref, opts.mask, opts.eval_fraction, on_error), state.consumed):
        state.tally.add(r.tally)
        state.dropped += r.dropped
        state.min_system = _min_system(state.min_system, r.min_system)
        for s in SPLITS:
            state.counts[s].add(r.counts[s])
            packers[s].add(r.seqs[s])
        state.consumed += 1
        if sum(len(p) for p in packers.values()) >= opts.buffer_size:
            _checkpoint(out, state, packers, opts.shard_rows)
    _checkpoint(out, state, packers, opts.shard_rows)
    manifest = {
        "format": FORMAT,
        "tokenizer": tok_info,
        "chat_template_hash": masker.chat_template_hash,
        "seq_len": opts.seq_len,
        "row_len": opts.row_len,
        "share_prefix": opts.share_prefix,
        "options": options_json,
        "counts": {
            "rows_read": state.tally.read,
            "rows_rejected": len(state.tally.rejected),
            "rows_dropped": len(state.dropped),  # listed in dropped.jsonl
            "shortest_system_prompt_tokens": state.min_system,
            **{s: state.counts[s].summary(opts.row_len) for s in SPLITS},
        },
        "shards": [asdict(s) for s in state.shards],
    }
    if state.dropped:
        with atomic_path(out / DROPPED) as tmp, open(tmp, "wb") as f:
            for d in state.dropped:
                f.write(orjson.dumps(d, option=orjson.OPT_APPEND_NEWLINE))
    write_json(out / MANIFEST, manifest)
    (out / PROGRESS).unlink()
    empty = "" if state.counts["train"].sequences else _nothing_written(out, state, opts)
    return PackResult(manifest, state.tally, resumed_after, empty)


def _nothing_written(out: Path, state: _State, opts: PackOptions) -> str:
    """Why a run wrote no training data, and what would fit."""
    msg = f"no training data written to {out}: "
    if not state.tally.parsed:
        return msg + f"none of the {state.tally.read:,} rows read could be used (see the rejects)"
    msg += f"all {len(state.dropped):,} traces were dropped (each listed with the reason in {out / DROPPED})"
    if state.min_system and state.min_system + 2 > opts.seq_len:
        msg += f"; the shortest system prompt alone is {state.min_system:,} tokens, so --seq-len must be well above that"
    return msg


cached_tokenizer = functools.lru_cache(maxsize=4)(load_tokenizer)
"""Loading takes a second or more; a notebook or a test packing again reuses it (never mutated)."""


def _tokenizer(opts: PackOptions, out: Path):
    """The tokenizer, extended with `add_tokens` it lacks (saved under out/tokenizer), and the
    name workers load it by."""
    tok = cached_tokenizer(opts.tokenizer)
    added = [t for t in dict.fromkeys(opts.add_tokens) if tok.convert_tokens_to_ids(t) is None]
    if not added:
        return tok, opts.tokenizer, []
    from tokenizers import AddedToken

    tok = load_tokenizer(opts.tokenizer)  # a copy of its own to extend

    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in added], special_tokens=True)
    tok.save_pretrained(str(out / TOKENIZER_DIR))
    return tok, str(out / TOKENIZER_DIR), added


def _options_json(opts: PackOptions) -> dict:
    d = asdict(opts)
    d["add_tokens"] = list(opts.add_tokens)
    d["mask"].pop("cache_chars")  # a speed setting: same output whatever it is
    return d


def _digest(obj) -> str:
    return hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _start(out: Path, fingerprint: str, restart: bool) -> _State:
    """The state to continue from; clears what an earlier, different or finished run left."""
    progress = out / PROGRESS
    state = None
    if progress.exists() and not restart:
        try:
            state = _State.from_json(orjson.loads(progress.read_bytes()))
        except (orjson.JSONDecodeError, KeyError, TypeError) as e:
            raise PackError(f"{progress}: not a progress file of this version ({type(e).__name__}: {e}); pass --restart to start over") from e
        if state.fingerprint != fingerprint:
            raise PackError(
                f"{out} holds an unfinished run with other inputs or options ({progress}); "
                f"rerun it with the same ones to resume, or pass --restart to start over"
            )
        print(f"resuming: {state.consumed} input shard(s) and {len(state.shards)} output shard(s) already done", file=sys.stderr)
    keep = {s.file for s in state.shards} if state else set()
    _clear(out, keep)
    state = state or _State(fingerprint)
    write_json(progress, state.to_json())
    return state


def _ours(name: str) -> bool:
    """A file a pack run writes (or atomic_path's temporary file of one)."""
    if name.startswith(".") and name.endswith(".tmp"):
        name = name[1:].rsplit(".", 2)[0]  # .NAME.RANDOM.tmp
    return name in _OURS or name == TOKENIZER_DIR or bool(_SHARD_FILE.fullmatch(name))


def _check_dir(out: Path) -> None:
    """Refuse an output directory holding anything but what a pack run writes, or such files
    without a manifest or progress file of a pack run beside them: pack never deletes a user's
    files."""
    names = sorted(p.name for p in out.iterdir())
    others = [n for n in names if not _ours(n)]
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise PackError(f"{out} holds files streamproc pack did not write ({shown}); use an empty or new directory")
    if names and not {MANIFEST, PROGRESS} & set(names):
        raise PackError(f"{out} holds {', '.join(names[:5])} but no {MANIFEST} or {PROGRESS} of a pack run; use an empty or new directory")


def _clear(out: Path, keep: set[str]) -> None:
    """Remove what an earlier, different or finished run left (all of it checked as ours by
    _check_dir): temporary files, an old manifest, unrecorded shards, an old dropped list."""
    for p in out.iterdir():
        if p.name not in keep and p.name not in (PROGRESS, TOKENIZER_DIR):
            p.unlink()


def _checkpoint(out: Path, state: _State, packers: dict[str, Packer], shard_rows: int) -> None:
    for s in SPLITS:
        packed = packers[s].flush()
        first = sum(i.split == s for i in state.shards)
        for info in write_shards(out, s, packed, first, shard_rows):
            state.shards.append(info)
            state.counts[s].add_shard(info)
    write_json(out / PROGRESS, state.to_json())
