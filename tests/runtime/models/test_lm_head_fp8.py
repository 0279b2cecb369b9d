"""The fp8 LM head (`lm_head_quantization="fp8"`, issue 25) on the tiny models, CPU (the PyTorch
reference of the math the Triton kernels run on GPU): the option's validation, the head's logits
against the unquantised head's (within e4m3 rounding, and not bit-identical: the fp8 path ran),
tied embeddings (the table stays as it is, the head gets its own fp8 copy), each tensor-parallel
rank's vocabulary slice (loaded one by one, and served by two ranks), and greedy generation through
`Engine` with the KV accounting checked (the autouse fixture in conftest.py) and teacher-forced
agreement with the unquantised head."""

from __future__ import annotations

import pytest
import torch
from fp8_checkpoints import prompts
from helpers import get_engine

from radixlm import Engine
from radixlm.runtime.config import EngineConfig, ModelConfig
from radixlm.runtime.entrypoints.cli import build_parser
from radixlm.runtime.kernels import ops, reference
from radixlm.runtime.layers.quantization import Fp8Linear, quantize_lm_head
from radixlm.runtime.model_executor.distributed import TPGroup
from radixlm.runtime.models import load_model
from radixlm.testing import build_tiny_model

CPU = torch.device("cpu")
BLOCK = (128, 128)
# e4m3 keeps 3 mantissa bits: rounding moves a normal value by at most half a step, 2**-4 of it,
# and a subnormal one (below 2**-6 of the block's scale) by at most 2**-10 of the scale
REL_STEP, SUB_STEP = 2.0**-4, 2.0**-10


def _head_source(model) -> torch.Tensor:
    return model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight


def _expand(scale: torch.Tensor, rows: int, cols: int, shape: tuple[int, int]) -> torch.Tensor:
    return scale.repeat_interleave(rows, 0).repeat_interleave(cols, 1)[: shape[0], : shape[1]]


def _rounding_bound(
    h: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor, quantize_x: bool
) -> torch.Tensor:
    """An elementwise bound on |fp8 head's logits - exact logits| from e4m3 rounding alone: each
    weight is off by at most dw = |w| 2**-4 + scale 2**-10, so a logit by at most |h| . dw; with
    W8A8 each hidden value is also off by dh (same rule, per token group of 128), adding
    dh . |w| + dh . dw. Plus fp32 summation slack."""
    dw = w.abs() * REL_STEP + _expand(w_scale, *BLOCK, w.shape) * SUB_STEP
    bound = h.abs() @ dw.t()
    if quantize_x:
        _, h_scale = reference.per_token_group_quant_fp8(h, BLOCK[1])
        dh = h.abs() * REL_STEP + _expand(h_scale, 1, BLOCK[1], h.shape) * SUB_STEP
        bound += dh @ w.abs().t() + dh @ dw.t()
    return bound + 1e-5 * (h.abs() @ w.abs().t()) + 1e-6


@pytest.fixture
def gemv_max_m():
    """Set which math fp8_linear picks (W8A16 up to M, W8A8 beyond); restored afterwards."""
    yield ops.set_fp8_gemv_max_m
    ops.set_fp8_gemv_max_m(None)


def test_option_is_validated_and_on_the_command_line():
    assert EngineConfig(model_path="m").lm_head_quantization is None
    assert EngineConfig(model_path="m", lm_head_quantization="fp8").lm_head_quantization == "fp8"
    with pytest.raises(ValueError, match="lm_head_quantization must be None or 'fp8', got 'int8'"):
        EngineConfig(model_path="m", lm_head_quantization="int8")
    args = build_parser().parse_args(["serve", "--model", "m", "--lm-head-quantization", "fp8"])
    assert args.lm_head_quantization == "fp8"
    assert build_parser().parse_args(["serve", "--model", "m"]).lm_head_quantization is None


