"""Programmatic dependent launch (PDL, Hopper and later): a decode step's next kernel starts while
this one is finishing.

A batch-1 decode step of an 8B model is ~330 short kernels in one CUDA graph, and each one ramps up
(programs launched, first loads in flight) and drains (the last programs of the last wave) with
the memory system partly idle. With PDL a kernel launched with `launch_pdl=True` may start before
the kernel ahead of it on the stream has finished, once every program of that one has called
`gdc_launch_dependents()` (or exited); it must then call `gdc_wait()`, which returns when the
kernel ahead has completed and its writes are visible, before it touches anything that kernel
(or one before it) wrote, and before it writes anything (an earlier kernel may still be reading
a buffer the allocator has handed on). Only what no kernel of the step writes may be read before
the wait: the model's weights. So the kernels here read their first weight tile, or a norm its
gain, ahead of the wait, and that read overlaps the previous kernel's tail.

Ordering stays transitive: a kernel finishes only after its own wait, so when kernel N+1 has
passed its wait, N and everything before it have completed. A kernel launched without PDL
(cuBLAS, a torch op) waits for the one ahead as usual, and a PDL kernel after it simply starts
when it ends.

Off unless RADIXLM_PDL=1 (measured as an A/B, benchmarks/bench_offline.py --ablations pdl) and
the device is compute capability 9.0 or later; never under the Triton interpreter (CPU).
"""

from __future__ import annotations

import functools
import os

import torch

ENV = "RADIXLM_PDL"


@functools.cache
def _enabled(device_index: int) -> bool:
    if os.environ.get(ENV, "0") != "1" or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return torch.cuda.get_device_capability(device_index)[0] >= 9


def enabled(t: torch.Tensor) -> bool:
    """Whether kernels on `t`'s device launch with PDL (and so wait with `gdc_wait`)."""
    return t.is_cuda and _enabled(
        t.device.index if t.device.index is not None else torch.cuda.current_device()
    )


def launch_options(t: torch.Tensor) -> dict:
    """Keyword arguments for a kernel launch on `t`'s device: the kernel's USE_PDL constexpr, and
    Triton's `launch_pdl` when on (left out otherwise: the interpreter takes no such option)."""
    on = enabled(t)
    return {"USE_PDL": on, "launch_pdl": True} if on else {"USE_PDL": False}
