"""Running a script of benchmarks/ the way its smoke tests do: a child Python, offline, with
`--flag value` arguments from a dict, its output captured; a failure shows the output's tail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_bench_script(name: str, args: dict[str, object], timeout: float) -> subprocess.CompletedProcess:
    """Run benchmarks/`name` with `args` ({"--flag": value}); assert it exited 0."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, str(BENCHMARKS / name), *(str(x) for kv in args.items() for x in kv)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc
