"""Turn benchmark result JSON files into a markdown report and PNG plots.

    python benchmarks/report.py                                    # every *.json in benchmarks/results/
    python benchmarks/report.py out/serving.json out/offline.json --out-dir /tmp/report

Reads the JSON that these scripts write with `--json`, recognising each by its layout:

  serving   benchmarks/serving.py      (`runs` of TTFT/ITL/TPOT/E2E metrics; `hf_baseline` if run with it)
  programs  benchmarks/programs/run.py and bench_programs.py (`results` per workload and configuration)
  json      benchmarks/bench_json.py   (`results` per sampling mode: jump-forward on/off/unconstrained)
  offline   benchmarks/bench_offline.py (GPU; `results` is a list of {engine, case, batch_size, ...})

and writes to --out-dir (default benchmarks/results/):

  report.md                          an index table (one row per file: kind, machine, date, commit,
                                     model shape, command), then per file its provenance and tables
  <stem>-latency.png                 serving: TTFT, ITL and E2E mean/median/p90/p99 per run
  <stem>-throughput.png              serving with --ablate and/or --hf-baseline: output tok/s per run
                                     (radixlm cache on/off, HF generate), cache hit rate on each bar
  <stem>-cache-ablation.png          programs: hit rate and programs/s ratio vs baseline per workload
  <stem>-throughput-vs-batch.png     offline: decode output tok/s vs batch size, one line per engine

Files of an unknown layout are listed as skipped. Plots use matplotlib's Agg backend (no display).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_DIR = HERE / "results"
REPORT_NAME = "report.md"
PERCENTILES = ("mean", "median", "p90", "p99")


# ---------------------------------------------------------------------- reading
def detect_kind(data: Any) -> str | None:
    """Which script wrote `data`, from its layout (the scripts write no explicit tag)."""
    if not isinstance(data, dict):
        return None
    results = data.get("results")
    if isinstance(results, list) and all(
        isinstance(r, dict) and "engine" in r and "case" in r for r in results
    ):
        return "offline"
    if isinstance(data.get("runs"), dict) and all(
        isinstance(r, dict) and "ttft_ms" in r for r in data["runs"].values()
    ):
        return "serving"
    if isinstance(results, dict) and results:
        first = next(iter(results.values()))
        if isinstance(first, dict) and "baseline" in first and "ratio_vs_baseline" in first:
            return "programs"
        if isinstance(first, dict) and "jf_on" in first and "jf_off" in first:
            return "json"
    return None


def _lookup(data: dict, *keys: str) -> Any:
    """A provenance field at the top level or inside `run_info` (bench_offline keeps it there)."""
    for scope in (data, data.get("run_info") or {}):
        for key in keys:
            if isinstance(scope, dict) and scope.get(key) is not None:
                return scope[key]
    return None


def provenance(data: dict, kind: str) -> dict[str, str]:
    """machine, date, commit, model shape and command of one result file, as display strings."""
    machine = _lookup(data, "machine") or {}
    if not isinstance(machine, dict):
        machine = {"device_name": str(machine)}
    card = data.get("card") or (_lookup(data, "gpu_name") if not machine else None)
    name = card or machine.get("gpu_name") or machine.get("device_name") or machine.get("cpu_model") or "?"
    extras = [f"torch {machine['torch']}"] if machine.get("torch") else []
    if isinstance(machine.get("nproc"), int) and not (card or machine.get("gpu_name")) and "CPUs" not in name:
        extras.append(f"nproc {machine['nproc']}")
    machine_s = name + (f" ({', '.join(extras)})" if extras else "")

    commit = _lookup(data, "git_commit", "commit")
    commit_s = str(commit)[:10] if commit else "?"
    if _lookup(data, "git_dirty", "dirty"):
        commit_s += " (dirty)"
    date = _lookup(data, "date") or "?"
    command = _lookup(data, "command") or " ".join(_lookup(data, "argv") or []) or "?"
    return {
        "machine": machine_s,
        "date": str(date),
        "commit": commit_s,
        "model": model_shape(data, kind),
        "command": str(command),
    }


def model_shape(data: dict, kind: str) -> str:
    """What the numbers were measured on: parameters, layers, KV heads, dtype, where recorded."""
    model = data.get("model")
    if kind == "serving" and isinstance(model, dict):
        dtype = data.get("dtype") or model.get("config_dtype") or "?"
        return (
            f"{model.get('params', 0) / 1e6:.2f}M params, {model.get('num_layers')} layers, "
            f"{model.get('num_kv_heads')} KV heads x {model.get('head_dim')}, "
            f"vocab {model.get('vocab_size')}, "
            f"{dtype} on {data.get('device', '?')}"
        )
    if kind == "offline" and isinstance(model, dict):
        params = model.get("params")
        size = (
            f"{params / 1e9:.2f}B params"
            if isinstance(params, (int, float)) and params >= 1e9
            else (f"{params / 1e6:.2f}M params" if isinstance(params, (int, float)) else "? params")
        )
        return f"{model.get('name', '?')}, {size}, {model.get('dtype', '?')}"
    settings = data.get("settings") or {}
    path = Path(str(settings.get("model", "?"))).name
    if kind == "programs":
        rt = data.get("runtime") or {}
        return f"{path} ({rt.get('dtype', '?')} on {rt.get('device', '?')})"
    if kind == "json":
        eng = (data.get("engines") or {}).get("jf_on") or {}
        return f"{path} ({eng.get('architecture', '?')}, {eng.get('dtype', '?')} on {eng.get('device', '?')})"
    return "?"


# ---------------------------------------------------------------------- markdown helpers
def num(x: Any) -> float | None:
    """A usable number, else None (missing, NaN, infinite: json.loads accepts NaN)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return x


