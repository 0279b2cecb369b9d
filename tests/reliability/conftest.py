"""The reliability suite's accounting check: after every test, each `radixlm serve` still
running (tests/server_process.LIVE) goes idle within a bounded time, every KV slot is free or
evictable, and its own check (pool invariant free + evictable + locked + in use == total,
request rows, and, the server being idle, the radix tree's self-check) reports "ok". In-process
engines get the same check from tests/conftest.py."""

from __future__ import annotations

import pytest
from server_process import LIVE, wait_idle_and_kv_free


@pytest.fixture(autouse=True)
def _servers_balanced_after_each_test():
    yield
    for srv in list(LIVE):
        if srv.proc is not None and srv.proc.poll() is None:
            wait_idle_and_kv_free(srv, timeout=30)
