"""The FP8 Triton kernels (runtime/kernels/triton/fp8_quant.py, fp8_gemm.py, fp8_gemv.py) against the
PyTorch reference (runtime/kernels/reference.py, FP8 section), run on the CPU under the Triton
interpreter, plus the GEMM's and GEMV's config choice and `ops.fp8_linear`'s choice between them.

What the interpreter gets right decides what is checked here (tests/gpu/test_gpu_fp8_kernels.py
checks the rest on a GPU):
  * an fp32 -> e4m3 cast inside a kernel rounds wrongly in the interpreter: ties are not rounded
    to even (272 -> 288, not 256), some subnormals round the wrong way (0.0014 -> 0, not 2^-9),
    and a value that should round up across a power of two (124.3 -> 128) loses the carry into
    the exponent and comes out at half (64). The quant kernel's scales are checked exactly, its q
    against the reference's allowing exactly those errors (one e4m3 ulp, or the dropped carry),
    which must stay rare; bit-exact q is a GPU test;
  * bf16 arithmetic and bf16 `tl.dot` are garbage in the interpreter, fp8 loads and fp8 dots are
    right: the GEMM is fed fp8 operands quantised on the host by the reference quantisers (torch's
    casts are right) and checked with fp32 and fp16 outputs; the W8A16 GEMV, whose x is not
    quantised, is fed fp32 and fp16 activations (bf16 is a GPU test).
Every check uses fresh random inputs and poisons its outputs with NaN before the launch.
"""

from __future__ import annotations

import contextlib
import math
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported anywhere

import pytest
import torch

triton = pytest.importorskip("triton")

from radixlm.runtime.kernels import ops  # noqa: E402
from radixlm.runtime.kernels import reference as ref  # noqa: E402
from radixlm.runtime.kernels.triton import (  # noqa: E402
    fp8_gemm,
    fp8_gemv,
    fp8_quant,
    gemv_kernel,
)
from radixlm.runtime.kernels.triton.fp8_gemm import (  # noqa: E402 -- imports triton: after importorskip
    M_BUCKETS,
    Fp8GemmConfig,
    bucket_for,
    choose_config,
    default_config,
    load_configs,
    w8a8_block_fp8_matmul,
)
from radixlm.runtime.kernels.triton.fp8_gemv import GemvConfig, w8a16_block_fp8_matmul  # noqa: E402
from radixlm.runtime.kernels.triton.fp8_quant import per_token_group_quant_fp8  # noqa: E402

if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("interpreter tests; tests/gpu covers CUDA", allow_module_level=True)

LLAMA_8B_SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)]
GEMM_TOL = {torch.float32: 1e-5, torch.float16: 2e-3}  # relative Frobenius error vs the fp32 reference


def rel_err(out: torch.Tensor, expected: torch.Tensor) -> float:
    assert not torch.isnan(out).any(), "output has NaN: unwritten element or a poisoned read"
    out, expected = out.double(), expected.double()
    return float((out - expected).norm() / expected.norm().clamp_min(1e-30))


