"""Kernel selection for the model's small ops: Triton on CUDA tensors, PyTorch elsewhere.

Each op is chosen per call from its input's device, so the same model code runs on CPU
(the reference path, also the oracle in tests) and on GPU (one fused Triton launch per op
instead of the 5-10 elementwise kernels eager PyTorch issues; at batch-1 decode those
launches, not the bytes, are what the small ops cost). `set_backend("torch")` forces the
reference path on GPU too: for A/B benchmarks and for bisecting a numerical difference.

Every function returns its results; the Triton versions work in place on their inputs
where the docstring says so, and callers must not rely on either behaviour beyond that.
"""

from __future__ import annotations

import torch

from radixlm.runtime.kernels import reference

_BACKENDS = ("triton", "torch")
_backend = "triton"
_triton_modules = None


def _kernels():
    """The Triton kernel modules, imported on first GPU use (not at start-up on CPU, and not
    once per call in the per-layer hot path)."""
    global _triton_modules
    if _triton_modules is None:
        from radixlm.runtime.kernels.triton import activation, kv_store, norm, rotary
        _triton_modules = (norm, activation, rotary, kv_store)
    return _triton_modules


def set_backend(name: str) -> None:
    """'triton' (default: Triton for CUDA tensors) or 'torch' (the reference everywhere).
    Process-wide: one scheduler process owns one model."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"kernel backend must be one of {_BACKENDS}, got {name!r}")
    _backend = name


def uses_triton(x: torch.Tensor) -> bool:
    return _backend == "triton" and x.is_cuda


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if uses_triton(x) and x.dim() == 2 and x.is_contiguous():
        return _kernels()[0].rmsnorm(x, weight, eps)
    return reference.rmsnorm(x, weight, eps)


def fused_add_rmsnorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                      eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(norm(x + residual), x + residual). The Triton version overwrites x and residual."""
    if uses_triton(x) and x.dim() == 2 and x.is_contiguous() and residual.is_contiguous():
        return _kernels()[0].fused_add_rmsnorm(x, residual, weight, eps)
    return reference.fused_add_rmsnorm(x, residual, weight, eps)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    if uses_triton(gate_up) and gate_up.is_contiguous():
        return _kernels()[1].silu_and_mul(gate_up)
    return reference.silu_and_mul(gate_up)


def apply_rotary(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                 sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half RoPE of q [T, H, D] and k [T, Hkv, D] (the Triton version in place)."""
    if uses_triton(q):
        _kernels()[2].apply_rotary(positions, q, k, cos, sin)
        return q, k
    return reference.apply_rotary(positions, q, k, cos, sin)


def store_kv(k: torch.Tensor, v: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor,
             slots: torch.Tensor, k_scale: float = 1.0, v_scale: float = 1.0) -> None:
    """Write the new tokens' K/V into the pool rows `slots` (cast to the pool's dtype; an fp8
    pool stores value / scale)."""
    if uses_triton(k):
        _kernels()[3].store_kv(k, v, k_buffer, v_buffer, slots, k_scale, v_scale)
        return
    reference.store_kv(k, v, k_buffer, v_buffer, slots, k_scale, v_scale)


# The M (rows of x: tokens) up to which fp8_linear takes the W8A16 path; None: the tuned value of
# fp8_gemv_configs.json (`fp8_gemv.max_m_for`). Set by `set_fp8_gemv_max_m` (tests, benchmarks).
_fp8_gemv_max_m_override: int | None = None


def set_fp8_gemv_max_m(value: int | None) -> None:
    """Take the W8A16 GEMV for M <= value (0: never; None: back to the tuned threshold of the config
    data). Process-wide, like `set_backend`; for tests and benchmarks."""
    global _fp8_gemv_max_m_override
    if value is not None and value < 0:
        raise ValueError(f"the GEMV threshold must be >= 0 or None, got {value}")
    _fp8_gemv_max_m_override = value


def fp8_gemv_max_m(n: int, k: int, block_size: tuple[int, int]) -> int:
    """The largest M at which fp8_linear computes an [N, K] weight's product as W8A16 (never above
    the GEMV's MAX_M)."""
    gemv = _fp8_kernels()[2]
    if _fp8_gemv_max_m_override is not None:
        return min(_fp8_gemv_max_m_override, gemv.MAX_M)
    return gemv.max_m_for(n, k, tuple(block_size))


def fp8_linear(x: torch.Tensor, w_q: torch.Tensor, w_scale_inv: torch.Tensor, bias: torch.Tensor | None,
               block_size: tuple[int, int]) -> torch.Tensor:
    """x [..., K] @ w^T (+ bias) -> [..., N] in x's dtype, w [N, K] e4m3 with per-block scales (see
    runtime/quantization.py). Two maths, chosen by M = x's rows:
      * M <= fp8_gemv_max_m(N, K) (decode batches): W8A16, x as it is times the dequantised weight
        (runtime/kernels/triton/fp8_gemv.py: no activation quantisation, memory-bound GEMV);
      * otherwise W8A8: x quantised to e4m3 per token and group of block_k (fp8_quant.py), then
        the block-wise fp8 GEMM (fp8_gemm.py).
    The reference path makes the same choice, so on either backend it is the same math."""
    x2 = x.reshape(-1, x.shape[-1])
    n, k = w_q.shape
    weight_only = x2.shape[0] <= fp8_gemv_max_m(n, k, block_size)
    if uses_triton(x):
        quant, gemm, gemv = _fp8_kernels()
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        if weight_only:
            y = gemv.w8a16_block_fp8_matmul(x2, w_q, w_scale_inv, block_size, out_dtype=x.dtype)
        else:
            a_q, a_scale = quant.per_token_group_quant_fp8(x2, block_size[1])
            y = gemm.w8a8_block_fp8_matmul(a_q, a_scale, w_q, w_scale_inv, block_size, out_dtype=x.dtype)
        if bias is not None:
            y += bias
        return y.reshape(*x.shape[:-1], n)
    return reference.fp8_block_linear(x, w_q, w_scale_inv, bias, block_size, quantize_x=not weight_only)


_fp8_modules = None


def _fp8_kernels():
    """(fp8_quant, fp8_gemm, fp8_gemv), imported on first use. The reference path needs fp8_gemv
    too: its config data holds the W8A16 threshold."""
    global _fp8_modules
    if _fp8_modules is None:
        from radixlm.runtime.kernels.triton import fp8_gemm, fp8_gemv, fp8_quant
        _fp8_modules = (fp8_quant, fp8_gemm, fp8_gemv)
    return _fp8_modules
