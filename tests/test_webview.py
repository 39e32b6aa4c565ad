"""The web trace viewer: the data it embeds, and the page itself in a real headless Chromium."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
import time
import zlib
from pathlib import Path

import orjson
import pytest

from streamproc import webview
from streamproc.cli import main
from streamproc.parse import parse_trace
from streamproc.render import status
from streamproc.sources import plan

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _chunk_bodies(page: str, k: int) -> list[dict]:
    m = re.search(rf'<script type="application/x-deflate-base64" id="chunk-{k}">([^<]*)</script>', page)
    return orjson.loads(zlib.decompress(base64.b64decode(m.group(1))))


def _index(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="index">(.*?)</script>', page, re.S)
    return json.loads(m.group(1))


# ----------------------------------------------------------------------------- data (no browser)


def test_collect_indexes_every_trace_and_finds_each_body(real_row_files, real_rows, monkeypatch):
    monkeypatch.setattr(webview, "CHUNK", 7)  # several chunks per file, and a short last one
    browser, tally = webview.collect(plan(real_row_files), workers=1)
    assert tally.parsed == tally.read == len(real_rows) and not tally.rejected
    assert [e.id for e in browser.entries] == [r["id"] for r in real_rows]
    bodies = [orjson.loads(zlib.decompress(c)) for c in browser.chunks]
    for e, row in zip(browser.entries, real_rows):
        body = bodies[e.chunk][e.pos]
        assert body["id"] == e.id == row["id"]
        trace = parse_trace(row)
        assert e.calls == len(trace.calls) and e.turns == len(trace.turns)
        assert e.tools == list(dict.fromkeys(trace.call(i).name for i in range(len(trace.calls))))
        assert e.errors == sum(status(trace.response(i)) is not None for i in range(len(trace.responses)))
        assert body["turns"][0] == {"role": "system", "chars": len(row["conversations"][0]["value"])}
        calls = [b["name"] for t in body["turns"] if t["role"] == "assistant" for b in t["blocks"] if b["kind"] == "call"]
        assert calls == [trace.call(i).name for i in range(len(trace.calls))]


def test_bodies_shorten_long_values_and_note_their_length(real_rows, monkeypatch):
    trace = max((parse_trace(r) for r in real_rows), key=lambda t: max((len(x) for u in t.turns for x in u.thoughts), default=0))
    long = [x for u in trace.turns for x in u.thoughts if len(x) > 100][0]
    monkeypatch.setattr(webview, "LIMIT", 100)
    body = webview.body(trace)
    texts = [b["text"] for t in body["turns"] if t["role"] == "assistant" for b in t["blocks"] if b["kind"] == "reasoning"]
    assert any(t.startswith(long[:50]) and f"[shortened: {len(long):,} chars" in t for t in texts)


# ----------------------------------------------------------------------------- the page in Chromium


@pytest.fixture(scope="module")
def chromium():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (apt-get install chromium) to test the web page")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def report(real_row_files, tmp_path_factory) -> Path:
    """The page `streamproc report` writes for the real traces."""
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert main(["report", *map(str, real_row_files), "-o", str(out), "--workers", "1"]) == 0
    return out


@pytest.fixture
def page(chromium):
    """A tab that refuses and records any request leaving the file: the page must work offline."""
    tab = chromium.new_page(viewport={"width": 1400, "height": 900})
    tab.outside = []
    tab.errors = []
    tab.on("pageerror", lambda e: tab.errors.append(str(e)))

    def route(r):
        if r.request.url.startswith(("file:", "data:", "blob:")):
            r.continue_()
        else:
            tab.outside.append(r.request.url)
            r.abort()

    tab.route("**/*", route)
    yield tab
    assert not tab.outside, f"the page reached for the network: {tab.outside[:3]}"
    assert not tab.errors, f"script errors: {tab.errors}"
    tab.close()


def _open(page, path: Path) -> None:
    page.goto(path.as_uri())
    page.wait_for_selector("#traces tbody tr")


def _count(page) -> tuple[int, int]:
    shown, total = re.match(r"([\d,]+) of ([\d,]+) traces", page.text_content("#count")).groups()
    return int(shown.replace(",", "")), int(total.replace(",", ""))


def test_page_loads_with_summary_plots_and_every_trace(page, report, real_rows):
    _open(page, report)
    assert _count(page) == (len(real_rows), len(real_rows))
    assert "Figures" in page.text_content("#summary")
    widths = page.eval_on_selector_all("#plots img", "imgs => imgs.map(i => i.naturalWidth)")
    assert widths and all(w > 100 for w in widths)
    shot = page.screenshot()
    from PIL import Image

    img = Image.open(io.BytesIO(shot)).convert("RGB")
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "the screenshot is blank or nearly so"
    dark = sum(n for n, (r, g, b) in colours if r + g + b < 200)
    assert dark > 2000, "no text or header drawn"


def test_filtering_by_a_tool_narrows_the_list(page, report, real_rows):
    _open(page, report)
    options = page.eval_on_selector_all("#filter-tool option", "os => os.map(o => [o.value, o.textContent])")
    value, label = options[3]
    tool, count = re.match(r"(.*) \(([\d,]+)\)$", label).groups()
    traces = [parse_trace(r) for r in real_rows]
    expected = sum(any(t.call(i).name == tool for i in range(len(t.calls))) for t in traces)
    assert 0 < expected < len(real_rows) and int(count) == expected
    page.select_option("#filter-tool", value)
    assert _count(page) == (expected, len(real_rows))
    cells = page.eval_on_selector_all("#traces tbody tr td:nth-child(4)", "tds => tds.map(td => td.textContent)")
    assert len(cells) == expected and all(tool in c.split(", ") for c in cells)
    page.select_option("#filter-error", "yes")
    with_errors = sum(any(status(t.response(i)) for i in range(len(t.responses))) and
                      any(t.call(i).name == tool for i in range(len(t.calls))) for t in traces)
    assert _count(page)[0] == with_errors


def test_opening_a_trace_shows_its_calls_reasoning_and_highlighted_errors(page, report, real_rows):
    _open(page, report)
    page.select_option("#filter-error", "yes")
    row = page.locator("#traces tbody tr").first
    trace = next(parse_trace(r) for r in real_rows if r["id"] == row.get_attribute("title"))
    row.click()
    page.wait_for_selector("#trace .call")
    heads = page.locator("#trace .call .block-head").all_text_contents()
    assert heads[0].startswith(f"CALL #0 {trace.call(0).name}")
    assert len(heads) == len(trace.calls)
    failed = [status(trace.response(i)) for i in range(len(trace.responses)) if status(trace.response(i))]
    bad = page.locator("#trace .resp.err .badge").all_text_contents()
    assert [b for b in bad if b.startswith("error: ")] == [f"error: {s}" for s in failed]
    colour = page.eval_on_selector("#trace .resp.err", "e => getComputedStyle(e).backgroundColor")
    assert colour != page.eval_on_selector("#trace .resp:not(.err), #trace .turn", "e => getComputedStyle(e).backgroundColor")
    think = page.locator("#trace details.think").first
    assert think.get_attribute("open") is None
    think.locator("summary").click()
    assert think.get_attribute("open") is not None
    assert f"trace={trace.id}" in page.url


def test_page_with_15000_traces_stays_compact_and_usable(page, chromium, real_rows, tmp_path):
    """15,000 traces made of the real ones with new ids: bodies stay compressed until opened."""
    traces = [parse_trace(r) for r in real_rows]
    entries = [webview.entry(t) for t in traces]
    chunk = zlib.compress(orjson.dumps([webview.body(traces[i % len(traces)]) for i in range(webview.CHUNK)]), 6)
    n = 15_000
    browser = webview.Browser(
        [dataclasses.replace(entries[i % webview.CHUNK % len(traces)], id=f"replica-{i:05d}",
                             chunk=i // webview.CHUNK, pos=i % webview.CHUNK) for i in range(n)],
        [chunk] * -(-n // webview.CHUNK),
    )
    path = tmp_path / "big.html"
    webview.write_page(path, browser, title="15,000 traces")
    raw = sum(len(json.dumps(r)) for r in real_rows) / len(real_rows) * n
    size = path.stat().st_size
    assert size < raw / 10, f"page {size / 1e6:.1f} MB for {raw / 1e6:.0f} MB of rows"
    html = path.read_text(encoding="utf-8")
    assert len(json.dumps(_index(html))) < 250 * n  # the inline index stays small per trace
    start = time.monotonic()
    _open(page, path)
    assert time.monotonic() - start < 20, "the list took too long to appear"  # sanity bound, not a benchmark
    assert _count(page) == (n, n)
    assert page.locator("#traces tbody tr").count() == 100  # paged, not 15,000 rows in the DOM
    page.fill("#search", "replica-14999")
    page.wait_for_function("document.querySelectorAll('#traces tbody tr').length === 1")
    page.locator("#traces tbody tr").first.click()
    page.wait_for_selector("#trace h2")
    assert page.text_content("#trace h2") == (traces[(14_999 % webview.CHUNK) % len(traces)].task or "(no task)")


def test_stats_and_browser_in_one_pass_equal_the_two_passes(real_row_files, tmp_path):
    """`collect_with_browser` parses each trace once; what it gives equals the two separate passes,
    a rejected row included, for 1 and 2 workers."""
    from streamproc import metrics
    from streamproc.sources import plan
    from streamproc.stats_job import collect_with_browser

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "b", "conversations": [{"from": "robot", "value": "x"}]}\n', encoding="utf-8")
    shards = plan([*real_row_files, bad])
    stats, tally = metrics.collect(shards)
    browser, _ = webview.collect(shards)
    for workers in (1, 2):
        s1, b1, t1 = collect_with_browser(shards, workers=workers)
        assert s1.to_json() == stats.to_json()
        assert b1.entries == browser.entries and b1.chunks == browser.chunks
        assert (t1.read, t1.parsed, [r.loc for r in t1.rejected]) == (tally.read, tally.parsed, [r.loc for r in tally.rejected])
    assert tally.rejected and len(browser.entries) == tally.parsed