def poisoned_quant_outputs(m: int, k: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.full((m, k), float("nan")).to(ref.FP8_DTYPE)  # e4m3 has a NaN (0x7f)
    s = torch.full((m, math.ceil(k / group)), float("nan"))
    return q, s


def check_q(q: torch.Tensor, rq: torch.Tensor) -> None:
    """q equal to the reference but for the interpreter's mis-rounding (module doc): one e4m3 ulp
    (ties, subnormals) or the dropped carry (the reference a power of two, q half of it)."""
    assert not torch.isnan(q.float()).any(), "q has NaN: an unwritten element"
    qb, rb = q.view(torch.uint8).long(), rq.view(torch.uint8).long()
    q_mag, r_mag = qb & 0x7F, rb & 0x7F
    same_sign = ((qb ^ rb) & 0x80 == 0) | (q_mag == 0) | (r_mag == 0)
    one_ulp = same_sign & ((q_mag - r_mag).abs() <= 1)
    dropped_carry = same_sign & (r_mag & 0x07 == 0) & (q_mag == r_mag - 8)
    # the same below 2^-6 (subnormals and the smallest normal): a value just under 2^-8, 2^-7 or
    # 2^-6 that rounds up to it comes out as the power of two below (seen with silu outputs)
    dropped_carry_small = same_sign & ((r_mag == 2) | (r_mag == 4) | (r_mag == 8)) & (q_mag == r_mag // 2)
    ok = one_ulp | dropped_carry | dropped_carry_small
    assert ok.all(), f"{int((~ok).sum())} q values off by more than the interpreter's mis-rounding"
    # ~3-5% differ (measured over 80 seeds); a few more in tiny tensors (5 of 40 seen)
    assert int((qb != rb).sum()) <= max(8, 0.1 * qb.numel()), "too many q values differ"


# ------------------------------------------------------------------------------------------ quant


def test_constants_match_reference():
    assert (fp8_quant.FP8_DTYPE, fp8_quant.FP8_MAX, fp8_quant.FP8_EPS) == (
        ref.FP8_DTYPE,
        ref.FP8_MAX,
        ref.FP8_EPS,
    )
    assert fp8_gemm.FP8_DTYPE == ref.FP8_DTYPE and fp8_gemv.FP8_DTYPE == ref.FP8_DTYPE


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "m,k,group", [(3, 256, 128), (5, 300, 128), (2, 1000, 128), (4, 200, 64), (3, 100, 48), (1, 40, 128)]
)
def test_quant_matches_reference(dtype, m, k, group):
    x = (torch.randn(m, k) * torch.rand(m, 1) * 10).to(dtype)
    q, s = poisoned_quant_outputs(m, k, group)
    out_q, out_s = per_token_group_quant_fp8(x, group, out_q=q, out_scale=s)
    assert out_q is q and out_s is s
    rq, rs = ref.per_token_group_quant_fp8(x, group)
    assert not torch.isnan(s).any()
    torch.testing.assert_close(s, rs, rtol=1e-6, atol=0)  # the kernel uses IEEE division: exact in fact
    check_q(q, rq)


def test_quant_allocates_outputs_and_dequantises():
    m, k = 6, 384
    x = torch.randn(m, k, dtype=torch.float16) * 4
    q, s = per_token_group_quant_fp8(x)
    assert q.dtype == ref.FP8_DTYPE and q.shape == (m, k)
    assert s.dtype == torch.float32 and s.shape == (m, 3)
    deq = q.float() * s.repeat_interleave(128, dim=1)
    # e4m3 keeps 3 mantissa bits (relative rounding <= 1/16); the interpreter's dropped carry
    # (module doc) halves a few values, so the bound is loose for those
    err = (deq - x.float()).abs()
    ok = err <= x.float().abs() / 16 + s.repeat_interleave(128, dim=1) * 2.0**-9
    assert ok.float().mean() > 0.9


def test_quant_zero_group_and_partial_group():
    m, k, group = 3, 330, 128  # groups of 128, 128, 74
    x = torch.randn(m, k, dtype=torch.float32)
    x[0, :128] = 0  # an all-zero group
    x[1, 256:] = 0  # the all-zero partial last group
    x[2, 256:] *= 1000  # the partial group's amax is its own: no lane past K is read
    q, s = poisoned_quant_outputs(m, k, group)
    per_token_group_quant_fp8(x, group, out_q=q, out_scale=s)
    rq, rs = ref.per_token_group_quant_fp8(x, group)
    assert torch.isfinite(s).all() and torch.isfinite(q.float()).all()
    assert s[0, 0] == pytest.approx(ref.FP8_EPS / ref.FP8_MAX) and s[1, 2] == s[0, 0]
    assert (q[0, :128].float() == 0).all() and (q[1, 256:].float() == 0).all()
    torch.testing.assert_close(s, rs, rtol=1e-6, atol=0)
    check_q(q, rq)


def test_quant_strided_input_and_scale_output():
    m, k = 4, 256
    base = torch.randn(m, k + 64, dtype=torch.float16)
    x = base[:, 32 : 32 + k]  # rows 320 apart
    scale_buf = torch.full((2, m), float("nan"))  # scales written through a transposed view
    q, s = per_token_group_quant_fp8(x, 128, out_scale=scale_buf.t())
    rq, rs = ref.per_token_group_quant_fp8(x, 128)
    torch.testing.assert_close(scale_buf.t(), rs, rtol=1e-6, atol=0)
    check_q(q, rq)


def test_quant_empty():
    q, s = per_token_group_quant_fp8(torch.empty(0, 300, dtype=torch.bfloat16))
    assert q.shape == (0, 300) and q.dtype == ref.FP8_DTYPE and s.shape == (0, 3) and s.dtype == torch.float32


# ------------------------------------------------------------------------------------------ GEMM


def nan_padded(t: torch.Tensor, rows: int = 3, cols: int = 32) -> torch.Tensor:
    """t as a view into a larger buffer whose other elements are NaN: a read past K (or past the
    last row) that the kernel should have masked ruins the result."""
    buf = torch.full((t.shape[0] + rows, t.shape[1] + cols), float("nan")).to(t.dtype)
    buf[: t.shape[0], : t.shape[1]] = t
    return buf[: t.shape[0], : t.shape[1]]


def quantised_operands(m: int, n: int, k: int, block: tuple[int, int]):
    a = torch.randn(m, k) * torch.rand(m, 1) * 4  # rows of different magnitudes
    w = torch.randn(n, k) * 0.05
    w[: min(n, block[0])] *= 10  # blocks of different magnitudes
    a_q, a_s = ref.per_token_group_quant_fp8(a, block[1])
    b_q, b_s = ref.block_quant_fp8(w, block)
    return nan_padded(a_q), nan_padded(a_s, cols=1), nan_padded(b_q), nan_padded(b_s, rows=1, cols=1)


def run_gemm(m, n, k, block, out_dtype, config=None):
    a_q, a_s, b_q, b_s = quantised_operands(m, n, k, block)
    out = torch.full((m, n), float("nan"), dtype=out_dtype)
    res = w8a8_block_fp8_matmul(a_q, a_s, b_q, b_s, block, out_dtype, config=config, out=out)
    assert res is out
    expected = ref.w8a8_block_fp8_matmul(a_q, a_s, b_q, b_s, block, torch.float32)
    return out, expected


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("k", [64, 128, 300])
@pytest.mark.parametrize("n", [128, 200])
@pytest.mark.parametrize("m", [1, 5, 33])
def test_gemm_matches_reference(m, n, k, out_dtype):
    out, expected = run_gemm(m, n, k, (128, 128), out_dtype)
    assert rel_err(out, expected) < GEMM_TOL[out_dtype]


@pytest.mark.parametrize(
    "m,n,k,block,config",
    [
        (33, 200, 300, (64, 128), None),  # block_n 64: a tile must not straddle two scale blocks
        (20, 192, 256, (64, 64), None),  # block_k 64: two K steps per 128 of K
        (
            70,
            300,
            256,
            (128, 128),
            Fp8GemmConfig(BLOCK_M=16, BLOCK_N=64, GROUP_M=3, num_warps=4, num_stages=2),
        ),
        (
            40,
            130,
            200,
            (128, 128),
            Fp8GemmConfig(BLOCK_M=32, BLOCK_N=128, GROUP_M=8, num_warps=4, num_stages=2),
        ),
        (
            3,
            96,
            160,
            (32, 128),
            {"BLOCK_M": 16, "BLOCK_N": 32, "GROUP_M": 1, "num_warps": 4, "num_stages": 2},
        ),
    ],
)
def test_gemm_blocks_and_tiles(m, n, k, block, config):
    """Non-square blocks, grouped program order over several row and column tiles, partial tiles
    at every edge; config as a dataclass or a dict."""
    out, expected = run_gemm(m, n, k, block, torch.float32, config)
    assert rel_err(out, expected) < GEMM_TOL[torch.float32]


def test_gemm_strided_a_and_scales():
    """A rows from a wider buffer (as a slice of a fused activation would be)."""
    m, n, k = 9, 128, 256
    a_q, a_s, b_q, b_s = quantised_operands(m, n, k, (128, 128))
    a_buf = torch.zeros(m, k + 128, dtype=ref.FP8_DTYPE)
    a_buf[:, 64 : 64 + k] = a_q
    s_buf = torch.zeros(m, 5)
    s_buf[:, 1:3] = a_s
    out = w8a8_block_fp8_matmul(a_buf[:, 64 : 64 + k], s_buf[:, 1:3], b_q, b_s, (128, 128), torch.float32)
    expected = ref.w8a8_block_fp8_matmul(a_q, a_s, b_q, b_s, (128, 128), torch.float32)
    assert rel_err(out, expected) < GEMM_TOL[torch.float32]


def test_gemm_quant_kernel_roundtrip():
    """Activations quantised by the Triton kernel feed the GEMM (fp16 x, as fp8_block_linear)."""
    m, n, k = 7, 256, 384
    x = torch.randn(m, k, dtype=torch.float16)
    w_q, w_s = ref.block_quant_fp8(torch.randn(n, k) * 0.05)
    a_q, a_s = per_token_group_quant_fp8(x, 128)
    out = w8a8_block_fp8_matmul(a_q, a_s, w_q, w_s, (128, 128), torch.float16)
    expected = ref.w8a8_block_fp8_matmul(a_q, a_s, w_q, w_s, (128, 128), torch.float32)
    assert rel_err(out, expected) < GEMM_TOL[torch.float16]
    # and close to the unquantised product (fp8 activations and weights: a few percent)
    exact = x.float() @ ref.block_dequant_fp8(w_q, w_s).t()
    assert rel_err(out, exact) < 0.1


def test_gemm_empty():
    b_q, b_s = ref.block_quant_fp8(torch.randn(128, 256))
    a_q = torch.empty(0, 256, dtype=ref.FP8_DTYPE)
    out = w8a8_block_fp8_matmul(a_q, torch.empty(0, 2), b_q, b_s)
    assert out.shape == (0, 128) and out.dtype == torch.bfloat16


def test_gemm_rejects_bad_config():
    a_q, a_s, b_q, b_s = quantised_operands(4, 128, 128, (64, 128))
    with pytest.raises(AssertionError):  # BLOCK_N 128 straddles two block_n=64 scale blocks
        w8a8_block_fp8_matmul(a_q, a_s, b_q, b_s, (64, 128), config=Fp8GemmConfig(16, 128))
    with pytest.raises(AssertionError):  # a_scale of the wrong group count
        w8a8_block_fp8_matmul(a_q, a_s[:, :0], b_q, b_s, (64, 128))


# ------------------------------------------------------------------------------------------ configs


def test_bucket_for():
    assert [bucket_for(m) for m in (0, 1, 2, 3, 5, 16, 17, 4096, 4097, 100000)] == [
        1,
        1,
        2,
        4,
        8,
        16,
        32,
        4096,
        4096,
        4096,
    ]
    assert bucket_for(3, [8, 2]) == 8 and bucket_for(9, [8, 2]) == 8


def test_shipped_config_file():
    table = load_configs()
    assert table, f"{fp8_gemm.CONFIG_FILE} missing or unreadable"
    assert "_comment" in table and table.get("_block_size") == [128, 128]
    for n, k in LLAMA_8B_SHAPES:
        by_m = table[f"{n},{k}"]
        assert sorted(int(b) for b in by_m) == list(M_BUCKETS)
        for bucket, d in by_m.items():
            cfg = Fp8GemmConfig.from_dict(d)
            assert cfg.to_dict() == d, "every field given, no others"
            for v in (cfg.BLOCK_M, cfg.BLOCK_N, cfg.num_warps):
                assert v & (v - 1) == 0, cfg  # powers of two
            assert cfg.GROUP_M >= 1
            assert cfg.BLOCK_M >= 16 and 16 <= cfg.BLOCK_N and 128 % cfg.BLOCK_N == 0
            assert 1 <= cfg.num_stages <= 6
            assert choose_config(int(bucket), n, k) == cfg
    # a M between buckets takes the next bucket up; past the largest, the largest
    n, k = LLAMA_8B_SHAPES[0]
    by_m = table[f"{n},{k}"]
    assert choose_config(3, n, k) == Fp8GemmConfig.from_dict(by_m["4"])
    assert choose_config(100, n, k) == Fp8GemmConfig.from_dict(by_m["128"])
    assert choose_config(50000, n, k) == Fp8GemmConfig.from_dict(by_m["4096"])


def test_choose_config_lookup_and_fallback():
    small = {"BLOCK_M": 16, "BLOCK_N": 32, "GROUP_M": 1, "num_warps": 2, "num_stages": 5}
    big = {"BLOCK_M": 128, "BLOCK_N": 128, "GROUP_M": 4, "num_warps": 8, "num_stages": 4}
    table = {"_comment": "test", "_block_size": [128, 128], "512,256": {"8": small, "1024": big}}
    assert choose_config(1, 512, 256, configs=table) == Fp8GemmConfig(**small)
    assert choose_config(8, 512, 256, configs=table) == Fp8GemmConfig(**small)
    assert choose_config(9, 512, 256, configs=table) == Fp8GemmConfig(**big)
    assert choose_config(10**6, 512, 256, configs=table) == Fp8GemmConfig(**big)
    # unknown shape, another block size, an empty table: the default
    assert choose_config(9, 512, 512, configs=table) == default_config(9, 512, 512)
    assert choose_config(9, 512, 256, (64, 128), configs=table) == default_config(9, 512, 256, (64, 128))
    assert choose_config(9, 512, 256, configs={}) == default_config(9, 512, 256)
    # a tuned BLOCK_N that does not divide block_n is never used
    odd = {"_block_size": [64, 128], "512,256": {"1": big}}
    assert choose_config(1, 512, 256, (64, 128), configs=odd).BLOCK_N == 64


@pytest.mark.parametrize("block", [(128, 128), (64, 128), (32, 128), (96, 128), (128, 64)])
def test_default_config(block):
    seen = set()
    for m in [0, 1, 7, 16, 17, 64, 100, 256, 257, 4096, 100000]:
        cfg = default_config(m, 4096, 4096, block)
        assert block[0] % cfg.BLOCK_N == 0 and cfg.BLOCK_N >= 16 and cfg.BLOCK_M >= 16
        assert cfg == choose_config(m, 4096, 4096, block, configs={})
        seen.add(cfg.BLOCK_M)
    assert min(seen) <= 32 and max(seen) == 128  # thin tiles for decode, square ones for prefill


# ------------------------------------------------------------------------------------------ GEMV
# W8A16: x unquantised, so against reference.w8a16_block_fp8_matmul (fp32 x @ dequantised w) the
# only differences are fp32 summation order and the output's rounding
GEMV_TOL = {torch.float32: 1e-5, torch.float16: 1e-3}


def gemv_operands(m: int, n: int, k: int, block: tuple[int, int], x_dtype: torch.dtype):
    """x rows of different magnitudes and weight blocks of different magnitudes (so a scale
    applied to the wrong block shows), each a view into a NaN-padded buffer."""
    x = (torch.randn(m, k) * (torch.rand(m, 1) * 4 + 0.1)).to(x_dtype)
    w = torch.randn(n, k) * 0.05
    w *= torch.logspace(-2, 2, math.ceil(n / block[0])).repeat_interleave(block[0])[:n, None]
    w *= torch.logspace(1, -1, math.ceil(k / block[1])).repeat_interleave(block[1])[None, :k]
    w_q, w_s = ref.block_quant_fp8(w, block)
    return nan_padded(x), nan_padded(w_q), nan_padded(w_s, rows=1, cols=1)


def run_gemv(m, n, k, x_dtype, config=None, block=(128, 128)):
    x, w_q, w_s = gemv_operands(m, n, k, block, x_dtype)
    out = torch.full((m, n), float("nan"), dtype=x_dtype)
    res = w8a16_block_fp8_matmul(x, w_q, w_s, block, config=config, out=out)
    assert res is out
    return rel_err(out, ref.w8a16_block_fp8_matmul(x, w_q, w_s, block))


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("m", [1, 3, 16])
@pytest.mark.parametrize(
    "n,k,config",
    [
        (200, 256, GemvConfig(BLOCK_N=32, BLOCK_K=128, SPLIT_K=1)),  # N not a multiple of the tile
        (200, 300, GemvConfig(BLOCK_N=16, BLOCK_K=64, SPLIT_K=3)),  # K partial; 5 steps in 3 splits of 2
        (96, 1000, GemvConfig(BLOCK_N=64, BLOCK_K=128, SPLIT_K=4, num_warps=2)),  # K partial, 4 splits
        (130, 384, None),  # the default config
        # a step over several scale blocks (x scaled per element): K partial, the last block's
        # lanes past K clamped; and with the K sum deferred to the end
        (96, 1000, GemvConfig(BLOCK_N=16, BLOCK_K=256, SPLIT_K=2)),
        (96, 1000, GemvConfig(BLOCK_N=16, BLOCK_K=512, SPLIT_K=1, DEFER_SUM=1)),
        (200, 300, GemvConfig(BLOCK_N=16, BLOCK_K=64, SPLIT_K=3, DEFER_SUM=1)),  # deferred, one scale a step
    ],
)
def test_gemv_matches_reference(m, n, k, config, x_dtype):
    assert run_gemv(m, n, k, x_dtype, config) < GEMV_TOL[x_dtype]


@pytest.mark.parametrize(
    "block,config",
    [
        ((64, 128), GemvConfig(BLOCK_N=64, BLOCK_K=128, SPLIT_K=2)),  # block_n 64: a tile in one scale row
        ((128, 64), GemvConfig(BLOCK_N=32, BLOCK_K=64, SPLIT_K=2)),  # block_k 64: one scale a K step
        ((64, 128), None),  # the default with block_n 64
        ((96, 128), None),  # block_n 96: tiles of 32 (its largest power-of-two divisor caps BLOCK_N)
    ],
)
def test_gemv_other_blocks(block, config):
    assert run_gemv(5, 200, 300, torch.float32, config, block) < GEMV_TOL[torch.float32]


def test_gemv_more_splits_than_k_steps():
    """SPLIT_K 8 on 2 K steps runs 2 splits (none left empty): still the right sum."""
    assert run_gemv(2, 64, 200, torch.float32, {"BLOCK_N": 16, "BLOCK_K": 128, "SPLIT_K": 8}) < 1e-5


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    "m, config",
    [
        (1, None),
        (3, GemvConfig(BLOCK_N=16, BLOCK_K=64, SPLIT_K=3)),
        (1, GemvConfig(BLOCK_N=16, BLOCK_K=256, SPLIT_K=2, DEFER_SUM=1)),
        (3, GemvConfig(BLOCK_N=16, BLOCK_K=64, SPLIT_K=3, DEFER_SUM=1)),
    ],
)
def test_gated_gemv_equals_silu_and_mul_then_gemv(m, config, x_dtype):
    """gated=True computes silu_and_mul(gate_up) inside the GEMV: bit for bit the activation kernel
    followed by the plain GEMV with the same tiles (K 300: a partial last step)."""
    from radixlm.runtime.kernels.triton.activation import silu_and_mul

    n, k = 130, 300
    gate_up = torch.randn(m, 2 * k).to(x_dtype) * 2
    w_q, w_s = ref.block_quant_fp8(torch.randn(n, k) * 0.05)
    fused = torch.full((m, n), float("nan"), dtype=x_dtype)
    w8a16_block_fp8_matmul(gate_up, w_q, w_s, config=config, out=fused, gated=True)
    assert torch.equal(fused, w8a16_block_fp8_matmul(silu_and_mul(gate_up), w_q, w_s, config=config))


def test_gemv_split_k_tile_counters_return_to_zero():
    """Split-K programs take tickets from per-tile counters; the last one reduces and resets its
    counter, so consecutive launches (other shapes, other splits) start from zero and agree."""
    x = torch.randn(4, 1000)
    w_q, w_s = ref.block_quant_fp8(torch.randn(300, 1000) * 0.05)
    counters = gemv_kernel._tile_counters(torch.device("cpu"))
    outs = []
    for split in (2, 4, 8, 4):
        cfg = {"BLOCK_N": 16, "BLOCK_K": 128, "SPLIT_K": split}
        outs.append(w8a16_block_fp8_matmul(x, w_q, w_s, config=cfg))
        assert not counters.any(), "a tile counter was left non-zero"
    expected = ref.w8a16_block_fp8_matmul(x, w_q, w_s)
    assert all(rel_err(o, expected) < 1e-5 for o in outs)
    assert torch.equal(outs[1], outs[3])  # the same split: the same sum, bit for bit


def test_gemv_out_dtype_and_allocation():
    m, n, k = 2, 128, 256
    x = torch.randn(m, k, dtype=torch.float16)
    w_q, w_s = ref.block_quant_fp8(torch.randn(n, k) * 0.05)
    out = w8a16_block_fp8_matmul(x, w_q, w_s)
    assert out.shape == (m, n) and out.dtype == torch.float16
    out32 = w8a16_block_fp8_matmul(x, w_q, w_s, out_dtype=torch.float32)
    assert out32.dtype == torch.float32
    assert rel_err(out32, ref.w8a16_block_fp8_matmul(x, w_q, w_s)) < 1e-6
    # against W8A8 (x quantised too) the difference is x's e4m3 rounding, a few percent
    a_q, a_s = ref.per_token_group_quant_fp8(x, 128)
    assert rel_err(out32, ref.w8a8_block_fp8_matmul(a_q, a_s, w_q, w_s)) < 0.05


