"""Fault injection: cancellations, killed runtime processes and corrupt weights lose nothing,
hang nothing and orphan nothing.

* Abort storm over HTTP: 72 concurrent requests against a real `radixlm serve` (the three
  routes, streamed and not, prompts sharing prefixes, a few with n=2); about half are
  cancelled at seeded random points (a stream closed after k events, a client read timeout,
  a cancelled client task). Every other request completes exactly once with a valid finish
  reason and, when greedy, exactly the output it gives when run alone. Afterwards the server
  is idle, the scheduler saw each request at most once, the cancelled ones stopped early,
  the KV accounting balances and a good request is answered right.
* The same storm through the in-process Engine: streams closed early, streams aborted by
  `Engine.abort(rid)` (which end with an "abort" finish reason), blocking calls.
* SIGKILL of the scheduler and, separately, of the detokenizer, under `radixlm serve` and
  under the Engine, with several requests in flight (streamed and not, a batch) plus more
  arriving while the process dies: each fails within 5 s of the kill with an error naming
  the dead process (HTTP 503, an SSE error event, RuntimeDiedError); the server exits
  non-zero and no process it started survives it (the Engine: after shutdown); a server or
  Engine restarted on the same folder answers right.
* A model folder whose model.safetensors is truncated, or whose header is corrupt:
  `Engine(path)` raises a ValueError naming the file and leaves no child process;
  `radixlm serve` (truncated file) exits non-zero with that message in one line, no
  traceback, and leaves no process.

Every random choice is seeded, every wait bounded, only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from helpers import get_engine
from polling import wait_until
from server_process import (
    HOST,
    ServerProcess,
    aiter_sse,
    children_of,
    descendants_of,
    free_port,
    gone,
    server_info,
    wait_idle_and_kv_free,
)

from radixlm import Engine
from radixlm.runtime.entrypoints.openai_protocol import finish_reason_name
from radixlm.runtime.managers.tokenizer_manager import RuntimeDiedError
from radixlm.testing import build_tiny_model

KILL_DEADLINE_S = 5.0  # the spec: every pending request fails within 5 s of the kill
LONG = 1500  # tokens for a request that must still be running when it is cancelled or killed
GOOD_PROMPT = "Hello world, this is"
GOOD_TOKENS = 8
PREFIXES = [
    "In the beginning the archive held letters from every harbour town,",
    "A recipe for bread starts with flour, water, salt and patience;",
    "The server logs showed that at midnight the queue suddenly grew",
]
SUFFIXES = [" and then", " but nobody", " so the", " while a"]


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model_path() -> str:
    return str(build_tiny_model("llama"))


@pytest.fixture(scope="module")
def good_text(model_path) -> str:
    """The in-process Engine's greedy answer to the good request: the oracle for every server."""
    out = get_engine("llama").generate(
        GOOD_PROMPT, {"max_new_tokens": GOOD_TOKENS, "temperature": 0, "ignore_eos": True}
    )
    return out["text"]


class ServerChain:
    """One live `radixlm serve` at a time, shared by the tests: a kill test kills the current
    one, and the server it restarts becomes the next test's (so the file starts few servers)."""

    def __init__(self, model_path: str) -> None:
        self.model_path = model_path
        self.srv: ServerProcess | None = None

    def current(self) -> ServerProcess:
        if self.srv is None or self.srv.proc.poll() is not None:
            self.srv = ServerProcess(self.model_path).start()
        return self.srv

    def restart(self) -> ServerProcess:
        if self.srv is not None:
            self.srv.stop()
        self.srv = ServerProcess(self.model_path).start()
        return self.srv

    def close(self) -> None:
        if self.srv is not None:
            self.srv.stop()


