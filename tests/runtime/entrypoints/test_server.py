"""The HTTP server (`radixlm serve`) as a real subprocess, driven over 127.0.0.1.

* the official `openai` client: completions and chat, streamed and not, n, stop, logprobs, usage,
  echo (with prompt logprobs, as clients that score text use it); greedy text equals the in-process Engine's;
* 200 concurrent streams each equal to the same request non-streamed;
* the native SGLang-style /generate route (cumulative SSE text, batches);
* bad input: a 4xx naming the problem, after which the server answers exactly as before;
* operations: /health, /v1/models, /flush_cache, /metrics, the 32 MiB body limit, --api-key;
* a client that goes away has its request aborted and its KV freed;
* a killed scheduler fails in-flight streams fast, and the server exits non-zero leaving no child.

Every network loop here is bounded in count and in time, and only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from helpers import get_engine
from polling import wait_until
from server_process import (
    ServerProcess,
    aiter_sse,
    children_of,
    descendants_of,
    gone,
    server_info,
    sse_events,
    wait_idle_and_kv_free,
)

from radixlm.testing import build_tiny_model

GREEDY = {"temperature": 0}
PROMPT = "The history of Python began"
BASELINE_PROMPT = "Hello world, this is"
BASELINE_TOKENS = 6
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three colours."},
]


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model_path() -> str:
    return str(build_tiny_model("llama"))


@pytest.fixture(scope="module")
def server(model_path):
    srv = ServerProcess(model_path).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def oai(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=60)
    yield client
    client.close()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture
def ref():
    """The in-process reference Engine on the same tiny model."""
    return get_engine("llama")


def engine_greedy(engine, prompt: str, n: int, **extra) -> dict:
    return engine.generate(prompt, {"max_new_tokens": n, "temperature": 0, **extra})


def chat_ids(engine, messages: list[dict]) -> list[int]:
    text = engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return engine.tokenizer(text, add_special_tokens=False).input_ids


@pytest.fixture(scope="module")
def baseline(server):
    """A good greedy completion; after any bad request the server must answer it identically."""
    ref = get_engine("llama")
    expected = engine_greedy(ref, BASELINE_PROMPT, BASELINE_TOKENS)["text"]
    got = good_completion_text(server)
    assert got == expected
    return expected


def good_completion_text(srv: ServerProcess) -> str:
    r = httpx.post(
        f"{srv.url}/v1/completions",
        timeout=30,
        json={"prompt": BASELINE_PROMPT, "max_tokens": BASELINE_TOKENS, **GREEDY},
    )
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


# ======================================================================================== 1. openai client
def test_completion_greedy_matches_engine_with_usage(oai, ref):
    want = engine_greedy(ref, PROMPT, 12)
    r = oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0)
    assert r.object == "text_completion" and r.model == "tiny"
    assert len(r.choices) == 1 and r.choices[0].index == 0
    assert r.choices[0].text == want["text"]
    assert r.choices[0].finish_reason == (
        "length" if want["meta_info"]["finish_reason"]["type"] == "length" else "stop"
    )
    assert r.usage.prompt_tokens == len(ref.tokenizer(PROMPT).input_ids) == want["meta_info"]["prompt_tokens"]
    assert r.usage.completion_tokens == len(want["output_ids"])
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_completion_stream_concatenates_to_the_full_text_and_reports_usage(oai, ref):
    full = oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0)
    chunks = list(
        oai.completions.create(
            model="tiny",
            prompt=PROMPT,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text_chunks = [c for c in chunks if c.choices]
    assert len(text_chunks) >= 2, "the completion did not stream in pieces"
    assert "".join(c.choices[0].text for c in text_chunks) == full.choices[0].text
    assert all(c.choices[0].finish_reason is None for c in text_chunks[:-1])
    assert text_chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason
    assert len({c.id for c in chunks}) == 1
    # include_usage: one last chunk with no choices and the usage of the whole request
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        full.usage.prompt_tokens,
        full.usage.completion_tokens,
        full.usage.total_tokens,
    )
    # without include_usage no chunk carries usage
    plain = list(
        oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0, stream=True)
    )
    assert all(c.usage is None for c in plain) and all(c.choices for c in plain)
    assert "".join(c.choices[0].text for c in plain) == full.choices[0].text


def test_completion_n2_gives_two_choices(oai, ref):
    want = engine_greedy(ref, PROMPT, 8)["text"]
    r = oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, temperature=0, n=2)
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert [c.text for c in r.choices] == [want, want]
    assert r.usage.completion_tokens == 2 * len(engine_greedy(ref, PROMPT, 8)["output_ids"])
    texts = {0: "", 1: ""}
    for chunk in oai.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=8, temperature=0, n=2, stream=True
    ):
        for c in chunk.choices:
            texts[c.index] += c.text
    assert texts == {0: want, 1: want}


def test_completion_stop_string_is_trimmed(oai, ref):
    full = engine_greedy(ref, PROMPT, 16, ignore_eos=True)["text"]
    mid = len(full) // 2
    stop = full[mid : mid + 3]
    assert stop.strip(), f"choose another stop: {full!r}"
    expected = full[: full.find(stop)]
    r = oai.completions.create(
        model="tiny",
        prompt=PROMPT,
        max_tokens=16,
        temperature=0,
        stop=[stop],
        extra_body={"ignore_eos": True},
    )
    assert r.choices[0].text == expected, (full, stop)
    assert r.choices[0].finish_reason == "stop"
    streamed = list(
        oai.completions.create(
            model="tiny",
            prompt=PROMPT,
            max_tokens=16,
            temperature=0,
            stop=stop,
            stream=True,
            extra_body={"ignore_eos": True},
        )
    )
    assert "".join(c.choices[0].text for c in streamed) == expected
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_completion_logprobs_are_shaped_right(oai):
    r = oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2)
    choice = r.choices[0]
    lp = choice.logprobs
    n = r.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == len(lp.top_logprobs) == n
    assert all(isinstance(v, float) and v <= 0.0 for v in lp.token_logprobs)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    for _tok, v, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        # a dict keyed by token text: two ids that decode alike share a key, so 1..2 entries
        assert 1 <= len(top) <= 2
        assert all(x <= 0.0 for x in top.values())
        assert max(top.values()) == pytest.approx(v, abs=1e-5), "greedy: the chosen token is the top one"
    if "\ufffd" not in choice.text:
        assert "".join(lp.tokens) == choice.text
    # streamed: every chunk carries a logprobs block of the same shape (their sum is checked, under load,
    # by test_streamed_logprobs_add_up_to_the_non_streamed_ones)
    for chunk in oai.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2, stream=True
    ):
        block = chunk.choices[0].logprobs
        assert (
            len(block.tokens)
            == len(block.token_logprobs)
            == len(block.text_offset)
            == len(block.top_logprobs)
        )
        assert len(block.tokens) >= 1
    # no logprobs asked: none given
    assert oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=2).choices[0].logprobs is None


def engine_prompt_logprobs(engine, prompt: str) -> list[float | None]:
    out = engine.generate(prompt, {"max_new_tokens": 0}, return_logprob=True, logprob_start_len=0)
    return [lp for lp, _ in out["meta_info"]["input_token_logprobs"]]


def assert_offsets_fit(text: str, lp) -> None:
    """Each token's text_offset is where its text starts in the returned text."""
    assert lp.text_offset == sorted(lp.text_offset)
    for tok, off in zip(lp.tokens, lp.text_offset):
        assert text[off : off + len(tok)] == tok, (tok, off, text)