def test_gemv_empty_and_zero_k():
    w_q, w_s = ref.block_quant_fp8(torch.randn(128, 256))
    out = w8a16_block_fp8_matmul(torch.empty(0, 256), w_q, w_s)
    assert out.shape == (0, 128) and out.dtype == torch.float32
    w_q0, w_s0 = w_q[:, :0], torch.empty(1, 0)
    out = w8a16_block_fp8_matmul(torch.randn(2, 0), w_q0, w_s0)
    assert out.shape == (2, 128) and (out == 0).all()


def test_gemv_rejects_bad_input():
    x, w_q, w_s = gemv_operands(4, 128, 256, (64, 128), torch.float32)
    with pytest.raises(AssertionError):  # BLOCK_N 128 straddles two block_n=64 scale blocks
        w8a16_block_fp8_matmul(x, w_q, w_s, (64, 128), config=GemvConfig(BLOCK_N=128, BLOCK_K=128))
    x96, w_q96, w_s96 = gemv_operands(4, 128, 256, (64, 96), torch.float32)
    with pytest.raises(AssertionError):  # BLOCK_K 64 neither divides block_k=96 nor is a multiple of it
        w8a16_block_fp8_matmul(x96, w_q96, w_s96, (64, 96), config=GemvConfig(BLOCK_N=16, BLOCK_K=64))
    w8a16_block_fp8_matmul(x96, w_q96, w_s96, (64, 96), config=GemvConfig(BLOCK_N=16, BLOCK_K=32))  # divides
    with pytest.raises(AssertionError):  # scales of the wrong shape
        w8a16_block_fp8_matmul(x, w_q, w_s[:, :1], (64, 128))
    with pytest.raises(AssertionError):  # M past the GEMV's range
        w8a16_block_fp8_matmul(torch.randn(fp8_gemv.MAX_M + 1, 256), w_q, w_s, (64, 128))


