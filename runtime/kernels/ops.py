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

import importlib
import os

import torch

from radixlm.runtime.kernels import cublas_fp8, reference  # cublas_fp8 needs only torch to import

_BACKENDS = ("triton", "torch")
_backend = "triton"


class _TritonModules:
    """The Triton kernel modules by name (`triton_kernels.norm`, `triton_kernels.fp8_gemv`,
    ...), each imported on first use: not at start-up on CPU, where only the reference runs,
    and not once per call in the per-layer hot path (after the first lookup a module is a plain
    attribute)."""

    NAMES = (
        "norm",
        "activation",
        "rotary",
        "kv_store",
        "fp8_quant",
        "fp8_gemm",
        "fp8_gemv",
        "gemv_kernel",
        "dense_gemv",
        "fused_moe",
    )

    def __getattr__(self, name: str):
        if name not in self.NAMES:
            raise AttributeError(f"no Triton kernel module {name!r}")
        module = importlib.import_module(f"radixlm.runtime.kernels.triton.{name}")
        setattr(self, name, module)
        return module


triton_kernels = _TritonModules()


def set_backend(name: str) -> None:
    """'triton' (default: Triton for CUDA tensors) or 'torch' (the reference everywhere).
    Process-wide: one scheduler process owns one model."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"kernel backend must be one of {_BACKENDS}, got {name!r}")
    _backend = name


def uses_triton(x: torch.Tensor) -> bool:
    return _backend == "triton" and x.is_cuda


# For a whole run, scheduler processes included (they are spawned, so they read it at import):
# RADIXLM_DENSE_GEMV=0 keeps every unquantised linear on cuBLAS (the A/B benchmarks' baseline);
# =force takes the GEMV at every M it accepts, for every shape and float dtype (the GPU parity
# tests, whose tiny shapes the tuned table does not list); unset: the tuned table.
DENSE_GEMV_ENV = "RADIXLM_DENSE_GEMV"
_dense_gemv_mode = os.environ.get(DENSE_GEMV_ENV, "")


def _takes_dense_gemv(x: torch.Tensor, weight: torch.Tensor, m: int) -> bool:
    """Whether m rows of x times an unquantised weight [N, K] go through the Triton dense GEMV."""
    if _dense_gemv_mode == "0" or not uses_triton(x) or x.dtype != weight.dtype or weight.stride(1) != 1:
        return False
    gemv = triton_kernels.dense_gemv
    n, k = weight.shape
    return 0 < m <= (gemv.MAX_M if _dense_gemv_mode == "force" else gemv.max_m_for(n, k, weight.dtype))


def dense_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ weight [N, K]^T (+ bias) for an unquantised weight. On CUDA, where the tuned
    table (dense_gemv_configs.json) measured the Triton GEMV faster than cuBLAS for this shape up
    to some M, rows up to that M take the GEMV; everything else is cuBLAS (`F.linear`)."""
    n, k = weight.shape
    m = x.numel() // k if k else 0
    if _takes_dense_gemv(x, weight, m):
        return _dense_gemv_linear(x.reshape(m, k), weight, bias, x.shape[:-1])
    return torch.nn.functional.linear(x, weight, bias)


def _dense_gemv_linear(
    rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lead: torch.Size, gated: bool = False
) -> torch.Tensor:
    """The dense GEMV of `rows` [M, K] (gated: gate_up [M, 2K]) plus bias, as [*lead, N]."""
    out = triton_kernels.dense_gemv.dense_gemv(rows, weight, gated=gated)
    if bias is not None:
        out += bias
    return out.reshape(*lead, weight.shape[0])


# "1": the down projection's GEMV computes silu_and_mul from gate_up itself instead of taking the
# activation kernel's output (the same bits either way). Opt-in until measured on its own: the
# one GPU run so far (benchmarks/results/decode-floor-gpu-h100-2026-12-07-second.md) had it with
# kernels releasing their successor at their start, and there it was slower
FUSED_SILU_ENV = "RADIXLM_FUSED_SILU_GEMV"
_fused_silu = os.environ.get(FUSED_SILU_ENV, "") == "1"


