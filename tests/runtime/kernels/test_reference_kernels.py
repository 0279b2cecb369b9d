"""The plain-PyTorch paged attention (runtime/kernels/reference.py) against a naive dense
attention written here, per request and per head, in float64.

The K/V of each request are scattered over random, non-contiguous slots of the buffers and
reached through randomly assigned req_to_token rows. Every buffer row that no request uses is
poisoned with NaN (slot 0, the dummy slot decode pads with, with a large finite value), so a
kernel that reads a slot it should not read produces NaN or a visibly wrong output."""

from __future__ import annotations

import math

import pytest
import torch

from radixlm.runtime.kernels.reference import decode_attention, extend_attention

DTYPES = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}
GQA = [1, 2, 4]
HEAD_DIMS = [16, 64]
NUM_KV_HEADS = 2
DUMMY = 1e4  # value of slot 0: finite, but large enough to ruin any output it leaks into

# (prefix_len, extend_len) per request: prefix 0, extend 1, both, and longer runs
EXTEND_REQS = [(0, 5), (7, 1), (0, 1), (13, 9), (3, 4), (1, 1), (20, 2)]
# decode: seq_len includes the current token; 1 means no history at all
DECODE_LENS = [1, 9, 2, 17, 5, 30, 1]


def dense_attention(q, k, v, sm_scale, prefix_len):
    """q: [E, H, D] for absolute positions prefix_len .. prefix_len + E - 1; k, v: [L, Hkv, D]
    for positions 0 .. L - 1. Explicit loops over heads and queries, float64."""
    num_q, num_heads, _ = q.shape
    group = num_heads // k.shape[1]
    q, k, v = q.double(), k.double(), v.double()
    out = torch.empty(q.shape, dtype=torch.float64)
    for h in range(num_heads):
        kh, vh = k[:, h // group], v[:, h // group]
        for i in range(num_q):
            visible = prefix_len + i + 1  # causal: keys 0 .. own position
            scores = (kh[:visible] @ q[i, h]) * sm_scale
            probs = torch.softmax(scores, dim=0)
            out[i, h] = probs @ vh[:visible]
    return out


class PagedLayout:
    """Random slot and row assignment for a batch of requests of the given context lengths."""

    def __init__(
        self,
        gen: torch.Generator,
        ctx_lens: list[int],
        spare_slots: int = 23,
        spare_rows: int = 3,
        spare_cols: int = 5,
    ) -> None:
        total = sum(ctx_lens)
        self.num_slots = 1 + total + spare_slots  # slot 0 is the dummy, never a real token
        perm = (torch.randperm(self.num_slots - 1, generator=gen) + 1).tolist()
        self.slots = []  # per request: slot of each position
        for n in ctx_lens:
            self.slots.append(torch.tensor(perm[:n], dtype=torch.int64))
            perm = perm[n:]
        self.unused = torch.tensor(perm, dtype=torch.int64)  # real slots no request uses
        num_rows = len(ctx_lens) + spare_rows
        self.num_cols = max(ctx_lens) + spare_cols
        rows = torch.randperm(num_rows, generator=gen)[: len(ctx_lens)]
        self.req_pool_indices = rows.to(torch.int64)
        # entries past a request's length (and whole unused rows) point at poisoned slots
        fill = self.unused[torch.randint(len(self.unused), (num_rows, self.num_cols), generator=gen)]
        self.req_to_token = fill.to(torch.int32)
        for row, s in zip(rows.tolist(), self.slots):
            self.req_to_token[row, : len(s)] = s.to(torch.int32)

    def buffers(self, num_kv_heads: int, head_dim: int, dtype: torch.dtype):
        shape = (self.num_slots, num_kv_heads, head_dim)
        k = torch.full(shape, float("nan"), dtype=dtype)
        v = torch.full(shape, float("nan"), dtype=dtype)
        k[0] = DUMMY
        v[0] = DUMMY
        return k, v


def rand(gen, *shape, dtype):
    return torch.randn(*shape, generator=gen, dtype=torch.float32).to(dtype)


def tol(dtype):
    a = DTYPES[dtype]
    return {"atol": a, "rtol": a}


# ----------------------------------------------------------------------------- extend
def make_extend_case(seed, group, head_dim, dtype, reqs=EXTEND_REQS, poison_extend_slots=True):
    gen = torch.Generator().manual_seed(seed)
    num_heads = NUM_KV_HEADS * group
    layout = PagedLayout(gen, [p + e for p, e in reqs])
    k_buf, v_buf = layout.buffers(NUM_KV_HEADS, head_dim, dtype)
    k_full = [rand(gen, p + e, NUM_KV_HEADS, head_dim, dtype=dtype) for p, e in reqs]
    v_full = [rand(gen, p + e, NUM_KV_HEADS, head_dim, dtype=dtype) for p, e in reqs]
    q = [rand(gen, e, num_heads, head_dim, dtype=dtype) for _, e in reqs]
    for (p, _), s, k, v in zip(reqs, layout.slots, k_full, v_full):
        # the prefix lives in the buffers; the new tokens' slots stay poisoned unless asked,
        # which proves the new tokens' K/V are read from k_extend / v_extend
        n = p if poison_extend_slots else len(s)
        k_buf[s[:n]] = k[:n]
        v_buf[s[:n]] = v[:n]
    args = dict(
        q=torch.cat(q),
        k_extend=torch.cat([k[p:] for (p, _), k in zip(reqs, k_full)]),
        v_extend=torch.cat([v[p:] for (p, _), v in zip(reqs, v_full)]),
        k_buffer=k_buf,
        v_buffer=v_buf,
        req_to_token=layout.req_to_token,
        req_pool_indices=layout.req_pool_indices,
        prefix_lens=torch.tensor([p for p, _ in reqs], dtype=torch.int64),
        extend_lens=torch.tensor([e for _, e in reqs], dtype=torch.int64),
        sm_scale=1.0 / math.sqrt(head_dim),
    )
    return args, q, k_full, v_full


@pytest.mark.parametrize("dtype", list(DTYPES), ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("group", GQA)
def test_extend_attention_matches_dense(group, head_dim, dtype):
    seed = 1000 * group + head_dim + {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}[dtype]
    args, q, k_full, v_full = make_extend_case(seed, group, head_dim, dtype)
    out = extend_attention(**args)
    assert out.shape == args["q"].shape and out.dtype == dtype
    assert torch.isfinite(out.float()).all()
    start = 0
    for (p, e), qr, k, v in zip(EXTEND_REQS, q, k_full, v_full):
        expected = dense_attention(qr, k, v, args["sm_scale"], p)
        torch.testing.assert_close(
            out[start : start + e].double(),
            expected,
            **tol(dtype),
            msg=lambda m, p=p, e=e: f"request prefix={p} extend={e}: {m}",
        )
        start += e


def test_extend_attention_ignores_buffer_copy_of_new_tokens_and_uses_sm_scale():
    args, q, k_full, v_full = make_extend_case(7, 2, 16, torch.float32, poison_extend_slots=False)
    out_stored = extend_attention(**args)
    args_p, *_ = make_extend_case(7, 2, 16, torch.float32, poison_extend_slots=True)
    torch.testing.assert_close(extend_attention(**args_p), out_stored, atol=0, rtol=0)
    # a different scale gives the dense answer for that scale (and a different output)
    args["sm_scale"] = 0.37
    out = extend_attention(**args)
    start = 0
    for (p, e), qr, k, v in zip(EXTEND_REQS, q, k_full, v_full):
        torch.testing.assert_close(
            out[start : start + e].double(), dense_attention(qr, k, v, 0.37, p), atol=1e-5, rtol=1e-5
        )
        start += e
    assert not torch.allclose(out, out_stored, atol=1e-3)


def test_extend_attention_without_prefix_matches_causal_sdpa():
    """Cross-check the dense oracle: prefix 0 is ordinary causal self-attention."""
    reqs = [(0, 6), (0, 1), (0, 11)]
    args, q, k_full, v_full = make_extend_case(11, 4, 16, torch.float32, reqs=reqs)
    out = extend_attention(**args)
    start = 0
    for (_, e), qr, k, v in zip(reqs, q, k_full, v_full):
        kx = k.repeat_interleave(4, dim=1).transpose(0, 1)
        vx = v.repeat_interleave(4, dim=1).transpose(0, 1)
        ref = torch.nn.functional.scaled_dot_product_attention(
            qr.transpose(0, 1), kx, vx, is_causal=True, scale=args["sm_scale"]
        ).transpose(0, 1)
        torch.testing.assert_close(out[start : start + e], ref, atol=1e-5, rtol=1e-5)
        start += e


def test_extend_attention_empty_batch():
    gen = torch.Generator().manual_seed(0)
    q = rand(gen, 0, 4, 16, dtype=torch.float32)
    kv = rand(gen, 0, 2, 16, dtype=torch.float32)
    buf = rand(gen, 4, 2, 16, dtype=torch.float32)
    none = torch.zeros(0, dtype=torch.int64)
    out = extend_attention(q, kv, kv, buf, buf, torch.zeros(1, 4, dtype=torch.int32), none, none, none, 0.25)
    assert out.shape == (0, 4, 16)


# ----------------------------------------------------------------------------- decode
def make_decode_case(seed, group, head_dim, dtype, seq_lens=DECODE_LENS):
    gen = torch.Generator().manual_seed(seed)
    num_heads = NUM_KV_HEADS * group
    layout = PagedLayout(gen, seq_lens)
    k_buf, v_buf = layout.buffers(NUM_KV_HEADS, head_dim, dtype)
    k_full = [rand(gen, n, NUM_KV_HEADS, head_dim, dtype=dtype) for n in seq_lens]
    v_full = [rand(gen, n, NUM_KV_HEADS, head_dim, dtype=dtype) for n in seq_lens]
    for s, k, v in zip(layout.slots, k_full, v_full):
        k_buf[s] = k  # the current token's K/V are already stored
        v_buf[s] = v
    q = rand(gen, len(seq_lens), num_heads, head_dim, dtype=dtype)
    args = dict(
        q=q,
        k_buffer=k_buf,
        v_buffer=v_buf,
        req_to_token=layout.req_to_token,
        req_pool_indices=layout.req_pool_indices,
        seq_lens=torch.tensor(seq_lens, dtype=torch.int64),
        sm_scale=1.0 / math.sqrt(head_dim),
    )
    return args, k_full, v_full


@pytest.mark.parametrize("dtype", list(DTYPES), ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("group", GQA)
def test_decode_attention_matches_dense(group, head_dim, dtype):
    seed = 5000 + 1000 * group + head_dim + {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}[dtype]
    args, k_full, v_full = make_decode_case(seed, group, head_dim, dtype)
    out = decode_attention(**args)
    assert out.shape == args["q"].shape and out.dtype == dtype
    assert torch.isfinite(out.float()).all()
    for b, (n, k, v) in enumerate(zip(DECODE_LENS, k_full, v_full)):
        # the query is the last of n positions: it sees all n keys
        expected = dense_attention(args["q"][b : b + 1], k, v, args["sm_scale"], n - 1)[0]
        torch.testing.assert_close(
            out[b].double(), expected, **tol(dtype), msg=lambda m, b=b, n=n: f"request {b} seq_len={n}: {m}"
        )


def test_decode_attention_single_request_and_order_independence():
    args, k_full, v_full = make_decode_case(3, 2, 16, torch.float32)
    out = decode_attention(**args)
    # each request alone (its own max_len, so no padding) gives the same answer
    for b in range(len(DECODE_LENS)):
        one = dict(
            args,
            q=args["q"][b : b + 1],
            req_pool_indices=args["req_pool_indices"][b : b + 1],
            seq_lens=args["seq_lens"][b : b + 1],
        )
        torch.testing.assert_close(decode_attention(**one), out[b : b + 1], atol=1e-6, rtol=1e-6)
    # a permuted batch gives the permuted output
    perm = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    permuted = dict(
        args,
        q=args["q"][perm],
        req_pool_indices=args["req_pool_indices"][perm],
        seq_lens=args["seq_lens"][perm],
    )
    torch.testing.assert_close(decode_attention(**permuted), out[perm], atol=1e-6, rtol=1e-6)


def test_decode_attention_empty_batch():
    q = torch.randn(0, 4, 16, generator=torch.Generator().manual_seed(0))
    buf = torch.randn(3, 2, 16, generator=torch.Generator().manual_seed(1))
    out = decode_attention(
        q,
        buf,
        buf,
        torch.zeros(1, 4, dtype=torch.int32),
        torch.zeros(0, dtype=torch.int64),
        torch.zeros(0, dtype=torch.int64),
        0.25,
    )
    assert out.shape == (0, 4, 16)


# ----------------------------------------------------------------------------- extend == decode
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("group", GQA)
def test_extend_of_one_token_equals_decode(group, dtype):
    """With extend_len == 1 per request, extend (prefix from the buffers, the token from
    k_extend) and decode (everything from the buffers) are the same computation."""
    head_dim = 16
    args, k_full, v_full = make_decode_case(77 + group, group, head_dim, dtype)
    dec = decode_attention(**args)
    lens = args["seq_lens"]
    last_slots = torch.stack(
        [
            args["req_to_token"][row, n - 1].long()
            for row, n in zip(args["req_pool_indices"].tolist(), lens.tolist())
        ]
    )
    # the extend pass has not stored the new token yet: poison its slot
    k_buf, v_buf = args["k_buffer"].clone(), args["v_buffer"].clone()
    k_buf[last_slots] = float("nan")
    v_buf[last_slots] = float("nan")
    ext = extend_attention(
        q=args["q"],
        k_extend=torch.stack([k[-1] for k in k_full]),
        v_extend=torch.stack([v[-1] for v in v_full]),
        k_buffer=k_buf,
        v_buffer=v_buf,
        req_to_token=args["req_to_token"],
        req_pool_indices=args["req_pool_indices"],
        prefix_lens=lens - 1,
        extend_lens=torch.ones_like(lens),
        sm_scale=args["sm_scale"],
    )
    assert ext.dtype == dec.dtype == dtype
    atol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(ext.float(), dec.float(), atol=atol, rtol=atol)
