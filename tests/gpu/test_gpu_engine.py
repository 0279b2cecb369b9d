"""The runtime on a CUDA device: greedy parity with Hugging Face, KV sizing from GPU memory.
Skipped where CUDA is absent (CI); run on the GPU machine with `pytest tests/gpu`."""

from __future__ import annotations

import random

import pytest
import torch
from helpers import hf_greedy, hf_logprobs

from radixlm import Engine
from radixlm.testing import build_tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def ids_of(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(4, 8192) for _ in range(n)]


@pytest.mark.parametrize("dense_gemv, pdl", [("", "0"), ("force", "0"), ("force", "16")])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "llama3-rope"])
def test_fp32_greedy_matches_hf_on_gpu(arch, dense_gemv, pdl, monkeypatch):
    # "force": every linear at decode batches (up to 16 rows) through the dense GEMV, whose
    # tuned table lists no tiny shape; RADIXLM_PDL=16: the Triton kernels launched with
    # programmatic dependent launch up to 16 rows, not only at batch 1 (the scheduler process
    # reads both when it starts)
    monkeypatch.setenv("RADIXLM_DENSE_GEMV", dense_gemv)
    monkeypatch.setenv("RADIXLM_PDL", pdl)
    prompts = [ids_of(5 + 7 * i, 100 + i) for i in range(12)]
    with Engine(str(build_tiny_model(arch)), device="cuda", dtype="float32", max_total_tokens=400) as engine:
        outs = engine.generate(
            input_ids=prompts, sampling_params={"max_new_tokens": 16, "temperature": 0, "ignore_eos": True}
        )
        for ids, out in zip(prompts, outs):
            assert out["output_ids"] == hf_greedy(arch, ids, 16)
        engine.check_accounting()


