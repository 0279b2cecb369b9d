"""The data-parallel router: one process between the tokenizer manager and N replicas.

Each replica (its own scheduler, or tensor-parallel group of them) keeps its own radix
tree, so a request is worth most where its prefix was computed before. The router keeps,
per replica, an approximate radix tree of the token ids it has sent there (no KV, its own
LRU bound of the replica's KV capacity) and sends each request to the replica with the
longest match, as long as that match is worth it (`MIN_USEFUL_PREFIX` tokens); otherwise
to the replica with the fewest unfinished requests (replicas report finishes). Aborts
follow their request; control requests go to every replica and their replies are merged
into one (server_info reports per-replica hit rates); shutdown is acknowledged once every
replica has.

The tree is approximate: a replica may have evicted what the router still credits it
with. A wrong guess costs a cache miss, never a wrong answer.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import zmq

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
    ToRouter,
    ToScheduler,
    decoder,
    encoder,
)
from radixlm.runtime.radix.radix_cache import RadixCache

logger = logging.getLogger("radixlm.router")

MIN_USEFUL_PREFIX = 32  # tokens: below this a cached prefix saves less than balancing load does
SUMMED = (
    "prompt_tokens",
    "cached_tokens",
    "generated_tokens",
    "decode_steps",
    "prefill_batches",
    "retractions",
    "finished_requests",
    "aborted_requests",
    "max_total_tokens",
    "total_tokens",
    "free_tokens",
    "evictable_tokens",
    "locked_tokens",
    "in_use_tokens",
    "running",
    "waiting",
    "device_hit_tokens",
    "host_hit_tokens",
    "recomputed_tokens",
    "host_total_tokens",
    "host_free_tokens",
    "host_evictable_tokens",
    "host_locked_tokens",
    "host_loads_in_flight",
    "bytes_to_host",
    "bytes_to_device",
    "host_loads",
    "host_loaded_tokens",
    "spec_proposed_tokens",
    "spec_accepted_tokens",
)


class Router:
    def __init__(self, num_replicas: int, capacity_tokens: int) -> None:
        self.trees = [RadixCache(lambda slots: None, device="cpu") for _ in range(num_replicas)]
        self.capacity = capacity_tokens
        self.owner: dict[str, int] = {}  # unfinished rid -> replica
        self.load = [0] * num_replicas
        self.routed = [0] * num_replicas
        self.prefix_routed = [0] * num_replicas

    def route(self, rid: str, input_ids: list[int]) -> int:
        matches = [len(tree.match_prefix(input_ids).kv_indices) for tree in self.trees]
        best = max(range(len(self.trees)), key=lambda i: (matches[i], -self.load[i]))
        if matches[best] >= min(MIN_USEFUL_PREFIX, len(input_ids)) and matches[best] > 0:
            self.prefix_routed[best] += 1
        else:
            best = min(range(len(self.trees)), key=lambda i: (self.load[i], self.routed[i]))
        tree = self.trees[best]
        if tree.evictable_size + len(input_ids) > self.capacity:
            tree.evict(tree.evictable_size + len(input_ids) - self.capacity)
        tree.insert(input_ids, torch.zeros(len(input_ids), dtype=torch.int64))
        self.owner[rid] = best
        self.load[best] += 1
        self.routed[best] += 1
        return best

    def done(self, rids: list[str]) -> None:
        for rid in rids:
            replica = self.owner.pop(rid, None)
            if replica is not None:
                self.load[replica] -= 1


def merge_replies(op: str, replies: list[ControlReply], router: Router) -> tuple[bool, dict, str]:
    """One reply for the tokenizer manager out of every replica's."""
    ok = all(r.ok for r in replies)
    error = "; ".join(f"replica {i}: {r.error}" for i, r in enumerate(replies) if r.error)
    if op == "server_info" and ok:
        infos = [r.data for r in replies]
        data = dict(infos[0])
        for key in SUMMED:
            if all(isinstance(info.get(key), (int, float)) for info in infos):
                data[key] = sum(info[key] for info in infos)
        data["cache_hit_rate"] = (
            data["cached_tokens"] / data["prompt_tokens"] if data.get("prompt_tokens") else 0.0
        )
        if data.get("spec_proposed_tokens"):
            data["spec_acceptance_rate"] = data["spec_accepted_tokens"] / data["spec_proposed_tokens"]
        data["dp_size"] = len(infos)
        broken = [
            f"replica {i}: {info.get('kv_accounting')}"
            for i, info in enumerate(infos)
            if info.get("kv_accounting") != "ok"
        ]
        data["kv_accounting"] = "; ".join(broken) or "ok"
        data["replicas"] = [
            {
                "cache_hit_rate": info.get("cache_hit_rate"),
                "prompt_tokens": info.get("prompt_tokens"),
                "cached_tokens": info.get("cached_tokens"),
                "routed_requests": router.routed[i],
                "routed_by_prefix": router.prefix_routed[i],
                "running": info.get("running"),
                "waiting": info.get("waiting"),
            }
            for i, info in enumerate(infos)
        ]
        return ok, data, error
    if op == "cache_snapshot" and ok:  # each replica has its own tree
        return ok, {"replicas": [r.data["replicas"][0] for r in replies]}, error
    if op == "check_accounting" and ok:
        data = {key: sum(r.data.get(key, 0) for r in replies) for key in replies[0].data}
        return ok, data, error
    return ok, {}, error