@pytest.mark.parametrize("name", ["llama", "llama-tied"])
@torch.no_grad()
def test_fp8_head_logits_are_within_e4m3_rounding_of_the_unquantised_head(name, gemv_max_m):
    cfg = ModelConfig.from_path(build_tiny_model(name))
    plain = load_model(cfg, torch.float32, CPU, 64)
    fp8 = load_model(cfg, torch.float32, CPU, 64, lm_head_quantization="fp8")
    head, w = fp8.lm_head, _head_source(plain).data
    assert isinstance(head, Fp8Linear) and head.block_size == BLOCK
    q, s = reference.block_quant_fp8(w, BLOCK)
    assert torch.equal(head.weight.view(torch.uint8), q.view(torch.uint8)) and torch.equal(
        head.weight_scale_inv, s
    )
    # the head alone: the decoder stays unquantised, and the embedding table (tied or not) is the
    # fp32 one, untouched, beside the head's separate fp8 copy
    assert sum(isinstance(m, Fp8Linear) for m in fp8.modules()) == 1
    assert fp8.embed_tokens.weight.dtype == torch.float32
    assert torch.equal(fp8.embed_tokens.weight, plain.embed_tokens.weight)
    assert fp8.embed_tokens.weight.data_ptr() != head.weight.data_ptr()
    assert quantize_lm_head(fp8) is head  # a second call leaves the fp8 head as it is

    torch.manual_seed(0)
    # hidden states as the model hands them to the head: through the final norm (its gains)
    hidden = plain.norm(3 * torch.randn(16, cfg.hidden_size))
    for max_m, rows, quantize_x in ((16, 1, False), (16, 16, False), (0, 16, True)):
        gemv_max_m(max_m)
        h = hidden[:rows]
        exact, got = plain.compute_logits(h), fp8.compute_logits(h)
        assert got.dtype == torch.float32 and got.shape == exact.shape == (rows, cfg.vocab_size)
        # computed by ops.fp8_linear (the CPU reference of it), and so not the unquantised logits
        assert torch.equal(got, reference.fp8_block_linear(h, q, s, None, BLOCK, quantize_x=quantize_x))
        assert not torch.equal(got, exact)
        err = (got - exact).abs()
        assert (err <= _rounding_bound(h, w, s, quantize_x)).all(), (max_m, rows)
        # independent roundings add in quadrature: a weight's is at most 2**-4 of it and about
        # 2.5% RMS (uniform within a step of 2**-3 relative), and so is the logits' relative L2
        # error; W8A8 rounds the hidden states too (about 3.5%). 5% holds both with room
        rel = (err.norm() / exact.norm()).item()
        assert 0 < rel < 0.05, (max_m, rows, rel)