def test_bf16_logprobs_close_to_fp32_hf_and_kv_pool_sized_from_gpu_memory():
    # Random tiny models have near-flat distributions with bf16 ties (HF's own bf16 model
    # ties and flips the first greedy token here), so bf16 is checked on logprobs.
    with Engine(str(build_tiny_model("llama")), device="cuda") as engine:
        info = engine.get_server_info()
        assert info["dtype"] == "bfloat16" and info["device"].startswith("cuda")
        assert info["max_total_tokens"] > 100_000  # 85% of an 80 GB card for a tiny model
        ids = ids_of(40, 7)
        out = engine.generate(
            input_ids=ids,
            sampling_params={"max_new_tokens": 3, "temperature": 0, "ignore_eos": True},
            return_logprob=True,
            logprob_start_len=0,
            top_logprobs_num=3,
        )
        ref = hf_logprobs("llama", ids)
        ours = torch.tensor([lp for lp, _ in out["meta_info"]["input_token_logprobs"][1:]])
        want = ref[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        assert (ours - want).abs().max().item() < 0.05
        assert out["output_ids"][0] in ref[-1].topk(3).indices.tolist()
        engine.check_accounting()


def test_cuda_graphs_and_triton_kernels_match_the_eager_reference_path():
    """Greedy fp32 tokens are identical with CUDA graphs on/off and Triton vs PyTorch kernels,
    for mixed prompt lengths (decode batches padded up to a captured size) and a shared prefix
    (extend over a cached prefix)."""
    shared = ids_of(300, 5)
    prompts = [ids_of(3 + 11 * i, 200 + i) for i in range(9)] + [
        shared + ids_of(7 * i + 1, 300 + i) for i in range(5)
    ]
    params = {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True}
    outs = {}
    for name, opts in {
        "graphs": {},
        "no-graphs": {"disable_cuda_graph": True},
        "torch": {"attention_backend": "torch"},
        "no-overlap": {"overlap_schedule": "off"},
    }.items():
        with Engine(
            str(build_tiny_model("llama")),
            device="cuda",
            dtype="float32",
            max_total_tokens=4000,
            cuda_graph_max_bs=8,
            **opts,
        ) as engine:
            info = engine.get_server_info()
            assert info["attention_backend"] == ("torch" if name == "torch" else "triton")
            assert bool(info["cuda_graph_batch_sizes"]) == (name in ("graphs", "no-overlap"))
            engine.generate(input_ids=shared, sampling_params={"max_new_tokens": 1})  # cache the prefix
            outs[name] = [o["output_ids"] for o in engine.generate(input_ids=prompts, sampling_params=params)]
            engine.check_accounting()
    assert outs["graphs"] == outs["no-graphs"] == outs["torch"] == outs["no-overlap"]


def test_overlap_matches_plain_steps_on_gpu_for_every_kind_of_request():
    from overlap_mix import assert_same_results, run_mix

    on, rt_on = run_mix("on", device="cuda", dtype="float32", cuda_graph_max_bs=16, max_total_tokens=4000)
    off, _ = run_mix("off", device="cuda", dtype="float32", cuda_graph_max_bs=16, max_total_tokens=4000)
    assert_same_results(on, off)
    assert rt_on.scheduler.stats.overlapped_steps > 10


def test_queuing_an_overlapped_decode_step_never_waits_for_the_device():
    """The whole point of overlap: building and queuing step N+1 must not block on step N.
    PyTorch's sync debug mode turns any host-device synchronisation inside into an error."""
    from helpers import LocalRuntime

    rt = LocalRuntime(
        "llama", device="cuda", overlap_schedule="on", cuda_graph_max_bs=8, max_total_tokens=4000
    )
    sched = rt.scheduler
    launch = sched._launch_decode
    launched = []

    def strict_launch(reqs, prev):
        if prev is None:
            return launch(reqs, prev)
        torch.cuda.set_sync_debug_mode("error")
        try:
            step = launch(reqs, prev)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        launched.append(len(reqs))
        return step

    sched._launch_decode = strict_launch
    params = [
        {"max_new_tokens": 20, "temperature": 0, "ignore_eos": True},
        {"max_new_tokens": 25, "temperature": 0.8, "top_p": 0.9, "top_k": 20, "min_new_tokens": 5},
        {"max_new_tokens": 18, "temperature": 1.0, "min_p": 0.1, "ignore_eos": True},
    ]
    reqs = [
        rt.submit(
            ids_of(10 + i, 500 + i),
            params[i % 3],
            return_logprob=i % 2 == 0,
            top_logprobs_num=2 * (i % 2 == 0),
            seed=i,
        )
        for i in range(6)
    ]
    rt.run_all()
    assert all(r.finished for r in reqs) and len(launched) > 10


def test_bf16_top5_logprobs_agree_with_hf_on_a_random_1b_shaped_model(tmp_path):
    """A Llama-3.2-1B-shaped model with random weights, bf16: at every prompt position our top-5
    tokens' logprobs match HF's (fp32 log-softmax of its bf16 logits) within bf16 noise, and the
    top-1 token agrees almost everywhere."""
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
    ids = ids_of(200, 11)
    with torch.inference_mode():
        ref = torch.log_softmax(hf(torch.tensor([ids], device="cuda")).logits[0].float(), -1).cpu()
    del hf
    torch.cuda.empty_cache()
    with Engine(str(tmp_path), device="cuda", max_total_tokens=2048) as engine:
        out = engine.generate(
            input_ids=ids,
            sampling_params={"max_new_tokens": 1, "temperature": 0},
            return_logprob=True,
            logprob_start_len=0,
            top_logprobs_num=5,
        )
    tops = out["meta_info"]["input_top_logprobs"][1:] + [out["meta_info"]["output_top_logprobs"][0]]
    assert len(tops) == len(ids)
    agree = in_top5 = 0
    worst = 0.0
    for pos, top in enumerate(tops):
        ours = dict(top)  # token -> logprob
        assert len(ours) == 5
        for tok, lp in ours.items():
            worst = max(worst, abs(lp - ref[pos, tok].item()))
        best = int(ref[pos].argmax())
        agree += max(ours, key=ours.get) == best
        in_top5 += best in ours
    assert worst < 0.15, worst
    # near-ties between random logits may swap under bf16 rounding; the sets must still agree
    assert agree >= 0.8 * len(ids) and in_top5 >= 0.97 * len(ids), (agree, in_top5)
