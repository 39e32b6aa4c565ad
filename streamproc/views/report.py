"""Readable views of `Stats`: the terminal summary, `summary.md`, and PNG plots.

Plot functions draw on a given matplotlib Axes (or a new Figure) and return the Figure, so they
work in a notebook as they are. They use `matplotlib.figure.Figure` directly, not pyplot, so
writing files needs no display and leaves the notebook's backend alone.
"""

from __future__ import annotations

import io
import math
import os
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullFormatter, PercentFormatter

from streamproc.io.files import write_bytes, write_json
from streamproc.analyze.metrics import COUNT_EDGES, POSITION_CAP, Counts, Hist, Stats
from streamproc.records import Tally
from streamproc.views.safe import visible
from streamproc.views.tables import (
    CATEGORIES_TABLE, CATEGORY, CLASS, CLASSES_TABLE, FAILURE, FIGURES_TABLE, QUALITY, TOOL, TOOLS_TABLE, TRAINING_TABLE,
    WARNING, Column, Table, TableRow,
)

# ----------------------------------------------------------------------------- figures as text


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _dist(h: Hist) -> str:
    return f"{h.mean():,.1f} / {h.percentile(50):,.0f} / {h.percentile(90):,.0f} / {h.max:,}" if h.n else "-"


def _share(c: dict) -> str:
    """Shares of reasoning / tool calls / answer in an output_chars or output_tokens counter."""
    total = sum(c.values())
    return " / ".join(_pct(c[k], total) for k in ("reasoning", "tool_calls", "answer")) if total else "-"


@dataclass(slots=True, frozen=True)
class SummaryFigure:
    """One row of the Figures table: `key` names it in code, `label` only in print."""

    key: str
    label: str
    value: Callable[[Counts], str]
    mark: str = ""  # FAILURE, WARNING, QUALITY or ""


FIGURES: list[SummaryFigure] = [
    SummaryFigure("traces", "traces", lambda c: f"{c.traces:,}"),
    SummaryFigure("turns", "turns", lambda c: f"{c.turns:,}"),
    SummaryFigure("turns_per_trace", "turns per trace (mean / p50 / p90 / max)", lambda c: _dist(c.turns_per_trace)),
    SummaryFigure("assistant_turns", "assistant turns", lambda c: f"{c.assistant_turns:,}"),
    SummaryFigure("tool_calls", "tool calls", lambda c: f"{c.tool_calls:,}"),
    SummaryFigure("calls_per_trace", "tool calls per trace (mean / p50 / p90 / max)", lambda c: _dist(c.calls_per_trace)),
    SummaryFigure("parallel_turns", "assistant turns with 2+ parallel calls",
                  lambda c: _pct(sum(n for w, n in c.parallel_widths.items() if w > 1), c.assistant_turns)),
    SummaryFigure("distinct_tools", "distinct tools called", lambda c: f"{len(c.tool_counts):,}"),
    SummaryFigure("failed_responses", "failed tool responses",
                  lambda c: f"{sum(c.error_classes.values()):,} of {c.tool_responses:,} ({_pct(sum(c.error_classes.values()), c.tool_responses)})",
                  FAILURE),
    SummaryFigure("traces_with_errors", "traces with a failed response",
                  lambda c: f"{c.traces_with_errors:,} ({_pct(c.traces_with_errors, c.traces)})", FAILURE),
    SummaryFigure("error_substring_check", "\"error\" substring heuristic flags (responses / traces)",
                  lambda c: f"{c.substring_flagged_responses:,} / {c.substring_flagged_traces:,}"),
    SummaryFigure("reasoning_chars_per_turn", "reasoning chars per assistant turn (mean / p50 / p90 / max)",
                  lambda c: _dist(c.reasoning_chars_per_turn)),
    SummaryFigure("reasoning_chars_per_trace", "reasoning chars per trace (mean / p50 / p90 / max)",
                  lambda c: _dist(c.reasoning_chars_per_trace)),
    SummaryFigure("reasoning_tokens_per_turn", "reasoning tokens per assistant turn (mean / p50 / p90 / max)",
                  lambda c: _dist(c.reasoning_tokens_per_turn)),
    SummaryFigure("empty_think_blocks", "empty think blocks", lambda c: f"{c.empty_think_blocks:,} of {c.think_blocks:,}", WARNING),
    SummaryFigure("output_share_chars", "assistant output chars: reasoning / calls / answer", lambda c: _share(c.output_chars)),
    SummaryFigure("output_share_tokens", "assistant output tokens: reasoning / calls / answer", lambda c: _share(c.output_tokens)),
    SummaryFigure("malformed_calls", "malformed tool calls", lambda c: f"{c.quality['malformed_calls']:,}", QUALITY),
    SummaryFigure("unknown_tool", "calls to a tool not in the row's tools", lambda c: f"{c.quality['unknown_tool']:,}", QUALITY),
    SummaryFigure("missing_argument", "calls missing a required argument", lambda c: f"{c.quality['missing_argument']:,}", QUALITY),
    SummaryFigure("unknown_argument", "calls passing an unknown argument", lambda c: f"{c.quality['unknown_argument']:,}", QUALITY),
    SummaryFigure("calls_without_response", "calls with no response", lambda c: f"{c.quality['calls_without_response']:,}", QUALITY),
    SummaryFigure("responses_without_call", "responses with no call", lambda c: f"{c.quality['responses_without_call']:,}", QUALITY),
    SummaryFigure("unreadable_tools", "rows whose tools JSON is unreadable", lambda c: f"{c.quality['unreadable_tools']:,}", QUALITY),
]


