"""Shared fixtures: offline tiny models, cached engines, the HF oracle, and the accounting check
that runs after every test."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
from helpers import _ENGINES, _LOCAL, get_engine


@pytest.fixture(autouse=True)
def _accounting_after_each_test():
    """After every test: the KV pool invariant holds for every engine, the tree passes its
    self-check, and flush_cache returns the pool to empty."""
    yield
    for engine in list(_ENGINES.values()) + _LOCAL:
        engine.check_accounting()
        assert engine.flush_cache(), "flush_cache refused: requests still queued or running"
        usage = engine.check_accounting()
        assert usage["free_tokens"] == usage["total_tokens"], usage
    _LOCAL.clear()


def pytest_sessionfinish(session, exitstatus):
    for engine in _ENGINES.values():
        engine.shutdown()


@pytest.fixture
def engine():
    return get_engine("llama")
