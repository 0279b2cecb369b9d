"""What every child process of the runtime (scheduler, detokenizer, data-parallel router) does
the same way: start up tied to its parent, read frames without dying on a bad one, notice
that its parent is gone, and keep its sockets open for a moment after acknowledging shutdown.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import signal
import time
from typing import Any

from radixlm.runtime.managers.messages import DECODE_ERRORS, SafeDecoder

logger = logging.getLogger(__name__)

PARENT_CHECK_EVERY_S = 1.0
LINGER_S = 10.0


def start_child_process(title: str, log_level: str) -> None:
    """Call first in a child: it dies with its parent, ignores Ctrl-C (shutdown is the
    parent's to run, in order), is named `title` in ps/top, and logs at `log_level`."""
    die_with_parent()
    set_process_title(title)
    logging.basicConfig(level=log_level.upper(), format="[%(asctime)s %(name)s] %(message)s")


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


class ParentWatch:
    """`parent_gone()` for a busy loop: asks the OS at most once a second (a loop that polls
    every few milliseconds must not pay for a process check each time). Where
    PR_SET_DEATHSIG is unavailable this is what ends an orphaned child."""

    def __init__(self) -> None:
        self._last = time.monotonic()

    def parent_gone(self) -> bool:
        if time.monotonic() - self._last < PARENT_CHECK_EVERY_S:
            return False
        self._last = time.monotonic()
        return not parent_alive()


def decode_or_drop(decoder: SafeDecoder, frame: bytes, what: str = "message") -> Any | None:
    """The frame's message, or None (logged) if it does not decode: one bad frame from a
    peer must not end the process that serves every other request."""
    try:
        return decoder.decode(frame)
    except DECODE_ERRORS as exc:
        logger.warning("dropped a %s that failed to decode (%d bytes): %s", what, len(frame), exc)
        return None


def linger_after_shutdown() -> None:
    """After the last send (the shutdown acknowledgement) keep the sockets open until the
    launcher terminates us or exits: a ZeroMQ PUSH socket closed right after a send can lose
    that send."""
    deadline = time.monotonic() + LINGER_S
    while time.monotonic() < deadline and parent_alive():
        time.sleep(0.05)
