"""Memory pools: the request-to-token table, the KV pool and its slot allocator (page size 1).

`req_to_token[req_slot, pos]` is the KV slot of token `pos` of the request in `req_slot`.
KV slot 0 is a dummy that is never handed out, so padded positions can point at it.
"""

from __future__ import annotations

import torch


class ReqToTokenPool:
    """Rows of KV slot indices, one row per running request."""

    def __init__(self, num_rows: int, max_context_len: int, device: torch.device) -> None:
        self.num_rows = num_rows
        self.max_context_len = max_context_len
        self.req_to_token = torch.zeros((num_rows, max_context_len), dtype=torch.int32, device=device)
        self._free_rows = list(range(num_rows))

    @property
    def available(self) -> int:
        return len(self._free_rows)

    def alloc(self) -> int | None:
        return self._free_rows.pop() if self._free_rows else None

    def free(self, row: int) -> None:
        assert row not in self._free_rows, f"double free of request row {row}"
        self._free_rows.append(row)

    def reset(self) -> None:
        self._free_rows = list(range(self.num_rows))


class SlotAllocator:
    """A free list of slot indices `[first, first + num_slots)` on `device`.

    Returned slots wait in a list and join the free tensor only when an allocation needs them:
    concatenating onto a free list of millions of slots on every free (a finished request, a
    rejected draft) would copy the whole list each time. `keep_sorted` sorts the free list
    when they join, so allocations after churn still come out as runs of consecutive slots.
    """

    def __init__(
        self, first: int, num_slots: int, device: torch.device | str, keep_sorted: bool = False
    ) -> None:
        self.num_slots = num_slots
        self._first = first
        self._slot_device = torch.device(device)
        self._keep_sorted = keep_sorted
        self.reset()

    @property
    def available(self) -> int:
        return int(self._free.numel()) + self._returned_count

    def alloc(self, n: int) -> torch.Tensor | None:
        """n free slot indices (int64, on the allocator's device), or None if fewer than n are free."""
        if n > self._free.numel() and self._returned:
            merged = torch.cat([self._free, *self._returned])
            self._free = torch.sort(merged).values if self._keep_sorted else merged
            self._returned, self._returned_count = [], 0
        if n > self._free.numel():
            return None
        out, self._free = self._free[:n], self._free[n:]
        return out

    def free(self, slots: torch.Tensor) -> None:
        if slots.numel():
            self._returned.append(slots.to(self._slot_device, torch.int64))
            self._returned_count += int(slots.numel())

    def reset(self) -> None:
        first = self._first
        self._free = torch.arange(first, first + self.num_slots, dtype=torch.int64, device=self._slot_device)
        self._returned: list[torch.Tensor] = []
        self._returned_count = 0


class KVPool(SlotAllocator):
    """Per-layer K and V buffers `[num_slots + 1, kv_heads, head_dim]` and a free list of
    slots 1..num_slots (slot 0 is the dummy)."""

    def __init__(
        self,
        num_slots: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.dtype = dtype
        self.device = device
        shape = (num_slots + 1, num_kv_heads, head_dim)
        self.k_buffers = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v_buffers = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        # per layer (k_scale, v_scale): the buffers hold K / k_scale and V / v_scale. 1 unless
        # an fp8 cache got calibrated scales from its checkpoint.
        self.scales = [(1.0, 1.0)] * num_layers
        super().__init__(1, num_slots, device)

    @staticmethod
    def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()
