"""FP8 in the whole runtime on a CUDA device: the Triton path (fp8 GEMM, quant, fp8 KV store
and reads) against the PyTorch reference path of the same math, and an 8B-like 1B-shape model
with fp8 weights against its own bf16 run. Skipped without CUDA."""

from __future__ import annotations

import random

import pytest
import torch

from radixlm import Engine
from radixlm.runtime.kernels import reference as ref
from radixlm.testing import build_tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def ids_of(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(4, 8192) for _ in range(n)]


def test_fp8_store_kv_kernel_matches_reference():
    from radixlm.runtime.kernels.triton.kv_store import store_kv

    torch.manual_seed(0)
    tokens, heads, dim, slots_total = 37, 8, 128, 300
    for src in (torch.bfloat16, torch.float16, torch.float32):
        k = (torch.randn(tokens, heads, dim, device="cuda") * 3).to(src)
        v = (torch.randn(tokens, heads, dim, device="cuda") * 300).to(src)  # some saturate at 448
        slots = torch.randperm(slots_total - 1, device="cuda")[:tokens] + 1
        bufs = [
            torch.full((slots_total, heads, dim), float("nan"), device="cuda").to(torch.float8_e4m3fn)
            for _ in range(4)
        ]
        ref.store_kv(k, v, bufs[0], bufs[1], slots, k_scale=0.02, v_scale=0.5)
        store_kv(k, v, bufs[2], bufs[3], slots, k_scale=0.02, v_scale=0.5)
        for want, got in ((bufs[0], bufs[2]), (bufs[1], bufs[3])):
            w, g = want[slots].float(), got[slots].float()
            assert not torch.isnan(g).any()
            # same rounding, except where x / scale lands on a rounding tie computed in another order
            assert (w != g).float().mean() < 1e-3 and ((w - g).abs() <= w.abs() * 2**-3).all()


def teacher_forced_top5(engine: Engine, seqs: list[list[int]]) -> list[list[list[int]]]:
    outs = engine.generate(
        input_ids=seqs,
        sampling_params={"max_new_tokens": 1, "temperature": 0},
        return_logprob=True,
        logprob_start_len=0,
        top_logprobs_num=5,
    )
    return [[[t for t, _ in top] for top in o["meta_info"]["input_top_logprobs"][1:]] for o in outs]


# fp8 weights and fp8 KV together: two roundings whose tie-breaks differ between the paths
# (kernel vs reference accumulation order) compound over 12 free-running steps; on the H100
# 3 of 6 sequences stayed identical there while the teacher-forced top-1 held at >= 98%
@pytest.mark.parametrize(
    "options,free_running_equal",
    [
        ({"quantization": "fp8"}, True),
        ({"kv_cache_dtype": "fp8_e4m3", "chunked_prefill_size": 8}, True),
        ({"quantization": "fp8", "kv_cache_dtype": "fp8_e4m3"}, False),
    ],
)
def test_triton_fp8_path_matches_the_reference_path(options, free_running_equal):
    """The same fp8 math through Triton (fp8 GEMM, fp8 KV) and through the PyTorch reference
    kernels: top-1 predictions agree at (almost) every position, and greedy decoding (the
    decode kernel reading the fp8 cache, CUDA graphs on) yields the same tokens."""
    path = str(build_tiny_model("llama"))
    prompts = [ids_of(30 + 5 * i, 900 + i) for i in range(6)]
    greedy = {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}
    runs = {}
    for backend in ("triton", "torch"):
        with Engine(
            path, device="cuda", dtype="float32", max_total_tokens=4000, attention_backend=backend, **options
        ) as engine:
            seqs = [
                p + o["output_ids"]
                for p, o in zip(prompts, engine.generate(input_ids=prompts, sampling_params=greedy))
            ]
            runs[backend] = (
                seqs,
                teacher_forced_top5(engine, seqs if backend == "triton" else runs["triton"][0]),
            )
    pairs = [(a[0], b[0]) for x, y in zip(runs["triton"][1], runs["torch"][1]) for a, b in zip(x, y)]
    assert sum(a == b for a, b in pairs) >= 0.98 * len(pairs)
    same = sum(s == t for s, t in zip(runs["triton"][0], runs["torch"][0]))
    if free_running_equal:
        assert same >= len(prompts) - 1, same  # a near-tie may flip one sequence, not the rest


def test_fp8_weights_on_a_1b_shaped_model_agree_with_bf16(tmp_path):
    from radixlm.testing import random_llama, save_model_folder

    hf = random_llama(
        dict(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
        ),
        torch.bfloat16,
        "cuda",
    )
    save_model_folder(hf, tmp_path)
    del hf
    torch.cuda.empty_cache()
    seqs = [ids_of(160, 40 + i) for i in range(4)]
    tops = {}
    for name, opts in {
        "bf16": {},
        "fp8": {"quantization": "fp8"},
        "fp8-kv": {"quantization": "fp8", "kv_cache_dtype": "fp8_e4m3", "chunked_prefill_size": 32},
    }.items():
        with Engine(str(tmp_path), device="cuda", max_total_tokens=4096, **opts) as engine:
            info = engine.get_server_info()
            assert info["quantization"] == (None if name == "bf16" else "fp8")
            tops[name] = teacher_forced_top5(engine, seqs)
            out = engine.generate(
                input_ids=seqs[0],
                sampling_params={"max_new_tokens": 16, "temperature": 0, "ignore_eos": True},
            )
            assert len(out["output_ids"]) == 16
    # A random N(0, 0.02) model has near-flat next-token distributions, and e4m3 adds ~3.7%
    # relative error per GEMM (bf16: ~0.4%), so top-1 flips often: measured 0.43 top-1 / 0.52
    # top-5 overlap on the H100, and 0.39 / 0.51 for the PyTorch reference fp8 math against
    # fp32 on the CPU with this same shape (bf16 there: 0.92). Chance is ~1e-5: these bounds
    # catch a broken path, the tiny models' >= 90% (tests/runtime/models/test_fp8_model.py) the quality.
    for name in ("fp8", "fp8-kv"):
        pairs = [(a, b) for x, y in zip(tops["bf16"], tops[name]) for a, b in zip(x, y)]
        top1 = sum(a[0] == b[0] for a, b in pairs) / len(pairs)
        overlap = sum(len(set(a) & set(b)) / 5 for a, b in pairs) / len(pairs)
        assert top1 >= 0.3 and overlap >= 0.4, (name, top1, overlap)
