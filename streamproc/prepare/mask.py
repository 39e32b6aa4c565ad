"""Token ids and loss labels for whole conversations, exactly as the tokenizer would write them.

A conversation is rendered once through the chat template (chat.render), which also gives the
character span of every assistant turn. The text is then tokenized piece by piece: the fast
tokenizer cuts added tokens out first and tokenizes the text between them independently, so
the concatenation of the pieces' ids *is* the tokenization of the whole text. Pieces repeat a
lot (the ~26,000-character system prompt is in every row, `\\n` sits between every two turns)
and are cached, which is why masking is faster than encoding everything. Labels come from the
spans and the tokens' character offsets with numpy: a token is trained when it starts inside a
trainable span. The exactness tests compare every id with `apply_chat_template` on real traces.

A conversation that does not fit `max_len`, or whose template rewrites history (Qwen3 drops earlier
reasoning), becomes samples (prepare.plan): each holds what the model sees when it acts at its
trained turns, and is rendered and tokenized the same way (tests/test_samples_oracle.py).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np

from streamproc.parse.parser import parse_turn
from streamproc.parse.turns import TOOL_CALL
from streamproc.prepare.chat import (
    TOOL_FALLBACK,
    Message,
    Rendered,
    TemplateError,
    check_faithful,
    conversation,
    extends,
    inspect_template,
    render,
    render_sample,
    render_text,
    render_turn,
    template_of,
    to_messages,
)
from streamproc.prepare.pack import IGNORE
from streamproc.prepare.plan import Plan, Sample, plan_samples
from streamproc.records import BadRow, Location, Row, RowError, Trace
from streamproc.prepare.tokenizer import DEFAULT_TOKENIZER, DEFAULT_TOKENIZER_NAME, cached_tokenizer, load_tokenizer  # noqa: F401  (the tokenizer API, used from here)

CHUNK_CHARS = 1 << 18
"""Longest text the tokenizer is given at once (see Masker._encode_pieces)."""
_BATCH_CHARS = 4 * CHUNK_CHARS
"""Text tokenized in one call: the tokenizer spreads a call over its threads."""
SCOPES = ("all", "last")
OVERFLOWS = ("split", "truncate", "drop")


def tokenizer_hash(tokenizer) -> str:
    """sha256 of the tokenizer.json content (added tokens included), as `tokenizers` writes it.
    Compare hashes of tokenizers loaded alike: transformers rewrites parts of some tokenizers
    (offset trimming, the decoder) that do not change ids."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()


def chat_template_hash(template: str) -> str:
    return hashlib.sha256(template.encode()).hexdigest()


@dataclass(slots=True)
class MaskOptions:
    scope: str = "all"  # all assistant turns, or the last one only
    train_reasoning: bool = True  # False: <think> blocks (tags included) are out of the loss
    train_tool_calls: bool = True  # False: assistant turns with a tool call are out of the loss
    overflow: str = "split"  # split | truncate | drop, for conversations longer than max_len
    max_len: int | None = None  # None: no limit
    chat_template: str = "auto"  # auto (the tokenizer's, refused if unfaithful) | chatml | Jinja text
    tool_fallback: str = TOOL_FALLBACK  # prefix of tool turns sent as user messages
    cache_chars: int = 16 << 20  # text held in the piece cache (about 70 MB of ids, offsets and text when full)

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"scope {self.scope!r}: expected one of {', '.join(SCOPES)}")
        if self.overflow not in OVERFLOWS:
            raise ValueError(f"overflow {self.overflow!r}: expected one of {', '.join(OVERFLOWS)}")
        if self.max_len is not None and self.max_len < 1:
            raise ValueError(f"max_len {self.max_len}: must be at least 1")


