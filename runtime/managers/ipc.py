"""ZeroMQ plumbing shared by the runtime's processes: private endpoints, socket setup,
and the guard that makes a child exit when its parent dies."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
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


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent exits, so no child is orphaned.
    Also ignore SIGINT: a Ctrl-C reaches the whole process group, and shutdown is the
    parent's to run (it stops the children in order, then terminates them)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def parent_alive() -> bool:
    parent = multiprocessing.parent_process()
    return parent is None or parent.is_alive()


def set_process_title(title: str) -> None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.prctl(15, title.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass
