"""Moving KV between the device pool and the host pool, without stalling the host.

On CUDA every copy runs on one transfer stream of its own, so copies keep their order among
themselves (a prefix written to host memory is there before any later load reads it) and
overlap the compute stream's forward passes:

* `backup` (device -> host, when the tree evicts a prefix from the device) first waits for
  the work already queued on the compute stream, so the K/V it reads is final; the compute
  stream then waits for the backup before anything queued later, since the evicted slots
  are free and the next forward may overwrite them.
* `load` (host -> device, a cache hit on host-resident prefixes) copies into a staging
  buffer at once, then waits for the compute stream's queued work before scattering into the
  pool (the freshly allocated slots may still be read or written by a step in flight, e.g.
  jump-forward drafts it will discard), and records an event. The scheduler polls the
  returned `LoadTicket` and admits the request only once it is ready, so the running batch
  never waits for a load.

Off CUDA both are plain synchronous copies and every ticket is ready at once.

Each token's bytes are laid out as in the host pool: for each layer, K then V
(`row_bytes` each). Device buffers are read and written as bytes, whatever their dtype.
"""

from __future__ import annotations

import time

import torch

from radixlm.runtime.radix.host_pool import HostKVPool
from radixlm.runtime.radix.memory_pool import KVPool

STAGING_BYTES = 128 << 20  # a transfer moves through device staging buffers of at most this


class LoadTicket:
    """A host -> device copy in flight: ready once its event has passed."""

    def __init__(self, event: torch.cuda.Event | None, num_tokens: int) -> None:
        self.event = event
        self.num_tokens = num_tokens
        self.started = time.perf_counter()

    def ready(self) -> bool:
        return self.event is None or self.event.query()

    def wait(self) -> None:
        if self.event is not None:
            self.event.synchronize()


def _runs(host_slots: torch.Tensor) -> list[tuple[int, int, int]]:
    """(first host slot, offset in host_slots, length) of each run of consecutive slots."""
    if not host_slots.numel():
        return []
    breaks = (torch.nonzero(host_slots[1:] - host_slots[:-1] != 1).flatten() + 1).tolist()
    starts, ends = [0, *breaks], [*breaks, host_slots.numel()]
    firsts = host_slots[starts].tolist()
    return [(first, s, e - s) for first, s, e in zip(firsts, starts, ends)]


class KVTransfer:
    """Copies between one device KV pool and its host pool (one tensor-parallel rank's shard)."""

    def __init__(self, device_pool: KVPool, host_pool: HostKVPool) -> None:
        self.device = device_pool.device
        self.host_pool = host_pool
        n = device_pool.k_buffers[0].shape[0]
        # (K, V) of every layer as [slots, row_bytes] byte views, in the host layout's order
        self.rows = [
            buf.view(torch.uint8).reshape(n, -1)
            for pair in zip(device_pool.k_buffers, device_pool.v_buffers)
            for buf in pair
        ]
        assert all(r.shape[1] == host_pool.row_bytes for r in self.rows), "host pool row size mismatch"
        self.chunk = max(1, STAGING_BYTES // host_pool.bytes_per_token)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.bytes_to_host = 0
        self.bytes_to_device = 0

    # ------------------------------------------------------------------ device -> host
    def backup(self, device_slots: torch.Tensor, host_slots: torch.Tensor) -> None:
        """Copy the K/V of `device_slots` into `host_slots` (same length, same order)."""
        n = device_slots.numel()
        if not n:
            return
        self.bytes_to_host += n * self.host_pool.bytes_per_token
        if self.stream is None:
            self.host_pool.buffer.index_copy_(0, host_slots, self._gather(device_slots))
            return
        compute = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(compute)
        with torch.cuda.stream(self.stream):
            for start in range(0, n, self.chunk):
                staging = self._gather(device_slots[start : start + self.chunk])
                for first, offset, length in _runs(host_slots[start : start + self.chunk]):
                    self.host_pool.buffer[first : first + length].copy_(
                        staging[offset : offset + length], non_blocking=True
                    )
        device_slots.record_stream(self.stream)
        compute.wait_stream(self.stream)

    def _gather(self, device_slots: torch.Tensor) -> torch.Tensor:
        shape = (device_slots.numel(), len(self.rows), self.host_pool.row_bytes)
        staging = torch.empty(shape, dtype=torch.uint8, device=self.device)
        for i, rows in enumerate(self.rows):
            staging[:, i] = rows[device_slots]
        return staging.view(device_slots.numel(), -1)

    # ------------------------------------------------------------------ host -> device
    def load(self, host_slots: torch.Tensor, device_slots: torch.Tensor) -> LoadTicket:
        """Copy `host_slots` into `device_slots`; the returned ticket says when they have landed."""
        n = device_slots.numel()
        self.bytes_to_device += n * self.host_pool.bytes_per_token
        if self.stream is None:
            if n:
                self._scatter(self.host_pool.buffer[host_slots], device_slots)
            return LoadTicket(None, n)
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.stream):
            waited = False
            for start in range(0, n, self.chunk):
                part = host_slots[start : start + self.chunk]
                staging = torch.empty(
                    (part.numel(), self.host_pool.bytes_per_token), dtype=torch.uint8, device=self.device
                )
                for first, offset, length in _runs(part):
                    staging[offset : offset + length].copy_(
                        self.host_pool.buffer[first : first + length], non_blocking=True
                    )
                if not waited:  # the slots are written only after the compute stream's queued work
                    self.stream.wait_stream(compute)
                    waited = True
                self._scatter(staging, device_slots[start : start + self.chunk])
            event = torch.cuda.Event()
            event.record(self.stream)
        device_slots.record_stream(self.stream)
        return LoadTicket(event, n)

    def _scatter(self, staging: torch.Tensor, device_slots: torch.Tensor) -> None:
        per_row = staging.view(device_slots.numel(), len(self.rows), self.host_pool.row_bytes)
        for i, rows in enumerate(self.rows):
            rows[device_slots] = per_row[:, i]
