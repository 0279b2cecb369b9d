"""Hugging Face transformers `generate` as the peer baseline, on the same model and prompts.

    from hf_baseline import run_hf_baseline
    result = run_hf_baseline("/path/to/hf-folder", [[1, 2, 3], [4, 5]], [16, 16], batch_size=8)
    result["output_throughput"], result["e2e_ms"]["p90"]

What runs: `AutoModelForCausalLM.from_pretrained(path, dtype=..., attn_implementation="sdpa")`,
then `model.generate` on batches of the given prompts (token ids; no tokenizer involved), greedy,
with `min_new_tokens = max_new_tokens = output_len` so EOS cannot end a sequence early and every
request produces exactly the tokens it asked for, as `ignore_eos` does in radixlm's runs.

Batching: requests are sorted by (output length, prompt length) -- what a user batching for HF
would do to waste the least padding -- and cut into batches of `batch_size`, each left-padded
(decoder-only models generate from the right edge) with an attention mask. A batch generates
max(output_len in the batch) tokens; output throughput counts only the tokens the requests asked
for (padding-free prompt tokens for the input side), so a mixed-length batch's extra tokens are
HF's cost, not credit. With equal output lengths (the generated-shared-prefix dataset) nothing is
wasted. Batches run one after another, all requests "arriving" at t=0: a request's latency is the
time from the run's start to the end of its batch (comparable to serving.py's E2E with
`--request-rate inf`). HF has no streaming hook here, so there is no TTFT/ITL.

Modes:
  eager           the default DynamicCache, no compilation.
  static-compile  `cache_implementation="static"`: a pre-allocated StaticCache, with which
                  transformers compiles the decode step (torch.compile) -- but only on an
                  accelerator (its auto-compile criteria require cuda/xpu/...); on CPU this mode
                  is a static cache without compilation and `compiled` is reported False. On GPU
                  the warm-up run pays the compilation; each distinct batch shape compiles once.

Timing: one untimed warm-up pass over the whole workload (allocator, compilation), then `repeats`
timed passes; the median-duration pass is reported, with every duration. CPU threads: the torch
thread count of this process (set it with `threads=`; recorded as `torch_threads`).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch

MODES = ("eager", "static-compile")


def _resolve(device: str, dtype: str) -> tuple[str, torch.dtype]:
    """'auto' as radixlm's Engine resolves it: cuda when available, fp32 on CPU and bf16 on GPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "float32" if device == "cpu" else "bfloat16"
    return device, getattr(torch, dtype)


def load_hf_model(model_path: str, device: str = "auto", dtype: str = "auto") -> Any:
    """The checkpoint as transformers loads it, with SDPA attention, in eval mode on `device`."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the per-load weight bar would clutter benchmark output
    device, torch_dtype = _resolve(device, dtype)
    model = AutoModelForCausalLM.from_pretrained(
        str(model_path), dtype=torch_dtype, attn_implementation="sdpa"
    )
    return model.to(device).eval()


def _pad_id(model: Any) -> int:
    """Any id works for padding (the attention mask hides it); prefer the model's own pad id."""
    configs = (model.generation_config, model.config)
    for cfg in configs:
        if isinstance(getattr(cfg, "pad_token_id", None), int):
            return cfg.pad_token_id
    for cfg in configs:
        eos = getattr(cfg, "eos_token_id", None)
        if isinstance(eos, int):
            return eos
        if isinstance(eos, list) and eos:
            return int(eos[0])
    return 0


