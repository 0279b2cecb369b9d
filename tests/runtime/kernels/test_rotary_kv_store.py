"""The fused rotary + K/V store (runtime/kernels/triton/rotary.py `rotary_and_store_kv`) against the
two kernels it replaces (apply_rotary then store_kv) and the reference, under the Triton
interpreter on the CPU, and the attention backend's fused path against its unfused one.

The fused kernel must write the same bits as the two-kernel sequence (greedy parity depends on
it), so results are compared bit for bit, NaN payloads included. As in test_triton_kernels.py:
fresh random inputs per check, fp16/fp32 only (the interpreter's bf16 arithmetic and fp32->fp8
cast are wrong; tests/gpu/test_gpu_rotary_kv_store.py covers bf16 and fp8 pools), and every
output poisoned first: pool rows no token owns hold garbage and NaN and must come back unchanged,
as must the padding columns around the q/k/v views.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported anywhere

import pytest
import torch

triton = pytest.importorskip("triton")

from radixlm.runtime.kernels import ops  # noqa: E402
from radixlm.runtime.kernels import reference as ref  # noqa: E402
from radixlm.runtime.kernels.triton.kv_store import store_kv  # noqa: E402
from radixlm.runtime.kernels.triton.rotary import apply_rotary, rotary_and_store_kv  # noqa: E402
from radixlm.runtime.layers.attention import AttentionBackend  # noqa: E402
from radixlm.runtime.model_executor.forward_batch import ForwardBatch, ForwardMode  # noqa: E402
from radixlm.runtime.radix.memory_pool import KVPool, ReqToTokenPool  # noqa: E402

if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("interpreter tests; tests/gpu covers CUDA", allow_module_level=True)

MAX_POS = 1024
PAD = 8  # poisoned columns after v in each row of the fused qkv tensor


def bits(x: torch.Tensor) -> torch.Tensor:
    """x's raw bits, so that comparisons are exact and NaN compares equal to the same NaN."""
    return x.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[x.element_size()])


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(bits(a), bits(b))


