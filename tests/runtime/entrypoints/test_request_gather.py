"""`RequestGather` (client/request_gather.py) against a scripted ROUTER on a real ZeroMQ
socket: what leaves together, in what order, and which reply reaches which worker.

The release rule is "every worker still running has a request waiting, or the oldest waited
`max_wait_s`". The tests that check what leaves together set `max_wait_s` far above anything
the test does, so only the first half of the rule can fire and the grouping is deterministic."""

from __future__ import annotations

import threading
import uuid

import pytest
import zmq

from radixlm.client.runtime_client import RuntimeClient, prefill_message
from radixlm.runtime.managers import messages as P

LONG_WAIT_S = 30.0


class Router:
    """A ROUTER that records what arrives (frame by frame) and answers when told."""

    def __init__(self) -> None:
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.address = f"inproc://gather-test-{uuid.uuid4().hex}"
        self.sock.bind(self.address)
        self.dec = P.decoder(P.ClientRequest)
        self.enc = P.encoder()

    def recv(self, timeout_s: float = 10.0) -> tuple[bytes, object]:
        assert self.sock.poll(int(timeout_s * 1000)), "nothing arrived"
        identity, frame = self.sock.recv_multipart()
        return identity, self.dec.decode(frame)

    def nothing_arrives(self, within_s: float = 0.2) -> bool:
        return not self.sock.poll(int(within_s * 1000))

    def answer(
        self, identity: bytes, req: P.ClientGenerate, text: str | None = None, error: str = ""
    ) -> None:
        if error:
            reply = P.ClientResult(rid=req.rid, ok=False, error=error)
        else:
            reply = P.ClientChunk(
                rid=req.rid,
                text=text if text is not None else req.text.upper(),
                output_ids=[],
                meta_info={},
                finished=True,
            )
        self.sock.send_multipart([identity, self.enc.encode(reply)])

    def close(self) -> None:
        self.sock.close(0)


@pytest.fixture
def router():
    r = Router()
    yield r
    r.close()


def _workers(
    client: RuntimeClient, gather, prompts: list[str], results: dict, before=None
) -> list[threading.Thread]:
    def work(prompt: str) -> None:
        with client.gathering(gather):
            if before is not None:
                before(prompt)
            try:
                results[prompt] = client.generate(prompt, {"max_new_tokens": 1})["text"]
            except Exception as exc:  # what the worker saw is the assertion
                results[prompt] = exc

    threads = [threading.Thread(target=work, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    return threads


def _answer_all_and_join(router: Router, identity: bytes, requests, threads: list[threading.Thread]) -> None:
    for req in requests:
        router.answer(identity, req)
    for t in threads:
        t.join(10)


def test_requests_of_all_workers_leave_in_one_frame_and_replies_route_by_rid(router):
    client = RuntimeClient(router.address, timeout_s=20)
    gather = client.gather(3, max_wait_s=LONG_WAIT_S)
    results: dict = {}
    threads = _workers(client, gather, ["a", "b", "c"], results)
    identity, group = router.recv()
    assert isinstance(group, P.ClientGroup)
    assert sorted(r.text for r in group.requests) == ["a", "b", "c"]
    # answered out of order: each worker still gets its own
    _answer_all_and_join(router, identity, reversed(group.requests), threads)
    assert results == {"a": "A", "b": "B", "c": "C"}


def test_a_worker_that_leaves_releases_the_others(router):
    """Two workers send; the third returns without sending: its leave() releases the two."""
    client = RuntimeClient(router.address, timeout_s=20)
    gather = client.gather(3, max_wait_s=LONG_WAIT_S)
    results: dict = {}
    threads = _workers(client, gather, ["a", "b"], results)
    assert router.nothing_arrives()  # two of three workers waiting: nothing goes yet
    with client.gathering(gather):
        pass  # the third worker has nothing to send
    identity, group = router.recv()
    assert sorted(r.text for r in group.requests) == ["a", "b"]
    _answer_all_and_join(router, identity, group.requests, threads)
    assert results == {"a": "A", "b": "B"}


def test_a_busy_worker_delays_the_others_by_at_most_max_wait(router):
    """One worker is held up (as by a tool call); the other's request goes when its wait is
    up, alone, and the held-up worker's request goes later on its own."""
    client = RuntimeClient(router.address, timeout_s=20)
    gather = client.gather(2, max_wait_s=0.05)
    go = threading.Event()
    results: dict = {}
    threads = _workers(
        client, gather, ["fast", "slow"], results, before=lambda p: p == "slow" and go.wait(10)
    )
    identity, first = router.recv()
    assert isinstance(first, P.ClientGenerate) and first.text == "fast"
    router.answer(identity, first)
    go.set()
    identity, second = router.recv()
    assert isinstance(second, P.ClientGenerate) and second.text == "slow"
    router.answer(identity, second)
    for t in threads:
        t.join(10)
    assert results == {"fast": "FAST", "slow": "SLOW"}


def test_a_barrier_goes_first_and_holds_the_rest_until_its_reply(router):
    client = RuntimeClient(router.address, timeout_s=20)
    gather = client.gather(2, max_wait_s=0.01)  # short: the barrier, not the wait, must hold them
    gather.barrier(prefill_message("prefix"))
    identity, barrier = router.recv()
    assert isinstance(barrier, P.ClientGenerate) and barrier.text == "prefix"
    assert barrier.sampling_params == {"max_new_tokens": 0}
    results: dict = {}
    threads = _workers(client, gather, ["a", "b"], results)
    assert router.nothing_arrives(0.3)  # well past max_wait: still held by the barrier
    router.answer(identity, barrier, text="")
    identity, group = router.recv()
    assert sorted(r.text for r in group.requests) == ["a", "b"]
    _answer_all_and_join(router, identity, group.requests, threads)
    assert results == {"a": "A", "b": "B"}


def test_an_error_reply_reaches_only_its_worker(router):
    client = RuntimeClient(router.address, timeout_s=20)
    gather = client.gather(2, max_wait_s=LONG_WAIT_S)
    results: dict = {}
    threads = _workers(client, gather, ["ok", "bad"], results)
    identity, group = router.recv()
    for req in group.requests:
        router.answer(identity, req, error="refused: temperature" if req.text == "bad" else "")
    for t in threads:
        t.join(10)
    assert results["ok"] == "OK"
    assert isinstance(results["bad"], RuntimeError) and "refused: temperature" in str(results["bad"])


def test_other_threads_and_streams_do_not_go_through_the_gather(router):
    """A thread that did not join sends on its own socket at once, while workers wait."""
    client = RuntimeClient(router.address, timeout_s=20)
    gather = client.gather(2, max_wait_s=LONG_WAIT_S)
    results: dict = {}
    threads = _workers(client, gather, ["a"], results)  # one of two workers: held
    outside: dict = {}
    t = threading.Thread(target=lambda: outside.update(r=client.generate("direct", {"max_new_tokens": 1})))
    t.start()
    identity, req = router.recv()
    assert isinstance(req, P.ClientGenerate) and req.text == "direct"
    router.answer(identity, req)
    t.join(10)
    assert outside["r"]["text"] == "DIRECT"
    with client.gathering(gather):
        pass  # the second worker leaves: "a" goes
    identity, req = router.recv()
    assert isinstance(req, P.ClientGenerate) and req.text == "a"
    router.answer(identity, req)
    for th in threads:
        th.join(10)
    assert results == {"a": "A"}