class EngineChain:
    """The same for Engines of our own (a cached engine's processes are never killed)."""

    def __init__(self, model_path: str) -> None:
        self.model_path = model_path
        self.engine: Engine | None = None

    def current(self) -> Engine:
        if self.engine is None or self.engine._closed:
            self.engine = Engine(self.model_path)
        return self.engine

    def restart(self) -> Engine:
        if self.engine is not None:
            self.engine.shutdown()
        self.engine = Engine(self.model_path)
        return self.engine

    def close(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()


@pytest.fixture(scope="module")
def servers(model_path):
    chain = ServerChain(model_path)
    try:
        yield chain
    finally:
        chain.close()


@pytest.fixture(scope="module")
def engines(model_path):
    chain = EngineChain(model_path)
    try:
        yield chain
    finally:
        chain.close()


def assert_server_answers_right(srv: ServerProcess, expected: str) -> None:
    r = httpx.post(
        f"{srv.url}/v1/completions",
        timeout=30,
        json={"prompt": GOOD_PROMPT, "max_tokens": GOOD_TOKENS, "temperature": 0, "ignore_eos": True},
    )
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert (choice["text"], choice["finish_reason"]) == (expected, "length")


def assert_engine_answers_right(engine: Engine, expected: str) -> None:
    out = engine.generate(GOOD_PROMPT, {"max_new_tokens": GOOD_TOKENS, "temperature": 0, "ignore_eos": True})
    assert out["text"] == expected and out["meta_info"]["finish_reason"]["type"] == "length", out


def is_resource_tracker(pid: int) -> bool:
    """multiprocessing's shared resource tracker: one per parent process, not the runtime's."""
    try:
        return b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def own_new_children(before: set[int]) -> set[int]:
    """Children of this test process that were not there before, still running."""
    return {p for p in children_of(os.getpid()) - before if not gone(p) and not is_resource_tracker(p)}


# ====================================================================================== 1. abort storm (HTTP)
@dataclass
class Spec:
    i: int
    route: str  # "completions" | "chat" | "generate"
    stream: bool
    prompt: str
    max_tokens: int
    ignore_eos: bool
    greedy: bool
    n: int = 1
    cancel: str | None = None  # None (must complete) | "close" | "read_timeout" | "task_cancel"
    after_events: int = 0  # "close": events read before the client goes away
    after_s: float = 0.0  # "read_timeout" / "task_cancel": seconds before it gives up

    @property
    def key(self) -> tuple:
        return self.route, self.prompt, self.max_tokens, self.ignore_eos

    def body(self) -> dict:
        sampling = (
            {"temperature": 0} if self.greedy else {"temperature": 0.9, "top_p": 0.95, "seed": 1000 + self.i}
        )
        if self.route == "generate":
            return {
                "text": self.prompt,
                "stream": self.stream,
                "sampling_params": {
                    "max_new_tokens": self.max_tokens,
                    "ignore_eos": self.ignore_eos,
                    "n": self.n,
                    **sampling,
                },
            }
        body = {
            "max_tokens": self.max_tokens,
            "ignore_eos": self.ignore_eos,
            "n": self.n,
            "stream": self.stream,
            **sampling,
        }
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        if self.route == "chat":
            return {"messages": [{"role": "user", "content": self.prompt}], **body}
        return {"prompt": self.prompt, **body}

    @property
    def path(self) -> str:
        return {"completions": "/v1/completions", "chat": "/v1/chat/completions", "generate": "/generate"}[
            self.route
        ]

    @property
    def scheduler_requests(self) -> int:
        """Requests the scheduler sees for this one: n > 1 adds a prompt warm-up."""
        return 1 if self.n == 1 else self.n + 1


def storm_specs(count: int, seed: int) -> list[Spec]:
    rng = random.Random(seed)
    prompts = [p + s for p in PREFIXES for s in SUFFIXES]  # 3 shared prefixes, 4 continuations each
    # greedy survivors draw from a few (route, prompt, length) keys, each also run alone
    greedy_keys = [
        (
            rng.choice(["completions", "chat", "generate"]),
            rng.choice(prompts),
            rng.choice([5, 9, 16]),
            rng.random() < 0.5,
        )
        for _ in range(10)
    ]
    specs = []
    for i in range(count):
        stream = rng.random() < 0.5
        if rng.random() < 0.5:  # cancelled: long enough to be surely running when the client leaves
            route = rng.choice(["completions", "chat", "generate"])
            spec = Spec(
                i,
                route,
                stream,
                rng.choice(prompts),
                LONG,
                True,
                rng.random() < 0.5,
                n=2 if route == "completions" and rng.random() < 0.15 else 1,
            )
            if stream:
                spec.cancel, spec.after_events = "close", rng.randint(0, 8)
            else:
                spec.cancel, spec.after_s = (
                    rng.choice(["read_timeout", "task_cancel"]),
                    rng.uniform(0.05, 1.5),
                )
        elif rng.random() < 0.65:
            route, prompt, max_tokens, ignore_eos = rng.choice(greedy_keys)
            spec = Spec(i, route, stream, prompt, max_tokens, ignore_eos, True)
        else:
            route = rng.choice(["completions", "chat", "generate"])
            spec = Spec(
                i,
                route,
                stream,
                rng.choice(prompts),
                rng.randint(3, 20),
                rng.random() < 0.5,
                False,
                n=2 if route != "chat" and rng.random() < 0.3 else 1,
            )
            # the native route takes n only without streaming
            spec.n = 1 if route == "generate" and stream else spec.n
        specs.append(spec)
    return specs


@dataclass
class Outcome:
    """What one client saw: per choice index its text, token count and finish reasons."""

    status: int = 0
    texts: dict[int, str] = field(default_factory=dict)
    tokens: dict[int, int] = field(default_factory=dict)
    finishes: dict[int, list[str]] = field(default_factory=dict)  # every finish reason reported, per index
    done_markers: int = 0
    events_after_done: int = 0
    errors: list = field(default_factory=list)
    events: int = 0
    cancelled: bool = False


def read_whole(spec: Spec, status: int, data) -> Outcome:
    out = Outcome(status=status)
    if status != 200:
        out.errors.append(data)
        return out
    if spec.route == "generate":
        items = data if isinstance(data, list) else [data]
        for k, item in enumerate(items):
            out.texts[k], out.tokens[k] = item["text"], item["meta_info"]["completion_tokens"]
            out.finishes[k] = [finish_reason_name(item["meta_info"]["finish_reason"])]
        return out
    for c in data["choices"]:
        out.texts[c["index"]] = c["text"] if spec.route == "completions" else c["message"]["content"]
        out.finishes[c["index"]] = [c["finish_reason"]]
    if len(data["choices"]) == 1:
        out.tokens[0] = data["usage"]["completion_tokens"]
    out.tokens["total"] = data["usage"]["completion_tokens"]
    return out


def read_event(spec: Spec, out: Outcome, payload: str) -> None:
    if out.done_markers:
        out.events_after_done += 1
    if payload == "[DONE]":
        out.done_markers += 1
        return
    event = json.loads(payload)
    out.events += 1
    if "error" in event:
        out.errors.append(event["error"])
        return
    if spec.route == "generate":  # cumulative text and ids
        out.texts[0], out.tokens[0] = event["text"], event["meta_info"]["completion_tokens"]
        reason = finish_reason_name(event["meta_info"]["finish_reason"])
        if reason is not None:
            out.finishes.setdefault(0, []).append(reason)
        return
    if event.get("usage"):
        out.tokens["total"] = event["usage"]["completion_tokens"]
    for c in event["choices"]:
        k = c["index"]
        piece = c["text"] if spec.route == "completions" else (c["delta"].get("content") or "")
        out.texts[k] = out.texts.get(k, "") + piece
        if c["finish_reason"] is not None:
            out.finishes.setdefault(k, []).append(c["finish_reason"])


async def run_spec(client: httpx.AsyncClient, spec: Spec) -> Outcome:
    if spec.stream:
        out = Outcome()
        async with client.stream("POST", spec.path, json=spec.body()) as r:
            out.status = r.status_code
            if r.status_code != 200:
                out.errors.append((await r.aread()).decode())
                return out
            if spec.cancel == "close" and spec.after_events == 0:
                out.cancelled = True
                return out  # leaving the block closes the connection before any event
            async for data in aiter_sse(r):
                read_event(spec, out, data)
                if spec.cancel == "close" and out.events >= spec.after_events:
                    out.cancelled = True
                    return out  # the client goes away mid-stream
        return out
    if spec.cancel == "read_timeout":
        try:
            r = await client.post(spec.path, json=spec.body(), timeout=httpx.Timeout(30, read=spec.after_s))
        except httpx.ReadTimeout:
            return Outcome(cancelled=True)
    elif spec.cancel == "task_cancel":
        try:
            r = await asyncio.wait_for(client.post(spec.path, json=spec.body()), spec.after_s)
        except asyncio.TimeoutError:
            return Outcome(cancelled=True)
    else:
        r = await client.post(spec.path, json=spec.body())
    return read_whole(spec, r.status_code, r.json())


def check_completed(spec: Spec, out: Outcome, alone: dict[tuple, Outcome]) -> None:
    """Exactly one result per choice, a finish reason that fits its length, greedy == alone."""
    assert out.status == 200 and not out.errors, (spec, out.errors)
    if spec.stream:
        assert out.done_markers == 1 and out.events_after_done == 0, (spec, out)
    assert sorted(out.finishes) == list(range(spec.n)), (spec, out)
    for k in range(spec.n):
        assert len(out.finishes[k]) == 1, (spec, f"choice {k} finished {out.finishes[k]}")
        assert out.finishes[k][0] in ("length", "stop"), (spec, out.finishes[k])
        if k in out.tokens:
            tokens = out.tokens[k]
            assert 1 <= tokens <= spec.max_tokens, (spec, tokens)
            if out.finishes[k][0] == "length":
                assert tokens == spec.max_tokens, (spec, tokens)
            if spec.ignore_eos:
                assert out.finishes[k][0] == "length", spec
    if "total" in out.tokens:
        assert spec.n <= out.tokens["total"] <= spec.n * spec.max_tokens, (spec, out.tokens)
    if spec.greedy:
        ref = alone[spec.key]
        assert (out.texts[0], out.finishes[0]) == (ref.texts[0], ref.finishes[0]), (
            spec,
            out.texts,
            ref.texts,
        )
        if 0 in out.tokens:
            assert out.tokens[0] == ref.tokens[0], spec


def completion_tokens(spec: Spec, out: Outcome) -> int:
    if "total" in out.tokens:
        return out.tokens["total"]
    return sum(v for k, v in out.tokens.items() if k != "total")


def test_http_abort_storm_loses_nothing(servers, good_text):
    srv = servers.current()
    specs = storm_specs(72, seed=20261126)
    cancelled = [s for s in specs if s.cancel]
    survivors = [s for s in specs if not s.cancel]
    assert (
        25 <= len(cancelled) <= 47 and any(s.greedy for s in survivors) and any(s.n == 2 for s in survivors)
    )

    async def alone_runs() -> dict[tuple, Outcome]:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            refs = {}
            for spec in survivors:  # one at a time: nothing else runs on the server
                if spec.greedy and spec.key not in refs:
                    lone = Spec(-1, *spec.key[:1], False, *spec.key[1:], True)
                    refs[spec.key] = await run_spec(client, lone)
                    check_completed(lone, refs[spec.key], {spec.key: refs[spec.key]})
            return refs

    alone = asyncio.run(alone_runs())
    before = wait_idle_and_kv_free(srv, timeout=10)

    async def storm() -> list[Outcome]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
        async with httpx.AsyncClient(
            base_url=srv.url, timeout=httpx.Timeout(60, connect=30), limits=limits
        ) as c:
            return await asyncio.wait_for(asyncio.gather(*(run_spec(c, s) for s in specs)), timeout=120)

    outcomes = asyncio.run(storm())
    for spec, out in zip(specs, outcomes):
        if spec.cancel:
            # whatever it saw before leaving was well formed; with 1500 tokens it cannot have finished
            assert out.cancelled and not out.errors and not any(out.finishes.values()), (spec, out)
        else:
            check_completed(spec, out, alone)

    # the server settles: nothing running or queued, every KV slot free or evictable
    after = wait_idle_and_kv_free(srv, timeout=20)
    # each request reached the scheduler at most once (a client that left early may never
    # have reached it); every survivor and every stream that had produced a token did
    seen = after["finished_requests"] - before["finished_requests"]
    surely = sum(s.scheduler_requests for s in survivors) + sum(
        1 for s, o in zip(specs, outcomes) if s.cancel == "close" and o.events and s.n == 1
    )
    assert surely <= seen <= sum(s.scheduler_requests for s in specs), (surely, seen)
    # the cancelled requests were aborted, not left to run out their 1500 tokens
    generated = after["generated_tokens"] - before["generated_tokens"]
    survivor_tokens = sum(completion_tokens(s, o) for s, o in zip(specs, outcomes) if not s.cancel)
    budget = sum(s.max_tokens * s.n for s in cancelled)
    assert generated - survivor_tokens < budget // 2, (generated, survivor_tokens, budget)
    assert_server_answers_right(srv, good_text)
    wait_idle_and_kv_free(srv, timeout=10)


# =================================================================================== 1b. abort storm (Engine)
def test_engine_abort_storm_loses_nothing(good_text):
    engine = get_engine("llama")  # cached: its processes live on; the conftest flushes it afterwards
    rng = random.Random(777)
    prompts = [p + s for p in PREFIXES for s in SUFFIXES]
    greedy_keys = [(rng.choice(prompts), rng.choice([4, 8, 12]), rng.random() < 0.5) for _ in range(5)]
    alone = {
        key: engine.generate(key[0], {"max_new_tokens": key[1], "ignore_eos": key[2], "temperature": 0})
        for key in greedy_keys
    }
    jobs = []  # (kind, key or prompt, k)
    for _ in range(30):
        roll = rng.random()
        if roll < 0.25:
            jobs.append(("close", rng.choice(prompts), rng.randint(1, 5)))
        elif roll < 0.5:
            jobs.append(("abort", rng.choice(prompts), rng.randint(1, 5)))
        else:
            jobs.append((rng.choice(["whole", "stream"]), rng.choice(greedy_keys), 0))
    long_params = {"max_new_tokens": LONG, "ignore_eos": True, "temperature": 0}
    before = engine.get_server_info()

    def run(job) -> dict:
        kind, what, k = job
        if kind == "whole":
            out = engine.generate(
                what[0], {"max_new_tokens": what[1], "ignore_eos": what[2], "temperature": 0}
            )
            return {"text": out["text"], "reason": out["meta_info"]["finish_reason"], "finishes": 1}
        params = (
            long_params
            if kind in ("close", "abort")
            else {"max_new_tokens": what[1], "ignore_eos": what[2], "temperature": 0}
        )
        stream = engine.generate(what if isinstance(what, str) else what[0], params, stream=True)
        text, finishes, reason, chunks = "", 0, None, 0
        for chunk in stream:
            chunks += 1
            text += chunk["text"]
            if chunk["finished"]:
                finishes += 1
                reason = chunk["meta_info"]["finish_reason"]
            if kind == "close" and chunks == k:
                stream.close()  # the consumer walks away: the request is aborted
                break
            if kind == "abort" and chunks == k:
                engine.abort(chunk["meta_info"]["id"])  # then read on: the stream must end soon
        return {"text": text, "reason": reason, "finishes": finishes, "chunks": chunks}

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(run, job) for job in jobs]
        results = [f.result(timeout=120) for f in futures]
    for (kind, what, k), res in zip(jobs, results):
        if kind == "close":
            assert res["chunks"] == k and res["finishes"] == 0, (kind, res)
        elif kind == "abort":
            assert res["finishes"] == 1 and res["reason"]["type"] == "abort", (kind, res)
            assert "abort" in res["reason"].get("message", ""), res
        else:
            ref = alone[what]
            assert res["finishes"] == 1, (kind, res)
            assert (res["text"], res["reason"]) == (ref["text"], ref["meta_info"]["finish_reason"]), (
                kind,
                what,
                res,
            )

    info: dict = {}

    def idle() -> bool:
        nonlocal info
        info = engine.get_server_info()
        return info["running"] == 0 and info["waiting"] == 0

    wait_until(idle, 20, 0.1, what=lambda: f"the engine to go idle (last server_info: {info})")
    assert info["free_tokens"] + info["evictable_tokens"] == info["total_tokens"], info
    assert info["kv_accounting"] == "ok", info["kv_accounting"]
    # every job reached the scheduler (each read a chunk or ran whole) and left it exactly once
    assert info["finished_requests"] - before["finished_requests"] == len(jobs)
    engine.check_accounting()
    assert_engine_answers_right(engine, good_text)