def test_completion_echo_returns_the_prompt_then_the_completion(oai, ref):
    want = engine_greedy(ref, PROMPT, 6)["text"]
    r = oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=0, echo=True)
    assert r.choices[0].text == PROMPT + want and r.choices[0].logprobs is None
    assert r.usage.prompt_tokens == len(ref.tokenizer(PROMPT).input_ids)
    # max_tokens=0: the prompt alone, nothing generated
    r = oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=0, echo=True)
    assert r.choices[0].text == PROMPT and r.usage.completion_tokens == 0
    # several prompts, n=2: every choice echoes its own prompt
    prompts = [PROMPT, "Once upon a time"]
    r = oai.completions.create(model="tiny", prompt=prompts, max_tokens=3, temperature=0, n=2, echo=True)
    texts = {c.index: c.text for c in r.choices}
    for k, p in enumerate(prompts):
        completion = engine_greedy(ref, p, 3)["text"]
        assert texts[2 * k] == texts[2 * k + 1] == p + completion
    # a token-id prompt echoes its decoded text
    ids = ref.tokenizer(PROMPT).input_ids
    r = oai.completions.create(model="tiny", prompt=ids, max_tokens=6, temperature=0, echo=True)
    assert r.choices[0].text == ref.tokenizer.decode(ids) + want
    # streamed: the echoed prompt leads the first chunk, the rest is the completion
    chunks = [
        c
        for c in oai.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=6, temperature=0, echo=True, stream=True
        )
        if c.choices
    ]
    assert chunks[0].choices[0].text.startswith(PROMPT)
    assert "".join(c.choices[0].text for c in chunks) == PROMPT + want


