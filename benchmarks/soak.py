"""Soak: a long steady mixed load against `radixlm serve`, watching memory and accounting.

    python benchmarks/soak.py --minutes 10 --out benchmarks/results/soak-cpu-DATE.json

Starts `radixlm serve` on the offline tiny model (or --model), keeps --concurrency clients
busy with a mix of greedy, streamed, grammar-constrained and sampled requests (some sharing
a prefix, some aborted mid-stream by the client), and every --sample-s seconds records the
resident memory of the server and each of its children, the KV pool (free, evictable,
total) and the server's own accounting check. At the end: every request that was not
deliberately abandoned completed exactly once, the server is idle with its pool balanced,
and memory is flat: the RSS growth from the first sample after warm-up to the last,
reported per process. Exits non-zero if a request was lost, accounting broke, or any
process grew by more than --max-growth-mb.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_info

PREFIX = "You are a helpful assistant that answers in one short sentence about the weather and the sea. "
REGEX = r"(sunny|rainy|windy), [0-9]{1,2} degrees"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def start_server(model: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "radixlm.runtime.entrypoints.cli",
        "serve",
        "--model",
        model,
        "--port",
        str(port),
        *extra,
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    ready = threading.Event()
    tail: list[str] = []

    def reader() -> None:
        for line in proc.stdout:
            tail.append(line)
            del tail[:-50]
            if line.startswith("radixlm ready:"):
                ready.set()

    threading.Thread(target=reader, daemon=True).start()
    deadline = time.monotonic() + 120
    while not ready.wait(0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("radixlm serve did not start:\n" + "".join(tail))
    return proc, f"http://127.0.0.1:{port}"


def request_body(rng: random.Random, i: int) -> tuple[str, str, dict]:
    """(kind, path, body) of request i."""
    question = f"Question {rng.randrange(10_000)}: what is the weather at sea today"
    prompt = (PREFIX if rng.random() < 0.6 else "") + question
    kind = rng.choice(["greedy", "stream", "constrained", "sampled", "abandoned"])
    body: dict = {"prompt": prompt, "max_tokens": rng.choice([8, 16, 32])}
    if kind == "greedy":
        body["temperature"] = 0
    elif kind in ("stream", "abandoned"):
        body.update(temperature=0, stream=True, max_tokens=48 if kind == "abandoned" else body["max_tokens"])
    elif kind == "constrained":
        body.update(temperature=0.8, seed=i, regex=REGEX, max_tokens=48)
    else:
        body.update(temperature=1.0, seed=i)
    return kind, "/v1/completions", body


async def client(
    c: httpx.AsyncClient, rng: random.Random, stop_at: float, counts: dict, next_id: list[int]
) -> None:
    while time.monotonic() < stop_at:
        i = next_id[0]
        next_id[0] += 1
        kind, path, body = request_body(rng, i)
        try:
            if body.get("stream"):
                finishes = 0
                async with c.stream("POST", path, json=body) as r:
                    if r.status_code != 200:
                        raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
                    chunks = 0
                    async for line in r.aiter_lines():
                        if not line.startswith("data:") or line.strip() == "data: [DONE]":
                            continue
                        chunks += 1
                        event = json.loads(line[5:])
                        if "error" in event:
                            raise RuntimeError(event["error"])
                        finishes += sum(ch["finish_reason"] is not None for ch in event["choices"])
                        if kind == "abandoned" and chunks == 3:
                            break  # the client goes away mid-stream: the server must abort and free
                if kind != "abandoned" and finishes != 1:
                    raise RuntimeError(f"{finishes} final chunks")
            else:
                r = await c.post(path, json=body)
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
                if len(r.json()["choices"]) != 1 or r.json()["choices"][0]["finish_reason"] is None:
                    raise RuntimeError(f"bad answer {r.text[:200]}")
            counts[kind] = counts.get(kind, 0) + 1
        except Exception as exc:
            counts["failed"] = counts.get("failed", 0) + 1
            counts.setdefault("errors", []).append(f"{kind}: {exc!r}"[:300])


async def sampler(url: str, pids: dict[str, int], samples: list, stop_at: float, every_s: float) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        t0 = time.monotonic()
        while True:
            info = (await c.get("/server_info")).json()
            samples.append(
                {
                    "t_s": round(time.monotonic() - t0, 1),
                    "rss_mb": {name: round(rss_mb(pid) or 0.0, 1) for name, pid in pids.items()},
                    "free_tokens": info["free_tokens"],
                    "evictable_tokens": info["evictable_tokens"],
                    "total_tokens": info["total_tokens"],
                    "running": info["running"],
                    "waiting": info["waiting"],
                    "finished_requests": info["finished_requests"],
                    "kv_accounting": info["kv_accounting"],
                }
            )
            if time.monotonic() >= stop_at:
                return
            await asyncio.sleep(min(every_s, max(stop_at - time.monotonic(), 0.0)))


async def run(args: argparse.Namespace, url: str, pids: dict[str, int]) -> dict:
    rng = random.Random(args.seed)
    counts: dict = {}
    samples: list = []
    stop_at = time.monotonic() + args.minutes * 60
    next_id = [0]
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(300, connect=30)) as c:
        start_info = (await c.get("/server_info")).json()
        await asyncio.gather(
            sampler(url, pids, samples, stop_at, args.sample_s),
            *(
                client(c, random.Random(rng.random()), stop_at, counts, next_id)
                for _ in range(args.concurrency)
            ),
        )
        # idle, and every slot free or evictable (bounded wait for aborted requests to drain)
        for _ in range(100):
            end_info = (await c.get("/server_info")).json()
            if end_info["running"] == 0 and end_info["waiting"] == 0:
                break
            await asyncio.sleep(0.1)
    sent = next_id[0]
    return {
        "counts": counts,
        "samples": samples,
        "sent": sent,
        "start_info": start_info,
        "end_info": end_info,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model folder (default: the offline tiny llama)")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument("--warmup-samples", type=int, default=3, help="samples skipped before measuring growth")
    ap.add_argument("--max-growth-mb", type=float, default=64.0)
    ap.add_argument(
        "--max-total-tokens", type=int, default=4096, help="a small pool, so eviction runs all the time"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    model = args.model
    if model is None:
        from radixlm.testing import build_tiny_model

        model = str(build_tiny_model("llama"))
    load = run_info.load_before_run()
    proc, url = start_server(model, ["--max-total-tokens", str(args.max_total_tokens)])
    try:
        pids = {"server": proc.pid, **httpx.get(f"{url}/server_info", timeout=30).json()["process_ids"]}
        result = asyncio.run(run(args, url, pids))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()

    samples, counts, end = result["samples"], result["counts"], result["end_info"]
    base = samples[min(args.warmup_samples, len(samples) - 1)]
    growth = {name: round(samples[-1]["rss_mb"][name] - base["rss_mb"][name], 1) for name in base["rss_mb"]}
    finished = end["finished_requests"] - result["start_info"]["finished_requests"]
    completed = sum(v for k, v in counts.items() if k not in ("failed", "errors", "abandoned"))
    problems = []
    if counts.get("failed"):
        problems.append(f"{counts['failed']} requests failed: {counts['errors'][:3]}")
    if completed + counts.get("abandoned", 0) != result["sent"]:
        problems.append(f"sent {result['sent']} but accounted for {completed + counts.get('abandoned', 0)}")
    if end["running"] or end["waiting"]:
        problems.append(f"not idle at the end: {end['running']} running, {end['waiting']} waiting")
    if end["free_tokens"] + end["evictable_tokens"] != end["total_tokens"]:
        problems.append("KV slots still held at the end")
    broken = [s for s in samples if s["kv_accounting"] != "ok"] + (
        [end] if end["kv_accounting"] != "ok" else []
    )
    if broken:
        problems.append(f"accounting broke: {broken[0]['kv_accounting']}")
    grown = {k: v for k, v in growth.items() if v > args.max_growth_mb}
    if grown:
        problems.append(f"memory grew by more than {args.max_growth_mb} MB: {grown}")

    report = {
        "command": run_info.command_line(argv),
        "date": run_info.utc_now(),
        "git_commit": run_info.git_commit(),
        "git_dirty": run_info.git_dirty(),
        "machine": run_info.machine_info("cpu"),
        "load_before": load,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "model": model,
        "requests_sent": result["sent"],
        "requests_completed": completed,
        "requests_abandoned_by_client": counts.get("abandoned", 0),
        "requests_failed": counts.get("failed", 0),
        "finished_at_scheduler": finished,
        "by_kind": {k: v for k, v in counts.items() if k != "errors"},
        "rss_growth_mb_after_warmup": growth,
        "rss_mb_first": base["rss_mb"],
        "rss_mb_last": samples[-1]["rss_mb"],
        "end_pool": {k: end[k] for k in ("free_tokens", "evictable_tokens", "total_tokens", "kv_accounting")},
        "problems": problems,
        "samples": samples,
    }
    print(
        f"soak {args.minutes:g} min, concurrency {args.concurrency}: sent {result['sent']}, "
        f"completed {completed}, "
        f"abandoned by clients {counts.get('abandoned', 0)}, failed {counts.get('failed', 0)}; "
        f"scheduler finished {finished}"
    )
    print(
        "RSS (MB) after warm-up -> last: "
        + ", ".join(
            f"{k} {base['rss_mb'][k]:.0f} -> {samples[-1]['rss_mb'][k]:.0f} ({growth[k]:+.1f})"
            for k in growth
        )
    )
    print("problems: " + ("; ".join(problems) if problems else "none"))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
