"""Host <-> device copies that never block the host.

A plain `torch.tensor(values).to("cuda")` copies from pageable memory and then waits for
the stream to drain, so the host stalls until every kernel already queued has finished.
The overlap scheduler queues step N+1 while step N runs; one such copy would serialise
them again. Copies here go through pinned buffers with `non_blocking=True` (PyTorch's
pinned-memory allocator keeps a buffer alive until the copy that reads it has run), and
device-to-host copies come back with an event to wait on. On CPU they are plain copies.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def to_device(values: Sequence, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A host list (flat or nested) as a tensor on `device`, without a host stall."""
    if device.type != "cuda":
        return torch.tensor(values, dtype=dtype, device=device)
    return torch.tensor(values, dtype=dtype, pin_memory=True).to(device, non_blocking=True)


class HostCopy:
    """Device tensors copied to host memory in stream order; `get()` waits for them."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        self.event = None
        if tensors and tensors[0].device.type == "cuda":
            self.host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
            for h, t in zip(self.host, tensors):
                h.copy_(t, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = [t.clone() if t.device.type == "cpu" else t.cpu() for t in tensors]

    def get(self) -> list[torch.Tensor]:
        if self.event is not None:
            self.event.synchronize()
            self.event = None
        return self.host
