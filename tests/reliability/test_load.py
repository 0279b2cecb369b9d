"""Load: 1,000 concurrent requests against one `radixlm serve` on the tiny model (CPU).

The mix, by request index: greedy completions (some sharing a long system prefix, some
not), the same prompts streamed, grammar-constrained requests (a regex and a JSON schema,
sampled with seeds), and seeded sampled chat completions. All 1,000 are in flight at once
over real HTTP connections. Proved:

* every request completes exactly once: one response (or one final SSE chunk and one
  [DONE]) per request, and the scheduler's finished-request counter moved by exactly 1,000;
* every finish reason is right: greedy ones equal the in-process Engine's output for that
  prompt alone (text and reason); constrained ones stop and parse; sampled ones stop or
  reach their length with no more tokens than asked;
* the shared prefixes were reused (cache hits), and afterwards the server is idle with
  every KV slot free or evictable and its own accounting check "ok" (tests/reliability/conftest).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import resource

import httpx
import jsonschema
import pytest
from helpers import get_engine
from server_process import ServerProcess, aiter_sse, server_info

from radixlm.testing import build_tiny_model

NUM_REQUESTS = 1000
SYSTEM = (
    "You are a careful assistant that answers questions about the history of computing, "
    "citing the machines, the people and the years involved. "
)
QUESTIONS = [f"Question {i}: who built machine number {i * 7} and when" for i in range(24)]
PLAIN = [
    f"Story {i}: once upon a time there was a {w}"
    for i, w in enumerate(
        [
            "cat",
            "dog",
            "robot",
            "river",
            "king",
            "queen",
            "wizard",
            "ship",
            "lamp",
            "tree",
            "cloud",
            "stone",
            "bird",
            "clock",
            "bridge",
            "garden",
        ]
    )
]
PROMPTS = [SYSTEM + q for q in QUESTIONS] + PLAIN
MAX_TOKENS = (6, 10, 14)
REGEX = r"(yes|no|maybe), [0-9]{1,3}"
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "ok": {"type": "boolean"}},
    "required": ["name", "ok"],
    "additionalProperties": False,
}
REQUEST_TIMEOUT_S = 600  # a bound, not a performance claim


def plan(i: int, rng: random.Random) -> dict:
    """Request i: its kind and body."""
    kind = ("greedy", "greedy", "stream", "constrained", "sampled")[i % 5]
    prompt_idx, max_tokens = rng.randrange(len(PROMPTS)), rng.choice(MAX_TOKENS)
    if kind in ("greedy", "stream"):
        body = {
            "prompt": PROMPTS[prompt_idx],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": kind == "stream",
        }
        return {"kind": kind, "path": "/v1/completions", "body": body, "ref": (prompt_idx, max_tokens)}
    if kind == "constrained":
        grammar = {"regex": REGEX} if rng.random() < 0.5 else {"json_schema": json.dumps(SCHEMA)}
        body = {"prompt": PROMPTS[prompt_idx], "max_tokens": 64, "temperature": 0.9, "seed": i, **grammar}
        return {"kind": kind, "path": "/v1/completions", "body": body, "grammar": grammar}
    body = {
        "messages": [{"role": "user", "content": PROMPTS[prompt_idx]}],
        "max_tokens": max_tokens,
        "temperature": 1.0,
        "seed": i,
    }
    return {"kind": kind, "path": "/v1/chat/completions", "body": body}


async def send(client: httpx.AsyncClient, item: dict) -> dict:
    """One request; returns what the client saw (the full text, finish reasons, chunk counts)."""
    if not item["body"].get("stream"):
        r = await client.post(item["path"], json=item["body"])
        assert r.status_code == 200, r.text
        choice = r.json()["choices"]
        assert len(choice) == 1, choice
        text = choice[0]["text"] if "text" in choice[0] else choice[0]["message"]["content"]
        return {"text": text, "finish": [choice[0]["finish_reason"]], "usage": r.json()["usage"], "done": 0}
    text, finishes, done = "", [], 0
    async with client.stream("POST", item["path"], json=item["body"]) as r:
        assert r.status_code == 200, await r.aread()
        async for data in aiter_sse(r):
            if data == "[DONE]":
                done += 1
                continue
            assert done == 0, "a chunk arrived after [DONE]"
            event = json.loads(data)
            assert "error" not in event, event
            for choice in event["choices"]:
                text += choice["text"]
                if choice["finish_reason"] is not None:
                    finishes.append(choice["finish_reason"])
    return {"text": text, "finish": finishes, "usage": None, "done": done}


@pytest.fixture(scope="module")
def server():
    # 1,000 client connections here plus 1,000 in the server (which inherits the limit)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    srv = ServerProcess(str(build_tiny_model("llama")), ["--max-running-requests", "256"]).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_1000_concurrent_requests_each_complete_once_and_correctly(server):
    rng = random.Random(2026)
    items = [plan(i, rng) for i in range(NUM_REQUESTS)]
    # the single-request reference of each greedy (prompt, length): the in-process Engine
    engine = get_engine("llama")
    keys = sorted({it["ref"] for it in items if "ref" in it})
    outs = engine.generate(
        [PROMPTS[p] for p, _ in keys], [{"max_new_tokens": n, "temperature": 0} for _, n in keys]
    )
    reference = {k: (o["text"], o["meta_info"]["finish_reason"]["type"]) for k, o in zip(keys, outs)}
    before = server_info(server)

    async def run_all() -> list:
        limits = httpx.Limits(max_connections=NUM_REQUESTS + 16, max_keepalive_connections=NUM_REQUESTS)
        async with httpx.AsyncClient(
            base_url=server.url,
            limits=limits,
            timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=60, pool=REQUEST_TIMEOUT_S),
        ) as c:
            return await asyncio.gather(*(send(c, it) for it in items), return_exceptions=True)

    results = asyncio.run(run_all())
    failures = [(i, repr(r)) for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert not failures, f"{len(failures)} requests failed, first: {failures[:3]}"

    kinds: dict[str, int] = {}
    for item, got in zip(items, results):
        kind = item["kind"]
        kinds[kind] = kinds.get(kind, 0) + 1
        assert len(got["finish"]) == 1, (item, got)  # exactly one final answer per request
        finish = got["finish"][0]
        if kind == "stream":
            assert got["done"] == 1, got
        if kind in ("greedy", "stream"):
            want_text, want_reason = reference[item["ref"]]
            assert (got["text"], finish) == (want_text, "stop" if want_reason == "stop" else "length"), item
        elif kind == "constrained":
            assert finish == "stop", (item, got)
            if "regex" in item["grammar"]:
                assert re.fullmatch(REGEX, got["text"]), got["text"]
            else:
                jsonschema.validate(json.loads(got["text"]), SCHEMA)
        else:
            assert finish in ("stop", "length"), got
            assert 1 <= got["usage"]["completion_tokens"] <= item["body"]["max_tokens"], got["usage"]
            if finish == "length":
                assert got["usage"]["completion_tokens"] == item["body"]["max_tokens"], got["usage"]
    assert kinds == {"greedy": 400, "stream": 200, "constrained": 200, "sampled": 200}

    after = server_info(server)
    assert after["finished_requests"] - before["finished_requests"] == NUM_REQUESTS
    assert after["cached_tokens"] > before["cached_tokens"], "shared prefixes were not reused"