def test_completion_echo_with_logprobs_scores_the_prompt_like_the_engine(oai, ref):
    ids = ref.tokenizer(PROMPT).input_ids
    want_prompt = engine_prompt_logprobs(ref, PROMPT)
    # max_tokens=0 (how a client scores text): one entry per prompt token, the first without a logprob
    r = oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=0, echo=True, logprobs=1)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == len(lp.top_logprobs) == len(ids)
    assert lp.tokens == [ref.tokenizer.decode([t]) for t in ids]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx(want_prompt[1:], abs=1e-4)
    assert all(
        len(top) == 1 and max(top.values()) >= v - 1e-5
        for top, v in zip(lp.top_logprobs[1:], lp.token_logprobs[1:])
    )
    assert lp.text_offset[0] == 0
    assert_offsets_fit(r.choices[0].text, lp)
    # with a completion: the prompt's entries, then exactly the non-echoed request's entries
    plain = oai.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2
    ).choices[0]
    echoed = oai.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2, echo=True
    ).choices[0]
    n = len(ids)
    assert echoed.text == PROMPT + plain.text
    assert echoed.logprobs.tokens == lp.tokens + plain.logprobs.tokens
    assert echoed.logprobs.token_logprobs[1:n] == pytest.approx(want_prompt[1:], abs=1e-4)
    assert echoed.logprobs.token_logprobs[n:] == pytest.approx(plain.logprobs.token_logprobs, abs=1e-5)
    assert echoed.logprobs.text_offset[n:] == [len(PROMPT) + o for o in plain.logprobs.text_offset]
    assert echoed.logprobs.top_logprobs[n:] == plain.logprobs.top_logprobs
    assert_offsets_fit(echoed.text, echoed.logprobs)
    # streamed: the chunks' entries add up to the non-streamed ones
    tokens, values, offsets = [], [], []
    for chunk in oai.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2, echo=True, stream=True
    ):
        block = chunk.choices[0].logprobs
        tokens += block.tokens
        values += block.token_logprobs
        offsets += block.text_offset
    assert tokens == echoed.logprobs.tokens and offsets == echoed.logprobs.text_offset
    assert values[0] is None and values[1:] == pytest.approx(echoed.logprobs.token_logprobs[1:], abs=1e-5)


def test_chat_greedy_matches_engine_on_the_chat_template(oai, ref):
    want = ref.generate(input_ids=chat_ids(ref, MESSAGES), sampling_params={"max_new_tokens": 10, **GREEDY})
    r = oai.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=10, temperature=0)
    assert r.object == "chat.completion"
    msg = r.choices[0].message
    assert msg.role == "assistant" and msg.content == want["text"]
    assert r.usage.prompt_tokens == len(chat_ids(ref, MESSAGES))
    assert r.usage.completion_tokens == len(want["output_ids"])
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # max_completion_tokens is the newer name of max_tokens
    r2 = oai.chat.completions.create(model="tiny", messages=MESSAGES, max_completion_tokens=10, temperature=0)
    assert r2.choices[0].message.content == want["text"]


def test_chat_stream_concatenates_and_reports_usage(oai):
    full = oai.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=10, temperature=0)
    chunks = list(
        oai.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].object == "chat.completion.chunk"
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_chat_n2_and_logprobs(oai):
    full = oai.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=6, temperature=0)
    text = full.choices[0].message.content
    r = oai.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=6, temperature=0, n=2)
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert [c.message.content for c in r.choices] == [text, text]
    assert r.usage.completion_tokens == 2 * full.usage.completion_tokens

    lp = oai.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2
    )
    content = lp.choices[0].logprobs.content
    assert len(content) == lp.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0.0
        assert entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-5)
    if "\ufffd" not in text:
        assert "".join(e.token for e in content) == text
    # logprobs without top_logprobs: entries with empty top lists; none asked: None
    plain = oai.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=3, temperature=0, logprobs=True
    )
    assert all(e.top_logprobs == [] for e in plain.choices[0].logprobs.content)
    assert (
        oai.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=3).choices[0].logprobs is None
    )


def test_streamed_logprobs_add_up_to_the_non_streamed_ones(server):
    """Under load (64 concurrent streams, up to 3 rounds), each stream's logprob tokens concatenate to the
    non-streamed request's logprob tokens, once each."""

    def spec(i: int) -> tuple[str, dict]:
        if i % 2:
            return "/v1/chat/completions", {
                "messages": [{"role": "user", "content": f"{PROMPT} {i}"}],
                "max_tokens": 24,
                "logprobs": True,
                "top_logprobs": 2,
                "ignore_eos": True,
                **GREEDY,
            }
        return "/v1/completions", {
            "prompt": f"{PROMPT} {i}",
            "max_tokens": 24,
            "logprobs": 2,
            "ignore_eos": True,
            **GREEDY,
        }

    def tokens_of(choice: dict) -> list[str]:
        lp = choice["logprobs"]
        return lp["tokens"] if "tokens" in lp else [e["token"] for e in lp["content"]]

    async def whole(client: httpx.AsyncClient, i: int) -> list[str]:
        path, body = spec(i)
        r = await client.post(path, json=body)
        assert r.status_code == 200, r.text
        return tokens_of(r.json()["choices"][0])

    async def streamed(client: httpx.AsyncClient, i: int) -> list[str]:
        path, body = spec(i)
        got: list[str] = []
        async with client.stream("POST", path, json={**body, "stream": True}) as r:
            async for data in aiter_sse(r):
                if data != "[DONE]":
                    for c in json.loads(data)["choices"]:
                        if c.get("logprobs"):
                            got += tokens_of(c)
        return got

    async def main():
        async with httpx.AsyncClient(
            base_url=server.url, timeout=60, limits=httpx.Limits(max_connections=100)
        ) as client:
            want = await asyncio.wait_for(asyncio.gather(*(whole(client, i) for i in range(64))), timeout=60)
            bad: list = []
            rounds = 0
            for _ in range(3):  # bounded: stop at the first round that shows a difference
                rounds += 1
                got = await asyncio.wait_for(
                    asyncio.gather(*(streamed(client, i) for i in range(64))), timeout=60
                )
                bad = [(spec(i)[0], len(g), len(w)) for i, (g, w) in enumerate(zip(got, want)) if g != w]
                if bad:
                    break
            return bad, rounds

    bad, rounds = asyncio.run(main())
    assert not bad, (
        f"round {rounds}: {len(bad)}/64 streams' logprob tokens differ from the non-streamed ones "
        f"(path, streamed count, expected count): {bad[:6]}"
    )


