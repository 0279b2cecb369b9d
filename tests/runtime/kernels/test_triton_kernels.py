"""The Triton kernels (runtime/kernels/triton/) against the PyTorch reference kernels, run on the
CPU under the Triton interpreter.

The interpreter is selected by TRITON_INTERPRET=1, which must be set before triton (or any
kernel module) is imported; CI exports it and this module sets it as a fallback. The
interpreter's bf16 `tl.dot`/arithmetic is unreliable, so only fp32 and fp16 are checked here
(tests/gpu/test_gpu_kernels.py covers bf16 on a GPU). Shapes are small: the interpreter runs
every program in Python.

Every check uses fresh random inputs, poisons the output with NaN before the launch (so an
unwritten element shows up), and poisons every KV slot no request owns with NaN (slot 0, the
dummy slot the reference reads for padding, with a large finite value instead) so a read of a
slot the kernel has no business reading ruins the result.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported anywhere

import pytest
import torch

triton = pytest.importorskip("triton")

from radixlm.runtime.kernels import reference as ref  # noqa: E402
from radixlm.runtime.kernels.triton.activation import silu_and_mul  # noqa: E402
from radixlm.runtime.kernels.triton.decode_attention import choose_num_kv_splits, decode_attention  # noqa: E402
from radixlm.runtime.kernels.triton.extend_attention import ExtendConfig, extend_attention  # noqa: E402
from radixlm.runtime.kernels.triton.kv_store import store_kv  # noqa: E402
from radixlm.runtime.kernels.triton.norm import fused_add_rmsnorm, rmsnorm  # noqa: E402
from radixlm.runtime.kernels.triton.rotary import apply_rotary  # noqa: E402

if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("interpreter tests; tests/gpu covers CUDA", allow_module_level=True)

TOL = {torch.float32: 1e-5, torch.float16: 2e-3}  # relative Frobenius error
DTYPES = list(TOL)
DUMMY = 1e4  # slot 0: finite (the reference multiplies it by 0) but ruinous if it leaks in
# (num_kv_heads, num_heads): GQA ratios 1, 4, 8
GQA = [(2, 2), (2, 8), (1, 8)]
DEVICE = "cpu"


def rel_err(out: torch.Tensor, expected: torch.Tensor) -> float:
    assert not torch.isnan(out).any(), "output has NaN: unwritten element or a poisoned read"
    out, expected = out.double(), expected.double()
    return float((out - expected).norm() / expected.norm().clamp_min(1e-30))


class Pool:
    """A KV pool whose requests own random, scattered slots; every unowned slot is poisoned."""

    def __init__(
        self,
        lens: list[int],
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        seed: int,
        num_rows: int = 12,
        device: str = DEVICE,
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        total = sum(lens)
        num_slots = total + 37
        perm = torch.randperm(num_slots - 1, generator=g) + 1  # slot 0 is never handed out
        self.k = torch.randn(num_slots, num_kv_heads, head_dim, generator=g).to(dtype)
        self.v = torch.randn(num_slots, num_kv_heads, head_dim, generator=g).to(dtype)
        owned = torch.zeros(num_slots, dtype=torch.bool)
        max_len = max(lens + [1])
        # unused table entries point at the dummy slot, as a freshly reset ReqToTokenPool does
        self.req_to_token = torch.zeros(num_rows, max_len + 5, dtype=torch.int32)
        rows = torch.randperm(num_rows, generator=g)[: len(lens)]
        self.rows = rows.to(torch.int64)
        pos = 0
        for row, n in zip(rows.tolist(), lens):
            slots = perm[pos : pos + n]
            pos += n
            self.req_to_token[row, :n] = slots.to(torch.int32)
            owned[slots] = True
        for buf in (self.k, self.v):
            buf[~owned] = float("nan")
            buf[0] = DUMMY
        self.k, self.v = self.k.to(device), self.v.to(device)
        self.req_to_token, self.rows = self.req_to_token.to(device), self.rows.to(device)


# ------------------------------------------------------------------------------ decode


DECODE_LENS = [1, 37, 100, 2, 64, 65, 1]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kv_heads,heads", GQA)
def test_decode_matches_reference(dtype, kv_heads, heads):
    head_dim = 64 if heads != 8 or kv_heads != 2 else 128
    pool = Pool(DECODE_LENS, kv_heads, head_dim, dtype, seed=heads * 10 + kv_heads)
    seq_lens = torch.tensor(DECODE_LENS)
    q = torch.randn(len(DECODE_LENS), heads, head_dim).to(dtype)
    expected = ref.decode_attention(q, pool.k, pool.v, pool.req_to_token, pool.rows, seq_lens, head_dim**-0.5)
    # 16 splits: more splits than 64-token tiles, so most splits are empty (lse = -inf)
    for splits in (1, 3, 16):
        out = torch.full_like(q, float("nan"))
        decode_attention(
            q,
            pool.k,
            pool.v,
            pool.req_to_token,
            pool.rows,
            seq_lens,
            head_dim**-0.5,
            num_kv_splits=splits,
            out=out,
        )
        assert rel_err(out, expected) < TOL[dtype], (splits, rel_err(out, expected))


def test_decode_large_group_and_static_buffers():
    """GQA 24 (two programs per KV head, the second half full), static oversized partial
    buffers full of NaN from a previous use, and a padded row (seq_len 1 on another request's
    row, as CUDA-graph padding does)."""
    kv_heads, heads, head_dim, dtype = 1, 24, 64, torch.float32
    lens = [50, 1, 9]
    pool = Pool(lens, kv_heads, head_dim, dtype, seed=3)
    rows = torch.cat([pool.rows, pool.rows[:1]])  # the padded row reuses request 0's row
    seq_lens = torch.tensor(lens + [1])
    q = torch.randn(len(rows), heads, head_dim)
    splits = 4
    out = torch.full_like(q, float("nan"))
    part = torch.full((8, heads, 16, head_dim), float("nan"))
    lse = torch.full((8, heads, 16), float("nan"))
    decode_attention(
        q,
        pool.k,
        pool.v,
        pool.req_to_token,
        rows,
        seq_lens,
        head_dim**-0.5,
        num_kv_splits=splits,
        out=out,
        partial_out=part,
        partial_lse=lse,
    )
    expected = ref.decode_attention(q, pool.k, pool.v, pool.req_to_token, rows, seq_lens, head_dim**-0.5)
    assert rel_err(out, expected) < TOL[dtype]
    # request 1 (one token) fills split 0 only; the others must say "empty"
    assert torch.isinf(lse[1, :, 1:splits]).all() and (lse[1, :, 1:splits] < 0).all()


def test_decode_zero_length_row_is_finite():
    lens = [0, 20]
    pool = Pool([20, 20], 2, 64, torch.float32, seed=5)
    q = torch.randn(2, 4, 64)
    out = torch.full_like(q, float("nan"))
    decode_attention(
        q, pool.k, pool.v, pool.req_to_token, pool.rows, torch.tensor(lens), 0.125, num_kv_splits=2, out=out
    )
    assert torch.isfinite(out).all()
    expected = ref.decode_attention(
        q[1:], pool.k, pool.v, pool.req_to_token, pool.rows[1:], torch.tensor(lens[1:]), 0.125
    )
    assert rel_err(out[1:], expected) < 1e-5


def test_choose_num_kv_splits():
    assert choose_num_kv_splits(1, 8, 8192, 132) == 16
    assert choose_num_kv_splits(64, 8, 8192, 132) == 1
    assert choose_num_kv_splits(1, 8, 64, 132) == 1  # one tile: one split
    assert 1 <= choose_num_kv_splits(4, 8, 2048, 132) <= 16
    assert choose_num_kv_splits(0, 8, 0, 0) >= 1


# ------------------------------------------------------------------------------ extend

# (prefix_len, extend_len): no prefix, single tokens, ragged tiles, several query tiles
EXTEND_REQS = [(0, 5), (7, 1), (0, 1), (13, 40), (30, 33), (1, 1), (64, 70)]
SMALL_TILES = ExtendConfig(block_m=32, block_n=16, num_warps=4, num_stages=1)


def _extend_case(reqs, kv_heads, heads, head_dim, dtype, seed, config):
    prefix = [p for p, _ in reqs]
    ext = [e for _, e in reqs]
    pool = Pool(prefix, kv_heads, head_dim, dtype, seed=seed)
    total = sum(ext)
    # q, k, v as row-strided views of one fused qkv projection, as the model produces them
    qkv = torch.randn(total, (heads + 2 * kv_heads) * head_dim).to(dtype)
    q = qkv[:, : heads * head_dim].view(total, heads, head_dim)
    k = qkv[:, heads * head_dim : (heads + kv_heads) * head_dim].view(total, kv_heads, head_dim)
    v = qkv[:, (heads + kv_heads) * head_dim :].view(total, kv_heads, head_dim)
    prefix_lens, extend_lens = torch.tensor(prefix), torch.tensor(ext)
    expected = ref.extend_attention(
        q, k, v, pool.k, pool.v, pool.req_to_token, pool.rows, prefix_lens, extend_lens, head_dim**-0.5
    )
    out = torch.full((total, heads, head_dim), float("nan"), dtype=dtype)
    extend_attention(
        q,
        k,
        v,
        pool.k,
        pool.v,
        pool.req_to_token,
        pool.rows,
        prefix_lens,
        extend_lens,
        head_dim**-0.5,
        out=out,
        config=config,
    )
    return out, expected


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kv_heads,heads", GQA)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_extend_matches_reference(dtype, kv_heads, heads, head_dim):
    out, expected = _extend_case(
        EXTEND_REQS, kv_heads, heads, head_dim, dtype, seed=heads + head_dim, config=SMALL_TILES
    )
    assert rel_err(out, expected) < TOL[dtype]


def test_extend_default_tiles_and_explicit_metadata():
    """The GPU tile sizes (BLOCK_M 128) and caller-supplied start locations / max length."""
    reqs = [(0, 100), (50, 3), (9, 0), (20, 30)]  # includes a request with nothing to extend
    prefix, ext = [p for p, _ in reqs], [e for _, e in reqs]
    pool = Pool(prefix, 2, 64, torch.float32, seed=11)
    total = sum(ext)
    q, k, v = torch.randn(total, 4, 64), torch.randn(total, 2, 64), torch.randn(total, 2, 64)
    prefix_lens, extend_lens = torch.tensor(prefix), torch.tensor(ext)
    start = torch.tensor([0, 100, 103, 103])
    out = extend_attention(
        q,
        k,
        v,
        pool.k,
        pool.v,
        pool.req_to_token,
        pool.rows,
        prefix_lens,
        extend_lens,
        0.125,
        extend_start_loc=start,
        max_extend_len=100,
    )
    expected = ref.extend_attention(
        q, k, v, pool.k, pool.v, pool.req_to_token, pool.rows, prefix_lens, extend_lens, 0.125
    )
    assert rel_err(out, expected) < 1e-5


# ------------------------------------------------------------------------------ small ops


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [96, 1000])
def test_rmsnorm(dtype, hidden):
    base = torch.randn(7, hidden + 8).to(dtype)
    x = base[:, :hidden]  # row-strided input
    w = (1 + 0.1 * torch.randn(hidden)).to(dtype)
    out = torch.full((7, hidden), float("nan"), dtype=dtype)
    rmsnorm(x, w, 1e-6, out=out)
    assert rel_err(out, ref.rmsnorm(x, w, 1e-6)) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_add_rmsnorm(dtype):
    hidden = 1000
    x, res = torch.randn(5, hidden).to(dtype), torch.randn(5, hidden).to(dtype)
    w = (1 + 0.1 * torch.randn(hidden)).to(dtype)
    exp_out, exp_res = ref.fused_add_rmsnorm(x, res, w, 1e-5)
    x_out, res_out = fused_add_rmsnorm(x, res, w, 1e-5)
    assert x_out.data_ptr() == x.data_ptr() and res_out.data_ptr() == res.data_ptr()
    assert torch.equal(res, exp_res)  # the add rounds exactly like torch
    assert rel_err(x, exp_out) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul(dtype):
    inter = 1500  # two column blocks, the second ragged
    base = torch.randn(4, 2 * inter + 16).to(dtype)
    gate_up = base[:, : 2 * inter]
    out = torch.full((4, inter), float("nan"), dtype=dtype)
    silu_and_mul(gate_up, out=out)
    assert rel_err(out, ref.silu_and_mul(gate_up)) < TOL[dtype]
    assert rel_err(silu_and_mul(gate_up), ref.silu_and_mul(gate_up)) < TOL[dtype]


def _rope_tables(head_dim: int, max_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    freqs = torch.arange(max_pos).float()[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_apply_rotary(dtype, head_dim):
    tokens, heads, kv_heads = 9, 4, 2
    cos, sin = _rope_tables(head_dim, 512)
    positions = torch.randint(0, 512, (tokens,))
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim).to(dtype)
    v_before = qkv[:, (heads + kv_heads) * head_dim :].clone()
    q = qkv[:, : heads * head_dim].view(tokens, heads, head_dim)
    k = qkv[:, heads * head_dim : (heads + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
    exp_q, exp_k = ref.apply_rotary(positions, q, k, cos, sin)
    apply_rotary(positions, q, k, cos, sin)
    assert rel_err(q, exp_q) < TOL[dtype] and rel_err(k, exp_k) < TOL[dtype]
    assert torch.equal(qkv[:, (heads + kv_heads) * head_dim :], v_before)  # v untouched


def test_apply_rotary_matches_eager_formula_fp32():
    """Against the model's tables (llama3 scaling) and Hugging Face's eager formula, written out."""
    from radixlm.runtime.config import RopeConfig
    from radixlm.runtime.layers.decoder_blocks import RotaryEmbedding

    rope = RotaryEmbedding(
        64,
        256,
        RopeConfig(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=64,
        ),
    )
    positions = torch.randint(0, 256, (6,))
    q, k = torch.randn(6, 4, 64), torch.randn(6, 1, 64)
    cos, sin = rope.cos[positions][:, None, :], rope.sin[positions][:, None, :]

    def rotate_half(x):
        return torch.cat([-x[..., 32:], x[..., :32]], dim=-1)

    exp_q, exp_k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    apply_rotary(positions, q, k, rope.cos, rope.sin)
    assert rel_err(q, exp_q) < 1e-6 and rel_err(k, exp_k) < 1e-6


@pytest.mark.parametrize(
    "src_dtype,buf_dtype",
    [(torch.float32, torch.float32), (torch.float32, torch.float16), (torch.float16, torch.float16)],
)
def test_store_kv(src_dtype, buf_dtype):
    tokens, kv_heads, head_dim, slots_total = 6, 2, 64, 40
    kv = torch.randn(tokens, 2 * kv_heads * head_dim + 8).to(src_dtype)  # row-strided views
    k = kv[:, : kv_heads * head_dim].view(tokens, kv_heads, head_dim)
    v = kv[:, kv_heads * head_dim : 2 * kv_heads * head_dim].view(tokens, kv_heads, head_dim)
    kb = torch.randn(slots_total, kv_heads, head_dim).to(buf_dtype)
    vb = torch.randn(slots_total, kv_heads, head_dim).to(buf_dtype)
    exp_k, exp_v = kb.clone(), vb.clone()
    slots = torch.randperm(slots_total - 1)[:tokens] + 1
    ref.store_kv(k, v, exp_k, exp_v, slots)
    store_kv(k, v, kb, vb, slots)
    assert torch.equal(kb, exp_k) and torch.equal(vb, exp_v)  # a cast is exact either way


# ------------------------------------------------------------------------------ fp8 KV cache
# The pool holds e4m3 values (cast on the host: the interpreter's in-kernel fp32->fp8 cast is
# wrong, so the fp8 store kernel is checked on the GPU only) with per-layer scales; the
# kernels dequantise on load. The reference applies the same scales, so results agree to
# the dtype's tolerance. Unowned slots stay NaN (e4m3fn has NaN); slot 0 holds a finite 400.


def _fp8_pool(pool: Pool) -> Pool:
    for name in ("k", "v"):
        buf = getattr(pool, name).float()
        buf[0] = 400.0
        setattr(pool, name, (buf * 30.0).clamp(-448, 448).to(torch.float8_e4m3fn))
    return pool


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_reads_an_fp8_cache_with_scales(dtype):
    kv_heads, heads, head_dim = 2, 8, 64
    pool = _fp8_pool(Pool(DECODE_LENS, kv_heads, head_dim, torch.float32, seed=21))
    seq_lens = torch.tensor(DECODE_LENS)
    q = torch.randn(len(DECODE_LENS), heads, head_dim).to(dtype)
    k_scale, v_scale = 1 / 30.0, 0.05
    expected = ref.decode_attention(
        q, pool.k, pool.v, pool.req_to_token, pool.rows, seq_lens, head_dim**-0.5, k_scale, v_scale
    )
    for splits in (1, 4):
        out = torch.full_like(q, float("nan"))
        decode_attention(
            q,
            pool.k,
            pool.v,
            pool.req_to_token,
            pool.rows,
            seq_lens,
            head_dim**-0.5,
            num_kv_splits=splits,
            out=out,
            k_scale=k_scale,
            v_scale=v_scale,
        )
        assert rel_err(out, expected) < TOL[dtype], (splits, rel_err(out, expected))
    # the scales matter: without them the result is far off
    plain = ref.decode_attention(q, pool.k, pool.v, pool.req_to_token, pool.rows, seq_lens, head_dim**-0.5)
    assert rel_err(plain, expected) > 0.5


@pytest.mark.parametrize("dtype", DTYPES)
def test_extend_reads_an_fp8_prefix_with_scales(dtype):
    kv_heads, heads, head_dim = 2, 4, 64
    reqs = [(0, 17), (40, 5), (70, 33), (3, 1)]
    prefix, ext = [p for p, _ in reqs], [e for _, e in reqs]
    pool = _fp8_pool(Pool(prefix, kv_heads, head_dim, torch.float32, seed=22))
    total = sum(ext)
    q, k, v = (torch.randn(total, h, head_dim).to(dtype) for h in (heads, kv_heads, kv_heads))
    prefix_lens, extend_lens = torch.tensor(prefix), torch.tensor(ext)
    expected = ref.extend_attention(
        q,
        k,
        v,
        pool.k,
        pool.v,
        pool.req_to_token,
        pool.rows,
        prefix_lens,
        extend_lens,
        head_dim**-0.5,
        1 / 30.0,
        0.05,
    )
    out = torch.full((total, heads, head_dim), float("nan"), dtype=dtype)
    extend_attention(
        q,
        k,
        v,
        pool.k,
        pool.v,
        pool.req_to_token,
        pool.rows,
        prefix_lens,
        extend_lens,
        head_dim**-0.5,
        out=out,
        config=SMALL_TILES,
        k_scale=1 / 30.0,
        v_scale=0.05,
    )
    assert rel_err(out, expected) < TOL[dtype]


def test_reference_fp8_store_divides_by_the_scale_and_saturates():
    k = torch.tensor([[[1.0, -2.0, 1000.0, 0.5]]])
    v = torch.tensor([[[3.0, 0.25, -1000.0, 8.0]]])
    kb = torch.zeros(3, 1, 4, dtype=torch.float8_e4m3fn)
    vb = torch.zeros(3, 1, 4, dtype=torch.float8_e4m3fn)
    ref.store_kv(k, v, kb, vb, torch.tensor([2]), k_scale=0.5, v_scale=2.0)
    assert kb[2].float().tolist() == [[2.0, -4.0, 448.0, 1.0]]
    assert vb[2].float().tolist() == [[1.5, 0.125, -448.0, 4.0]]
    assert (kb[:2].float() == 0).all()
