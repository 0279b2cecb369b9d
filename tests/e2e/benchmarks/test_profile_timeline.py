"""benchmarks/profile_forward.py's timeline: what each kernel adds to the device timeline when
kernels overlap (PDL), and one decoder layer found as the step's repeating unit. Synthetic kernel
events stand in for the profiler's (the script itself needs a GPU)."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from tests.bench_scripts import BENCHMARKS


@pytest.fixture(scope="module")
def profile_forward():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import profile_forward
    finally:
        sys.path.remove(str(BENCHMARKS))
    return profile_forward


def _event(start: float, end: float, name: str):
    return types.SimpleNamespace(
        time_range=types.SimpleNamespace(start=start, end=end),
        name=name,
        device_type=torch.autograd.DeviceType.CUDA,
    )


def _steps(steps: int, layers: int, overlap: float) -> list:
    """Each step: an embedding, `layers` x (norm 2, gemv 10, attn 5, norm 2, gemv 30) us where
    every layer kernel starts `overlap` us before the previous one ends, then a 20 us head and an
    idle 5 us before the next step."""
    events, t = [], 0.0
    for _ in range(steps):
        events.append(_event(t, t + 2, "embed"))
        t += 2
        for _ in range(layers):
            for name, us in (("norm", 2), ("gemv", 10), ("attn", 5), ("norm", 2), ("gemv", 30)):
                events.append(_event(t - overlap, t + us, name))
                t += us
        events.append(_event(t, t + 20, "head"))
        t += 25
    return events


def _profile(profile_forward, events: list, steps: int) -> tuple[list[dict], dict | None]:
    kernels = profile_forward.device_kernels(types.SimpleNamespace(events=lambda: events))
    return profile_forward.kernel_table(kernels, steps)[0], profile_forward.timeline(kernels, steps)


def test_advance_counts_only_what_a_kernel_adds_past_the_one_ahead(profile_forward):
    events = _steps(steps=3, layers=6, overlap=1.0)
    rows, tl = _profile(profile_forward, events[::-1], steps=3)
    by_name = {k["kernel"]: k for k in rows}
    # a norm runs 3 us (2 + 1 early) but moves the end by 2; two per layer, six layers
    assert by_name["norm"]["ms_per_step"] == pytest.approx(12 * 3e-3)
    assert by_name["norm"]["advance_ms_per_step"] == pytest.approx(12 * 2e-3)
    assert by_name["gemv"]["advance_ms_per_step"] == pytest.approx(6 * 40e-3)
    assert by_name["head"]["calls_per_step"] == pytest.approx(1.0)
    # the 5 us after each head is idle; the last step's is not inside the span
    assert tl["gap_ms_per_step"] == pytest.approx(2 * 5e-3 / 3)
    span_us = events[-1].time_range.end - events[0].time_range.start
    assert tl["span_ms_per_step"] == pytest.approx(span_us / 1e3 / 3)
    assert rows[0]["kernel"] == "gemv"  # largest run first
    unit = tl["layer_unit"]
    assert [u["kernel"] for u in unit] == ["norm", "gemv", "attn", "norm", "gemv"]
    assert tl["layers_matched"] >= 4
    assert [u["advance_us"] for u in unit] == pytest.approx([2, 10, 5, 2, 30])
    assert [u["us"] for u in unit] == pytest.approx([3, 11, 6, 3, 31])


def test_steps_that_differ_still_give_the_layer(profile_forward):
    """A step with an extra kernel (a copy the first step makes, say) shifts every later position;
    the layer is still found wherever it occurs whole."""
    events = _steps(steps=2, layers=8, overlap=0.0)
    events.insert(1, _event(2, 2.5, "copy"))  # inside the first step, after the embedding
    rows, tl = _profile(profile_forward, events, steps=2)
    assert [u["kernel"] for u in tl["layer_unit"]] == ["norm", "gemv", "attn", "norm", "gemv"]
    assert tl["layers_matched"] == 16
    assert {k["kernel"]: k["calls_per_step"] for k in rows}["copy"] == pytest.approx(0.5)
    assert _profile(profile_forward, [], steps=2) == ([], None)
