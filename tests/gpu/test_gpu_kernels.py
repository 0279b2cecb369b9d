"""The Triton kernels on a CUDA device at realistic shapes, against the PyTorch reference kernels
(runtime/kernels/reference.py, fp32 math) by relative Frobenius error, plus CUDA-graph capture
of decode attention. Skipped where CUDA is absent (CI); run on the GPU machine with
`pytest tests/gpu/test_gpu_kernels.py`.

As in tests/runtime/kernels/test_triton_kernels.py: fresh random inputs for every check, outputs poisoned with
NaN before each launch, and KV slots that no request owns poisoned with NaN (slot 0, read by the
reference for padding, with a large finite value).
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

if torch.cuda.is_available():
    from radixlm.runtime.kernels import reference as ref
    from radixlm.runtime.kernels.triton.activation import silu_and_mul
    from radixlm.runtime.kernels.triton.decode_attention import choose_num_kv_splits, decode_attention
    from radixlm.runtime.kernels.triton.dense_gemv import dense_gemv
    from radixlm.runtime.kernels.triton.extend_attention import extend_attention
    from radixlm.runtime.kernels.triton.kv_store import store_kv
    from radixlm.runtime.kernels.triton.norm import fused_add_rmsnorm, rmsnorm
    from radixlm.runtime.kernels.triton.rotary import apply_rotary

# Relative error bounds. bf16/fp16: P is rounded to the dtype before the PV product (as every
# flash kernel does). fp32: the kernels use exact ("ieee") fp32 dots.
TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-4}
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
GQA = [(8, 8), (8, 32), (4, 32)]  # (num_kv_heads, num_heads): ratios 1, 4, 8
DUMMY = 1e4
DEV = "cuda"


def rel_err(out: torch.Tensor, expected: torch.Tensor) -> float:
    assert not torch.isnan(out).any(), "output has NaN: unwritten element or a poisoned read"
    out, expected = out.double(), expected.double()
    return float((out - expected).norm() / expected.norm().clamp_min(1e-30))


def make_pool(
    lens: list[int], kv_heads: int, head_dim: int, dtype: torch.dtype, num_rows: int = 64, spare: int = 1000
):
    """K/V buffers where request i owns `lens[i]` random scattered slots (unowned slots NaN),
    and its req_to_token row (random) lists them. Returns (k_buf, v_buf, req_to_token, rows)."""
    total = sum(lens)
    num_slots = total + spare
    perm = torch.randperm(num_slots - 1, device=DEV) + 1
    k = torch.randn(num_slots, kv_heads, head_dim, device=DEV).to(dtype)
    v = torch.randn(num_slots, kv_heads, head_dim, device=DEV).to(dtype)
    owned = torch.zeros(num_slots, dtype=torch.bool, device=DEV)
    req_to_token = torch.zeros(num_rows, max(lens + [1]) + 8, dtype=torch.int32, device=DEV)
    rows = torch.randperm(num_rows, device=DEV)[: len(lens)]
    pos = 0
    for row, n in zip(rows.tolist(), lens):
        req_to_token[row, :n] = perm[pos : pos + n].to(torch.int32)
        owned[perm[pos : pos + n]] = True
        pos += n
    for buf in (k, v):
        buf[~owned] = float("nan")
        buf[0] = DUMMY
    return k, v, req_to_token, rows


# ------------------------------------------------------------------------------ attention

DECODE_LENS = [1, 17, 64, 65, 511, 1024, 2049, 3000, 1, 200]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kv_heads,heads", GQA)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_decode(dtype, kv_heads, heads, head_dim):
    torch.manual_seed(heads + head_dim)
    k, v, r2t, rows = make_pool(DECODE_LENS, kv_heads, head_dim, dtype)
    seq_lens = torch.tensor(DECODE_LENS, device=DEV)
    q = torch.randn(len(DECODE_LENS), heads, head_dim, device=DEV).to(dtype)
    scale = head_dim**-0.5
    expected = ref.decode_attention(q, k, v, r2t, rows, seq_lens, scale)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for splits in sorted({1, 7, 16, choose_num_kv_splits(len(DECODE_LENS), kv_heads, max(DECODE_LENS), sms)}):
        out = torch.full_like(q, float("nan"))
        decode_attention(q, k, v, r2t, rows, seq_lens, scale, num_kv_splits=splits, out=out)
        torch.cuda.synchronize()
        assert rel_err(out, expected) < TOL[dtype], (splits, rel_err(out, expected))


# (prefix_len, extend_len): single tokens, no prefix, long prefix, ragged tiles
EXTEND_REQS = [(0, 1), (0, 700), (1500, 300), (37, 1), (2000, 129), (0, 2500), (5, 64)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kv_heads,heads", GQA)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_extend(dtype, kv_heads, heads, head_dim):
    torch.manual_seed(heads * 3 + head_dim)
    prefix, ext = [p for p, _ in EXTEND_REQS], [e for _, e in EXTEND_REQS]
    k_buf, v_buf, r2t, rows = make_pool(prefix, kv_heads, head_dim, dtype)
    total = sum(ext)
    qkv = torch.randn(total, (heads + 2 * kv_heads) * head_dim, device=DEV).to(dtype)  # fused projection
    q = qkv[:, : heads * head_dim].view(total, heads, head_dim)
    k = qkv[:, heads * head_dim : (heads + kv_heads) * head_dim].view(total, kv_heads, head_dim)
    v = qkv[:, (heads + kv_heads) * head_dim :].view(total, kv_heads, head_dim)
    prefix_lens, extend_lens = torch.tensor(prefix, device=DEV), torch.tensor(ext, device=DEV)
    scale = head_dim**-0.5
    expected = ref.extend_attention(q, k, v, k_buf, v_buf, r2t, rows, prefix_lens, extend_lens, scale)
    out = torch.full((total, heads, head_dim), float("nan"), device=DEV, dtype=dtype)
    extend_attention(q, k, v, k_buf, v_buf, r2t, rows, prefix_lens, extend_lens, scale, out=out)
    torch.cuda.synchronize()
    assert rel_err(out, expected) < TOL[dtype]


def test_decode_cuda_graph():
    """Capture once with static buffers; replay with new q, seq_lens and request rows."""
    torch.manual_seed(7)
    batch, kv_heads, heads, head_dim, dtype, max_len = 8, 8, 32, 128, torch.bfloat16, 4096
    num_rows = 16
    k_buf, v_buf, r2t, _ = make_pool([max_len] * num_rows, kv_heads, head_dim, dtype, num_rows=num_rows)
    scale = head_dim**-0.5
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    splits = choose_num_kv_splits(batch, kv_heads, max_len, sms)
    q = torch.randn(batch, heads, head_dim, device=DEV).to(dtype)
    seq_lens = torch.full((batch,), 1, dtype=torch.int64, device=DEV)
    rows = torch.zeros(batch, dtype=torch.int64, device=DEV)
    out = torch.empty_like(q)
    part = torch.empty(batch, heads, splits, head_dim, device=DEV)
    lse = torch.empty(batch, heads, splits, device=DEV)

    def step():
        decode_attention(
            q,
            k_buf,
            v_buf,
            r2t,
            rows,
            seq_lens,
            scale,
            num_kv_splits=splits,
            out=out,
            partial_out=part,
            partial_lse=lse,
        )

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # compiles the kernels outside capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for trial in range(3):
        q.copy_(torch.randn_like(q))
        lens = torch.randint(1, max_len + 1, (batch,), device=DEV)
        lens[0] = 1  # a padded row
        seq_lens.copy_(lens)
        rows.copy_(torch.randperm(num_rows, device=DEV)[:batch])
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        expected = ref.decode_attention(q, k_buf, v_buf, r2t, rows, seq_lens, scale)
        assert rel_err(out, expected) < TOL[dtype], trial


# ------------------------------------------------------------------------------ small ops

HALF = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,hidden", [(1, 4096), (777, 4096), (33, 16384), (5, 1000)])
def test_rmsnorm(dtype, tokens, hidden):
    x = torch.randn(tokens, hidden, device=DEV).to(dtype)
    w = (1 + 0.1 * torch.randn(hidden, device=DEV)).to(dtype)
    out = torch.full_like(x, float("nan"))
    rmsnorm(x, w, 1e-5, out=out)
    expected = ref.rmsnorm(x, w, 1e-5)
    assert rel_err(out, expected) < TOL[dtype] / 4
    if dtype in HALF:  # same rounding order: all but a few elements bit-identical
        assert (out != expected).float().mean() < 0.01


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,hidden", [(1, 4096), (300, 8192)])
def test_fused_add_rmsnorm(dtype, tokens, hidden):
    x = torch.randn(tokens, hidden, device=DEV).to(dtype)
    res = torch.randn(tokens, hidden, device=DEV).to(dtype)
    w = (1 + 0.1 * torch.randn(hidden, device=DEV)).to(dtype)
    exp_out, exp_res = ref.fused_add_rmsnorm(x, res, w, 1e-6)
    eager_sum = x + res
    fused_add_rmsnorm(x, res, w, 1e-6)
    torch.cuda.synchronize()
    assert torch.equal(res, exp_res) and torch.equal(res, eager_sum)
    assert rel_err(x, exp_out) < TOL[dtype] / 4


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,inter", [(1, 14336), (513, 14336), (7, 1000)])
def test_silu_and_mul(dtype, tokens, inter):
    gate_up = torch.randn(tokens, 2 * inter, device=DEV).to(dtype)
    out = torch.full((tokens, inter), float("nan"), device=DEV, dtype=dtype)
    silu_and_mul(gate_up, out=out)
    assert rel_err(out, ref.silu_and_mul(gate_up)) < TOL[dtype] / 4


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "tokens,heads,kv_heads,head_dim", [(1, 32, 8, 128), (4000, 32, 8, 128), (17, 12, 2, 64)]
)
def test_apply_rotary(dtype, tokens, heads, kv_heads, head_dim):
    max_pos = 8192
    inv_freq = 1.0 / (500000 ** (torch.arange(0, head_dim, 2, device=DEV).float() / head_dim))
    emb = torch.arange(max_pos, device=DEV).float()[:, None] * inv_freq[None, :]
    emb = torch.cat([emb, emb], -1)
    cos, sin = emb.cos(), emb.sin()
    positions = torch.randint(0, max_pos, (tokens,), device=DEV)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, device=DEV).to(dtype)
    v_before = qkv[:, (heads + kv_heads) * head_dim :].clone()
    q = qkv[:, : heads * head_dim].view(tokens, heads, head_dim)
    k = qkv[:, heads * head_dim : (heads + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
    exp_q, exp_k = ref.apply_rotary(positions, q, k, cos, sin)
    apply_rotary(positions, q, k, cos, sin)
    torch.cuda.synchronize()
    assert rel_err(q, exp_q) < TOL[dtype] / 4 and rel_err(k, exp_k) < TOL[dtype] / 4
    assert torch.equal(qkv[:, (heads + kv_heads) * head_dim :], v_before)


@pytest.mark.parametrize(
    "src_dtype,buf_dtype",
    [
        (torch.bfloat16, torch.bfloat16),
        (torch.float32, torch.bfloat16),
        (torch.float16, torch.float16),
        (torch.float32, torch.float32),
    ],
)
@pytest.mark.parametrize("tokens", [1, 5000])
def test_store_kv(src_dtype, buf_dtype, tokens):
    kv_heads, head_dim, num_slots = 8, 128, 20000
    qkv = torch.randn(tokens, (32 + 2 * kv_heads) * head_dim, device=DEV).to(src_dtype)
    k = qkv[:, 32 * head_dim : (32 + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
    v = qkv[:, (32 + kv_heads) * head_dim :].view(tokens, kv_heads, head_dim)
    kb = torch.randn(num_slots, kv_heads, head_dim, device=DEV).to(buf_dtype)
    vb = torch.randn(num_slots, kv_heads, head_dim, device=DEV).to(buf_dtype)
    exp_k, exp_v = kb.clone(), vb.clone()
    slots = torch.randperm(num_slots - 1, device=DEV)[:tokens] + 1
    ref.store_kv(k, v, exp_k, exp_v, slots)
    store_kv(k, v, kb, vb, slots)
    torch.cuda.synchronize()
    assert torch.equal(kb, exp_k) and torch.equal(vb, exp_v)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 2, 3, 4, 8, 16])
@pytest.mark.parametrize("n, k", [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (1000, 1100)])
def test_dense_gemv(dtype, m, n, k):
    """The dense GEMV with its tuned (or default) tiles against fp64, the output poisoned first; a
    bf16 result is as close as one output rounding (cuBLAS' error is the same size)."""
    x = torch.randn(m, k, device=DEV).to(dtype)
    w = (torch.randn(n, k, device=DEV) * 0.02).to(dtype)
    out = torch.full((m, n), float("nan"), device=DEV, dtype=dtype)
    dense_gemv(x, w, out=out)
    expected = x.double() @ w.double().t()
    assert rel_err(out, expected) < {torch.bfloat16: 4e-3, torch.float16: 1e-3, torch.float32: 1e-5}[dtype]
    if dtype != torch.float32:  # no further from fp64 than cuBLAS is, within one rounding's spread
        assert rel_err(out, expected) < 2 * rel_err(x @ w.t(), expected) + 1e-3


def test_pdl_chain_in_a_cuda_graph_equals_plain_launches(monkeypatch):
    """A decode layer's Triton chain (norm, GEMVs, activation or the gated GEMV, attention)
    captured in a CUDA graph with programmatic dependent launch gives bit-identical results to
    plain launches, replayed on fresh inputs: a kernel that read ahead of its wait would read
    stale values."""
    from radixlm.runtime.kernels.triton import fp8_gemv, pdl

    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("PDL needs compute capability 9.0")
    hidden, inter, dtype = 1024, 2816, torch.bfloat16
    w_gate_up = torch.randn(2 * inter, hidden, device=DEV).to(dtype) * 0.03
    w_down = torch.randn(hidden, inter, device=DEV).to(dtype) * 0.03
    w_q, w_s = ref.block_quant_fp8(torch.randn(hidden, hidden, device=DEV) * 0.03, (128, 128))
    norm_w = torch.rand(hidden, device=DEV).to(dtype) + 0.5
    k_buf, v_buf, r2t, rows = make_pool([300], 8, 128, dtype)
    x_in = torch.empty(1, hidden, device=DEV, dtype=dtype)
    res_in = torch.empty(1, hidden, device=DEV, dtype=dtype)
    seq_lens = torch.full((1,), 300, device=DEV)

    def layer():
        x, res = fused_add_rmsnorm(x_in.clone(), res_in.clone(), norm_w, 1e-6)
        q = fp8_gemv.w8a16_block_fp8_matmul(x, w_q, w_s)  # [1, 1024]: 8 query heads of 128
        attn = decode_attention(
            q.view(1, 8, 128), k_buf, v_buf, r2t, rows, seq_lens, 128**-0.5, num_kv_splits=4
        )
        gate_up = dense_gemv(attn.view(1, hidden), w_gate_up)
        h = dense_gemv(silu_and_mul(gate_up), w_down)
        h_gated = dense_gemv(gate_up, w_down, gated=True)  # the activation inside the GEMV
        return rmsnorm(h, norm_w, 1e-6), res, h, h_gated

    def run_all(inputs, graph=None, static=None):
        """Each input through the layer: launched eagerly, or replayed from `graph` (outputs `static`)."""
        outs = []
        for x, r in inputs:
            x_in.copy_(x)
            res_in.copy_(r)
            if graph is None:
                outs.append(tuple(t.clone() for t in layer()))
            else:
                graph.replay()
                outs.append(tuple(t.clone() for t in static))
        return outs

    inputs = [
        (torch.randn(1, hidden, device=DEV).to(dtype), torch.randn(1, hidden, device=DEV).to(dtype))
        for _ in range(4)
    ]
    monkeypatch.setenv("RADIXLM_PDL", "0")
    pdl._max_rows.cache_clear()
    expected = run_all(inputs)
    monkeypatch.setenv("RADIXLM_PDL", "1")
    pdl._max_rows.cache_clear()
    try:
        assert pdl.enabled(x_in)
        x_in.copy_(inputs[0][0])
        res_in.copy_(inputs[0][1])
        layer()  # compile the PDL variants outside capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static = layer()
        got = run_all(inputs, graph, static)
    finally:
        monkeypatch.setenv("RADIXLM_PDL", "0")
        pdl._max_rows.cache_clear()
    for want, have in zip(expected, got):
        assert all(torch.equal(a, b) for a, b in zip(want, have))
        assert torch.equal(have[2], have[3])  # the gated GEMV: the bits of silu_and_mul then the GEMV
