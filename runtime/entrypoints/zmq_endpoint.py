"""The tokenizer manager's ZeroMQ endpoint for frontends (a ROUTER socket).

Each client (a DEALER, e.g. `radixlm.client.runtime_client.RuntimeClient`) sends `ClientRequest`
messages; replies go back to that client only. A frame that does not decode is answered
with an error naming the problem (rid ""), and the endpoint keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import zmq
import zmq.asyncio

from radixlm.runtime.managers.ipc import make_socket
from radixlm.runtime.managers.messages import (
    DECODE_ERRORS,
    ClientAbort,
    ClientBatch,
    ClientChunk,
    ClientControl,
    ClientGenerate,
    ClientGroup,
    ClientRequest,
    ClientResult,
    ClientTokenize,
    decoder,
    encoder,
)
from radixlm.runtime.managers.tokenizer_manager import TokenizerManager

logger = logging.getLogger("radixlm.client_endpoint")
CONTROL_OPS = ("flush_cache", "server_info", "health")
STREAM_N_ERROR = "a streamed request takes n == 1; send n requests to stream n samples"
DRAIN_MAX = 256  # frames read in one go before any of them is handled


class ClientEndpoint:
    def __init__(self, tm: TokenizerManager, address: str) -> None:
        self.tm = tm
        self.address = address
        self.enc = encoder()
        self.dec = decoder(ClientRequest)
        self._tasks: set[asyncio.Task] = set()
        self._by_rid: dict[tuple[bytes, str], asyncio.Task] = {}

    async def start(self) -> None:
        self.ctx = zmq.asyncio.Context()
        self.sock = make_socket(self.ctx, zmq.ROUTER, self.address, bind=True)
        self._main = asyncio.create_task(self._serve())

    async def close(self) -> None:
        self._main.cancel()
        for task in list(self._tasks):
            task.cancel()
        self.sock.close(0)
        self.ctx.term()

    async def _reply(self, identity: bytes, msg: Any) -> None:
        await self.sock.send_multipart([identity, self.enc.encode(msg)])

    async def _serve(self) -> None:
        while True:
            received = [await self.sock.recv_multipart()]
            # What arrived together is tokenised together and reaches the scheduler in one
            # burst, so it is prefilled as one batch (as Engine.generate's prompts are), not
            # split by the time tokenising the first ones took.
            while len(received) < DRAIN_MAX:
                try:
                    received.append(await self.sock.recv_multipart(flags=zmq.NOBLOCK))
                except zmq.Again:
                    break
            msgs = []
            for parts in received:
                decoded = await self._decode(parts)
                if decoded is None:
                    continue
                identity, msg = decoded
                if isinstance(msg, ClientGroup):  # each of its requests as if in a frame of its own
                    msgs.extend((identity, req) for req in msg.requests)
                else:
                    msgs.append(decoded)
            generates = [msg for _, msg in msgs if isinstance(msg, ClientGenerate)]
            try:
                prepared = dict(zip(map(id, generates), self._prepare_all(generates))) if generates else {}
            except Exception as exc:  # answered per request, as a failure inside _handle would be
                prepared = {id(msg): exc for msg in generates}
            for identity, msg in msgs:
                task = asyncio.create_task(self._handle(identity, msg, prepared.get(id(msg))))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _decode(self, parts: list[bytes]) -> tuple[bytes, Any] | None:
        """(identity, message), or None after answering a frame that is not one."""
        identity, frames = parts[0], parts[1:]
        if len(frames) != 1:
            await self._reply(identity, ClientResult(rid="", ok=False, error="expected exactly one frame"))
            return None
        try:
            return identity, self.dec.decode(frames[0])
        except DECODE_ERRORS as exc:
            await self._reply(identity, ClientResult(rid="", ok=False, error=f"undecodable message: {exc}"))
            return None

    async def _handle(self, identity: bytes, msg: Any, prepared: Any = None) -> None:
        try:
            if isinstance(msg, ClientGenerate):
                key = (identity, msg.rid)
                self._by_rid[key] = asyncio.current_task()
                try:
                    if isinstance(prepared, Exception):
                        raise prepared
                    await self._generate(identity, msg, prepared)
                finally:
                    self._by_rid.pop(key, None)
            elif isinstance(msg, ClientBatch):
                prepared = self._prepare_all(msg.requests)
                for entry in prepared:  # all valid, or none runs
                    if isinstance(entry, Exception):
                        raise entry
                if any(p.params.n != 1 for p in prepared):  # one output per entry, as before
                    raise ValueError("a batch entry takes n == 1; send n entries to sample n times")
                outs = await asyncio.gather(*(self._collect(p) for p in prepared))
                await self._reply(identity, ClientResult(rid=msg.rid, ok=True, data={"outputs": outs}))
            elif isinstance(msg, ClientAbort):
                task = self._by_rid.get((identity, msg.rid))
                if task is not None:
                    task.cancel()  # the tokenizer manager aborts the request as its stream closes
                await self._reply(identity, ClientResult(rid=msg.rid, ok=True))
            elif isinstance(msg, ClientControl):
                if msg.op not in CONTROL_OPS:
                    raise ValueError(f"unknown operation {msg.op!r}; expected one of {CONTROL_OPS}")
                reply = await self.tm.control(msg.op)
                await self._reply(
                    identity, ClientResult(rid=msg.rid, ok=reply.ok, data=reply.data, error=reply.error)
                )
            elif isinstance(msg, ClientTokenize):  # the tokenizer's work alone: no scheduler round trip
                data = self.tm.tokenize(msg.text)
                await self._reply(identity, ClientResult(rid=msg.rid, ok=True, data=data))
        except asyncio.CancelledError:
            await self._reply(identity, ClientResult(rid=getattr(msg, "rid", ""), ok=False, error="aborted"))
        except Exception as exc:
            await self._reply(
                identity,
                ClientResult(rid=getattr(msg, "rid", ""), ok=False, error=f"{type(exc).__name__}: {exc}"),
            )

    def _prepare_all(self, msgs: list[ClientGenerate]) -> list[Any]:
        """Each request prepared (text prompts tokenised in one call), or the error that refuses it."""
        prepared = self.tm.prepare_many(
            [
                {
                    "prompt": m.text,
                    "input_ids": m.input_ids,
                    "sampling_params": m.sampling_params,
                    "return_logprob": m.return_logprob,
                    "logprob_start_len": m.logprob_start_len,
                    "top_logprobs_num": m.top_logprobs_num,
                }
                for m in msgs
            ]
        )
        for i, (msg, entry) in enumerate(zip(msgs, prepared)):
            if not isinstance(entry, Exception) and entry.params.n != 1 and msg.stream:
                prepared[i] = ValueError(STREAM_N_ERROR)
        return prepared

    async def _collect(self, prepared) -> dict | list[dict]:
        """The finished output; with n > 1 the n samples, in index order."""
        outs = sorted([item async for item in self.tm.generate(prepared)], key=lambda o: o["index"])
        found = [
            {"text": o["text"], "output_ids": list(o["output_ids"]), "meta_info": o["meta_info"]}
            for o in outs
        ]
        return found if prepared.params.n > 1 else found[0]

    async def _generate(self, identity: bytes, msg: ClientGenerate, prepared: Any) -> None:
        if prepared.params.n > 1:  # the samples, together in one reply (the tokenizer manager fans out)
            outs = await self._collect(prepared)
            await self._reply(identity, ClientResult(rid=msg.rid, ok=True, data={"outputs": outs}))
            return
        async for item in self.tm.generate(prepared, stream=msg.stream):
            finished = item.get("finished", True)
            await self._reply(
                identity,
                ClientChunk(
                    rid=msg.rid,
                    text=item["text"],
                    output_ids=list(item["output_ids"]),
                    meta_info=item["meta_info"],
                    finished=finished,
                ),
            )
