"""The FP8 Triton kernels (runtime/kernels/triton/fp8_quant.py, fp8_gemm.py, fp8_gemv.py) on a CUDA device
against the PyTorch reference (runtime/kernels/reference.py, FP8 section). Skipped where CUDA is
absent (CI); run on the GPU machine with `pytest tests/gpu/test_gpu_fp8_kernels.py`. Needs a GPU
with fp8 support in Triton (compute capability 8.9+: Ada, Hopper).

Here, unlike under the interpreter (tests/runtime/kernels/test_fp8_kernels.py), the in-kernel
fp32 -> e4m3 cast is the hardware's round-to-nearest-even, so q is checked bit-exact and bf16 is
covered. Fresh random inputs for every check, outputs poisoned with NaN before each launch.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

if torch.cuda.is_available():
    from radixlm.runtime.kernels import ops
    from radixlm.runtime.kernels import reference as ref
    from radixlm.runtime.kernels.triton import fp8_gemm, gemv_kernel
    from radixlm.runtime.kernels.triton.fp8_gemm import Fp8GemmConfig, w8a8_block_fp8_matmul
    from radixlm.runtime.kernels.triton.fp8_gemv import GemvConfig, w8a16_block_fp8_matmul
    from radixlm.runtime.kernels.triton.fp8_quant import per_token_group_quant_fp8

DEV = "cuda"
# relative Frobenius error vs the fp32 reference on the same fp8 operands: fp32 output differs
# only by the tensor cores' fp8 accumulation inside each block_k step; bf16 output adds its rounding
GEMM_TOL = {torch.float32: 1e-3, torch.bfloat16: 1e-2, torch.float16: 2e-3}


@pytest.fixture(autouse=True)
def _needs_fp8():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs compute capability 8.9+")


def rel_err(out: torch.Tensor, expected: torch.Tensor) -> float:
    assert not torch.isnan(out).any(), "output has NaN: unwritten element or a poisoned read"
    out, expected = out.double(), expected.double()
    return float((out - expected).norm() / expected.norm().clamp_min(1e-30))


def assert_q_exact(
    q: torch.Tensor, rq: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, group: int
) -> None:
    """Bit-equal but on ties. The kernel divides by the correctly rounded amax / 448; torch on CUDA
    divides by a Python scalar as a multiplication by its reciprocal, so the reference's scale can
    be one fp32 ulp off. Where x / scale is exactly halfway between two e4m3 values (common when
    the group's amax is 1.75 * 2^e: then scale is a power of two and x / scale keeps x's bits),
    that ulp decides the rounding: there the two may differ by one e4m3 ulp."""
    assert not torch.isnan(q.float()).any(), "q has NaN: an unwritten element"
    qb, rb = q.view(torch.uint8).long(), rq.view(torch.uint8).long()
    diff = qb != rb
    if diff.any():
        same_sign = ((qb ^ rb) & 0x80 == 0) | ((qb & 0x7F) == 0) | ((rb & 0x7F) == 0)
        one_ulp = same_sign & (((qb & 0x7F) - (rb & 0x7F)).abs() <= 1)
        assert one_ulp[diff].all(), f"{int((diff & ~one_ulp).sum())} q values off by more than one ulp"
        y = x.double() / scale.double().repeat_interleave(group, dim=1)[:, : x.shape[1]]
        mid = (q.double() + rq.double()) / 2
        tie = (y - mid).abs() <= 1e-6 * mid.abs()
        assert tie[diff].all(), f"{int((diff & ~tie).sum())} q values differ away from a rounding tie"


# ------------------------------------------------------------------------------------------ quant


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(
    "m,k,group",
    [(1, 4096, 128), (37, 4096, 128), (256, 14336, 128), (5, 1000, 128), (64, 7168, 64), (3, 100, 48)],
)
def test_quant_exact(dtype, m, k, group):
    x = (torch.randn(m, k, device=DEV) * torch.rand(m, 1, device=DEV) * 20).to(dtype)
    x[0, :group] = 0  # an all-zero group
    q = torch.full((m, k), float("nan"), device=DEV).to(ref.FP8_DTYPE)
    s = torch.full((m, (k + group - 1) // group), float("nan"), device=DEV)
    per_token_group_quant_fp8(x, group, out_q=q, out_scale=s)
    rq, rs = ref.per_token_group_quant_fp8(x, group)
    assert torch.isfinite(s).all()
    torch.testing.assert_close(s, rs, rtol=1e-6, atol=0)
    assert_q_exact(q, rq, x, s, group)


def test_quant_empty():
    q, s = per_token_group_quant_fp8(torch.empty(0, 4096, device=DEV, dtype=torch.bfloat16))
    assert q.shape == (0, 4096) and s.shape == (0, 32)


# ------------------------------------------------------------------------------------------ GEMM


def quantised_operands(m: int, n: int, k: int, block=(128, 128)):
    a = torch.randn(m, k, device=DEV) * (torch.rand(m, 1, device=DEV) * 4 + 0.1)
    w = torch.randn(n, k, device=DEV) * 0.02
    w[: min(n, block[0])] *= 10  # blocks of different magnitudes
    a_q, a_s = ref.per_token_group_quant_fp8(a, block[1])
    b_q, b_s = ref.block_quant_fp8(w, block)
    return a_q, a_s, b_q, b_s


def run_gemm(m, n, k, out_dtype, block=(128, 128), config=None):
    a_q, a_s, b_q, b_s = quantised_operands(m, n, k, block)
    out = torch.full((m, n), float("nan"), dtype=out_dtype, device=DEV)
    w8a8_block_fp8_matmul(a_q, a_s, b_q, b_s, block, out_dtype, config=config, out=out)
    expected = ref.w8a8_block_fp8_matmul(a_q, a_s, b_q, b_s, block, torch.float32)
    return rel_err(out, expected)


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(
    "n,k", [(256, 512), (1024, 2048), (2048, 1024), (700, 1000)]
)  # 700, 1000: partial blocks
@pytest.mark.parametrize("m", [1, 7, 16, 128, 1000])
def test_gemm(m, n, k, out_dtype):
    assert run_gemm(m, n, k, out_dtype) < GEMM_TOL[out_dtype]


@pytest.mark.parametrize("m", [1, 64, 512])
def test_gemm_large_k(m):
    """K=8192: 64 block_k steps. Promoting each step's fp8 product into the fp32 accumulator keeps
    the error at the K=128 level (tl.dot accumulating across steps on Hopper: ~2e-3)."""
    assert run_gemm(m, 1024, 8192, torch.float32) < 3e-4


@pytest.mark.parametrize(
    "config",
    [  # BLOCK_M, BLOCK_N, GROUP_M, num_warps, num_stages
        (16, 64, 1, 4, 4),
        (16, 32, 1, 4, 5),
        (32, 128, 4, 4, 3),
        (64, 64, 8, 4, 4),
        (64, 128, 8, 4, 3),
        (128, 128, 8, 8, 3),
        (128, 128, 1, 4, 5),
        (128, 64, 16, 4, 4),
    ],
)
def test_gemm_configs(config):
    """Every tile shape the tuner may pick computes the same function (odd M, N, K edges)."""
    cfg = Fp8GemmConfig(*config)
    assert run_gemm(333, 1152, 1000, torch.float32, config=cfg) < GEMM_TOL[torch.float32]


@pytest.mark.parametrize("block", [(64, 128), (128, 64)])
def test_gemm_other_blocks(block):
    assert run_gemm(100, 640, 1024, torch.bfloat16, block) < GEMM_TOL[torch.bfloat16]


@pytest.mark.parametrize("n,k", [(6144, 4096), (4096, 14336)])
@pytest.mark.parametrize("m", [1, 96, 3000])
def test_gemm_model_shapes_tuned_configs(m, n, k):
    """Llama-3.1-8B shapes with the configs of fp8_gemm_configs.json."""
    assert run_gemm(m, n, k, torch.bfloat16) < GEMM_TOL[torch.bfloat16]


def test_linear_end_to_end():
    """bf16 x -> quant kernel -> GEMM, against reference.fp8_block_linear."""
    x = torch.randn(77, 4096, device=DEV, dtype=torch.bfloat16)
    w_q, w_s = ref.block_quant_fp8(torch.randn(1536, 4096, device=DEV) * 0.02)
    a_q, a_s = per_token_group_quant_fp8(x, 128)
    out = w8a8_block_fp8_matmul(a_q, a_s, w_q, w_s, (128, 128), torch.bfloat16)
    assert rel_err(out, ref.fp8_block_linear(x, w_q, w_s, None)) < GEMM_TOL[torch.bfloat16]


def test_gemm_empty():
    a_q, a_s, b_q, b_s = quantised_operands(1, 256, 512)
    out = w8a8_block_fp8_matmul(a_q[:0], a_s[:0], b_q, b_s)
    assert out.shape == (0, 256)


def _num_compiled(kernel) -> int:
    caches = getattr(kernel, "device_caches", None)
    if caches is not None:  # triton 3.x: {device: (kernel_cache, ...)}
        return sum(len(entry[0]) for entry in caches.values())
    cache = getattr(kernel, "cache", None)  # older: {device: {key: kernel}}
    if cache is not None:
        return sum(len(v) for v in cache.values())
    pytest.skip("this triton keeps its compiled kernels elsewhere")


def test_gemm_new_m_does_not_recompile():
    """M is not specialised: batch sizes met while serving reuse the compiled kernel."""
    config = Fp8GemmConfig(32, 64, 4, 4, 3)
    n, k = 512, 1024
    b_q, b_s = ref.block_quant_fp8(torch.randn(n, k, device=DEV) * 0.02)

    def call(m):
        a_q, a_s = ref.per_token_group_quant_fp8(torch.randn(m, k, device=DEV), 128)
        w8a8_block_fp8_matmul(a_q, a_s, b_q, b_s, config=config)

    call(5)
    before = _num_compiled(fp8_gemm._w8a8_block_fp8_matmul_kernel)
    for m in (1, 16, 17, 64, 333, 1024):
        call(m)
    assert _num_compiled(fp8_gemm._w8a8_block_fp8_matmul_kernel) == before


# ------------------------------------------------------------------------------------------ GEMV
# W8A16 against reference.w8a16_block_fp8_matmul (fp32 x @ dequantised w): only the summation
# order and the output rounding differ (bf16: ~1e-3 relative)
GEMV_TOL = {torch.float32: 1e-5, torch.bfloat16: 4e-3, torch.float16: 1e-3}


def gemv_operands(m: int, n: int, k: int, x_dtype=torch.bfloat16, block=(128, 128)):
    x = (torch.randn(m, k, device=DEV) * (torch.rand(m, 1, device=DEV) * 4 + 0.1)).to(x_dtype)
    w = torch.randn(n, k, device=DEV) * 0.02
    w[: min(n, block[0])] *= 10  # blocks of different magnitudes
    w_q, w_s = ref.block_quant_fp8(w, block)
    return x, w_q, w_s


def run_gemv(m, n, k, x_dtype=torch.bfloat16, config=None, block=(128, 128)):
    x, w_q, w_s = gemv_operands(m, n, k, x_dtype, block)
    out = torch.full((m, n), float("nan"), dtype=x_dtype, device=DEV)
    w8a16_block_fp8_matmul(x, w_q, w_s, block, config=config, out=out)
    return rel_err(out, ref.w8a16_block_fp8_matmul(x, w_q, w_s, block))


@pytest.mark.parametrize("n,k", [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)])
@pytest.mark.parametrize("m", [1, 4, 16])
def test_gemv_model_shapes(m, n, k):
    """Llama-3.1-8B shapes, bf16 x, the configs of fp8_gemv_configs.json (or the defaults)."""
    assert run_gemv(m, n, k) < GEMV_TOL[torch.bfloat16]


@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("m", [1, 3, 8, 13])
def test_gemv_dtypes_and_edges(m, x_dtype):
    """Partial N tile and partial last K step (700, 1000), every BLOCK_M bucket, every x dtype."""
    assert run_gemv(m, 700, 1000, x_dtype) < GEMV_TOL[x_dtype]


@pytest.mark.parametrize(
    "config",
    [  # BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages[, DEFER_SUM]
        (8, 128, 1, 1, 1),
        (16, 128, 4, 4, 1),
        (32, 128, 8, 4, 1),
        (64, 128, 2, 4, 1),
        (128, 128, 1, 8, 1),
        (32, 64, 3, 2, 1),
        (16, 32, 16, 1, 1),
        (32, 128, 4, 4, 3),
        (64, 64, 2, 8, 2),
        (16, 128, 1, 4, 4),
        # steps over several scale blocks (x scaled per element), and deferred K sums
        (16, 256, 2, 4, 1),
        (32, 512, 1, 8, 1),
        (32, 128, 8, 4, 1, 1),
        (16, 256, 4, 4, 1, 1),
        (8, 512, 2, 4, 1, 1),
    ],
)
@pytest.mark.parametrize("m", [1, 16])
def test_gemv_configs(m, config):
    """Every tile shape the tuner may pick computes the same function (odd N, K edges)."""
    block_n, block_k, _, warps = config[:4]
    limit = 128 if any(config[5:]) else 256  # tune_gemv.gemv_fits
    if m * block_n * block_k // (32 * warps) > limit:  # tune_gemv.GEMV_MAX_PRODUCTS
        pytest.skip("more fp32 products a thread than the tuner allows (compiling it took ~2 min on an H100)")
    assert run_gemv(m, 1152, 1000, torch.float32, GemvConfig(*config)) < GEMV_TOL[torch.float32]


@pytest.mark.parametrize("block", [(64, 128), (128, 64)])
def test_gemv_other_blocks(block):
    assert run_gemv(4, 640, 1024, torch.bfloat16, block=block) < GEMV_TOL[torch.bfloat16]


def test_gemv_large_k_accuracy():
    """K=14336 in fp32: each block's partial product is exact-input fp32 math, so the error stays
    at summation-order level (no fp8 accumulation, unlike the W8A8 tensor cores)."""
    assert run_gemv(2, 1024, 14336, torch.float32, GemvConfig(32, 128, 8)) < 2e-5


def test_gemv_split_k_is_deterministic():
    """The split-K partial sums are reduced in a fixed order: identical bits run after run."""
    x, w_q, w_s = gemv_operands(4, 4096, 14336)
    cfg = GemvConfig(BLOCK_N=16, BLOCK_K=128, SPLIT_K=16)
    first = w8a16_block_fp8_matmul(x, w_q, w_s, config=cfg)
    for _ in range(5):
        assert torch.equal(w8a16_block_fp8_matmul(x, w_q, w_s, config=cfg), first)


def test_gemv_empty():
    x, w_q, w_s = gemv_operands(1, 256, 512)
    assert w8a16_block_fp8_matmul(x[:0], w_q, w_s).shape == (0, 256)


def test_gemv_new_m_in_bucket_does_not_recompile():
    """M is not specialised: Ms of one BLOCK_M bucket (5..8) share one compiled kernel."""
    config = GemvConfig(32, 128, 4)
    n, k = 512, 1024
    w_q, w_s = ref.block_quant_fp8(torch.randn(n, k, device=DEV) * 0.02)

    def call(m):
        w8a16_block_fp8_matmul(torch.randn(m, k, device=DEV, dtype=torch.bfloat16), w_q, w_s, config=config)

    call(5)
    before = _num_compiled(gemv_kernel._gemv_kernel)
    for m in (6, 7, 8):
        call(m)
    after = _num_compiled(gemv_kernel._gemv_kernel)
    assert after == before


def test_fp8_linear_takes_the_gemv_below_the_threshold():
    """ops.fp8_linear on bf16 x [2, 3, K]: W8A16 with the threshold at 8 (against the W8A16
    reference), W8A8 with it at 0 (against reference.fp8_block_linear); each within the other's
    activation-rounding distance."""
    x = torch.randn(2, 3, 4096, device=DEV, dtype=torch.bfloat16)
    w_q, w_s = ref.block_quant_fp8(torch.randn(1536, 4096, device=DEV) * 0.02)
    bias = torch.randn(1536, device=DEV, dtype=torch.bfloat16)
    try:
        ops.set_fp8_gemv_max_m(8)
        y16 = ops.fp8_linear(x, w_q, w_s, bias, (128, 128))
        ops.set_fp8_gemv_max_m(0)
        y8 = ops.fp8_linear(x, w_q, w_s, bias, (128, 128))
    finally:
        ops.set_fp8_gemv_max_m(None)
    assert y16.shape == y8.shape == (2, 3, 1536)
    assert rel_err(y16, ref.fp8_block_linear(x, w_q, w_s, bias, quantize_x=False)) < GEMV_TOL[torch.bfloat16]
    assert rel_err(y8, ref.fp8_block_linear(x, w_q, w_s, bias)) < GEMM_TOL[torch.bfloat16]
    assert rel_err(y16, y8) < 0.06  # x's e4m3 rounding (~3.7% with the weight's, measured)


# ----------------------------------------------------------------- cuBLAS block-scaled GEMM


def _cublas_or_skip():
    from radixlm.runtime.kernels import cublas_fp8

    reason = cublas_fp8.unsupported_reason(torch.device(DEV))
    if reason is not None:
        pytest.skip(f"cuBLAS block-scaled GEMM unavailable: {reason}")
    return cublas_fp8


@pytest.mark.parametrize("n,k", [(256, 512), (6144, 4096), (4096, 14336)])
@pytest.mark.parametrize("m", [1, 7, 16, 301, 4096])
def test_cublas_block_scaled_mm(m, n, k):
    """cuBLAS' block-scaled _scaled_mm on the operands the Triton GEMM takes (rows padded to a
    multiple of 4, activation scales M-major) against the reference."""
    cublas_fp8 = _cublas_or_skip()
    a_q, a_s, b_q, b_s = quantised_operands(m, n, k)
    out = cublas_fp8.block_scaled_mm(*cublas_fp8.pad_operands(a_q, a_s), b_q, b_s)[:m]
    expected = ref.w8a8_block_fp8_matmul(a_q, a_s, b_q, b_s, (128, 128), torch.float32)
    assert rel_err(out, expected) < GEMM_TOL[torch.bfloat16]


def test_quant_writes_m_major_scales():
    """The quantisation kernel writing into an M-major scale buffer (what fp8_linear hands cuBLAS)
    gives the same values as its row-major output."""
    x = torch.randn(300, 4096, device=DEV, dtype=torch.bfloat16)
    q1, s1 = per_token_group_quant_fp8(x, 128)
    buf = torch.full((32, 300), float("nan"), device=DEV).t()
    q2, s2 = per_token_group_quant_fp8(x, 128, out_scale=buf)
    assert (
        s2.stride() == (1, 300)
        and torch.equal(s1, s2)
        and torch.equal(q1.view(torch.uint8), q2.view(torch.uint8))
    )


@pytest.mark.parametrize("rows", [100, 33])  # M = 300, 99: a multiple of 4 and not (padded)
def test_fp8_linear_takes_cublas_from_the_threshold(monkeypatch, rows):
    """ops.fp8_linear at M = 3 * rows: cuBLAS with the threshold at 1, Triton with the backend
    forced to triton; both against reference.fp8_block_linear, and against each other."""
    _cublas_or_skip()
    x = torch.randn(3, rows, 4096, device=DEV, dtype=torch.bfloat16)
    w_q, w_s = ref.block_quant_fp8(torch.randn(1536, 4096, device=DEV) * 0.02)
    bias = torch.randn(1536, device=DEV, dtype=torch.bfloat16)
    monkeypatch.setattr(fp8_gemm, "scaled_mm_min_m", lambda *a, **kw: 1)
    assert ops.fp8_uses_cublas(300, 1536, 4096, (128, 128), torch.device(DEV))
    assert not ops.fp8_uses_cublas(300, 1536, 4000, (128, 128), torch.device(DEV))  # partial K block
    assert not ops.fp8_uses_cublas(300, 1536, 4096, (128, 64), torch.device(DEV))
    y_cublas = ops.fp8_linear(x, w_q, w_s, bias, (128, 128))
    try:
        ops.set_fp8_gemm_backend("triton")
        assert not ops.fp8_uses_cublas(300, 1536, 4096, (128, 128), torch.device(DEV))
        y_triton = ops.fp8_linear(x, w_q, w_s, bias, (128, 128))
    finally:
        ops.set_fp8_gemm_backend("auto")
    expected = ref.fp8_block_linear(x, w_q, w_s, bias)
    assert y_cublas.shape == y_triton.shape == (3, rows, 1536) and y_cublas.is_contiguous()
    assert rel_err(y_cublas, expected) < GEMM_TOL[torch.bfloat16]
    assert rel_err(y_triton, expected) < GEMM_TOL[torch.bfloat16]
    assert rel_err(y_cublas, y_triton) < GEMM_TOL[torch.bfloat16]


def test_fp8_linear_cublas_under_cuda_graph_capture(monkeypatch):
    """The cuBLAS path captured in a CUDA graph (decode batches above the threshold replay graphs):
    replays on new inputs match eager calls."""
    _cublas_or_skip()
    monkeypatch.setattr(fp8_gemm, "scaled_mm_min_m", lambda *a, **kw: 1)
    ops.set_fp8_gemv_max_m(0)
    try:
        w_q, w_s = ref.block_quant_fp8(torch.randn(1024, 2048, device=DEV) * 0.02)
        x = torch.randn(63, 2048, device=DEV, dtype=torch.bfloat16)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            ops.fp8_linear(x, w_q, w_s, None, (128, 128))  # warm-up off the capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = ops.fp8_linear(x, w_q, w_s, None, (128, 128))
        for _ in range(2):
            x.copy_(torch.randn_like(x))
            graph.replay()
            torch.cuda.synchronize()
            assert rel_err(y, ops.fp8_linear(x, w_q, w_s, None, (128, 128))) < 1e-6
    finally:
        ops.set_fp8_gemv_max_m(None)


# ------------------------------------------------ gated MLP: activation fused with the quantisation


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("m,inter", [(1, 256), (37, 1000), (512, 14336)])
def test_silu_and_mul_quant_equals_the_two_kernels(dtype, m, inter):
    """The fused kernel quantises bit for bit what silu_and_mul hands per_token_group_quant_fp8."""
    from radixlm.runtime.kernels.triton import activation, fp8_quant

    gate_up = (torch.randn(m, 2 * inter, device=DEV) * 4).to(dtype)
    q = torch.full((m, inter), float("nan"), device=DEV).to(torch.float8_e4m3fn)
    s = torch.full((m, -(-inter // 128)), float("nan"), device=DEV)
    fp8_quant.silu_and_mul_quant_fp8(gate_up, 128, out_q=q, out_scale=s)
    tq, ts = per_token_group_quant_fp8(activation.silu_and_mul(gate_up), 128)
    assert torch.equal(s, ts) and torch.equal(q.view(torch.uint8), tq.view(torch.uint8))


@pytest.mark.parametrize("rows", [3, 300, 601])  # Triton GEMM, Triton, cuBLAS (padded)
def test_fp8_silu_gated_linear(rows):
    """The gated down projection (fused route at W8A8 sizes, cuBLAS or Triton per the tuned data)
    against the reference of the same math."""
    gate_up = torch.randn(rows, 2 * 1536, device=DEV, dtype=torch.bfloat16) * 2
    w_q, w_s = ref.block_quant_fp8(torch.randn(1024, 1536, device=DEV) * 0.02)
    m_gemv = ops.fp8_gemv_max_m(1024, 1536, (128, 128))
    y = ops.fp8_silu_gated_linear(gate_up, w_q, w_s, None, (128, 128))
    h = ref.silu_and_mul(gate_up)
    expected = ref.fp8_block_linear(h, w_q, w_s, None, quantize_x=rows > m_gemv)
    assert y.shape == (rows, 1024) and rel_err(y, expected) < GEMM_TOL[torch.bfloat16]


def test_gemv_split_k_in_a_cuda_graph():
    """Split-K GEMV launches captured in a CUDA graph (as decode steps are): every replay's last
    program per tile resets its counter, so replays on new inputs match eager calls bit for bit."""
    gemv_kernel.prepare(torch.device(DEV))
    w_q, w_s = ref.block_quant_fp8(torch.randn(4096, 14336, device=DEV) * 0.02)
    x = torch.randn(1, 14336, device=DEV, dtype=torch.bfloat16)
    cfg = GemvConfig(BLOCK_N=32, BLOCK_K=128, SPLIT_K=8, num_warps=4)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        w8a16_block_fp8_matmul(x, w_q, w_s, config=cfg)  # compile off the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = w8a16_block_fp8_matmul(x, w_q, w_s, config=cfg)
        y2 = w8a16_block_fp8_matmul(x, w_q, w_s, config=cfg)  # the same tiles' counters, right after
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.cuda.synchronize()
        eager = w8a16_block_fp8_matmul(x, w_q, w_s, config=cfg)
        assert torch.equal(y, eager) and torch.equal(y2, eager)
    assert not gemv_kernel._tile_counters(torch.device(DEV)).any()