def fmt(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if x != 0 and abs(x) < 10**-digits:
            return f"{x:.2e}"
        return f"{x:,.{digits}f}"
    return str(x)


def md_table(head: list[str], rows: list[list[str]], left: int = 1) -> str:
    """GitHub markdown; the first `left` columns are text (left-aligned), the rest numbers."""

    def cell(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    sep = ["---" if i < left else "---:" for i in range(len(head))]
    lines = ["| " + " | ".join(cell(h) for h in head) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


# ---------------------------------------------------------------------- per kind: tables
def serving_columns(data: dict) -> dict[str, dict]:
    """radixlm runs (cache_on, cache_off, server) then the HF baseline modes (hf_eager, ...)."""
    return {**data["runs"], **(data.get("hf_baseline") or {})}


def serving_tables(data: dict) -> str:
    cols = serving_columns(data)
    hf = data.get("hf_baseline") or {}
    settings = data.get("settings") or {}
    head = [
        "run",
        "req/s",
        "output tok/s",
        "total tok/s",
        "hit rate",
        "TTFT mean ms",
        "TTFT p99 ms",
        "ITL median ms",
        "ITL p99 ms",
        "TPOT mean ms",
        "E2E mean ms",
        "E2E p99 ms",
        "MBU",
        "MFU",
    ]
    head += [f"vs {name} (output tok/s)" for name in hf]
    rows = []
    for name, m in cols.items():
        total = m.get("total_throughput")
        if total is None and m.get("input_throughput") is not None:
            total = m["input_throughput"] + m["output_throughput"]
        row = [
            name,
            fmt(m.get("request_throughput")),
            fmt(m.get("output_throughput"), 1),
            fmt(total, 1),
            fmt(m.get("cache_hit_rate"), 3),
            fmt(_get(m, "ttft_ms", "mean")),
            fmt(_get(m, "ttft_ms", "p99")),
            fmt(_get(m, "itl_ms", "median")),
            fmt(_get(m, "itl_ms", "p99")),
            fmt(_get(m, "tpot_ms", "mean")),
            fmt(_get(m, "e2e_ms", "mean")),
            fmt(_get(m, "e2e_ms", "p99")),
            fmt(_get(m, "mbu", "mbu"), 4),
            fmt(_get(m, "mfu", "mfu"), 4),
        ]
        row += [fmt(m["output_throughput"] / h["output_throughput"]) + "x" for h in hf.values()]
        rows.append(row)
    dataset = settings.get("dataset", "?")
    if dataset == "generated-shared-prefix":
        shape = (
            f"{settings.get('gsp_num_groups')} groups x {settings.get('gsp_prompts_per_group')} prompts, "
            f"system prompt {settings.get('gsp_system_prompt_len')} + "
            f"question {settings.get('gsp_question_len')} "
            f"tokens, output {settings.get('gsp_output_len')}"
        )
    else:
        shape = (
            f"{data.get('num_requests')} requests, input ~N({settings.get('random_input_mean')}, "
            f"{settings.get('random_input_std')}), output ~N({settings.get('random_output_mean')}, "
            f"{settings.get('random_output_std')})"
        )
    notes = [
        f"dataset {dataset}: {shape}; request rate {settings.get('request_rate')}, max concurrency "
        f"{settings.get('max_concurrency')}; median of {settings.get('repeats')} timed run(s)"
    ]
    if data.get("ratios"):
        r = data["ratios"]
        notes.append(
            f"radix cache on / off: output throughput {fmt(r.get('output_throughput_on_over_off'))}x, "
            f"mean TTFT {fmt(r.get('mean_ttft_on_over_off'))}x"
        )
    for name, h in hf.items():
        notes.append(
            f"{name}: HF transformers generate, batch size {h.get('batch_size')}, {h.get('dtype')} on "
            f"{h.get('device')}, {h.get('torch_threads')} torch thread(s), compiled "
            f"{fmt(h.get('compiled'))}; no streaming, so no TTFT/ITL; E2E = time to its batch's end"
        )
    return md_table(head, rows) + "\n\n" + "\n".join(f"- {n}" for n in notes)


def programs_tables(data: dict) -> str:
    results = data["results"]
    ablations = (data.get("settings") or {}).get("ablations") or []
    head = [
        "workload",
        "config",
        "prog/s",
        "lat mean s",
        "lat p90 s",
        "hit rate",
        "gen tok",
        "prompt tok",
        "ratio vs baseline",
    ]
    rows = []
    for wl, r in results.items():
        for config in ["baseline", *[a for a in ablations if a in r]]:
            c = r[config]
            ratio = 1.0 if config == "baseline" else (r.get("ratio_vs_baseline") or {}).get(config)
            rows.append(
                [
                    wl,
                    config,
                    fmt(c.get("programs_per_s")),
                    fmt(c.get("latency_mean_s"), 3),
                    fmt(c.get("latency_p90_s"), 3),
                    fmt(c.get("cache_hit_rate"), 3),
                    fmt(c.get("generated_tokens")),
                    fmt(c.get("prompt_tokens")),
                    fmt(ratio),
                ]
            )
    configs = data.get("configs") or {}
    legend = "\n".join(f"- {k}: {v}" for k, v in configs.items())
    return md_table(head, rows, left=2) + ("\n\n" + legend if legend else "")


def json_tables(data: dict) -> str:
    head = ["mode", "config", "wall s", "out tok/s", "decode steps", "JF tokens", "valid", "speedup (off/on)"]
    rows = []
    for mode, r in data["results"].items():
        for config in ("jf_on", "jf_off", "unconstrained"):
            c = r.get(config)
            if not c:
                continue
            valid = f"{c['valid']}/{c['num_requests']}" if c.get("valid") is not None else "-"
            speed = fmt(r.get("speedup_jf")) + "x" if config == "jf_on" and r.get("speedup_jf") else ""
            rows.append(
                [
                    mode,
                    config,
                    fmt(c.get("wall_s"), 3),
                    fmt(c.get("output_tokens_per_s"), 1),
                    fmt(c.get("decode_steps")),
                    fmt(c.get("jump_forward_tokens")),
                    valid,
                    speed,
                ]
            )
    out = md_table(head, rows, left=2)
    mask = data.get("mask")
    if mask and mask.get("results"):
        mrows = [
            [m["device"], fmt(m["batch"]), fmt(m["warm_us_per_step"], 1), fmt(m["first_pass_us_per_step"], 1)]
            for m in mask["results"]
        ]
        out += (
            "\n\nMask building (vocab "
            + fmt(mask.get("vocab_size"))
            + "):\n\n"
            + md_table(["device", "batch", "warm us/step", "first-pass us/step"], mrows)
        )
    return out


OFFLINE_RADIX = "radixlm"
OFFLINE_PEERS = ("hf-eager", "hf-static-compile")


def _offline_metrics(case: str) -> list[tuple[str, str, bool]]:
    """(field, label, higher_is_better) rows that the comparison table shows for a case."""
    if case == "prefill":
        return [("ttft_ms", "TTFT ms", False)]
    if case == "decode":
        return [("output_tok_s", "output tok/s", True), ("decode_tok_s", "decode tok/s", True)]
    return [("output_tok_s", "output tok/s", True)]


def offline_tables(data: dict) -> str:
    results = data["results"]
    keys: list[tuple] = []
    by: dict[tuple, dict[str, dict]] = {}
    for r in results:
        key = (r.get("case"), r.get("batch_size"), r.get("input_len"), r.get("output_len"))
        if key not in by:
            keys.append(key)
            by[key] = {}
        by[key][r["engine"]] = r
    engines = [
        e for e in (OFFLINE_RADIX, "radixlm-no-cache", *OFFLINE_PEERS) if any(e in v for v in by.values())
    ]
    engines += sorted(
        {e for v in by.values() for e in v} - set(engines)
    )  # ablations: radixlm-no-cuda-graph, ...
    peers = [e for e in OFFLINE_PEERS if e in engines]
    head = ["case", "batch", "input", "output", "metric", *engines, *[f"radixlm vs {p}" for p in peers]]
    rows = []
    for key in keys:
        for field, label, higher in _offline_metrics(str(key[0])):
            vals = {e: num((by[key].get(e) or {}).get(field)) for e in engines}
            if all(v is None for v in vals.values()):
                continue
            row = [
                str(key[0]),
                fmt(key[1]),
                fmt(key[2]),
                fmt(key[3]),
                label,
                *[fmt(vals[e], 1) for e in engines],
            ]
            for p in peers:
                ours, theirs = vals.get(OFFLINE_RADIX), vals.get(p)
                row.append(fmt(ours / theirs if higher else theirs / ours) + "x" if ours and theirs else "-")
            rows.append(row)
    out = md_table(head, rows, left=5)
    out += (
        "\n\nradixlm vs X: radixlm's tok/s / X's on tok/s rows; X's TTFT / radixlm's on TTFT rows. "
        "Above 1: radixlm is faster."
    )
    dhead = [
        "engine",
        "case",
        "batch",
        "input",
        "output",
        "TTFT ms",
        "decode ms/step",
        "decode tok/s",
        "output tok/s",
        "MBU",
        "prefill TFLOP/s",
        "MFU",
        "hit rate",
        "wall s",
    ]
    drows = [
        [
            r["engine"],
            str(r.get("case")),
            fmt(r.get("batch_size")),
            fmt(r.get("input_len")),
            fmt(r.get("output_len")),
            fmt(r.get("ttft_ms")),
            fmt(r.get("decode_ms_per_step"), 3),
            fmt(r.get("decode_tok_s"), 1),
            fmt(r.get("output_tok_s"), 1),
            fmt(r.get("mbu"), 3),
            fmt(r.get("prefill_tflops"), 1),
            fmt(r.get("mfu"), 3),
            fmt(r.get("cache_hit_rate"), 3),
            fmt(r.get("wall_s")),
        ]
        for r in results
    ]
    out += "\n\nAll rows:\n\n" + md_table(dhead, drows, left=2)
    bw, peak = data.get("bandwidth_gbs"), data.get("peak_tflops")
    if bw or peak:
        out += f"\n\nMBU against {fmt(bw, 0)} GB/s, MFU against {fmt(peak, 0)} TFLOP/s."
    return out


# ---------------------------------------------------------------------- plots
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; works without a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def _grouped_bars(ax: Any, groups: list[str], series: dict[str, list[float | None]]) -> list:
    """Bars for each series side by side within each group; None is left out (no bar)."""
    n = max(1, len(series))
    width = 0.8 / n
    containers = []
    for i, (label, values) in enumerate(series.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        ys = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(xs, ys, width, label=label)
        for bar, v in zip(bars, values):
            if v is None:
                bar.set_visible(False)
        containers.append(bars)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups)
    return containers


def plot_serving_latency(data: dict, path: Path) -> Path | None:
    """TTFT, ITL, E2E percentiles per run (HF has E2E only: no streaming)."""
    cols = serving_columns(data)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (key, title) in zip(axes, (("ttft_ms", "TTFT"), ("itl_ms", "ITL"), ("e2e_ms", "E2E"))):
        series = {
            name: [_get(m, key, p) for p in PERCENTILES]
            for name, m in cols.items()
            if any(_get(m, key, p) is not None for p in PERCENTILES)
        }
        _grouped_bars(ax, list(PERCENTILES), series)
        ax.set_title(f"{title} (ms)")
        ax.set_ylabel("ms")
        if series:
            ax.legend(fontsize=8)
    fig.suptitle(f"serving latency: {provenance(data, 'serving')['machine']}", fontsize=10)
    return _save(fig, path)


def plot_serving_throughput(data: dict, path: Path) -> Path | None:
    """Output tok/s per run with its cache hit rate: the ablation and the HF peer at a glance."""
    cols = serving_columns(data)
    if len(cols) < 2:
        return None  # one run: nothing to compare
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(cols)), 4))
    names = list(cols)
    values = [cols[n]["output_throughput"] for n in names]
    bars = ax.bar(names, values, color=["C0" if n in data["runs"] else "C3" for n in names])
    for bar, n in zip(bars, names):
        hit = cols[n].get("cache_hit_rate")
        ax.annotate(
            f"{bar.get_height():,.0f} tok/s\nhit {hit:.0%}"
            if hit is not None
            else f"{bar.get_height():,.0f}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylabel("output tokens / s")
    ax.set_ylim(0, max(values) * 1.25)
    settings = data.get("settings") or {}
    what = "radixlm vs HF generate" if data.get("hf_baseline") else "radix cache on vs off"
    ax.set_title(
        f"{settings.get('dataset', 'serving')}: {what}\n{provenance(data, 'serving')['machine']}", fontsize=9
    )
    return _save(fig, path)


ABLATION_LABELS = {
    "baseline": "baseline (cache on, lpm, hints)",
    "cache": "cache off",
    "fcfs": "fcfs",
    "hints": "hints off",
}


def plot_programs_ablation(data: dict, path: Path) -> Path | None:
    results = data["results"]
    ablations = [a for a in (data.get("settings") or {}).get("ablations") or []]
    workloads = list(results)
    configs = ["baseline", *ablations]
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(9, 1.3 * len(workloads) * 2), 4))
    _grouped_bars(
        ax1,
        workloads,
        {
            ABLATION_LABELS.get(c, c): [_get(results[w], c, "cache_hit_rate") for w in workloads]
            for c in configs
        },
    )
    ax1.set_title("cache hit rate (cached / prompt tokens)")
    ax1.set_ylim(0, 1.05)
    ax1.legend(fontsize=8)
    if ablations:
        _grouped_bars(
            ax2,
            workloads,
            {
                ABLATION_LABELS.get(a, a): [
                    (results[w].get("ratio_vs_baseline") or {}).get(a) for w in workloads
                ]
                for a in ablations
            },
        )
        ax2.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax2.legend(fontsize=8)
    ax2.set_title("programs/s vs baseline (< 1: ablation slower)")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelrotation=30)
    fig.suptitle(f"program workloads, ablations: {provenance(data, 'programs')['machine']}", fontsize=10)
    return _save(fig, path)


