"""The pack job: source -> mask (worker processes) -> spill -> pack -> Arrow shards + manifest.json.

In three phases (prepare/spill.py): workers write each input split's masked sequences to a spill
file and send back its name; once every split is spilled, the parent packs all sequences at once
from their lengths (global best-fit-decreasing; with `buffer_size`, within groups of consecutive
input splits holding that many sequences, as a streaming packer would); then it gathers each
output shard's rows from the memory-mapped spill files. Memory holds one split's sequences in a
worker and one shard's rows in the parent, whatever the data's size.

Deterministic: the spill files are read in plan order, so the output depends on the data alone,
never on `workers`. `progress.json` (atomic) records the input splits spilled (with their files)
after each one, then each shard written: a rerun with the same inputs and options resumes at
whichever phase the last run stopped in and ends with the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import orjson

from streamproc.io.files import atomic_path, dir_lock, write_json
from streamproc.prepare.mask import DEFAULT_TOKENIZER_NAME, MaskOptions, cached_masker, cached_tokenizer, load_tokenizer, tokenizer_hash
from streamproc.prepare.stage import MaskStage, PartitionCounts, is_eval, min_system  # noqa: F401  (is_eval: part of this module's API)
from streamproc.prepare.pack import RowPlan, assemble, check_row_len, plan_rows
from streamproc.prepare.spill import SPILL_DIR, SpilledSplit, SpillIndex, SpillingMaskStage
from streamproc.records import BadRow, Location, RowError, Tally
from streamproc.run.runner import Engine, Job, Stage, View, plan_key, run_jobs
from streamproc.prepare.shards import FORMAT, MANIFEST, PARTITIONS, ShardInfo, shard_name, write_shard
from streamproc.io.sources import Split

PROGRESS = "progress.json"
TOKENIZER_DIR = "tokenizer"
LOCK = ".pack.lock"
DROPPED = "dropped.jsonl"
REJECTS = "rejects.jsonl"
_SHARD_FILE = re.compile(r"(%s)-\d{5}\.arrow" % "|".join(PARTITIONS))
_OURS = (MANIFEST, PROGRESS, DROPPED, REJECTS, LOCK)
SPILL_VERSION = 1  # in the fingerprint: a progress file of the buffered packer (before spilling) is not resumed


class PackError(RuntimeError):
    """An output directory that cannot be used as asked (an unfinished run with other options, or
    files pack did not write), or a run that wrote no training data."""


SHARD_TOKENS = 2048 * 8192
"""Row tokens of a shard by default: the parent holds one shard's rows while it writes them
(about 24 bytes a token with the Arrow copy), so shards hold tokens, not rows, at any row length."""


@dataclass(slots=True)
class PackOptions:
    seq_len: int = 8192
    tokenizer: str = DEFAULT_TOKENIZER_NAME  # Hub id or local directory
    mask: MaskOptions = field(default_factory=MaskOptions)  # max_len is always seq_len
    buffer_size: int | None = None  # sequences packed together (at input-split boundaries); None: all of them
    shard_rows: int | None = None  # packed rows per output shard; None: those SHARD_TOKENS fill at row_len
    eval_fraction: float = 0.0  # share of traces (by id hash) held out in eval shards
    add_tokens: tuple[str, ...] = ()  # added to the tokenizer as single special tokens if missing
    row_len: int | None = None  # tokens per packed row; None: seq_len
    share_prefix: bool = False  # rows hold a shared system-turn prefix once (docs/shared-prefix.md)

    def __post_init__(self) -> None:
        if self.seq_len < 1 or (self.buffer_size is not None and self.buffer_size < 1) or (self.shard_rows is not None and self.shard_rows < 1):
            raise ValueError("seq_len, buffer_size and shard_rows must be at least 1")
        self.row_len = check_row_len(self.row_len, self.seq_len)
        if self.shard_rows is None:
            self.shard_rows = max(1, SHARD_TOKENS // self.row_len)
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction {self.eval_fraction}: must be in [0, 1)")
        self.mask.max_len = self.seq_len


# ----------------------------------------------------------------------------- job


@dataclass(slots=True)
class _State:
    """What a checkpoint records; progress.json holds it between runs."""

    fingerprint: str
    consumed: int = 0  # input splits spilled
    spills: list[str | None] = field(default_factory=list)  # each consumed split's spill file (None: no sequence)
    tally: Tally = field(default_factory=Tally)
    counts: dict[str, PartitionCounts] = field(default_factory=lambda: {s: PartitionCounts() for s in PARTITIONS})
    shards: list[ShardInfo] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)
    min_system: int = 0

    def to_json(self) -> dict:
        return {
            "dropped": self.dropped,
            "min_system": self.min_system,
            "fingerprint": self.fingerprint,
            "consumed": self.consumed,
            "spills": self.spills,
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
            d["spills"],
            Tally(d["read"], d["parsed"], rejected),
            {s: PartitionCounts(**c) for s, c in d["counts"].items()},
            [ShardInfo(**s) for s in d["shards"]],
            d["dropped"],
            d["min_system"],
        )


@dataclass(slots=True)
class PackResult:
    manifest: dict
    tally: Tally
    resumed_after: int  # input splits a previous run had already packed
    nothing_written: str = ""  # why no training data was written, and what would fit; "" when some was


class PackJob(Job):
    """Masked sequences spilled, packed and gathered into shards in DIR, resumable at each phase.

    Used as a context manager: entering loads the tokenizer, locks DIR (a second run into it is
    refused) and finds where an unfinished run with the same inputs and options stopped
    (`resumed_after` splits); `add` takes each later split's partial in plan order; `finish`
    writes the manifest. Leaving on an error keeps the last checkpoint, so a rerun resumes
    (after Ctrl-C and SIGTERM as after SIGKILL); under --on-error fail a bad row discards the
    run instead, so nothing in DIR looks like one.
    """

    def __init__(self, out_dir: str | os.PathLike, options: PackOptions | None, plan: list[str], *, on_error: str = "skip", restart: bool = False):
        self.opts = options or PackOptions()
        self.out = Path(out_dir)
        self.plan, self.on_error, self.restart = plan, on_error, restart
        self._lock = dir_lock(self.out, LOCK)

    def __enter__(self) -> "PackJob":
        opts, out = self.opts, self.out
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        _check_dir(out)
        self._lock.__enter__()
        try:
            tok, tok_ref, added = _tokenizer(opts, out)
            # Built here, so an unusable template fails before any work starts.
            self.masker = cached_masker(tok_ref, opts.mask)
            self.tok_info = {
                "name": opts.tokenizer,
                "hash": tokenizer_hash(tok),
                "vocab_size": len(tok),
                "pad_token_id": tok.pad_token_id,
                "eos_token_id": tok.eos_token_id,
                "added_tokens": added,
                "dir": TOKENIZER_DIR if added else None,
            }
            self.options_json = _options_json(opts)
            fingerprint = _digest(
                {"options": self.options_json, "tokenizer": self.tok_info, "template": self.masker.chat_template_hash, "plan": self.plan,
                 "spill": SPILL_VERSION}
            )
            self.state, self.resumed = _start(out, fingerprint, self.restart)
        except BaseException:
            self._lock.__exit__(None, None, None)
            if created and not any(out.iterdir()):  # a bad tokenizer or template leaves no empty directory behind
                out.rmdir()
            raise
        self.resumed_after = self.state.consumed
        self.stages: list[Stage] = [SpillingMaskStage(tok_ref, opts.mask, opts.eval_fraction, str((out / SPILL_DIR).resolve()))]
        return self

    def resuming(self) -> str:
        """What an earlier run had done, for the command to say; "" when this run starts afresh."""
        if not self.resumed:
            return ""
        return f"resuming: {self.resumed_after} input split(s) and {len(self.state.shards)} output shard(s) already done"

    def holds(self, index: int) -> bool:
        """The first `resumed_after` splits were spilled by an earlier run: not masked again."""
        return index < self.resumed_after

    def add(self, partials: list, tallies: list[Tally]) -> None:
        """One split's SpilledSplit, in plan order, from the first split it does not hold. A
        checkpoint follows each."""
        spilled: SpilledSplit = partials[0]
        r, state = spilled.split, self.state
        state.tally.add(tallies[0])
        state.dropped += r.dropped
        state.min_system = min_system(state.min_system, r.min_system)
        for s in PARTITIONS:
            state.counts[s].add(r.counts[s])
        state.spills.append(spilled.file)
        state.consumed += 1
        write_json(self.out / PROGRESS, state.to_json())

    def finish(self) -> PackResult:
        opts, state, out = self.opts, self.state, self.out
        index = SpillIndex.read(out / SPILL_DIR, state.spills, opts.share_prefix)
        for k, (split, rows) in enumerate(shard_plan(index, opts)):
            if k < len(state.shards):  # written before a resume
                continue
            with index.gather(rows) as g:
                packed = assemble(rows, g.ids, g.trained, g.trace_ids)
            info = write_shard(out / shard_name(split, sum(i.split == split for i in state.shards)), split, packed)
            state.shards.append(info)
            state.counts[split].add_shard(info)
            write_json(out / PROGRESS, state.to_json())
        manifest = {
            "format": FORMAT,
            "tokenizer": self.tok_info,
            "chat_template_hash": self.masker.chat_template_hash,
            "seq_len": opts.seq_len,
            "row_len": opts.row_len,
            "share_prefix": opts.share_prefix,
            "options": self.options_json,
            "counts": {
                "rows_read": state.tally.read,
                "rows_rejected": len(state.tally.rejected),
                "rows_dropped": sum("turn" not in d for d in state.dropped),  # listed in dropped.jsonl, with the turns not trained
                "shortest_system_prompt_tokens": state.min_system,
                **{s: state.counts[s].summary(opts.row_len) for s in PARTITIONS},
            },
            "shards": [asdict(s) for s in state.shards],
        }
        if state.dropped:
            with atomic_path(out / DROPPED) as tmp, open(tmp, "wb") as f:
                for d in state.dropped:
                    f.write(orjson.dumps(d, option=orjson.OPT_APPEND_NEWLINE))
        write_json(out / MANIFEST, manifest)
        shutil.rmtree(out / SPILL_DIR, ignore_errors=True)
        (out / PROGRESS).unlink()
        empty = "" if state.counts["train"].sequences else _nothing_written(out, state, opts)
        return PackResult(manifest, state.tally, self.resumed_after, empty)

    def __exit__(self, kind, e, tb) -> None:
        try:
            if isinstance(e, RowError) and self.on_error == "fail":
                _discard(self.out, self.state)
        finally:
            self._lock.__exit__(None, None, None)


def pack_to_dir(
    splits: Sequence[Split],
    out_dir: str | os.PathLike,
    options: PackOptions | None = None,
    *,
    workers: int | Engine = 1,
    on_error: str = "skip",
    restart: bool = False,
    view: View | None = None,
) -> PackResult:
    """Mask, pack and write every row of `splits` (those `view` keeps, given one) into
    `out_dir`; resume an unfinished run there with the same inputs, view and options unless
    `restart` (the splits it spilled are not read again)."""
    with PackJob(out_dir, options, plan_key(splits, view), on_error=on_error, restart=restart) as job:
        run_jobs(splits, [job], view=view, workers=workers, on_error=on_error, progress="pack")
        return job.finish()


def _nothing_written(out: Path, state: _State, opts: PackOptions) -> str:
    """Why a run wrote no training data, and what would fit."""
    msg = f"no training data written to {out}: "
    if not state.tally.parsed:
        return msg + f"none of the {state.tally.read:,} rows read could be used (see the rejects)"
    msg += f"all {sum('turn' not in d for d in state.dropped):,} traces were dropped (each listed with the reason in {out / DROPPED})"
    if state.min_system and state.min_system + 2 > opts.seq_len:
        msg += f"; the shortest system prompt alone is {state.min_system:,} tokens, so --seq-len must be well above that"
    return msg


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


def _start(out: Path, fingerprint: str, restart: bool) -> tuple[_State, bool]:
    """The state to continue from, and whether an unfinished run left it; clears what an
    earlier, different or finished run left."""
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
    keep = {s.file for s in state.shards} if state else set()
    _clear(out, keep, set(state.spills) if state else set())
    resumed = state is not None
    state = state or _State(fingerprint)
    write_json(progress, state.to_json())
    return state, resumed


def _ours(name: str) -> bool:
    """A file a pack run writes (or atomic_path's temporary file of one, `.NAME.PID.XXXX.tmp`)."""
    if name.startswith(".") and name.endswith(".tmp"):
        name = name[1:].rsplit(".", 3)[0]
    return name in _OURS or name in (TOKENIZER_DIR, SPILL_DIR) or bool(_SHARD_FILE.fullmatch(name))


def _check_dir(out: Path) -> None:
    """Refuse an output directory holding anything but what a pack run writes, or such files
    without a manifest or progress file of a pack run beside them: pack never deletes a user's
    files."""
    names = sorted(p.name for p in out.iterdir() if p.name != LOCK)
    others = [n for n in names if not _ours(n)]
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise PackError(f"{out} holds files streamproc pack did not write ({shown}); use an empty or new directory")
    if names and not {MANIFEST, PROGRESS} & set(names):
        raise PackError(f"{out} holds {', '.join(names[:5])} but no {MANIFEST} or {PROGRESS} of a pack run; use an empty or new directory")


def _clear(out: Path, keep: set[str], spills: set[str | None]) -> None:
    """Remove what an earlier, different or finished run left (all of it checked as ours by
    _check_dir): temporary files, an old manifest, unrecorded shards, an old dropped list, and
    spill files no checkpoint recorded (a killed worker's, or a split after the last checkpoint)."""
    for p in out.iterdir():
        if p.name not in keep and p.name not in (PROGRESS, TOKENIZER_DIR, LOCK, SPILL_DIR):
            p.unlink()
    if (out / SPILL_DIR).is_dir():
        for p in (out / SPILL_DIR).iterdir():
            if p.name not in spills:
                p.unlink()


def _discard(out: Path, state: _State) -> None:
    """Remove every file this run and the runs it resumed wrote: a failed run leaves no output."""
    for info in state.shards:
        (out / info.file).unlink(missing_ok=True)
    for name in (PROGRESS, MANIFEST, DROPPED):
        (out / name).unlink(missing_ok=True)
    for name in (TOKENIZER_DIR, SPILL_DIR):
        if (out / name).is_dir():
            shutil.rmtree(out / name)


def shard_plan(index: SpillIndex, opts: PackOptions) -> list[tuple[str, list[RowPlan]]]:
    """The output shards in writing order, each (split, its rows of global sequence indices).

    Sequences are packed together in groups of consecutive input splits that reach
    `buffer_size` sequences (None: one group of all); within a group, train rows then eval rows,
    cut into shards of `shard_rows` (the last of each may be shorter)."""
    per_file = np.bincount(index.file_of, minlength=len(index.files))
    groups, start, held = [], 0, 0
    for k, n in enumerate(per_file):
        held += int(n)
        if opts.buffer_size is not None and held >= opts.buffer_size:
            groups.append((start, k + 1))
            start, held = k + 1, 0
    if start < len(per_file) or not groups:
        groups.append((start, len(per_file)))
    bounds = np.concatenate([[0], np.cumsum(per_file)])
    shards = []
    for a, b in groups:
        lo, hi = int(bounds[a]), int(bounds[b])
        for k, s in enumerate(PARTITIONS):
            idx = lo + np.flatnonzero(index.split[lo:hi] == k)
            local = plan_rows(index.lengths[idx], [index.boundaries[i] for i in idx], [index.prefix_keys[i] for i in idx], opts.row_len)
            rows = [RowPlan(int(idx[r.prefix_of]) if r.prefix_of >= 0 else -1, r.prefix_len, [int(idx[i]) for i in r.seqs]) for r in local]
            shards += [(s, rows[i : i + opts.shard_rows]) for i in range(0, len(rows), opts.shard_rows)]
    return shards
