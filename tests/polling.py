"""The one bounded wait of the test suite: poll a condition until it holds or time runs out.

Kept apart from tests/helpers.py (which imports torch and builds engines) so that
tests/server_process.py and anything else light can use it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout_s: float,
    interval_s: float = 0.05,
    what: str | Callable[[], str] = "the condition",
) -> T:
    """Call `predicate` every `interval_s` seconds until it returns a truthy value, and return
    that value. After `timeout_s` it is called once more; if that is still falsy, raise
    AssertionError naming `what` (a string, or a callable giving one, called only then so it
    can report the latest state) and the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    value = predicate()
    if value:
        return value
    detail = what() if callable(what) else what
    raise AssertionError(f"timed out after {timeout_s}s waiting for {detail}")
