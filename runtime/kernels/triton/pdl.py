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

Where it is on: at batch-1 decode, on compute capability 9.0 and later, never under the Triton
interpreter (CPU). Measured on an H100 (8B shape, benchmarks/results/decode-floor-gpu-h100-2026-12-07.md):
batch 1 went from 167.7 to 174.2 tok/s in bf16 and from 260 to 275 in fp8, while at batch 64 fp8
lost 17% (6.49 -> 7.57 ms a step): there the kernels run several waves of programs, and the next
kernel's programs, launched early, hold SM slots while they wait. So a launch takes PDL only up to
MAX_ROWS rows (tokens, or requests for attention). RADIXLM_PDL overrides it for a whole run: 0 is
off, N is on up to N rows.

A kernel releases the next one (`gdc_launch_dependents`) right after its wait, the GEMV after its
weight loop. Three ways of reading further ahead were measured on the H100 (8B shape, batch 1;
benchmarks/results/decode-floor-gpu-h100-2026-12-07-second.md) and dropped:
  * releasing at the very start, so that a chain of kernels sits resident and reads its weights
    early: fp8 256 tok/s against 281, bf16 172 against 175;
  * each GEMV bulk-prefetching its own weight slice into L2 before its wait: fp8 243 and 234
    tok/s with 30 and 60 MB budgets (reads issued while the kernel ahead streams its weights
    compete with it for the same bandwidth, and lines are evicted before use);
  * the decode attention prefetching o_proj's weight (and the start of gate_up's) into L2 while
    it runs: within run-to-run noise (bf16 +0.8% and +1.3%, fp8 -1.8% and 0% in two runs).
"""

from __future__ import annotations

import functools
import os

import torch

ENV = "RADIXLM_PDL"
MAX_ROWS = 1  # measured at batch 1 only; see above


@functools.cache
def _max_rows(device_index: int) -> int:
    if os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.get_device_capability(device_index)[0] < 9:
        return 0
    value = os.environ.get(ENV, "")
    return int(value) if value.strip() else MAX_ROWS


def enabled(t: torch.Tensor, rows: int = 1) -> bool:
    """Whether a kernel on `t`'s device over `rows` rows launches with PDL (and waits with `gdc_wait`)."""
    if not t.is_cuda:
        return False
    return rows <= _max_rows(t.device.index if t.device.index is not None else torch.cuda.current_device())


def launch_options(t: torch.Tensor, rows: int) -> dict:
    """Keyword arguments for a launch over `rows` rows on `t`'s device: the kernel's USE_PDL
    constexpr, and Triton's `launch_pdl` when on (left out otherwise: the interpreter takes no such
    option)."""
    on = enabled(t, rows)
    return {"USE_PDL": on, "launch_pdl": True} if on else {"USE_PDL": False}