# -------------------------------------------------------------------------------- GEMV configs


def test_gemv_block_m_and_buckets():
    assert [fp8_gemv.block_m_for(m) for m in (1, 2, 3, 4, 5, 8, 9, 16)] == [1, 2, 4, 4, 8, 8, 16, 16]
    assert [bucket_for(m, fp8_gemv.M_BUCKETS) for m in (1, 3, 16, 17)] == [1, 4, 16, 16]
    with pytest.raises(AssertionError):
        fp8_gemv.block_m_for(17)


def test_gemv_shipped_config_file():
    """Well formed, whatever the last tuning wrote (the committed file, untuned, has the GEMV off)."""
    table = fp8_gemv.load_configs()
    assert table, f"{fp8_gemv.CONFIG_FILE} missing or unreadable"
    assert "_comment" in table and table.get("_block_size") == [128, 128]
    assert isinstance(table["_gemv_max_m"], int) and 0 <= table["_gemv_max_m"] <= fp8_gemv.MAX_M
    for shape, value in table.get("_gemv_max_m_by_shape", {}).items():
        assert len(shape.split(",")) == 2 and isinstance(value, int) and 0 <= value <= fp8_gemv.MAX_M
    for shape, by_m in table.items():
        if shape.startswith("_"):
            continue
        n, k = map(int, shape.split(","))
        assert {int(b) for b in by_m} <= set(fp8_gemv.M_BUCKETS)
        for bucket, d in by_m.items():
            cfg = GemvConfig.from_dict(d)
            assert cfg.to_dict() == d, "every field given, no others"
            assert 128 % cfg.BLOCK_N == 0 and fp8_gemv.k_tile_fits(cfg.BLOCK_K, 128) and cfg.BLOCK_K >= 16
            assert cfg.SPLIT_K >= 1 and cfg.num_warps in (1, 2, 4, 8) and 1 <= cfg.num_stages <= 6
            assert fp8_gemv.choose_config(int(bucket), n, k) == cfg