@dataclass(slots=True)
class MaskedSeq:
    trace_id: str
    input_ids: np.ndarray  # int32
    labels: np.ndarray  # int32, -100 or the input id at the same position (unshifted)
    prefix_len: int = 0  # leading ids that are the rendered system turn (untrained), 0 if none
    # Token offsets, increasing, where whole untrained turns at its head end (the system turn, the
    # task, earlier turns other samples of its trace also hold): the prefixes a row may share.
    boundaries: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))


@dataclass(slots=True)
class MaskResult:
    seqs: list[MaskedSeq]
    tokens_cut: int = 0  # tokens tokenized but not written (truncated, in a dropped sequence, or in turns no sample holds)
    dropped: bool = False  # nothing of this trace was written
    samples: int = 0  # sequences written (more than one for a long conversation, or a template that rewrites history)
    reason: str = ""  # why it was dropped
    system_tokens: int = 0  # tokens of its system turn (0: none), what any sequence of it needs at least
    turns_trained: int = 0  # assistant turns with trained tokens
    turns_shortened: int = 0  # of those, turns whose sample lacks some earlier message of the conversation
    context_repeated: int = 0  # tokens before the first trained turn of every sample but the first
    untrained: list[tuple[int, str]] = field(default_factory=list)  # (row turn, why): turns the options train that no sample could


class _PieceCache:
    """LRU map text piece -> (ids, start offsets), bounded by the characters it holds."""

    def __init__(self, max_chars: int):
        self.max_chars = max_chars
        self.chars = 0
        self.d: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def get(self, piece: str):
        hit = self.d.get(piece)
        if hit is not None:
            self.d.move_to_end(piece)
        return hit

    def put(self, piece: str, value: tuple[np.ndarray, np.ndarray]) -> None:
        self.d[piece] = value
        self.chars += len(piece)
        while self.chars > self.max_chars and self.d:
            old, _ = self.d.popitem(last=False)
            self.chars -= len(old)


def _arrays(enc) -> tuple[np.ndarray, np.ndarray]:
    return np.array(enc.ids, np.int32), np.array([o[0] for o in enc.offsets], np.int32)


def _next_cut(text: str, start: int) -> int:
    """The first place at or after `start` between a letter and a space followed by a letter;
    -1 if there is none."""
    for m in _CUT.finditer(text, max(start, 1)):
        i = m.start()
        if text[i - 1].isalpha() and text[i + 1].isalpha():
            return i
    return -1


_CUT = re.compile(r" (?=\w)")


def _token_bytes(backend) -> np.ndarray | None:
    """Bytes of text per token id, for byte-level BPE (each vocab character stands for one byte)."""
    import tokenizers

    if not isinstance(backend.decoder, tokenizers.decoders.ByteLevel):
        return None
    vocab = backend.get_vocab(with_added_tokens=True)
    ids = np.fromiter(vocab.values(), np.int64, len(vocab))
    out = np.zeros(int(ids.max()) + 1, np.int64)
    out[ids] = np.fromiter(map(len, vocab), np.int64, len(vocab))
    return out


