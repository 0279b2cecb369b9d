"""The overlap-scheduling request mix shared by tests/runtime/scheduler/test_overlap.py and
tests/gpu/test_gpu_engine.py: every way a request can sample or stop, run step by step with
staggered arrivals on a LocalRuntime, and the comparison of two runs' results."""

from __future__ import annotations

import math
import random

from helpers import LocalRuntime


def ids_of(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(4, 8192) for _ in range(n)]


# (params, return_logprob, top_logprobs_num): every way a request can sample or stop
MIX = [
    ({"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}, False, 0),
    ({"max_new_tokens": 1, "temperature": 0, "ignore_eos": True}, False, 0),
    ({"max_new_tokens": 2, "temperature": 0, "ignore_eos": True}, True, 3),
    ({"max_new_tokens": 9, "temperature": 0.9, "top_p": 0.8, "ignore_eos": True}, False, 0),
    ({"max_new_tokens": 15, "temperature": 1.3, "top_k": 5, "min_p": 0.05, "ignore_eos": True}, True, 2),
    ({"max_new_tokens": 20, "temperature": 1.0, "min_new_tokens": 6}, False, 0),  # EOS allowed after 6
    (
        {
            "max_new_tokens": 10,
            "temperature": 0,
            "repetition_penalty": 1.3,
            "frequency_penalty": 0.5,
            "ignore_eos": True,
        },
        False,
        0,
    ),  # penalties: steps wait for the step in flight
    ({"max_new_tokens": 14, "temperature": 0, "regex": "(yes|no|maybe)[0-9]{2,5}"}, False, 0),  # grammar
    ({"max_new_tokens": 16, "temperature": 0, "ignore_eos": True, "stop_token_ids": None}, True, 0),
]


def run_mix(overlap: str, **options) -> tuple[list, LocalRuntime]:
    rt = LocalRuntime("llama", overlap_schedule=overlap, **options)
    reqs = []
    for i, (params, lp, top) in enumerate(MIX):
        reqs.append(
            rt.submit(
                ids_of(6 + 5 * i, 100 + i), params, return_logprob=lp, top_logprobs_num=top, seed=1000 + i
            )
        )
    # staggered arrivals: new requests join while others decode (each arrival drains the step in flight)
    for step in range(40):
        rt.scheduler.step()
        rt.scheduler.check_accounting()
        if step in (3, 11, 12):
            j = len(reqs)
            reqs.append(
                rt.submit(
                    ids_of(9, 300 + j),
                    {"max_new_tokens": 7 + j, "temperature": 0.7, "ignore_eos": True},
                    seed=j,
                )
            )
    rt.run_all()
    return reqs, rt


def assert_same_results(a, b) -> None:
    for x, y in zip(a, b):
        assert x.output_ids == y.output_ids, x.rid
        assert x.finished_reason == y.finished_reason, x.rid
        assert [t for _, t in x.output_token_logprobs] == [t for _, t in y.output_token_logprobs]
        for (lx, _), (ly, _) in zip(x.output_token_logprobs, y.output_token_logprobs):
            assert math.isclose(lx, ly, rel_tol=1e-5, abs_tol=1e-6)
        assert [[t for t, _ in top] for top in x.output_top_logprobs] == [
            [t for t, _ in top] for top in y.output_top_logprobs
        ]
