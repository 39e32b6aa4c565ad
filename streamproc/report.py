"""Readable views of `Stats`: the terminal summary, `summary.md`, and PNG plots.

Plot functions draw on a given matplotlib Axes (or a new Figure) and return the Figure, so they
work in a notebook as they are. They use `matplotlib.figure.Figure` directly, not pyplot, so
writing files needs no display and leaves the notebook's backend alone.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
from matplotlib.figure import Figure

from .fileio import write_bytes, write_json
from .metrics import POSITION_CAP, Counts, Hist, Stats
from .records import Tally

# ----------------------------------------------------------------------------- figures as text


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _dist(h: Hist) -> str:
    return f"{h.mean():,.1f} / {h.percentile(50):,.0f} / {h.percentile(90):,.0f} / {h.max:,}" if h.n else "-"


def _share(c: dict) -> str:
    """Shares of reasoning / tool calls / answer in an output_chars or output_tokens counter."""
    total = sum(c.values())
    return " / ".join(_pct(c[k], total) for k in ("reasoning", "tool_calls", "answer")) if total else "-"


FIGURES: list[tuple[str, Callable[[Counts], str]]] = [
    ("traces", lambda c: f"{c.traces:,}"),
    ("turns", lambda c: f"{c.turns:,}"),
    ("turns per trace (mean / p50 / p90 / max)", lambda c: _dist(c.turns_per_trace)),
    ("assistant turns", lambda c: f"{c.assistant_turns:,}"),
    ("tool calls", lambda c: f"{c.tool_calls:,}"),
    ("tool calls per trace (mean / p50 / p90 / max)", lambda c: _dist(c.calls_per_trace)),
    ("assistant turns with 2+ parallel calls", lambda c: _pct(sum(n for w, n in c.parallel_widths.items() if w > 1), c.assistant_turns)),
    ("distinct tools called", lambda c: f"{len(c.tool_counts):,}"),
    ("failed tool responses", lambda c: f"{sum(c.error_classes.values()):,} of {c.tool_responses:,} ({_pct(sum(c.error_classes.values()), c.tool_responses)})"),
    ("traces with a failed response", lambda c: f"{c.traces_with_errors:,} ({_pct(c.traces_with_errors, c.traces)})"),
    ("guide's \"error\" substring flags (responses / traces)", lambda c: f"{c.guide_flagged_responses:,} / {c.guide_flagged_traces:,}"),
    ("reasoning chars per assistant turn (mean / p50 / p90 / max)", lambda c: _dist(c.reasoning_chars_per_turn)),
    ("reasoning chars per trace (mean / p50 / p90 / max)", lambda c: _dist(c.reasoning_chars_per_trace)),
    ("reasoning tokens per assistant turn (mean / p50 / p90 / max)", lambda c: _dist(c.reasoning_tokens_per_turn)),
    ("empty think blocks", lambda c: f"{c.empty_think_blocks:,} of {c.think_blocks:,}"),
    ("assistant output chars: reasoning / calls / answer", lambda c: _share(c.output_chars)),
    ("assistant output tokens: reasoning / calls / answer", lambda c: _share(c.output_tokens)),
    ("malformed tool calls", lambda c: f"{c.quality['malformed_calls']:,}"),
    ("calls to a tool not in the row's tools", lambda c: f"{c.quality['unknown_tool']:,}"),
    ("calls missing a required argument", lambda c: f"{c.quality['missing_argument']:,}"),
    ("calls passing an unknown argument", lambda c: f"{c.quality['unknown_argument']:,}"),
    ("calls with no response", lambda c: f"{c.quality['calls_without_response']:,}"),
    ("responses with no call", lambda c: f"{c.quality['responses_without_call']:,}"),
    ("rows whose tools JSON is unreadable", lambda c: f"{c.quality['unreadable_tools']:,}"),
]


def _columns(stats: Stats) -> list[tuple[str, Counts]]:
    """The total, then each source when there is more than one."""
    cols = [("all", stats.total())]
    if len(stats.by_source) > 1:
        cols += sorted(stats.by_source.items())
    return cols


def tables(stats: Stats, top: int) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every summary table, shared by the terminal, Markdown and web views."""
    cols = _columns(stats)
    total = cols[0][1]
    figures = [[label] + [fn(c) for _, c in cols] for label, fn in FIGURES]
    figures = [r for r in figures if any(v != "-" for v in r[1:])]  # e.g. tokens when not counted
    tools = [
        [name, f"{n:,}", f"{total.responses_by_tool[name]:,}", f"{total.errors_by_tool[name]:,}",
         _pct(total.errors_by_tool[name], total.responses_by_tool[name])]
        for name, n in total.tool_counts.most_common(top)
    ]
    classes = [[k, f"{n:,}", _pct(n, total.tool_responses)] for k, n in total.error_classes.most_common()]
    cats = [[k or "(none)", f"{n:,}", _pct(n, total.traces)] for k, n in total.categories.most_common()]
    return [
        ("Figures", ["figure"] + [name for name, _ in cols], figures),
        (f"Top {top} tools", ["tool", "calls", "responses", "failed", "failure rate"], tools),
        ("Failed responses by class", ["class", "responses", "share of responses"], classes),
        ("Categories", ["category", "traces", "share"], cats),
    ]


