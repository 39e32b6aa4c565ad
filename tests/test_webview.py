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

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import streamproc
from streamproc.views import page as webview
from streamproc.cli import main
from streamproc.parse.parser import parse_trace
from streamproc.views.render import status
from streamproc.io.sources import plan
from streamproc.analyze.job import collect_with_browser


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
    assert [e.summary.id for e in browser.entries] == [r["id"] for r in real_rows]
    bodies = [orjson.loads(zlib.decompress(c)) for c in browser.chunks]
    for e, row in zip(browser.entries, real_rows):
        body = bodies[e.chunk][e.pos]
        s = e.summary
        assert body["id"] == s.id == row["id"]
        trace = parse_trace(row)
        assert s.calls == len(trace.calls) and s.turns == len(trace.turns)
        assert s.tools == tuple(dict.fromkeys(trace.call(i).name for i in range(len(trace.calls))))
        assert s.errors == sum(status(trace.response(i)) is not None for i in range(len(trace.responses)))
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
    assert page.is_visible("#traces") and not page.is_visible("#view-summary")  # the list is the first screen
    assert "Figures" in page.text_content("#view-summary")
    widths = page.eval_on_selector_all("#view-plots img", "imgs => imgs.map(i => i.naturalWidth)")
    assert widths and all(w > 100 for w in widths)
    shot = page.screenshot()
    from PIL import Image

    img = Image.open(io.BytesIO(shot)).convert("RGB")
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "the screenshot is blank or nearly so"
    dark = sum(n for n, (r, g, b) in colours if r + g + b < 200)
    assert dark > 2000, "no text or header drawn"


def _tool_failed(trace, tool: str) -> bool:
    for i in range(len(trace.responses)):
        r = trace.response(i)
        name = trace.call(r.call).name if r.call is not None else r.name
        if status(r) is not None and name == tool:
            return True
    return any(not trace.call(i).valid and trace.call(i).name == tool for i in range(len(trace.calls)))


def test_filtering_by_a_tool_narrows_the_list_and_with_errors_means_that_tool_failed(page, report, real_rows):
    _open(page, report)
    options = page.eval_on_selector_all("#filter-tool option", "os => os.map(o => [o.value, o.textContent])")
    tool, label = options[3]
    count = re.match(r".* \(([\d,]+)\)$", label).group(1)
    traces = [parse_trace(r) for r in real_rows]
    expected = [t.id for t in traces if any(t.call(i).name == tool for i in range(len(t.calls)))]
    assert 0 < len(expected) < len(real_rows) and int(count) == len(expected)
    page.select_option("#filter-tool", tool)
    assert _count(page) == (len(expected), len(real_rows))
    assert _listed(page) == expected
    page.select_option("#filter-err", "yes")
    failed = [t.id for t in traces if _tool_failed(t, tool)]
    other = [t.id for t in traces if t.id in expected and t.id not in failed and webview.entry(t).summary.errors]
    assert _listed(page) == failed and other, "a trace where only another tool failed must not be listed"
    assert f"tool={tool}" in page.url and "err=yes" in page.url


def _listed(page) -> list[str]:
    return page.eval_on_selector_all("#traces tbody tr[data-index]", "trs => trs.map(tr => tr.title)")


