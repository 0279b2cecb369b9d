"""Requests of cooperating threads, sent together: what lets `run_batch` reach the scheduler
as one batch, as `Engine.generate` of the same prompts does.

run_batch runs its programs on several worker threads; each program's `gen` is a blocking
request. Sent as they come, the first requests of 32 programs reach the endpoint spread over
the time the workers take to start (tens of milliseconds on a busy CPU), and the scheduler
prefills them in several small batches. A `RequestGather` holds each worker's request until
every worker still running has one waiting (or no new request came for `max_wait_s`: a
worker busy elsewhere, in a tool or a fork, delays the others by about that, and never more
than `MAX_HOLD_WAITS` waits), then releases them all at once. Group commit, in database terms.

What is released goes out through the client's `GroupChannel`: one DEALER socket and one I/O
thread for the client's life (a fresh socket's first message waits for its connection, ~3 ms
here), which sends each release as one `ClientGroup` frame and routes every reply to its
waiting request by rid, so a short request's program goes on while longer ones of the same
release still run. A `barrier` request (run_batch's pre-cache when the scheduler would not
share an uncached prefix within a batch) is sent at once, and nothing held is released
before its reply.

Only non-streaming requests pass through here (generate, generate_batch); a streaming or
control call on a worker thread goes straight to the client's own socket.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from radixlm.runtime.managers.messages import ClientGroup, ClientReply, ClientResult, decoder, encoder

MAX_HOLD_WAITS = 8  # the longest hold, in max_wait_s


class _Slot:
    """One request on its way: held, released, sent, answered."""

    __slots__ = ("msg", "released", "reply", "done", "on_reply")

    def __init__(self, msg: Any, on_reply: Callable[[], None] | None = None) -> None:
        self.msg = msg
        self.released = False
        self.reply: Any = None
        self.done = threading.Event()
        self.on_reply = on_reply  # called on the I/O thread once the reply is in

    def answer(self, reply: Any) -> None:
        self.reply = reply
        self.done.set()
        if self.on_reply is not None:
            self.on_reply()


class GroupChannel:
    """A client's DEALER socket for gathered requests, and the I/O thread that owns it."""

    def __init__(self, ctx: zmq.Context, address: str) -> None:
        self._enc = encoder()
        self._dec = decoder(ClientReply)
        self._lock = threading.Lock()
        self._outbox: collections.deque[list[_Slot]] = collections.deque()  # releases to send
        self._in_flight: dict[str, _Slot] = {}  # sent, reply pending (I/O thread only)
        self._closing = False
        self.broken: str | None = None  # the I/O thread failed: every request fails with this
        self._exited = False  # the wake-up pipe is closed (its descriptors may be reused)
        self._sock = ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(address)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)  # a full pipe already holds a wake-up
        self._io = threading.Thread(target=self._io_loop, daemon=True, name="radixlm-gather")
        self._io.start()

    def send(self, slots: list[_Slot]) -> None:
        """Send these requests, as one frame, after everything sent before them."""
        with self._lock:
            if self.broken is not None:
                error = self.broken
            else:
                self._outbox.append(slots)
                error = None
        if error is not None:
            _fail(slots, error)
            return
        self.wake()

    def wake(self) -> None:
        with self._lock:
            if not self._exited:
                try:
                    os.write(self._wake_w, b"x")
                except BlockingIOError:
                    pass

    def close(self) -> None:
        """Stop the I/O thread; requests still waiting fail with "closed"."""
        with self._lock:
            self._closing = True
        self.wake()
        if threading.current_thread() is not self._io:
            self._io.join(5)

    def _io_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        error = "the client was closed"
        try:
            while True:
                events = dict(poller.poll())
                if self._wake_r in events:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                with self._lock:
                    if self._closing:
                        break
                self._send_released()
                if events.get(self._sock):
                    self._receive()
        except Exception as exc:  # a broken socket: every waiting request hears of it
            error = f"the request gather failed: {type(exc).__name__}: {exc}"
        with self._lock:
            self.broken = error
            self._exited = True
            pending = [s for group in self._outbox for s in group] + list(self._in_flight.values())
            self._outbox.clear()
            self._in_flight.clear()
            os.close(self._wake_r)
            os.close(self._wake_w)
        self._sock.close(0)
        _fail(pending, error)

    def _send_released(self) -> None:
        while True:
            with self._lock:
                if not self._outbox:
                    return
                slots = self._outbox.popleft()
            for slot in slots:
                self._in_flight[slot.msg.rid] = slot
            msg = slots[0].msg if len(slots) == 1 else ClientGroup(requests=[s.msg for s in slots])
            self._sock.send(self._enc.encode(msg))

    def _receive(self) -> None:
        while True:
            try:
                frame = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            reply = self._dec.decode(frame)
            if reply.rid == "":  # the endpoint could not read a frame of ours: no rid to route by
                error = getattr(reply, "error", "") or "the endpoint refused a request"
                pending = list(self._in_flight.values())
                self._in_flight.clear()
                _fail(pending, error)
                continue
            slot = self._in_flight.pop(reply.rid, None)
            if slot is not None:  # else a late reply to nothing we wait for
                slot.answer(reply)


