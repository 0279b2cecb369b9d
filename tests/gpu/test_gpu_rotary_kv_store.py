"""The fused rotary + K/V store (runtime/kernels/triton/rotary.py `rotary_and_store_kv`) on a CUDA
device: bit for bit against the two Triton kernels it replaces (apply_rotary then store_kv), in
bf16/fp16/fp32 with bf16, fp16, fp32 and fp8 (scaled) pools, GQA and non-power-of-two shapes,
1 to 8192 tokens, and inside a CUDA graph. Skipped where CUDA is absent (CI); run on the GPU
machine with `pytest tests/gpu/test_gpu_rotary_kv_store.py`.

Greedy parity rests on the fused kernel writing exactly what the pair wrote, so every comparison
is of raw bits. Fresh random inputs per check; the pool is poisoned (garbage and NaN) and its
rows no token owns must come back unchanged, as must the padding around the q/k/v views.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

if torch.cuda.is_available():
    from radixlm.runtime.kernels import ops
    from radixlm.runtime.kernels.triton.kv_store import store_kv
    from radixlm.runtime.kernels.triton.rotary import apply_rotary, rotary_and_store_kv

DEV = "cuda"
FP8 = torch.float8_e4m3fn
MAX_POS = 8192
PAD = 8  # poisoned columns after v in each row of the qkv tensor


def bits(x: torch.Tensor) -> torch.Tensor:
    return x.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[x.element_size()])


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(bits(a), bits(b))


def rope_tables(head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (500000 ** (torch.arange(0, head_dim, 2, device=DEV).float() / head_dim))
    emb = torch.arange(MAX_POS, device=DEV).float()[:, None] * inv_freq[None, :]
    emb = torch.cat([emb, emb], dim=-1)
    return emb.cos(), emb.sin()


def views(qkv: torch.Tensor, heads: int, kv_heads: int, head_dim: int):
    t = qkv.shape[0]
    q = qkv[:, : heads * head_dim].view(t, heads, head_dim)
    k = qkv[:, heads * head_dim : (heads + kv_heads) * head_dim].view(t, kv_heads, head_dim)
    v = qkv[:, (heads + kv_heads) * head_dim : (heads + 2 * kv_heads) * head_dim].view(t, kv_heads, head_dim)
    return q, k, v


def poisoned_pool(num_slots: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> torch.Tensor:
    buf = torch.randn(num_slots, kv_heads, head_dim, device=DEV) * 100
    buf[torch.rand(num_slots, device=DEV) < 0.3] = float("nan")
    return buf.to(dtype)


def make_case(
    tokens: int, heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype, pool_dtype: torch.dtype
):
    width = (heads + 2 * kv_heads) * head_dim
    # scaled so that fp8 pools see values that saturate at 448 as well as ordinary ones
    qkv = (torch.randn(tokens, width + PAD, device=DEV) * 4).to(dtype)
    qkv[:, width:] = float("nan")
    num_slots = tokens + 1000
    kb = poisoned_pool(num_slots, kv_heads, head_dim, pool_dtype)
    vb = poisoned_pool(num_slots, kv_heads, head_dim, pool_dtype)
    slots = torch.randperm(num_slots, device=DEV)[:tokens]
    positions = torch.randint(0, MAX_POS, (tokens,), device=DEV)
    return qkv, kb, vb, slots, positions


# (num_kv_heads, num_heads, head_dim): 8B-like, GQA 8, MHA, non-powers of two (heads, half dim)
SHAPES = [(8, 32, 128), (1, 8, 128), (4, 4, 64), (2, 12, 64), (4, 28, 80)]
# (activation dtype, pool dtype, k_scale, v_scale)
POOLS = [
    (torch.bfloat16, torch.bfloat16, 1.0, 1.0),
    (torch.float16, torch.float16, 1.0, 1.0),
    (torch.float32, torch.float32, 1.0, 1.0),
    (torch.float32, torch.bfloat16, 1.0, 1.0),
    (torch.bfloat16, FP8, 1.0, 1.0),
    (torch.bfloat16, FP8, 0.02, 0.5),
    (torch.float16, FP8, 0.05, 2.0),
]
POOL_IDS = ["bf16", "fp16", "fp32", "fp32-to-bf16", "bf16-to-fp8", "bf16-to-fp8-scaled", "fp16-to-fp8-scaled"]


@pytest.mark.parametrize("dtype,pool_dtype,k_scale,v_scale", POOLS, ids=POOL_IDS)
@pytest.mark.parametrize("kv_heads,heads,head_dim", SHAPES)
@pytest.mark.parametrize("tokens", [1, 17, 300, 8192])
@pytest.mark.parametrize("keep_k", [True, False])
def test_fused_matches_the_two_kernels_bit_for_bit(
    dtype, pool_dtype, k_scale, v_scale, kv_heads, heads, head_dim, tokens, keep_k
):
    cos, sin = rope_tables(head_dim)
    qkv, kb, vb, slots, positions = make_case(tokens, heads, kv_heads, head_dim, dtype, pool_dtype)
    qkv2, kb2, vb2 = qkv.clone(), kb.clone(), vb.clone()
    q2, k2, v2 = views(qkv2, heads, kv_heads, head_dim)
    apply_rotary(positions, q2, k2, cos, sin)
    store_kv(k2, v2, kb2, vb2, slots, k_scale, v_scale)

    q, k, v = views(qkv, heads, kv_heads, head_dim)
    k_before = k.clone()
    out_q, out_k = rotary_and_store_kv(positions, q, k, v, cos, sin, kb, vb, slots, k_scale, v_scale, keep_k)
    torch.cuda.synchronize()
    assert out_q is q and (out_k is k if keep_k else out_k is None)
    assert same_bits(kb, kb2) and same_bits(vb, vb2)
    if keep_k:
        assert same_bits(qkv, qkv2)  # q, k rotated alike; v and the padding untouched
    else:
        assert same_bits(q, q2) and same_bits(k, k_before) and same_bits(v, v2)
        width = (heads + 2 * kv_heads) * head_dim
        assert same_bits(qkv[:, width:], qkv2[:, width:])


@pytest.mark.parametrize("pool_dtype", [torch.bfloat16, FP8])
def test_ops_dispatch_and_cuda_graph_replay(pool_dtype):
    """ops.rotary_and_store_kv takes the fused kernel on CUDA and captures into a CUDA graph (no
    host sync, no allocation); each replay, on new inputs copied into the captured buffers,
    writes what the two kernels write."""
    kv_heads, heads, head_dim, tokens = 8, 32, 128, 4
    scales = (0.02, 0.5) if pool_dtype == FP8 else (1.0, 1.0)
    cos, sin = rope_tables(head_dim)
    qkv, kb, vb, slots, positions = make_case(tokens, heads, kv_heads, head_dim, torch.bfloat16, pool_dtype)
    q, k, v = views(qkv, heads, kv_heads, head_dim)
    ops.rotary_and_store_kv(positions, q, k, v, cos, sin, kb, vb, slots, *scales)  # compile first
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        ops.rotary_and_store_kv(positions, q, k, v, cos, sin, kb, vb, slots, *scales, keep_k=False)
    torch.cuda.current_stream().wait_stream(stream)
    for _ in range(3):
        new_qkv, new_kb, new_vb, new_slots, new_positions = make_case(
            tokens, heads, kv_heads, head_dim, torch.bfloat16, pool_dtype
        )
        for static, new in (
            (qkv, new_qkv),
            (kb, new_kb),
            (vb, new_vb),
            (slots, new_slots),
            (positions, new_positions),
        ):
            static.copy_(new)
        q2, k2, v2 = views(new_qkv, heads, kv_heads, head_dim)
        apply_rotary(new_positions, q2, k2, cos, sin)
        store_kv(k2, v2, new_kb, new_vb, new_slots, *scales)
        graph.replay()
        torch.cuda.synchronize()
        assert same_bits(q, q2) and same_bits(kb, new_kb) and same_bits(vb, new_vb)
