"""Where the Triton kernels launch with programmatic dependent launch (runtime/kernels/triton/pdl.py):
on Hopper and later, up to MAX_ROWS rows unless RADIXLM_PDL says otherwise, never under the
interpreter or on CPU tensors. (Its effect on results, none, is a GPU test:
tests/gpu/test_gpu_kernels.py::test_pdl_chain_in_a_cuda_graph_equals_plain_launches.)"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from radixlm.runtime.kernels.triton import pdl


@pytest.fixture
def capability(monkeypatch):
    """Pretend a device of the given compute capability, outside the interpreter."""

    def set_capability(major: int) -> None:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (major, 0))
        pdl._max_rows.cache_clear()

    yield set_capability
    pdl._max_rows.cache_clear()


@pytest.mark.parametrize(
    "major, env, expected",
    [
        (9, None, pdl.MAX_ROWS),
        (9, "", pdl.MAX_ROWS),
        (9, "0", 0),
        (9, "16", 16),
        (10, None, pdl.MAX_ROWS),
        (8, "16", 0),
    ],
)
def test_rows_limit_by_device_and_environment(capability, monkeypatch, major, env, expected):
    if env is None:
        monkeypatch.delenv(pdl.ENV, raising=False)
    else:
        monkeypatch.setenv(pdl.ENV, env)
    capability(major)
    assert pdl._max_rows(0) == expected


def test_never_under_the_interpreter_or_on_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv(pdl.ENV, "16")
    pdl._max_rows.cache_clear()
    try:
        assert pdl._max_rows(0) == 0
    finally:
        pdl._max_rows.cache_clear()
    cpu = torch.zeros(1)
    assert not pdl.enabled(cpu, 1)
    assert pdl.launch_options(cpu, 1) == {"USE_PDL": False}  # no launch_pdl: the interpreter rejects it