# ======================================================================================== 2. concurrency
PROMPTS = [
    "Once upon a time",
    "The capital of France",
    "def fibonacci(n):",
    "In 1492, Columbus",
    "Water boils at",
    "import numpy as np",
    "The quick brown fox",
    "SELECT * FROM",
    "My favourite colour is",
    "Tokyo is a city",
]


def test_200_concurrent_streams_match_their_non_streamed_twins(server):
    rng = random.Random(1234)
    specs = []
    for i in range(200):
        max_tokens = rng.randint(4, 16)
        prompt = PROMPTS[i % len(PROMPTS)] + " " * (i % 3)
        if i % 4 == 3:
            specs.append(
                (
                    "/v1/chat/completions",
                    {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, **GREEDY},
                )
            )
        else:
            specs.append(("/v1/completions", {"prompt": prompt, "max_tokens": max_tokens, **GREEDY}))

    async def streamed(client: httpx.AsyncClient, path: str, body: dict) -> str:
        parts, done = [], False
        async with client.stream("POST", path, json={**body, "stream": True}) as r:
            assert r.status_code == 200, await r.aread()
            async for data in aiter_sse(r):
                if data == "[DONE]":
                    done = True
                    break
                event = json.loads(data)
                assert "error" not in event, event
                for c in event["choices"]:
                    parts.append(c["text"] if "text" in c else c["delta"].get("content") or "")
        assert done, "stream ended without [DONE]"
        return "".join(parts)

    async def whole(client: httpx.AsyncClient, path: str, body: dict) -> tuple[str, int]:
        r = await client.post(path, json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        c = out["choices"][0]
        return (c["text"] if "text" in c else c["message"]["content"]), out["usage"]["completion_tokens"]

    async def main():
        limits = httpx.Limits(max_connections=450, max_keepalive_connections=450)
        async with httpx.AsyncClient(
            base_url=server.url, timeout=httpx.Timeout(60, connect=30), limits=limits
        ) as client:
            jobs = [streamed(client, p, b) for p, b in specs] + [whole(client, p, b) for p, b in specs]
            return await asyncio.wait_for(asyncio.gather(*jobs), timeout=120)

    started = time.monotonic()
    results = asyncio.run(main())
    elapsed = time.monotonic() - started
    streams, wholes = results[:200], results[200:]
    mismatches = [(i, specs[i], s, w) for i, (s, (w, _)) in enumerate(zip(streams, wholes)) if s != w]
    assert not mismatches, (
        f"{len(mismatches)} streams differ from their non-streamed twin, e.g. {mismatches[:3]}"
    )
    for (_path, body), (_, n_tokens) in zip(specs, wholes):
        assert 1 <= n_tokens <= body["max_tokens"]
    # the same (prompt, length) gives the same text whichever request it was
    by_key: dict[tuple, set] = {}
    for (path, body), (text, _) in zip(specs, wholes):
        by_key.setdefault((path, json.dumps(body, sort_keys=True)), set()).add(text)
    assert all(len(v) == 1 for v in by_key.values())
    info = wait_idle_and_kv_free(server, timeout=5)
    assert info["running"] == 0 and info["waiting"] == 0
    print(f"400 requests (200 streamed) in {elapsed:.1f}s")


# ======================================================================================== 3. native /generate
def test_generate_non_stream(http, ref):
    params = {"max_new_tokens": 8, **GREEDY}
    want = ref.generate(PROMPT, params)
    r = http.post("/generate", json={"text": PROMPT, "sampling_params": params})
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"text", "output_ids", "meta_info"}
    assert out["text"] == want["text"] and out["output_ids"] == want["output_ids"]
    meta = out["meta_info"]
    assert meta["prompt_tokens"] == want["meta_info"]["prompt_tokens"]
    assert meta["completion_tokens"] == len(want["output_ids"])
    assert meta["finish_reason"] == want["meta_info"]["finish_reason"]
    # the same by token ids, with logprobs
    ids = ref.tokenizer(PROMPT).input_ids
    r = http.post(
        "/generate",
        json={"input_ids": ids, "sampling_params": params, "return_logprob": True, "top_logprobs_num": 2},
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["output_ids"] == want["output_ids"]
    assert len(out["meta_info"]["output_token_logprobs"]) == len(want["output_ids"])
    assert all(len(top) == 2 for top in out["meta_info"]["output_top_logprobs"])


def test_generate_stream_sends_cumulative_text_then_done(server, ref):
    params = {"max_new_tokens": 10, **GREEDY}
    want = ref.generate(PROMPT, params)
    with httpx.stream(
        "POST",
        f"{server.url}/generate",
        timeout=60,
        json={"text": PROMPT, "sampling_params": params, "stream": True},
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) >= 2
    for prev, cur in zip(chunks, chunks[1:]):
        assert cur["text"].startswith(prev["text"]), "stream text must be cumulative"
        assert cur["output_ids"][: len(prev["output_ids"])] == prev["output_ids"]
    assert chunks[-1]["text"] == want["text"]
    assert chunks[-1]["output_ids"] == want["output_ids"]
    assert chunks[-1]["meta_info"]["finish_reason"] == want["meta_info"]["finish_reason"]
    assert all(c["meta_info"]["finish_reason"] is None for c in chunks[:-1])


def test_generate_batches_return_lists(http, ref):
    params = {"max_new_tokens": 5, **GREEDY}
    prompts = [PROMPT, "Once upon a time"]
    want = [ref.generate(p, params) for p in prompts]
    r = http.post("/generate", json={"text": prompts, "sampling_params": params})
    assert r.status_code == 200, r.text
    out = r.json()
    assert isinstance(out, list) and [o["text"] for o in out] == [w["text"] for w in want]
    ids = [ref.tokenizer(p).input_ids for p in prompts]
    r = http.post("/generate", json={"input_ids": ids, "sampling_params": params})
    assert [o["output_ids"] for o in r.json()] == [w["output_ids"] for w in want]
    # a one-element list is still a list; n=2 gives two entries
    assert isinstance(http.post("/generate", json={"text": [PROMPT], "sampling_params": params}).json(), list)
    two = http.post("/generate", json={"text": PROMPT, "sampling_params": {**params, "n": 2}}).json()
    assert [o["text"] for o in two] == [want[0]["text"]] * 2


# ======================================================================================== 4. bad input
LONG_IDS = [5] * 3000  # the tiny model's context is 2048 tokens
CHAT_OK = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
CMPL_OK = {"prompt": "hi", "max_tokens": 2}


@dataclass
class Bad:
    id: str
    path: str
    body: dict | list | bytes
    keyword: str  # must appear (case-insensitive) in the error message
    status: int = 400


BAD_ROWS = [
    Bad("malformed JSON", "/v1/completions", b'{"prompt": "hi", "max_tokens": ', "JSON"),
    Bad("body is a JSON list", "/v1/completions", [1, 2], "body"),
    Bad("max_tokens wrong type", "/v1/completions", {**CMPL_OK, "max_tokens": "lots"}, "max_tokens"),
    Bad("temperature wrong type", "/v1/completions", {**CMPL_OK, "temperature": "hot"}, "temperature"),
    Bad(
        "chat temperature wrong type",
        "/v1/chat/completions",
        {**CHAT_OK, "temperature": "hot"},
        "temperature",
    ),
    Bad("messages not a list", "/v1/chat/completions", {"messages": "hi"}, "messages"),
    Bad("empty messages", "/v1/chat/completions", {"messages": []}, "messages"),
    Bad("unknown role", "/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, "role"),
    Bad(
        "prompt over context (completions)",
        "/v1/completions",
        {"prompt": LONG_IDS, "max_tokens": 4},
        "too long",
    ),
    Bad(
        "prompt over context (generate)",
        "/generate",
        {"input_ids": LONG_IDS, "sampling_params": {"max_new_tokens": 4}},
        "too long",
    ),
    Bad(
        "prompt over context (generate text)",
        "/generate",
        {"text": "hello " * 3000, "sampling_params": {"max_new_tokens": 4}},
        "too long",
    ),
    # the message names the engine's field (max_new_tokens) for OpenAI's max_tokens
    Bad("negative max_tokens", "/v1/completions", {**CMPL_OK, "max_tokens": -1}, "max_"),
    Bad("negative chat max_tokens", "/v1/chat/completions", {**CHAT_OK, "max_tokens": -5}, "max_"),
    Bad("temperature < 0", "/v1/completions", {**CMPL_OK, "temperature": -0.5}, "temperature"),
    Bad("chat temperature < 0", "/v1/chat/completions", {**CHAT_OK, "temperature": -1}, "temperature"),
    Bad("n < 1", "/v1/completions", {**CMPL_OK, "n": 0}, "n must"),
    Bad("chat n < 1", "/v1/chat/completions", {**CHAT_OK, "n": 0}, "n must"),
    Bad("top_p = 0", "/v1/completions", {**CMPL_OK, "top_p": 0}, "top_p"),
    Bad("top_k = 0", "/v1/completions", {**CMPL_OK, "top_k": 0}, "top_k"),
    Bad("empty stop string", "/v1/completions", {**CMPL_OK, "stop": [""]}, "stop"),
    Bad("logprobs > 20", "/v1/completions", {**CMPL_OK, "logprobs": 21}, "logprobs"),
    Bad(
        "top_logprobs > 20",
        "/v1/chat/completions",
        {**CHAT_OK, "logprobs": True, "top_logprobs": 21},
        "top_logprobs",
    ),
    Bad(
        "input_ids outside the vocab", "/v1/completions", {"prompt": [5, 8192], "max_tokens": 2}, "input_ids"
    ),
    Bad("empty prompt", "/v1/completions", {"prompt": "", "max_tokens": 2}, "empty"),
    Bad("empty prompt list", "/v1/completions", {"prompt": [], "max_tokens": 2}, "prompt"),
    Bad("missing prompt", "/v1/completions", {"max_tokens": 2}, "prompt"),
    Bad(
        "unknown sampling param (generate)",
        "/generate",
        {"text": "hi", "sampling_params": {"max_new_tokens": 2, "max_tokens": 2}},
        "unknown sampling parameter",
    ),
    Bad("unknown top-level field (generate)", "/generate", {"text": "hi", "sampling": {}}, "sampling"),
    Bad("neither text nor input_ids (generate)", "/generate", {"sampling_params": {}}, "text or input_ids"),
    Bad("both text and input_ids (generate)", "/generate", {"text": "hi", "input_ids": [5]}, "exactly one"),
    Bad(
        "stream with n=2 (generate)",
        "/generate",
        {"text": "hi", "sampling_params": {"n": 2, "max_new_tokens": 2}, "stream": True},
        "stream",
    ),
    Bad("suffix", "/v1/completions", {**CMPL_OK, "suffix": "end"}, "suffix"),
    Bad("logit_bias", "/v1/completions", {**CMPL_OK, "logit_bias": {"5": 10}}, "logit_bias"),
    Bad("chat logit_bias", "/v1/chat/completions", {**CHAT_OK, "logit_bias": {"5": 10}}, "logit_bias"),
    Bad(
        "tool parameters that are not a JSON schema object",
        "/v1/chat/completions",
        {**CHAT_OK, "tools": [{"type": "function", "function": {"name": "f", "parameters": [1]}}]},
        "parameters",
    ),
    Bad(
        "tools with a duplicate name",
        "/v1/chat/completions",
        {**CHAT_OK, "tools": [{"type": "function", "function": {"name": "f"}}] * 2},
        "more than one tool",
    ),
    Bad(
        "tool_choice naming a function not in tools",
        "/v1/chat/completions",
        {
            **CHAT_OK,
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "g"}},
        },
        "'g'",
    ),
    Bad(
        "a tool message without tool_call_id",
        "/v1/chat/completions",
        {**CHAT_OK, "messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "4"}]},
        "tool_call_id",
    ),
    Bad(
        "a tool message answering an unknown call",
        "/v1/chat/completions",
        {
            **CHAT_OK,
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "tool", "content": "4", "tool_call_id": "call_nope"},
            ],
        },
        "call_nope",
    ),
    Bad(
        "response_format json_schema without a schema",
        "/v1/chat/completions",
        {**CHAT_OK, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
        "json_schema",
    ),
    Bad(
        "response_format of an unknown type",
        "/v1/completions",
        {**CMPL_OK, "response_format": {"type": "xml"}},
        "response_format type",
    ),
    Bad(
        "response_format and regex",
        "/v1/completions",
        {**CMPL_OK, "response_format": {"type": "json_object"}, "regex": "a+"},
        "at most one",
    ),
    Bad("invalid regex", "/v1/completions", {**CMPL_OK, "regex": "(a"}, "invalid regex"),
    Bad(
        "regex the automaton cannot build",
        "/v1/completions",
        {**CMPL_OK, "regex": "(?=a)b"},
        "cannot compile regex",
    ),
    Bad(
        "unsupported json_schema type",
        "/v1/chat/completions",
        {
            **CHAT_OK,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "x"}}},
        },
        "unsupported json_schema",
    ),
    Bad(
        "json_schema not JSON (generate)",
        "/generate",
        {"text": "hi", "sampling_params": {"json_schema": "{nope"}},
        "not valid JSON",
    ),
]


