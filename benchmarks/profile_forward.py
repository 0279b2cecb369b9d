"""Where a forward's device time goes: one long prefill and a run of decode steps of the
Llama-3.1-8B shape (random weights), under torch.profiler, kernel by kernel.

    python benchmarks/profile_forward.py --model-dir /tmp/bench-8b --out profile.json
    python benchmarks/profile_forward.py --model-dir /tmp/bench-8b --quantization fp8 \\
        --fp8-gemm-backend triton

The model runner and scheduler run in this process (as tests/helpers.LocalRuntime does), so the
profiler sees every kernel; decode steps replay their CUDA graphs as in serving (CUPTI reports the
kernels inside a graph). The folder is built first when missing (benchmarks/bench_offline.py's
model: HF LlamaForCausalLM with the 8B config and random N(0, 0.02) weights). For each phase it
prints the wall time, the summed kernel time, and the kernels grouped by name with their share
and their advance of the device timeline (under PDL runs overlap: `device_kernels`), then one
decoder layer position by position: the numbers to decide what to optimise, beside the
end-to-end figures of bench_offline.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_info import command_line, git_commit, git_dirty, utc_now


def build_folder(folder: Path, seed: int) -> None:
    from bench_offline import SHAPES

    from radixlm.testing import random_llama, save_model_folder

    hf = random_llama(SHAPES["llama-3.1-8b"], torch.bfloat16, "cuda", seed)
    save_model_folder(hf, folder)
    del hf
    torch.cuda.empty_cache()


class InProcess:
    """ModelRunner + Scheduler in this process; requests are token ids."""

    def __init__(self, folder: Path, options: dict) -> None:
        from radixlm.runtime.config import EngineConfig, ModelConfig
        from radixlm.runtime.model_executor.model_runner import ModelRunner
        from radixlm.runtime.scheduler.scheduler import Scheduler

        self.config = EngineConfig.from_kwargs(str(folder), **options)
        model_cfg = ModelConfig.from_path(str(folder))
        self.runner = ModelRunner(self.config, model_cfg)
        self.scheduler = Scheduler(self.config, self.runner, lambda ids: "", None)
        self.count = 0

    def submit(self, ids: list[int], max_new: int):
        from radixlm.runtime.layers.sampling import SamplingParams
        from radixlm.runtime.scheduler.request import Req

        self.count += 1
        sp = SamplingParams.from_any({"max_new_tokens": max_new, "temperature": 0, "ignore_eos": True})
        req = Req(
            rid=f"p{self.count}", origin_input_ids=list(ids), sampling_params=sp, seed=0, eos_ids=frozenset()
        )
        self.scheduler.add_request(req)
        return req

    def steps(self, n: int | None = None) -> int:
        done = 0
        while self.scheduler.has_work and (n is None or done < n):
            self.scheduler.step()
            done += 1
        torch.cuda.synchronize()
        return done


def device_kernels(prof) -> list[tuple[str, float, float, float]]:
    """The device's kernels in start order, each (name, run, advance, gap before) in us. Under PDL
    a kernel starts while the one ahead drains, so runs overlap and add up to more than the step:
    what a kernel costs is how far it moves the timeline's end (its advance), and the idle time
    before it is a gap (between steps, that includes the host's turn)."""
    events = sorted(
        (e.time_range.start, e.time_range.end, e.name)
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA
    )
    frontier = events[0][0] if events else 0.0
    kernels = []
    for start, end, name in events:
        gap = max(0.0, start - frontier)
        advance = max(0.0, end - max(frontier, start))
        frontier = max(frontier, end)
        kernels.append((name, end - start, advance, gap))
    return kernels


def kernel_table(kernels: list[tuple], steps: int) -> tuple[list[dict], float]:
    """Per kernel name, ms per step of run, advance and gap before (`device_kernels`), and calls
    per step, largest run first; and the summed run time per step."""
    by_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0])
    for name, run, advance, gap in kernels:
        entry = by_name[name]
        entry[0] += run / 1e3  # us -> ms
        entry[1] += advance / 1e3
        entry[2] += gap / 1e3
        entry[3] += 1
    total = sum(v[0] for v in by_name.values())
    rows = [
        {
            "kernel": name,
            "ms_per_step": ms / steps,
            "advance_ms_per_step": advance / steps,
            "gap_ms_per_step": gap / steps,
            "calls_per_step": calls / steps,
            "share": ms / total if total else 0.0,
        }
        for name, (ms, advance, gap, calls) in sorted(by_name.items(), key=lambda kv: -kv[1][0])
    ]
    return rows, total / steps


def timeline(kernels: list[tuple], steps: int) -> dict | None:
    """The device timeline of `device_kernels`: its span and idle time per step, and the step's
    repeating unit (a decoder layer), position by position, averaged over every place it occurs.
    None without kernels."""
    if not kernels:
        return None
    unit, places = _layer_unit(kernels)
    return {
        "span_ms_per_step": sum(k[2] + k[3] for k in kernels) / 1e3 / steps,
        "gap_ms_per_step": sum(k[3] for k in kernels) / 1e3 / steps,
        "layer_unit": unit,
        "layers_matched": places,
    }