def dense_silu_gated_linear(
    gate_up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`dense_linear(silu_and_mul(gate_up), weight, bias)`, a gated MLP's down projection. On the
    GEMV route one kernel computes the activation as it streams the weights (no separate kernel,
    the same bits)."""
    k = weight.shape[1]
    m = gate_up.numel() // (2 * k) if k else 0
    if _fused_silu and gate_up.shape[-1] == 2 * k and _takes_dense_gemv(gate_up, weight, m):
        return _dense_gemv_linear(gate_up.reshape(m, 2 * k), weight, bias, gate_up.shape[:-1], gated=True)
    return dense_linear(silu_and_mul(gate_up), weight, bias)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if uses_triton(x) and x.dim() == 2 and x.is_contiguous():
        return triton_kernels.norm.rmsnorm(x, weight, eps)
    return reference.rmsnorm(x, weight, eps)


def fused_add_rmsnorm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(norm(x + residual), x + residual). The Triton version overwrites x and residual."""
    if uses_triton(x) and x.dim() == 2 and x.is_contiguous() and residual.is_contiguous():
        return triton_kernels.norm.fused_add_rmsnorm(x, residual, weight, eps)
    return reference.fused_add_rmsnorm(x, residual, weight, eps)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    if uses_triton(gate_up) and gate_up.is_contiguous():
        return triton_kernels.activation.silu_and_mul(gate_up)
    return reference.silu_and_mul(gate_up)


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    slots: torch.Tensor,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> None:
    """Write the new tokens' K/V into the pool rows `slots` (cast to the pool's dtype; an fp8
    pool stores value / scale)."""
    if uses_triton(k):
        triton_kernels.kv_store.store_kv(k, v, k_buffer, v_buffer, slots, k_scale, v_scale)
        return
    reference.store_kv(k, v, k_buffer, v_buffer, slots, k_scale, v_scale)


def rotary_and_store_kv(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    slots: torch.Tensor,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    keep_k: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`apply_rotary` then `store_kv` of the rotated k, with the same results: one Triton launch on
    CUDA (q rotated in place, and k too when keep_k). Returns the rotated (q, k); k is None unless
    keep_k (a decode step, which reads K only from the pool, need not write it back)."""
    if uses_triton(q):
        return triton_kernels.rotary.rotary_and_store_kv(
            positions, q, k, v, cos, sin, k_buffer, v_buffer, slots, k_scale, v_scale, keep_k
        )
    q, k = reference.rotary_and_store_kv(
        positions, q, k, v, cos, sin, k_buffer, v_buffer, slots, k_scale, v_scale
    )
    return q, (k if keep_k else None)


# The M (rows of x: tokens) up to which fp8_linear takes the W8A16 path; None: the tuned value of
# fp8_gemv_configs.json (`fp8_gemv.max_m_for`). Set by `set_fp8_gemv_max_m` (tests, benchmarks), or
# for a whole run, scheduler processes included, by the environment variable (A/B benchmarks).
GEMV_MAX_M_ENV = "RADIXLM_FP8_GEMV_MAX_M"
_fp8_gemv_max_m_override: int | None = (
    int(os.environ[GEMV_MAX_M_ENV]) if os.environ.get(GEMV_MAX_M_ENV) else None
)
# Which kernels run the W8A8 product (`set_fp8_gemm_backend`): "auto" = cuBLAS' block-scaled
# `_scaled_mm` (runtime/kernels/cublas_fp8.py) from the tuned M where this torch has it, Triton
# below; "triton" = the Triton GEMM at every M.
FP8_GEMM_BACKENDS = ("auto", "triton")
_fp8_gemm_backend = "auto"


def set_fp8_gemv_max_m(value: int | None) -> None:
    """Take the W8A16 GEMV for M <= value (0: never; None: back to the tuned threshold of the config
    data). Process-wide, like `set_backend`; for tests and benchmarks."""
    global _fp8_gemv_max_m_override
    if value is not None and value < 0:
        raise ValueError(f"the GEMV threshold must be >= 0 or None, got {value}")
    _fp8_gemv_max_m_override = value


def set_fp8_gemm_backend(name: str) -> None:
    """'auto' (default) or 'triton'; see FP8_GEMM_BACKENDS. Process-wide, like `set_backend`."""
    global _fp8_gemm_backend
    if name not in FP8_GEMM_BACKENDS:
        raise ValueError(f"fp8 GEMM backend must be one of {FP8_GEMM_BACKENDS}, got {name!r}")
    _fp8_gemm_backend = name


def prepare_kernels(device: torch.device) -> None:
    """What the Triton kernels need made before any CUDA graph is captured: the zeroed ticket
    counters of the split-K GEMVs, dense or fp8 (gemv_kernel.py)."""
    triton_kernels.gemv_kernel.prepare(device)


def prepare_fp8(device: torch.device) -> str | None:
    """What the fp8 kernels need probed before any CUDA graph is captured (the model runner calls
    this at load, after `prepare_kernels`, which makes the GEMV's split-K tile counters): with
    backend "auto", whether cuBLAS block-scaled fp8 works here. Returns why cuBLAS will not run
    (None: it will)."""
    if _fp8_gemm_backend != "auto":
        return f"fp8 GEMM backend {_fp8_gemm_backend!r}"
    return cublas_fp8.unsupported_reason(device)


def fp8_gemv_max_m(n: int, k: int, block_size: tuple[int, int]) -> int:
    """The largest M at which fp8_linear computes an [N, K] weight's product as W8A16 (never above
    the GEMV's MAX_M)."""
    gemv = triton_kernels.fp8_gemv
    if _fp8_gemv_max_m_override is not None:
        return min(_fp8_gemv_max_m_override, gemv.MAX_M)
    return gemv.max_m_for(n, k, tuple(block_size))


def fp8_uses_cublas(m: int, n: int, k: int, block_size: tuple[int, int], device: torch.device) -> bool:
    """Whether fp8_linear runs an [M, K] x [N, K]^T W8A8 product on cuBLAS: backend "auto", M at or
    above the tuned `fp8_gemm.scaled_mm_min_m`, a shape cuBLAS block-scales, and a device where the
    probe (`prepare_fp8`) passed. Never decided by a probe during graph capture: an unprobed device
    counts as unsupported there."""
    if _fp8_gemm_backend != "auto" or device.type != "cuda" or not cublas_fp8.shape_ok(n, k, block_size):
        return False
    min_m = triton_kernels.fp8_gemm.scaled_mm_min_m(n, k, tuple(block_size))
    if min_m is None or m < min_m:
        return False
    if torch.cuda.is_current_stream_capturing() and not cublas_fp8.probed(device):
        return False
    return cublas_fp8.unsupported_reason(device) is None


def fp8_linear(
    x: torch.Tensor,
    w_q: torch.Tensor,
    w_scale_inv: torch.Tensor,
    bias: torch.Tensor | None,
    block_size: tuple[int, int],
) -> torch.Tensor:
    """x [..., K] @ w^T (+ bias) -> [..., N] in x's dtype, w [N, K] e4m3 with per-block scales (see
    runtime/layers/quantization.py). Two maths, chosen by M = x's rows:
      * M <= fp8_gemv_max_m(N, K) (decode batches): W8A16, x as it is times the dequantised weight
        (runtime/kernels/triton/fp8_gemv.py: no activation quantisation, memory-bound GEMV);
      * otherwise W8A8: x quantised to e4m3 per token and group of block_k (fp8_quant.py), then
        the block-wise fp8 GEMM: Triton (fp8_gemm.py), or from a tuned M on, cuBLAS
        (cublas_fp8.py; `fp8_uses_cublas`), the same math with a different summation order.
    The reference path makes the same choice of math, so on either backend it is the same."""
    x2 = x.reshape(-1, x.shape[-1])
    n, k = w_q.shape
    m = x2.shape[0]
    weight_only = m <= fp8_gemv_max_m(n, k, block_size)
    if uses_triton(x):
        quant, gemv = triton_kernels.fp8_quant, triton_kernels.fp8_gemv
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        if weight_only:
            y = gemv.w8a16_block_fp8_matmul(x2, w_q, w_scale_inv, block_size, out_dtype=x.dtype)
        else:
            y = _w8a8(
                lambda q, s: quant.per_token_group_quant_fp8(x2, block_size[1], out_q=q, out_scale=s),
                m,
                w_q,
                w_scale_inv,
                block_size,
                x.dtype,
                x.device,
            )
        if bias is not None:
            y += bias
        return y.reshape(*x.shape[:-1], n)
    return reference.fp8_block_linear(x, w_q, w_scale_inv, bias, block_size, quantize_x=not weight_only)


def fp8_silu_gated_linear(
    gate_up: torch.Tensor,
    w_q: torch.Tensor,
    w_scale_inv: torch.Tensor,
    bias: torch.Tensor | None,
    block_size: tuple[int, int],
) -> torch.Tensor:
    """`fp8_linear(silu_and_mul(gate_up), ...)`, the gated MLP's down projection, with the same math
    and routing; on the W8A8 route the activation and the input quantisation run as one kernel
    (fp8_quant.silu_and_mul_quant_fp8), on the GEMV route the GEMV computes the activation itself,
    so the [M, I] activation never goes through memory."""
    n, k = w_q.shape
    m = gate_up.numel() // gate_up.shape[-1] if gate_up.shape[-1] else 0
    weight_only = m <= fp8_gemv_max_m(n, k, block_size)
    if not uses_triton(gate_up) or (weight_only and not _fused_silu):
        return fp8_linear(silu_and_mul(gate_up), w_q, w_scale_inv, bias, block_size)
    g2 = gate_up.reshape(-1, gate_up.shape[-1])
    if not g2.is_contiguous():
        g2 = g2.contiguous()
    if weight_only:  # the GEMV computes the activation as it streams the weights (the same bits)
        y = triton_kernels.fp8_gemv.w8a16_block_fp8_matmul(
            g2, w_q, w_scale_inv, block_size, out_dtype=gate_up.dtype, gated=True
        )
    else:
        quant = triton_kernels.fp8_quant
        y = _w8a8(
            lambda q, s: quant.silu_and_mul_quant_fp8(g2, block_size[1], out_q=q, out_scale=s),
            m,
            w_q,
            w_scale_inv,
            block_size,
            gate_up.dtype,
            gate_up.device,
        )
    if bias is not None:
        y += bias
    return y.reshape(*gate_up.shape[:-1], n)


def _w8a8(
    quantize,
    m: int,
    w_q: torch.Tensor,
    w_scale_inv: torch.Tensor,
    block_size: tuple[int, int],
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """The W8A8 product [M, N] of an activation that `quantize(out_q, out_scale)` writes as e4m3 [M, K]
    with per-token-group scales. On cuBLAS (`fp8_uses_cublas`) it writes them in the layout cuBLAS
    reads (`cublas_fp8.empty_operands`: rows padded to a multiple of 4, scales M-major) and the
    product's padding rows are dropped. Else the Triton GEMM."""
    n, k = w_q.shape
    if fp8_uses_cublas(m, n, k, block_size, device):  # block_size is (128, 128) there
        a_q, a_scale = cublas_fp8.empty_operands(m, k, w_q.dtype, device)
        quantize(a_q[:m], a_scale[:m])
        return cublas_fp8.block_scaled_mm(a_q, a_scale, w_q, w_scale_inv, out_dtype=dtype)[:m]
    a_q = torch.empty((m, k), dtype=w_q.dtype, device=device)
    a_scale = torch.empty((m, -(-k // block_size[1])), dtype=torch.float32, device=device)
    quantize(a_q, a_scale)
    return triton_kernels.fp8_gemm.w8a8_block_fp8_matmul(
        a_q, a_scale, w_q, w_scale_inv, block_size, out_dtype=dtype
    )


def moe_topk(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A sparse block's routing: (weights fp32 [T, top_k], expert ids int32 [T, top_k]) from the
    router's logits [T, E]. Plain torch on every device (softmax, top-k, a division: three small
    launches, no host sync, so it captures into CUDA graphs as it is)."""
    return reference.moe_topk(router_logits, top_k, renormalize)


def fused_moe(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    w13_scale: torch.Tensor | None = None,
    w2_scale: torch.Tensor | None = None,
    block_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The routed experts' output [T, H] for x [T, H] (runtime/layers/moe.py: stacked w13 [E, 2I, H],
    w2 [E, H, I], fp8 with block scales when the scales are given): the Triton fused MoE on CUDA
    (runtime/kernels/triton/fused_moe.py: two grouped GEMMs over tokens sorted by expert), the
    reference's loop over the experts that received tokens elsewhere."""
    if uses_triton(x):
        if not x.is_contiguous():
            x = x.contiguous()
        return triton_kernels.fused_moe.fused_moe(
            x, w13, w2, topk_weights, topk_ids, w13_scale, w2_scale, block_size
        )
    return reference.fused_moe(x, w13, w2, topk_weights, topk_ids, w13_scale, w2_scale, block_size)