@pytest.mark.parametrize("row", BAD_ROWS, ids=[r.id for r in BAD_ROWS])
def test_bad_request_is_refused_by_name_and_the_server_carries_on(server, baseline, row):
    kw = (
        {"content": row.body, "headers": {"content-type": "application/json"}}
        if isinstance(row.body, bytes)
        else {"json": row.body}
    )
    r = httpx.post(f"{server.url}{row.path}", timeout=30, **kw)
    assert r.status_code == row.status, f"{row.id}: {r.status_code} {r.text[:500]}"
    err = r.json()["error"]
    assert row.keyword.lower() in err["message"].lower(), (
        f"{row.id}: message does not name it: {err['message']!r}"
    )
    assert err["code"] == row.status and err["type"]
    assert good_completion_text(server) == baseline


def test_unknown_model_name_is_accepted(server, baseline):
    """One server serves one model: any `model` name is accepted, echoed back, and served by it."""
    r = httpx.post(
        f"{server.url}/v1/completions",
        timeout=30,
        json={"model": "no-such-model", "prompt": BASELINE_PROMPT, "max_tokens": BASELINE_TOKENS, **GREEDY},
    )
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "no-such-model"
    assert r.json()["choices"][0]["text"] == baseline


# ======================================================================================== 5. operations
def test_health_models_and_flush_cache(http, server, model_path):
    r = http.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    models = http.get("/v1/models").json()
    assert models["object"] == "list" and len(models["data"]) == 1
    assert models["data"][0]["id"] == Path(model_path).name
    assert models["data"][0]["max_model_len"] == 2048
    wait_idle_and_kv_free(server)
    r = http.post("/flush_cache")
    assert r.status_code == 200 and r.json() == {"success": True}
    info = server_info(server)
    assert info["free_tokens"] == info["total_tokens"] and info["evictable_tokens"] == 0
    for key in ("running", "waiting", "free_tokens", "total_tokens", "evictable_tokens", "cache_hit_rate"):
        assert key in info
    assert set(info["process_ids"]) == {"scheduler", "detokenizer"}


