"""The cache view (/cache) in a real browser: headless Chromium driven by Playwright, against a
live `radixlm serve --enable-cache-view --api-key ...` on the tiny model after a few-shot
workload. The drawn nodes are exactly /cache.json's; the most-hit node is the hottest colour;
widths and heights follow the layout's promise (width grows with a node's tokens, height is
proportional to its subtree's tokens); a click shows the node's text and its path's; the
selection survives a refresh; omitted children are stubs; fetch errors are shown; prompt text
is never parsed as HTML. Without the key, /cache is 401; with it in the address, the access log
does not show it.

Chromium is Debian's `chromium` (or $RADIXLM_CHROMIUM); Playwright's own browser download is
never used. Without either the browser tests skip, unless RADIXLM_REQUIRE_BROWSER=1 (CI sets it
when it installed Chromium), where they fail. RADIXLM_CACHE_VIEW_SCREENSHOT=path.png saves
what the page drew.

    RADIXLM_REQUIRE_BROWSER=1 .venv/bin/python -m pytest tests/runtime/entrypoints/test_cache_view_browser.py
"""

from __future__ import annotations

import json
import math
import os
import shutil

import httpx
import pytest
from polling import wait_until
from server_process import ServerProcess

from radixlm.testing import build_tiny_model

KEY = "view-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SQRT_FLOOR = 3  # the page's width rule: width ∝ sqrt(tokens) + 3
OPTIONS = {"max_nodes": "200", "max_text_tokens": "256", "order": "hits"}
HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
SYSTEM = "You are a careful assistant. Answer in as few words as you can.\n"
PREFIXES = [
    SYSTEM + "Translate to French.\nsea otter => loutre de mer\npeppermint => menthe poivrée\ncheese =>",
    SYSTEM + "Add the numbers.\n2 + 3 = 5\n10 + 7 = 17\n21 + 4 = 25\n",
    SYSTEM + "Classify the sentiment.\nI love it: positive\nIt broke at once: negative\n" + HOSTILE + "\n",
]
QUESTIONS = [" plush giraffe =>", " 8 + 9 =", " The battery died:", " 40 + 2 ="]


def chromium_path() -> str | None:
    path = os.environ.get("RADIXLM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return path if path and os.access(path, os.X_OK) else None


def browser_or_skip() -> tuple[object, str]:
    """Playwright's sync API and the Chromium to drive, or a skip naming what is missing (a
    failure under RADIXLM_REQUIRE_BROWSER=1)."""
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright, reason = None, "the playwright package is not installed (pip install -e '.[test]')"
    path = chromium_path()
    if reason is None and path is None:
        reason = "no Chromium found: apt-get install chromium, or set RADIXLM_CHROMIUM to its path"
    if reason is not None:
        if os.environ.get("RADIXLM_REQUIRE_BROWSER") == "1":
            pytest.fail(f"RADIXLM_REQUIRE_BROWSER=1, but {reason}")
        pytest.skip(reason)
    return sync_playwright, path


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def server():
    # --log-level info: uvicorn's access log is on, and must not show the key from a page's address
    args = ["--enable-cache-view", "--api-key", KEY, "--log-level", "info"]
    srv = ServerProcess(str(build_tiny_model("llama")), args).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60, headers=AUTH) as client:
        yield client


@pytest.fixture(scope="module")
def workload(http):
    """3 few-shot prefixes (one system line in common) x 4 questions, the first two of each
    asked twice; then idle. The tree: root, the system line, a prefix each, the questions."""
    for prefix in PREFIXES:
        for q in QUESTIONS + QUESTIONS[:2]:
            body = {"prompt": prefix + q, "max_tokens": 3, "temperature": 0}
            r = http.post("/v1/completions", json=body)
            assert r.status_code == 200, r.text

    def idle() -> bool:
        info = http.get("/server_info").json()
        return info["running"] == 0 and info["waiting"] == 0

    wait_until(idle, 20, 0.1, what="the server to go idle")
    return len(PREFIXES) * (len(QUESTIONS) + 2)


