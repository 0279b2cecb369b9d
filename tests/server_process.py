"""`radixlm serve` as a real subprocess for tests: start it on free 127.0.0.1 ports, read its
output, stop it; /proc helpers to find its children and check none outlive it; bounded waits.
Shared by tests/runtime/entrypoints/test_server.py and tests/reliability/."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from polling import wait_until

HOST = "127.0.0.1"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
# started and not stopped: the reliability suite checks each after every test
LIVE: list[ServerProcess] = []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def gone(pid: int) -> bool:
    """True when pid no longer runs (missing, or a zombie waiting to be reaped)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    for line in status.splitlines():
        if line.startswith("State:"):
            return "Z" in line.split()[1] or "zombie" in line.lower()
    return False


def children_of(pid: int) -> set[int]:
    """Direct children of pid, from /proc/*/stat (field 4 is the parent pid)."""
    kids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # the command name (field 2) is in parentheses and may contain spaces
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            kids.add(int(entry))
    return kids


def descendants_of(pid: int) -> set[int]:
    found: set[int] = set()
    frontier = [pid]
    for _ in range(8):  # bounded depth
        nxt = []
        for p in frontier:
            for kid in children_of(p) - found:
                found.add(kid)
                nxt.append(kid)
        if not nxt:
            break
        frontier = nxt
    return found


@dataclass
class ServerProcess:
    """`python -m radixlm.runtime.entrypoints.cli serve ...` with its stdout (and stderr) read by a thread."""

    model_path: str
    extra_args: list[str] = field(default_factory=list)
    port: int = 0
    zmq_port: int = 0
    proc: subprocess.Popen | None = None
    lines: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def output(self, last: int = 40) -> str:
        return "".join(self.lines[-last:])

    def start(self) -> ServerProcess:
        self.port, self.zmq_port = free_port(), free_port()
        env = dict(
            os.environ,
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            PYTHONUNBUFFERED="1",
            TOKENIZERS_PARALLELISM="false",
        )
        cmd = [
            sys.executable,
            "-m",
            "radixlm.runtime.entrypoints.cli",
            "serve",
            "--model",
            self.model_path,
            "--port",
            str(self.port),
            "--zmq-port",
            str(self.zmq_port),
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=str(Path(__file__).resolve().parent.parent),
        )

        def reader() -> None:
            for line in self.proc.stdout:  # ends when the process closes its stdout
                self.lines.append(line)
                if line.startswith("radixlm ready:"):
                    self.ready.set()

        LIVE.append(self)
        threading.Thread(target=reader, name=f"serve-{self.port}-stdout", daemon=True).start()
        try:
            wait_until(
                lambda: self.ready.is_set() or self.proc.poll() is not None,
                READY_TIMEOUT_S,
                what="radixlm serve to print its ready line or exit",
            )
        except AssertionError:
            pass  # reported below, with its output
        if not self.ready.is_set():
            self.stop()
            pytest.fail(
                f"radixlm serve did not become ready (exit code {self.proc.returncode}):\n{self.output()}"
            )
        return self

    def stop(self) -> int | None:
        if self in LIVE:
            LIVE.remove(self)
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def server_info(srv: ServerProcess, client: httpx.Client | None = None) -> dict:
    r = (client or httpx).get(f"{srv.url}/server_info", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def wait_idle_and_kv_free(srv: ServerProcess, timeout: float = 10.0) -> dict:
    """Wait (bounded) until nothing runs or waits; then every KV token is free or evictable."""
    info: dict = {}

    def idle() -> bool:
        nonlocal info
        info = server_info(srv)
        return info["running"] == 0 and info["waiting"] == 0

    wait_until(idle, timeout, 0.1, what=lambda: f"the server to go idle (last /server_info: {info})")
    assert info["free_tokens"] + info["evictable_tokens"] == info["total_tokens"], info
    assert info["kv_accounting"] == "ok", info["kv_accounting"]
    return info


async def aiter_sse(response: httpx.Response) -> AsyncIterator[str]:
    """The data payloads of a streaming SSE response, as they arrive."""
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            yield line[len("data:") :].strip()


def sse_events(response: httpx.Response, limit: int = 10_000) -> list[str]:
    """The data payloads of an SSE response, in order (bounded)."""
    out = []
    for line in response.iter_lines():
        if line.startswith("data:"):
            out.append(line[len("data:") :].strip())
            if len(out) >= limit:
                break
    return out
