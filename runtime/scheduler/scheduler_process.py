"""The scheduler process: owns the model, the KV pools and the radix tree.

Its loop never waits on a socket while there is work: it drains every pending message
without blocking, runs one scheduler step, and pushes the token ids that the step
produced to the detokenizer. Only when idle does it block, briefly, in `poll`.
A message that fails to decode is logged and dropped (it has no trustworthy request id
to answer); a request that decodes but is invalid is answered with an abort that names
the problem. Neither ever stops the loop.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import msgspec
import torch
import zmq

from radixlm.runtime.config import EngineConfig, ModelConfig
from radixlm.runtime.constrained.grammar_cache import GrammarCache
from radixlm.runtime.constrained.vocabulary import TokenizerVocab
from radixlm.runtime.managers.child_process import (
    ParentWatch,
    decode_or_drop,
    linger_after_shutdown,
    start_child_process,
)
from radixlm.runtime.managers.ipc import IpcAddresses, make_socket
from radixlm.runtime.managers.messages import (
    AbortReq,
    ControlReply,
    ControlReq,
    GenerateReq,
    RequestsDone,
    ShutdownAck,
    TokenOutput,
    TokenOutputBatch,
    ToScheduler,
    decoder,
    encoder,
)
from radixlm.runtime.model_executor.distributed import TPGroup, init_tensor_parallel
from radixlm.runtime.model_executor.model_runner import ModelRunner, resolve_device
from radixlm.runtime.radix.cache_snapshot import SnapshotLimits, snapshot_tree
from radixlm.runtime.scheduler.request import Req, check_request
from radixlm.runtime.scheduler.scheduler import Scheduler
from radixlm.runtime.scheduler.server_info import server_info
from radixlm.runtime.tokenizer import load_tokenizer

logger = logging.getLogger("radixlm.scheduler")

LOG_INTERVAL_STEPS = 40


def run_scheduler_process(
    cfg: EngineConfig, addrs: IpcAddresses, ready_conn: Any, tp_rank: int = 0, dp_rank: int = 0
) -> None:
    """One scheduler per tensor-parallel rank. Rank 0 owns the sockets; every rank runs the
    same scheduler on the same messages (rank 0 broadcasts what it received each iteration),
    so all ranks make the same decisions and meet at the same collectives."""
    title = (
        "radixlm::sched"
        + (f"-dp{dp_rank}" if cfg.dp_size > 1 else "")
        + (f"-tp{tp_rank}" if cfg.tp_size > 1 else "")
    )
    start_child_process(title, cfg.log_level)
    try:
        model_cfg = ModelConfig.from_path(cfg.model_path)
        tokenizer = load_tokenizer(cfg.tokenizer_path or cfg.model_path)
        tp = TPGroup()
        on_cuda = resolve_device(cfg.device).type == "cuda"
        if on_cuda and cfg.device in ("auto", "cuda") and cfg.tp_size * cfg.dp_size > 1:
            local_rank = tp_rank - cfg.node_rank * (cfg.tp_size // cfg.nnodes)
            torch.cuda.set_device(dp_rank * cfg.tp_size + local_rank)  # one GPU per rank of this node
        if cfg.tp_size > 1:
            init = (
                f"tcp://{cfg.dist_init_addr}"
                if cfg.dist_init_addr
                else f"file://{os.path.join(addrs.directory, f'tp-init-{dp_rank}')}"
            )
            tp = init_tensor_parallel(tp_rank, cfg.tp_size, init, "nccl" if on_cuda else "gloo")
        runner = ModelRunner(cfg, model_cfg, tp)
        eos = set(model_cfg.eos_token_ids)
        if tokenizer.eos_token_id is not None:
            eos.add(tokenizer.eos_token_id)
        grammars = GrammarCache(
            TokenizerVocab(tokenizer, runner.vocab_size, sorted(eos)),
            whitespace_pattern=cfg.constrained_json_whitespace_pattern,
            backend=cfg.grammar_backend,
        )
        scheduler = Scheduler(
            cfg, runner, lambda ids: tokenizer.decode(ids, skip_special_tokens=False), grammars
        )
    except Exception as exc:  # report any start-up failure to the launcher, then exit
        ready_conn.send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        return
    loop = SchedulerLoop(cfg, addrs, scheduler, frozenset(eos))
    ready_conn.send(
        {
            "ok": True,
            "pid": os.getpid(),
            "context_len": runner.context_len,
            "max_total_tokens": runner.max_total_tokens,
            "vocab_size": runner.vocab_size,
            "eos_ids": sorted(eos),
            "device": str(runner.device),
            "dtype": str(runner.dtype).removeprefix("torch."),
            "architecture": model_cfg.architecture,
            "tp_rank": tp.rank,
        }
    )
    loop.run()


class SchedulerLoop:
    def __init__(self, cfg: EngineConfig, addrs: IpcAddresses, scheduler: Scheduler, eos_ids: frozenset[int]):
        self.cfg = cfg
        self.scheduler = scheduler
        self.eos_ids = eos_ids
        self.tp = scheduler.runner.tp
        self.ctx = zmq.Context()
        self.recv_sock = self.to_detok = self.to_tm = None  # the leader's alone
        if self.tp.is_leader:
            self.recv_sock = make_socket(self.ctx, zmq.PULL, addrs.scheduler_input, bind=False)
            self.to_detok = make_socket(self.ctx, zmq.PUSH, addrs.detokenizer_input, bind=False)
            self.to_tm = make_socket(self.ctx, zmq.PUSH, addrs.tokenizer_input, bind=False)
        self.sync_dec = msgspec.msgpack.Decoder(tuple[list[bytes], list[str], list[int]])
        self.enc = encoder()
        self.dec = decoder(ToScheduler)
        self.reqs: dict[str, Req] = {}
        self.stopping = False
        self._last_log = (time.perf_counter(), 0)

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        watch = ParentWatch()
        stats = self.scheduler.stats
        while not self.stopping:
            start, decode_steps = time.perf_counter(), stats.decode_steps
            grammar_ready, loads_ready = self._drain()
            if self.stopping:
                break
            if self.scheduler.has_work:
                touched = self.scheduler.step(grammar_ready, loads_ready)
                self._emit(touched)
                if stats.decode_steps != decode_steps:
                    stats.decode_iter_s += time.perf_counter() - start
                self._maybe_log()
            elif self.recv_sock is not None:
                self.recv_sock.poll(50)  # followers wait in the next broadcast instead
            if watch.parent_gone():
                return
        linger_after_shutdown()

    def _drain(self) -> tuple[set[str] | None, set[int] | None]:
        """Handle every message that arrived. With tensor parallelism the leader broadcasts the
        frames it received, the grammars it found ready and the host-cache loads it saw land,
        so every rank handles the same messages and admits the same requests this iteration;
        returns those grammar rids and load ids (None with one rank)."""
        frames: list[bytes] = []
        while self.recv_sock is not None:
            try:
                frames.append(self.recv_sock.recv(zmq.NOBLOCK))
            except zmq.Again:
                break
        grammar_ready = loads_ready = None
        if self.tp.size > 1:
            sched = self.scheduler
            ready = sched.ready_grammar_rids() if self.tp.is_leader else []
            landed = sched.cache.ready_load_ids() if self.tp.is_leader else []
            payload = msgspec.msgpack.encode((frames, ready, landed)) if self.tp.is_leader else b""
            frames, ready, landed = self.sync_dec.decode(self.tp.broadcast_bytes(payload))
            grammar_ready, loads_ready = set(ready), set(landed)
        for frame in frames:
            msg = decode_or_drop(self.dec, frame)
            if msg is None:
                continue
            try:
                self._handle(msg)
            except Exception as exc:  # a handler bug must not kill the loop
                logger.exception("error handling %s", type(msg).__name__)
                if isinstance(msg, GenerateReq):
                    self._reject(msg, f"internal error: {exc}")
                elif isinstance(msg, ControlReq):
                    self._reply(msg, False, error=str(exc))
        return grammar_ready, loads_ready

    def _send(self, sock: Any, msg: Any) -> None:
        if sock is not None:  # a follower rank: the leader answers the same message
            sock.send(self.enc.encode(msg))

    def _handle(self, msg: Any) -> None:
        if isinstance(msg, GenerateReq):
            self._add(msg)
        elif isinstance(msg, AbortReq):
            req = self.reqs.get(msg.rid)
            if req is not None:
                self.scheduler.abort_request(msg.rid, msg.message)
        elif isinstance(msg, ControlReq):
            self._control(msg)

    def _add(self, msg: GenerateReq) -> None:
        runner = self.scheduler.runner
        params = msg.sampling_params
        try:
            if msg.rid in self.reqs:
                raise ValueError(f"duplicate request id {msg.rid!r}")
            check_request(
                msg.input_ids,
                params,
                runner.vocab_size,
                runner.context_len,
                msg.logprob_start_len,
                msg.top_logprobs_num,
                grammar_backend=self.scheduler.cfg.grammar_backend,
                whitespace_pattern=self.scheduler.cfg.constrained_json_whitespace_pattern,
            )
        except ValueError as exc:
            self._reject(msg, str(exc))
            return
        ids = msg.input_ids
        req = Req(
            rid=msg.rid,
            origin_input_ids=list(ids),
            sampling_params=params,
            seed=msg.seed,
            eos_ids=self.eos_ids,
            return_logprob=msg.return_logprob,
            logprob_start_len=msg.logprob_start_len if msg.return_logprob else -1,
            top_logprobs_num=msg.top_logprobs_num if msg.return_logprob else 0,
            stream=msg.stream,
        )
        self.reqs[req.rid] = req
        self.scheduler.add_request(req)

    def _reject(self, msg: GenerateReq, message: str) -> None:
        out = TokenOutput(
            rid=msg.rid,
            new_ids=[],
            finished_reason={"type": "abort", "message": message, "status_code": 400},
            prompt_tokens=len(msg.input_ids),
            completion_tokens=0,
            cached_tokens=0,
        )
        self._send(self.to_detok, TokenOutputBatch([out]))
        self._report_done([msg.rid])

    def _control(self, msg: ControlReq) -> None:
        sched = self.scheduler
        if msg.op == "flush_cache":
            ok = sched.flush_cache()
            self._reply(msg, ok, error="" if ok else "requests are still queued or running")
        elif msg.op == "server_info":
            self._reply(msg, True, data=server_info(self.cfg, sched))
        elif msg.op == "health":
            self._reply(msg, True)
        elif msg.op == "cache_snapshot":
            if self.to_tm is None:  # a follower rank: the leader answers, so skip the walk
                return
            try:
                limits = SnapshotLimits.from_args(msg.args)
            except (TypeError, ValueError) as exc:
                self._reply(msg, False, error=str(exc))
                return
            self._reply(msg, True, data={"replicas": [snapshot_tree(sched.cache.tree, limits)]})
        elif msg.op == "check_accounting":
            try:
                sched.check_accounting()
                self._reply(msg, True, data=sched.usage())
            except AssertionError as exc:
                self._reply(msg, False, error=str(exc))
        elif msg.op == "shutdown":
            # the detokenizer acknowledges to the tokenizer manager itself
            self._send(self.to_detok, ControlReq(rid=msg.rid, op="shutdown"))
            self._send(self.to_tm, ShutdownAck(process="scheduler"))
            self.stopping = True
        else:
            self._reply(msg, False, error=f"unknown control operation {msg.op!r}")

    def _reply(self, msg: ControlReq, ok: bool, data: dict | None = None, error: str = "") -> None:
        self._send(self.to_tm, ControlReply(rid=msg.rid, op=msg.op, ok=ok, data=data or {}, error=error))

    # ------------------------------------------------------------------ outputs
    def _emit(self, touched: list[Req]) -> None:
        outputs = []
        for req in touched:
            if not (req.finished or req.stream):
                continue
            outputs.append(self._token_output(req))
            if req.finished:
                self.reqs.pop(req.rid, None)
        if outputs:
            self._send(self.to_detok, TokenOutputBatch(outputs))
            self._report_done([o.rid for o in outputs if o.finished_reason is not None])

    def _report_done(self, rids: list[str]) -> None:
        """Data parallel: the router balances load on the requests each replica still has."""
        if rids and self.cfg.dp_size > 1:
            self._send(self.to_tm, RequestsDone(rids))

    def _token_output(self, req: Req) -> TokenOutput:
        params = req.sampling_params
        out = TokenOutput(
            rid=req.rid,
            new_ids=req.output_ids[req.sent_output_len :],
            finished_reason=req.finished_reason,
            prompt_tokens=req.prompt_len,
            completion_tokens=len(req.output_ids),
            cached_tokens=max(req.cached_tokens, 0),
            retractions=req.retraction_count,
            jump_forward_tokens=req.jump_forward_tokens if req.grammar is not None else None,
            spec_proposed_tokens=req.spec_proposed if self.scheduler.proposer else None,
            spec_accepted_tokens=req.spec_accepted if self.scheduler.proposer else None,
            skip_special_tokens=params.skip_special_tokens,
            no_stop_trim=params.no_stop_trim,
            stop_strs=params.stop_strs,
            min_new_tokens=params.min_new_tokens,
            stream=req.stream,
        )
        req.sent_output_len = len(req.output_ids)
        if req.return_logprob:
            out.input_token_logprobs = req.input_token_logprobs[req.sent_input_logprobs :]
            out.output_token_logprobs = req.output_token_logprobs[req.sent_output_logprobs :]
            if req.top_logprobs_num:
                out.input_top_logprobs = req.input_top_logprobs[req.sent_input_logprobs :]
                out.output_top_logprobs = req.output_top_logprobs[req.sent_output_logprobs :]
            req.sent_input_logprobs = len(req.input_token_logprobs)
            req.sent_output_logprobs = len(req.output_token_logprobs)
        return out

    def _maybe_log(self) -> None:
        stats = self.scheduler.stats
        if (
            stats.decode_steps == 0
            or stats.decode_steps % LOG_INTERVAL_STEPS
            or not logger.isEnabledFor(logging.INFO)
        ):
            return
        now = time.perf_counter()
        last_t, last_tokens = self._last_log
        throughput = (stats.generated_tokens - last_tokens) / max(now - last_t, 1e-9)
        self._last_log = (now, stats.generated_tokens)
        u = self.scheduler.usage()
        used = u["total_tokens"] - u["free_tokens"] - u["evictable_tokens"]
        logger.info(
            "decode step %d: #running-req %d, #queue-req %d, #token %d, token usage %.2f, "
            "cache hit rate %.1f%%, gen throughput %.1f tok/s",
            stats.decode_steps,
            u["running"],
            u["waiting"],
            used,
            used / u["total_tokens"],
            100 * stats.cache_hit_rate,
            throughput,
        )