def test_gemv_choose_config_and_threshold_lookup():
    small = {"BLOCK_N": 32, "BLOCK_K": 128, "SPLIT_K": 4, "num_warps": 4, "num_stages": 1}
    big = {"BLOCK_N": 16, "BLOCK_K": 64, "SPLIT_K": 1, "num_warps": 8, "num_stages": 3}
    table = {
        "_block_size": [128, 128],
        "_gemv_max_m": 4,
        "_gemv_max_m_by_shape": {"512,256": 8, "64,64": 99},
        "512,256": {"2": small, "16": big},
    }
    choose = fp8_gemv.choose_config
    assert choose(1, 512, 256, configs=table) == choose(2, 512, 256, configs=table) == GemvConfig(**small)
    assert choose(3, 512, 256, configs=table) == choose(16, 512, 256, configs=table) == GemvConfig(**big)
    assert choose(3, 512, 512, configs=table) == fp8_gemv.default_config(3, 512, 512)
    assert choose(3, 512, 256, (64, 128), configs=table) == fp8_gemv.default_config(3, 512, 256, (64, 128))
    assert choose(3, 512, 256, configs={}) == fp8_gemv.default_config(3, 512, 256)
    max_m = fp8_gemv.max_m_for
    assert max_m(512, 256, configs=table) == 8  # the shape's own value
    assert max_m(4096, 4096, configs=table) == 4  # the global one
    assert max_m(64, 64, configs=table) == fp8_gemv.MAX_M  # clamped to what the kernel takes
    assert max_m(512, 256, (64, 128), configs=table) == 0  # tuned for another block size
    assert max_m(512, 256, configs={}) == 0  # no data: off


@pytest.mark.parametrize("block", [(128, 128), (64, 128), (128, 64), (96, 128)])
def test_gemv_default_config(block):
    for m in fp8_gemv.M_BUCKETS:
        for n, k in LLAMA_8B_SHAPES + [(200, 300), (8, 64)]:
            cfg = fp8_gemv.default_config(m, n, k, block)
            assert block[0] % cfg.BLOCK_N == 0 and block[1] % cfg.BLOCK_K == 0 and cfg.BLOCK_K >= 16
            assert cfg.SPLIT_K == 1 or math.ceil(k / cfg.BLOCK_K) // cfg.SPLIT_K >= 4
    # small grids are split along K, large ones are not
    assert fp8_gemv.default_config(1, 4096, 14336).SPLIT_K > 1
    assert fp8_gemv.default_config(1, 28672, 4096).SPLIT_K == 1


# ------------------------------------------------------------------------ ops.fp8_linear dispatch


@pytest.fixture
def triton_fp8_linear(monkeypatch):
    """ops.fp8_linear taking its Triton path on CPU tensors (the interpreter runs the kernels),
    with the kernel entry points counted and the activation quantiser's last output kept;
    restores the GEMV threshold afterwards."""
    monkeypatch.setattr(ops, "uses_triton", lambda x: True)
    monkeypatch.setattr(ops, "_fp8_gemv_max_m_override", None)
    calls = {"gemv": 0, "gemm": 0, "quant": 0, "last_quant": None}
    quant, gemm, gemv = ops.triton_kernels.fp8_quant, ops.triton_kernels.fp8_gemm, ops.triton_kernels.fp8_gemv

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            result = fn(*args, **kwargs)
            if name == "quant":
                calls["last_quant"] = result
            return result

        return wrapper

    monkeypatch.setattr(gemv, "w8a16_block_fp8_matmul", counted("gemv", gemv.w8a16_block_fp8_matmul))
    monkeypatch.setattr(gemm, "w8a8_block_fp8_matmul", counted("gemm", gemm.w8a8_block_fp8_matmul))
    monkeypatch.setattr(quant, "per_token_group_quant_fp8", counted("quant", quant.per_token_group_quant_fp8))
    return calls


@contextlib.contextmanager
def reference_path():
    """ops on the PyTorch reference path (as on a CPU engine), even where a test fixture made it take
    the Triton one."""
    ops.uses_triton, saved = (lambda t: False), ops.uses_triton
    try:
        yield
    finally:
        ops.uses_triton = saved


# the same math as the path taken, fp16 output rounding and bias add included
LINEAR_TOL_SAME_MATH = 2e-3
# against reference.fp8_block_linear (W8A8, x quantised by the reference): e4m3 rounding of x
# (~2.5%) on the reference's side, and on the W8A8 route also on the kernel's, whose in-kernel
# cast the interpreter mis-rounds (module doc: ~2% of q, some halved), measured up to ~5%
LINEAR_TOL_W8A8 = 0.1


