"""ZeroMQ plumbing shared by the runtime's processes: private ipc:// endpoints and socket
setup. (What the child processes share beyond sockets: child_process.py.)"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import zmq

from radixlm.runtime.managers.messages import MAX_MESSAGE_BYTES


@dataclass(frozen=True)
class IpcAddresses:
    """ipc:// endpoints inside a private (0700) directory that only this user can reach."""

    directory: str
    scheduler_input: str  # tokenizer manager -> scheduler
    detokenizer_input: str  # scheduler -> detokenizer
    tokenizer_input: str  # detokenizer and scheduler -> tokenizer manager

    @staticmethod
    def create() -> IpcAddresses:
        directory = tempfile.mkdtemp(prefix="radixlm-")
        os.chmod(directory, 0o700)
        return IpcAddresses(
            directory=directory,
            scheduler_input=f"ipc://{directory}/scheduler",
            detokenizer_input=f"ipc://{directory}/detokenizer",
            tokenizer_input=f"ipc://{directory}/tokenizer",
        )

    def for_replica(self, i: int) -> IpcAddresses:
        """Data parallel: replica i's scheduler reads its own input (the router writes it) and
        replies to the router; its token outputs go to the shared detokenizer."""
        return IpcAddresses(
            directory=self.directory,
            scheduler_input=f"ipc://{self.directory}/replica-{i}",
            detokenizer_input=self.detokenizer_input,
            tokenizer_input=self.router_input,
        )

    @property
    def router_input(self) -> str:
        return f"ipc://{self.directory}/router"

    def cleanup(self) -> None:
        names = ["scheduler", "detokenizer", "tokenizer", "router"]
        names += (
            [n for n in os.listdir(self.directory) if n.startswith(("replica-", "tp-init"))]
            if os.path.isdir(self.directory)
            else []
        )
        for name in names:
            try:
                os.unlink(os.path.join(self.directory, name))
            except FileNotFoundError:
                pass
        try:
            os.rmdir(self.directory)
        except OSError:
            pass


def make_socket(ctx: zmq.Context, kind: int, endpoint: str, bind: bool) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    # a peer that sends a larger frame is disconnected before the frame is buffered
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    if bind:
        sock.bind(endpoint)
    else:
        sock.connect(endpoint)
    return sock
