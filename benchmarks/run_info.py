"""What every benchmark records beside its numbers: the commit, the machine, the load."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=_HERE, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit() -> str | None:
    out = _git("rev-parse", "HEAD")
    return out.strip() or None if out is not None else None


def git_dirty() -> bool | None:
    """Uncommitted changes to tracked files (the numbers may not be the commit's)."""
    out = _git("status", "--porcelain", "--untracked-files=no")
    return bool(out.strip()) if out is not None else None


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def command_line(argv: list[str] | None) -> str:
    """The command that ran this script, as a shell line (argv: what main() was given)."""
    args = sys.argv if argv is None else [sys.argv[0], *argv]
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *args])


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def load_before_run() -> list[float] | None:
    """The load average now, with a warning when other work would skew the timings."""
    load = loadavg()
    if load and load[0] > 0.5 * (os.cpu_count() or 1):
        print(
            f"note: load average {load[0]:.2f} on {os.cpu_count()} CPUs before the run; "
            f"other work on this machine will skew the timings",
            file=sys.stderr,
        )
    return load


def machine_info(device: str) -> dict[str, Any]:
    """torch/Python/platform, usable CPUs (`nproc`, and `cpu_count` for the whole box), the
    CPU model, the load average, and for a CUDA device the GPU's name."""
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "nproc": os.cpu_count(),
    }
    try:
        info["nproc"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    name = platform.processor() or platform.machine()
    try:
        name = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    info["cpu_model"] = name
    info["loadavg"] = loadavg()
    info["device_name"] = f"{name} ({info['nproc']} CPUs)"
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu_name"] = torch.cuda.get_device_name(torch.device(device).index or 0)
        info["device_name"] = info["gpu_name"]
    return info


def result_header(argv: list[str] | None, info: dict[str, Any]) -> dict[str, Any]:
    """The fields every results file starts with: where and when it ran, how, and on what card."""
    return {
        "run_info": {"commit": git_commit(), "dirty": git_dirty(), "date": utc_now(), "machine": info},
        "command": command_line(argv),
        "card": info.get("gpu_name") or info["device_name"],
    }