@pytest.mark.parametrize("x_dtype", [torch.float16, torch.float32])
def test_fp8_linear_routes_by_threshold(triton_fp8_linear, x_dtype):
    calls = triton_fp8_linear
    n, k = 192, 320
    w_q, w_s = ref.block_quant_fp8(torch.randn(n, k) * 0.05)
    bias = torch.randn(n).to(x_dtype)
    ops.set_fp8_gemv_max_m(4)
    assert ops.fp8_gemv_max_m(n, k, (128, 128)) == 4
    for shape, expect_gemv in (((3, k), True), ((2, 2, k), True), ((5, k), False), ((2, 3, k), False)):
        x = torch.randn(*shape).to(x_dtype)
        before = dict(calls)
        y = ops.fp8_linear(x, w_q, w_s, bias, (128, 128))
        assert y.shape == (*shape[:-1], n) and y.dtype == x_dtype
        assert (calls["gemv"] > before["gemv"]) == expect_gemv
        assert (calls["gemm"] > before["gemm"]) != expect_gemv
        assert (calls["quant"] > before["quant"]) != expect_gemv  # the GEMV quantises nothing
        if expect_gemv:
            same_math = ref.fp8_block_linear(x, w_q, w_s, bias, quantize_x=False)
        else:  # the W8A8 oracle on the kernel's own quantised x
            a_q, a_s = calls["last_quant"]
            same_math = (ref.w8a8_block_fp8_matmul(a_q, a_s, w_q, w_s) + bias.float()).reshape(y.shape)
        assert rel_err(y, same_math) < LINEAR_TOL_SAME_MATH
        assert rel_err(y, ref.fp8_block_linear(x, w_q, w_s, bias)) < LINEAR_TOL_W8A8
        # the reference path (a CPU engine, or set_backend("torch")) makes the same choice
        with reference_path():
            torch.testing.assert_close(
                ops.fp8_linear(x, w_q, w_s, bias, (128, 128)),
                ref.fp8_block_linear(x, w_q, w_s, bias, quantize_x=not expect_gemv),
                rtol=0,
                atol=0,
            )
    ops.set_fp8_gemv_max_m(0)  # off: every M takes W8A8
    ops.fp8_linear(torch.randn(1, k).to(x_dtype), w_q, w_s, None, (128, 128))
    assert calls["gemv"] == 2 and calls["gemm"] == 3
    ops.set_fp8_gemv_max_m(10**6)  # clamped to the largest M the GEMV takes
    assert ops.fp8_gemv_max_m(n, k, (128, 128)) == fp8_gemv.MAX_M
    ops.set_fp8_gemv_max_m(None)  # back to the config data
    assert ops.fp8_gemv_max_m(n, k, (128, 128)) == fp8_gemv.max_m_for(n, k)
    with pytest.raises(ValueError):
        ops.set_fp8_gemv_max_m(-1)


# ------------------------------------------------------- cuBLAS block-scaled path: routing and data
# (the product itself needs a Hopper GPU: tests/gpu/test_gpu_fp8_kernels.py)


def test_scaled_mm_min_m_lookup():
    table = {
        "_block_size": [128, 128],
        "_scaled_mm_min_m": 512,
        "_scaled_mm_min_m_by_shape": {"6144,4096": 128, "4096,4096": None},
    }
    assert fp8_gemm.scaled_mm_min_m(6144, 4096, (128, 128), table) == 128
    assert fp8_gemm.scaled_mm_min_m(4096, 4096, (128, 128), table) is None  # measured: never
    assert fp8_gemm.scaled_mm_min_m(1024, 1024, (128, 128), table) == 512  # other shapes: the default
    assert fp8_gemm.scaled_mm_min_m(6144, 4096, (64, 128), table) is None  # tuned for another block
    assert fp8_gemm.scaled_mm_min_m(6144, 4096, (128, 128), {}) is None  # untuned: never
    shipped = fp8_gemm.load_configs()
    for shape, value in shipped.get("_scaled_mm_min_m_by_shape", {}).items():
        n, k = map(int, shape.split(","))
        assert value is None or (value >= 1 and fp8_gemm.scaled_mm_min_m(n, k) == value)


def test_cublas_shapes_and_padding():
    from radixlm.runtime.kernels import cublas_fp8

    assert cublas_fp8.shape_ok(6144, 4096, (128, 128)) and cublas_fp8.shape_ok(128, 128, [128, 128])
    assert not cublas_fp8.shape_ok(6144, 4000, (128, 128))  # a partial K block
    assert not cublas_fp8.shape_ok(700, 4096, (128, 128))  # a partial N block
    assert not cublas_fp8.shape_ok(6144, 4096, (64, 128))  # cuBLAS scales 128 x 128 blocks only
    assert [cublas_fp8.padded_rows(m) for m in (1, 3, 4, 5, 8, 4097)] == [4, 4, 4, 8, 8, 4100]
    a_q, a_s = ref.per_token_group_quant_fp8(torch.randn(7, 384), 128)
    q, s = cublas_fp8.pad_operands(a_q, a_s)
    assert q.shape == (8, 384) and s.shape == (8, 3) and s.stride() == (1, 8)  # M-major, rows padded
    assert torch.equal(q[:7].view(torch.uint8), a_q.view(torch.uint8)) and torch.equal(s[:7], a_s)
    assert not q[7:].float().any() and torch.equal(s[7:], torch.ones(1, 3))
    assert cublas_fp8.unsupported_reason(torch.device("cpu")) == "not a CUDA device"
    assert cublas_fp8.probed(torch.device("cpu"))


def test_fp8_gemm_backend_setting_and_cpu_routing():
    with pytest.raises(ValueError, match="fp8 GEMM backend"):
        ops.set_fp8_gemm_backend("cutlass")
    # never on a CPU tensor, whatever the threshold
    assert not ops.fp8_uses_cublas(4096, 6144, 4096, (128, 128), torch.device("cpu"))
    from radixlm.runtime.config import EngineConfig

    assert EngineConfig(model_path="m").fp8_gemm_backend == "auto"
    with pytest.raises(ValueError, match="fp8_gemm_backend"):
        EngineConfig(model_path="m", fp8_gemm_backend="cublas")