def _columns(stats: Stats) -> list[tuple[str, Counts]]:
    """The total, then each source when there is more than one."""
    cols = [("all", stats.total())]
    if len(stats.by_source) > 1:
        cols += sorted(stats.by_source.items())
    return cols


def tables(stats: Stats, top: int) -> list[Table]:
    """Every summary table, shared by the terminal, Markdown and web views."""
    cols = _columns(stats)
    total = cols[0][1]
    figures = [TableRow(f.key, [f.label] + [f.value(c) for _, c in cols], f.mark) for f in FIGURES]
    figures = [r for r in figures if any(v != "-" for v in r.cells[1:])]  # e.g. tokens when not counted
    tools = [
        TableRow(name, [name, f"{n:,}", f"{total.responses_by_tool[name]:,}", f"{total.errors_by_tool[name]:,}",
                    _pct(total.errors_by_tool[name], total.responses_by_tool[name])])
        for name, n in total.tool_counts.most_common(top)
    ]
    classes = [TableRow(k, [k, f"{n:,}", _pct(n, total.tool_responses)]) for k, n in total.error_classes.most_common()]
    cats = [TableRow(k, [k or "(none)", f"{n:,}", _pct(n, total.traces)]) for k, n in total.categories.most_common()]
    return [
        Table(FIGURES_TABLE, "Figures", [Column("figure", "figure")] + [Column(name, name) for name, _ in cols], figures),
        Table(TOOLS_TABLE, f"Top {top} tools",
              [Column(TOOL, "tool"), Column("calls", "calls"), Column("responses", "responses"),
               Column("failed", "failed", FAILURE), Column("failure_rate", "failure rate", FAILURE)], tools),
        Table(CLASSES_TABLE, "Failed responses by class",
              [Column(CLASS, "class"), Column("responses", "responses"), Column("share", "share of responses")], classes),
        Table(CATEGORIES_TABLE, "Categories",
              [Column(CATEGORY, "category"), Column("traces", "traces"), Column("share", "share")], cats),
    ]