def plot_offline_throughput(data: dict, path: Path) -> Path | None:
    """Decode output tok/s vs batch size, one line per engine (and per input/output length)."""
    rows = [r for r in data["results"] if r.get("case") == "decode"] or list(data["results"])
    lines: dict[str, list[tuple[int, float]]] = {}
    shapes = {(r.get("input_len"), r.get("output_len")) for r in rows}
    for r in rows:
        y = (
            num(r.get("output_tok_s"))
            if num(r.get("output_tok_s")) is not None
            else num(r.get("decode_tok_s"))
        )
        if y is None or r.get("batch_size") is None:
            continue
        label = r["engine"] + (
            f" (in {r.get('input_len')}, out {r.get('output_len')})" if len(shapes) > 1 else ""
        )
        lines.setdefault(label, []).append((r["batch_size"], y))
    if not lines:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, pts in lines.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    batches = sorted({p[0] for pts in lines.values() for p in pts})
    if batches and batches[-1] / max(batches[0], 1) >= 8:
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches)
        ax.set_xticklabels([str(b) for b in batches])
    ys = [p[1] for pts in lines.values() for p in pts if p[1] > 0]
    if ys and max(ys) / min(ys) >= 30:  # batch 1 and batch 256 differ by orders of magnitude
        ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("output tokens / s")
    model = data.get("model") or {}
    ax.set_title(
        f"decode throughput: {model.get('name', '?')} on "
        f"{data.get('card') or provenance(data, 'offline')['machine']}",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


TABLES: dict[str, Callable[[dict], str]] = {
    "serving": serving_tables,
    "programs": programs_tables,
    "json": json_tables,
    "offline": offline_tables,
}
PLOTS: dict[str, list[tuple[str, Callable[[dict, Path], Path | None]]]] = {
    "serving": [("latency", plot_serving_latency), ("throughput", plot_serving_throughput)],
    "programs": [("cache-ablation", plot_programs_ablation)],
    "json": [],
    "offline": [("throughput-vs-batch", plot_offline_throughput)],
}
TITLES = {
    "serving": "serving benchmark (benchmarks/serving.py)",
    "programs": "program workloads (benchmarks/programs/run.py)",
    "json": "JSON decoding (benchmarks/bench_json.py)",
    "offline": "offline GPU benchmark (benchmarks/bench_offline.py)",
}


# ---------------------------------------------------------------------- report
def build_report(paths: list[Path], out_dir: Path) -> tuple[Path, list[Path]]:
    """Write report.md and the plots into out_dir; return (markdown path, PNG paths)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded: list[tuple[Path, str, dict]] = []
    skipped: list[str] = []
    for p in paths:
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            skipped.append(f"{p.name}: unreadable ({type(exc).__name__})")
            continue
        kind = detect_kind(data)
        if kind is None:
            skipped.append(f"{p.name}: layout not recognised")
            continue
        loaded.append((p, kind, data))

    index_rows = []
    sections = []
    pngs: list[Path] = []
    for p, kind, data in loaded:
        prov = provenance(data, kind)
        index_rows.append(
            [
                p.name,
                kind,
                prov["machine"],
                prov["date"],
                prov["commit"],
                prov["model"],
                f"`{prov['command']}`",
            ]
        )
        section = [
            f"## {p.name}: {TITLES[kind]}",
            "",
            md_table(
                ["machine", "date", "commit", "model", "command"],
                [[prov["machine"], prov["date"], prov["commit"], prov["model"], f"`{prov['command']}`"]],
                left=5,
            ),
            "",
            TABLES[kind](data),
        ]
        for suffix, plot in PLOTS[kind]:
            png = plot(data, out_dir / f"{p.stem}-{suffix}.png")
            if png is not None:
                pngs.append(png)
                section += ["", f"![{p.stem} {suffix}]({png.name})"]
        sections.append("\n".join(section))

    lines = [
        "# Benchmark report",
        "",
        f"Generated by `python benchmarks/report.py` from {len(loaded)} result file(s). "
        "Each file's numbers hold for its machine, commit and command only.",
        "",
    ]
    if index_rows:
        lines += [
            md_table(["file", "kind", "machine", "date", "commit", "model", "command"], index_rows, left=7),
            "",
        ]
    if skipped:
        lines += ["Skipped: " + "; ".join(skipped), ""]
    lines += ["\n\n".join(sections), ""]
    md = out_dir / REPORT_NAME
    md.write_text("\n".join(lines))
    return md, pngs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "files", nargs="*", type=Path, help=f"result JSON files (default: every *.json in {DEFAULT_DIR})"
    )
    p.add_argument("--out-dir", type=Path, default=DEFAULT_DIR, help="where report.md and the PNGs go")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    files = args.files or sorted(DEFAULT_DIR.glob("*.json"))
    if not files:
        print(f"no result JSON files given or found in {DEFAULT_DIR}", file=sys.stderr)
        return 1
    md, pngs = build_report(files, args.out_dir)
    print(f"wrote {md}")
    for png in pngs:
        print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