def test_opening_a_trace_shows_its_calls_reasoning_and_highlighted_errors(page, report, real_rows):
    _open(page, report)
    page.select_option("#filter-err", "yes")
    row = page.locator("#traces tbody tr").first
    trace = next(parse_trace(r) for r in real_rows if r["id"] == row.get_attribute("title"))
    row.click()
    page.wait_for_selector("#trace .call")
    heads = page.locator("#trace .call .block-head").all_text_contents()
    assert heads[0].startswith(f"CALL #1 {trace.call(0).name}")  # numbered from 1, as show and replay do
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
        [webview.Entry(dataclasses.replace(entries[i % webview.CHUNK % len(traces)].summary, id=f"replica-{i:05d}"),
                       i // webview.CHUNK, i % webview.CHUNK) for i in range(n)],
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


def test_spilled_entries_read_back_and_write_the_same_folder(real_rows, tmp_path):
    """The index a run keeps on disk (`Entries`) gives back every entry as it was and writes the
    same report folder, byte for byte, as the entries held in a list."""
    traces = [parse_trace(r) for r in real_rows]
    entries = [webview.entry(t) for t in traces]
    odd = dataclasses.replace(entries[0].summary, id="\u2028\x00 odd", task="é\ud7ff" * 3, tools=("a", "\"b\""), classes=())
    n = webview.INDEX_PAGE * 2 + 7  # three index files
    listed = [webview.Entry(dataclasses.replace(entries[i % len(entries)].summary, id=f"r{i}"), i // webview.CHUNK, i % webview.CHUNK)
              for i in range(n)] + [webview.Entry(odd, 0, 0)]
    spilled = webview.Entries(listed, spill_dir=tmp_path)
    assert len(spilled) == len(listed) and list(spilled) == listed
    chunks = [zlib.compress(orjson.dumps([webview.body(traces[0])]), 6)] * -(-n // webview.CHUNK)
    for name, held in (("listed", listed), ("spilled", spilled)):
        webview.write_page(tmp_path / name, webview.Browser(held, chunks), folder=True)
    files = sorted(p.relative_to(tmp_path / "listed") for p in (tmp_path / "listed").rglob("*.js"))
    assert len([f for f in files if f.parts[0] == "index"]) == 2
    for f in [*files, Path("index.html")]:
        assert (tmp_path / "listed" / f).read_bytes() == (tmp_path / "spilled" / f).read_bytes(), f


def test_stats_and_browser_in_one_pass_equal_the_two_passes(real_row_files, tmp_path):
    """`collect_with_browser` parses each trace once; what it gives equals the two separate passes,
    a rejected row included, for 1 and 2 workers."""
    from streamproc.analyze import metrics
    from streamproc.io.sources import plan
    from streamproc.analyze.job import collect_with_browser

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


# ----------------------------------------------------------------------------- the list: sort, filter, link, keys


SAMPLE = streamproc.SAMPLE


@pytest.fixture(scope="module")
def sample_report(tmp_path_factory) -> Path:
    """The built-in sample's page: 300 traces of two sources, three pages of the list."""
    out = tmp_path_factory.mktemp("sample") / "sample.html"
    assert main(["report", str(SAMPLE), "-o", str(out), "--workers", "1"]) == 0
    return out


def _rows(path: Path) -> list[list]:
    return _index(path.read_text(encoding="utf-8"))["rows"]


def _cells(page, col: int) -> list[str]:
    return page.eval_on_selector_all(f"#traces tbody tr[data-index] td:nth-child({col})", "tds => tds.map(t => t.textContent)")


def test_sorting_by_a_column_and_back_to_input_order(page, sample_report):
    rows = _rows(sample_report)
    _open(page, sample_report)
    page.click("#traces th[data-sort=errors] button")
    errors = [int(v or 0) for v in _cells(page, 5)]
    assert errors == sorted((r[6] for r in rows), reverse=True)[:100] and "sort=-errors" in page.url
    page.click("#traces th[data-sort=errors] button")
    assert [int(v or 0) for v in _cells(page, 5)] == sorted(r[6] for r in rows)[:100]
    page.click("#traces th[data-sort=errors] button")
    assert _listed(page) == [r[0] for r in rows[:100]] and "sort" not in page.url
    page.click("#traces th[data-sort=turns] button")
    assert [int(v) for v in _cells(page, 3)] == sorted((r[7] for r in rows), reverse=True)[:100]
    assert page.get_attribute("#traces th[data-sort=turns]", "aria-sort") == "descending"


def test_filter_by_failure_class_and_source_lists_exactly_those_traces(page, sample_report):
    index = _index(sample_report.read_text(encoding="utf-8"))
    names, rows = index["names"], index["rows"]
    cls = max(names["class"], key=lambda k: sum(names["class"].index(k) in r[12] for r in rows))
    src = names["source"][0]
    _open(page, sample_report)
    page.select_option("#filter-class", cls)
    page.select_option("#filter-source", src)
    want = [r[0] for r in rows if names["class"].index(cls) in r[12] and names["source"][r[1]] == src]
    assert 0 < len(want) < len(rows) and _count(page)[0] == len(want)
    assert _listed(page) == want[:100]


def test_a_linked_view_comes_back_whole_and_an_empty_one_says_so(page, chromium, sample_report):
    rows = _rows(sample_report)
    _open(page, sample_report)
    page.select_option("#filter-err", "no")
    page.click("#traces th[data-sort=calls] button")
    page.fill("#search", "a")
    listed, count, url = _listed(page), _count(page), page.url
    other = chromium.new_page(viewport={"width": 1400, "height": 1000})
    other.goto(url)
    other.wait_for_selector("#traces tbody tr")
    assert (_listed(other), _count(other)) == (listed, count)
    assert other.input_value("#search") == "a" and other.input_value("#filter-err") == "no"
    other.close()
    page.fill("#search", "no trace has this text anywhere")
    assert _count(page)[0] == 0 and "No trace matches these filters" in page.text_content("#traces tbody")
    page.click("#traces tbody button")  # clear the filters
    assert _count(page) == (len(rows), len(rows))


def test_a_trace_link_selects_scrolls_and_pages_to_it_and_an_unknown_id_says_so(page, sample_report):
    rows = _rows(sample_report)
    target = rows[250]  # on page 3 of the unfiltered list
    page.goto(sample_report.as_uri() + "#trace=" + target[0])
    page.wait_for_selector("#tracebar h2")
    assert page.text_content("#tracebar h2") == (target[4] or "(no task)")[:len(page.text_content("#tracebar h2"))]
    assert page.text_content("#pager button[aria-current=page]") == "3"
    row = page.locator("#traces tr.selected")
    assert row.get_attribute("title") == target[0]
    box, tbl = row.bounding_box(), page.locator("#tablebox").bounding_box()
    assert tbl["y"] <= box["y"] and box["y"] + box["height"] <= tbl["y"] + tbl["height"] + 1, "the selected row is out of view"
    # a hash changed on the open page is followed
    page.evaluate(f"location.hash = '#trace={rows[5][0]}'")
    page.wait_for_function(f"document.querySelector('#traces tr.selected')?.title === '{rows[5][0]}'")
    assert page.text_content("#pager button[aria-current=page]") == "1"
    page.evaluate("location.hash = '#trace=no-such-trace'")
    page.wait_for_selector("#trace .notice")
    assert "no-such-trace" in page.text_content("#trace .notice")


def test_back_and_forward_step_through_opened_traces(page, sample_report):
    _open(page, sample_report)
    ids = _listed(page)
    for k in (0, 3, 7):
        page.locator("#traces tbody tr").nth(k).click()
        page.wait_for_function(f"document.querySelector('#traces tr.selected')?.title === '{ids[k]}'")
    for k in (3, 0):
        page.go_back()
        page.wait_for_function(f"document.querySelector('#traces tr.selected')?.title === '{ids[k]}'")
        assert f"trace={ids[k]}" in page.url
    page.go_forward()
    page.wait_for_function(f"document.querySelector('#traces tr.selected')?.title === '{ids[3]}'")


def test_keyboard_moves_through_traces_pages_and_errors(page, sample_report):
    rows = _rows(sample_report)
    _open(page, sample_report)
    ids = _listed(page)
    selected = "document.querySelector('#traces tr.selected')?.title"
    for key, k in (("j", 0), ("j", 1), ("ArrowDown", 2), ("k", 1), ("ArrowUp", 0)):
        page.keyboard.press(key)
        page.wait_for_function(f"{selected} === '{ids[k]}'")
    page.keyboard.press("ArrowRight")
    assert page.text_content("#pager button[aria-current=page]") == "2"
    assert _listed(page) == [r[0] for r in rows[100:200]]
    page.keyboard.press("ArrowLeft")
    # the trace with the most errors: n walks its errors in order, wrapping round
    worst = max(rows, key=lambda r: r[6])
    page.fill("#search", worst[0])
    page.keyboard.press("Escape")
    page.keyboard.press("j")
    page.wait_for_selector("#tracebar .errnav")
    errs = page.locator("#trace .turn .err")
    assert errs.count() == worst[6]
    tops = []
    for _ in range(worst[6] + 1):
        page.keyboard.press("n")
        current = page.locator("#trace .turn .err.current")
        assert current.count() == 1
        box, pane = current.bounding_box(), page.locator("#trace").bounding_box()
        assert pane["y"] < box["y"] < pane["y"] + pane["height"], "the current error is not in view"
        tops.append(page.evaluate("[...document.querySelectorAll('#trace .turn .err')].findIndex(e => e.classList.contains('current'))"))
    assert tops == [*range(worst[6]), 0]


def test_summary_rows_filter_the_list_and_plots_open_full_size(page, sample_report):
    rows = _rows(sample_report)
    index = _index(sample_report.read_text(encoding="utf-8"))
    _open(page, sample_report)
    page.click("nav button[data-view=summary]")
    assert page.is_visible("#view-summary") and not page.is_visible("#traces") and "view=summary" in page.url
    row = page.locator("div.summary tr[data-filter=tool]").nth(1)
    tool = row.get_attribute("data-value")
    row.locator("td").first.click()
    assert page.is_visible("#traces") and page.input_value("#filter-tool") == tool
    code = index["names"]["tool"].index(tool)
    assert _count(page)[0] == sum(code in r[5] for r in rows)
    page.go_back()
    page.locator("div.summary tr[data-filter=tool]").nth(1).locator("td[data-err]").click()
    assert page.input_value("#filter-err") == "yes" and _count(page)[0] == sum(code in r[11] for r in rows)
    page.click("nav button[data-view=summary]")
    page.locator("div.summary tr[data-filter=class]").first.click()
    cls = page.input_value("#filter-class")
    assert _count(page)[0] == sum(index["names"]["class"].index(cls) in r[12] for r in rows) > 0
    page.click("nav button[data-view=plots]")
    thumb = page.locator("#view-plots figure img").first
    shown = thumb.bounding_box()["width"]
    thumb.click()
    assert page.is_visible("dialog#zoom")
    natural, width, height = page.eval_on_selector(
        "dialog#zoom img", "i => [i.naturalWidth, i.getBoundingClientRect().width, i.getBoundingClientRect().height]")
    assert width > shown * 1.5 and (width == natural or width >= 0.95 * 1400 or height >= 0.95 * 1000)
    page.keyboard.press("Escape")
    assert not page.is_visible("dialog#zoom")


@pytest.mark.parametrize("width,height", [(1400, 1000), (1024, 700)])
def test_layout_holds_at_both_widths(chromium, sample_report, width, height, tmp_path):
    page = chromium.new_page(viewport={"width": width, "height": height})
    _open(page, sample_report)
    page.click("#traces th[data-sort=errors] button")  # its arrow must fit too
    page.locator("#traces tbody tr").nth(2).click()
    page.wait_for_selector("#tracebar h2")
    heads = page.eval_on_selector_all(
        "#traces th button", "bs => bs.map(b => { const s = getComputedStyle(b), c = document.createElement('canvas').getContext('2d');"
        " c.font = s.font; const need = c.measureText(b.textContent).width + parseFloat(s.paddingLeft) + parseFloat(s.paddingRight);"
        " return [b.getBoundingClientRect().left, b.getBoundingClientRect().right, need <= b.clientWidth, b.textContent]; })")
    for (l1, r1, fits, text), (l2, *_) in zip(heads, heads[1:] + [[1e9]]):
        assert fits and r1 <= l2 + 0.5, f"column header {text!r} overlaps or is cut at {width}px"
    task = page.locator("#traces tbody tr td:first-child .clamp").first.bounding_box()
    assert task["width"] > 220, f"the task column is {task['width']:.0f}px wide at {width}px"
    assert page.evaluate("document.documentElement.scrollWidth") <= width, "the page scrolls sideways"
    page.screenshot(path=str(tmp_path / f"traces-{width}.png"))  # to look at: pytest --basetemp=DIR
    page.close()


# ----------------------------------------------------------------------------- odd inputs and the training data


def _odd_inputs(tmp_path: Path, real_dir: Path) -> dict[str, list[Path]]:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    qwen = real_dir / "hermes_harness__neurareport_qwen.jsonl"
    one = tmp_path / "one.jsonl"
    one.write_text(qwen.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    return {"empty": [empty], "single trace": [one], "no tool calls": [real_dir / "hermes_harness__hermeswith_kimi.jsonl"]}


@pytest.mark.parametrize("case", ["empty", "single trace", "no tool calls"])
def test_every_plot_table_and_the_page_cope_with_odd_inputs(case, tmp_path, real_dir, chromium):
    from streamproc.views import report

    files = _odd_inputs(tmp_path, real_dir)[case]
    stats, browser, tally = collect_with_browser(plan(files))
    for stem, fig in report.plots(stats).items():  # each plot function, drawn and saved
        assert report.png(fig)[:8] == b"\x89PNG\r\n\x1a\n", stem
    lengths = {"empty": [], "single trace": [4096], "no tool calls": [7, 7, 7]}[case]
    training = report.Training({"seq_len": 4096}, {"train": np.array(lengths, dtype=np.int64)})
    assert report.png(report.sequence_lengths(training))[:8] == b"\x89PNG\r\n\x1a\n"
    report.summary_text(stats, tally)
    out = tmp_path / "rep"
    assert main(["stats", *map(str, files), "--report", str(out)]) == 0
    page = chromium.new_page(viewport={"width": 1024, "height": 700})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((out / "index.html").as_uri())
    page.wait_for_selector("#traces tbody tr")
    assert _count(page) == (tally.parsed, tally.parsed)
    if not tally.parsed:
        assert "holds no traces" in page.text_content("#traces tbody")
    else:
        page.keyboard.press("j")
        page.wait_for_selector("#tracebar h2")
    page.keyboard.press("n")  # no errors to go to: nothing happens
    page.click("nav button[data-view=plots]")
    assert page.locator("#view-plots img").count() == len(report.plots(stats))
    assert not errors, errors
    page.close()


def test_wilson_interval_brackets_the_rate_and_narrows_with_more_samples():
    from streamproc.views.report import wilson

    for k, n in [(0, 1), (1, 1), (2, 9), (285, 1865), (0, 1000)]:
        lo, hi = wilson(k, n)
        assert 0 <= lo <= k / n <= hi <= 1
    assert wilson(2, 9)[1] - wilson(2, 9)[0] > wilson(285, 1865)[1] - wilson(285, 1865)[0] * 3
    assert wilson(0, 0) == (0.0, 1.0)


def test_training_section_reads_what_pack_wrote(page, real_row_files, tmp_path):
    from streamproc.views import report
    from streamproc.prepare.job import PackOptions, pack_to_dir

    shards = plan(real_row_files)
    packed = pack_to_dir(shards, tmp_path / "packed", PackOptions(seq_len=4096))
    train = packed.manifest["counts"]["train"]
    t = report.training(tmp_path / "packed")
    assert len(t.lengths["train"]) == train["sequences"] and int(t.lengths["train"].sum()) == train["tokens"]
    figures = {r.key: r.cells[1] for r in report.training_table(t).rows}
    assert figures["tokens"] == f"{train['tokens']:,}"
    share = f"{100 * train['trainable'] / train['tokens']:.1f}%"
    assert share in figures["trainable"]
    assert f"{100 * train['packing_efficiency']:.1f}%" in figures["packing_efficiency"]
    stats, browser, tally = collect_with_browser(shards)
    written = report.write_report(stats, tmp_path / "rep", tally, 10, browser, packed=tmp_path / "packed")
    assert tmp_path / "rep" / "sequence_lengths.png" in written
    assert "## Training data" in (tmp_path / "rep" / "summary.md").read_text()
    _open(page, tmp_path / "rep" / "index.html")
    page.click("nav button[data-view=training]")
    text = page.text_content("#view-training")
    assert share in text and f"{train['tokens']:,}" in text and page.locator("#view-training img").count() == 1
    # from the manifest alone (no shards at hand): the figures, no lengths plot
    report.write_report(stats, tmp_path / "rep2", tally, 10, browser, packed=packed.manifest)
    assert not (tmp_path / "rep2" / "sequence_lengths.png").exists()
    assert "Training data" in (tmp_path / "rep2" / "index.html").read_text()


def test_a_report_without_training_data_hides_its_tab(page, report):
    _open(page, report)
    assert not page.is_visible("nav button[data-view=training]")


def test_plots_draw_any_subset_of_real_traces_split_among_sources(real_rows):
    """Hypothesis picks which real traces (none, one, a few) go to which of up to three sources:
    every plot draws, whatever is empty or single-valued."""
    from streamproc.analyze import metrics
    from streamproc.views import report

    traces = [parse_trace(r) for r in real_rows]

    @settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(st.tuples(st.integers(0, len(traces) - 1), st.sampled_from(["a", "b", "c"])), max_size=4))
    def draw(picked):
        stats = metrics.Stats()
        for i, source in picked:
            metrics.add_trace(stats.source(source), traces[i])
        for stem, fig in report.plots(stats).items():
            assert report.png(fig, dpi=40)[:4] == b"\x89PNG", stem
        for table in report.tables(stats, 10):
            assert all(len(r.cells) == len(table.columns) for r in table.rows), table.title

    draw()


def test_the_page_ls_stats_and_features_name_and_count_tools_alike(real_rows):
    """One walk (analyze.facts) decides which tool a response belongs to and what a call without a
    name is called: the page's index, `ls`, stats and features agree on every real trace, and on
    a trace with a nameless call and a response paired with nothing."""
    from streamproc.analyze.features import features
    from streamproc.analyze.metrics import Counts, add_trace
    from streamproc.views.listing import summarize
    from streamproc.views.page import TASK_CHARS, entry

    odd = {"id": "odd", "conversations": [
        {"from": "human", "value": "go"},
        {"from": "gpt", "value": '<tool_call>{"arguments": {"x": 1}}</tool_call>'},
        {"from": "tool", "value": '<tool_response>{"content": {"error": "boom"}}</tool_response>'},
        {"from": "tool", "value": '<tool_response>{"content": {"exit_code": 2}}</tool_response>'},
    ]}
    traces = [parse_trace(r) for r in [*real_rows, odd]]
    assert any(entry(t).summary.failed_tools for t in traces)
    for t in traces:
        s, c = summarize(t), Counts()
        add_trace(c, t)
        assert entry(t).summary == summarize(t, TASK_CHARS)
        unparsed = sum(status(t.response(i)) == "unparsed" for i in range(len(t.responses)))
        assert set(s.tools) == set(c.tool_counts)
        assert s.errors == sum(c.error_classes.values()) + c.quality["malformed_calls"] + unparsed
        assert set(c.errors_by_tool) <= set(s.failed_tools)
        assert features(t)["failed_responses"] == sum(c.error_classes.values())
    s, c = summarize(traces[-1]), Counts()
    add_trace(c, traces[-1])
    assert s.tools == ("<malformed>",) and s.failed_tools == ("<malformed>", "<unpaired>")
    assert s.classes == ("malformed_call", "error_field", "exit_code") and s.errors == 3
    assert c.tool_counts == {"<malformed>": 1} and c.errors_by_tool == {"<malformed>": 1, "<unpaired>": 1}
    assert features(traces[-1])["unrecovered_failures"] == 2


def test_filter_links_and_failure_cells_follow_column_keys_not_labels(real_rows):
    """Renaming every column label keeps the summary's rows linked to the list's filters."""
    from streamproc.analyze.metrics import Stats, add_trace
    from streamproc.views import report
    from streamproc.views.tables import CATEGORIES_TABLE, CLASSES_TABLE, TOOLS_TABLE

    stats = Stats()
    for r in real_rows:
        add_trace(stats.source("real"), parse_trace(r))
    filters = {TOOLS_TABLE: "tool", CLASSES_TABLE: "class", CATEGORIES_TABLE: "category"}
    for table in report.tables(stats, 10):
        assert table.rows, table.title
        relabelled = dataclasses.replace(table, columns=[dataclasses.replace(c, label=f"[{c.label}]") for c in table.columns])
        html = webview._table_html(relabelled)
        assert f"<th>[{table.columns[0].label}]</th>" in html
        links = re.findall(r'data-filter="(\w+)" data-value="([^"]*)"', html)
        assert links == ([(filters[table.key], r.cells[0]) for r in table.rows] if table.key in filters else []), table.key
        assert html.count('data-err="yes"') == (len(table.rows) if table.key == TOOLS_TABLE else 0)


# ----------------------------------------------------------------------------- a report folder (any size)


def replicated_browser(real_rows, n: int, chunks: int = 5) -> tuple[webview.Browser, list]:
    """n index entries made of the real traces with new ids, their bodies in `chunks` chunks
    (entries share them: what grows with n is the index)."""
    traces = [parse_trace(r) for r in real_rows]
    entries = [webview.entry(t) for t in traces]
    chunk = zlib.compress(orjson.dumps([webview.body(traces[i % len(traces)]) for i in range(webview.CHUNK)]), 6)
    browser = webview.Browser(
        [dataclasses.replace(e, summary=dataclasses.replace(e.summary, id=f"replica-{i:06d}"),
                             chunk=i // webview.CHUNK % chunks, pos=i % webview.CHUNK)
         for i, e in ((i, entries[i % webview.CHUNK % len(traces)]) for i in range(n))],
        [chunk] * chunks,
    )
    return browser, traces


def _wait_whole(page) -> None:
    page.wait_for_function("!document.body.dataset.loading", timeout=120_000)


def test_report_folder_loads_its_index_in_parts_and_bodies_on_demand(page, tmp_path, monkeypatch):
    """`report -o DIR` on the sample, with index files of 64 rows: the page lists all 300 traces,
    filters them like the one-file page, and a link to a trace in the last index file opens it."""
    monkeypatch.setattr(webview, "INDEX_PAGE", 64)
    out = tmp_path / "rep"
    assert main(["report", str(SAMPLE), "-o", str(out), "--workers", "1"]) == 0
    assert sorted(p.name for p in (out / "index").iterdir()) == ["1.js", "2.js", "3.js", "4.js"]
    assert sorted(p.name for p in (out / "bodies").iterdir()) == ["0.js", "1.js"]
    html = (out / "index.html").read_text(encoding="utf-8")
    assert 'id="chunk-' not in html and len(_index(html)["rows"]) == 64
    single = tmp_path / "one.html"
    assert main(["report", str(SAMPLE), "-o", str(single), "--workers", "1"]) == 0
    rows = _rows(single)
    last = rows[-1][0]
    page.goto((out / "index.html").as_uri() + f"#trace={last}")
    page.wait_for_selector("#trace h2")
    _wait_whole(page)
    assert _count(page) == (300, 300)
    assert page.text_content("#trace h2") == (rows[-1][4] or "(no task)")
    page.select_option("#filter-source", index=1)
    source = page.eval_on_selector("#filter-source", "s => s.value")
    n = sum(1 for r in rows if _index(single.read_text(encoding="utf-8"))["names"]["source"][r[1]] == source)
    assert _count(page) == (n, 300)
    # a smaller report into the same folder leaves no index or body file of the larger one
    assert main(["report", str(SAMPLE), "-o", str(out), "--workers", "1", "--limit", "100"]) == 0
    assert sorted(p.name for p in (out / "index").iterdir()) == ["1.js"]
    assert sorted(p.name for p in (out / "bodies").iterdir()) == ["0.js"]


def test_report_folder_of_150000_traces_opens_like_a_small_one(page, real_rows, tmp_path):
    """The folder's index.html does not grow with the traces (the first index page only), the list
    appears before the rest of the index has come, and then every trace can be found and opened."""
    sizes = {}
    for n in (4_000, 150_000):
        browser, traces = replicated_browser(real_rows, n)
        sizes[n] = webview.write_page(tmp_path / str(n), browser, folder=True).stat().st_size
    assert abs(sizes[150_000] - sizes[4_000]) < 0.02 * sizes[4_000], sizes
    page.goto((tmp_path / "150000" / "index.html").as_uri())
    page.wait_for_selector("#traces tbody tr")
    assert page.locator("#traces tbody tr").count() == 100
    _wait_whole(page)
    assert _count(page) == (150_000, 150_000)
    page.fill("#search", "replica-149999")
    page.wait_for_function("document.querySelectorAll('#traces tbody tr').length === 1")
    page.locator("#traces tbody tr").first.click()
    page.wait_for_selector("#trace h2")
    assert page.text_content("#trace h2") == (traces[(149_999 % webview.CHUNK) % len(traces)].task or "(no task)")


def test_chunks_stay_on_disk_and_read_back_in_order(tmp_path):
    chunks = webview.Chunks([b"a", b"", b"ccc"], spill_dir=tmp_path)
    chunks.append(b"dd")
    assert list(chunks) == [b"a", b"", b"ccc", b"dd"] and chunks[2] == b"ccc" and len(chunks) == 4
    assert chunks == [b"a", b"", b"ccc", b"dd"] != [b"a"]
    assert not list(tmp_path.iterdir())  # unnamed: nothing is left behind by a killed run


def test_stats_report_of_many_traces_is_a_folder(page, tmp_path, monkeypatch):
    """`stats --report DIR` writes the folder form from FOLDER_FROM traces on (here 100): the page
    opens from DIR/index.html with every trace."""
    monkeypatch.setattr(webview, "FOLDER_FROM", 100)
    monkeypatch.setattr(webview, "INDEX_PAGE", 128)
    assert main(["stats", str(SAMPLE), "--report", str(tmp_path / "rep"), "--workers", "1"]) == 0
    assert (tmp_path / "rep" / "index" / "2.js").exists() and (tmp_path / "rep" / "bodies" / "1.js").exists()
    page.goto((tmp_path / "rep" / "index.html").as_uri())
    page.wait_for_selector("#traces tbody tr")
    _wait_whole(page)
    assert _count(page) == (300, 300)
