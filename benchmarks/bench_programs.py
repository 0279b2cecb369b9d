"""Benchmark DSL program workloads with the radix cache on and off: the original entry point,
now a thin wrapper around `benchmarks/programs/run.py` (see its --help for every option).

    python benchmarks/bench_programs.py                 # few-shot, select, tree, chat; cache on vs off
    python benchmarks/bench_programs.py --workloads few-shot,select --num-programs 64 --json out.json

Unless given, it passes `--workloads few-shot,select,tree,chat --ablations cache --num-programs 32`
(the settings of benchmarks/results/programs-cpu-2026-11-26.md). The JSON now has the runner's
layout: per workload `baseline` (cache on) and `cache` (cache off) and `ratio_vs_baseline`
(programs/s cache off / on, the inverse of the old `speedup`). For all workloads (mmlu, react,
judge, json too) and the fcfs and hints ablations, run benchmarks/programs/run.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/: `import programs`

from programs.run import main as run_main

DEFAULTS = {"--workloads": "few-shot,select,tree,chat", "--ablations": "cache", "--num-programs": "32"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for flag, value in DEFAULTS.items():
        if not any(a == flag or a.startswith(flag + "=") for a in argv):
            argv += [flag, value]
    return run_main(argv)


if __name__ == "__main__":
    sys.exit(main())