def summary_text(stats: Stats, tally: Tally | None = None, top: int = 10) -> str:
    """The terminal summary: aligned plain-text tables."""
    out = [tally.summary()] if tally else []
    for title, header, rows in tables(stats, top):
        if not rows:
            continue
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        out += ["", title, "  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
        out += ["  ".join([r[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(r[1:], widths[1:])]) for r in rows]
    return "\n".join(out)


def summary_markdown(stats: Stats, tally: Tally | None = None, top: int = 10, plots: list[str] = ()) -> str:
    """`summary.md`: the same tables in Markdown, followed by the plots."""
    out = ["# Trace statistics", ""]
    if tally:
        out += [tally.summary() + ".", ""]
    if stats.tokenizer:
        out += [f"Tokens counted with `{stats.tokenizer}`.", ""]
    for title, header, rows in tables(stats, top):
        if not rows:
            continue
        out += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(v.replace("|", "\\|") for v in r) + " |" for r in rows]
        out.append("")
    if plots:
        out += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- plots


def _axes(ax, size=(7, 4.5)):
    if ax is None:
        ax = Figure(figsize=size, layout="constrained").add_subplot()
    return ax


def top_tools(c: Counts, ax=None, top: int = 15) -> Figure:
    """The guide's "Top tools by call volume"."""
    ax = _axes(ax)
    items = c.tool_counts.most_common(top)[::-1]
    ax.barh([k for k, _ in items], [n for _, n in items])
    ax.set_title(f"Top {len(items)} tools by call volume")
    ax.set_xlabel("Calls")
    return ax.figure


def parallel_widths(c: Counts, ax=None) -> Figure:
    """The guide's "Tool calls per assistant turn", on a log scale."""
    ax = _axes(ax)
    widths = sorted(c.parallel_widths)
    ax.bar([str(w) for w in widths], [c.parallel_widths[w] for w in widths])
    ax.set_yscale("log")
    ax.set_title("Tool calls per assistant turn (turns with calls)")
    ax.set_xlabel("Calls in one turn")
    ax.set_ylabel("Assistant turns (log)")
    return ax.figure


def conversation_length(c: Counts, ax=None, bars: int = 40) -> Figure:
    """The guide's "Conversation length": turns per trace, regrouped into at most `bars` bars."""
    ax = _axes(ax)
    h = c.turns_per_trace
    top = min(h.max + 1, len(h.edges))
    width = max(1, -(-top // bars))
    counts = np.add.reduceat(h.counts[:top], np.arange(0, top, width)) if top else np.zeros(0)
    ax.bar(np.arange(0, top, width), counts, width=width, align="edge")
    ax.set_title("Conversation length")
    ax.set_xlabel("Turns per trace")
    ax.set_ylabel("Traces")
    return ax.figure


def categories(c: Counts, ax=None) -> Figure:
    """The guide's "Category distribution"."""
    ax = _axes(ax, (6, 6))
    items = c.categories.most_common()
    ax.pie([n for _, n in items], labels=[k or "(none)" for k, _ in items], autopct="%1.0f%%", startangle=90)
    ax.set_title("Category distribution")
    return ax.figure


def tools_by_category(c: Counts, ax=None, top: int = 12) -> Figure:
    """Heat map: the share of each category's calls that go to each of the top tools."""
    tools = [k for k, _ in c.tool_counts.most_common(top)]
    cats = [k for k, _ in c.categories.most_common()]
    grid = np.array([[c.tools_by_category[(cat, t)] for t in tools] for cat in cats], dtype=float)
    ax = _heat(_axes(ax, (10, 5)), grid / np.maximum(grid.sum(axis=1, keepdims=True), 1), tools, [k or "(none)" for k in cats], "share of the category's calls")
    ax.set_xticks(range(len(tools)), tools, rotation=45, ha="right")
    ax.set_title(f"Tool usage by category (top {len(tools)} tools)")
    return ax.figure


def tools_by_position(c: Counts, ax=None, top: int = 12) -> Figure:
    """Heat map: the share of the calls made at each assistant-turn number that go to each of
    the top tools (what the agent reaches for first, and later)."""
    tools = [k for k, _ in c.tool_counts.most_common(top)]
    last = max((p for _, p in c.calls_by_position), default=0)
    at = Counter()  # calls at each turn number, every tool
    for (_, p), n in c.calls_by_position.items():
        at[p] += n
    grid = np.array([[c.calls_by_position[(t, p)] / max(at[p], 1) for p in range(1, last + 1)] for t in tools], dtype=float)
    cols = [str(p) for p in range(1, last + 1)]
    if last == POSITION_CAP:
        cols[-1] += "+"
    ax = _heat(_axes(ax, (11, 5)), grid, cols, tools, "share of the calls at that turn")
    ax.set_xlabel("Assistant turn number")
    ax.set_title(f"Tool usage by turn position (top {len(tools)} tools)")
    return ax.figure


def _heat(ax, grid: np.ndarray, cols: list[str], rows: list[str], label: str):
    im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0)
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    ax.figure.colorbar(im, ax=ax, label=label)
    return ax


def reasoning_length(stats: Stats, ax=None) -> Figure:
    """Reasoning per assistant turn, one line per source: tokens when counted, else characters."""
    from matplotlib.ticker import NullFormatter

    ax = _axes(ax)
    unit = "tokens" if any(c.reasoning_tokens_per_turn.n for c in stats.by_source.values()) else "chars"
    for name, c in sorted(stats.by_source.items()):
        h = getattr(c, f"reasoning_{unit}_per_turn")
        x, y = _coarse_density(h)
        if len(y):
            ax.stairs(y, x, label=f"{name} ({_pct(int(h.counts[0]), h.n)} without reasoning)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_title(f"Reasoning length per assistant turn ({unit})")
    ax.set_xlabel(f"Reasoning {unit} (log)")
    ax.set_ylabel(f"Share of turns per {unit[:-1]} (log)")
    ax.legend(fontsize="small")
    return ax.figure


_COARSE = {round(10 ** (k / 10)) for k in range(81)}  # 10 bins per decade: every 4th length bin


def _coarse_density(h: Hist) -> tuple[np.ndarray, np.ndarray]:
    """Non-zero lengths regrouped to 10 bins per decade, as share of all turns per unit length,
    so that log-width bins do not distort the shape."""
    starts = [i for i, e in enumerate(h.edges) if e in _COARSE and e <= h.max]
    if not starts or not h.n:
        return np.zeros(1), np.zeros(0)
    counts = np.add.reduceat(h.counts, starts)
    x = np.array([h.edges[i] for i in starts] + [h.max + 1], dtype=float)
    first = int(np.flatnonzero(counts)[0]) if counts.any() else len(counts)
    return x[first:], (counts / np.diff(x) / h.n)[first:]


def error_rate(c: Counts, ax=None, top: int = 15) -> Figure:
    """Failure rate per tool for the most-answered tools, labelled with failed / responses."""
    ax = _axes(ax)
    items = c.responses_by_tool.most_common(top)[::-1]
    rates = [c.errors_by_tool[k] / n for k, n in items]
    bars = ax.barh([k for k, _ in items], rates, color="tab:red")
    ax.bar_label(bars, [f"{c.errors_by_tool[k]:,}/{n:,}" for k, n in items], padding=2, fontsize="small")
    ax.set_xlim(0, min(1.15, max(rates, default=0) * 1.3 + 0.05))  # room for the labels
    ax.set_title("Failure rate per tool (classified from the response)")
    ax.set_xlabel("Failed responses / responses")
    return ax.figure


_COMPARED: list[tuple[str, Callable[[Counts], float]]] = [
    ("turns per trace (mean)", lambda c: c.turns_per_trace.mean()),
    ("tool calls per trace (mean)", lambda c: c.calls_per_trace.mean()),
    ("traces with a failed response (%)", lambda c: 100 * c.traces_with_errors / max(c.traces, 1)),
    ("failed responses (%)", lambda c: 100 * sum(c.error_classes.values()) / max(c.tool_responses, 1)),
    ("reasoning chars per assistant turn (mean)", lambda c: c.reasoning_chars_per_turn.mean()),
    ("reasoning share of assistant chars (%)", lambda c: 100 * c.output_chars["reasoning"] / max(sum(c.output_chars.values()), 1)),
]


def sources(stats: Stats, fig: Figure | None = None) -> Figure:
    """Side-by-side comparison of the sources on a few headline figures."""
    fig = fig or Figure(figsize=(12, 6), layout="constrained")
    names = sorted(stats.by_source)
    axes = fig.subplots(2, 3).ravel()
    for ax, (label, fn) in zip(axes, _COMPARED):
        values = [fn(stats.by_source[n]) for n in names]
        bars = ax.bar(names, values, color=[f"C{i}" for i in range(len(names))])
        ax.bar_label(bars, [f"{v:,.1f}" for v in values], fontsize="small")
        ax.set_title(label, fontsize="medium")
        ax.tick_params(axis="x", rotation=20)
    fig.suptitle("Sources compared")
    return fig


def overview(c: Counts, fig: Figure | None = None) -> Figure:
    """The guide's four charts in one 2x2 figure."""
    fig = fig or Figure(figsize=(13, 9), layout="constrained")
    axes = fig.subplots(2, 2)
    top_tools(c, axes[0, 0])
    parallel_widths(c, axes[0, 1])
    conversation_length(c, axes[1, 0])
    categories(c, axes[1, 1])
    return fig


def plots(stats: Stats) -> dict[str, Figure]:
    """Every report plot by file stem."""
    total = stats.total()
    return {
        "overview": overview(total),
        "top_tools": top_tools(total),
        "parallel_widths": parallel_widths(total),
        "conversation_length": conversation_length(total),
        "categories": categories(total),
        "tools_by_category": tools_by_category(total),
        "tools_by_position": tools_by_position(total),
        "reasoning_length": reasoning_length(stats),
        "error_rate": error_rate(total),
        "sources": sources(stats),
    }


def pngs(stats: Stats, dpi: int = 110) -> dict[str, bytes]:
    """Every report plot as PNG bytes, by file stem."""
    out = {}
    for stem, fig in plots(stats).items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        out[stem] = buf.getvalue()
    return out


def write_report(
    stats: Stats, out_dir: str | os.PathLike, tally: Tally | None = None, top: int = 10, browser=None
) -> list[Path]:
    """Write DIR/*.png, DIR/summary.md and DIR/stats.json (each atomically), and DIR/index.html
    when a `webview.Browser` of the same traces is given; return the paths."""
    out_dir = Path(out_dir)
    images = pngs(stats)
    for stem, png in images.items():
        write_bytes(out_dir / f"{stem}.png", png)
    written = [out_dir / f"{stem}.png" for stem in images]
    md = out_dir / "summary.md"
    write_bytes(md, summary_markdown(stats, tally, top, [str(p) for p in written]).encode())
    js = out_dir / "stats.json"
    write_json(js, stats_document(stats, tally))
    written += [md, js]
    if browser is not None:
        from .webview import write_page

        page = out_dir / "index.html"
        write_page(page, browser, tables=tables(stats, top), plots=images, note=tally.summary() if tally else "")
        written.append(page)
    return written


def stats_document(stats: Stats, tally: Tally | None = None) -> dict:
    """The `--json` document: `Stats.to_json()` plus the row counts when known."""
    doc = stats.to_json()
    if tally is not None:
        doc["rows"] = {"read": tally.read, "parsed": tally.parsed, "rejected": len(tally.rejected)}
    return doc