def _char_starts(piece: str, ids: np.ndarray, nbytes: np.ndarray) -> np.ndarray | None:
    """Start character of each token from the tokens' byte lengths, or None when they do not add
    up to the piece (a normalizer or prefix space changed the text): then offsets are asked for.
    A token that starts inside a multi-byte character starts at that character, as offsets say."""
    raw = piece.encode()
    lengths = nbytes[ids]
    if int(lengths.sum()) != len(raw):
        return None
    starts = np.zeros(len(ids), np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    if len(raw) != len(piece):
        b = np.frombuffer(raw, np.uint8)
        starts = (np.cumsum((b & 0xC0) != 0x80) - 1)[starts]
    return starts.astype(np.int32)


_MASKERS: dict[tuple[str, str], "Masker"] = {}


def cached_masker(tokenizer: str | None, options: MaskOptions | None = None) -> "Masker":
    """The Masker of a tokenizer (a name or directory, as load_tokenizer takes) and options,
    built once per process over the cached tokenizer: what pack's workers, its parent and
    curation's token features share."""
    options = options or MaskOptions()
    key = (str(tokenizer or "default"), repr(options))
    if key not in _MASKERS:
        _MASKERS[key] = Masker(cached_tokenizer(tokenizer), options)
    return _MASKERS[key]


class Masker:
    """Masks rows for one tokenizer and MaskOptions. Picklable (the cache is not sent along)."""

    def __init__(self, tokenizer, options: MaskOptions | None = None):
        if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = cached_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        self.options = options or MaskOptions()
        self.template = template_of(tokenizer, self.options.chat_template)
        self.info = inspect_template(tokenizer, self.template)
        check_faithful(self.info, tokenizer)
        self._backend = tokenizer.backend_tokenizer
        added = tokenizer.added_tokens_decoder
        self._added = {t.content: i for i, t in added.items()}
        self._special = re.compile("(" + "|".join(re.escape(t) for t in sorted(self._added, key=len, reverse=True)) + ")")
        self._end_token = re.compile("|".join(re.escape(t) for t in sorted(self._added, key=len, reverse=True)) or r"(?!)")
        self._cache = _PieceCache(self.options.cache_chars)
        self._system_text: dict[tuple[str, str], str | None] = {}  # (system content, tools) -> that turn rendered alone
        self._nbytes = _token_bytes(self._backend)
        # A Unicode normal form is checked with unicodedata's quick check, not by normalizing.
        norm = self._backend.normalizer
        self._form = type(norm).__name__ if type(norm).__name__ in ("NFC", "NFD", "NFKC", "NFKD") else None
        # Whitespace-absorbing added tokens make pieces depend on their neighbours.
        self._piecewise = bool(self._added) and not any(t.lstrip or t.rstrip or t.single_word for t in added.values())
        self._chunked = True  # long pieces tokenized in chunks, if the probe agrees
        self._chunked = self._chunks_agree()
        if self._piecewise and not self._pieces_agree():
            self._piecewise = False

    def _pieces_agree(self) -> bool:
        """Piece-wise ids equal whole-text ids on a probe that mixes every kind of text boundary."""
        probe = [("system", " sys\n\n  x"), ("human", "  12345 数字 😀\n"), ("gpt", "<think>\n r\n</think>\n  ok\n<tool_call>\n{}\n</tool_call>"), ("tool", "<tool_response>\n{\"a\": 1}\n</tool_response>"), ("gpt", "\n\ndone ")]
        text = render_text(self.tokenizer, to_messages(probe, self.info.tool_mode, self.options.tool_fallback), self.template)
        ids, starts = self.encode(text)
        self.clear_cache()
        return (ids.tolist(), starts.tolist()) == tuple(map(list, _arrays(self._backend.encode(text, add_special_tokens=False))))

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = _PieceCache(self.options.cache_chars)  # rebuilt where it is used
        state["_system_text"] = {}
        return state

    def clear_cache(self) -> None:
        self._cache = _PieceCache(self.options.cache_chars)

    @property
    def tokenizer_hash(self) -> str:
        return tokenizer_hash(self.tokenizer)

    @property
    def chat_template_hash(self) -> str:
        return chat_template_hash(self.template)

    # ------------------------------------------------------------------------- messages

    def messages(self, row: Row | Trace) -> list[Message]:
        """The chat messages this masker renders for a row (chat.conversation)."""
        return conversation(row, self.info, self.options.tool_fallback)

    # ------------------------------------------------------------------------- tokens

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of `text` (no special tokens added) and each token's start character."""
        if not self._piecewise:
            return _arrays(self._backend.encode(text, add_special_tokens=False))
        parts = self._special.split(text)  # text, added token, text, ..., text
        self._warm(parts[::2])
        cache = self._cache
        ids, starts, pos = [], [], 0
        for k, p in enumerate(parts):
            if k % 2:
                ids.append(np.array([self._added[p]], np.int32))
                starts.append(np.array([pos], np.int32))
            elif p:
                got = cache.d.get(p) or self._encode_pieces([p])[0]
                ids.append(got[0])
                starts.append(got[1] + pos)
            pos += len(p)
        if not ids:
            return np.zeros(0, np.int32), np.zeros(0, np.int32)
        return np.concatenate(ids), np.concatenate(starts)

    def token_boundary(self, text: str, x: int) -> bool:
        """Whether the ids of `text` are those of text[:x] followed by those of text[x:]: the cut
        is at an added token, or the text piece around it tokenizes the same cut there."""
        if not self._piecewise:
            return self.encode(text)[0].tolist() == np.concatenate([self.encode(text[:x])[0], self.encode(text[x:])[0]]).tolist()
        left, right = self._special.split(text[:x])[-1], self._special.split(text[x:], maxsplit=1)[0]
        if not left or not right:
            return True
        piece = left + right
        return self.encode(piece)[0].tolist() == np.concatenate([self.encode(left)[0], self.encode(right)[0]]).tolist()

    def encode_cut(self, text: str, cuts: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Ids and start characters of text[:c0], text[c0:c1], ... each tokenized on its own."""
        if not cuts:
            return self.encode(text)
        bounds = [0, *cuts, len(text)]
        parts = [self.encode(text[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] + a for p, a in zip(parts, bounds)])

    def _warm(self, pieces: Iterable[str]) -> None:
        """Tokenize the pieces the cache lacks, all in one batch (the tokenizer spreads a batch
        over its threads), each once."""
        cache = self._cache
        misses = list({p: None for p in pieces if p and cache.get(p) is None})
        for p, got in zip(misses, self._encode_pieces(misses) if misses else ()):
            cache.put(p, got)

    def _labels(self, r: Rendered, ids: np.ndarray, starts: np.ndarray, train: set[int]) -> np.ndarray:
        bounds = []
        for sp in r.spans:
            if sp.turn not in train:
                continue
            a = sp.start
            if not self.options.train_reasoning:
                for r0, r1 in sp.reasoning:
                    bounds.append((a, r0))
                    a = r1
            bounds.append((a, sp.end))
        depth = np.zeros(len(ids) + 1, np.int32)
        if bounds:
            idx = np.searchsorted(starts, np.asarray(bounds, np.int64).ravel()).reshape(-1, 2)
            np.add.at(depth, idx[:, 0], 1)
            np.add.at(depth, idx[:, 1], -1)
        return np.where(np.cumsum(depth[:-1]) > 0, ids, IGNORE).astype(np.int32)

    def _encode_pieces(self, pieces: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Ids and start characters of text pieces holding no added token. A long piece (a
        20 MB tool output) is cut into chunks at pre-token boundaries and tokenized a few chunks
        at a time: the tokenizer holds some 160 bytes per character while it works, and the ids
        are the same (see _cuts). Byte-level tokenizers skip the costly offsets: starts follow
        from the tokens' byte lengths."""
        chunks = [(k, a, b) for k, p in enumerate(pieces) for a, b in self._cuts(p)]
        parts: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in pieces]
        i = 0
        while i < len(chunks):
            j, chars = i, 0  # chunks [i, j) go together: at most _BATCH_CHARS, one at least
            while j < len(chunks) and (j == i or chars + chunks[j][2] - chunks[j][1] <= _BATCH_CHARS):
                chars += chunks[j][2] - chunks[j][1]
                j += 1
            texts = [pieces[k] if b - a == len(pieces[k]) else pieces[k][a:b] for k, a, b in chunks[i:j]]
            for (k, a, _), (ids, starts) in zip(chunks[i:j], self._encode_chunks(texts)):
                parts[k].append((ids, starts + a if a else starts))
            i = j
        return [got[0] if len(got) == 1 else (np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got])) for got in parts]

    def _encode_chunks(self, pieces: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        if self._nbytes is None:
            return [_arrays(e) for e in self._backend.encode_batch(pieces, add_special_tokens=False)]
        out = []
        norm = self._backend.normalizer
        for p, enc in zip(pieces, self._backend.encode_batch_fast(pieces, add_special_tokens=False)):
            ids = np.array(enc.ids, np.int32)
            as_is = norm is None or (unicodedata.is_normalized(self._form, p) if self._form else norm.normalize_str(p) == p)
            starts = _char_starts(p, ids, self._nbytes) if as_is else None
            out.append((ids, starts) if starts is not None else _arrays(self._backend.encode(p, add_special_tokens=False)))
        return out

    def _cuts(self, piece: str, size: int = 0) -> list[tuple[int, int]]:
        """[a, b) spans of a piece, about `size` characters each (CHUNK_CHARS), cut where every
        regex pre-tokenizer in use (GPT-2's, Llama 3's, Qwen's) starts a new pre-token: between
        a letter and a space followed by a letter (a letter run ends there, and ` word` starts a
        new one; no lookahead sees past the cut). BPE never merges across pre-tokens, so the
        chunks' ids are the piece's ids. Whether this tokenizer agrees is checked once, on a
        probe (_chunks_agree); a piece with no such place is tokenized whole."""
        size = size or CHUNK_CHARS
        if len(piece) <= size or not self._chunked:
            return [(0, len(piece))]
        out, a = [], 0
        while len(piece) - a > size:
            b = _next_cut(piece, a + size)
            if b < 0:
                break
            out.append((a, b))
            a = b
        out.append((a, len(piece)))
        return out

    def _chunks_agree(self) -> bool:
        """Chunks cut at every possible place give the ids and starts of the whole text."""
        probe = "Hello world  x\n\nnew line é é 数字 😀 12 ab\n  indented\n{\"k\": \"v w\"}\tend's it'S  a\u0301 b ² c Ⅻ d\r\nz" * 3
        whole = _arrays(self._backend.encode(probe, add_special_tokens=False))
        spans = self._cuts(probe, size=1)
        got = self._encode_chunks([probe[a:b] for a, b in spans])
        ids = np.concatenate([g[0] for g in got])
        starts = np.concatenate([g[1] + a for g, (a, _) in zip(got, spans)])
        return len(spans) > 10 and ids.tolist() == whole[0].tolist() and starts.tolist() == whole[1].tolist()

    def _system_turn(self, msgs: list[Message]) -> str | None:
        """The system message rendered alone (through its end-of-turn text), the text every
        sequence of this conversation begins with; None without a system message."""
        if not msgs or msgs[0].role != "system":
            return None
        key = (msgs[0].content, msgs[0].tools)  # tools=: the template writes them into the system turn
        if key not in self._system_text:
            if len(self._system_text) > 64:  # a handful of distinct prompts per dataset
                self._system_text.clear()
            try:
                self._system_text[key] = render(self.tokenizer, msgs[:1], self.info).text
            except TemplateError:
                self._system_text[key] = None
        return self._system_text[key]

    # ------------------------------------------------------------------------- rows

    def mask(self, row: Row | Trace) -> MaskResult:
        """Input ids and labels for one row. A row the template cannot render raises RowError."""
        ((_, res),) = self.mask_many([row])
        if isinstance(res, RowError):
            raise res
        return res

    def mask_many(self, rows: Iterable[Row | Trace], batch: int = 64) -> Iterator[tuple[Row | Trace, MaskResult | RowError]]:
        """(row, its MaskResult, or the RowError of a row the template cannot render), in order.
        Rows are rendered `batch` at a time and the text pieces of the whole batch that the
        cache lacks are tokenized together, which keeps the tokenizer's threads busy."""
        it = iter(rows)
        while chunk := list(itertools.islice(it, batch)):
            done = []
            for row in chunk:
                msgs = self.messages(row)
                whole: Rendered | TemplateError | None = None  # None: rendered turn by turn
                if self.info.verbatim:
                    try:
                        whole = render(self.tokenizer, msgs, self.info)
                    except TemplateError as e:
                        whole = e
                done.append((row, msgs, whole))
            if self._piecewise:
                self._warm(p for *_, r in done if isinstance(r, Rendered) for p in self._special.split(r.text)[::2])
            for row, msgs, whole in done:
                try:
                    if isinstance(whole, Rendered):
                        res = self._mask_whole(row.id, msgs, whole)
                    elif whole is None or self.info.per_turn:  # a row this template rewrites: turn by turn
                        res = self._mask_turns(row.id, msgs)
                    else:
                        raise whole
                    yield row, res
                    continue
                except TemplateError as e:
                    err = e
                loc = getattr(row, "loc", None) or Location("<memory>", 0)
                yield row, RowError(BadRow(loc, "conversations", f"trace {row.id}: {err}"))

    def _trained(self, msgs: list[Message]) -> list[int]:
        """Indices of the assistant messages the options train."""
        out = [i for i, m in enumerate(msgs) if m.role == "assistant" and (self.options.train_tool_calls or not (m.tool_calls or _calls_tool(m.content)))]
        return out[-1:] if self.options.scope == "last" else out

    def _mask_whole(self, tid: str, msgs: list[Message], whole: Rendered) -> MaskResult:
        """A template that keeps every turn verbatim: the conversation rendered once is one sample
        when it fits; a longer one is planned into samples, each rendered on its own."""
        ids, starts = self.encode(whole.text)
        trained = self._trained(msgs)
        o = self.options
        if o.max_len is None or len(ids) <= o.max_len or o.overflow != "split":
            return self._result(tid, msgs, [(ids, starts, whole)], trained, Plan([Sample(tuple(range(len(msgs))), tuple(trained))]))
        # Tokens up to the end of each message's content (its header and the previous end of turn
        # included): the plan's estimates, which each sample's exact render then checks.
        cost = np.diff(np.searchsorted(starts, np.asarray(whole.ends), side="right"), prepend=0)
        memo: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray, Rendered]] = {}

        def build(s: Sample):
            if s.messages not in memo:
                r = render(self.tokenizer, [msgs[i] for i in s.messages], self.info)
                memo[s.messages] = (*self.encode(r.text), r)
            return memo[s.messages]

        plan = plan_samples(cost.tolist(), _turn_starts(msgs), _head(msgs, trained), trained, [True] * len(trained), o.max_len, lambda s: len(build(s)[0]))
        return self._result(tid, msgs, [build(s) for s in plan.samples], trained, plan, cost.tolist())

    def _mask_turns(self, tid: str, msgs: list[Message]) -> MaskResult:
        """A template that rewrites history (Qwen3 drops the reasoning of turns before the last
        user message): assistant turn k is trained after the template's render of messages[:k]
        with the generation prompt, as the model sees it when it acts; consecutive turns whose
        renders extend one another share a sample."""
        trained = self._trained(msgs)
        o = self.options
        turns = {t: render_turn(self.tokenizer, msgs, t, self.template) for t in trained}
        # What the model writes is tokenized after what it sees: where the generation prompt does
        # not end on a token boundary (Qwen3.5's `<think>\n` before `\n</think>`), the turn's ids
        # are those of its text alone, and no later turn can share its sample.
        whole = {t: self.token_boundary(r.through, len(r.context)) for t, r in turns.items()}
        joins = [
            k > 0 and whole[trained[k - 1]] and extends(turns[t], turns[trained[k - 1]]) and self.token_boundary(turns[t].context, len(turns[trained[k - 1]].through))
            for k, t in enumerate(trained)
        ]
        memo: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray, Rendered]] = {}

        def build(s: Sample):
            if s.messages not in memo:
                if s.messages == tuple(range(len(s.messages))):  # all history: the renders above
                    parts = [(msgs[t], turns[t]) for t in s.trained]
                    cuts = [len(turns[t].context) for t in s.trained if not whole[t]]
                else:
                    sub = [msgs[i] for i in s.messages]
                    parts = [(msgs[t], render_turn(self.tokenizer, sub, s.messages.index(t), self.template)) for t in s.trained]
                    cuts = [len(t.context) for _, t in parts if not self.token_boundary(t.through, len(t.context))]
                r = render_sample(parts, self._end_token)
                memo[s.messages] = (*self.encode_cut(r.text, cuts), r)
            return memo[s.messages]

        starts, head = _turn_starts(msgs), _head(msgs, trained)
        plan = plan_samples([0] * len(msgs), starts, head, trained, joins, None)  # all history
        if o.max_len is None or o.overflow != "split" or all(len(build(s)[0]) <= o.max_len for s in plan.samples):
            return self._result(tid, msgs, [build(s) for s in plan.samples], trained, plan)
        _, last_starts, last = build(plan.samples[-1])  # holds every message up to the last trained turn
        cost = _costs(msgs, last.text, last_starts)
        plan = plan_samples(cost, starts, head, trained, joins, o.max_len, lambda s: len(build(s)[0]))
        return self._result(tid, msgs, [build(s) for s in plan.samples], trained, plan, cost)

    def _result(self, tid: str, msgs: list[Message], built: list[tuple[np.ndarray, np.ndarray, Rendered]], trained: list[int], plan: Plan, cost: list[int] | None = None) -> MaskResult:
        """The planned samples as sequences, over-long ones truncated or the trace dropped per
        --overflow; a sequence with no trained token is not written (it counts as cut)."""
        o = self.options
        system = self._system_turn(msgs)
        res = MaskResult([], untrained=[(msgs[t].turn, why) for t, why in plan.untrained])
        if system is not None and not all(r.text.startswith(system) for *_, r in built):
            system = None
        res.system_tokens = len(self.encode(system)[0]) if system is not None else 0
        total = sum(len(ids) for ids, *_ in built)
        if o.max_len is not None and o.overflow == "drop" and any(len(ids) > o.max_len for ids, *_ in built):
            longest = max(len(ids) for ids, *_ in built)
            return _dropped(res, total, f"{longest} tokens, longer than seq_len {o.max_len} (overflow drop)")
        if cost is not None:  # messages after the head that no sample holds
            held = {i for s in plan.samples for i in s.messages}
            res.tokens_cut = sum(c for i, c in enumerate(cost) if i not in held and i >= _head(msgs, trained))
        heads = self._shared_heads(msgs, plan.samples, _head(msgs, trained))
        for n, ((ids, starts, r), sample) in enumerate(zip(built, plan.samples)):
            turn_ids = {msgs[t].turn for t in sample.trained}
            labels = self._labels(r, ids, starts, turn_ids)
            if o.max_len is not None and len(ids) > o.max_len:
                res.tokens_cut += len(ids) - o.max_len
                ids, labels, starts = ids[: o.max_len], labels[: o.max_len], starts[: o.max_len]
            if not (labels != IGNORE).any():
                res.tokens_cut += len(ids)
                continue
            ends = {_prefix_len(t, ids, starts, labels) for t in heads[n] if r.text.startswith(t)} - {0}
            seq = MaskedSeq(tid, ids, labels, _prefix_len(system, ids, starts, labels), np.asarray(sorted(ends), np.int32))
            firsts = [int(np.searchsorted(starts, sp.start)) for sp in r.spans if sp.turn in turn_ids]
            res.turns_trained += sum(f < len(ids) for f in firsts)
            res.turns_shortened += sum(f < len(ids) for f in firsts) if sample.shortened else 0
            if n and firsts:
                res.context_repeated += firsts[0]
            res.seqs.append(seq)
        res.samples = len(res.seqs)
        if not res.seqs:
            why = plan.untrained[0][1] if plan.untrained else "no trained token in what fits (no assistant turn, or none the options train)"
            return _dropped(res, total if built else sum(cost or ()), why)
        return res

    def _shared_heads(self, msgs: list[Message], samples: list[Sample], head: int) -> list[list[str]]:
        """For each sample, the texts of the conversation's first i messages rendered alone for
        every i that may end a prefix it shares: the system turn, the head (system and task), and
        the longest run of whole turns it holds from the start together with another sample, all
        before its first trained turn. The caller keeps those its text begins with."""
        starts = _turn_starts(msgs)
        run = [next((k for k, i in enumerate(s.messages) if i != k), len(s.messages)) for s in samples]
        first = [s.trained[0] if s.trained else len(msgs) for s in samples]
        texts: dict[int, str | None] = {}

        def text(i: int) -> str | None:
            if i not in texts:
                if i == 1 and msgs[0].role == "system":
                    texts[i] = self._system_turn(msgs)
                else:
                    try:
                        texts[i] = render_text(self.tokenizer, msgs[:i], self.template)
                    except Exception:  # a template that refuses a conversation cut there (roles must alternate)
                        texts[i] = None
            return texts[i]

        out = []
        for n in range(len(samples)):
            counts = {1, head} | {min(run[n], run[m], first[n], first[m]) for m in range(len(samples)) if m != n}
            whole = set()
            for c in counts:
                c = min(c, run[n], first[n])
                while c > 0 and c < len(msgs) and starts[c] != c:  # back to a whole turn's start
                    c -= 1
                if c > 0:
                    whole.add(c)
            out.append([t for c in sorted(whole) if (t := text(c)) is not None])
        return out