@pytest.fixture(scope="module")
def browser():
    sync_playwright, path = browser_or_skip()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, server, workload):
    """The view, loaded with the key in its address, drawn once, then paused (no timer fetches)."""
    # bypass_csp: Playwright's polling evaluates strings, which the page's own policy forbids
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=True)
    pg = ctx.new_page()
    pg.set_default_timeout(20_000)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(f"{server.url}/cache?api_key={KEY}")
    pg.wait_for_function("window.cacheView && window.cacheView.renders > 0")
    pg.evaluate("window.cacheView.pause()")
    pg.evaluate("window.cacheView.refresh()")  # awaited: the snapshot now is the tree at rest
    yield pg
    shot = os.environ.get("RADIXLM_CACHE_VIEW_SCREENSHOT")
    if shot:
        pg.screenshot(path=shot)
    ctx.close()
    assert errors == [], errors


# ---------------------------------------------------------------------------------------- helpers
def replica(pg) -> dict:
    return pg.evaluate("window.cacheView.lastSnapshot")["replicas"][0]


def drawn(pg) -> dict[int, dict]:
    """Every drawn node's data attributes and its rect's geometry and fill."""
    rows = pg.evaluate(
        """() => Array.from(document.querySelectorAll('#chart [data-node-id]'), (g) => {
            const r = g.querySelector('rect.box');
            return {id: Number(g.dataset.nodeId), hits: Number(g.dataset.hits), heat: g.dataset.heat,
                    fill: r.getAttribute('fill'), hitFill: g.dataset.fill, cls: g.getAttribute('class'),
                    x: +r.getAttribute('x'), y: +r.getAttribute('y'),
                    w: +r.getAttribute('width'), h: +r.getAttribute('height')};
        })"""
    )
    return {row["id"]: row for row in rows}


def subtree_values(snap: dict) -> dict[int, int]:
    """What the layout promises heights in proportion to: a node's own tokens, its shown
    descendants' and its omitted children's own tokens."""
    value = {n["id"]: n["tokens"] + n["omitted_tokens"] for n in snap["nodes"]}
    for n in reversed(snap["nodes"]):  # children come after their parent
        if n["parent"] is not None:
            value[n["parent"]] += value[n["id"]]
    return value


def comparable(node: dict) -> dict:
    return {k: v for k, v in node.items() if k != "idle_s"}


# ---------------------------------------------------------------------------------------- tests
def test_cache_page_and_json_need_the_key(server):
    for path in ("/cache", "/cache?api_key=wrong", f"/cache.json?api_key={KEY}"):
        r = httpx.get(server.url + path, timeout=10)
        assert r.status_code == 401, (path, r.text)
        assert "api key" in r.json()["error"]["message"].lower()
    assert httpx.get(f"{server.url}/cache?api_key={KEY}", timeout=10).status_code == 200
    wait_until(lambda: "/cache?api_key=***" in server.output(200), 10, what="the access log line for /cache")
    assert KEY not in "".join(server.lines)
    bad = httpx.get(f"{server.url}/cache.json?max_nodes=0", headers=AUTH, timeout=10)
    assert bad.status_code == 400 and "max_nodes" in bad.json()["error"]["message"]


def test_the_drawing_is_the_snapshot(page, http, workload):
    snap = replica(page)
    direct = http.get("/cache.json", params=OPTIONS).json()["replicas"][0]
    assert page.evaluate("window.cacheView.options")["max_nodes"] == int(OPTIONS["max_nodes"])
    # nothing ran between the two fetches, so they are the same tree
    assert [comparable(n) for n in snap["nodes"]] == [comparable(n) for n in direct["nodes"]]
    assert snap["admissions"] == direct["admissions"] == workload
    ids = {n["id"] for n in snap["nodes"]}
    assert sorted(page.evaluate("window.cacheView.drawnNodeIds()")) == sorted(ids)
    assert set(drawn(page)) == ids and page.locator("[data-omitted-for]").count() == 0
    # the header's totals
    assert page.text_content("#t-device") == f"{direct['device_tokens']:,}"
    assert page.text_content("#t-admissions") == f"{workload:,}"
    assert page.text_content("#t-shown") == str(len(ids))
    assert page.is_hidden("#replica-wrap") and page.is_hidden("#t-host-wrap")
    assert "paused" in page.text_content("#status")