# ======================================================================================== 2. SIGKILL (HTTP)
@dataclass
class Client:
    """One HTTP client in its own thread; records what it saw and when it ended."""

    name: str
    path: str
    body: dict
    stream: bool
    delay: float = 0.0  # after `go` is set
    started: threading.Event = field(default_factory=threading.Event)  # streams: first event read
    status: int = 0
    payloads: list = field(default_factory=list)
    error: BaseException | None = None
    ended_at: float = 0.0

    def run(self, url: str, go: threading.Event | None) -> None:
        try:
            if go is not None:
                go.wait(30)
                time.sleep(self.delay)
            with httpx.Client(base_url=url, timeout=httpx.Timeout(30, read=15)) as client:
                if not self.stream:
                    r = client.post(self.path, json=self.body)
                    self.status, self.payloads = r.status_code, [r.text]
                    self.payloads = [r.json()]
                else:
                    with client.stream("POST", self.path, json=self.body) as r:
                        self.status = r.status_code
                        for line in r.iter_lines():
                            if line.startswith("data:"):
                                data = line[len("data:") :].strip()
                                self.payloads.append(data if data == "[DONE]" else json.loads(data))
                                self.started.set()
                            if len(self.payloads) > 5000:
                                break
        except BaseException as exc:
            self.error = exc
        finally:
            self.ended_at = time.monotonic()

    def failure(self) -> dict | None:
        """The error this client was given: a non-streamed 503 body, or an SSE error event
        followed by [DONE]."""
        if self.error is not None:
            return None
        if not self.stream:
            body = self.payloads[0] if self.payloads else {}
            return {**body["error"], "code": self.status} if "error" in body else None
        if len(self.payloads) < 2 or self.payloads[-1] != "[DONE]" or "error" not in self.payloads[-2]:
            return None
        return self.payloads[-2]["error"]


