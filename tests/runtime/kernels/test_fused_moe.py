"""The fused MoE Triton kernel (runtime/kernels/triton/fused_moe.py) against its PyTorch reference
(`reference.fused_moe`), under the Triton interpreter on the CPU; the routing and the token sort
(`moe_align_block_size`) on their own; the config table and its fallback.

As for the other kernels, the interpreter's bf16 is unreliable, so 16-bit means fp16 here (bf16 is
tests/gpu/test_gpu_fused_moe.py), and its fp32 -> e4m3 cast rounds wrongly, so the fp8 path is fed
weights quantised by the reference and activations quantised by the reference's quantiser (the
kernel's fp8 loads, dots and scales are what is checked). Every buffer the kernel path allocates is
poisoned with NaN (`poisoned_empty`), so an element it fails to write shows up. Sizes are small:
the interpreter runs every program in Python.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported anywhere

import pytest
import torch

triton = pytest.importorskip("triton")

from moe_inputs import make_inputs, poison_empty, quantize_experts, rel_err  # noqa: E402

from radixlm.runtime.kernels import ops  # noqa: E402
from radixlm.runtime.kernels import reference as ref  # noqa: E402
from radixlm.runtime.kernels.triton import fused_moe as fm  # noqa: E402
from radixlm.runtime.kernels.triton import moe_align as ma  # noqa: E402

if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("interpreter tests; tests/gpu covers CUDA", allow_module_level=True)

TOL = {torch.float32: 1e-5, torch.float16: 2e-3}  # relative Frobenius error vs the reference
poisoned_empty = pytest.fixture(poison_empty)


# ------------------------------------------------------------------------------------ routing
def test_moe_topk_softmax_and_renormalisation():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 3.0, 1.0]])
    w, ids = ref.moe_topk(logits, 2, renormalize=False)
    probs = torch.softmax(logits, -1)
    assert ids.dtype == torch.int32 and ids.tolist() == [[0, 1], [2, 3]]
    torch.testing.assert_close(w, probs.gather(1, ids.long()))
    w2, _ = ref.moe_topk(logits, 2, renormalize=True)
    torch.testing.assert_close(w2.sum(-1), torch.ones(2))
    torch.testing.assert_close(w2, w / w.sum(-1, keepdim=True))


@pytest.mark.parametrize(
    "t, e, top_k, block_m",
    [(1, 8, 2, 16), (5, 16, 4, 16), (300, 8, 2, 64), (33, 4, 1, 32), (200, 128, 8, 16)],
)
def test_align_block_size(t, e, top_k, block_m):
    gen = torch.Generator().manual_seed(t)
    ids = torch.stack([torch.randperm(e, generator=gen)[:top_k] for _ in range(t)]).to(torch.int32)
    if t > 10:
        ids[ids == 1] = 0  # expert 1 gets no tokens
    sorted_ids, expert_ids, num_padded = ma.moe_align_block_size_torch(ids, e, block_m)
    n = t * top_k
    assert sorted_ids.numel() % block_m == 0 and sorted_ids.numel() >= n + min(e, n) * (block_m - 1)
    assert expert_ids.numel() == sorted_ids.numel() // block_m
    counts = torch.bincount(ids.reshape(-1).long(), minlength=e)
    padded = (counts + block_m - 1) // block_m * block_m
    assert int(num_padded) == int(padded.sum())
    used = sorted_ids[: int(num_padded)]
    real = used[used < n]
    assert sorted(real.tolist()) == list(range(n)), "every (token, k) pair exactly once"
    assert (sorted_ids[int(num_padded) :] == n).all()
    flat = ids.reshape(-1)
    for b in range(int(num_padded) // block_m):
        rows = used[b * block_m : (b + 1) * block_m]
        rows = rows[rows < n].long()
        assert rows.numel() > 0, "a block with no real row was allocated"
        assert (flat[rows] == expert_ids[b]).all()
        assert rows.tolist() == sorted(rows.tolist()), "stable: pair order within an expert"
    assert 1 not in expert_ids[: int(num_padded) // block_m].tolist() or t <= 10
    # the one-program Triton version (CUDA's for up to ALIGN_KERNEL_MAX_PAIRS pairs): the same
    # lengths and block experts, the same pairs in each expert's run (their order may differ)
    t_sorted, t_experts, t_padded = ma._moe_align_triton(ids, e, block_m)
    assert int(t_padded) == int(num_padded) and torch.equal(t_experts, expert_ids)
    assert t_sorted.shape == sorted_ids.shape and (t_sorted[int(num_padded) :] == n).all()
    for ex in range(e):
        run = (expert_ids == ex).repeat_interleave(block_m)
        assert sorted(t_sorted[run].tolist()) == sorted(sorted_ids[run].tolist()), ex


# ------------------------------------------------------------------------------ 16-bit / fp32
CASES = [
    # (tokens, experts, top_k, hidden, inter, experts that receive tokens)
    (1, 8, 2, 64, 32, None),  # decode: 6 of 8 experts get nothing
    (7, 16, 4, 64, 48, None),
    (64, 8, 2, 96, 64, 3),  # only 3 experts used: 5 with no tokens
    (300, 8, 2, 64, 32, None),
    (50, 4, 1, 80, 40, None),  # top-1: no reduction; K and N not multiples of the tiles
]


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("t, e, top_k, hidden, inter, used", CASES)
def test_fused_moe_matches_reference(poisoned_empty, dtype, t, e, top_k, hidden, inter, used):
    x, w13, w2, weights, ids = make_inputs(t, e, top_k, hidden, inter, dtype, used, seed=t + e)
    out = fm.fused_moe(x, w13, w2, weights, ids)
    expected = ref.fused_moe(x, w13, w2, weights, ids)
    assert out.shape == (t, hidden) and out.dtype == dtype
    assert rel_err(out, expected) < TOL[dtype]


@pytest.mark.parametrize(
    "config",
    [
        fm.FusedMoeConfig(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, GROUP_M=1),
        fm.FusedMoeConfig(BLOCK_M=32, BLOCK_N=32, BLOCK_K=16, GROUP_M=4),
        fm.FusedMoeConfig(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, GROUP_M=8),
    ],
    ids=lambda c: f"m{c.BLOCK_M}n{c.BLOCK_N}k{c.BLOCK_K}g{c.GROUP_M}",
)
def test_fused_moe_tiles(poisoned_empty, config):
    x, w13, w2, weights, ids = make_inputs(45, 8, 2, 72, 40, torch.float32, seed=3)
    out = fm.fused_moe(x, w13, w2, weights, ids, config=config)
    assert rel_err(out, ref.fused_moe(x, w13, w2, weights, ids)) < TOL[torch.float32]


def test_gate_up_gemm_writes_every_row_and_nothing_else():
    """Step 2 alone on a poisoned output: every (token, k) row written with silu(gate) * up of its
    expert, computed from x's row for that token."""
    t, e, top_k, hidden, inter = 9, 4, 2, 32, 16
    x, w13, _, _, ids = make_inputs(t, e, top_k, hidden, inter, torch.float32, seed=5)
    cfg = fm.FusedMoeConfig(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=1)
    align = ma.moe_align_block_size(ids, e, cfg.BLOCK_M)
    mid = torch.full((t * top_k, inter), float("nan"))
    fm.invoke_moe_gemm(x, None, w13, None, mid, None, *align, top_k, True, cfg)
    for row in range(t * top_k):
        gu = w13[ids.reshape(-1)[row]] @ x[row // top_k]
        torch.testing.assert_close(mid[row], torch.nn.functional.silu(gu[:inter]) * gu[inter:])


def test_empty_batch_and_ops_dispatch():
    x, w13, w2, weights, ids = make_inputs(0, 4, 2, 32, 16, torch.float32)
    assert fm.fused_moe(x, w13, w2, weights, ids).shape == (0, 32)
    assert ref.fused_moe(x, w13, w2, weights, ids).shape == (0, 32)
    x, w13, w2, weights, ids = make_inputs(3, 4, 2, 32, 16, torch.float32)
    # CPU tensors take the reference through ops
    assert torch.equal(ops.fused_moe(x, w13, w2, weights, ids), ref.fused_moe(x, w13, w2, weights, ids))


# ------------------------------------------------------------------------------------ fp8
FP8_CASES = [
    # (tokens, experts, top_k, hidden, inter, block)
    (1, 8, 2, 64, 64, (32, 32)),
    (40, 16, 4, 96, 64, (32, 32)),
    (24, 4, 2, 80, 40, (32, 32)),  # I = 40: gate and up share a scale block; partial K groups
    (130, 8, 2, 256, 128, (128, 128)),
]


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("t, e, top_k, hidden, inter, block", FP8_CASES)
def test_fused_moe_fp8_matches_reference(poisoned_empty, dtype, t, e, top_k, hidden, inter, block):
    x, w13, w2, weights, ids = make_inputs(t, e, top_k, hidden, inter, dtype, seed=t)
    (q13, s13), (q2, s2) = quantize_experts(w13, block), quantize_experts(w2, block)
    out = fm.fused_moe(x, q13, q2, weights, ids, s13, s2, block, quantize=ref.per_token_group_quant_fp8)
    expected = ref.fused_moe(x, q13, q2, weights, ids, s13, s2, block)
    # fp16: an intermediate value one ulp apart can land in another e4m3 step
    assert rel_err(out, expected) < {torch.float32: 1e-5, torch.float16: 5e-3}[dtype]


def test_fp8_reference_is_close_to_the_unquantised_experts():
    x, w13, w2, weights, ids = make_inputs(20, 8, 2, 128, 64, torch.float32, seed=9)
    (q13, s13), (q2, s2) = quantize_experts(w13, (32, 32)), quantize_experts(w2, (32, 32))
    got = ref.fused_moe(x, q13, q2, weights, ids, s13, s2, (32, 32))
    assert rel_err(got, ref.fused_moe(x, w13, w2, weights, ids)) < 0.08  # e4m3 keeps 3 mantissa bits


# ----------------------------------------------------------------------------------- configs
def test_default_config_by_rows_per_expert():
    decode = fm.default_config(1, 128, 8, fp8=False)
    prefill = fm.default_config(8192, 128, 8, fp8=False)
    assert decode.BLOCK_M == 16 and prefill.BLOCK_M == 128
    assert fm.default_config(8192, 128, 8, fp8=True, block_size=(128, 128)).BLOCK_K == 128
    assert fm.default_config(64, 8, 2, fp8=True, block_size=(32, 32)).BLOCK_K == 32


def test_choose_config_reads_the_table_and_falls_back(tmp_path):
    key = fm.config_key(8, 64, 32, 2, False)
    table = {
        "_block_size": [128, 128],
        key: {
            "1": {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 1, "num_warps": 2, "num_stages": 2},
            "64": {
                "BLOCK_M": 32,
                "BLOCK_N": 64,
                "BLOCK_K": 64,
                "GROUP_M": 4,
                "num_warps": 4,
                "num_stages": 3,
            },
        },
        fm.config_key(8, 64, 32, 2, True): {"16": {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 256}},
    }
    path = tmp_path / "moe.json"
    path.write_text(json.dumps(table))
    loaded = fm.load_configs(path)
    assert fm.choose_config(1, 8, 64, 32, 2, False, configs=loaded).num_warps == 2
    assert fm.choose_config(40, 8, 64, 32, 2, False, configs=loaded).BLOCK_M == 32  # bucket 64
    assert fm.choose_config(5000, 8, 64, 32, 2, False, configs=loaded).BLOCK_M == 32  # past the largest
    # another shape, and an fp8 entry whose BLOCK_K does not divide block_k: the defaults
    assert fm.choose_config(1, 16, 64, 32, 2, False, configs=loaded) == fm.default_config(1, 16, 2, False)
    assert fm.choose_config(16, 8, 64, 32, 2, True, (128, 128), loaded) == fm.default_config(
        16, 8, 2, True, (128, 128)
    )
    assert fm.load_configs(tmp_path / "missing.json") == {}
    shipped = fm.load_configs()
    assert shipped.get("_block_size") == [128, 128]
    for k, by_t in shipped.items():
        if not k.startswith("_"):
            assert all(fm.FusedMoeConfig.from_dict(c).BLOCK_M >= 16 for c in by_t.values())