def run_router_process(
    addrs: IpcAddresses, num_replicas: int, capacity_tokens: int, ready_conn: Any, log_level: str = "warning"
) -> None:
    start_child_process("radixlm::router", log_level)
    ctx = zmq.Context()
    from_tm = make_socket(ctx, zmq.PULL, addrs.scheduler_input, bind=False)
    from_replicas = make_socket(ctx, zmq.PULL, addrs.router_input, bind=True)
    to_replicas = [
        make_socket(ctx, zmq.PUSH, addrs.for_replica(i).scheduler_input, bind=True)
        for i in range(num_replicas)
    ]
    to_tm = make_socket(ctx, zmq.PUSH, addrs.tokenizer_input, bind=False)
    enc, dec_in, dec_back = encoder(), decoder(ToScheduler), decoder(ToRouter)
    router = Router(num_replicas, capacity_tokens)
    pending: dict[str, tuple[ControlReq, list]] = {}  # control rid -> (request, replies so far)
    acks = 0
    poller = zmq.Poller()
    poller.register(from_tm, zmq.POLLIN)
    poller.register(from_replicas, zmq.POLLIN)
    ready_conn.send({"ok": True})
    watch = ParentWatch()
    while True:
        events = dict(poller.poll(200))
        if from_tm in events:
            frame = from_tm.recv()
            msg = decode_or_drop(dec_in, frame)
            if isinstance(msg, GenerateReq):
                to_replicas[router.route(msg.rid, msg.input_ids)].send(frame)
            elif isinstance(msg, AbortReq):
                replica = router.owner.get(msg.rid)
                for i, sock in enumerate(to_replicas):
                    if replica is None or i == replica:  # unknown: every replica ignores what it lacks
                        sock.send(frame)
            elif isinstance(msg, ControlReq):
                pending[msg.rid] = (msg, [None] * num_replicas)
                for i, sock in enumerate(to_replicas):
                    sock.send(enc.encode(ControlReq(rid=f"{msg.rid}#{i}", op=msg.op, args=msg.args)))
        if from_replicas in events:
            msg = decode_or_drop(dec_back, from_replicas.recv(), "reply")
            if isinstance(msg, RequestsDone):
                router.done(msg.rids)
            elif isinstance(msg, ShutdownAck):
                acks += 1
                if acks == num_replicas:
                    to_tm.send(enc.encode(ShutdownAck(process="scheduler")))
                    linger_after_shutdown()
                    return
            elif isinstance(msg, ControlReply):
                rid, _, index = msg.rid.rpartition("#")
                entry = pending.get(rid)
                if entry is not None and index.isdigit() and int(index) < num_replicas:
                    entry[1][int(index)] = msg
                    if all(r is not None for r in entry[1]):
                        del pending[rid]
                        ok, data, error = merge_replies(entry[0].op, entry[1], router)
                        to_tm.send(
                            enc.encode(ControlReply(rid=rid, op=entry[0].op, ok=ok, data=data, error=error))
                        )
        if watch.parent_gone():
            return
