"""Time the Triton kernels (runtime/kernels/triton/) at Llama-3.1-8B shapes on one GPU.

    python benchmarks/bench_kernels.py --out kernels.json

Shapes: H=32 query heads, Hkv=8 KV heads, D=128, bf16, hidden 4096, intermediate 14336.
  * decode attention at B in {1, 32, 64} x seq in {512, 2048, 8192}: the heuristic's
    num_kv_splits and a sweep of others, timed as CUDA-graph replays (as the runtime runs
    decode; eager_ms, with the host's launch cost, is kept too), then a few stage-1 tile
    configs at three of those shapes; reported as GB/s of KV bytes read (B*seq*Hkv*D*2
    tensors*2 bytes) against a measured device-to-device copy bandwidth (bytes read + written);
  * extend attention, one 8192-token prefill with no prefix (TFLOP/s on the causal FLOPs
    4*T*T/2*H*D), against torch SDPA (is_causal, enable_gqa) on [1, H, T, D], and 4096 new
    tokens over a 4096-token cached prefix; several tile configs are tried, the best reported;
  * rmsnorm, fused add+rmsnorm, silu_and_mul, rotary, KV store at T=1 and T=8192 against
    their torch eager versions (GB/s of the bytes the op must move).
Every timed kernel is first checked against runtime/kernels/reference.py (bf16 tolerance).

Timing: triton.testing.do_bench, median, after its warm-up. do_bench zeroes a 256 MB buffer
before every timed call, which evicts L2, so each call starts cold as it would in a forward
pass (where every layer's KV and weights differ) and inputs need no rotation. Inputs are fresh
random data (never zeros). The KV pool's slots are a random permutation (worst-case paging).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from kernel_timing import load_kernel_modules, rel_err
from triton.runtime.errors import OutOfResources
from triton.testing import do_bench

H, HKV, D = 32, 8, 128
HIDDEN, INTER = 4096, 14336
DTYPE = torch.bfloat16
DEV = "cuda"
BF16_TOL = 1e-2  # relative Frobenius error


ref, dec, ext, norm, act, rot, kvs = load_kernel_modules(
    "reference",
    "triton.decode_attention",
    "triton.extend_attention",
    "triton.norm",
    "triton.activation",
    "triton.rotary",
    "triton.kv_store",
)
RESULTS: list[dict] = []


def check(name: str, out: torch.Tensor, expected: torch.Tensor, tol: float = BF16_TOL) -> float:
    err = rel_err(out, expected)
    if not err < tol:  # NaN fails too
        raise SystemExit(f"CORRECTNESS FAILURE {name}: rel err {err:.3e} (tol {tol:g})")
    return err


def bench(fn) -> float:
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def record(group: str, name: str, ms: float, **fields) -> None:
    RESULTS.append({"group": group, "name": name, "ms": ms, **fields})


def measure_ceilings() -> tuple[float, float]:
    src = torch.randn(256 * 2**20, device=DEV, dtype=DTYPE)  # 512 MB
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    copy_gbs = 2 * src.numel() * 2 / ms / 1e6
    a = torch.randn(8192, 8192, device=DEV, dtype=DTYPE)
    b = torch.randn(8192, 8192, device=DEV, dtype=DTYPE)
    ms_mm = bench(lambda: a @ b)
    mm_tflops = 2 * 8192**3 / ms_mm / 1e9
    record("ceiling", "d2d copy 512MB", ms, gbs=copy_gbs)
    record("ceiling", "bf16 matmul 8192^3", ms_mm, tflops=mm_tflops)
    return copy_gbs, mm_tflops


# ------------------------------------------------------------------------------ decode


def paged_pool(lens: list[int]):
    """Random K/V for requests of the given lengths, each request's slots scattered at random."""
    total = sum(lens)
    perm = torch.randperm(total, device=DEV) + 1  # slot 0 is the dummy slot
    k = torch.randn(total + 1, HKV, D, device=DEV, dtype=DTYPE)
    v = torch.randn(total + 1, HKV, D, device=DEV, dtype=DTYPE)
    r2t = torch.zeros(len(lens), max(lens), dtype=torch.int32, device=DEV)
    pos = 0
    for i, n in enumerate(lens):
        r2t[i, :n] = perm[pos : pos + n].to(torch.int32)
        pos += n
    return k, v, r2t, torch.arange(len(lens), device=DEV)


