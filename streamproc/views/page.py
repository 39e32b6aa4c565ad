"""The web trace viewer: one self-contained HTML page with the summary, plots and a trace browser.

Built for the full dataset (15,000 traces of ~60 KB): the page carries a small index inline (one
row per trace: what the filters need) and the trace bodies compact (parsed turns, system prompt
left out, long values shortened with their length noted), in zlib chunks of CHUNK traces,
base64 in inert <script> tags. The browser inflates a chunk with DecompressionStream only when a
trace in it is opened, so the page opens fast, needs no network and stays a single file.

Past that size (150,000 traces: ~900 MB of bodies) one file no longer opens quickly, so a report
can be a folder (`write_page(DIR, ..., folder=True)`): DIR/index.html holds the first INDEX_PAGE
rows of the index inline, DIR/index/K.js the rest and DIR/bodies/K.js one chunk each, loaded
with <script src> (which file:// allows, where fetch is refused): the list appears at once and
fills in; a chunk is read only when a trace in it is opened. While the pass runs, the parent
keeps the compressed chunks and the index entries in unnamed temporary files (`Chunks`, `Entries`),
not in memory.

Index rows and compressed chunks are made per shard in worker processes (`collect`, or
`stats_job.collect_with_browser` in the same pass as the statistics);
`write_page` streams them into the template `data/viewer.html`.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import os
import re
import tempfile
import zlib
from array import array
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import orjson

from streamproc.io.files import atomic_path
from streamproc.records import Row, Tally, Trace
from streamproc.parse.turns import REASONING, TEXT
from streamproc.analyze.outcomes import status
from streamproc.views.listing import Summary, summarize
from streamproc.views.tables import CATEGORY, CLASS, TOOL, Table
from streamproc.views.render import assistant_blocks, clip_values, shorten
from streamproc.run.runner import Engine, Gather, Stage, run_jobs
from streamproc.io.sources import Split

CHUNK = 200  # traces per compressed chunk: one inflate is a few MB at most
INDEX_PAGE = 2000  # index rows per file of a report folder (the first inline): ~1 MB each
FOLDER_FROM = 20_000  # traces from which a report written into a directory is a folder, not one page
LIMIT = 2000  # characters of any one value kept in the page (the full length is noted)
TASK_CHARS = 300  # of a trace's task in the index, which every trace's row carries inline
TEMPLATE = Path(__file__).parents[1] / "data" / "viewer.html"


@dataclass(slots=True)
class Entry:
    """One trace in the page's index: what the list shows and filters on (the record `ls` lists),
    and where its body is."""

    summary: Summary
    chunk: int = 0
    pos: int = 0


class Chunks:
    """Compressed body chunks in an unnamed temporary file (in `spill_dir`, else the system's
    temporary directory), read back one at a time: a list of bytes that stays on disk."""

    def __init__(self, chunks: Iterable[bytes] = (), spill_dir: str | os.PathLike | None = None, prefix: str = "streamproc-bodies-"):
        self._file = tempfile.TemporaryFile(prefix=prefix, dir=spill_dir)
        self._ends = array("q")
        self.extend(chunks)

    def append(self, chunk: bytes) -> None:
        self._file.seek(0, os.SEEK_END)
        self._file.write(chunk)
        self._ends.append((self._ends[-1] if self._ends else 0) + len(chunk))

    def extend(self, chunks: Iterable[bytes]) -> None:
        for c in chunks:
            self.append(c)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, k: int) -> bytes:
        start = self._ends[k - 1] if k else 0
        self._file.seek(start)
        return self._file.read(self._ends[k] - start)

    def __iter__(self):
        return (self[k] for k in range(len(self)))

    def __del__(self) -> None:
        self._file.close()  # unnamed: closing it frees the disk; left to the collector it warns

    def __eq__(self, other: object) -> bool:
        return isinstance(other, (Chunks, list)) and len(self) == len(other) and all(a == b for a, b in zip(self, other))


class Entries:
    """Index entries in an unnamed temporary file, one JSON record each, read back in order: the
    parent of a run holds none of them (as objects, about 2 KB a trace)."""

    def __init__(self, entries: Iterable[Entry] = (), spill_dir: str | os.PathLike | None = None):
        self._records = Chunks(spill_dir=spill_dir, prefix="streamproc-index-")
        self.extend(entries)

    def extend(self, entries: Iterable[Entry]) -> None:
        for e in entries:
            self._records.append(orjson.dumps([*(getattr(e.summary, f) for f in _SUMMARY_FIELDS), e.chunk, e.pos]))

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self):
        for record in self._records:
            *values, chunk, pos = orjson.loads(record)
            yield Entry(Summary(*(tuple(v) if isinstance(v, list) else v for v in values)), chunk, pos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, (Entries, list)) and len(self) == len(other) and all(a == b for a, b in zip(self, other))


_SUMMARY_FIELDS = tuple(f.name for f in dataclasses.fields(Summary))


@dataclass(slots=True)
class Browser:
    """The page's trace list: index entries and the compressed chunks their bodies are in."""

    entries: Entries | list[Entry] = field(default_factory=Entries)
    chunks: Chunks | list[bytes] = field(default_factory=Chunks)

    def add(self, part: "ViewPart") -> None:
        """Append a split's part: its entries point at its chunks, now after those held."""
        for e in part.entries:
            e.chunk += len(self.chunks)
        self.entries.extend(part.entries)
        self.chunks.extend(part.chunks)