def kill_with_late_arrivals(
    pid: int,
    go: threading.Event,
    late: list[threading.Thread],
    everyone: list[threading.Thread],
    wait_s: float = 20.0,
) -> float:
    """Start the late senders (they wait on `go`), SIGKILL `pid`, release them, and join every
    thread for up to `wait_s` after the kill. Returns the kill's time.monotonic()."""
    for t in late:
        t.start()
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    go.set()
    for t in everyone:
        t.join(max(0.1, killed_at + wait_s - time.monotonic()))
    return killed_at


def long_clients() -> list[Client]:
    long = {"max_tokens": LONG, "ignore_eos": True, "temperature": 0}
    chat = [{"role": "user", "content": "Tell me a very long story."}]
    return [
        Client(
            "completions-stream", "/v1/completions", {"prompt": PREFIXES[0], "stream": True, **long}, True
        ),
        Client("chat-stream", "/v1/chat/completions", {"messages": chat, "stream": True, **long}, True),
        Client(
            "generate-stream",
            "/generate",
            {
                "text": PREFIXES[1],
                "stream": True,
                "sampling_params": {"max_new_tokens": LONG, "ignore_eos": True},
            },
            True,
        ),
        Client("completions", "/v1/completions", {"prompt": PREFIXES[2], **long}, False),
        Client(
            "chat-n2", "/v1/chat/completions", {"messages": chat, **long, "n": 2, "temperature": 0.7}, False
        ),
        Client(
            "generate-batch",
            "/generate",
            {"text": PREFIXES[:2], "sampling_params": {"max_new_tokens": LONG, "ignore_eos": True}},
            False,
        ),
    ]