def make_batches(
    prompts: Sequence[Sequence[int]], output_lens: Sequence[int], batch_size: int
) -> list[list[int]]:
    """Request indices per batch: sorted by (output length, prompt length), then cut."""
    order = sorted(range(len(prompts)), key=lambda i: (output_lens[i], len(prompts[i]), i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _summary_ms(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "median": None, "p90": None, "p99": None}
    ordered = sorted(v * 1000.0 for v in values)

    def pct(q: float) -> float:  # linear interpolation, as numpy.percentile's default
        pos = (len(ordered) - 1) * q
        lo, hi = math.floor(pos), math.ceil(pos)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)

    return {"mean": statistics.fmean(ordered), "median": pct(0.5), "p90": pct(0.9), "p99": pct(0.99)}


class HFRunner:
    """One loaded model and generation setup; `run_pass` times one pass over the workload."""

    def __init__(self, model: Any, mode: str = "eager") -> None:
        if mode not in MODES:
            raise ValueError(f"unknown HF mode {mode!r}; choose one of {MODES}")
        self.model, self.mode = model, mode
        self.device = next(model.parameters()).device
        self.pad_id = _pad_id(model)

    def _generation_config(self, n_new: int) -> Any:
        cfg = self.model.generation_config.__class__.from_dict(self.model.generation_config.to_dict())
        cfg.do_sample = False
        cfg.temperature = cfg.top_p = cfg.top_k = None  # greedy; no sampling knobs left to warn about
        cfg.max_new_tokens = cfg.min_new_tokens = n_new  # fixed length: EOS is masked until the end
        cfg.pad_token_id = self.pad_id
        cfg.cache_implementation = "static" if self.mode == "static-compile" else None
        return cfg

    @torch.inference_mode()
    def generate_batch(self, prompts: list[Sequence[int]], n_new: int) -> torch.Tensor:
        """Left-padded batch -> the generated tokens only, shape [batch, n_new]."""
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            mask[row, width - len(p) :] = 1
        out = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            generation_config=self._generation_config(n_new),
        )
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return out[:, width:]

    def run_pass(
        self, prompts: Sequence[Sequence[int]], output_lens: Sequence[int], batches: list[list[int]]
    ) -> tuple[float, list[float], int]:
        """(duration, per-request latency from the pass's start, tokens generated incl. waste)."""
        latency = [0.0] * len(prompts)
        generated = 0
        t0 = time.perf_counter()
        for batch in batches:
            n_new = max(output_lens[i] for i in batch)
            out = self.generate_batch([prompts[i] for i in batch], n_new)
            if out.shape[1] != n_new:  # min_new_tokens must make every length exact
                raise RuntimeError(f"HF generate returned {out.shape[1]} new tokens, asked for {n_new}")
            generated += out.numel()
            done = time.perf_counter() - t0
            for i in batch:
                latency[i] = done
        return time.perf_counter() - t0, latency, generated


def run_hf_baseline(
    model_path: str,
    prompts: Sequence[Sequence[int]],
    output_lens: Sequence[int],
    batch_size: int,
    mode: str = "eager",
    device: str = "auto",
    dtype: str = "auto",
    repeats: int = 1,
    warmup: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """Load the model, run `warmup` + `repeats` passes over the prompts, report the median pass.

    Returns throughput (request/input/output/total per second, output = requested tokens only),
    per-request latency percentiles (`e2e_ms`, ms from the pass's start), the wall time of every
    pass, and the setup (mode, device, dtype, batch size, threads, whether decode was compiled)."""
    if len(prompts) != len(output_lens) or not prompts:
        raise ValueError("need one output length per prompt, and at least one prompt")
    if batch_size < 1 or repeats < 1:
        raise ValueError("batch_size and repeats must be >= 1")
    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)  # same thread budget as the radixlm engine was given
    try:
        t_load = time.perf_counter()
        model = load_hf_model(model_path, device, dtype)
        load_s = time.perf_counter() - t_load
        runner = HFRunner(model, mode)
        batches = make_batches(prompts, output_lens, batch_size)
        warmup_s = None
        if warmup:
            warmup_s = runner.run_pass(prompts, output_lens, batches)[0]
        passes = [runner.run_pass(prompts, output_lens, batches) for _ in range(repeats)]
        torch_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(saved_threads)
    order = sorted(range(len(passes)), key=lambda i: passes[i][0])
    duration, latency, generated = passes[order[len(order) // 2]]
    n_in = sum(len(p) for p in prompts)
    n_out = sum(output_lens)
    dev = runner.device
    return {
        "engine": f"hf-{mode}",
        "mode": mode,
        "device": str(dev),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "attn_implementation": "sdpa",
        "batch_size": batch_size,
        "num_batches": len(batches),
        "torch_threads": torch_threads,
        # transformers compiles the decode step only for a static cache on an accelerator
        "compiled": mode == "static-compile" and dev.type != "cpu",
        "completed": len(prompts),
        "failed": 0,
        "duration_s": duration,
        "durations_all_s": [p[0] for p in passes],
        "warmup_s": warmup_s,
        "load_s": load_s,
        # output tokens count what the requests asked for; generated_tokens_total adds the tokens a
        # mixed-length batch generates past a request's own length (HF's waste, not credited)
        "total_input_tokens": n_in,
        "total_output_tokens": n_out,
        "generated_tokens_total": generated,
        "request_throughput": len(prompts) / duration,
        "input_throughput": n_in / duration,
        "output_throughput": n_out / duration,
        "total_throughput": (n_in + n_out) / duration,
        "e2e_ms": _summary_ms(latency),
        "cache_hit_rate": 0.0,  # generate reuses nothing across requests: every prompt token is computed
    }