# ----------------------------------------------------------------------------- per trace (pure)


def entry(trace: Trace) -> Entry:
    return Entry(summarize(trace, TASK_CHARS))


def body(trace: Trace) -> dict[str, Any]:
    """The compact form the page renders: turns as blocks, values shortened to LIMIT."""
    turns = []
    for ti, turn in enumerate(trace.turns):
        if turn.role == "system":
            turns.append({"role": "system", "chars": len(turn.text)})
        elif turn.role == "assistant":
            turns.append({"role": "assistant", "turn": ti, "blocks": [_block(k, v, n) for k, v, n in assistant_blocks(trace, ti)]})
        elif turn.role == "tool":
            responses = [
                {"call": r.call, "name": r.name, "status": status(r), "content": clip_values(r.content, LIMIT),
                 "error": r.error}
                for r in turn.tool_responses
            ]
            text = "" if responses else shorten(turn.text, LIMIT)
            turns.append({"role": "tool", "turn": ti, "responses": responses, "text": text})
        else:
            turns.append({"role": turn.role, "turn": ti, "text": shorten(turn.text, LIMIT)})
    return {"id": trace.id, "task": trace.task, "category": trace.category, "subcategory": trace.subcategory,
            "source": trace.source, "turns": turns}


def _block(kind: str, value: Any, number: int | None) -> dict[str, Any]:
    if kind in (REASONING, TEXT):
        return {"kind": kind, "text": shorten(value, LIMIT), "chars": len(value)}
    return {"kind": "call", "n": number, "name": value.name, "args": clip_values(value.arguments, LIMIT),
            "error": value.error, "raw": None if value.valid else shorten(value.raw, LIMIT),
            "answered": value.response is not None}


# ----------------------------------------------------------------------------- per shard (workers)


@dataclass(slots=True)
class ViewPart:
    entries: list[Entry]
    chunks: list[bytes]


class ViewFold:
    """Index entries and compressed body chunks of traces, added in order (one per shard)."""

    def __init__(self):
        self.entries: list[Entry] = []
        self.chunks: list[bytes] = []
        self._bodies: list[bytes] = []  # each encoded alone, so a trace that cannot be is named

    def add(self, trace: Trace) -> None:
        e = entry(trace)
        encoded = orjson.dumps(body(trace))
        e.chunk, e.pos = len(self.chunks), len(self._bodies)
        self.entries.append(e)
        self._bodies.append(encoded)
        if len(self._bodies) == CHUNK:
            self.chunks.append(_compress(self._bodies))
            self._bodies = []

    def part(self) -> ViewPart:
        if self._bodies:
            self.chunks.append(_compress(self._bodies))
            self._bodies = []
        return ViewPart(self.entries, self.chunks)


class ViewStage(Stage):
    """The trace browser's part of a split: index entries and compressed body chunks."""

    name = "browser"

    def start(self) -> ViewFold:
        return ViewFold()

    def fold(self, acc: ViewFold, row: Row, trace: Trace | None) -> None:
        acc.add(trace)

    def end(self, acc: ViewFold) -> ViewPart:
        return acc.part()


def _compress(bodies: list[bytes]) -> bytes:
    # The JSON array of the bodies, as orjson writes it; zlib format is what the browser's
    # DecompressionStream("deflate") reads.
    return zlib.compress(b"[" + b",".join(bodies) + b"]", 6)


def collect(splits: Sequence[Split], workers: int | Engine = 1, on_error: str = "skip") -> tuple[Browser, Tally]:
    """Index and body chunks of every trace, in input order, made in worker processes."""
    job = Gather(ViewStage())
    run_jobs(splits, [job], workers=workers, on_error=on_error, progress="index traces")
    return merge(job.partials), job.tally


def merge(parts: Iterable[ViewPart]) -> Browser:
    """One Browser of per-split parts, in the order given."""
    browser = Browser()
    for part in parts:
        browser.add(part)
    return browser


# ----------------------------------------------------------------------------- the page