def _layer_unit(kernels: list[tuple]) -> tuple[list[dict], int]:
    """The shortest period p that repeats three times running somewhere in the middle of the
    kernel sequence (several windows: one may straddle a step's edge), started where that
    pattern first begins; then its kernels averaged over every place the whole unit occurs.
    ([], 0) when none repeats."""
    names = [k[0] for k in kernels]
    n = len(names)
    period = None
    for w in (n // 2, n // 3, 2 * n // 3, n // 4, n // 8, n // 16):
        for p in range(2, (n - w) // 3):
            if all(names[w + i] == names[w + i + p] for i in range(2 * p)):
                period, window = p, w
                break
        if period:
            break
    if not period:
        return [], 0
    # start the unit where the pattern first begins (a step's first layer: the embedding and
    # anything before it are not part of it)
    seen = names[window : window + period]
    rotations = {tuple(seen[k:] + seen[:k]) for k in range(period)}
    first = next(
        i
        for i in range(n - 2 * period + 1)
        if tuple(names[i : i + period]) in rotations
        and names[i : i + period] == names[i + period : i + 2 * period]
    )
    layer = names[first : first + period]
    places, i = [], 0
    while i + period <= n:
        if names[i : i + period] == layer:
            places.append(i)
            i += period
        else:
            i += 1
    unit = []
    for k in range(period):
        vals = [kernels[i + k] for i in places]
        unit.append(
            {
                "kernel": layer[k],
                "us": sum(v[1] for v in vals) / len(vals),
                "advance_us": sum(v[2] for v in vals) / len(vals),
                "gap_us": sum(v[3] for v in vals) / len(vals),
            }
        )
    return unit, len(places)


def print_timeline(tl: dict) -> None:
    print(
        f"  timeline: {tl['span_ms_per_step']:.3f} ms a step from the first kernel's start to the last's "
        f"end, {tl['gap_ms_per_step']:.3f} ms of it idle"
    )
    if tl["layer_unit"]:
        print(f"  one layer ({tl['layers_matched']} matched), us: run / advance / gap before")
        for r in tl["layer_unit"]:
            print(f"    {r['us']:7.2f} {r['advance_us']:7.2f} {r['gap_us']:6.2f}  {r['kernel'][:80]}")


def profile_phase(label: str, run, steps: int, top: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        run()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t) / steps
    kernels = device_kernels(prof)
    rows, kernel_ms = kernel_table(kernels, steps)
    print(
        f"\n== {label}: wall {wall * 1e3:.2f} ms a step, kernels {kernel_ms:.2f} ms a step "
        f"({kernel_ms / (wall * 1e3):.0%} of wall); run, share, advance (how far it moves the end)"
    )
    for r in rows[:top]:
        print(
            f"  {r['ms_per_step']:8.3f} ms {r['share']:6.1%} {r['advance_ms_per_step']:8.3f} ms "
            f"{r['calls_per_step']:6.1f}x  {r['kernel'][:100]}"
        )
    tl = timeline(kernels, steps)
    if tl:
        print_timeline(tl)
    return {
        "label": label,
        "wall_ms_per_step": wall * 1e3,
        "kernel_ms_per_step": kernel_ms,
        "kernels": rows,
        "timeline": tl,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=Path("/tmp/bench-8b"))
    p.add_argument("--quantization", choices=["none", "fp8"], default="none")
    p.add_argument("--fp8-gemm-backend", choices=["auto", "triton"], default="auto")
    p.add_argument("--kv-cache-dtype", default="auto")
    p.add_argument("--prefill-len", type=int, default=8192)
    p.add_argument("--decode-batch", type=int, default=1)
    p.add_argument("--decode-input-len", type=int, default=512)
    p.add_argument("--decode-steps", type=int, default=32)
    p.add_argument("--top", type=int, default=25, help="kernels listed per phase")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("profile_forward.py needs a CUDA GPU")
    if not (args.model_dir / "config.json").exists():
        t = time.perf_counter()
        build_folder(args.model_dir, args.seed)
        print(f"built {args.model_dir} in {time.perf_counter() - t:.0f} s", flush=True)
    options = {
        "device": "cuda",
        "dtype": "bfloat16",
        "context_length": args.prefill_len + 64,
        "max_prefill_tokens": max(16384, args.prefill_len),
        "chunked_prefill_size": max(8192, args.prefill_len),
        "kv_cache_dtype": args.kv_cache_dtype,
        "fp8_gemm_backend": args.fp8_gemm_backend,
        "overlap_schedule": "off",
    }
    if args.quantization == "fp8":
        options["quantization"] = "fp8"
    t = time.perf_counter()
    rt = InProcess(args.model_dir, options)
    print(f"loaded in {time.perf_counter() - t:.0f} s; fp8 GEMM: {rt.runner.fp8_gemm}", flush=True)
    gen = torch.Generator().manual_seed(args.seed)
    vocab = rt.runner.vocab_size

    def ids(n: int) -> list[int]:
        return torch.randint(1, vocab, (n,), generator=gen).tolist()

    # warm-up: kernel compiles and autotuning for both phases
    rt.submit(ids(args.prefill_len), 1)
    rt.steps()
    for _ in range(args.decode_batch):
        rt.submit(ids(args.decode_input_len), 4)
    rt.steps()

    phases = []
    rt.submit(ids(args.prefill_len), 1)
    phases.append(profile_phase(f"prefill {args.prefill_len} tokens", lambda: rt.steps(), 1, args.top))

    for _ in range(args.decode_batch):
        rt.submit(ids(args.decode_input_len), args.decode_steps + 2)
    rt.steps(1)  # the prefill of the decode requests, outside the profile
    phases.append(
        profile_phase(
            f"decode b={args.decode_batch}", lambda: rt.steps(args.decode_steps), args.decode_steps, args.top
        )
    )
    rt.steps()

    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "run_info": {
                        "commit": git_commit(),
                        "dirty": git_dirty(),
                        "date": utc_now(),
                        "card": torch.cuda.get_device_name(0),
                    },
                    "command": command_line(argv),
                    "options": options,
                    "fp8_gemm": rt.runner.fp8_gemm,
                    "phases": phases,
                },
                indent=1,
            )
        )
        print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