def graphed(fn):
    """fn captured in a CUDA graph; returns the replay. Decode runs under CUDA graphs in the
    runtime, and two Triton launches from Python cost more host time (~35 us each) than a small
    decode takes on the GPU, so eager timings of small shapes measure the host, not the kernel."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def bench_decode(copy_gbs: float, num_sms: int) -> None:
    scale = D**-0.5
    for batch in (1, 32, 64):
        for seq in (512, 2048, 8192):
            k, v, r2t, rows = paged_pool([seq] * batch)
            seq_lens = torch.full((batch,), seq, device=DEV)
            q = torch.randn(batch, H, D, device=DEV, dtype=DTYPE)
            expected = ref.decode_attention(q, k, v, r2t, rows, seq_lens, scale)
            kv_bytes = batch * seq * HKV * D * 2 * 2
            chosen = dec.choose_num_kv_splits(batch, HKV, seq, num_sms)
            for splits in sorted({chosen, 1, 2, 4, 8, 16}):
                out = torch.full_like(q, float("nan"))
                # preallocated like the runtime's per-batch metadata, not per call
                part = torch.empty(batch, H, splits, D, device=DEV)
                lse = torch.empty(batch, H, splits, device=DEV)

                def run():
                    return dec.decode_attention(
                        q,
                        k,
                        v,
                        r2t,
                        rows,
                        seq_lens,
                        scale,
                        num_kv_splits=splits,
                        out=out,
                        partial_out=part,
                        partial_lse=lse,
                    )

                err = check(f"decode B={batch} seq={seq} splits={splits}", run(), expected)
                eager_ms = bench(run)
                ms = bench(graphed(run))
                gbs = kv_bytes / ms / 1e6
                record(
                    "decode",
                    f"B={batch} seq={seq}",
                    ms,
                    splits=splits,
                    heuristic=splits == chosen,
                    gbs=gbs,
                    frac_of_copy=gbs / copy_gbs,
                    eager_ms=eager_ms,
                    rel_err=err,
                )


# (block_n, num_warps, num_stages) of decode stage 1; the first is the default
DECODE_CONFIGS = [(dec.DECODE_BLOCK_N, 4, 2), (32, 4, 2), (128, 4, 2), (64, 4, 3), (64, 8, 2), (128, 8, 3)]
DECODE_TUNE_SHAPES = [(1, 8192), (32, 512), (64, 2048)]  # (batch, seq), at the heuristic's splits


def tune_decode(copy_gbs: float, num_sms: int) -> None:
    """Stage-1 tile configs at a latency-bound, a mid and a bandwidth-bound shape."""
    scale = D**-0.5
    for batch, seq in DECODE_TUNE_SHAPES:
        k, v, r2t, rows = paged_pool([seq] * batch)
        seq_lens = torch.full((batch,), seq, device=DEV)
        q = torch.randn(batch, H, D, device=DEV, dtype=DTYPE)
        expected = ref.decode_attention(q, k, v, r2t, rows, seq_lens, scale)
        splits = dec.choose_num_kv_splits(batch, HKV, seq, num_sms)
        out = torch.full_like(q, float("nan"))
        part = torch.empty(batch, H, splits, D, device=DEV)
        lse = torch.empty(batch, H, splits, device=DEV)
        for block_n, warps, stages in DECODE_CONFIGS:

            def run():
                return dec.decode_attention(
                    q,
                    k,
                    v,
                    r2t,
                    rows,
                    seq_lens,
                    scale,
                    num_kv_splits=splits,
                    out=out,
                    partial_out=part,
                    partial_lse=lse,
                    block_n=block_n,
                    num_warps=warps,
                    num_stages=stages,
                )

            try:
                check(f"decode tune B={batch} seq={seq} {block_n, warps, stages}", run(), expected)
            except OutOfResources as exc:
                print(f"skipping decode config {block_n, warps, stages}: {exc}")
                continue
            ms = bench(graphed(run))
            gbs = batch * seq * HKV * D * 4 / ms / 1e6
            record(
                "dec_tune",
                f"B={batch} seq={seq} splits={splits}",
                ms,
                block_n=block_n,
                num_warps=warps,
                num_stages=stages,
                gbs=gbs,
                frac_of_copy=gbs / copy_gbs,
            )


# ------------------------------------------------------------------------------ extend

EXTEND_CONFIGS = list(
    dict.fromkeys(
        [  # the default first; duplicates dropped
            ext.choose_extend_config(D, DTYPE),
            ext.ExtendConfig(128, 128, 8, 3),
            ext.ExtendConfig(128, 64, 8, 3),
            ext.ExtendConfig(128, 64, 4, 3),
            ext.ExtendConfig(64, 64, 4, 3),
            ext.ExtendConfig(128, 64, 8, 2),
        ]
    )
)


def extend_inputs(prefix: int, new: int):
    k_buf, v_buf, r2t, rows = paged_pool([max(prefix, 1)])
    q = torch.randn(new, H, D, device=DEV, dtype=DTYPE)
    k = torch.randn(new, HKV, D, device=DEV, dtype=DTYPE)
    v = torch.randn(new, HKV, D, device=DEV, dtype=DTYPE)
    meta = (rows, torch.tensor([prefix], device=DEV), torch.tensor([new], device=DEV))
    return q, k, v, k_buf, v_buf, r2t, meta


def run_extend(inputs, cfg, out):
    q, k, v, k_buf, v_buf, r2t, (rows, prefix_lens, extend_lens) = inputs
    return ext.extend_attention(
        q,
        k,
        v,
        k_buf,
        v_buf,
        r2t,
        rows,
        prefix_lens,
        extend_lens,
        D**-0.5,
        max_extend_len=q.shape[0],
        out=out,
        config=cfg,
    )


def bench_extend(mm_tflops: float) -> None:
    # correctness of every config against the reference at a size the reference handles
    small = extend_inputs(1000, 1500)
    sq, sk, sv, skb, svb, sr2t, (srows, spl, sel) = small
    expected_small = ref.extend_attention(sq, sk, sv, skb, svb, sr2t, srows, spl, sel, D**-0.5)
    configs = []
    for cfg in EXTEND_CONFIGS:
        try:
            out = run_extend(small, cfg, torch.full_like(sq, float("nan")))
        except OutOfResources as exc:  # e.g. too many stages for the shared memory
            print(f"skipping {cfg}: {exc}")
            record("extend", "config skipped", float("nan"), config=cfg.__dict__, error=str(exc))
            continue
        check(f"extend {cfg}", out, expected_small)
        configs.append(cfg)

    for prefix, new in ((0, 8192), (4096, 4096)):
        inputs = extend_inputs(prefix, new)
        flops = 4 * new * prefix * H * D + 4 * new * new / 2 * H * D
        out = torch.full_like(inputs[0], float("nan"))
        timings = []
        for cfg in configs:
            ms = bench(lambda: run_extend(inputs, cfg, out))
            timings.append((ms, cfg))
            record(
                "extend",
                f"prefix={prefix} new={new}",
                ms,
                config=cfg.__dict__,
                tflops=flops / ms / 1e9,
                frac_of_matmul=flops / ms / 1e9 / mm_tflops,
            )
        if prefix == 0:  # torch SDPA (flash) on the same problem; its output cross-checks ours
            q, k, v = (t.transpose(0, 1).unsqueeze(0).contiguous() for t in inputs[:3])  # [1, heads, T, D]

            def sdpa():
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

            ours = run_extend(inputs, min(timings, key=lambda t: t[0])[1], out)
            check("extend vs SDPA 8192", ours, sdpa()[0].transpose(0, 1))
            ms = bench(sdpa)
            record(
                "extend",
                f"torch SDPA prefix=0 new={new}",
                ms,
                tflops=flops / ms / 1e9,
                frac_of_matmul=flops / ms / 1e9 / mm_tflops,
            )


# ------------------------------------------------------------------------------ small ops


def eager_rmsnorm(x, w, eps):
    x32 = x.float()
    return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def eager_rotary(positions, q, k, cos, sin):
    c, s = cos[positions].to(q.dtype)[:, None, :], sin[positions].to(q.dtype)[:, None, :]

    def rot(x):
        return torch.cat([-x[..., D // 2 :], x[..., : D // 2]], -1)

    return q * c + rot(q) * s, k * c + rot(k) * s


def bench_small_ops() -> None:
    eps = 1e-5
    inv_freq = 1.0 / (500000 ** (torch.arange(0, D, 2, device=DEV).float() / D))
    emb = torch.arange(131072, device=DEV).float()[:, None] * inv_freq[None, :]
    cos, sin = torch.cat([emb, emb], -1).cos(), torch.cat([emb, emb], -1).sin()
    kb = torch.randn(200000, HKV, D, device=DEV, dtype=DTYPE)
    vb = torch.randn(200000, HKV, D, device=DEV, dtype=DTYPE)
    w = (1 + 0.1 * torch.randn(HIDDEN, device=DEV)).to(DTYPE)
    for tokens in (1, 8192):
        x = torch.randn(tokens, HIDDEN, device=DEV, dtype=DTYPE)
        res = torch.randn(tokens, HIDDEN, device=DEV, dtype=DTYPE)
        gate_up = torch.randn(tokens, 2 * INTER, device=DEV, dtype=DTYPE)
        qkv = torch.randn(tokens, (H + 2 * HKV) * D, device=DEV, dtype=DTYPE)
        q = qkv[:, : H * D].view(tokens, H, D)
        k = qkv[:, H * D : (H + HKV) * D].view(tokens, HKV, D)
        v = qkv[:, (H + HKV) * D :].view(tokens, HKV, D)
        positions = torch.randint(0, 131072, (tokens,), device=DEV)
        slots = torch.randperm(kb.shape[0] - 1, device=DEV)[:tokens] + 1

        # correctness first (in-place ops on copies)
        check("rmsnorm", norm.rmsnorm(x, w, eps), ref.rmsnorm(x, w, eps))
        xa, ra = x.clone(), res.clone()
        exp_x, exp_r = ref.fused_add_rmsnorm(x, res, w, eps)
        norm.fused_add_rmsnorm(xa, ra, w, eps)
        check("fused_add_rmsnorm", xa, exp_x)
        check("fused_add_rmsnorm residual", ra, exp_r, 1e-6)
        check("silu_and_mul", act.silu_and_mul(gate_up), ref.silu_and_mul(gate_up))
        qkv2 = qkv.clone()
        exp_q, exp_k = ref.apply_rotary(positions, q, k, cos, sin)
        q2, k2 = qkv2[:, : H * D].view(tokens, H, D), qkv2[:, H * D : (H + HKV) * D].view(tokens, HKV, D)
        rot.apply_rotary(positions, q2, k2, cos, sin)
        check("rotary q", q2, exp_q)
        check("rotary k", k2, exp_k)
        kb2, vb2 = kb.clone(), vb.clone()
        kvs.store_kv(k, v, kb2, vb2, slots)
        check("store_kv", kb2[slots], k, 1e-6)
        del kb2, vb2

        row = tokens * HIDDEN * 2
        inter_bytes = tokens * INTER * 2
        qk_bytes = tokens * (H + HKV) * D * 2
        kv_bytes = tokens * HKV * D * 2 * 2
        ops = [
            ("rmsnorm", 2 * row, lambda: norm.rmsnorm(x, w, eps), lambda: eager_rmsnorm(x, w, eps)),
            (
                "fused_add_rmsnorm",
                4 * row,
                lambda: norm.fused_add_rmsnorm(xa, ra, w, eps),
                lambda: eager_rmsnorm(x + res, w, eps),
            ),
            (
                "silu_and_mul",
                3 * inter_bytes,
                lambda: act.silu_and_mul(gate_up),
                lambda: F.silu(gate_up[:, :INTER]) * gate_up[:, INTER:],
            ),
            (
                "rotary",
                2 * qk_bytes,
                lambda: rot.apply_rotary(positions, q2, k2, cos, sin),
                lambda: eager_rotary(positions, q, k, cos, sin),
            ),
            (
                "store_kv",
                2 * kv_bytes,
                lambda: kvs.store_kv(k, v, kb, vb, slots),
                lambda: (kb.__setitem__(slots, k), vb.__setitem__(slots, v)),
            ),
        ]
        for name, nbytes, triton_fn, eager_fn in ops:
            ms_t, ms_e = bench(triton_fn), bench(eager_fn)
            record(
                "small",
                f"{name} T={tokens}",
                ms_t,
                eager_ms=ms_e,
                speedup=ms_e / ms_t,
                gbs=nbytes / ms_t / 1e6,
            )


# ------------------------------------------------------------------------------ report


def print_table() -> None:
    print(f"\n{'group':8} {'case':34} {'ms':>9}  details")
    for r in RESULTS:
        extra = {k: v for k, v in r.items() if k not in ("group", "name", "ms")}
        detail = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items())
        print(f"{r['group']:8} {r['name']:34} {r['ms']:9.4f}  {detail}")
    print("\nbest per case:")
    cases: dict[tuple[str, str], dict] = {}
    for r in RESULTS:
        key = (r["group"], r["name"])
        if key not in cases or r["ms"] < cases[key]["ms"]:
            cases[key] = r
    for (group, name), r in cases.items():
        if group in ("decode", "dec_tune", "extend"):
            extra = r.get("config") or {
                k: r[k] for k in ("splits", "block_n", "num_warps", "num_stages") if k in r
            }
            print(f"  {group:7} {name:34} {r['ms']:8.4f} ms  {extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write all results here as JSON")
    parser.add_argument(
        "--only",
        choices=["decode", "decode_tune", "extend", "small"],
        action="append",
        help="run only these groups (repeatable)",
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA device")
    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    info = {
        "device": torch.cuda.get_device_name(0),
        "sms": props.multi_processor_count,
        "torch": torch.__version__,
        "triton": triton.__version__,
    }
    print("card:", info["device"], "| SMs", info["sms"], "| torch", info["torch"], "| triton", info["triton"])
    copy_gbs, mm_tflops = measure_ceilings()
    print(f"d2d copy {copy_gbs:.0f} GB/s (read+write); bf16 matmul {mm_tflops:.0f} TFLOP/s")
    groups = args.only or ["decode", "decode_tune", "extend", "small"]
    if "decode" in groups:
        bench_decode(copy_gbs, props.multi_processor_count)
    if "decode_tune" in groups:
        tune_decode(copy_gbs, props.multi_processor_count)
    if "extend" in groups:
        bench_extend(mm_tflops)
    if "small" in groups:
        bench_small_ops()
    print_table()
    if args.out:
        args.out.write_text(
            json.dumps(
                {"info": info, "copy_gbs": copy_gbs, "matmul_tflops": mm_tflops, "results": RESULTS},
                indent=1,
                default=str,
            )
        )
        print("wrote", args.out)


if __name__ == "__main__":
    main()
