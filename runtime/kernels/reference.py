"""Plain-PyTorch attention over the paged KV cache: the CPU path and the oracle for Triton.

Layout conventions shared with the Triton kernels:
  * q, k, v, o: `[num_tokens, num_heads, head_dim]` (token-major, heads contiguous);
  * k_buffer, v_buffer: `[num_slots, num_kv_heads, head_dim]`, one row per KV slot;
  * req_to_token: `[num_rows, max_context_len]` int, KV slot of each position of a request;
  * GQA: query head h reads KV head `h // (num_heads // num_kv_heads)`.
All math runs in fp32 and the output is cast back to q's dtype.
"""

from __future__ import annotations

import torch


def _gqa_expand(kv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[L, Hkv, D] -> [L, H, D] by repeating each KV head for its group of query heads."""
    group = num_heads // kv.shape[1]
    return kv if group == 1 else kv.repeat_interleave(group, dim=1)


def extend_attention(
    q: torch.Tensor,  # [T, H, D] queries of the new tokens of all requests, request-major
    k_extend: torch.Tensor,  # [T, Hkv, D] keys of the new tokens
    v_extend: torch.Tensor,  # [T, Hkv, D]
    k_buffer: torch.Tensor,  # [S, Hkv, D] cached keys
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,  # [R, C]
    req_pool_indices: torch.Tensor,  # [B] row of each request
    prefix_lens: torch.Tensor,  # [B] cached tokens of each request (read from the buffers)
    extend_lens: torch.Tensor,  # [B] new tokens of each request (sum == T)
    sm_scale: float,
) -> torch.Tensor:
    """New tokens attend to their request's cached prefix (paged) and causally to themselves."""
    num_heads = q.shape[1]
    out = torch.empty_like(q)
    start = 0
    for row, prefix_len, extend_len in zip(req_pool_indices.tolist(), prefix_lens.tolist(), extend_lens.tolist()):
        end = start + extend_len
        slots = req_to_token[row, :prefix_len]
        k = torch.cat([k_buffer[slots].float(), k_extend[start:end].float()])
        v = torch.cat([v_buffer[slots].float(), v_extend[start:end].float()])
        k, v = _gqa_expand(k, num_heads), _gqa_expand(v, num_heads)
        qr = q[start:end].float()
        scores = torch.einsum("thd,shd->hts", qr, k) * sm_scale  # [H, extend, prefix+extend]
        # query i (absolute position prefix_len + i) sees keys 0 .. prefix_len + i
        q_pos = torch.arange(extend_len, device=q.device)[:, None] + prefix_len
        k_pos = torch.arange(prefix_len + extend_len, device=q.device)[None, :]
        scores.masked_fill_(k_pos > q_pos, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[start:end] = torch.einsum("hts,shd->thd", probs, v).to(q.dtype)
        start = end
    return out


def decode_attention(
    q: torch.Tensor,  # [B, H, D] one query token per request
    k_buffer: torch.Tensor,  # [S, Hkv, D]; the current token's K/V are already stored
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,  # [R, C]
    req_pool_indices: torch.Tensor,  # [B]
    seq_lens: torch.Tensor,  # [B] tokens to attend to, the current one included
    sm_scale: float,
) -> torch.Tensor:
    """One new token per request attends to all of its request's KV slots."""
    batch, num_heads, head_dim = q.shape
    if batch == 0:
        return torch.empty_like(q)
    max_len = int(seq_lens.max())
    positions = torch.arange(max_len, device=q.device)
    valid = positions[None, :] < seq_lens[:, None]  # [B, L]
    slots = req_to_token[req_pool_indices][:, :max_len] * valid  # padded positions read dummy slot 0
    k = k_buffer[slots].float()  # [B, L, Hkv, D]
    v = v_buffer[slots].float()
    group = num_heads // k.shape[2]
    qg = q.float().view(batch, k.shape[2], group, head_dim)  # heads of one KV group together
    scores = torch.einsum("bkgd,blkd->bkgl", qg, k) * sm_scale
    scores.masked_fill_(~valid[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("bkgl,blkd->bkgd", probs, v)
    return out.reshape(batch, num_heads, head_dim).to(q.dtype)