def summary_text(stats: Stats, tally: Tally | None = None, top: int = 10) -> str:
    """The terminal summary: aligned plain-text tables."""
    out = [tally.summary()] if tally else []
    for table in tables(stats, top):
        if not table.rows:
            continue
        header, rows = table.header, [r.cells for r in table.rows]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        out += ["", table.title, "  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
        out += ["  ".join([r[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(r[1:], widths[1:])]) for r in rows]
    return "\n".join(out)


def summary_markdown(stats: Stats, tally: Tally | None = None, top: int = 10, plots: list[str] = (), extra=()) -> str:
    """`summary.md`: the same tables (and any `extra` ones) in Markdown, followed by the plots."""
    out = ["# Trace statistics", ""]
    if tally:
        out += [tally.summary() + ".", ""]
    if stats.tokenizer:
        out += [f"Tokens counted with `{stats.tokenizer}`.", ""]
    for table in [*tables(stats, top), *extra]:
        if not table.rows:
            continue
        # a file people `cat`: names from the data with their control characters escaped
        out += [f"## {table.title}", "", "| " + " | ".join(map(visible, table.header)) + " |", "|" + "---|" * len(table.columns)]
        out += ["| " + " | ".join(visible(v).replace("|", "\\|") for v in r.cells) + " |" for r in table.rows]
        out.append("")
    if plots:
        out += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- plots

FEW = 30  # a share resting on fewer samples than this is drawn faded or hollow, its count shown
LABEL_MAX = 40  # characters of a name from the data on a plot; a longer one would take the plot's room


def _label(name: str) -> str:
    """A name from the data (tool, source, category) as a plot shows it: control characters as
    escapes (safe.visible), cut to LABEL_MAX characters, and `$` written as itself, not taken
    for the start of mathtext."""
    text = visible(name)
    if len(text) > LABEL_MAX:
        text = text[: LABEL_MAX - 1] + "…"
    return text.replace("$", r"\$")


def _axes(ax, size=(7, 4.5)):
    if ax is None:
        ax = Figure(figsize=size, layout="constrained").add_subplot()
    return ax


def _nothing(ax, title: str, why: str) -> Figure:
    """A plot with nothing to draw says why (no traces, no tool calls) instead of failing."""
    ax.set_title(title)
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="0.35")
    ax.set_xticks([])
    ax.set_yticks([])
    return ax.figure


def _groups(data: Stats | Counts) -> list[tuple[str, Counts]]:
    """What to draw side by side: each source of a Stats (sorted), or one Counts as "all"."""
    if isinstance(data, Counts):
        return [("all", data)]
    return sorted(data.by_source.items())


def _palette(groups: list[tuple[str, Counts]]) -> dict[str, str]:
    """A colour per source, fixed before any source is left out of a plot, so it matches across plots."""
    return {name: f"C{i}" for i, (name, _) in enumerate(groups)}


def _merged(groups: list[tuple[str, Counts]]) -> Counts:
    out = Counts()
    for _, c in groups:
        out.merge(c)
    return out


def _legend(ax, groups=None, handles=None, labels=None, title: str | None = "source") -> None:
    """The legend under the plot when the plot has its figure to itself, so it never covers the
    data; inside the axes otherwise. With `groups`, only when there are several."""
    if groups is not None and len(groups) < 2:
        return
    args = (handles, labels) if handles is not None else ()
    if len(ax.figure.axes) == 1:
        longest = max(map(len, labels if labels is not None else ax.get_legend_handles_labels()[1]), default=0)
        ax.figure.legend(*args, loc="outside lower center", ncols=2 if longest < 45 else 1, fontsize="small", title=title,
                         title_fontsize="small", frameon=False)
    else:
        ax.legend(*args, fontsize="small", title=title, title_fontsize="small")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a rate k/n (95% by default): honest for small n and for
    rates of 0 or 1, where the normal approximation collapses to a point."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def _lengths(v: float, _pos=None) -> str:
    """Tick labels of a log axis of lengths: 1, 10, 100, 1k, 10k, 1M."""
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}"


def top_tools(data: Stats | Counts, ax=None, top: int = 15) -> Figure:
    """Calls of the most-called tools, one bar per source when there are several."""
    groups = _groups(data)
    ax = _axes(ax, (7.5, 5.5))
    title = "Top tools by call volume"
    names = [k for k, _ in _merged(groups).tool_counts.most_common(top)][::-1]
    if not names:
        return _nothing(ax, title, "no tool was called in these traces")
    colours = _palette(groups)
    groups = [(s, c) for s, c in groups if c.tool_calls]
    height = 0.8 / len(groups)
    y = np.arange(len(names))
    for i, (source, c) in enumerate(groups):
        bars = ax.barh(y + (len(groups) - 1 - i) * height - 0.4 + height / 2, [c.tool_counts[t] for t in names],
                       height, label=_label(source), color=colours[source])
        ax.bar_label(bars, [f"{c.tool_counts[t]:,}" if c.tool_counts[t] else "" for t in names], padding=2, fontsize=7)
    ax.set_yticks(y, [_label(t) for t in names])
    ax.margins(x=0.12)
    ax.set_title(f"{title} (top {len(names)})")
    ax.set_xlabel("Calls")
    _legend(ax, groups)
    return ax.figure