def test_metrics_are_prometheus_text(http):
    assert http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 3}).status_code == 200
    r = http.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    body = r.text
    assert "# TYPE radixlm_time_to_first_token_seconds histogram" in body
    assert "radixlm_time_to_first_token_seconds_count" in body
    assert "radixlm_requests_total" in body
    totals = [
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("radixlm_requests_total")
    ]
    assert sum(totals) >= 1


OVER_LIMIT = 32 * 1024 * 1024 + 1024


def _big_body() -> bytes:
    return b'{"prompt": "hi", "max_tokens": 2, "pad": "' + b"a" * OVER_LIMIT + b'"}'


def test_body_over_32mib_is_refused_with_413(server, baseline):
    r = httpx.post(
        f"{server.url}/v1/completions",
        content=_big_body(),
        timeout=60,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413, r.text[:300]
    assert "body" in r.json()["error"]["message"]
    assert good_completion_text(server) == baseline


def test_chunked_body_over_32mib_is_refused_with_413(server):
    big = _big_body()

    def chunks():
        for i in range(0, len(big), 1 << 20):
            yield big[i : i + (1 << 20)]

    r = httpx.post(
        f"{server.url}/v1/completions",
        content=chunks(),
        timeout=60,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413, f"a {len(big)}-byte chunked body got {r.status_code}: {r.text[:200]}"


# ======================================================================================== 6. --api-key
API_KEY = "s3cret-key"


@pytest.fixture(scope="module")
def keyed_server(model_path):
    """A second server, with --api-key. The last test of this file kills its scheduler."""
    srv = ServerProcess(model_path, ["--api-key", API_KEY]).start()
    try:
        yield srv
    finally:
        srv.stop()


AUTH = {"Authorization": f"Bearer {API_KEY}"}


def test_api_key_is_required_except_for_health(keyed_server):
    url = keyed_server.url
    body = {"prompt": "hi", "max_tokens": 2}
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": API_KEY},
        {"Authorization": f"Basic {API_KEY}"},
    ):
        for method, path, kw in (
            ("GET", "/v1/models", {}),
            ("POST", "/v1/completions", {"json": body}),
            ("POST", "/generate", {"json": {"text": "hi"}}),
            ("GET", "/server_info", {}),
            ("GET", "/metrics", {}),
            ("POST", "/flush_cache", {}),
        ):
            r = httpx.request(method, url + path, headers=headers, timeout=30, **kw)
            assert r.status_code == 401, (headers, path, r.status_code, r.text)
            assert "api key" in r.json()["error"]["message"].lower()
    good = AUTH
    assert httpx.get(f"{url}/v1/models", headers=good, timeout=30).status_code == 200
    r = httpx.post(f"{url}/v1/completions", headers=good, json=body, timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    r = httpx.get(f"{url}/health", timeout=30)
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    # the openai client sends the key as a bearer token
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=30)
    assert client.completions.create(model="m", prompt="hi", max_tokens=2).usage.completion_tokens == 2
    bad = openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model="m", prompt="hi", max_tokens=2)


