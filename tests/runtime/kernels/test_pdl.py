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


def test_attention_prefetch_plan(monkeypatch):
    """The decode attention's L2 prefetch of the weights read next: the first whole, the second
    from its start within the budget (RADIXLM_ATTN_PREFETCH_MB), equal slices a program made of
    whole bulk prefetches (16-byte multiples) a thread; none for a weight not contiguous or not
    16-byte aligned, and none at budget 0."""
    from radixlm.runtime.kernels.triton import decode_attention as attention

    unit = 16 * attention.PREFETCH_PIECES

    def plan_with(budget_mb, weights, programs=128):
        monkeypatch.setenv(attention.PREFETCH_ENV, budget_mb)
        attention._prefetch_budget.cache_clear()
        return [(w.data_ptr(), chunk) for w, chunk in attention.prefetch_plan(weights, programs)]

    o_proj = torch.zeros(4096, 4096, dtype=torch.float8_e4m3fn)  # an 8B model's fp8 o_proj: 16.8 MB
    gate_up = torch.zeros(28672, 4096, dtype=torch.float8_e4m3fn)  # 117 MB
    try:
        (o_ptr, o_chunk), (g_ptr, g_chunk) = plan_with("40", (o_proj, gate_up))
        assert (o_ptr, g_ptr) == (o_proj.data_ptr(), gate_up.data_ptr())
        assert o_chunk % unit == 0 and 0 <= o_proj.numel() - 128 * o_chunk < 128 * unit  # all but a tail
        assert g_chunk % unit == 0 and 128 * (o_chunk + g_chunk) <= 40e6 < 128 * (o_chunk + g_chunk + unit)
        assert plan_with("10", (o_proj, gate_up)) == [(o_ptr, 10_000_000 // 128 // unit * unit)]
        assert plan_with("0", (o_proj, gate_up)) == []
        assert plan_with("40", (o_proj.t(), gate_up)) == []  # not contiguous: nothing after it either
        assert plan_with("40", (o_proj.view(-1)[1:],)) == []  # not 16-byte aligned
        assert plan_with("40", (torch.zeros(100, dtype=torch.uint8),)) == []  # under a unit a program
        assert plan_with("40", ()) == []
    finally:
        attention._prefetch_budget.cache_clear()
