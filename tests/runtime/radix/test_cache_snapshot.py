"""The cache view's data: `snapshot_tree` on a RadixCache (order, bounds, omitted children,
tiers, locks), `decode_snapshot`, `parse_limits` and the /cache routes in-process (400s naming
the parameter, 404 without --enable-cache-view, the API key), and `Engine.cache_snapshot` on
the tiny model (hits counted at admission, top-N by hits, bounds, bad limits), one replica and
two. The page itself is tested in a browser: tests/runtime/entrypoints/test_cache_view_browser.py."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import httpx
import pytest
import torch
from helpers import get_engine

from radixlm import Engine
from radixlm.runtime.entrypoints.cache_view import parse_limits
from radixlm.runtime.entrypoints.http_errors import HTTPError
from radixlm.runtime.entrypoints.http_guard import RedactQueryKey, redact_query_key
from radixlm.runtime.entrypoints.http_server import create_app
from radixlm.runtime.managers.tokenizer_manager import TokenizerManager
from radixlm.runtime.radix.cache_snapshot import (
    MAX_SNAPSHOT_NODES,
    SnapshotLimits,
    decode_snapshot,
    snapshot_tree,
)
from radixlm.runtime.radix.host_pool import HostKVPool, HostPoolSize
from radixlm.runtime.radix.kv_transfer import KVTransfer
from radixlm.runtime.radix.memory_pool import KVPool
from radixlm.runtime.radix.radix_cache import RadixCache
from radixlm.testing import build_tiny_model


def slots(n: int, start: int = 0) -> torch.Tensor:
    return torch.arange(start, start + n, dtype=torch.int64)


def few_shot_tree() -> tuple[RadixCache, dict[str, object]]:
    """Two prefixes under the root: `a` (20 tokens, three children, three hits) and `b` (6 tokens,
    one hit)."""
    tree = RadixCache(lambda s: None)
    a = list(range(100, 120))  # 20 tokens
    b = list(range(200, 205))  # 5 tokens, and one more: a node of 6
    tree.insert(a + [1, 2], slots(22))
    tree.insert(a + [3, 4, 5], slots(23))  # splits a off [1, 2]
    tree.insert(a + [6], slots(21, 100))
    tree.insert(b + [7], slots(6, 200))
    for tail in ([1, 2], [3, 4, 5], [6]):  # whole keys: a match ending inside a node splits it
        tree.record_hit(tree.match_prefix(a + tail).last_node)
    tree.record_hit(tree.match_prefix(b + [7]).last_node)
    nodes = {"a": tree.root.children[100], "b": tree.root.children[200]}
    return tree, nodes


class ByteTokenizer:
    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(chr(i) for i in ids)


# ------------------------------------------------------------------------------- snapshot_tree
def test_snapshot_is_the_tree_root_first_each_node_after_its_parent():
    tree, nodes = few_shot_tree()
    snap = snapshot_tree(tree, SnapshotLimits())
    got = snap["nodes"]
    assert got[0]["parent"] is None and got[0]["tier"] == "root" and got[0]["tokens"] == 0
    seen = set()
    for node in got:
        assert node["parent"] is None or node["parent"] in seen
        seen.add(node["id"])
    by_id = {n["id"]: n for n in got}
    a = by_id[nodes["a"].node_id]
    assert (a["tokens"], a["start"], a["hits"]) == (20, 0, 3)
    kids = [n for n in got if n["parent"] == a["id"]]
    assert sorted(n["tokens"] for n in kids) == [1, 2, 3] and all(n["start"] == 20 for n in kids)
    assert snap["admissions"] == got[0]["hits"] == 4
    assert snap["device_tokens"] == tree.total_size == 20 + 2 + 3 + 1 + 6
    assert snap["omitted_nodes"] == 0 and snap["host_tokens"] is None
    assert all(n["tier"] == "device" and n["evictable"] and n["locks"] == 0 for n in got[1:])
    # by hits, best-first from the root gives non-increasing hits (hits are monotone down the tree)
    hits = [n["hits"] for n in got[1:]]
    assert hits == sorted(hits, reverse=True)


def test_max_nodes_bounds_the_walk_and_summarises_what_it_left_out():
    tree, nodes = few_shot_tree()
    snap = snapshot_tree(tree, SnapshotLimits(max_nodes=2))
    assert [n["id"] for n in snap["nodes"]] == [tree.root.node_id, nodes["a"].node_id]  # the most hits
    root, a = snap["nodes"]
    assert (root["omitted_children"], root["omitted_tokens"]) == (1, 6)  # b
    assert (a["omitted_children"], a["omitted_tokens"]) == (3, 6)
    assert snap["omitted_nodes"] == 4
    by_tokens = snapshot_tree(tree, SnapshotLimits(max_nodes=2, order="tokens"))
    assert by_tokens["nodes"][1]["id"] == nodes["a"].node_id
    recent = snapshot_tree(tree, SnapshotLimits(max_nodes=2, order="recent"))
    assert recent["nodes"][1]["id"] == nodes["b"].node_id  # matched last
    assert snapshot_tree(tree, SnapshotLimits(max_nodes=1))["nodes"][0]["omitted_children"] == 2


def test_text_is_cut_at_max_text_tokens_and_decoded():
    tree, nodes = few_shot_tree()
    snap = snapshot_tree(tree, SnapshotLimits(max_text_tokens=4))
    decoded = decode_snapshot({"replicas": [snap]}, ByteTokenizer())["replicas"][0]
    a = next(n for n in decoded["nodes"] if n["id"] == nodes["a"].node_id)
    assert "ids" not in a
    assert a["text"] == "".join(chr(i) for i in range(100, 104)) and a["text_truncated"]
    short = next(n for n in decoded["nodes"] if n["tokens"] == 1)
    assert not short["text_truncated"] and len(short["text"]) == 1


class Utf8ByteTokenizer:
    """Token i is byte i: a multi-byte character takes several tokens."""

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def test_a_character_split_by_a_node_boundary_is_shown_whole_where_it_ends():
    # 日本 and 日曜 share 日 and the first byte of their second character
    tree = RadixCache(lambda s: None)
    one, two = list("日本".encode()), list("日曜".encode())
    tree.insert(one, slots(len(one)))
    tree.insert(two, slots(len(two), 100))
    snap = snapshot_tree(tree, SnapshotLimits())
    nodes = decode_snapshot({"replicas": [snap]}, Utf8ByteTokenizer())["replicas"][0]["nodes"]
    texts = {n["tokens"]: n["text"] for n in nodes if n["parent"] is not None}
    shared = next(n for n in nodes if n["parent"] == nodes[0]["id"])
    assert shared["tokens"] == 4 and shared["text"] == "日"
    children = sorted(n["text"] for n in nodes if n["parent"] == shared["id"])
    assert children == sorted(["本", "曜"])
    assert "\ufffd" not in "".join(texts.values())


def test_locks_and_tiers_are_reported():
    pool = KVPool(32, 1, 1, 4, torch.float32, torch.device("cpu"))
    host = HostKVPool(HostPoolSize(64, KVPool.bytes_per_token(1, 1, 4, torch.float32)), 1, pin=False)
    cache = RadixCache(pool.free, host=KVTransfer(pool, host))
    keep = list(range(10))
    cache.insert(keep, pool.alloc(10))
    cache.insert(list(range(50, 58)), pool.alloc(8))
    locked = cache.match_prefix(keep).last_node
    cache.inc_lock_ref(locked)
    assert cache.evict(8) == 8  # the unlocked one goes to the host
    snap = snapshot_tree(cache, SnapshotLimits())
    by_id = {n["id"]: n for n in snap["nodes"]}
    assert by_id[locked.node_id]["locks"] == 1 and not by_id[locked.node_id]["evictable"]
    assert by_id[locked.node_id]["tier"] == "device"
    host = next(n for n in snap["nodes"] if n["tier"] == "host")
    assert host["tokens"] == 8 and host["evictable"]
    assert (snap["device_tokens"], snap["device_locked_tokens"], snap["host_tokens"]) == (10, 10, 8)
    cache.dec_lock_ref(locked)


# ------------------------------------------------------------------------------- limits
def test_parse_limits_types_the_query_and_skips_the_api_key():
    query = {"max_nodes": "50", "max_text_tokens": " 0 ", "order": "recent", "api_key": "k"}
    assert parse_limits(query) == {"max_nodes": 50, "max_text_tokens": 0, "order": "recent"}
    assert parse_limits({}) == {}


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ({"max_nodes": "abc"}, "max_nodes"),
        ({"max_nodes": "-1"}, "max_nodes"),
        ({"max_nodes": "1.5"}, "max_nodes"),
        ({"max_nodes": "²"}, "max_nodes"),  # str.isdigit says yes, int() says no
        ({"max_nodes": "9" * 30}, "max_nodes"),  # past 2**64: could not even be sent
        ({"max_nodes": "0"}, "max_nodes"),
        ({"max_nodes": str(MAX_SNAPSHOT_NODES + 1)}, "max_nodes"),
        ({"max_text_tokens": "5000"}, "max_text_tokens"),
        ({"max_text_tokens": ""}, "max_text_tokens"),
        ({"order": "random"}, "order"),
        ({"depth": "3"}, "depth"),
    ],
)
def test_parse_limits_refuses_bad_values_naming_the_parameter(query, named):
    with pytest.raises(HTTPError) as err:
        parse_limits(query)
    assert err.value.status == 400 and named in err.value.message


@pytest.mark.parametrize(
    "limits",
    [
        {"max_nodes": 0},
        {"max_nodes": MAX_SNAPSHOT_NODES + 1},
        {"max_nodes": True},
        {"max_nodes": "5"},
        {"max_text_tokens": -1},
        {"order": "hot"},
    ],
)
def test_snapshot_limits_refuse_out_of_range(limits):
    with pytest.raises(ValueError, match=next(iter(limits))):
        SnapshotLimits(**limits)


# ------------------------------------------------------------------------------- the routes
class SnapshotTM:
    """What the cache routes need of a TokenizerManager: the scheduler's answer to
    `cache_snapshot` over a real tree, and a tokenizer."""

    def __init__(self) -> None:
        self.tree, _ = few_shot_tree()
        self.tokenizer = ByteTokenizer()
        self.metrics = None
        self.sent: list[dict] = []

    async def control(self, op: str, timeout: float = 30.0, args: dict | None = None):
        assert op == "cache_snapshot"
        self.sent.append(dict(args or {}))
        try:
            limits = SnapshotLimits.from_args(args or {})
        except (TypeError, ValueError) as exc:
            return SimpleNamespace(ok=False, data={}, error=str(exc))
        return SimpleNamespace(ok=True, data={"replicas": [snapshot_tree(self.tree, limits)]}, error=None)

    cache_snapshot = TokenizerManager.cache_snapshot  # the real one, over this control


def get_all(app, requests: list[tuple[str, dict]]) -> list[httpx.Response]:
    async def calls() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return [await client.get(path, headers=headers) for path, headers in requests]

    return asyncio.run(calls())


def test_cache_routes_are_404_without_the_flag():
    tm = SnapshotTM()
    page, data = get_all(create_app(tm, "tiny"), [("/cache", {}), ("/cache.json", {})])
    for r in (page, data):
        assert r.status_code == 404 and "--enable-cache-view" in r.json()["error"]["message"]
    assert tm.sent == []


def test_cache_routes_serve_the_page_and_the_decoded_snapshot():
    tm = SnapshotTM()
    app = create_app(tm, "tiny", enable_cache_view=True)
    page, data, bad, bad_order, unknown = get_all(
        app,
        [
            ("/cache", {}),
            ("/cache.json?max_nodes=3&order=tokens", {}),
            ("/cache.json?max_nodes=lots", {}),
            ("/cache.json?order=sideways", {}),
            ("/cache.json?max_depth=2", {}),
        ],
    )
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-store" and "window.cacheView" in page.text
    body = data.json()
    assert data.status_code == 200 and len(body["replicas"]) == 1
    snap = body["replicas"][0]
    assert len(snap["nodes"]) == 3 and snap["order"] == "tokens"
    assert all("text" in n and "preview" in n and "ids" not in n for n in snap["nodes"])
    for r, name in ((bad, "max_nodes"), (bad_order, "order"), (unknown, "max_depth")):
        assert r.status_code == 400 and name in r.json()["error"]["message"], r.text
    assert tm.sent == [{"max_nodes": 3, "order": "tokens"}]  # bad queries never reach the scheduler


def test_the_page_takes_the_key_in_its_query_the_json_only_as_a_header():
    app = create_app(SnapshotTM(), "tiny", api_key="sesame", enable_cache_view=True)
    bearer = {"Authorization": "Bearer sesame"}
    answers = get_all(
        app,
        [
            ("/cache", {}),
            ("/cache?api_key=wrong", {}),
            ("/cache?api_key=sesame", {}),
            ("/cache", bearer),
            ("/cache.json?api_key=sesame", {}),
            ("/cache.json", bearer),
        ],
    )
    assert [r.status_code for r in answers] == [401, 401, 200, 200, 401, 200]
    assert "api key" in answers[0].json()["error"]["message"].lower()


def test_a_key_in_the_query_never_reaches_the_access_log():
    assert redact_query_key("/cache?api_key=sesame") == "/cache?api_key=***"
    assert redact_query_key("/cache?order=hits&api%5Fkey=s&x=1") == "/cache?order=hits&api%5Fkey=***&x=1"
    assert redact_query_key("/cache.json?max_nodes=3") == "/cache.json?max_nodes=3"
    # uvicorn's access line: (client, method, path with query, http version, status)
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/cache?api_key=sesame", "1.1", 200), None,
    )  # fmt: skip
    assert RedactQueryKey().filter(record) and "sesame" not in record.getMessage()


# ------------------------------------------------------------------------------- the Engine
def prompts_sharing(engine: Engine, n: int, seed: int) -> tuple[list[int], list[list[int]]]:
    tok = engine.tokenizer_manager.tokenizer
    prefix = tok.encode(f"Example {seed}: the quick brown fox jumps over the lazy dog. " * 3)
    return prefix, [prefix + tok.encode(f" Question {i} about item {seed * 10 + i}?") for i in range(n)]


def path_to(snap: dict, node_id: int) -> list[dict]:
    by_id = {n["id"]: n for n in snap["nodes"]}
    path = []
    while node_id is not None:
        path.append(by_id[node_id])
        node_id = by_id[node_id]["parent"]
    return path[::-1]


def test_engine_snapshot_counts_hits_at_admission():
    engine = get_engine("llama")
    params = {"max_new_tokens": 2, "temperature": 0, "ignore_eos": True}
    prefix, prompts = prompts_sharing(engine, 4, 1)
    _, others = prompts_sharing(engine, 2, 2)
    for ids in prompts + others:  # one at a time: each later request finds its prefix cached
        engine.generate(input_ids=ids, sampling_params=params)
    snap = engine.cache_snapshot()["replicas"][0]
    assert snap["admissions"] == len(prompts) + len(others)
    assert snap["device_tokens"] > len(prefix) and snap["omitted_nodes"] == 0
    # the node holding the shared prefix's last token: three requests reused it (the first computed it)
    last = len(prefix) - 1
    at_end = [n for n in snap["nodes"][1:] if n["start"] <= last < n["start"] + n["tokens"]]
    shared = max(at_end, key=lambda n: n["hits"])
    assert shared["hits"] >= 3
    # its path's text is the prompt's, node by node
    path = path_to(snap, shared["id"])
    end = shared["start"] + shared["tokens"]
    tok = engine.tokenizer_manager.tokenizer
    assert "".join(n["text"] for n in path) == tok.decode(prompts[0][:end], skip_special_tokens=False)
    # ancestors have at least their descendants' hits, and by hits the list never goes up
    by_id = {n["id"]: n for n in snap["nodes"]}
    for n in snap["nodes"][1:]:
        assert by_id[n["parent"]]["hits"] >= n["hits"]
    hits = [n["hits"] for n in snap["nodes"][1:]]
    assert hits == sorted(hits, reverse=True)
    # bounded: max_nodes nodes, the rest counted on their parents
    small = engine.cache_snapshot(max_nodes=2)["replicas"][0]
    assert len(small["nodes"]) == 2 and small["nodes"][1]["hits"] == max(hits)
    assert small["omitted_nodes"] == sum(n["omitted_children"] for n in small["nodes"]) > 0
    cut = engine.cache_snapshot(max_text_tokens=1)["replicas"][0]
    assert all(n["text_truncated"] == (n["tokens"] > 1) for n in cut["nodes"])


@pytest.mark.parametrize(
    "limits", [{"max_nodes": 0}, {"max_nodes": 10**6}, {"max_text_tokens": -5}, {"order": "size"}]
)
def test_engine_snapshot_refuses_bad_limits(limits):
    with pytest.raises(ValueError, match=next(iter(limits))):
        get_engine("llama").cache_snapshot(**limits)


def test_two_replicas_each_send_their_tree_within_the_limits():
    with Engine(str(build_tiny_model("llama")), dp_size=2, max_total_tokens=2000) as engine:
        params = {"max_new_tokens": 2, "temperature": 0, "ignore_eos": True}
        for seed in (3, 4):
            _, prompts = prompts_sharing(engine, 2, seed)
            for ids in prompts:
                engine.generate(input_ids=ids, sampling_params=params)
        replicas = engine.cache_snapshot(max_nodes=2)["replicas"]
        assert len(replicas) == 2
        assert all(len(r["nodes"]) <= 2 for r in replicas)  # the router passed the limits on
        assert sum(r["admissions"] for r in replicas) == 4
        assert engine.flush_cache()