# ======================================================================================= 7. client disconnect
def test_client_disconnect_mid_stream_aborts_and_frees_kv(server):
    body = {"prompt": "Once upon a time", "max_tokens": 1500, "ignore_eos": True, "stream": True, **GREEDY}
    before = server_info(server)["generated_tokens"]
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", f"{server.url}/v1/completions", json=body) as r:
            assert r.status_code == 200
            # keep the line iterator referenced: dropping a half-read httpx iterator closes the connection
            lines = r.iter_lines()
            got = 0
            for _ in range(50):
                if next(lines).startswith("data:"):
                    got += 1
                    if got >= 3:
                        break
            assert got >= 3
            # while it runs the cache cannot be flushed
            info = server_info(server)
            assert info["running"] == 1, info
            busy = httpx.post(f"{server.url}/flush_cache", timeout=30)
            assert busy.status_code == 409 and "not flushed" in busy.json()["error"]["message"]
            r.close()  # the client goes away mid-stream
    info = wait_idle_and_kv_free(server, timeout=10)
    assert info["generated_tokens"] - before < 1500, "the request ran to the end instead of being aborted"


def test_client_disconnect_while_waiting_for_a_non_streamed_result_aborts(server):
    max_tokens = 2000  # several seconds of decoding even on a fast CPU (context is 2048)
    before = wait_idle_and_kv_free(server)["generated_tokens"]
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after 0.5 s and closes the connection
        httpx.post(
            f"{server.url}/v1/completions",
            timeout=httpx.Timeout(10, read=0.5),
            json={"prompt": "Once upon a time", "max_tokens": max_tokens, "ignore_eos": True, **GREEDY},
        )
    # bounded either way: an aborted request stops at once, a leaked one runs its tokens out
    info = wait_idle_and_kv_free(server, timeout=60)
    generated = info["generated_tokens"] - before
    assert generated < max_tokens, (
        f"the abandoned request generated all {generated} tokens "
        f"({time.monotonic() - started:.1f}s) instead of being aborted"
    )


