"""Command-line backend shared by the DSL examples: launch a runtime, or connect to one.

    parser = argparse.ArgumentParser()
    add_backend_args(parser)              # --model PATH | --endpoint ADDR, --device, --max-tokens
    args = parser.parse_args()
    with backend_from_args(args) as backend:
        state = program.run(backend=backend)
        print_cache_hit_rate(backend)

Without --endpoint, `rl.Runtime` launches the runtime's processes for this script (the
trained demo model that ships with radixlm unless --model is given) and stops them on exit. With
`--endpoint tcp://127.0.0.1:30001` the script connects to a running
`radixlm serve --model PATH --zmq-port 30001` instead, and leaves it running.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import radixlm as rl


def add_backend_args(parser: argparse.ArgumentParser, max_tokens: int | None = 16) -> argparse.ArgumentParser:
    """--model | --endpoint, --device, and --max-tokens (left out when max_tokens is None)."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--model", default=None, help="local model folder (default: the trained demo model)")
    where.add_argument(
        "--endpoint",
        default=None,
        metavar="ADDR",
        help="connect to `radixlm serve --zmq-port PORT`, e.g. tcp://127.0.0.1:30001",
    )
    parser.add_argument("--device", default="auto", help="device for a launched runtime (auto, cpu, cuda)")
    if max_tokens is not None:
        parser.add_argument("--max-tokens", type=int, default=max_tokens, help="token limit per generation")
    return parser


def make_parser(doc: str | None, max_tokens: int | None = 16) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_backend_args(parser, max_tokens)


@contextlib.contextmanager
def backend_from_args(args: argparse.Namespace) -> Iterator[Any]:
    """The backend the arguments name, also made the default backend; shut down on exit."""
    if args.endpoint:
        backend = rl.RuntimeEndpoint(args.endpoint)
    else:
        from radixlm.demo_model import demo_model_path

        backend = rl.Runtime(args.model or demo_model_path(), device=args.device)
    previous = rl.get_default_backend()
    rl.set_default_backend(backend)
    try:
        yield backend
    finally:
        rl.set_default_backend(previous)
        backend.shutdown()  # a Runtime stops its processes; an endpoint only closes its socket


def print_cache_hit_rate(backend: Any) -> None:
    info = rl.get_server_info(backend)
    print(
        f"cache hit rate: {info['cache_hit_rate']:.1%} "
        f"({info['cached_tokens']} of {info['prompt_tokens']} prompt tokens from the radix cache)"
    )