@pytest.mark.parametrize("victim", ["scheduler", "detokenizer"])
def test_sigkill_under_serve_fails_pending_requests_fast_and_leaves_no_orphans(victim, servers, good_text):
    srv = servers.current()
    try:
        pids = server_info(srv)["process_ids"]
        kids = descendants_of(srv.proc.pid)
        assert set(pids.values()) <= kids, (pids, kids)
        pending = long_clients()
        threads = [threading.Thread(target=c.run, args=(srv.url, None), daemon=True) for c in pending]
        for t in threads:
            t.start()
        # every pending request is in the scheduler (chat-n2: warm-up + 2, the batch: 2) and every stream
        # has begun
        wait_until(
            lambda: all(c.started.is_set() for c in pending if c.stream) and server_info(srv)["running"] == 8,
            30,
            0.1,
            what=lambda: f"every stream to begin and 8 requests to run: {server_info(srv)}\n{srv.output()}",
        )
        # more requests arrive while the process dies, before and after the server notices
        go = threading.Event()
        late = [
            Client(
                f"late-{i}",
                "/v1/completions",
                {"prompt": PREFIXES[i % 3], "max_tokens": 20, "temperature": 0},
                False,
                delay=0.06 * i,
            )
            for i in range(4)
        ]
        late += [
            Client(
                "late-stream",
                "/v1/completions",
                {"prompt": PREFIXES[0], "max_tokens": 20, "stream": True},
                True,
                delay=0.1,
            )
        ]
        late_threads = [threading.Thread(target=c.run, args=(srv.url, go), daemon=True) for c in late]
        killed_at = kill_with_late_arrivals(pids[victim], go, late_threads, threads + late_threads)
        hung = [c.name for c, t in zip(pending + late, threads + late_threads) if t.is_alive()]
        assert not hung, f"still waiting 20 s after the {victim} was killed: {hung}"
        for c in pending + late:
            if c.name.startswith("late") and isinstance(c.error, httpx.ConnectError):
                continue  # it came after the server had stopped listening: refused, never pending
            failure = c.failure()
            assert failure is not None, (c.name, c.status, c.error, c.payloads[-3:])
            assert failure["code"] == 503 and f"the {victim} process" in failure["message"], (c.name, failure)
            waited = c.ended_at - killed_at
            assert waited < KILL_DEADLINE_S, f"{c.name} failed {waited:.1f}s after the kill"
        # the server exits on its own, non-zero, naming the process, and takes every child with it
        try:
            code = srv.proc.wait(20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"radixlm serve still running 20 s after its {victim} died:\n{srv.output()}")
        assert code != 0, srv.output()
        assert f"exiting because the {victim} process" in srv.output(), srv.output()
        wait_until(
            lambda: all(gone(p) for p in kids),
            10,
            what=lambda: f"the children to exit (still running: {[p for p in kids if not gone(p)]})",
        )
    finally:
        srv.stop()  # off the live list: the after-test check is for servers that should be up
    # a new server on the same folder serves correctly
    assert_server_answers_right(servers.restart(), good_text)


