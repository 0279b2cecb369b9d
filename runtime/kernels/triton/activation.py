"""SiLU-gated activation: out = silu(gate) * up for gate_up = [gate | up] along the last dim.

Computed in fp32 and rounded once to the output dtype. Torch eager (`F.silu(gate) * up` in
runtime/layers/decoder_blocks.py) rounds silu(gate) to the dtype before the multiply, so in bf16/fp16
the two can differ in the last bit of some elements (fp32 inputs agree to fp32 rounding).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixlm.runtime.kernels.triton import pdl

BLOCK = 1024


@triton.jit
def _silu_and_mul_kernel(
    gu_ptr, out_ptr, stride_gu, stride_o, INTER, BLOCK: tl.constexpr, USE_PDL: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < INTER
    if USE_PDL:  # no weights to read ahead: wait, then let the next kernel start (pdl.py)
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    gate = tl.load(gu_ptr + row * stride_gu + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gu_ptr + row * stride_gu + INTER + offs, mask=mask, other=0.0).to(tl.float32)
    y = gate / (1.0 + tl.exp(-gate)) * up  # gemv_kernel._load_x computes the same: keep them equal
    tl.store(out_ptr + row * stride_o + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(gate_up: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """gate_up [T, 2*I] (last dim contiguous) -> out [T, I] = silu(gate_up[:, :I]) * gate_up[:, I:]."""
    assert gate_up.dim() == 2 and gate_up.shape[1] % 2 == 0 and gate_up.stride(1) == 1
    rows, inter = gate_up.shape[0], gate_up.shape[1] // 2
    if out is None:
        out = torch.empty((rows, inter), dtype=gate_up.dtype, device=gate_up.device)
    assert out.shape == (rows, inter) and out.stride(1) == 1
    if rows == 0:
        return out
    _silu_and_mul_kernel[(rows, triton.cdiv(inter, BLOCK))](
        gate_up,
        out,
        gate_up.stride(0),
        out.stride(0),
        inter,
        BLOCK=BLOCK,
        num_warps=4,
        **pdl.launch_options(gate_up, rows),
    )
    return out