@torch.no_grad()
def test_fp8_head_on_an_fp8_model_and_on_each_tensor_parallel_rank():
    cfg = ModelConfig.from_path(build_tiny_model("llama"))
    both = load_model(cfg, torch.float32, CPU, 64, "fp8", lm_head_quantization="fp8")
    assert sum(isinstance(m, Fp8Linear) for m in both.modules()) == 4 * cfg.num_layers + 1
    plain = load_model(cfg, torch.float32, CPU, 64)
    q, s = reference.block_quant_fp8(plain.lm_head.weight.data, BLOCK)
    assert torch.equal(both.lm_head.weight.view(torch.uint8), q.view(torch.uint8))

    # tensor parallel (tied, the harder case): each rank quantises its own vocabulary rows of the
    # embedding table; halves of 8192 rows start on 128-row blocks, so together they are the
    # single-rank head, and each rank's logits are its columns of the single-rank logits
    tied = ModelConfig.from_path(build_tiny_model("llama-tied"))
    full = load_model(tied, torch.float32, CPU, 64, lm_head_quantization="fp8")
    torch.manual_seed(1)
    hidden = full.norm(torch.randn(3, tied.hidden_size))
    logits = full.compute_logits(hidden)
    for rank in range(2):
        part = load_model(tied, torch.float32, CPU, 64, tp=TPGroup(rank, 2), lm_head_quantization="fp8")
        rows = slice(part.vocab_start, part.vocab_end)
        assert part.vocab_end - part.vocab_start == tied.vocab_size // 2
        assert isinstance(part.lm_head, Fp8Linear) and part.embed_tokens.weight.dtype == torch.float32
        assert torch.equal(part.lm_head.weight.view(torch.uint8), full.lm_head.weight[rows].view(torch.uint8))
        assert torch.equal(
            part.lm_head.weight_scale_inv, full.lm_head.weight_scale_inv[rank * 32 : rank * 32 + 32]
        )
        torch.testing.assert_close(part.lm_head(hidden).float(), logits[:, rows], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "name,options", [("llama-tied", {}), ("llama", {"quantization": "fp8"})], ids=["tied", "untied-fp8"]
)
def test_engine_generates_with_the_fp8_head(name, options):
    engine = get_engine(name, lm_head_quantization="fp8", **options)
    info = engine.get_server_info()
    assert info["lm_head_quantization"] == "fp8" and info["quantization"] == options.get("quantization")
    assert info["fp8_gemm"] == "torch reference"
    assert get_engine(name, **options).get_server_info()["lm_head_quantization"] is None

    ps = prompts(6, seed=11)
    greedy = {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True}
    outs = engine.generate(input_ids=ps, sampling_params=greedy, return_logprob=True, top_logprobs_num=5)
    assert [len(o["output_ids"]) for o in outs] == [24] * len(ps)
    # The same prompts again read their prefixes from the cache and decode the same tokens, up
    # to a near-tie of the first run. The last prompt token is now computed in a one-token
    # extend rather than the whole prompt's prefill: fp32 sums in another order, which the fp8
    # quantisation of every linear's input can amplify (the untied case), and this random model's
    # top-2 gaps are often a few hundredths of a nat. Where a rerun first takes another token, it
    # must be one the first run ranked within 0.25 nats of its choice.
    again = engine.generate(input_ids=ps, sampling_params=greedy)
    assert all(o["meta_info"]["cached_tokens"] > 0 for o in again)
    for first, rerun in zip(outs, again):
        diverge = next(
            (i for i, (x, y) in enumerate(zip(first["output_ids"], rerun["output_ids"])) if x != y), None
        )
        if diverge is not None:
            top = dict(first["meta_info"]["output_top_logprobs"][diverge])
            taken = rerun["output_ids"][diverge]
            assert taken in top and max(top.values()) - top[taken] < 0.25, (diverge, taken, top)
    if not options:  # the tied model (only its head in fp8) keeps the exact check
        assert [o["output_ids"] for o in again] == [o["output_ids"] for o in outs]
    usage = engine.check_accounting()
    assert usage["in_use_tokens"] == 0 and usage["locked_tokens"] == 0

    # teacher-forced on the same sequences: the generated tokens' logprobs close but not equal,
    # and the same top-1 but at near-ties (the untied random model's logits are flat: half its
    # top-1/top-2 gaps are under 0.11 nats, so its fp8 head flips about 9% of them)
    seqs = [p + o["output_ids"] for p, o in zip(ps, outs)]
    got, ref = _forced(engine, seqs), _forced(get_engine(name, **options), seqs)
    assert len(got) == len(ref) == len(ps) * 24
    diffs = [abs(g[0][0] - r[0][0]) for g, r in zip(got, ref)]
    assert 0 < max(diffs) < 0.3 and sum(diffs) / len(diffs) < 0.05, diffs
    flips = [r[1] for g, r in zip(got, ref) if g[1][0][0] != r[1][0][0]]
    assert len(flips) <= 0.2 * len(got)
    # a flip needs the head's errors, under 0.1 nats here, to close the reference's top-2 gap
    assert all(top[0][1] - top[1][1] < 0.25 for top in flips), flips


def _forced(engine, seqs: list[list[int]]) -> list[tuple]:
    """(logprob, token) and the top-2 [(token, logprob)] at each generated position (from 20)."""
    outs = engine.generate(
        input_ids=seqs,
        sampling_params={"max_new_tokens": 1},
        return_logprob=True,
        logprob_start_len=20,
        top_logprobs_num=2,
    )
    return [
        pair
        for o in outs
        for pair in zip(o["meta_info"]["input_token_logprobs"], o["meta_info"]["input_top_logprobs"])
    ]


def test_two_ranks_with_the_fp8_head_decode_like_one():
    """Engine(tp_size=2): each rank's fp8 head over its half of the vocabulary, logits gathered;
    the halves are whole blocks, so the greedy tokens are one rank's."""
    path = str(build_tiny_model("llama-tied"))
    ps = prompts(4, seed=3)
    greedy = {"max_new_tokens": 16, "temperature": 0, "ignore_eos": True}
    outs = {}
    for tp in (1, 2):
        with Engine(path, tp_size=tp, lm_head_quantization="fp8", max_total_tokens=4000) as engine:
            info = engine.get_server_info()
            assert info["tp_size"] == tp and info["lm_head_quantization"] == "fp8"
            outs[tp] = [o["output_ids"] for o in engine.generate(input_ids=ps, sampling_params=greedy)]
            usage = engine.check_accounting()
            assert usage["in_use_tokens"] == 0 and usage["locked_tokens"] == 0
    assert outs[2] == outs[1]