def _fail(slots: list[_Slot], error: str) -> None:
    for slot in slots:
        slot.answer(ClientResult(rid=slot.msg.rid, ok=False, error=error))


class RequestGather:
    """The requests of `workers` threads (each joins with RuntimeClient.gathering and leaves
    once), released together onto `channel`."""

    def __init__(self, channel: GroupChannel, *, workers: int, max_wait_s: float, timeout_s: float) -> None:
        if workers < 1:
            raise ValueError(f"a gather needs at least one worker, got {workers}")
        self.channel = channel
        self.max_wait_s = max_wait_s
        self.timeout_s = timeout_s
        self._cond = threading.Condition()
        self._workers = workers  # threads that will still submit; each calls leave() once
        self._held: list[_Slot] = []  # submitted by workers, not yet released
        self._held_since = 0.0  # when the oldest held request came
        self._last_arrival = 0.0  # when the newest held request came
        self._barrier: _Slot | None = None  # nothing is released until this one's reply is in
        self._barrier_since = 0.0

    def barrier(self, msg: Any) -> None:
        """Send `msg` now; hold every request until its reply is in (its outcome is not kept)."""
        slot = _Slot(msg, on_reply=self._barrier_done)
        slot.released = True
        with self._cond:
            self._barrier = slot
            self._barrier_since = time.monotonic()
        self.channel.send([slot])

    def exchange(self, msg: Any) -> Any:
        """Send a worker's request with the others' and return its reply (any reply message;
        the caller reads it as it would from its own socket)."""
        slot = _Slot(msg)
        give_up = time.monotonic() + self.timeout_s
        with self._cond:
            now = time.monotonic()
            if not self._held:
                self._held_since = now
            self._last_arrival = now
            self._held.append(slot)
            self._release_if_due()
        # Wait on the slot alone: a release wakes nobody (a wake-up storm of the other workers
        # would compete with the I/O thread for the GIL while it sends); a held slot's owner
        # wakes when the wait is up, to release everything held itself.
        while not slot.done.is_set():
            now = time.monotonic()
            if now >= give_up:
                raise TimeoutError(f"no reply within {self.timeout_s:.0f}s")
            wait = give_up - now
            if not slot.released:
                with self._cond:
                    if self._barrier is not None and now - self._barrier_since > self.timeout_s:
                        self._barrier = None  # no reply to the pre-cache: go on without it
                    left = self._release_time() - now
                    if not slot.released and self._barrier is None and left <= 0:
                        self._release()
                        continue
                    wait = max(left, 0.0) if self._barrier is None else self.max_wait_s
            slot.done.wait(wait)
        return slot.reply

    def leave(self) -> None:
        """A worker has no more requests: the others no longer wait for it."""
        with self._cond:
            self._workers -= 1
            self._release_if_due()

    def _barrier_done(self) -> None:  # on the I/O thread
        with self._cond:
            self._barrier = None  # held requests go now, or once their wait is up
            self._release_if_due()

    def _release_time(self) -> float:  # holds self._cond
        """When what is held goes even though a worker has not sent: `max_wait_s` after the
        last request came (workers still arriving keep the group open, as when a hundred of
        them start on a busy CPU), and never later than `MAX_HOLD_WAITS` waits after the first."""
        return min(self._last_arrival + self.max_wait_s, self._held_since + MAX_HOLD_WAITS * self.max_wait_s)

    def _release_if_due(self) -> None:  # holds self._cond
        if self._held and self._barrier is None and len(self._held) >= self._workers:
            self._release()

    def _release(self) -> None:  # holds self._cond
        slots, self._held = self._held, []
        for slot in slots:
            slot.released = True
        self.channel.send(slots)