def rope_tables(head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    emb = torch.arange(MAX_POS).float()[:, None] * inv_freq[None, :]
    emb = torch.cat([emb, emb], dim=-1)
    return emb.cos(), emb.sin()


def make_inputs(tokens: int, heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype, num_slots: int):
    """q/k/v as row-strided views of one [T, (H + 2 Hkv) D + PAD] tensor (as the model's qkv
    projection gives them, padding poisoned), a pool of garbage with some NaN, distinct random
    slots and random positions."""
    width = (heads + 2 * kv_heads) * head_dim
    qkv = torch.randn(tokens, width + PAD).to(dtype)
    qkv[:, width:] = float("nan")
    q = qkv[:, : heads * head_dim].view(tokens, heads, head_dim)
    k = qkv[:, heads * head_dim : (heads + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
    v = qkv[:, (heads + kv_heads) * head_dim : width].view(tokens, kv_heads, head_dim)
    pools = []
    for _ in range(2):
        buf = (torch.randn(num_slots, kv_heads, head_dim) * 1e3).to(dtype)
        buf[torch.rand(num_slots) < 0.3] = float("nan")
        pools.append(buf)
    slots = torch.randperm(num_slots)[:tokens]
    positions = torch.randint(0, MAX_POS, (tokens,))
    return qkv, q, k, v, pools[0], pools[1], slots, positions


def split(qkv: torch.Tensor, heads: int, kv_heads: int, head_dim: int):
    t = qkv.shape[0]
    q = qkv[:, : heads * head_dim].view(t, heads, head_dim)
    k = qkv[:, heads * head_dim : (heads + kv_heads) * head_dim].view(t, kv_heads, head_dim)
    v = qkv[:, (heads + kv_heads) * head_dim : (heads + 2 * kv_heads) * head_dim].view(t, kv_heads, head_dim)
    return q, k, v


# (num_kv_heads, num_heads, head_dim): MHA, GQA 4 and 8, head counts that are not powers of two,
# and a head dim whose half (40) is not a power of two (the rotary kernel masks it)
SHAPES = [(2, 2, 64), (2, 8, 128), (1, 8, 64), (3, 12, 80)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("kv_heads,heads,head_dim", SHAPES)
@pytest.mark.parametrize("tokens", [1, 3, 17])
def test_fused_matches_the_two_kernels_bit_for_bit(dtype, kv_heads, heads, head_dim, tokens):
    _check(dtype, kv_heads, heads, head_dim, tokens)


# 300 tokens: every shape once (the interpreter takes ~5 s a case), the dtypes alternating
@pytest.mark.parametrize("dtype,shape", list(zip([torch.float16, torch.float32] * 2, SHAPES)))
def test_fused_matches_at_300_tokens(dtype, shape):
    _check(dtype, *shape, 300)


def _check(dtype: torch.dtype, kv_heads: int, heads: int, head_dim: int, tokens: int) -> None:
    cos, sin = rope_tables(head_dim)
    qkv, q, k, v, kb, vb, slots, positions = make_inputs(
        tokens, heads, kv_heads, head_dim, dtype, 2 * tokens + 5
    )
    # the two kernels in sequence, on copies
    qkv2, kb2, vb2 = qkv.clone(), kb.clone(), vb.clone()
    q2, k2, v2 = split(qkv2, heads, kv_heads, head_dim)
    apply_rotary(positions, q2, k2, cos, sin)
    store_kv(k2, v2, kb2, vb2, slots)
    # the reference, on copies
    kb3, vb3 = kb.clone(), vb.clone()
    exp_q, exp_k = ref.rotary_and_store_kv(positions, q, k, v, cos, sin, kb3, vb3, slots)

    out_q, out_k = rotary_and_store_kv(positions, q, k, v, cos, sin, kb, vb, slots)
    assert out_q is q and out_k is k  # in place
    assert same_bits(qkv, qkv2)  # q and k rotated alike, v and the padding untouched
    assert same_bits(kb, kb2) and same_bits(vb, vb2)  # owned rows written alike, the rest untouched
    # the reference agrees too (no FMA on the CPU: the same fp32 operations in the same order)
    assert same_bits(q, exp_q) and same_bits(k, exp_k)
    assert same_bits(kb, kb3) and same_bits(vb, vb3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_fused_without_keep_k_leaves_k_as_it_came(dtype):
    heads, kv_heads, head_dim, tokens = 8, 2, 64, 5
    cos, sin = rope_tables(head_dim)
    qkv, q, k, v, kb, vb, slots, positions = make_inputs(tokens, heads, kv_heads, head_dim, dtype, 16)
    qkv2, kb2, vb2 = qkv.clone(), kb.clone(), vb.clone()
    q2, k2, v2 = split(qkv2, heads, kv_heads, head_dim)
    apply_rotary(positions, q2, k2, cos, sin)
    store_kv(k2, v2, kb2, vb2, slots)
    k_before = k.clone()

    out_q, out_k = rotary_and_store_kv(positions, q, k, v, cos, sin, kb, vb, slots, keep_k=False)
    assert out_q is q and out_k is None
    assert same_bits(k, k_before)
    assert same_bits(q, q2) and same_bits(kb, kb2) and same_bits(vb, vb2)


def test_fused_with_scales_into_a_half_pool_and_no_tokens():
    """fp32 activations into an fp16 pool with scales of 1 (a non-fp8 pool ignores them, as
    store_kv does), and an empty batch, which launches nothing."""
    heads, kv_heads, head_dim, tokens = 4, 2, 64, 7
    cos, sin = rope_tables(head_dim)
    qkv, q, k, v, _, _, slots, positions = make_inputs(tokens, heads, kv_heads, head_dim, torch.float32, 20)
    kb = torch.full((20, kv_heads, head_dim), float("nan"), dtype=torch.float16)
    vb = torch.full((20, kv_heads, head_dim), float("nan"), dtype=torch.float16)
    kb2, vb2, qkv2 = kb.clone(), vb.clone(), qkv.clone()
    q2, k2, v2 = split(qkv2, heads, kv_heads, head_dim)
    apply_rotary(positions, q2, k2, cos, sin)
    store_kv(k2, v2, kb2, vb2, slots)
    rotary_and_store_kv(positions, q, k, v, cos, sin, kb, vb, slots)
    assert same_bits(qkv, qkv2) and same_bits(kb, kb2) and same_bits(vb, vb2)

    empty = torch.empty(0, heads, head_dim)
    empty_kv = torch.empty(0, kv_heads, head_dim)
    no_slots = torch.empty(0, dtype=torch.int64)
    out = rotary_and_store_kv(no_slots, empty, empty_kv, empty_kv, cos, sin, kb, vb, no_slots)
    assert out[0] is empty and same_bits(kb, kb2)


def test_ops_dispatch_on_cpu_is_the_reference_sequence():
    heads, kv_heads, head_dim, tokens = 4, 2, 64, 6
    cos, sin = rope_tables(head_dim)
    _, q, k, v, kb, vb, slots, positions = make_inputs(tokens, heads, kv_heads, head_dim, torch.float32, 16)
    kb2, vb2 = kb.clone(), vb.clone()
    exp_q, exp_k = ref.apply_rotary(positions, q, k, cos, sin)
    ref.store_kv(exp_k, v, kb2, vb2, slots, 0.5, 2.0)
    out_q, out_k = ops.rotary_and_store_kv(positions, q, k, v, cos, sin, kb, vb, slots, 0.5, 2.0)
    assert same_bits(out_q, exp_q) and same_bits(out_k, exp_k)
    assert same_bits(kb, kb2) and same_bits(vb, vb2)
    assert ops.rotary_and_store_kv(positions, q, k, v, cos, sin, kb, vb, slots, keep_k=False)[1] is None


# ------------------------------------------------------------------ the attention backend's fused path


def _batch(mode: ForwardMode, prefix: list[int], extend: list[int], pool: KVPool, req: ReqToTokenPool):
    """A batch of len(prefix) requests in rows 0.., each with `prefix[i]` cached tokens (already
    in the pool) and `extend[i]` new ones, in random slots."""
    total = sum(p + e for p, e in zip(prefix, extend))
    slots = (torch.randperm(pool.num_slots)[:total] + 1).to(torch.int64)
    new_slots, positions, start = [], [], 0
    for row, (p, e) in enumerate(zip(prefix, extend)):
        req.req_to_token[row, : p + e] = slots[start : start + p + e].to(torch.int32)
        new_slots.append(slots[start + p : start + p + e])
        positions.append(torch.arange(p, p + e))
        start += p + e
    tokens = sum(extend)
    return ForwardBatch(
        mode=mode,
        input_ids=torch.zeros(tokens, dtype=torch.int64),
        positions=torch.cat(positions),
        out_cache_loc=torch.cat(new_slots),
        req_pool_indices=torch.arange(len(prefix)),
        seq_lens=torch.tensor([p + e for p, e in zip(prefix, extend)]),
        prefix_lens=torch.tensor(prefix),
        extend_lens=torch.tensor(extend),
        prefix_lens_cpu=list(prefix),
        extend_lens_cpu=list(extend),
        logits_indices=torch.arange(tokens),
        sample_rows=list(range(len(prefix))),
    )


@pytest.mark.parametrize(
    "mode,prefix,extend",
    [(ForwardMode.EXTEND, [0, 5], [7, 3]), (ForwardMode.DECODE, [6, 9, 1], [1, 1, 1])],
)
def test_backend_with_rope_equals_rotary_then_backend(mode, prefix, extend):
    """forward(q, k, v, rope=(cos, sin)) on unrotated q/k gives what the model's former sequence,
    rotary then forward(q, k, v), gives: the same output and the same pool (cached prefix random)."""
    heads, kv_heads, head_dim = 8, 2, 64
    cos, sin = rope_tables(head_dim)
    cpu = torch.device("cpu")
    backends = []
    for _ in range(2):
        pool = KVPool(64, 1, kv_heads, head_dim, torch.float32, cpu)
        backends.append(AttentionBackend(pool, ReqToTokenPool(4, 32, cpu), heads, head_dim, use_triton=False))
    batch = _batch(mode, prefix, extend, backends[0].kv_pool, backends[0].req_pool)
    backends[1].req_pool.req_to_token.copy_(backends[0].req_pool.req_to_token)
    for name in ("k_buffers", "v_buffers"):
        prior = torch.randn_like(getattr(backends[0].kv_pool, name)[0])
        for b in backends:
            getattr(b.kv_pool, name)[0].copy_(prior)

    tokens = sum(extend)
    q, k, v = torch.randn(tokens, heads, head_dim), *torch.randn(2, tokens, kv_heads, head_dim)
    backends[0].init_forward_metadata(batch)
    rq, rk = ref.apply_rotary(batch.positions, q, k, cos, sin)
    expected = backends[0].forward(rq, rk, v, 0, batch)
    backends[1].init_forward_metadata(batch)
    out = backends[1].forward(q, k, v, 0, batch, rope=(cos, sin))
    assert same_bits(out, expected)
    for name in ("k_buffers", "v_buffers"):
        assert same_bits(getattr(backends[1].kv_pool, name)[0], getattr(backends[0].kv_pool, name)[0])