def test_gemv_threshold_from_the_environment():
    """RADIXLM_FP8_GEMV_MAX_M reaches every process that imports ops (A/B benchmarks set it for the
    scheduler process)."""
    import subprocess
    import sys

    code = (
        "from radixlm.runtime.kernels import ops; "
        "print(ops.fp8_gemv_max_m(6144, 4096, (128, 128)), ops.fp8_gemv_max_m(6144, 4096, (64, 64)))"
    )
    env = {**os.environ, ops.GEMV_MAX_M_ENV: "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "0"]
    env[ops.GEMV_MAX_M_ENV] = "8"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["8", "8"]


def test_tuner_scaled_mm_threshold_rule():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
    import tune_fp8_gemm

    def measured(pairs):  # {M: (triton_us, cublas_us)}
        return {str(m): {"triton_us": t, "cublas_us": c} for m, (t, c) in pairs.items()}

    rule = tune_fp8_gemm.scaled_mm_min_m
    assert rule(measured({64: (10, 9.5), 128: (20, 15), 256: (40, 20)})) == 128  # 64: within the margin
    assert rule(measured({64: (10, 8), 128: (20, 25), 256: (40, 20)})) == 256  # must win at every larger M
    assert rule(measured({64: (10, 8), 128: (20, 15), 256: (40, 39)})) is None  # not at the largest
    assert rule(measured({64: (10, 9.5)}), margin=1.0) == 64


# ------------------------------------------------ gated MLP: activation fused with the quantisation


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("m,inter,group", [(3, 256, 128), (5, 300, 128), (2, 200, 64), (1, 40, 128)])
def test_silu_and_mul_quant_matches_the_two_kernels(dtype, m, inter, group):
    """silu_and_mul_quant_fp8 quantises exactly what the Triton silu_and_mul hands the Triton
    quantiser (bit-equal: the same formula and roundings); that activation matches the reference's
    to an ulp of the dtype (exp evaluated differently), and the reference quantiser on it gives
    the same scales and, but for the interpreter's mis-rounding, the same q."""
    from radixlm.runtime.kernels.triton import activation

    gate_up = (torch.randn(m, 2 * inter) * torch.rand(m, 1) * 6).to(dtype)
    q, s = poisoned_quant_outputs(m, inter, group)
    out_q, out_s = fp8_quant.silu_and_mul_quant_fp8(gate_up, group, out_q=q, out_scale=s)
    assert out_q is q and out_s is s
    h = activation.silu_and_mul(gate_up)
    tq, ts = per_token_group_quant_fp8(h, group)
    assert torch.equal(s, ts) and torch.equal(q.view(torch.uint8), tq.view(torch.uint8))
    tol = {torch.float32: 1e-5, torch.float16: 1e-3}[dtype]
    torch.testing.assert_close(h, ref.silu_and_mul(gate_up), rtol=tol, atol=tol)
    rq, rs = ref.per_token_group_quant_fp8(h, group)
    torch.testing.assert_close(s, rs, rtol=1e-6, atol=0)
    check_q(q, rq)
    e_q, e_s = fp8_quant.silu_and_mul_quant_fp8(gate_up[:0], group)
    assert e_q.shape == (0, inter) and e_s.shape == (0, math.ceil(inter / group))


@pytest.mark.parametrize("fused_silu", [False, True])
def test_fp8_silu_gated_linear_routes_like_fp8_linear(triton_fp8_linear, monkeypatch, fused_silu):
    """The gated down projection: at GEMV sizes silu_and_mul then the GEMV, or with
    RADIXLM_FUSED_SILU_GEMV=1 the GEMV computing the activation itself (the same bits); at W8A8
    sizes the fused
    activation-quantisation kernel (not the plain quantiser) then the GEMM; the same math as
    fp8_linear(silu_and_mul(gate_up)) on either route and on the reference path."""
    calls = triton_fp8_linear
    monkeypatch.setattr(ops, "_fused_silu", fused_silu)
    n, inter = 192, 320
    w_q, w_s = ref.block_quant_fp8(torch.randn(n, inter) * 0.05)
    ops.set_fp8_gemv_max_m(2)
    try:
        for rows, expect_gemv in ((2, True), (7, False)):
            gate_up = torch.randn(rows, 2 * inter, dtype=torch.float32) * 2
            before = dict(calls)
            y = ops.fp8_silu_gated_linear(gate_up, w_q, w_s, None, (128, 128))
            assert y.shape == (rows, n)
            assert (calls["gemv"] > before["gemv"]) == expect_gemv and (
                calls["gemm"] > before["gemm"]
            ) != expect_gemv
            assert calls["quant"] == before["quant"]  # the W8A8 route quantised in the fused kernel
            h = ref.silu_and_mul(gate_up)
            assert (
                rel_err(y, ref.fp8_block_linear(h, w_q, w_s, None, quantize_x=not expect_gemv))
                < LINEAR_TOL_W8A8
            )
            if expect_gemv:
                two_kernels = ops.fp8_linear(ops.silu_and_mul(gate_up), w_q, w_s, None, (128, 128))
                assert torch.equal(y, two_kernels)
            a_q, a_s = fp8_quant.silu_and_mul_quant_fp8(gate_up, 128)
            if not expect_gemv:  # the same math on the kernel's own quantised activation
                assert rel_err(y, ref.w8a8_block_fp8_matmul(a_q, a_s, w_q, w_s)) < LINEAR_TOL_SAME_MATH
            with reference_path():
                torch.testing.assert_close(
                    ops.fp8_silu_gated_linear(gate_up, w_q, w_s, None, (128, 128)),
                    ref.fp8_block_linear(h, w_q, w_s, None, quantize_x=not expect_gemv),
                    rtol=0,
                    atol=0,
                )
    finally:
        ops.set_fp8_gemv_max_m(None)
