"""Constrained decoding on a CUDA device: masks built on the device, outputs valid, and
jump-forward exact in fp32. Skipped where CUDA is absent (CI)."""

from __future__ import annotations

import json

import pytest
import torch

from radixlm import Engine
from radixlm.testing import build_tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

SCHEMA = {
    "type": "object",
    "properties": {
        "customer_full_name": {"type": "string", "maxLength": 10},
        "shipping_address_line_one": {"type": "string", "maxLength": 10},
        "items": {"type": "array", "items": {"enum": ["pen", "ink", "pad"]}, "maxItems": 3},
        "express": {"type": "boolean"},
    },
    "required": ["customer_full_name", "shipping_address_line_one", "items", "express"],
}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_schema_outputs_validate_on_gpu(dtype):
    import jsonschema

    with Engine(str(build_tiny_model("llama")), device="cuda", dtype=dtype, max_total_tokens=20000) as engine:
        outs = engine.generate(
            ["Order:"] * 16,
            [
                {"json_schema": SCHEMA, "max_new_tokens": 200, "temperature": 1.0, "seed": s}
                for s in range(16)
            ],
        )
        for out in outs:
            jsonschema.validate(json.loads(out["text"]), SCHEMA)
            assert out["meta_info"]["finish_reason"]["type"] == "stop"
        engine.check_accounting()


def test_jump_forward_is_exact_in_fp32_on_gpu():
    runs = {}
    for jump in (False, True):
        with Engine(
            str(build_tiny_model("llama")),
            device="cuda",
            dtype="float32",
            max_total_tokens=20000,
            disable_jump_forward=not jump,
        ) as engine:
            outs = engine.generate(
                ["Order:"] * 8,
                [
                    {"json_schema": SCHEMA, "max_new_tokens": 200, "temperature": t, "seed": s}
                    for s, t in enumerate([0, 1.0] * 4)
                ],
            )
            runs[jump] = [(o["output_ids"], o["meta_info"]["jump_forward_tokens"]) for o in outs]
    assert [ids for ids, _ in runs[True]] == [ids for ids, _ in runs[False]]
    assert sum(n for _, n in runs[True]) > 0 and sum(n for _, n in runs[False]) == 0