# ======================================================================================== 8. scheduler killed
def test_killed_scheduler_fails_the_stream_fast_and_the_server_exits_cleanly(keyed_server):
    """Runs last: it kills the second server (not the main one)."""
    srv = keyed_server
    try:
        r = httpx.get(f"{srv.url}/server_info", headers=AUTH, timeout=10)
        assert r.status_code == 200, r.text
        pids = r.json()["process_ids"]
        kids = descendants_of(srv.proc.pid)
        assert set(pids.values()) <= kids, (pids, kids)
        body = {
            "prompt": "Once upon a time",
            "max_tokens": 1500,
            "ignore_eos": True,
            "stream": True,
            **GREEDY,
        }
        events: list[str] = []
        error: BaseException | None = None
        killed_at = ended_at = 0.0
        with httpx.Client(timeout=httpx.Timeout(10, read=8), headers=AUTH) as client:
            try:
                with client.stream("POST", f"{srv.url}/v1/completions", json=body) as r:
                    assert r.status_code == 200
                    for line in r.iter_lines():
                        if not line.startswith("data:"):
                            continue
                        events.append(line[5:].strip())
                        if len(events) == 2:
                            os.kill(pids["scheduler"], signal.SIGKILL)
                            killed_at = time.monotonic()
                        if len(events) > 2000 or (killed_at and time.monotonic() - killed_at > 10):
                            break
            except (httpx.HTTPError, httpx.StreamError) as exc:  # a dropped connection is also an error
                error = exc
            ended_at = time.monotonic()
        assert killed_at, f"the stream ended before the kill: {events}"
        assert ended_at - killed_at < 5, f"the client waited {ended_at - killed_at:.1f}s after the kill"
        after = [e for e in events[2:] if e != "[DONE]"]
        error_events = [json.loads(e)["error"] for e in after if "error" in json.loads(e)]
        assert error_events or error is not None, f"no error reached the client: {events[-3:]}"
        if error_events:
            assert "scheduler" in error_events[-1]["message"] and error_events[-1]["code"] == 503, (
                error_events
            )
        # the server exits on its own, non-zero, and takes every child with it
        try:
            code = srv.proc.wait(15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"radixlm serve still running 15s after its scheduler died:\n{srv.output()}")
        assert code != 0, srv.output()
        assert "scheduler" in srv.output()
        every = kids | set(pids.values())
        wait_until(
            lambda: all(gone(p) for p in every),
            10,
            what=lambda: f"every process to exit (still running: {[p for p in every if not gone(p)]})",
        )
        assert not children_of(srv.proc.pid)
    finally:
        srv.stop()
