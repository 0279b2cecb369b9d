"""The dense GEMV (runtime/kernels/triton/dense_gemv.py: fp8_gemv.py's kernel without scales)
against `x @ w^T` in fp64, on the CPU under the Triton interpreter, and `ops.dense_linear`'s choice
between it and cuBLAS.

The interpreter gets bf16 arithmetic wrong, so operands are fp32 and fp16 here (bf16 is a GPU
test: tests/gpu/test_gpu_kernels.py). Every launch gets fresh random operands and a NaN-poisoned
output.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported anywhere

import pytest
import torch

triton = pytest.importorskip("triton")

from radixlm.runtime.kernels import ops  # noqa: E402
from radixlm.runtime.kernels.triton import dense_gemv, fp8_gemv, gemv_kernel  # noqa: E402
from radixlm.runtime.layers.decoder_blocks import DenseLinear  # noqa: E402

if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("interpreter tests; tests/gpu covers CUDA", allow_module_level=True)

TOL = {torch.float32: 1e-5, torch.float16: 2e-3}  # relative Frobenius error against fp64


def run(m: int, n: int, k: int, dtype: torch.dtype, config: dict | None = None) -> float:
    gen = torch.Generator().manual_seed(m * 1000003 + n * 1009 + k)
    x = torch.randn(m, k, generator=gen).to(dtype)
    w = (torch.randn(n, k, generator=gen) * 0.05).to(dtype)
    out = torch.full((m, n), float("nan"), dtype=dtype)
    dense_gemv.dense_gemv(x, w, config=config, out=out)
    assert not torch.isnan(out).any(), "an output element was not written"
    expected = x.double() @ w.double().t()
    return float((out.double() - expected).norm() / expected.norm())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    "m, n, k, config",
    [
        (1, 256, 512, None),  # default tiles, split-K
        (3, 200, 300, None),  # N and K not multiples of the tiles; BLOCK_M 4 with a clamped row
        (1, 96, 256, {"BLOCK_N": 32, "BLOCK_K": 128, "SPLIT_K": 1}),  # no split: direct store
        (2, 64, 1000, {"BLOCK_N": 16, "BLOCK_K": 64, "SPLIT_K": 4}),  # partial last K step in a split
        (16, 48, 192, {"BLOCK_N": 16, "BLOCK_K": 32, "SPLIT_K": 2, "num_warps": 2}),
    ],
)
def test_dense_gemv_matches_fp64(m, n, k, config, dtype):
    assert run(m, n, k, dtype, config) < TOL[dtype]


def test_dense_gemv_more_splits_than_k_steps_and_counters_reset():
    assert run(2, 64, 100, torch.float32, {"BLOCK_N": 16, "BLOCK_K": 64, "SPLIT_K": 8}) < 1e-5
    counters = gemv_kernel._tile_counters(torch.device("cpu"))
    assert int(counters.abs().sum()) == 0, "a split-K launch left a tile counter set"


def test_dense_gemv_empty_zero_k_and_bad_input():
    assert dense_gemv.dense_gemv(torch.randn(0, 8), torch.randn(4, 8)).shape == (0, 4)
    assert torch.equal(dense_gemv.dense_gemv(torch.randn(2, 0), torch.randn(3, 0)), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="share a float dtype"):
        dense_gemv.dense_gemv(torch.randn(1, 8), torch.randn(4, 8).half())
    with pytest.raises(ValueError, match="M <= 16"):
        dense_gemv.dense_gemv(torch.randn(17, 8), torch.randn(4, 8))
    with pytest.raises(ValueError, match="w \\[N, K\\]"):
        dense_gemv.dense_gemv(torch.randn(1, 8), torch.randn(4, 9))
    with pytest.raises(ValueError, match="contiguous last dim"):
        dense_gemv.dense_gemv(torch.randn(1, 8), torch.randn(8, 4).t())


def test_config_choice_and_threshold_from_the_table():
    table = {
        "_max_m_by_shape": {"4096,4096": 4, "64,64": 99},
        "4096,4096": {"1": {"BLOCK_N": 64, "BLOCK_K": 128, "SPLIT_K": 8, "num_warps": 8, "num_stages": 1}},
    }
    assert dense_gemv.max_m_for(4096, 4096, torch.bfloat16, table) == 4
    assert dense_gemv.max_m_for(4096, 4096, torch.float32, table) == 0  # tuned for 2-byte weights only
    assert dense_gemv.max_m_for(6144, 4096, torch.bfloat16, table) == 0  # not measured: cuBLAS
    assert dense_gemv.max_m_for(64, 64, torch.float16, table) == fp8_gemv.MAX_M  # clamped
    cfg = dense_gemv.choose_config(1, 4096, 4096, table)
    assert (cfg.BLOCK_N, cfg.BLOCK_K, cfg.SPLIT_K, cfg.num_warps) == (64, 128, 8, 8)
    assert dense_gemv.choose_config(1, 6144, 4096, table) == dense_gemv.default_config(1, 6144, 4096)


def test_shipped_table_is_well_formed():
    table = dense_gemv.load_configs()
    assert "_max_m_by_shape" in table, f"{dense_gemv.CONFIG_FILE} missing or unreadable"
    for shape, value in table["_max_m_by_shape"].items():
        n, k = (int(v) for v in shape.split(","))
        assert isinstance(value, int) and 0 <= value <= fp8_gemv.MAX_M
        for bucket in (1, 2, 4, 8, 16):
            if value >= bucket:  # every M it dispatches has tiles that run
                dense_gemv.choose_config(bucket, n, k, table)


def test_dense_linear_takes_the_gemv_only_where_measured(monkeypatch):
    """`ops.dense_linear` on a "CUDA" tensor (the check faked, the kernel run by the interpreter):
    the GEMV at M up to the shape's threshold, cuBLAS's `F.linear` above it and for other shapes."""
    calls = []
    real = dense_gemv.dense_gemv
    monkeypatch.setattr(ops, "uses_triton", lambda x: True)
    monkeypatch.setattr(dense_gemv, "max_m_for", lambda n, k, dtype: 2 if (n, k) == (48, 64) else 0)
    monkeypatch.setattr(
        dense_gemv, "dense_gemv", lambda x, w, gated=False: calls.append(x.shape) or real(x, w, gated=gated)
    )
    w, b = torch.randn(48, 64).half(), torch.randn(48).half()
    for shape in [(1, 64), (2, 64), (1, 2, 64), (3, 64)]:
        x = torch.randn(*shape).half()
        out = ops.dense_linear(x, w, b)
        expected = x.double() @ w.double().t() + b.double()
        assert out.shape == (*shape[:-1], 48)
        assert float((out.double() - expected).norm() / expected.norm()) < 2e-3
    assert calls == [(1, 64), (2, 64), (2, 64)]  # the 3-row batch went to F.linear
    ops.dense_linear(torch.randn(1, 32).half(), torch.randn(48, 32).half())  # another shape: F.linear
    assert len(calls) == 3


def test_dense_linear_module_equals_nn_linear_on_cpu():
    torch.manual_seed(0)
    layer = DenseLinear(32, 24, bias=True)
    plain = torch.nn.Linear(32, 24, bias=True)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(5, 32)
    assert torch.equal(layer(x), plain(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    "m, n, k, config",
    [
        (1, 64, 512, None),  # default tiles, split-K
        (3, 40, 300, {"BLOCK_N": 16, "BLOCK_K": 64, "SPLIT_K": 2}),  # partial last K step, clamped row
    ],
)
def test_gated_gemv_equals_silu_and_mul_then_gemv(m, n, k, config, dtype):
    """gated=True computes silu_and_mul(gate_up) inside the GEMV: the same bits as the activation
    kernel followed by the plain GEMV with the same tiles."""
    from radixlm.runtime.kernels.triton import activation

    gen = torch.Generator().manual_seed(m * 7 + n * 131 + k)
    gate_up = (torch.randn(m, 2 * k, generator=gen) * 2).to(dtype)
    w = (torch.randn(n, k, generator=gen) * 0.05).to(dtype)
    fused = torch.full((m, n), float("nan"), dtype=dtype)
    dense_gemv.dense_gemv(gate_up, w, config=config, out=fused, gated=True)
    plain = dense_gemv.dense_gemv(activation.silu_and_mul(gate_up), w, config=config)
    assert torch.equal(fused, plain)
    with pytest.raises(ValueError, match="gate_up \\[M, 2K\\]"):
        dense_gemv.dense_gemv(gate_up[:, :-1], w, gated=True)


def test_gated_mlp_down_projection_takes_the_fused_gemv(monkeypatch):
    """`DenseLinear.forward_silu_gated` (the gated MLP's down projection) on the GEMV route, with
    RADIXLM_FUSED_SILU_GEMV=1, is one gated GEMV with the same result as silu_and_mul then the
    linear; elsewhere, and by default, the two steps."""
    calls = []
    monkeypatch.setattr(ops, "_fused_silu", True)
    real = dense_gemv.dense_gemv
    monkeypatch.setattr(ops, "uses_triton", lambda x: True)
    monkeypatch.setattr(dense_gemv, "max_m_for", lambda n, k, dtype: 2)
    monkeypatch.setattr(
        dense_gemv, "dense_gemv", lambda x, w, gated=False: calls.append(gated) or real(x, w, gated=gated)
    )
    torch.manual_seed(1)
    layer = DenseLinear(64, 48, bias=False).half()
    for rows in (1, 3):  # 1 row: the fused GEMV; 3 rows: silu_and_mul then F.linear
        gate_up = torch.randn(rows, 128).half()
        expected = ops.dense_linear(ops.silu_and_mul(gate_up), layer.weight)
        assert torch.equal(layer.forward_silu_gated(gate_up), expected)
    assert calls == [False, True]  # rows=1: the plain GEMV of the expected value, then the fused one
    monkeypatch.setattr(ops, "_fused_silu", False)
    gate_up = torch.randn(1, 128).half()
    assert torch.equal(
        layer.forward_silu_gated(gate_up), ops.dense_linear(ops.silu_and_mul(gate_up), layer.weight)
    )
    assert calls == [False, True, False, False]  # off: silu_and_mul, then the plain GEMV
