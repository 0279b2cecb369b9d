"""A small synchronous client for the runtime's ZeroMQ endpoint (`radixlm serve --zmq-port`).

    client = RuntimeClient("tcp://127.0.0.1:30001")
    out = client.generate("Hello", {"max_new_tokens": 8, "temperature": 0})
    for chunk in client.generate_stream("Hello", {"max_new_tokens": 8}):
        print(chunk["text"], end="")

Thread-safe: each thread has its own DEALER socket, so programs may call it from many
threads (forks, run_batch) at once. A thread that joined a `RequestGather` (run_batch's
workers, through `gathering`) sends its non-streaming requests through the gather instead, so
that the requests of all the workers leave together.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import zmq

from radixlm.client.request_gather import GroupChannel, RequestGather
from radixlm.runtime.managers.messages import (
    ClientAbort,
    ClientBatch,
    ClientChunk,
    ClientControl,
    ClientGenerate,
    ClientReply,
    ClientResult,
    ClientTokenize,
    decoder,
    encoder,
)
from radixlm.runtime.scheduler.request import check_text


class RuntimeClient:
    def __init__(self, address: str, timeout_s: float = 600.0) -> None:
        self.address = address
        self.timeout_ms = int(timeout_s * 1000)
        self._ctx = zmq.Context.instance()
        self._local = threading.local()
        self._enc = encoder()
        self._dec = decoder(ClientReply)
        self._channel: GroupChannel | None = None  # gathered requests' socket, made on first use
        self._channel_lock = threading.Lock()

    def _socket(self) -> zmq.Socket:
        sock = getattr(self._local, "sock", None)
        if sock is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.address)
            self._local.sock = sock
        return sock

    def _recv(self, sock: zmq.Socket, rid: str) -> Any:
        while True:
            if not sock.poll(self.timeout_ms):
                raise TimeoutError(f"no reply from {self.address} within {self.timeout_ms / 1000:.0f}s")
            msg = self._dec.decode(sock.recv())
            if msg.rid in (rid, ""):
                return msg

    def _request(self, msg: Any) -> Any:
        sock = self._socket()
        sock.send(self._enc.encode(msg))
        return sock, msg.rid

    def _exchange(self, msg: Any) -> Any:
        """Send a non-streaming request and return its one reply: through this thread's gather
        if it joined one, else on its own socket."""
        gather = getattr(self._local, "gather", None)
        if gather is not None:
            return gather.exchange(msg)
        sock, rid = self._request(msg)
        return self._recv(sock, rid)

    # ------------------------------------------------------------------ gathering
    def gather(self, workers: int, max_wait_s: float) -> RequestGather:
        """A gather for `workers` threads, each of which joins it with `gathering`."""
        with self._channel_lock:
            if self._channel is None or self._channel.broken is not None:
                self._channel = GroupChannel(self._ctx, self.address)
            channel = self._channel
        timeout_s = self.timeout_ms / 1000
        return RequestGather(channel, workers=workers, max_wait_s=max_wait_s, timeout_s=timeout_s)

    @contextlib.contextmanager
    def gathering(self, gather: RequestGather) -> Iterator[None]:
        """This thread's requests go through `gather` until the block ends; then it leaves."""
        self._local.gather = gather
        try:
            yield
        finally:
            self._local.gather = None
            gather.leave()

    def generate(
        self,
        prompt: str | None = None,
        sampling_params: dict | None = None,
        input_ids: Sequence[int] | None = None,
        return_logprob: bool = False,
        logprob_start_len: int | None = None,
        top_logprobs_num: int = 0,
    ) -> dict | list[dict]:
        """One finished output; with n > 1 in sampling_params, a list of the n samples."""
        reply = self._exchange(
            _generate_message(
                prompt=prompt,
                input_ids=input_ids,
                sampling_params=sampling_params,
                return_logprob=return_logprob,
                logprob_start_len=logprob_start_len,
                top_logprobs_num=top_logprobs_num,
                stream=False,
            )
        )
        if isinstance(reply, ClientResult) and reply.ok:  # n > 1: every sample in one reply
            return [{**out, "finished": True} for out in reply.data["outputs"]]
        return _result(reply)

    def generate_batch(self, requests: Sequence[dict]) -> list[dict]:
        """Several requests at once (each a dict of `generate`'s keywords: prompt or input_ids,
        sampling_params, return_logprob, logprob_start_len, top_logprobs_num)."""
        msgs = [
            _generate_message(
                prompt=r.get("prompt"),
                input_ids=r.get("input_ids"),
                sampling_params=r.get("sampling_params"),
                return_logprob=r.get("return_logprob", False),
                logprob_start_len=r.get("logprob_start_len"),
                top_logprobs_num=r.get("top_logprobs_num", 0),
                stream=False,
            )
            for r in requests
        ]
        reply = self._exchange(ClientBatch(rid=uuid.uuid4().hex, requests=msgs))
        if not isinstance(reply, ClientResult) or not reply.ok:
            raise RuntimeError(getattr(reply, "error", "") or "batch request failed")
        return reply.data["outputs"]

    def generate_stream(
        self,
        prompt: str | None = None,
        sampling_params: dict | None = None,
        input_ids: Sequence[int] | None = None,
        return_logprob: bool = False,
        logprob_start_len: int | None = None,
        top_logprobs_num: int = 0,
    ) -> Iterator[dict]:
        """Chunks of new text and token ids; each chunk's meta_info is cumulative (its logprob
        lists cover every token so far)."""
        sock, rid = self._request(
            _generate_message(
                prompt=prompt,
                input_ids=input_ids,
                sampling_params=sampling_params,
                return_logprob=return_logprob,
                logprob_start_len=logprob_start_len,
                top_logprobs_num=top_logprobs_num,
                stream=True,
            )
        )
        finished = False
        try:
            while not finished:
                reply = self._recv(sock, rid)
                chunk = _result(reply)
                finished = chunk["finished"]
                yield chunk
        finally:
            if not finished:
                self.abort(rid)

    def abort(self, rid: str) -> None:
        sock = self._socket()
        sock.send(self._enc.encode(ClientAbort(rid=rid)))

    def control(self, op: str) -> dict:
        sock, rid = self._request(ClientControl(rid=uuid.uuid4().hex, op=op))
        reply = self._recv(sock, rid)
        if not reply.ok:
            raise RuntimeError(reply.error)
        return reply.data

    def tokenize(self, text: str) -> dict:
        """`text`'s token ids exactly as the runtime counts a text prompt's, and each token's
        (start, end) character span in `text` ((0, 0) for a token with none, e.g. a BOS):
        {"input_ids": [...], "offsets": [(start, end), ...]}. Answered by the endpoint's
        tokenizer, not the scheduler. On this thread's own socket even inside run_batch: a
        gather carries generate requests only."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        check_text(text, "text")
        sock, rid = self._request(ClientTokenize(rid=uuid.uuid4().hex, text=text))
        reply = self._recv(sock, rid)
        if not isinstance(reply, ClientResult) or not reply.ok:
            raise RuntimeError(getattr(reply, "error", "") or "tokenize failed")
        return {
            "input_ids": list(reply.data["input_ids"]),
            "offsets": [tuple(o) for o in reply.data["offsets"]],
        }

    def flush_cache(self) -> bool:
        try:
            self.control("flush_cache")
            return True
        except RuntimeError:
            return False

    def get_server_info(self) -> dict:
        return self.control("server_info")

    def close(self) -> None:
        with self._channel_lock:
            channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()
        sock = getattr(self._local, "sock", None)
        if sock is not None:
            sock.close(0)
            self._local.sock = None


def _generate_message(
    *,
    prompt: Any,
    input_ids: Sequence[int] | None,
    sampling_params: dict | None,
    return_logprob: bool,
    logprob_start_len: int | None,
    top_logprobs_num: int,
    stream: bool,
) -> ClientGenerate:
    """One generate request as it goes on the wire. A prompt with a lone surrogate cannot be
    encoded as msgpack's UTF-8: it is refused here, by name, before anything is sent."""
    if isinstance(prompt, str):
        check_text(prompt)
    return ClientGenerate(
        rid=uuid.uuid4().hex,
        text=prompt,
        input_ids=list(input_ids) if input_ids is not None else None,
        sampling_params=dict(sampling_params or {}),
        return_logprob=return_logprob,
        logprob_start_len=logprob_start_len,
        top_logprobs_num=top_logprobs_num,
        stream=stream,
    )


def prefill_message(prompt: str) -> ClientGenerate:
    """A request that only prefills `prompt` into the cache (no token generated)."""
    return _generate_message(
        prompt=prompt,
        input_ids=None,
        sampling_params={"max_new_tokens": 0},
        return_logprob=False,
        logprob_start_len=None,
        top_logprobs_num=0,
        stream=False,
    )


def _result(reply: Any) -> dict:
    if isinstance(reply, ClientResult):
        raise RuntimeError(reply.error or "request failed")
    assert isinstance(reply, ClientChunk)
    return {
        "text": reply.text,
        "output_ids": reply.output_ids,
        "meta_info": reply.meta_info,
        "finished": reply.finished,
    }


__all__ = ["RuntimeClient", "prefill_message"]
