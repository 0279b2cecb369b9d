"""Tensor parallelism on torch.distributed (NCCL on GPU, gloo on CPU).

Each rank holds a slice of every weight (Megatron layout): q/k/v and gate/up split by
output rows (attention heads, MLP columns), o and down by input columns with an
all-reduce after them, the embedding and LM head by vocabulary rows (a masked lookup
plus an all-reduce; logits all-gathered). Every rank then holds identical activations
after each all-reduce and identical logits, so ranks that run the same scheduler on the
same requests sample the same tokens with no further communication.

`TPGroup` is passed explicitly (model, runner); a single-rank group does no
communication at all, so tp=1 runs exactly the code it always ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class TPGroup:
    rank: int = 0
    size: int = 1
    group: Any = None  # the torch.distributed process group of the TP ranks
    cpu_group: Any = None  # a gloo group over the same ranks, for control messages (host bytes)

    @property
    def is_leader(self) -> bool:
        """Rank 0 owns the client sockets and tells the other ranks what arrived."""
        return self.rank == 0

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place."""
        if self.size > 1:
            dist.all_reduce(x, group=self.group)
        return x

    def all_gather_last(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's x along the last dim, in rank order."""
        if self.size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)

    def broadcast_bytes(self, payload: bytes) -> bytes:
        """Rank 0's payload on every rank (others pass b""): a length, then the bytes, over the
        CPU group. Messages stay msgspec-encoded: nothing is pickled."""
        if self.size == 1:
            return payload
        n = torch.tensor([len(payload)], dtype=torch.int64)
        dist.broadcast(n, src=0, group=self.cpu_group)
        size = int(n.item())
        if size == 0:
            return b""
        buf = (
            torch.frombuffer(bytearray(payload), dtype=torch.uint8)
            if self.is_leader
            else torch.empty(size, dtype=torch.uint8)
        )
        dist.broadcast(buf, src=0, group=self.cpu_group)
        return payload if self.is_leader else buf.numpy().tobytes()

    def split(self, n: int, what: str) -> tuple[int, int]:
        """This rank's [start, end) of n items split evenly; n must divide."""
        if n % self.size:
            raise ValueError(f"{what} ({n}) must be divisible by the tensor-parallel size {self.size}")
        per = n // self.size
        return self.rank * per, (self.rank + 1) * per

    def kv_heads(self, num_kv_heads: int) -> tuple[int, int]:
        """This rank's [start, end) of KV heads. With fewer KV heads than ranks each head is
        replicated on size / num_kv_heads consecutive ranks (their query heads share it)."""
        if num_kv_heads >= self.size:
            return self.split(num_kv_heads, "number of KV heads")
        if self.size % num_kv_heads:
            raise ValueError(
                f"tensor-parallel size {self.size} must be a multiple of the number of KV heads "
                f"({num_kv_heads}) when it exceeds it"
            )
        head = self.rank // (self.size // num_kv_heads)
        return head, head + 1

    def close(self) -> None:
        """Leave the group together: a process that exits while gloo still has a connection
        open to a peer aborts in the C++ destructor ("terminate called without an active
        exception"), so every rank waits at a barrier, then tears the group down."""
        if self.size > 1 and dist.is_initialized():
            dist.barrier(group=self.cpu_group)
            dist.destroy_process_group()


def init_tensor_parallel(rank: int, size: int, init_method: str, backend: str) -> TPGroup:
    """Join the TP process group (one process per rank). backend: nccl on CUDA, gloo on CPU."""
    if size == 1:
        return TPGroup()
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=size)
    cpu_group = dist.group.WORLD if backend == "gloo" else dist.new_group(backend="gloo")
    return TPGroup(rank, size, dist.group.WORLD, cpu_group)