def write_page(
    path: str | os.PathLike,
    browser: Browser,
    *,
    tables: Sequence[Table] = (),
    plots: Mapping[str, bytes] | None = None,
    note: str = "",
    title: str = "streamproc report",
    training: Sequence[Table] = (),
    training_plots: Mapping[str, bytes] | None = None,
    folder: bool = False,
) -> Path:
    """Write the page atomically: the trace browser first, then summary `tables` (report.tables
    gives them), `plots` (PNG bytes by caption) and, when a pack run's figures are given,
    `training` tables and `training_plots`, each a tab away; `note` goes under the title.

    With `folder`, `path` is a directory: its index.html (written last, so a complete one means
    a complete folder) loads index/K.js and bodies/K.js beside it. Returns the page's path."""
    path = Path(path)
    names: dict[str, dict[str, int]] = {"source": {}, "category": {}, "subcategory": {}, "tool": {}, "class": {}}
    rows = _index_rows(browser.entries, names)
    page = path / "index.html" if folder else path
    if folder:  # the rows after the first page go to index/K.js as they are read
        total = len(browser.entries)
        first = list(islice(rows, INDEX_PAGE))
        _write_scripts(path / "index", (f"streamprocRows({k},{_script_json(list(islice(rows, INDEX_PAGE)))});\n"
                                        for k in range(1, -(-total // INDEX_PAGE))), first=1)
        index = {"names": {k: list(v) for k, v in names.items()}, "rows": first, "parts": -(-total // INDEX_PAGE), "total": total}
    else:
        rows = list(rows)
        index = {"names": {k: list(v) for k, v in names.items()}, "rows": rows}
    if folder:
        _write_scripts(path / "bodies", (f'streamprocChunk({k},"{base64.b64encode(c).decode("ascii")}");\n'
                                         for k, c in enumerate(browser.chunks)))
    values = {
        "title": html.escape(title),
        "note": html.escape(note),
        "summary": "".join(_table_html(t) for t in tables if t.rows) or "<p class=\"hint\">No summary was collected.</p>",
        "plots": "".join(_img(caption, png) for caption, png in (plots or {}).items())
        or "<p class=\"hint\">No plots were drawn.</p>",
        "training": "".join(_table_html(t) for t in training if t.rows)
        + "".join(_img(caption, png) for caption, png in (training_plots or {}).items()),
        "has_training": "" if training else "hidden",
        "index": _script_json(index),
    }
    with atomic_path(page) as tmp, open(tmp, "w", encoding="utf-8") as f:
        # The template alternates text and {{name}} markers; chunks are written one at a time.
        for i, piece in enumerate(re.split(r"\{\{(\w+)\}\}", TEMPLATE.read_text(encoding="utf-8"))):
            if i % 2 == 0:
                f.write(piece)
            elif piece == "chunks":
                for k, c in enumerate(() if folder else browser.chunks):
                    f.write(f'<script type="application/x-deflate-base64" id="chunk-{k}">')
                    f.write(base64.b64encode(c).decode("ascii"))
                    f.write("</script>\n")
            else:
                f.write(values[piece])
    return page


def _write_scripts(folder: Path, scripts: Iterable[str], first: int = 0) -> None:
    """folder/K.js for each script (K from `first`), each atomic; files of a larger earlier report removed."""
    folder.mkdir(parents=True, exist_ok=True)
    end = first
    for text in scripts:
        with atomic_path(folder / f"{end}.js") as tmp:
            Path(tmp).write_text(text, encoding="utf-8")
        end += 1
    for old in folder.glob("*.js"):
        if old.stem.isdigit() and int(old.stem) >= end:
            old.unlink()


def _index_rows(entries: Iterable[Entry], names: dict[str, dict[str, int]]) -> Iterator[list]:
    """The index's rows, columnar and dictionary-coded (15,000 rows of repeated names stay
    small): each name gets the next code of its kind in `names` where it first appears."""

    def code(kind: str, value: str) -> int:
        return names[kind].setdefault(value, len(names[kind]))

    for e in entries:
        s = e.summary
        yield [s.id, code("source", s.source), code("category", s.category), code("subcategory", s.subcategory), s.task,
               [code("tool", t) for t in s.tools], s.errors, s.turns, s.calls, e.chunk, e.pos,
               [code("tool", t) for t in s.failed_tools], [code("class", k) for k in s.classes]]


def _script_json(obj: Any) -> str:
    # "</" would end the <script> element early; "<\/" is the same string to JSON.
    return orjson.dumps(obj).decode().replace("</", "<\\/")


def _img(caption: str, png: bytes) -> str:
    alt = html.escape(caption.replace("_", " "))
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><button class="zoom" title="open full size"><img alt="{alt}" src="data:image/png;base64,{data}">'
            f'</button><figcaption>{alt}</figcaption></figure>')


# A summary table whose first column holds one of these gets rows that filter the list by it (the
# page's filter of that name).
_ROW_FILTERS = {TOOL: "tool", CLASS: "class", CATEGORY: "category"}


def _table_html(table: Table) -> str:
    key = _ROW_FILTERS.get(table.columns[0].key) if table.columns else None
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = []
    for row in table.rows:
        # The filter's value is the name the page lists (an empty category is "(none)" there too).
        attrs = f' data-filter="{key}" data-value="{html.escape(row.cells[0])}" title="list the traces with this {key}"' if key else ""
        cells = "".join(
            f'<td data-err="yes" title="list the traces where this tool failed">{html.escape(v)}</td>'
            if key == "tool" and column.key == "failed" else f"<td>{html.escape(v)}</td>"
            for column, v in zip(table.columns, row.cells)
        )
        body.append(f"<tr{attrs}>{cells}</tr>")
    cls = "summary wide" if len(table.columns) > 5 or not key else "summary"
    return (f'<div class="{cls}"><h3>{html.escape(table.title)}</h3><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")
