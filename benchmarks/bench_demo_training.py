"""Time the demo model's training step (demo_model/train.py) in its variants, on random packed
rows of the recipe's shape: eager or torch.compile, nondeterministic or deterministic
algorithms. Also checks whether two deterministic runs from the same start end bitwise equal.

    python benchmarks/bench_demo_training.py --out /tmp/demo-speed.json        # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed before CUDA starts for determinism

import torch

from radixlm.demo_model import train


def random_batch(batch_size: int, seq_len: int, vocab: int, device: str, seed: int) -> dict:
    """Rows of several documents each (ids ascending within a row), positions restarting at
    each document, every token learned: the training batch's layout."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(vocab, (batch_size, seq_len + 1), generator=g)
    starts = torch.rand(batch_size, seq_len + 1, generator=g) < 1 / 100
    starts[:, 0] = True
    docs = starts.long().cumsum(1) - 1
    index = torch.arange(seq_len + 1).expand(batch_size, -1)
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(1).values
    batch = {"tokens": tokens, "docs": docs, "positions": index - first, "learn": torch.ones_like(starts)}
    return {k: v.to(device) for k, v in batch.items()}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(variant: dict, args: argparse.Namespace) -> dict:
    torch.use_deterministic_algorithms(variant["deterministic"])
    torch.manual_seed(0)
    model = train.DemoLlama(train.Shape()).to(args.device)
    step = train.make_train_step(model, device=args.device, compile_loss=variant["compile"])
    batches = [random_batch(args.batch_size, args.seq_len, 8192, args.device, seed=i) for i in range(4)]
    t0 = time.perf_counter()
    for i in range(args.warmup):
        step(batches[i % 4], 1e-3)
    sync(args.device)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(args.steps):
        loss = step(batches[i % 4], 1e-3)
    sync(args.device)
    ms = (time.perf_counter() - t0) / args.steps * 1e3
    checksum = sum(p.double().sum().item() for p in model.parameters())
    return {**variant, "ms_per_step": round(ms, 2), "warmup_s": round(warm_s, 1),
            "loss": loss.item(), "param_checksum": checksum}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=96)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--device", default="cuda")
    p.add_argument("--variants", default="eager,compile,eager-det,compile-det,compile-det")
    p.add_argument("--out")
    args = p.parse_args()
    rows = []
    for name in args.variants.split(","):
        variant = {"name": name, "compile": name.startswith("compile"), "deterministic": name.endswith("det")}
        try:
            rows.append(timed(variant, args))
        except Exception as e:  # a variant the card or torch cannot run: say so, time the rest
            rows.append({**variant, "error": f"{type(e).__name__}: {e}"[:400]})
        print(json.dumps(rows[-1]), flush=True)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    info = {"device": device, "torch": torch.__version__, "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(info, f, indent=2)


if __name__ == "__main__":
    main()