def test_the_most_hit_node_is_the_hottest_colour(page):
    snap, rows = replica(page), drawn(page)
    nodes = snap["nodes"][1:]
    hottest = max(nodes, key=lambda n: n["hits"])
    assert hottest["hits"] > 1
    top = page.evaluate("window.cacheView.hottestColor()")
    assert rows[hottest["id"]]["fill"] == rows[hottest["id"]]["hitFill"] == top
    assert page.get_attribute("#legend-hottest", "fill") == top
    # colour follows hits: more hits, strictly hotter; equal hits, the same colour
    by_hits = sorted(nodes, key=lambda n: n["hits"])
    for a, b in zip(by_hits, by_hits[1:]):
        ra, rb = rows[a["id"]], rows[b["id"]]
        if a["hits"] < b["hits"]:
            assert float(ra["heat"]) < float(rb["heat"]) and ra["fill"] != rb["fill"]
        else:
            assert ra["fill"] == rb["fill"]
    assert all(rows[n["id"]]["fill"] != top for n in nodes if n["hits"] < hottest["hits"])


def test_sizes_follow_tokens_as_the_layout_promises(page):
    snap, rows = replica(page), drawn(page)
    nodes, by_id = snap["nodes"], {n["id"]: n for n in snap["nodes"]}
    # width: one scale for the whole picture, sqrt(tokens) + floor, so ordered by tokens
    unit = {n["id"]: rows[n["id"]]["w"] / (math.sqrt(n["tokens"]) + SQRT_FLOOR) for n in nodes[1:]}
    assert max(unit.values()) == pytest.approx(min(unit.values()), rel=1e-6)
    by_tokens = sorted(nodes[1:], key=lambda n: n["tokens"])
    for a, b in zip(by_tokens, by_tokens[1:]):
        wa, wb = rows[a["id"]]["w"], rows[b["id"]]["w"]
        assert wa < wb if a["tokens"] < b["tokens"] else wa == pytest.approx(wb)
    # height: proportional to the subtree's tokens, one scale for the whole picture
    value = subtree_values(snap)
    scale = {i: rows[i]["h"] / value[i] for i in value if value[i]}
    assert max(scale.values()) == pytest.approx(min(scale.values()), rel=1e-6)
    # icicle: a child starts where its parent ends, inside its parent's band
    for n in nodes[1:]:
        child, parent = rows[n["id"]], rows[n["parent"]]
        assert child["x"] == pytest.approx(parent["x"] + parent["w"])
        assert parent["y"] - 1e-6 <= child["y"]
        assert child["y"] + child["h"] <= parent["y"] + parent["h"] + 1e-6
        assert by_id[n["parent"]]["start"] + by_id[n["parent"]]["tokens"] == n["start"]


def test_a_click_shows_the_text_and_the_path_and_survives_a_refresh(page, server):
    snap = replica(page)
    by_id = {n["id"]: n for n in snap["nodes"]}
    # the deepest node with more than one hit: a few-shot prefix, under the system line
    node = max((n for n in snap["nodes"][1:] if n["hits"] > 1), key=lambda n: (n["start"], n["hits"]))
    page.locator(f'#chart [data-node-id="{node["id"]}"] > rect.box').click()
    page.wait_for_function(f"window.cacheView.selectedId === {node['id']}")
    assert page.is_visible("#panel")
    assert page.text_content("#node-text") == node["text"]
    path, at = [], node
    while at is not None:
        path.insert(0, at)
        at = by_id.get(at["parent"])
    assert len(path) >= 3
    assert page.text_content("#path-text") == "".join(n["text"] for n in path)
    names, values = page.locator("#p-fields dt"), page.locator("#p-fields dd")
    fields = dict(zip(names.all_text_contents(), values.all_text_contents()))
    assert fields["tokens"] == f"{node['tokens']:,}" and fields["hits"].startswith(f"{node['hits']:,} ")
    assert fields["tier"] == "device" and fields["evictable"] == "yes" and fields["locks"] == "0"
    assert "selected" in drawn(page)[node["id"]]["cls"]
    for ancestor in path[:-1]:
        assert "on-path" in drawn(page)[ancestor["id"]]["cls"]
    # a refresh redraws everything; the selection is kept by id
    renders = page.evaluate("window.cacheView.renders")
    page.evaluate("window.cacheView.refresh()")
    assert page.evaluate("window.cacheView.renders") == renders + 1
    assert page.evaluate("window.cacheView.selectedId") == node["id"]
    assert "selected" in drawn(page)[node["id"]]["cls"] and page.text_content("#node-text") == node["text"]
    # and so does a timer refresh: resume for one round
    page.fill("#interval", "0.5")
    page.dispatch_event("#interval", "change")
    page.evaluate("window.cacheView.resume()")
    page.wait_for_function(f"window.cacheView.renders >= {renders + 3}")
    page.evaluate("window.cacheView.pause()")
    assert page.evaluate("window.cacheView.selectedId") == node["id"] and page.is_visible("#panel")
    page.click("#p-close")
    assert page.is_hidden("#panel") and page.evaluate("window.cacheView.selectedId") is None


