"""Security defaults, checked on a live `radixlm serve` and on the source:

* it listens on 127.0.0.1 only (HTTP and the ZeroMQ endpoint), unless told otherwise;
* its ipc:// sockets live in a private directory (mode 0700, owned by this user);
* no input path can unpickle or evaluate anything: no `pickle`/`marshal` loads,
  `recv_pyobj`/`send_pyobj`, `eval`/`exec`, `yaml.load`, `torch.load` without
  `weights_only=True`, or `shell=True` anywhere in the package (an AST scan, which itself
  is checked on a planted sample);
* every ZeroMQ socket the runtime makes has a message size limit, and the HTTP body limit
  is in force (its 413 behaviour is tested in tests/runtime/entrypoints/test_server.py, as is --api-key).
"""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path

import httpx
import pytest
import zmq
from server_process import ServerProcess, descendants_of, server_info

from radixlm.runtime.entrypoints.cli import build_parser
from radixlm.runtime.entrypoints.http_guard import MAX_BODY_BYTES
from radixlm.runtime.managers.ipc import make_socket
from radixlm.runtime.managers.messages import MAX_MESSAGE_BYTES
from radixlm.testing import build_tiny_model

PACKAGE = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".venv", "tests", ".git", "__pycache__", "build", "dist", ".whl"}


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess(str(build_tiny_model("llama"))).start()  # no --host: the default
    try:
        yield srv
    finally:
        srv.stop()


def listening_tcp() -> dict[int, str]:
    """port -> local address (dotted IPv4 or IPv6 hex) of every listening TCP socket."""
    found = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state != "0A":  # LISTEN
                continue
            addr_hex, port_hex = local.split(":")
            if len(addr_hex) == 8:
                addr = ".".join(str(b) for b in reversed(bytes.fromhex(addr_hex)))
            else:
                addr = addr_hex
            found.setdefault(int(port_hex, 16), addr)
    return found


def test_serve_listens_on_loopback_only_by_default(server):
    assert build_parser().parse_args(["serve", "--model", "x"]).host == "127.0.0.1"
    listening = listening_tcp()
    for port in (server.port, server.zmq_port):
        assert listening.get(port) == "127.0.0.1", (port, listening.get(port))


def _unix_socket_paths(pids: set[int]) -> set[str]:
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    paths = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[6] in inodes and fields[7].startswith("/"):
            paths.add(fields[7])
    return paths


def test_ipc_sockets_live_in_a_private_directory(server):
    pids = (
        {server.proc.pid} | descendants_of(server.proc.pid) | set(server_info(server)["process_ids"].values())
    )
    paths = _unix_socket_paths(pids)
    assert paths, "found no ipc socket of the server"
    for path in paths:
        directory = os.path.dirname(path)
        st = os.stat(directory)
        assert stat.S_IMODE(st.st_mode) == 0o700, (directory, oct(st.st_mode))
        assert st.st_uid == os.getuid()
        assert stat.S_ISSOCK(os.stat(path).st_mode)


FORBIDDEN_CALLS = {
    ("pickle", "loads"),
    ("pickle", "load"),
    ("pickle", "Unpickler"),
    ("marshal", "loads"),
    ("marshal", "load"),
    ("dill", "loads"),
    ("cloudpickle", "loads"),
    ("yaml", "load"),
    ("yaml", "unsafe_load"),
}
FORBIDDEN_NAMES = {"eval", "exec", "recv_pyobj", "send_pyobj", "recv_serialized", "__import__"}


def unsafe_calls(source: str, filename: str) -> list[str]:
    """Calls that could run or unpickle attacker-controlled data, found in one file's AST."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        where = f"{filename}:{node.lineno}"
        if isinstance(func, ast.Name) and func.id in FORBIDDEN_NAMES:
            found.append(f"{where} {func.id}()")
        elif isinstance(func, ast.Attribute):
            owner = func.value.id if isinstance(func.value, ast.Name) else None
            if func.attr in FORBIDDEN_NAMES - {"eval"}:  # x.eval() is torch's Module.eval
                found.append(f"{where} .{func.attr}()")
            elif (owner, func.attr) in FORBIDDEN_CALLS:
                found.append(f"{where} {owner}.{func.attr}()")
            elif (owner, func.attr) == ("torch", "load"):
                safe = any(
                    k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in node.keywords
                )
                if not safe:
                    found.append(f"{where} torch.load without weights_only=True")
        for kw in node.keywords:
            if kw.arg == "shell" and isinstance(kw.value, ast.Constant) and kw.value.value is True:
                found.append(f"{where} shell=True")
    return found


def test_the_scan_finds_what_it_looks_for():
    planted = (
        "import pickle, torch, yaml\nimport zmq\n"
        "pickle.loads(b'')\nsock.recv_pyobj()\neval('1')\nexec('x=1')\ntorch.load('f')\n"
        "yaml.load(s)\nsubprocess.run('ls', shell=True)\nmodel.eval()\ntorch.load('f', weights_only=True)\n"
    )
    found = unsafe_calls(planted, "planted.py")
    assert len(found) == 7, found  # model.eval() and the weights_only load are fine


def test_no_pickle_eval_or_shell_on_any_path():
    files = [p for p in PACKAGE.rglob("*.py") if not SKIP_DIRS & set(p.relative_to(PACKAGE).parts)]
    assert len(files) > 40, len(files)
    found = [hit for p in files for hit in unsafe_calls(p.read_text(), str(p.relative_to(PACKAGE)))]
    assert not found, found
    imports = [
        str(p.relative_to(PACKAGE))
        for p in files
        if any(
            isinstance(n, (ast.Import, ast.ImportFrom))
            and any((a.name.split(".")[0] in ("pickle", "marshal", "dill", "cloudpickle")) for a in n.names)
            or (isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] in ("pickle", "marshal"))
            for n in ast.walk(ast.parse(p.read_text()))
        )
    ]
    assert not imports, imports


def test_message_and_body_size_limits():
    ctx = zmq.Context()
    try:
        for kind in (zmq.PULL, zmq.PUSH, zmq.ROUTER, zmq.DEALER):
            sock = make_socket(ctx, kind, f"inproc://limit-{kind}", bind=True)
            assert sock.getsockopt(zmq.MAXMSGSIZE) == MAX_MESSAGE_BYTES
            sock.close(linger=0)
    finally:
        ctx.term()
    assert 0 < MAX_BODY_BYTES <= 64 * 1024 * 1024 and 0 < MAX_MESSAGE_BYTES <= 256 * 1024 * 1024


def test_api_key_guards_every_route_but_health():
    """--api-key: every route but /health refuses a missing or wrong key with 401 and serves a
    right one; the key is not echoed in any error."""
    srv = ServerProcess(str(build_tiny_model("llama")), ["--api-key", "s3cret-key"]).start()
    try:
        body = {"prompt": "Hello", "max_tokens": 2, "temperature": 0}
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            assert c.get("/health").status_code == 200
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"}):
                for method, path in (
                    ("POST", "/v1/completions"),
                    ("POST", "/generate"),
                    ("GET", "/server_info"),
                    ("GET", "/metrics"),
                    ("POST", "/flush_cache"),
                    ("GET", "/v1/models"),
                ):
                    r = c.request(method, path, json=body if method == "POST" else None, headers=headers)
                    assert r.status_code == 401, (path, headers, r.status_code)
                    assert "s3cret-key" not in r.text
            ok = c.post("/v1/completions", json=body, headers={"Authorization": "Bearer s3cret-key"})
            assert ok.status_code == 200, ok.text
    finally:
        srv.stop()