# ======================================================================================= 2b. SIGKILL (Engine)
@pytest.mark.parametrize("victim", ["detokenizer", "scheduler"])
def test_sigkill_under_engine_fails_pending_requests_fast_and_leaves_no_orphans(victim, engines, good_text):
    engine = engines.current()
    try:
        pids = engine.process_ids
        ipc_dir = engine._runtime.addrs.directory
        long = {"max_new_tokens": LONG, "ignore_eos": True, "temperature": 0}
        outcomes: dict[str, tuple[BaseException | None, float]] = {}
        first_chunk: dict[str, threading.Event] = {}

        def streamed(name: str, prompt: str) -> None:
            try:
                for _ in engine.generate(prompt, long, stream=True):
                    first_chunk[name].set()
                outcomes[name] = (None, time.monotonic())
            except BaseException as exc:
                outcomes[name] = (exc, time.monotonic())

        def whole(
            name: str, prompt, params: dict, delay: float = 0.0, go: threading.Event | None = None
        ) -> None:
            if go is not None:
                go.wait(30)
                time.sleep(delay)
            try:
                engine.generate(prompt, params)
                outcomes[name] = (None, time.monotonic())
            except BaseException as exc:
                outcomes[name] = (exc, time.monotonic())

        for name in ("stream-0", "stream-1"):
            first_chunk[name] = threading.Event()
        threads = [
            threading.Thread(target=streamed, args=("stream-0", PREFIXES[0]), daemon=True),
            threading.Thread(target=streamed, args=("stream-1", PREFIXES[1]), daemon=True),
            threading.Thread(target=whole, args=("whole", PREFIXES[2], long), daemon=True),
            threading.Thread(target=whole, args=("batch", PREFIXES[:2], long), daemon=True),
            threading.Thread(
                target=whole, args=("n2", PREFIXES[0], {**long, "n": 2, "temperature": 0.7}), daemon=True
            ),
        ]
        for t in threads:
            t.start()
        wait_until(
            lambda: (
                all(e.is_set() for e in first_chunk.values()) and engine.get_server_info()["running"] == 7
            ),
            30,
            0.1,
            what=lambda: f"every stream to begin and 7 requests to run: {engine.get_server_info()}",
        )
        go = threading.Event()
        late = [
            threading.Thread(
                target=whole,
                daemon=True,
                args=(f"late-{i}", PREFIXES[i % 3], {"max_new_tokens": 20}, 0.05 * i, go),
            )
            for i in range(5)
        ]
        killed_at = kill_with_late_arrivals(pids[victim], go, late, threads + late)
        assert not [t for t in threads + late if t.is_alive()], (
            f"still waiting 20 s after the kill: {outcomes}"
        )
        assert len(outcomes) == 10, outcomes
        for name, (exc, ended_at) in outcomes.items():
            assert isinstance(exc, RuntimeDiedError) and f"the {victim} process" in str(exc), (name, exc)
            assert ended_at - killed_at < KILL_DEADLINE_S, (
                f"{name} failed {ended_at - killed_at:.1f}s after the kill"
            )
        with pytest.raises(RuntimeDiedError, match=f"the {victim} process"):
            engine.generate(GOOD_PROMPT, {"max_new_tokens": 2})
    finally:
        engine.shutdown()
    # no process of this engine outlives its shutdown, and its private ipc directory is gone
    wait_until(
        lambda: all(gone(p) for p in pids.values()),
        10,
        what=lambda: (
            f"the engine's processes to exit (still running: {[p for p in pids.values() if not gone(p)]})"
        ),
    )
    assert not os.path.exists(ipc_dir)
    assert_engine_answers_right(engines.restart(), good_text)