def test_prompt_text_is_shown_never_parsed(page):
    snap = replica(page)
    node = next(n for n in snap["nodes"] if "onerror" in n["text"])
    page.locator(f'#chart [data-node-id="{node["id"]}"] > rect.box').click()
    assert HOSTILE.split("\n")[0][:20] in page.text_content("#node-text")
    assert page.evaluate("document.querySelectorAll('img, #panel script').length") == 0
    assert page.evaluate("window.pwned") is None


def test_omitted_children_are_stubs_and_the_options_refetch(page):
    page.fill("#max-nodes", "4")
    page.dispatch_event("#max-nodes", "change")
    page.wait_for_function("window.cacheView.lastSnapshot.replicas[0].nodes.length === 4")
    snap = replica(page)
    assert sorted(page.evaluate("window.cacheView.drawnNodeIds()")) == sorted(n["id"] for n in snap["nodes"])
    parents = {n["id"]: n["omitted_children"] for n in snap["nodes"] if n["omitted_children"]}
    assert parents and sum(parents.values()) == snap["omitted_nodes"]
    stubs = page.eval_on_selector_all(
        "[data-omitted-for]", "els => els.map(e => [Number(e.dataset.omittedFor), Number(e.dataset.count)])"
    )
    assert dict(stubs) == parents
    assert page.text_content("#t-omitted") == str(snap["omitted_nodes"])
    page.select_option("#order", "tokens")
    page.wait_for_function("window.cacheView.lastSnapshot.replicas[0].order === 'tokens'")
    assert len(replica(page)["nodes"]) == 4
    # two changes in quick succession: the second is fetched after the first lands, not lost
    page.fill("#max-nodes", "5")
    page.dispatch_event("#max-nodes", "change")
    page.select_option("#order", "recent")
    page.wait_for_function(
        "(s => s.order === 'recent' && s.nodes.length === 5)(window.cacheView.lastSnapshot.replicas[0])"
    )


def answer_with(status: int, body: dict):
    def handler(route, request) -> None:
        route.fulfill(status=status, body=json.dumps(body), content_type="application/json")

    return handler


def test_fetch_errors_are_shown(page):
    before = sorted(page.evaluate("window.cacheView.drawnNodeIds()"))
    answers = [
        (401, {"error": {"message": "missing or invalid API key"}}, "401"),
        (404, {"error": {"message": "the cache view is off"}}, "404"),
        (400, {"error": {"message": "cache snapshot refused: max_nodes must be ..."}}, "max_nodes"),
    ]
    for status, body, shown in answers:
        page.route("**/cache.json*", answer_with(status, body))
        page.evaluate("window.cacheView.refresh()")
        assert "error" in page.get_attribute("#status", "class")
        assert shown in page.text_content("#status")
        page.unroute("**/cache.json*")
    page.route("**/cache.json*", lambda route: route.abort())
    page.evaluate("window.cacheView.refresh()")
    assert "network error" in page.text_content("#status")
    page.unroute("**/cache.json*")
    assert KEY not in page.text_content("body")  # the key is sent, never shown
    page.evaluate("window.cacheView.refresh()")
    assert "error" not in page.get_attribute("#status", "class")
    assert sorted(page.evaluate("window.cacheView.drawnNodeIds()")) == before