def parallel_widths(data: Stats | Counts, ax=None) -> Figure:
    """How many calls an assistant turn makes at once: share of the turns with calls, per source."""
    groups = _groups(data)
    ax = _axes(ax)
    title = "Tool calls per assistant turn (turns with calls)"
    widths = sorted(_merged(groups).parallel_widths)
    if not widths:
        return _nothing(ax, title, "no assistant turn called a tool")
    colours = _palette(groups)
    groups = [(s, c) for s, c in groups if c.parallel_widths]
    width = 0.8 / len(groups)
    x = np.arange(len(widths))
    for i, (source, c) in enumerate(groups):
        n = sum(c.parallel_widths.values())
        shares = [c.parallel_widths[w] / n if n else 0 for w in widths]
        bars = ax.bar(x + i * width - 0.4 + width / 2, shares, width, label=f"{_label(source)} ({n:,} turns)", color=colours[source])
        ax.bar_label(bars, [f"{c.parallel_widths[w]:,}" if c.parallel_widths[w] else "" for w in widths], fontsize=7)
    ax.set_xticks(x, [str(w) for w in widths])
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=None))
    ax.margins(y=0.15)
    ax.set_title(title)
    ax.set_xlabel("Calls in one turn (bars labelled with turns)")
    ax.set_ylabel("Share of the source's turns with calls (log)")
    _legend(ax, groups)
    return ax.figure


