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
    ClientRequest,
    ClientResult,
    decoder,
    encoder,
)
from radixlm.runtime.managers.tokenizer_manager import TokenizerManager

logger = logging.getLogger("radixlm.client_endpoint")
CONTROL_OPS = ("flush_cache", "server_info", "health")


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
            parts = await self.sock.recv_multipart()
            identity, frames = parts[0], parts[1:]
            if len(frames) != 1:
                await self._reply(
                    identity, ClientResult(rid="", ok=False, error="expected exactly one frame")
                )
                continue
            try:
                msg = self.dec.decode(frames[0])
            except DECODE_ERRORS as exc:
                await self._reply(
                    identity, ClientResult(rid="", ok=False, error=f"undecodable message: {exc}")
                )
                continue
            task = asyncio.create_task(self._handle(identity, msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, identity: bytes, msg: Any) -> None:
        try:
            if isinstance(msg, ClientGenerate):
                key = (identity, msg.rid)
                self._by_rid[key] = asyncio.current_task()
                try:
                    await self._generate(identity, msg)
                finally:
                    self._by_rid.pop(key, None)
            elif isinstance(msg, ClientBatch):
                prepared = [self._prepare(req) for req in msg.requests]  # all valid, or none runs
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
        except asyncio.CancelledError:
            await self._reply(identity, ClientResult(rid=getattr(msg, "rid", ""), ok=False, error="aborted"))
        except Exception as exc:
            await self._reply(
                identity,
                ClientResult(rid=getattr(msg, "rid", ""), ok=False, error=f"{type(exc).__name__}: {exc}"),
            )

    def _prepare(self, msg: ClientGenerate):
        prepared = self.tm.prepare(
            msg.text,
            msg.input_ids,
            msg.sampling_params,
            msg.return_logprob,
            msg.logprob_start_len,
            msg.top_logprobs_num,
        )
        if prepared.params.n != 1 and msg.stream:
            raise ValueError("a streamed request takes n == 1; send n requests to stream n samples")
        return prepared

    async def _collect(self, prepared) -> dict | list[dict]:
        """The finished output; with n > 1 the n samples, in index order."""
        outs = sorted([item async for item in self.tm.generate(prepared)], key=lambda o: o["index"])
        found = [
            {"text": o["text"], "output_ids": list(o["output_ids"]), "meta_info": o["meta_info"]}
            for o in outs
        ]
        return found if prepared.params.n > 1 else found[0]

    async def _generate(self, identity: bytes, msg: ClientGenerate) -> None:
        prepared = self._prepare(msg)
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
