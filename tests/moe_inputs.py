"""What the fused MoE kernel tests share, on CPU (the interpreter) and on the GPU: random inputs,
NaN-poisoned buffers, the error measure, and experts quantised to block fp8."""

from __future__ import annotations

import pytest
import torch

from radixlm.runtime.kernels import reference as ref

_EMPTY = torch.empty


def poison_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.empty that fills floating tensors with NaN, for the kernel path's own buffers. A test
    module makes it a fixture: `poisoned_empty = pytest.fixture(poison_empty)`."""

    def empty(*args, **kwargs):
        t = _EMPTY(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() and t.dtype.itemsize > 1 else t

    monkeypatch.setattr(torch, "empty", empty)


def rel_err(out: torch.Tensor, expected: torch.Tensor) -> float:
    """Relative Frobenius error; an unwritten (NaN) element fails outright."""
    assert not torch.isnan(out).any(), "output has NaN: an unwritten element or a poisoned read"
    out, expected = out.double(), expected.double()
    return float((out - expected).norm() / expected.norm().clamp_min(1e-30))


def make_inputs(t, e, top_k, hidden, inter, dtype, used_experts=None, seed=0, device="cpu"):
    """Random x, experts and routing; with used_experts only those experts receive tokens."""
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(t, hidden, generator=gen, device=device).to(dtype)
    w13 = (torch.randn(e, 2 * inter, hidden, generator=gen, device=device) / hidden**0.5).to(dtype)
    w2 = (torch.randn(e, hidden, inter, generator=gen, device=device) / inter**0.5).to(dtype)
    logits = torch.randn(t, e, generator=gen, device=device)
    if used_experts is not None:
        logits[:, used_experts:] = -1e4  # the others never reach the top-k
    weights, ids = ref.moe_topk(logits, top_k, renormalize=True)
    return x, w13, w2, weights, ids


def quantize_experts(
    w: torch.Tensor, block: tuple[int, int] = (128, 128)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each expert's weight as block fp8 and its scales, stacked."""
    pairs = [ref.block_quant_fp8(w[e].float(), block) for e in range(w.shape[0])]
    return torch.stack([q for q, _ in pairs]), torch.stack([s for _, s in pairs])