def conversation_length(data: Stats | Counts, ax=None, bars: int = 40) -> Figure:
    """Turns per trace as a share of each source's traces, regrouped into at most `bars` bins."""
    groups = _groups(data)
    ax = _axes(ax)
    title = "Conversation length"
    if not _merged(groups).traces:
        return _nothing(ax, title, "no traces")
    last = max(c.turns_per_trace.max for _, c in groups)
    top = min(last + 1, len(COUNT_EDGES))
    width = max(1, -(-top // bars))
    starts = np.arange(0, top, width)
    for i, (source, c) in enumerate(groups):
        h = c.turns_per_trace
        if not h.n:
            continue
        counts = np.add.reduceat(h.counts[:top], starts) / h.n
        ax.stairs(counts, np.append(starts, top), label=f"{_label(source)}: {h.n:,} traces, mean {h.mean():.1f}",
                  color=f"C{i}", fill=len(groups) == 1, alpha=0.85 if len(groups) == 1 else 1, linewidth=1.6)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_title(title)
    ax.set_xlabel("Turns per trace" + (f" (bins of {width})" if width > 1 else ""))
    ax.set_ylabel("Share of the source's traces")
    _legend(ax, title=None)
    return ax.figure


def categories(data: Stats | Counts, ax=None) -> Figure:
    """Traces per category, stacked by source, each bar labelled with its count and share."""
    groups = _groups(data)
    total = _merged(groups)
    ax = _axes(ax, (7.5, 0.9 + 0.38 * max(3, len(total.categories))))
    title = "Traces per category"
    if not total.traces:
        return _nothing(ax, title, "no traces")
    cats = [k for k, _ in total.categories.most_common()][::-1]
    y = np.arange(len(cats))
    left = np.zeros(len(cats))
    for i, (source, c) in enumerate(groups):
        n = np.array([c.categories[k] for k in cats], dtype=float)
        ax.barh(y, n, left=left, label=_label(source), color=f"C{i}", height=0.7)
        left += n
    for yi, k in zip(y, cats):
        ax.text(left[yi], yi, f" {total.categories[k]:,} ({_pct(total.categories[k], total.traces)})", va="center", fontsize=8)
    ax.set_yticks(y, [_label(k) if k else "(none)" for k in cats])
    ax.margins(x=0.2)
    ax.set_title(title)
    ax.set_xlabel("Traces")
    _legend(ax, groups)
    return ax.figure


def tools_by_category(c: Counts | Stats, ax=None, top: int = 12) -> Figure:
    """Heat map: the share of each category's calls that go to each of the top tools, each cell
    labelled with its calls."""
    c = c.total() if isinstance(c, Stats) else c
    tools = [k for k, _ in c.tool_counts.most_common(top)]
    cats = [k for k, _ in c.categories.most_common()]
    names = [_label(t) for t in tools]
    # the tool names hang below at 40 degrees: room for names longer than the usual ones (about 0.055 in a character)
    ax = _axes(ax, (10, 1.8 + 0.4 * max(3, len(cats)) + 0.055 * max(0, max(map(len, names), default=0) - 16)))
    title = f"Tool usage by category (top {len(tools)} tools)"
    if not tools or not cats:
        return _nothing(ax, "Tool usage by category", "no tool was called in these traces")
    calls = np.array([[c.tools_by_category[(cat, t)] for t in tools] for cat in cats], dtype=float)
    per_cat = calls.sum(axis=1, keepdims=True)
    _heat(ax, calls / np.maximum(per_cat, 1), calls, per_cat[:, 0],
          names, [f"{_label(k) if k else '(none)'} ({int(n):,})" for k, n in zip(cats, per_cat[:, 0])], "share of the category's calls")
    ax.set_xticks(range(len(tools)), names, rotation=40, ha="right")
    ax.set_title(title)
    return ax.figure


def tools_by_position(c: Counts | Stats, ax=None, top: int = 12) -> Figure:
    """Heat map: the share of the calls made at each assistant-turn number that go to each of
    the top tools (what the agent reaches for first, and later). Cells carry their calls; turn
    numbers with fewer than FEW calls are faded, since their shares are noise."""
    c = c.total() if isinstance(c, Stats) else c
    tools = [k for k, _ in c.tool_counts.most_common(top)]
    last = max((p for _, p in c.calls_by_position), default=0)
    ax = _axes(ax, (13, 1.8 + 0.42 * max(3, len(tools))))
    if not tools or not last:
        return _nothing(ax, "Tool usage by turn position", "no tool was called in these traces")
    at = Counter()  # calls at each turn number, every tool
    for (_, p), n in c.calls_by_position.items():
        at[p] += n
    positions = range(1, last + 1)
    calls = np.array([[c.calls_by_position[(t, p)] for p in positions] for t in tools], dtype=float)
    totals = np.array([at[p] for p in positions], dtype=float)
    cols = [str(p) for p in positions]
    if last == POSITION_CAP:
        cols[-1] += "+"
    _heat(ax, calls / np.maximum(totals, 1), calls, totals, cols, [_label(t) for t in tools], "share of the calls at that turn", by_column=True)
    ax.set_xlabel(f"Assistant turn number (faded: fewer than {FEW} calls at that turn; top: calls at that turn)")
    ax.set_title(f"Tool usage by turn position (top {len(tools)} tools)")
    return ax.figure


def _heat(ax, share: np.ndarray, calls: np.ndarray, support: np.ndarray, cols: list[str], rows: list[str], label: str,
          by_column: bool = False):
    """`share` coloured; each non-empty cell labelled with its `calls`; rows (or columns) whose
    `support` is under FEW veiled in white, in proportion."""
    im = ax.imshow(share, aspect="auto", cmap="viridis", vmin=0, vmax=max(float(share.max()), 1e-9))
    veil = np.clip(1 - support / FEW, 0, 1) * 0.75
    veil = np.broadcast_to(veil[None, :] if by_column else veil[:, None], share.shape)
    white = np.ones(share.shape + (4,))
    white[..., 3] = veil
    ax.imshow(white, aspect="auto")
    small = 6 if share.shape[1] > 16 else 7.5
    for (r, k), n in np.ndenumerate(calls):
        if n:
            dark = share[r, k] > 0.55 * share.max() and veil[r, k] < 0.4
            ax.text(k, r, f"{int(n):,}", ha="center", va="center", fontsize=small, color="black" if dark else "white"
                    if veil[r, k] < 0.4 else "0.25")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    if by_column:
        top = ax.secondary_xaxis("top")
        top.set_xticks(range(len(cols)), [f"{int(n):,}" for n in support], fontsize=6)
    ax.figure.colorbar(im, ax=ax, label=label, format=PercentFormatter(1.0, decimals=0), pad=0.01)
    return ax


def reasoning_length(stats: Stats | Counts, ax=None) -> Figure:
    """Reasoning per assistant turn as a cumulative share of turns, one line per source: tokens
    when counted, else characters."""
    groups = _groups(stats)
    ax = _axes(ax)
    unit = "tokens" if any(c.reasoning_tokens_per_turn.n for _, c in groups) else "chars"
    title = f"Reasoning length per assistant turn ({unit})"
    hists = [(name, getattr(c, f"reasoning_{unit}_per_turn"), i) for i, (name, c) in enumerate(groups)]
    hists = [(name, h, i) for name, h, i in hists if h.n]
    if not any(h.max for _, h, _ in hists):
        return _nothing(ax, title, "no assistant turn has reasoning" if hists else "no assistant turns")
    for name, h, i in hists:
        bins = h.nonzero()
        without = bins[0][2] if bins and bins[0][0] == 0 else 0
        x = [1.0] + [lo for lo, _, _ in bins if lo > 0] + [h.max + 1]
        y = np.cumsum([without] + [n for lo, _, n in bins if lo > 0]) / h.n
        ax.step(x, np.append(y, 1.0), where="post", color=f"C{i}", linewidth=1.8,
                label=f"{_label(name)}: median {_lengths(h.percentile(50))}, {_pct(without, h.n)} of {h.n:,} turns without")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(_lengths))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_ylim(0, 1.02)
    ax.grid(True, which="major", alpha=0.3)
    ax.set_title(title)
    ax.set_xlabel(f"Reasoning {unit} in the turn (log scale)")
    ax.set_ylabel(f"Turns with at most this many {unit}")
    _legend(ax, title=None)
    return ax.figure


def error_rate(data: Stats | Counts, ax=None, top: int = 15) -> Figure:
    """Failure rate of the most-answered tools with its 95% Wilson interval, one mark per source,
    labelled failed/responses: a rate on 9 responses shows as the wide interval it is."""
    groups = _groups(data)
    names = [k for k, _ in _merged(groups).responses_by_tool.most_common(top)][::-1]
    ax = _axes(ax, (8, 1.4 + 0.3 * max(3, len(names)) * (1 + 0.4 * (len(groups) > 1))))
    title = "Failure rate per tool, with 95% interval"
    if not names:
        return _nothing(ax, title, "no tool responses in these traces")
    colours = _palette(groups)
    groups = [(s, c) for s, c in groups if c.tool_responses]
    step = 0.7 / len(groups)
    for i, (source, c) in enumerate(groups):
        for j, t in enumerate(names):
            k, n = c.errors_by_tool[t], c.responses_by_tool[t]
            if not n:
                continue
            y = j + (len(groups) - 1 - i) * step - 0.35 + step / 2
            lo, hi = wilson(k, n)
            ax.plot([lo, hi], [y, y], color=colours[source], linewidth=2, alpha=0.6, solid_capstyle="butt")
            ax.plot([k / n], [y], "o", color=colours[source], markerfacecolor=colours[source] if n >= FEW else "white")
            ax.text(hi + 0.01, y, f"{k:,}/{n:,}", va="center", fontsize=7, color="0.2")
    ax.set_yticks(range(len(names)), [_label(t) for t in names])
    ax.set_xlim(0, 1.12)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title(title)
    ax.set_xlabel(f"Failed responses / responses (hollow: fewer than {FEW} responses)")
    _legend(ax, groups, [Line2D([], [], color=colours[name], marker="o", linewidth=2) for name, _ in groups],
            [_label(name) for name, _ in groups])
    return ax.figure


_COMPARED: list[tuple[str, Callable[[Counts], float]]] = [
    ("turns per trace (mean)", lambda c: c.turns_per_trace.mean()),
    ("tool calls per trace (mean)", lambda c: c.calls_per_trace.mean()),
    ("traces with a failed response (%)", lambda c: 100 * c.traces_with_errors / max(c.traces, 1)),
    ("failed responses (%)", lambda c: 100 * sum(c.error_classes.values()) / max(c.tool_responses, 1)),
    ("reasoning chars per assistant turn (mean)", lambda c: c.reasoning_chars_per_turn.mean()),
    ("reasoning share of assistant chars (%)", lambda c: 100 * c.output_chars["reasoning"] / max(sum(c.output_chars.values()), 1)),
]


def overview(data: Stats | Counts, fig: Figure | None = None) -> Figure:
    """The headline figures, side by side per source, each source's traces under its name."""
    groups = _groups(data)
    fig = fig or Figure(figsize=(12, 6.5), layout="constrained")
    if not _merged(groups).traces:
        _nothing(fig.add_subplot(), "Overview", "no traces")
        return fig
    # six small plots side by side: each name on lines short enough for its bar's share of the width
    line = max(8, 48 // len(groups))
    names = ["\n".join(textwrap.wrap(_label(name), line, break_on_hyphens=False)) + f"\n{c.traces:,} traces"
             for name, c in groups]
    for ax, (label, fn) in zip(fig.subplots(2, 3).ravel(), _COMPARED):
        values = [fn(c) for _, c in groups]
        # at positions, not by name: two sources whose names are cut alike stay two bars
        bars = ax.bar(range(len(names)), values, color=[f"C{i}" for i in range(len(groups))], width=0.6)
        ax.set_xticks(range(len(names)), names)
        ax.bar_label(bars, [f"{v:,.1f}" for v in values], fontsize="small", padding=2)
        ax.set_ylim(0, max(values) * 1.18 or 1)  # room for the labels; all zero stays a flat, readable axis
        ax.set_title(label, fontsize="medium")
        ax.tick_params(axis="x", labelsize="small")
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle("Overview" + (", sources compared" if len(groups) > 1 else ""))
    return fig


def sequence_lengths(training: "Training", ax=None) -> Figure:
    """Lengths of the packed sequences (tokens) per partition (train, eval), against the row length."""
    ax = _axes(ax)
    seq_len = training.manifest.get("seq_len") or 0
    title = f"Packed sequence lengths (rows of {seq_len:,} tokens)"
    drawn = {s: v for s, v in training.lengths.items() if len(v)}
    if not drawn:
        return _nothing(ax, title, "no sequences were written" if training.lengths else "the shards were not at hand")
    hi = max(seq_len, max(int(v.max()) for v in drawn.values()))
    edges = np.linspace(0, hi, 41)
    for i, (split, v) in enumerate(drawn.items()):
        counts, _ = np.histogram(v, edges)
        ax.stairs(counts, edges, label=f"{split}: {len(v):,} sequences, median {int(np.median(v)):,}", color=f"C{i}",
                  fill=len(drawn) == 1, alpha=0.85 if len(drawn) == 1 else 1)
    if seq_len:
        ax.axvline(seq_len, color="0.3", linestyle="--", linewidth=1)
    ax.xaxis.set_major_formatter(FuncFormatter(_lengths))
    ax.set_title(title)
    ax.set_xlabel("Tokens in the sequence")
    ax.set_ylabel("Sequences")
    _legend(ax, title=None)
    return ax.figure


def plots(stats: Stats) -> dict[str, Figure]:
    """Every report plot by file stem."""
    return {
        "overview": overview(stats),
        "top_tools": top_tools(stats),
        "error_rate": error_rate(stats),
        "conversation_length": conversation_length(stats),
        "reasoning_length": reasoning_length(stats),
        "parallel_widths": parallel_widths(stats),
        "categories": categories(stats),
        "tools_by_category": tools_by_category(stats),
        "tools_by_position": tools_by_position(stats),
    }


def png(fig: Figure, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def pngs(stats: Stats, dpi: int = 110) -> dict[str, bytes]:
    """Every report plot as PNG bytes, by file stem."""
    return {stem: png(fig, dpi) for stem, fig in plots(stats).items()}


# ----------------------------------------------------------------------------- the training data


@dataclass(slots=True)
class Training:
    """What a pack run wrote, for the report: its manifest, and the packed sequence lengths per
    split when the shards are at hand."""

    manifest: dict
    lengths: dict[str, np.ndarray] = field(default_factory=dict)


def training(packed: str | os.PathLike | Mapping) -> Training:
    """A pack run's manifest (a dict) or its output directory (or manifest.json path); from a
    directory, the sequence lengths are read from its shards too."""
    if isinstance(packed, Mapping):
        return Training(dict(packed))
    from streamproc.prepare.shards import MANIFEST, PARTITIONS, read_manifest, read_shards

    out = Path(packed)
    out = out.parent if out.name == MANIFEST else out
    manifest = read_manifest(out)
    lengths = {s: read_shards(out, s).column("seq_lens").combine_chunks().flatten().to_numpy() for s in PARTITIONS
               if manifest["counts"].get(s, {}).get("sequences")}
    return Training(manifest, lengths)


def training_table(t: Training) -> Table:
    """The pack run's figures per partition (eval only when it has traces)."""
    counts = t.manifest.get("counts", {})
    splits = [s for s in ("train", "eval") if s in counts and (s == "train" or counts[s].get("traces"))]

    def row(key: str, label: str, fn: Callable[[dict], str]) -> TableRow:
        return TableRow(key, [label] + [fn(counts[s]) for s in splits])

    def eff(c: dict) -> str:
        return "-" if c.get("packing_efficiency") is None else f"{100 * c['packing_efficiency']:.1f}%"

    rows = [
        row("traces", "traces written / dropped", lambda c: f"{c['traces']:,} / {c['dropped']:,}"),
        row("sequences", "sequences", lambda c: f"{c['sequences']:,}"),
        row("tokens", "tokens written", lambda c: f"{c['tokens']:,}"),
        row("trainable", "trained tokens (share of written)", lambda c: f"{c['trainable']:,} ({_pct(c['trainable'], c['tokens'])})"),
        row("tokens_cut", "tokens cut to fit (share of tokenized)",
            lambda c: f"{c['tokens_cut']:,} ({_pct(c['tokens_cut'], c['tokens'] + c['tokens_cut'])})"),
        row("rows", f"rows of {t.manifest.get('seq_len', 0):,} tokens", lambda c: f"{c['rows']:,}"),
        row("packing_efficiency", "packing efficiency (padding)", lambda c: f"{eff(c)} ({c['padding']:,})"),
    ]
    for split, v in t.lengths.items():
        if len(v) and split in splits:
            rows[1].cells[1 + splits.index(split)] += f" (median {int(np.median(v)):,} tokens)"
    tok = t.manifest.get("tokenizer", {}).get("name") or "?"
    return Table(TRAINING_TABLE, f"Training data ({tok}, {counts.get('rows_read', 0):,} rows read)",
                 [Column("figure", "figure")] + [Column(s, s) for s in splits], rows)


def write_report(
    stats: Stats,
    out_dir: str | os.PathLike,
    tally: Tally | None = None,
    top: int = 10,
    browser=None,
    packed: str | os.PathLike | Mapping | None = None,
) -> list[Path]:
    """Write DIR/*.png, DIR/summary.md and DIR/stats.json (each atomically), and DIR/index.html
    when a `webview.Browser` of the same traces is given; return the paths. `packed`, a pack
    run's manifest or output directory, adds its training-data figures (and, from a directory,
    sequence_lengths.png)."""
    out_dir = Path(out_dir)
    images = pngs(stats)
    train = training(packed) if packed is not None else None
    extra = [training_table(train)] if train else []
    train_images = {"sequence_lengths": png(sequence_lengths(train))} if train and train.lengths else {}
    for stem, data in {**images, **train_images}.items():
        write_bytes(out_dir / f"{stem}.png", data)
    written = [out_dir / f"{stem}.png" for stem in {**images, **train_images}]
    md = out_dir / "summary.md"
    write_bytes(md, summary_markdown(stats, tally, top, [str(p) for p in written], extra).encode())
    js = out_dir / "stats.json"
    write_json(js, stats_document(stats, tally))
    written += [md, js]
    if browser is not None:
        from streamproc.views.page import FOLDER_FROM, write_page

        folder = len(browser.entries) >= FOLDER_FROM  # index/ and bodies/ beside index.html
        page = write_page(out_dir if folder else out_dir / "index.html", browser, tables=tables(stats, top), plots=images,
                          note=tally.summary() if tally else "", training=extra, training_plots=train_images, folder=folder)
        written.append(page)
    return written


def stats_document(stats: Stats, tally: Tally | None = None) -> dict:
    """The `--json` document: `Stats.to_json()` plus the row counts when known."""
    doc = stats.to_json()
    if tally is not None:
        doc["rows"] = {"read": tally.read, "parsed": tally.parsed, "rejected": len(tally.rejected)}
    return doc