def _calls_tool(content: str) -> bool:
    return any(s.kind == TOOL_CALL for s in parse_turn("assistant", content).segments)


def _costs(msgs: list[Message], text: str, starts: np.ndarray) -> list[int]:
    """Estimated tokens of each message in a render `text` (with token start characters
    `starts`): up to the end of its content, found in order; an assistant turn the template
    reformatted is found by the end of its content, and a message not found costs nothing (the
    next one found carries it). The plan checks every sample exactly."""
    ends, pos = [], 0
    for m in msgs:
        tail = m.content[-64:]
        j = text.find(tail, pos) if tail else -1
        if j >= 0:
            pos = j + len(tail)
        ends.append(pos)
    return np.diff(np.searchsorted(starts, np.asarray(ends), side="right"), prepend=0).tolist()


def _turn_starts(msgs: list[Message]) -> list[int]:
    """For each message, the index of the first message of its row turn (a tool turn unwrapped
    into one message per response is one whole turn)."""
    out = []
    for i, m in enumerate(msgs):
        out.append(out[-1] if i and msgs[i - 1].turn == m.turn else i)
    return out


def _head(msgs: list[Message], trained: list[int]) -> int:
    """Messages every sample opens with: the system prompt and the first user message (the task),
    when the task comes before the first trained turn."""
    head = 1 if msgs and msgs[0].role == "system" else 0
    task = next((i for i, m in enumerate(msgs) if m.role == "user"), None)
    if task is not None and (not trained or task < trained[0]):
        head = task + 1
    return head


def _dropped(res: MaskResult, tokens: int, why: str) -> MaskResult:
    res.seqs, res.samples, res.dropped, res.reason = [], 0, True, why
    res.tokens_cut, res.turns_trained, res.turns_shortened, res.context_repeated = tokens, 0, 0, 0
    return res


def _prefix_len(system: str | None, ids: np.ndarray, starts: np.ndarray, labels: np.ndarray) -> int:
    """Tokens of the system turn at the head of a sequence: its text must end on a token boundary
    (so these ids are the tokenizer's own for it in every sequence) and carry no loss; 0
    otherwise, or when nothing follows it."""
    if system is None:
        return 0
    p = int(np.searchsorted(starts, len(system)))
    # The token after it trains nothing either: it would be predicted at the prefix's last
    # position, which all remainders of a row share.
    if p >= len(ids) or starts[p] != len(system) or (labels[: p + 1] != IGNORE).any():
        return 0
    return p
