"""Token ids and loss labels for whole conversations, exactly as the tokenizer would write them.

A conversation is rendered once through the chat template (chat.render), which also gives the
character span of every assistant turn. The text is then tokenized piece by piece: the fast
tokenizer cuts added tokens out first and tokenizes the text between them independently, so
the concatenation of the pieces' ids *is* the tokenization of the whole text. Pieces repeat a
lot (the ~26,000-character system prompt is in every row, `\\n` sits between every two turns)
and are cached, which is why masking is faster than encoding everything. Labels come from the
spans and the tokens' character offsets with numpy: a token is trained when it starts inside a
trainable span. The exactness tests compare every id with `apply_chat_template` on real traces.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from streamproc.prepare.chat import (
    TOOL_FALLBACK,
    Message,
    Rendered,
    TemplateError,
    check_faithful,
    conversation,
    inspect_template,
    render,
    template_of,
    to_messages,
)
from streamproc.prepare.pack import IGNORE
from streamproc.records import BadRow, Location, Row, RowError, Trace
from streamproc.prepare.tokenizer import Tokenizer, load

DEFAULT_TOKENIZER = Path(__file__).parents[1] / "data" / "tokenizers" / "qwen2.5-0.5b-instruct"
DEFAULT_TOKENIZER_NAME = "Qwen/Qwen2.5-0.5B-Instruct"
CHUNK_CHARS = 1 << 18
"""Longest text the tokenizer is given at once (see Masker._encode_pieces)."""
_BATCH_CHARS = 4 * CHUNK_CHARS
"""Text tokenized in one call: the tokenizer spreads a call over its threads."""
SCOPES = ("all", "last")
OVERFLOWS = ("split", "truncate", "drop")


def load_tokenizer(name_or_dir: str | os.PathLike | None = None) -> Tokenizer:
    """A fast tokenizer, read with the `tokenizers` library (no transformers, no torch): the
    shipped Qwen2.5-0.5B-Instruct one (offline) for None, `default` or its Hub id; otherwise any
    local directory or Hub id. TokenizerError names a path or id that cannot be loaded."""
    if name_or_dir in (None, "", "default", DEFAULT_TOKENIZER_NAME):
        name_or_dir = DEFAULT_TOKENIZER
    return load(name_or_dir)


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
    cache_chars: int = 32 << 20  # text held in the piece cache

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


@dataclass(slots=True)
class MaskResult:
    seqs: list[MaskedSeq]
    tokens_cut: int = 0  # tokens tokenized but not written (truncated, or in a dropped sequence)
    dropped: bool = False  # nothing of this trace was written
    windows: int = 0  # sequences written (more than one when split)
    reason: str = ""  # why it was dropped
    system_tokens: int = 0  # tokens of its system turn (0: none), what any sequence of it needs at least


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


class Masker:
    """Masks rows for one tokenizer and MaskOptions. Picklable (the cache is not sent along)."""

    def __init__(self, tokenizer, options: MaskOptions | None = None):
        if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        self.options = options or MaskOptions()
        self.template = template_of(tokenizer, self.options.chat_template)
        self.info = inspect_template(tokenizer, self.template)
        check_faithful(self.info, tokenizer)
        self._backend = tokenizer.backend_tokenizer
        added = tokenizer.added_tokens_decoder
        self._added = {t.content: i for i, t in added.items()}
        self._special = re.compile("(" + "|".join(re.escape(t) for t in sorted(self._added, key=len, reverse=True)) + ")")
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
        text = render(self.tokenizer, to_messages(probe, self.info.tool_mode, self.options.tool_fallback), self.info).text
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

    def _result(self, tid: str, seqs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], cut: int, system: str | None) -> MaskResult:
        """Sequences (ids, labels, start characters) with at least one trained token, each with
        the length of its system-turn prefix; the others count as cut."""
        res = _result(tid, [(ids, labels) for ids, labels, _ in seqs], cut)
        trained = [starts for ids, labels, starts in seqs if (labels != IGNORE).any()]
        for s, starts in zip(res.seqs, trained):
            s.prefix_len = _prefix_len(system, s.input_ids, starts, s.labels)
        return res

    def _tokens(self, msgs: list[Message]) -> tuple[np.ndarray, np.ndarray, Rendered]:
        r = render(self.tokenizer, msgs, self.info)
        return (*self.encode(r.text), r)

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
                try:
                    done.append((row, msgs, render(self.tokenizer, msgs, self.info)))
                except TemplateError as e:
                    done.append((row, msgs, e))
            if self._piecewise:
                self._warm(p for *_, r in done if isinstance(r, Rendered) for p in self._special.split(r.text)[::2])
            for row, msgs, full in done:
                if isinstance(full, Rendered):
                    try:
                        yield row, self._mask_rendered(row.id, msgs, full)
                        continue
                    except TemplateError as e:  # a split window the template cannot render
                        full = e
                loc = getattr(row, "loc", None) or Location("<memory>", 0)
                yield row, RowError(BadRow(loc, "conversations", f"trace {row.id}: {full}"))

    def _mask_rendered(self, tid: str, msgs: list[Message], full: Rendered) -> MaskResult:
        ids, starts = self.encode(full.text)
        train = self._trainable(full)
        labels = self._labels(full, ids, starts, train)
        return self._fit(tid, msgs, ids, starts, labels, full, train)

    def _trainable(self, full: Rendered) -> set[int]:
        spans = [s for s in full.spans if self.options.train_tool_calls or not s.tool_calls]
        if self.options.scope == "last":
            spans = spans[-1:]
        return {s.turn for s in spans}

    def _fit(self, tid: str, msgs, ids, starts, labels, full: Rendered, train: set[int]) -> MaskResult:
        system = self._system_turn(msgs)
        if system is not None and not full.text.startswith(system):
            system = None
        res = self._fit_parts(tid, msgs, ids, starts, labels, full, train, system)
        res.system_tokens = int(np.searchsorted(starts, len(system))) if system is not None else 0
        return res

    def _fit_parts(self, tid, msgs, ids, starts, labels, full: Rendered, train: set[int], system: str | None) -> MaskResult:
        o = self.options
        n = len(ids)
        if o.max_len is None or n <= o.max_len:
            return self._result(tid, [(ids, labels, starts)], 0, system)
        if o.overflow == "drop":
            return MaskResult([], tokens_cut=n, dropped=True, reason=f"{n} tokens, longer than seq_len {o.max_len} (overflow drop)")
        if o.overflow == "truncate":
            m = o.max_len
            return self._result(tid, [(ids[:m], labels[:m], starts[:m])], n - m, system)
        return self._split(tid, msgs, starts, full, train, system)

    def _split(self, tid: str, msgs: list[Message], starts: np.ndarray, full: Rendered, train: set[int], system: str | None) -> MaskResult:
        """Windows of whole steps (messages up to and including an assistant turn), each starting
        with the system prompt, filled greedily; a window is re-rendered and tokenized exactly."""
        max_len = self.options.max_len
        head = 1 if msgs and msgs[0].role == "system" else 0
        # Estimated tokens up to the end of each message's content; windows are then measured exactly.
        end_tok = np.searchsorted(starts, np.asarray(full.ends), side="right")
        steps = [i + 1 for i in range(head, len(msgs)) if msgs[i].role == "assistant"]  # step ends (exclusive)
        head_cost = int(end_tok[head - 1]) + 2 if head else 0
        if head_cost >= max_len:  # no window can hold the system prompt and a turn
            why = f"its system prompt alone takes about {head_cost} tokens, seq_len is {max_len}"
            return MaskResult([], tokens_cut=len(starts), dropped=True, reason=why)
        out, cut, first, k = [], 0, head, 0
        while k < len(steps):
            base = int(end_tok[first - 1]) if first else 0
            j = k
            while j + 1 < len(steps) and head_cost + end_tok[steps[j + 1] - 1] - base <= max_len:
                j += 1
            while True:
                w_ids, w_starts, w = self._tokens(msgs[:head] + msgs[first : steps[j]])
                if len(w_ids) <= max_len or j == k:
                    break
                j -= 1
            w_labels = self._labels(w, w_ids, w_starts, train)
            if len(w_ids) > max_len:
                cut += len(w_ids) - max_len
                w_ids, w_labels, w_starts = w_ids[:max_len], w_labels[:max_len], w_starts[:max_len]
            out.append((w_ids, w_labels, w_starts))
            first, k = steps[j], j + 1
        return self._result(tid, out, cut, system)


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


def _result(tid: str, seqs: list[tuple[np.ndarray, np.ndarray]], cut: int) -> MaskResult:
    """Sequences with at least one trained token; the others count as cut."""
    kept = []
    for ids, labels in seqs:
        if (labels != IGNORE).any():
            kept.append(MaskedSeq(tid, ids, labels))
        else:
            cut += len(ids)
    why = "" if kept else "no trained token in what fits (no assistant turn, or none the options train)"
    return MaskResult(kept, tokens_cut=cut, dropped=not kept, windows=len(kept), reason=why)