# ======================================================================================== 3. corrupt weights
def _truncated(folder: Path) -> None:
    weights = folder / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)


def _bad_header(folder: Path) -> None:
    """Same size, but the JSON header after the 8-byte length is garbage."""
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as f:
        f.seek(8)
        f.write(b"\x00{not json" * 4)


CORRUPTIONS = {"truncated to half": _truncated, "corrupt header": _bad_header}


@pytest.fixture(scope="module")
def corrupt_folders(model_path, tmp_path_factory) -> dict[str, Path]:
    folders = {}
    for name, corrupt in CORRUPTIONS.items():
        dst = tmp_path_factory.mktemp("corrupt") / "model"
        shutil.copytree(model_path, dst)
        corrupt(dst)
        folders[name] = dst
    return folders


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_engine_refuses_corrupt_weights_naming_the_file(kind, corrupt_folders):
    folder = corrupt_folders[kind]
    before = children_of(os.getpid())
    with pytest.raises(ValueError, match=r"cannot read weight file .*model\.safetensors") as info:
        Engine(str(folder))
    assert str(folder) in str(info.value)
    # the children it started for loading are gone
    wait_until(
        lambda: not own_new_children(before),
        10,
        what=lambda: f"the loading children to exit: {own_new_children(before)}",
    )


@pytest.mark.parametrize("kind", ["truncated to half"])  # the Engine test shows both reach the same check
def test_serve_refuses_corrupt_weights_and_exits_cleanly(kind, corrupt_folders):
    folder = corrupt_folders[kind]
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
    )
    cmd = [
        sys.executable,
        "-m",
        "radixlm.runtime.entrypoints.cli",
        "serve",
        "--model",
        str(folder),
        "--host",
        HOST,
        "--port",
        str(free_port()),
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    seen: set[int] = set()  # every process it started, sampled while it runs

    def exited() -> bool:
        seen.update(descendants_of(proc.pid))
        return proc.poll() is not None

    try:
        wait_until(exited, 90, what="radixlm serve with corrupt weights to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        reader.join(10)
    output = "".join(lines)
    assert proc.returncode != 0, output
    assert f"cannot read weight file {str(folder / 'model.safetensors')!r}" in output, output
    assert "Traceback" not in output, f"a start-up error should be one clear line, not a traceback:\n{output}"
    assert seen, "serve exited before starting its runtime processes: the weights were never read"
    wait_until(
        lambda: all(gone(p) for p in seen),
        10,
        what=lambda: f"its processes to exit (still running: {[p for p in seen if not gone(p)]})",
    )
