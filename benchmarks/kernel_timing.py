"""Shared pieces of the GPU kernel benchmarks and tuners (bench_kernels.py, bench_fp8_gemm.py,
tune_fp8_gemm.py, tune_gemv.py, tune_dense_gemv.py, tune_fused_moe.py): loading the kernel modules,
CUDA-event timing (alone after an L2 flush, or inside a CUDA graph), checking a candidate before it is
timed, a tuning run's start and its table's writing, relative error."""

from __future__ import annotations

import datetime
import importlib
import importlib.util
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

HOLD_CYCLES = 20_000_000  # ~10 ms of GPU clock cycles: longer than queueing the timed calls takes
KERNELS_DIR = Path(__file__).resolve().parent.parent / "runtime" / "kernels"
# (N, K) of the Llama-3.1-8B linear layers: qkv, o_proj, gate_up, down
LLAMA_8B_SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)]


def parse_shape(s: str) -> tuple[int, int]:
    """argparse type for "N,K"."""
    n, k = s.split(",")
    return int(n), int(k)


def load_kernel_modules(*names: str) -> list:
    """`radixlm.runtime.kernels.<name>` for each name ("reference", "triton.fp8_gemm", ...).
    The kernel modules import only torch and triton, so where the radixlm package itself is
    not importable (its __init__ pulls in the serving stack, absent on a bare GPU image) they
    are loaded straight from their files."""
    try:
        return [importlib.import_module(f"radixlm.runtime.kernels.{n}") for n in names]
    except ImportError:
        mods = []
        for n in names:
            spec = importlib.util.spec_from_file_location(
                "kernel_" + n.replace(".", "_"), KERNELS_DIR / (n.replace(".", "/") + ".py")
            )
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            mods.append(mod)
        return mods


def time_ms(
    fn: Callable[[], object],
    flush: torch.Tensor,
    warmup: int = 10,
    reps: int = 50,
    budget_ms: float | None = None,
    hold_cycles: int = 50_000_000,
) -> float:
    """Median ms of `fn()` over `reps` calls (with `budget_ms`: fewer when a call is long, about
    that much in all, at least 5), each timed by CUDA events after an L2 flush (`evict_l2`), after
    `warmup` calls. The GPU is held busy (`hold_cycles` of clock, ~25 ms by default) while
    the host queues every rep: a call whose host side (Python wrapper, launch) outlasts the flush
    would otherwise time the host's gaps, not the kernels."""
    for _ in range(warmup):
        fn()
    if budget_ms is not None:
        first = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        evict_l2(flush)
        first[0].record()
        fn()
        first[1].record()
        torch.cuda.synchronize()
        reps = max(5, min(reps, int(budget_ms / max(first[0].elapsed_time(first[1]), 1e-3))))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    torch.cuda.synchronize()
    torch.cuda._sleep(hold_cycles)
    for s, e in zip(starts, ends):
        evict_l2(flush)
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def chain_time_ms(run_copy: Callable[[int], object], copies: int, reps: int = 20) -> float:
    """Median ms of one call within a CUDA graph of `copies` calls back to back, `run_copy(i)` on the
    i-th copy of the operands: how a kernel runs inside a decode step's graph (launched with PDL
    where it takes it, its ramp overlapping the tail of the call ahead), the copies' weights
    together several times L2, so each call reads its own from device memory. The graph's replay
    is one launch: no host gaps to hide."""
    for i in range(copies):  # compiles and allocations outside the capture
        run_copy(i)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(copies):
            run_copy(i)
    graph.replay()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for s, e in zip(starts, ends):
        s.record()
        graph.replay()
        e.record()
    torch.cuda.synchronize()
    del graph
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) / copies


def chain_copies(chain_mb: int, weight_bytes: int) -> int:
    """How many copies of a weight make `chain_mb` MB together (at least 2), for `chain_time_ms`;
    0 when chain_mb is 0 (each call timed alone)."""
    return max(2, -(-chain_mb * 2**20 // weight_bytes)) if chain_mb else 0


def time_copies(
    run_copy: Callable[[int], object], copies: int, flush: torch.Tensor, args, budget_ms: float
) -> float:
    """ms of one call: inside a CUDA graph over `copies` operand copies (`chain_time_ms`), or with
    copies 0 `run_copy(0)` alone after L2 flushes (`time_ms`, args.warmup / args.reps)."""
    if copies:
        return chain_time_ms(run_copy, copies)
    return time_ms(
        lambda: run_copy(0), flush, args.warmup, args.reps, budget_ms=budget_ms, hold_cycles=HOLD_CYCLES
    )


def evict_l2(flush: torch.Tensor) -> None:
    """Fill L2 with clean lines of `flush` (256 MB: five times an H100's L2) by reading it whole, so
    the next call reads its operands from device memory, as a layer of a forward pass does. A read,
    not a write: zeroing the buffer (what this did until 2026-11-26) left ~50 MB of dirty lines
    that the timed call then had to write back, adding ~10-15 us to short memory-bound calls."""
    torch.amax(flush.view(torch.int32))


def rel_err(out: torch.Tensor, expected: torch.Tensor) -> float:
    """Relative Frobenius error in fp64; NaN anywhere in `out` gives NaN."""
    if torch.isnan(out).any():
        return float("nan")
    out, expected = out.double(), expected.double()
    return float((out - expected).norm() / expected.norm().clamp_min(1e-30))


def check_and_time(
    run_copy: Callable[[int], object],
    out: torch.Tensor,
    expected: torch.Tensor,
    what: str,
    flush: torch.Tensor,
    args,
    budget_ms: float,
    copies: int = 0,
) -> float | None:
    """One candidate: `run_copy(0)` once on a NaN-poisoned output, checked against the reference
    computed from operand copy 0 (a wrong result stops the whole run), then timed by
    `time_copies` (alone after L2 flushes, or over `copies` operand copies in a CUDA graph). None
    when it does not fit the GPU."""
    from triton.runtime.errors import OutOfResources

    try:
        out.fill_(float("nan"))
        run_copy(0)
        torch.cuda.synchronize()
    except OutOfResources as exc:
        print(f"  skip {what}: {exc}", file=sys.stderr)
        return None
    err = rel_err(out, expected)
    if not err < 1e-2:  # NaN fails too
        raise SystemExit(f"CORRECTNESS FAILURE {what}: rel err {err:.3e}")
    return time_copies(run_copy, copies, flush, args, budget_ms)


def start_run(title: str, shapes, ms, out_path: Path) -> tuple[str, torch.Tensor, dict, str]:
    """A tuning run's common start: print its banner, seed, and return (card, the L2-eviction
    buffer, the config table at out_path ({} when missing or unreadable), today's date)."""
    import triton

    card = torch.cuda.get_device_name(0)
    print(
        " | ".join(
            [
                *([title] if title else []),
                f"card: {card}",
                f"torch {torch.__version__}",
                f"triton {triton.__version__}",
                f"shapes {shapes}",
                f"M {ms}",
            ]
        )
    )
    torch.manual_seed(0)
    flush = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    try:
        table = json.loads(Path(out_path).read_text())
    except (OSError, ValueError):
        table = {}
    return card, flush, table, datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")


def write_table(gemm, out_path: Path, table: dict, head: tuple[str, ...]) -> None:
    """Write the config table: the metadata keys of `head` (those present) first, then the rest in
    their order."""
    ordered = {key: table[key] for key in head if key in table}
    ordered.update((key, v) for key, v in table.items() if key not in ordered)
    Path(out_path).write_text(gemm.dump_configs(ordered))
