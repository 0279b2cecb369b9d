"""The `radixlm` command: `radixlm serve --model PATH [options]`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
import time

from radixlm.runtime.config import EngineConfig

logger = logging.getLogger("radixlm.serve")
EXIT_GRACE_S = 1.0  # after a child dies: time for in-flight error responses to reach clients


# SGLang's short spellings of some flags, accepted as well
FLAG_ALIASES = {"tp_size": ["--tp"], "dp_size": ["--dp"]}


def _engine_args(parser: argparse.ArgumentParser) -> None:
    """One flag per EngineConfig field, named like SGLang's (--max-total-tokens ...)."""
    for f in dataclasses.fields(EngineConfig):
        if f.name in ("model_path", "tokenizer_path"):
            continue
        flags = ["--" + f.name.replace("_", "-"), *FLAG_ALIASES.get(f.name, [])]
        annotation = str(f.type)  # a string: config.py uses postponed annotations
        if annotation == "bool":
            parser.add_argument(*flags, dest=f.name, action="store_true", default=f.default)
            continue
        kind = int if annotation.startswith("int") else float if annotation.startswith("float") else str
        parser.add_argument(*flags, dest=f.name, type=kind, default=f.default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radixlm")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a model over HTTP (OpenAI-compatible) and ZeroMQ")
    serve.add_argument(
        "--model", "--model-path", dest="model_path", required=True, help="local HF model folder"
    )
    serve.add_argument("--tokenizer", "--tokenizer-path", dest="tokenizer_path", default=None)
    serve.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=30000)
    serve.add_argument("--zmq-port", type=int, default=None, help="also serve the ZeroMQ client endpoint")
    serve.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on HTTP")
    serve.add_argument("--served-model-name", default=None)
    serve.add_argument(
        "--enable-cache-view",
        action="store_true",
        help="serve /cache (the radix tree, drawn live) and /cache.json; they show prompt text",
    )
    _engine_args(serve)
    from radixlm import demo

    demo.build_parser(sub.add_parser("demo", help="a tour of the DSL on the offline tiny model"))
    return parser


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from radixlm.runtime.config import ModelConfig
    from radixlm.runtime.entrypoints.http_guard import RedactQueryKey
    from radixlm.runtime.entrypoints.http_server import create_app
    from radixlm.runtime.entrypoints.launch import launch_runtime
    from radixlm.runtime.entrypoints.zmq_endpoint import ClientEndpoint
    from radixlm.runtime.managers.tokenizer_manager import TokenizerManager
    from radixlm.runtime.tokenizer import load_tokenizer

    fields = {f.name for f in dataclasses.fields(EngineConfig)}
    try:
        cfg = EngineConfig(**{k: v for k, v in vars(args).items() if k in fields})
        logging.basicConfig(level=cfg.log_level.upper(), format="[%(asctime)s %(name)s] %(message)s")
        ModelConfig.from_path(cfg.model_path)
        if cfg.node_rank > 0:
            return serve_worker_node(cfg)
        tokenizer = load_tokenizer(cfg.tokenizer_path or cfg.model_path)
        runtime = launch_runtime(cfg)
    except (ValueError, TypeError, OSError, RuntimeError) as exc:
        # a bad option or model folder (corrupt weights...) is the operator's to fix: say what
        # is wrong in one line rather than burying it under a traceback through the launcher
        print(f"radixlm serve: cannot start: {exc}", file=sys.stderr, flush=True)
        return 1
    died: list[str] = []
    try:
        tm = TokenizerManager(cfg, runtime.addrs, tokenizer, runtime.info, runtime.processes)
        model_name = args.served_model_name or os.path.basename(os.path.normpath(cfg.model_path))
        zmq_addr = f"tcp://{args.host}:{args.zmq_port}" if args.zmq_port else None
        if zmq_addr and args.api_key and args.host not in ("127.0.0.1", "localhost", "::1"):
            # the key guards HTTP only: a reachable ZeroMQ port would be an open side door
            print(
                f"radixlm serve: warning: --api-key does not protect the ZeroMQ endpoint {zmq_addr}; "
                "serve it on a loopback --host or keep it behind a firewall",
                file=sys.stderr,
                flush=True,
            )
        endpoint = ClientEndpoint(tm, zmq_addr) if zmq_addr else None
        server: uvicorn.Server | None = None

        def on_death(message: str) -> None:
            died.append(message)
            asyncio.get_running_loop().call_later(EXIT_GRACE_S, lambda: setattr(server, "should_exit", True))

        async def on_startup() -> None:
            tm.on_death.append(on_death)
            if endpoint:
                await endpoint.start()
            asyncio.get_running_loop().create_task(announce())

        async def on_shutdown() -> None:
            if endpoint:
                await endpoint.close()

        async def announce() -> None:
            while not server.started:
                await asyncio.sleep(0.05)
            extra = f", zmq {zmq_addr}" if zmq_addr else ""
            print(
                f"radixlm ready: http://{args.host}:{args.port} model={model_name} "
                f"context={tm.context_len} kv_tokens={runtime.info['max_total_tokens']}"
                f" device={runtime.info['device']}{extra}",
                flush=True,
            )

        app = create_app(
            tm,
            model_name,
            args.api_key,
            on_startup=on_startup,
            on_shutdown=on_shutdown,
            enable_cache_view=args.enable_cache_view,
        )
        config = uvicorn.Config(
            app, host=args.host, port=args.port, log_level=cfg.log_level.lower(), timeout_graceful_shutdown=5
        )
        # after Config, which configures uvicorn's loggers: no API key from a query in the log
        logging.getLogger("uvicorn.access").addFilter(RedactQueryKey())
        server = uvicorn.Server(config)
        try:
            server.run()
        except KeyboardInterrupt:  # uvicorn re-raises the signal that stopped it: a clean stop
            pass
    finally:
        runtime.terminate()
    if died:
        print(f"radixlm serve: exiting because {died[0]}", file=sys.stderr, flush=True)
        return 1
    return 0


def serve_worker_node(cfg: EngineConfig) -> int:
    """Node `node_rank` > 0 of a multi-node tensor-parallel server: its scheduler ranks only
    (no HTTP, no tokenizer); they follow rank 0 on node 0 until it shuts down."""
    from radixlm.runtime.entrypoints.launch import launch_runtime

    runtime = launch_runtime(cfg)
    print(
        f"radixlm worker node {cfg.node_rank}/{cfg.nnodes} ready: tensor-parallel ranks "
        f"{', '.join(n for n in runtime.processes)}",
        flush=True,
    )
    try:
        while all(p.is_alive() for p in runtime.processes.values()):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        runtime.terminate()
    return 0


def main(argv: list[str] | None = None) -> int:
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` dumps every thread's stack

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt  # unwind through `finally`, which stops the children

    signal.signal(signal.SIGTERM, on_sigterm)
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "demo":
        from radixlm import demo

        return demo.run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
