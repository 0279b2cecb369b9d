"""The host tier's KV pool: evicted prefixes' keys and values in (pinned) host memory.

Layout is token-major, `[num_slots, num_layers * 2 * row_bytes]` bytes: one host slot holds
one token's K and V for every layer, so a run of consecutive slots is one contiguous block
and moves to or from the device in one copy (kv_transfer.py). The bytes are those of the
device pool's buffers, whatever their dtype (fp8 KV included: its per-layer scales are
constant, so the stored values mean the same after a round trip).

Host slots are numbered from 0. The free list (memory_pool.SlotAllocator) stays sorted when
freed slots rejoin it, so allocations after churn are still mostly consecutive runs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from radixlm.runtime.radix.memory_pool import SlotAllocator

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostPoolSize:
    """How big the host tier is: in tokens, and the bytes that takes."""

    num_slots: int
    bytes_per_token: int

    @property
    def nbytes(self) -> int:
        return self.num_slots * self.bytes_per_token


def available_host_memory() -> int | None:
    """Bytes the kernel reports as available for new allocations (MemAvailable), or None
    where it cannot be read (not Linux)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def host_pool_size(*, size_gb: float, ratio: float, device_slots: int, bytes_per_token: int) -> HostPoolSize:
    """The host tier's size: `size_gb` when set (> 0), else `ratio` times the device pool.
    Refused, with the numbers, when it exceeds the memory the host has available."""
    nbytes = int(size_gb * 2**30) if size_gb > 0 else int(ratio * device_slots * bytes_per_token)
    slots = nbytes // bytes_per_token
    if slots < 1:
        raise ValueError(
            f"the host KV cache would hold no token: {nbytes} bytes at {bytes_per_token} bytes per token"
        )
    avail = available_host_memory()
    if avail is not None and slots * bytes_per_token > avail:
        raise ValueError(
            f"hicache_size asks for {slots * bytes_per_token / 2**30:.2f} GiB of host memory "
            f"({slots} tokens x {bytes_per_token} bytes) but only {avail / 2**30:.2f} GiB is available; "
            "lower hicache_size or hicache_ratio"
        )
    return HostPoolSize(slots, bytes_per_token)


class HostKVPool(SlotAllocator):
    """`num_slots` tokens of KV bytes in host memory and a free list of slots (kept sorted)."""

    def __init__(self, size: HostPoolSize, num_layers: int, pin: bool) -> None:
        self.bytes_per_token = size.bytes_per_token
        self.row_bytes = size.bytes_per_token // (2 * num_layers)  # one layer's K (or V) of a token
        self.pinned = False
        shape = (size.num_slots, size.bytes_per_token)
        if pin:
            try:
                self.buffer = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
                self.pinned = True
            except RuntimeError as exc:  # no CUDA driver, or the OS refused to lock the pages
                logger.warning(
                    "host KV cache: pinned memory unavailable (%s); using pageable memory, whose "
                    "copies to and from the GPU are slower and not asynchronous",
                    str(exc).splitlines()[0],
                )
        if not self.pinned:
            self.buffer = torch.empty(shape, dtype=torch.uint8)
        super().__init__(0, size.num_slots, "cpu", keep_sorted=True)
