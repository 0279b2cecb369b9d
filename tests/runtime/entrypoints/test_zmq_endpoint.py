"""The ZeroMQ client endpoint of `radixlm serve --zmq-port`, driven by `RuntimeClient` and by a
raw DEALER socket: results equal the in-process Engine's, streams concatenate to the
non-streamed text, control operations work, bad requests come back as errors naming the
problem, an abandoned stream frees its request, and 1,000 hostile frames are answered
with errors without changing what a normal request returns afterwards."""

from __future__ import annotations

import asyncio
import collections
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import msgspec
import pytest
import zmq
from helpers import get_engine
from polling import wait_until

from radixlm.client.runtime_client import RuntimeClient
from radixlm.runtime.managers import messages as P
from radixlm.testing import build_tiny_model

PROMPT = "Once upon a time, in a land far away"
GREEDY = {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}
READY_TIMEOUT_S = 120
CLIENT_TIMEOUT_S = 30


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`radixlm serve --zmq-port` in a subprocess; stdout read by a thread."""

    def __init__(self) -> None:
        self.http_port, self.zmq_port = _free_port(), _free_port()
        while self.zmq_port == self.http_port:
            self.zmq_port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.zmq_port}"
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        cmd = [
            sys.executable,
            "-m",
            "radixlm.runtime.entrypoints.cli",
            "serve",
            "--model",
            str(build_tiny_model("llama")),
            "--port",
            str(self.http_port),
            "--zmq-port",
            str(self.zmq_port),
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.log: collections.deque[str] = collections.deque(maxlen=200)
        self._ready: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            line = self._ready.get(timeout=READY_TIMEOUT_S)
        except queue.Empty:
            self.stop()
            raise RuntimeError(f"server not ready in {READY_TIMEOUT_S}s:\n" + "".join(self.log)) from None
        if line is None:
            self.stop()
            raise RuntimeError(
                f"server exited before ready (rc={self.proc.returncode}):\n" + "".join(self.log)
            )
        assert f"zmq {self.address}" in line, line

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.log.append(line)
            if line.startswith("radixlm ready:"):
                self._ready.put(line)
        self.proc.wait()
        self._ready.put(None)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        return self.proc.returncode


@pytest.fixture(scope="module")
def server():
    srv = Server()
    yield srv
    rc = srv.stop()
    assert rc == 0, "".join(srv.log)


@pytest.fixture(scope="module")
def client(server):
    c = RuntimeClient(server.address, timeout_s=CLIENT_TIMEOUT_S)
    yield c
    c.close()


def _wait_idle(client: RuntimeClient, timeout: float = 15.0) -> dict:
    info: dict = {}

    def idle() -> dict | None:
        nonlocal info
        info = client.get_server_info()
        return info if info["running"] == 0 and info["waiting"] == 0 else None

    return wait_until(idle, timeout, what=lambda: f"requests to finish (last server_info: {info})")


def _assert_pool_empty_after_flush(client: RuntimeClient) -> None:
    _wait_idle(client)
    assert client.flush_cache()
    info = client.get_server_info()
    assert info["free_tokens"] == info["total_tokens"], info
    assert info["in_use_tokens"] == 0 and info["evictable_tokens"] == 0 and info["locked_tokens"] == 0, info


# ------------------------------------------------------------------------------ normal use
def test_generate_matches_engine(client):
    engine = get_engine("llama")
    for prompt, params in [(PROMPT, GREEDY), ("héllo wörld 日本語 🙂", {**GREEDY, "max_new_tokens": 9})]:
        want = engine.generate(prompt, params)
        got = client.generate(prompt, params)
        assert got["text"] == want["text"]
        assert got["output_ids"] == want["output_ids"]
        assert got["finished"] is True
        meta = got["meta_info"]
        assert meta["completion_tokens"] == len(want["output_ids"]) == params["max_new_tokens"]
        assert meta["prompt_tokens"] == want["meta_info"]["prompt_tokens"]
        assert meta["finish_reason"] == {"type": "length", "length": params["max_new_tokens"]}
    # input_ids, logprobs and a stop string go through too
    ids = engine.tokenizer(PROMPT).input_ids
    kw = dict(return_logprob=True, top_logprobs_num=2, logprob_start_len=0)
    want = engine.generate(input_ids=ids, sampling_params={**GREEDY, "stop": ["\n"]}, **kw)
    got = client.generate(input_ids=ids, sampling_params={**GREEDY, "stop": ["\n"]}, **kw)
    assert (got["text"], got["output_ids"]) == (want["text"], want["output_ids"])
    assert [t for _, t in got["meta_info"]["output_token_logprobs"]] == got["output_ids"]
    assert len(got["meta_info"]["input_token_logprobs"]) == len(ids)
    assert got["meta_info"]["input_token_logprobs"][0][0] is None
    for (a, ta), (b, tb) in zip(
        got["meta_info"]["output_token_logprobs"], want["meta_info"]["output_token_logprobs"]
    ):
        assert ta == tb and abs(a - b) < 1e-4


def test_stream_concatenates_to_non_stream(client):
    for params in ({**GREEDY, "max_new_tokens": 20}, {**GREEDY, "stop": "e", "max_new_tokens": 30}):
        full = client.generate(PROMPT, params)
        chunks = list(client.generate_stream(PROMPT, params))
        assert chunks and chunks[-1]["finished"] is True
        assert all(c["finished"] is False for c in chunks[:-1])
        assert "".join(c["text"] for c in chunks) == full["text"]
        assert [t for c in chunks for t in c["output_ids"]] == full["output_ids"]
        assert chunks[-1]["meta_info"]["finish_reason"] == full["meta_info"]["finish_reason"]
        if params.get("stop") is None:
            assert len(chunks) > 1  # really streams


def test_server_info_and_flush_cache(client):
    client.generate(PROMPT, GREEDY)
    info = client.get_server_info()
    for key in (
        "context_length",
        "max_total_tokens",
        "total_tokens",
        "free_tokens",
        "running",
        "waiting",
        "finished_requests",
        "device",
    ):
        assert key in info, info
    assert info["finished_requests"] >= 1 and info["device"] == "cpu"
    assert client.control("health") == {}
    _assert_pool_empty_after_flush(client)


def test_concurrent_clients_from_threads(client):
    want = client.generate(PROMPT, GREEDY)
    results: list = [None] * 4
    errors: list = []

    def work(i: int) -> None:
        try:
            results[i] = client.generate(PROMPT, GREEDY)["output_ids"]
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and all(r == want["output_ids"] for r in results), (errors, results)


def test_n_samples_come_back_together_and_a_streamed_n_is_refused(client):
    params = {"max_new_tokens": 6, "temperature": 1.0, "seed": 11}
    outs = client.generate(PROMPT, {**params, "n": 3})
    assert isinstance(outs, list) and len(outs) == 3
    # the runtime's fan-out rule: sample k is the request with seed + k
    for k, out in enumerate(outs):
        assert out["output_ids"] == client.generate(PROMPT, {**params, "seed": 11 + k})["output_ids"]
    with pytest.raises(RuntimeError, match="n == 1"):
        list(client.generate_stream(PROMPT, {**params, "n": 2}))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(prompt="", sampling_params=GREEDY), "empty"),
        (dict(prompt=PROMPT, sampling_params={**GREEDY, "temperature": -1}), "temperature"),
        (dict(prompt=PROMPT, sampling_params={**GREEDY, "bogus": 1}), "unknown sampling parameter.*bogus"),
        (dict(prompt=PROMPT, sampling_params={**GREEDY, "max_new_tokens": "5"}), "max_new_tokens"),
        (dict(prompt=PROMPT, sampling_params={**GREEDY, "stop": [""]}), "stop"),
        (dict(sampling_params=GREEDY), "exactly one of prompt"),
        (dict(prompt=PROMPT, input_ids=[5], sampling_params=GREEDY), "exactly one of prompt"),
        (dict(input_ids=[5, 8192], sampling_params=GREEDY), "input_ids"),
        (dict(input_ids=[], sampling_params=GREEDY), "empty"),
        (dict(input_ids=[5] * 3000, sampling_params=GREEDY), "too long"),
        (dict(prompt=PROMPT, sampling_params=GREEDY, logprob_start_len=999), "logprob_start_len"),
        (dict(prompt=PROMPT, sampling_params=GREEDY, top_logprobs_num=-1), "top_logprobs_num"),
    ],
)
def test_bad_request_raises_naming_the_problem(client, kwargs, match):
    with pytest.raises(RuntimeError, match=match):
        client.generate(**kwargs)
    if not {"logprob_start_len", "top_logprobs_num"} & set(kwargs):  # generate_stream has no logprob options
        with pytest.raises(RuntimeError, match=match):
            list(client.generate_stream(**kwargs))


def test_batch_returns_outputs_in_order_and_is_all_or_nothing(client):
    engine = get_engine("llama")
    reqs = [
        {"prompt": PROMPT, "sampling_params": GREEDY},
        {
            "prompt": "héllo",
            "sampling_params": {"max_new_tokens": 0},
            "return_logprob": True,
            "logprob_start_len": 0,
        },
        {
            "input_ids": engine.tokenizer(PROMPT).input_ids[:5],
            "sampling_params": {**GREEDY, "max_new_tokens": 3},
        },
    ]
    outs = client.generate_batch(reqs)
    assert [o["output_ids"] for o in outs] == [
        engine.generate(
            **{
                "sampling_params": r["sampling_params"],
                **{k: v for k, v in r.items() if k in ("prompt", "input_ids")},
            }
        )["output_ids"]
        for r in reqs
    ]
    assert outs[1]["output_ids"] == [] and len(outs[1]["meta_info"]["input_token_logprobs"]) >= 2
    assert client.generate_batch([]) == []
    before = client.get_server_info()["finished_requests"]
    with pytest.raises(RuntimeError, match="temperature"):  # one bad request: none of them runs
        client.generate_batch([reqs[0], {"prompt": PROMPT, "sampling_params": {"temperature": -1}}])
    assert _wait_idle(client)["finished_requests"] == before
    _assert_pool_empty_after_flush(client)


def test_a_group_is_answered_request_by_request(server, client):
    """ClientGroup (what run_batch's gathered requests travel as): each request is answered
    alone on its rid, exactly as if it had come in a frame of its own; a refused one fails
    alone, and a ClientBatch inside keeps its all-or-nothing reply."""
    engine = get_engine("llama")
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.address)
    enc, dec = P.encoder(), P.decoder(P.ClientReply)
    group = P.ClientGroup(
        requests=[
            P.ClientGenerate(rid="g1", text=PROMPT, sampling_params=GREEDY),
            P.ClientGenerate(rid="g2", text=PROMPT, sampling_params={**GREEDY, "temperature": -1}),
            P.ClientGenerate(rid="g3", text="héllo there", sampling_params={**GREEDY, "n": 2, "seed": 3}),
            P.ClientBatch(
                rid="g4", requests=[P.ClientGenerate(rid="g4a", text=PROMPT, sampling_params=GREEDY)]
            ),
            P.ClientGenerate(rid="g5", text=PROMPT, sampling_params=GREEDY, stream=True),
        ]
    )
    try:
        sock.send(enc.encode(group))
        replies: dict[str, list] = collections.defaultdict(list)
        deadline = time.monotonic() + CLIENT_TIMEOUT_S

        def final(rid: str) -> bool:
            got = replies.get(rid)
            return bool(got) and (isinstance(got[-1], P.ClientResult) or got[-1].finished)

        while not all(final(r) for r in ("g1", "g2", "g3", "g4", "g5")) and time.monotonic() < deadline:
            if sock.poll(200):
                reply = dec.decode(sock.recv())
                replies[reply.rid].append(reply)
    finally:
        sock.close(0)
    want = engine.generate(PROMPT, GREEDY)["output_ids"]
    assert [r.output_ids for r in replies["g1"]] == [want]
    assert len(replies["g2"]) == 1 and not replies["g2"][0].ok and "temperature" in replies["g2"][0].error
    assert replies["g3"][0].ok and len(replies["g3"][0].data["outputs"]) == 2
    assert [o["output_ids"] for o in replies["g4"][0].data["outputs"]] == [want]
    streamed = [i for chunk in replies["g5"] for i in chunk.output_ids]
    assert streamed == want and len(replies["g5"]) > 1
    _assert_pool_empty_after_flush(client)


@pytest.mark.parametrize("op", ["shutdown", "check_accounting", "", "flush_cache; shutdown"])
def test_internal_control_operations_are_refused(client, op):
    with pytest.raises(RuntimeError, match="unknown operation"):
        client.control(op)
    assert client.generate(PROMPT, GREEDY)["finished"]  # and the server keeps serving


def test_abandoned_stream_is_aborted_and_freed(client):
    want = client.generate(PROMPT, GREEDY)
    before = client.get_server_info()
    long = {"max_new_tokens": 1500, "temperature": 0, "ignore_eos": True}
    seen = 0
    for chunk in client.generate_stream(PROMPT, long):
        seen += 1
        assert chunk["finished"] is False
        if seen == 3:
            break  # the iterator is dropped here: RuntimeClient sends ClientAbort
    info = _wait_idle(client, timeout=15)
    # it ended by the abort the dropped iterator sent, not by running to its length
    assert info["aborted_requests"] - before["aborted_requests"] == 1
    assert info["finished_requests"] - before["finished_requests"] == 1
    _assert_pool_empty_after_flush(client)
    # the same thread's socket still gives exact answers (the aborted stream's leftovers are skipped)
    got = client.generate(PROMPT, GREEDY)
    assert (got["text"], got["output_ids"]) == (want["text"], want["output_ids"])


def test_explicit_abort_by_rid(server, client):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.address)
    enc, dec = P.encoder(), P.decoder(P.ClientReply)
    try:
        sock.send(
            enc.encode(
                P.ClientGenerate(
                    rid="long",
                    text=PROMPT,
                    stream=True,
                    sampling_params={"max_new_tokens": 1500, "temperature": 0, "ignore_eos": True},
                )
            )
        )
        assert sock.poll(CLIENT_TIMEOUT_S * 1000)
        first = dec.decode(sock.recv())
        assert isinstance(first, P.ClientChunk) and first.rid == "long"
        sock.send(enc.encode(P.ClientAbort(rid="long")))
        replies = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if not sock.poll(200):
                if sum(isinstance(r, P.ClientResult) for r in replies) >= 2:
                    break  # the abort's ack and the generate's "aborted" result
                continue
            replies.append(dec.decode(sock.recv()))
        results = [r for r in replies if isinstance(r, P.ClientResult)]
        assert {(r.rid, r.ok, r.error) for r in results} == {("long", True, ""), ("long", False, "aborted")}
        assert all(r.rid == "long" for r in replies)
        assert not any(isinstance(r, P.ClientChunk) and r.finished for r in replies)
        # aborting an unknown rid is harmless
        sock.send(enc.encode(P.ClientAbort(rid="nope")))
        assert sock.poll(5000)
        assert dec.decode(sock.recv()) == P.ClientResult(rid="nope", ok=True)
    finally:
        sock.close(0)
    _assert_pool_empty_after_flush(client)


# ------------------------------------------------------------------------------ hostile frames
def _random_value(rng: random.Random, depth: int = 0):
    """A random msgpack-able value (valid UTF-8 strings, bounded depth)."""
    kinds = ["int", "float", "str", "bytes", "none", "bool"] + (["list", "dict"] * 2 if depth < 4 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.choice([0, -1, 1, 2**31, -(2**63), 2**64 - 1, rng.randint(-1000, 1000)])
    if kind == "float":
        return rng.choice([0.5, -1e300, float("inf"), float("nan"), rng.random()])
    if kind == "str":
        return rng.choice(
            [
                "",
                "type",
                "rid",
                "ClientGenerate",
                "ClientControl",
                "server_info",
                "日本",
                "x" * 50,
                "ClientAbort",
                "ClientChunk",
                "GenerateReq",
                "op",
                "text",
            ]
        )
    if kind == "bytes":
        return rng.randbytes(rng.randint(0, 20))
    if kind == "none":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {
        _random_value(rng, 4)
        if rng.random() < 0.2
        else rng.choice(
            ["type", "rid", "text", "op", "input_ids", "sampling_params", "stream", "zz"]
        ): _random_value(rng, depth + 1)
        for _ in range(rng.randint(0, 5))
    }


def _wrong_shape(rng: random.Random) -> bytes:
    """Valid msgpack that must not decode to a ClientRequest."""
    choice = rng.randrange(6)
    if choice == 0:  # a reply or internal message type
        msg = rng.choice(
            [
                P.ClientChunk(rid="x", text="t", output_ids=[1], meta_info={}, finished=True),
                P.ClientResult(rid="x", ok=True),
                P.ControlReq(rid="x", op="shutdown"),
                P.GenerateReq(rid="x", input_ids=[1], sampling_params=P.SamplingParams()),
                P.AbortReq(rid="x"),
                P.ShutdownAck(process="scheduler"),
                P.TokenOutputBatch([]),
            ]
        )
        return P.encoder().encode(msg)
    if choice == 1:  # a request with an unknown field
        return msgspec.msgpack.encode(
            {
                "type": "ClientControl",
                "rid": "x",
                "op": "health",
                rng.choice(["evil", "__class__", "a"]): _random_value(rng),
            }
        )
    if choice == 2:  # a request missing a required field or with a wrongly typed one
        return msgspec.msgpack.encode(
            rng.choice(
                [
                    {"type": "ClientControl", "rid": "x"},
                    {"type": "ClientAbort"},
                    {"type": "ClientGenerate", "rid": 5},
                    {"type": "ClientGenerate", "rid": "x", "input_ids": ["a"]},
                    {"type": "ClientGenerate", "rid": "x", "sampling_params": [1]},
                    {"type": "ClientGenerate", "rid": "x", "stream": "yes"},
                    {"type": "ClientControl", "rid": None, "op": "health"},
                ]
            )
        )
    value = _random_value(rng)
    if isinstance(value, dict) and value.get("type") in ("ClientGenerate", "ClientControl", "ClientAbort"):
        value["type"] = "Nope"  # keep it undecodable
    return msgspec.msgpack.encode(value)


def _hostile_messages(n: int, seed: int) -> list[list[bytes]]:
    rng = random.Random(seed)
    enc = P.encoder()
    valid = [
        enc.encode(m)
        for m in (
            P.ClientGenerate(rid="v1", text=PROMPT, sampling_params=GREEDY),
            P.ClientGenerate(
                rid="v2",
                input_ids=list(range(5, 400)),
                sampling_params={"stop": ["a", "日本"]},
                return_logprob=True,
                stream=True,
            ),
            P.ClientControl(rid="v3", op="server_info"),
            P.ClientAbort(rid="v4"),
            P.ClientGenerate(rid="v5", text="héllo wörld 日本語 🙂 " * 40),
        )
    ]
    out: list[list[bytes]] = []
    for _ in range(n):
        r = rng.random()
        if r < 0.4:
            out.append([rng.randbytes(rng.randint(0, 2000))])
        elif r < 0.6:
            frame = rng.choice(valid)
            out.append([frame[: rng.randrange(len(frame))]])  # every proper prefix is invalid
        elif r < 0.8:
            out.append([_wrong_shape(rng)])
        else:  # several frames, even when each is a valid request
            frames = [
                rng.choice(valid) if rng.random() < 0.5 else rng.randbytes(rng.randint(0, 300))
                for _ in range(rng.randint(2, 4))
            ]
            out.append(frames)
    return out


def test_hostile_messages_are_hard_errors_locally():
    """Sanity check of the generator: nothing it makes decodes (so every frame must be refused)."""
    dec = P.decoder(P.ClientRequest)
    for frames in _hostile_messages(1000, seed=42):
        if len(frames) == 1:
            with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
                dec.decode(frames[0])


def _stream_result(client: RuntimeClient) -> tuple[str, list[int]]:
    chunks = list(client.generate_stream(PROMPT, GREEDY))
    return "".join(c["text"] for c in chunks), [t for c in chunks for t in c["output_ids"]]


def test_fuzzing_the_endpoint_changes_nothing(server, client):
    before = client.generate(PROMPT, GREEDY)
    before_stream = _stream_result(client)
    messages = _hostile_messages(1000, seed=42)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.address)
    dec = P.decoder(P.ClientReply)
    replies: list = []
    try:
        for frames in messages:
            sock.send_multipart(frames)
            while sock.poll(0):  # keep draining so neither side's queue grows
                replies.append(dec.decode(sock.recv()))
        deadline = time.monotonic() + 30
        while len(replies) < len(messages) and time.monotonic() < deadline:
            if sock.poll(200):
                replies.append(dec.decode(sock.recv()))
        while sock.poll(300):  # nothing more than one reply per message
            replies.append(dec.decode(sock.recv()))
    finally:
        sock.close(0)
    assert len(replies) == len(messages)
    assert all(isinstance(r, P.ClientResult) and r.ok is False and r.rid == "" for r in replies)
    multi = sum(len(f) > 1 for f in messages)
    assert sum(r.error == "expected exactly one frame" for r in replies) == multi
    assert sum(r.error.startswith("undecodable message: ") for r in replies) == len(messages) - multi
    after = client.generate(PROMPT, GREEDY)
    assert (after["text"], after["output_ids"]) == (before["text"], before["output_ids"])
    assert _stream_result(client) == before_stream
    # a second, fresh client sees the same
    other = RuntimeClient(server.address, timeout_s=CLIENT_TIMEOUT_S)
    try:
        assert other.generate(PROMPT, GREEDY)["output_ids"] == before["output_ids"]
    finally:
        other.close()
    _assert_pool_empty_after_flush(client)


def test_oversized_frame_is_dropped_and_endpoint_survives(server, client):
    """A frame over MAX_MESSAGE_BYTES disconnects that peer (ZMQ_MAXMSGSIZE); others are unaffected."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.address)
    try:
        sock.send(b"\x00" * (P.MAX_MESSAGE_BYTES + 1))
        assert not sock.poll(500)  # no reply: the frame never reached the decoder
    finally:
        sock.close(0)
    assert client.generate(PROMPT, GREEDY)["finished"]


# ------------------------------------------------------------------------------ known bugs
class _StubTM:
    """Just enough of a TokenizerManager for control requests."""

    async def control(self, op):
        return P.ControlReply(rid="stub", op=op, ok=True, data={"op": op})


def _bad_utf8_frame() -> bytes:
    e = msgspec.msgpack.encode
    return b"\x83" + e("type") + e("ClientControl") + e("rid") + b"\xa1\xff" + e("op") + e("health")


def _deep_frame() -> bytes:
    e = msgspec.msgpack.encode
    return (
        b"\x83"
        + e("type")
        + e("ClientGenerate")
        + e("rid")
        + e("deep")
        + e("sampling_params")
        + b"\x81"
        + e("stop")
        + b"\x91" * 5000
        + b"\xc0"
    )


def _send_then_health(sock: zmq.Socket, frame: bytes, timeout_s: float = 2.0) -> list:
    """Send `frame`, then a health request on the same connection (so it is read after the frame);
    return the replies up to the health answer, or raise TimeoutError if it never comes."""
    dec = P.decoder(P.ClientReply)
    sock.send(frame)
    sock.send(P.encoder().encode(P.ClientControl(rid="after", op="health")))
    replies: list = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sock.poll(100):
            replies.append(dec.decode(sock.recv()))
            if replies[-1].rid == "after":
                return replies
    raise TimeoutError(f"the endpoint stopped answering after the bad frame (replies: {replies})")


KILLERS = {"invalid-utf8-rid": _bad_utf8_frame, "nesting-5000-deep": _deep_frame}
KILLER_REASON = (
    "BUG: ClientEndpoint._serve catches only msgspec.DecodeError/ValidationError around decode; "
    "a frame whose "
    "msgpack str is invalid UTF-8 (UnicodeDecodeError; 36 bytes suffice) or that nests arrays ~5000 deep in "
    "sampling_params (RecursionError) escapes and ends the serve task: the ZeroMQ endpoint never answers "
    "anyone again while HTTP stays healthy"
)


@pytest.mark.parametrize("killer", list(KILLERS))
def test_endpoint_survives_frames_that_fail_with_other_exceptions(killer):
    """In-process ClientEndpoint over a stub tokenizer manager: the minimal repro."""
    from radixlm.runtime.entrypoints.zmq_endpoint import ClientEndpoint

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    address = f"tcp://127.0.0.1:{_free_port()}"
    endpoint = ClientEndpoint(_StubTM(), address)
    asyncio.run_coroutine_threadsafe(endpoint.start(), loop).result(10)
    client = RuntimeClient(address, timeout_s=3)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    try:
        assert client.control("health") == {"op": "health"}  # the endpoint works
        replies = _send_then_health(sock, KILLERS[killer]())  # today: TimeoutError (the serve task died)
        assert len(replies) == 2
        assert isinstance(replies[0], P.ClientResult) and not replies[0].ok and replies[0].rid == ""
        assert replies[1] == P.ClientResult(rid="after", ok=True, data={"op": "health"})
        assert client.control("server_info") == {"op": "server_info"}
        assert not endpoint._main.done()
    finally:
        sock.close(0)
        client.close()
        asyncio.run_coroutine_threadsafe(endpoint.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_server_pool_is_empty_at_the_end(client):
    _assert_pool_empty_after_flush(client)


def test_real_server_survives_an_invalid_utf8_frame(server, client):
    """Last test of the module on purpose: today it leaves the shared server's endpoint dead."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.address)
    try:
        replies = _send_then_health(sock, _bad_utf8_frame())  # today: TimeoutError
        assert len(replies) == 2 and replies[0].rid == "" and not replies[0].ok
    finally:
        sock.close(0)
    assert client.generate(PROMPT, GREEDY)["finished"]
