"""Bad input: every malformed request raises a ValueError / TypeError naming the problem
before anything is queued, every unusable model folder or option fails Engine() with a
clear error, and after each failure the same engine keeps serving exactly as before."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field

import pytest
from helpers import get_engine

from radixlm import Engine
from radixlm.testing import build_tiny_model

GOOD_PROMPT = "Once upon a time, in a land far away"
GOOD = {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True}
SHORT_CTX = {"context_length": 64}
VOCAB = 8192


def sp(**kw) -> dict:
    """Good sampling params with some fields overridden."""
    return {**GOOD, **kw}


@dataclass
class Row:
    id: str
    kwargs: dict
    exc: type
    match: str
    engine_options: dict = field(default_factory=dict)


ROWS = [
    # inputs
    Row("empty prompt", dict(prompt="", sampling_params=GOOD), ValueError, "empty"),
    Row("empty input_ids", dict(input_ids=[], sampling_params=GOOD), ValueError, "empty"),
    Row("empty prompt list", dict(prompt=[], sampling_params=GOOD), ValueError, "empty"),
    Row(
        "prompt longer than context",
        dict(input_ids=[100] * 100, sampling_params=GOOD),
        ValueError,
        r"too long.*100 tokens.*64",
        SHORT_CTX,
    ),
    Row(
        "prompt fills the context, wants tokens",
        dict(input_ids=[100] * 64, sampling_params=GOOD),
        ValueError,
        "too long",
        SHORT_CTX,
    ),
    Row(
        "both prompt and input_ids",
        dict(prompt="hi", input_ids=[5, 6], sampling_params=GOOD),
        ValueError,
        "exactly one of prompt or input_ids",
    ),
    Row(
        "neither prompt nor input_ids",
        dict(sampling_params=GOOD),
        ValueError,
        "exactly one of prompt or input_ids",
    ),
    Row(
        "input_ids id too large",
        dict(input_ids=[5, VOCAB], sampling_params=GOOD),
        ValueError,
        rf"input_ids.*\[0, {VOCAB}\)",
    ),
    Row("input_ids negative id", dict(input_ids=[5, -1], sampling_params=GOOD), ValueError, "input_ids"),
    Row("input_ids non-int", dict(input_ids=[5, 6.0], sampling_params=GOOD), ValueError, "input_ids"),
    Row("input_ids bool", dict(input_ids=[5, True], sampling_params=GOOD), ValueError, "input_ids"),
    Row("input_ids not a list", dict(input_ids=5, sampling_params=GOOD), TypeError, "input_ids"),
    Row("prompt not a string", dict(prompt=123, sampling_params=GOOD), TypeError, "prompt"),
    Row("prompt list with a non-string", dict(prompt=["a", 5], sampling_params=GOOD), TypeError, "prompt"),
    # sampling parameters
    Row(
        "max_new_tokens=-1",
        dict(prompt="hi", sampling_params=sp(max_new_tokens=-1)),
        ValueError,
        "max_new_tokens",
    ),
    Row(
        "max_new_tokens str",
        dict(prompt="hi", sampling_params=sp(max_new_tokens="5")),
        ValueError,
        "max_new_tokens",
    ),
    Row(
        "min_new_tokens > max",
        dict(prompt="hi", sampling_params=sp(min_new_tokens=5)),
        ValueError,
        "min_new_tokens",
    ),
    Row(
        "temperature=-0.5", dict(prompt="hi", sampling_params=sp(temperature=-0.5)), ValueError, "temperature"
    ),
    Row(
        "temperature=nan",
        dict(prompt="hi", sampling_params=sp(temperature=math.nan)),
        ValueError,
        "temperature",
    ),
    Row("top_p=0", dict(prompt="hi", sampling_params=sp(top_p=0)), ValueError, "top_p"),
    Row("top_p=1.5", dict(prompt="hi", sampling_params=sp(top_p=1.5)), ValueError, "top_p"),
    Row("top_k=0", dict(prompt="hi", sampling_params=sp(top_k=0)), ValueError, "top_k"),
    Row("top_k=-2", dict(prompt="hi", sampling_params=sp(top_k=-2)), ValueError, "top_k"),
    Row("min_p=2", dict(prompt="hi", sampling_params=sp(min_p=2)), ValueError, "min_p"),
    Row("n=0", dict(prompt="hi", sampling_params=sp(n=0)), ValueError, r"\bn must"),
    Row(
        "unknown parameter",
        dict(prompt="hi", sampling_params=sp(max_tokens=5)),
        ValueError,
        "unknown sampling parameter.*max_tokens",
    ),
    Row(
        "frequency_penalty=5",
        dict(prompt="hi", sampling_params=sp(frequency_penalty=5)),
        ValueError,
        "frequency_penalty",
    ),
    Row(
        "presence_penalty=-3",
        dict(prompt="hi", sampling_params=sp(presence_penalty=-3)),
        ValueError,
        "presence_penalty",
    ),
    Row(
        "repetition_penalty=0",
        dict(prompt="hi", sampling_params=sp(repetition_penalty=0)),
        ValueError,
        "repetition_penalty",
    ),
    Row("seed not an int", dict(prompt="hi", sampling_params=sp(seed="x")), ValueError, "seed"),
    Row("empty stop string", dict(prompt="hi", sampling_params=sp(stop="")), ValueError, "stop"),
    Row(
        "stop list with a non-string",
        dict(prompt="hi", sampling_params=sp(stop=["ok", 3])),
        ValueError,
        "stop",
    ),
    Row(
        "stop_token_ids out of range",
        dict(prompt="hi", sampling_params=sp(stop_token_ids=[2, VOCAB])),
        ValueError,
        "stop_token_ids",
    ),
    Row(
        "stop_token_ids not a list",
        dict(prompt="hi", sampling_params=sp(stop_token_ids=2)),
        ValueError,
        "stop_token_ids",
    ),
    Row("invalid regex", dict(prompt="hi", sampling_params=sp(regex="(a")), ValueError, "invalid regex"),
    Row(
        "regex and json_schema",
        dict(prompt="hi", sampling_params=sp(regex="a", json_schema="{}")),
        ValueError,
        "at most one",
    ),
    Row(
        "json_schema not JSON",
        dict(prompt="hi", sampling_params=sp(json_schema="{nope")),
        ValueError,
        "not valid JSON",
    ),
    Row(
        "json_schema of an unknown type",
        dict(prompt="hi", sampling_params=sp(json_schema={"type": "x"})),
        ValueError,
        "unsupported json_schema",
    ),
    Row(
        "json_schema neither text nor a schema object",
        dict(prompt="hi", sampling_params=sp(json_schema=3)),
        TypeError,
        "json_schema",
    ),
    Row(
        "sampling_params not a dict",
        dict(prompt="hi", sampling_params="greedy"),
        TypeError,
        "sampling_params",
    ),
    Row(
        "sampling_params list of wrong length",
        dict(prompt=["a", "b"], sampling_params=[GOOD] * 3),
        ValueError,
        "sampling_params has 3 entries for 2 prompts",
    ),
    # logprob options
    Row(
        "return_logprob list of wrong length",
        dict(prompt=["a", "b"], sampling_params=GOOD, return_logprob=[True]),
        ValueError,
        "return_logprob",
    ),
    Row(
        "top_logprobs_num=-1",
        dict(prompt="hi", sampling_params=GOOD, return_logprob=True, top_logprobs_num=-1),
        ValueError,
        "top_logprobs_num",
    ),
    Row(
        "logprob_start_len past the prompt",
        dict(input_ids=[5, 6, 7], sampling_params=GOOD, return_logprob=True, logprob_start_len=3),
        ValueError,
        "logprob_start_len",
    ),
    Row(
        "logprob_start_len=-2",
        dict(input_ids=[5, 6, 7], sampling_params=GOOD, return_logprob=True, logprob_start_len=-2),
        ValueError,
        "logprob_start_len",
    ),
    # batches: the error names the request, nothing is queued
    Row(
        "batch with an empty prompt",
        dict(prompt=["fine", "also fine", ""], sampling_params=GOOD),
        ValueError,
        r"request 2: prompt is empty",
    ),
    Row(
        "batch with a bad id",
        dict(input_ids=[[5, 6], [7, VOCAB + 5]], sampling_params=GOOD),
        ValueError,
        r"request 1: input_ids",
    ),
    Row(
        "batch with an empty id list",
        dict(input_ids=[[5, 6], []], sampling_params=GOOD),
        ValueError,
        r"request 1: prompt is empty",
    ),
    Row(
        "batch with one bad params entry",
        dict(prompt=["a", "b", "c"], sampling_params=[sp(n=3), sp(temperature=-1), GOOD]),
        ValueError,
        r"request 1: temperature",
    ),
    Row(
        "batch with one unknown parameter",
        dict(prompt=["a", "b"], sampling_params=[GOOD, sp(best_of=2)]),
        ValueError,
        r"request 1: unknown sampling parameter.*best_of",
    ),
    Row(
        "batch with one non-dict params",
        dict(prompt=["a", "b"], sampling_params=[GOOD, 7]),
        TypeError,
        r"request 1: sampling_params",
    ),
    Row(
        "batch with a too long prompt",
        dict(input_ids=[[5] * 10, [5] * 80], sampling_params=GOOD),
        ValueError,
        r"request 1: prompt is too long",
        SHORT_CTX,
    ),
]


@pytest.fixture(scope="module")
def reference() -> dict:
    """The good request's greedy output on each engine used here, before any bad call."""
    return {
        key: get_engine("llama", **opts).generate(GOOD_PROMPT, GOOD)["output_ids"]
        for key, opts in (("default", {}), ("short", SHORT_CTX))
    }


def assert_still_serving(engine, expected: list[int]) -> None:
    usage = engine.check_accounting()
    assert usage["waiting"] == 0 and usage["running"] == 0, f"a bad request left work behind: {usage}"
    engine.check_accounting()
    out = engine.generate(GOOD_PROMPT, GOOD)
    assert out["output_ids"] == expected
    assert out["meta_info"]["finish_reason"] == {"type": "length", "length": GOOD["max_new_tokens"]}


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_request_is_rejected_and_the_engine_keeps_serving(row, reference):
    engine = get_engine("llama", **row.engine_options)
    finished_before = engine.get_server_info()["finished_requests"]
    with pytest.raises(row.exc, match=row.match):
        engine.generate(**row.kwargs)
    assert engine.get_server_info()["finished_requests"] == finished_before, "something ran"
    assert_still_serving(engine, reference["short" if row.engine_options else "default"])


def test_valid_edges_are_accepted(reference):
    """The limits themselves are fine: a prompt filling the context with max_new_tokens=0, one
    token short of it (max_new_tokens is clipped), and the extreme valid parameter values."""
    engine = get_engine("llama", **SHORT_CTX)
    full = engine.generate(input_ids=[100] * 64, sampling_params={"max_new_tokens": 0})
    assert full["output_ids"] == [] and full["meta_info"]["finish_reason"] == {"type": "length", "length": 0}
    clipped = engine.generate(input_ids=[100] * 63, sampling_params=sp(max_new_tokens=50))
    assert len(clipped["output_ids"]) == 1
    assert clipped["meta_info"]["finish_reason"]["type"] == "length"
    edge = sp(
        top_p=1.0,
        top_k=-1,
        min_p=1.0,
        frequency_penalty=2,
        presence_penalty=-2,
        repetition_penalty=2,
        stop_token_ids=[0, VOCAB - 1],
        temperature=0.0,
        seed=-5,
        max_new_tokens=3,
        min_new_tokens=3,
    )
    out = engine.generate(input_ids=[5, 6, 7], sampling_params=edge)
    assert len(out["output_ids"]) == 3
    assert_still_serving(engine, reference["short"])


@pytest.mark.parametrize("bad", [1.5, "2"], ids=["float", "str"])
def test_non_integer_logprob_start_len_is_rejected(bad, reference):
    engine = get_engine("llama")
    with pytest.raises((ValueError, TypeError), match="logprob_start_len"):
        engine.generate(GOOD_PROMPT, GOOD, return_logprob=True, logprob_start_len=bad)
    assert_still_serving(engine, reference["default"])


# ---------------------------------------------------------------------------- Engine()
@pytest.fixture(scope="module")
def tiny_folder():
    return build_tiny_model("llama")


def _copy(src, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def _missing_folder(src, tmp_path):
    return tmp_path / "does-not-exist", {}


def _unknown_arch(src, tmp_path):
    dst = _copy(src, tmp_path)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["architectures"] = ["FooForCausalLM"]
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst, {}


def _truncate(keep):
    def make(src, tmp_path):
        dst = _copy(src, tmp_path)
        weights = dst / "model.safetensors"
        data = weights.read_bytes()
        weights.write_bytes(data[: keep(len(data))])
        return dst, {}

    return make


def _garbage_weights(src, tmp_path):
    dst = _copy(src, tmp_path)
    (dst / "model.safetensors").write_bytes(b"\xff" * 256)
    return dst, {}


def _no_config(src, tmp_path):
    dst = _copy(src, tmp_path)
    (dst / "config.json").unlink()
    return dst, {}


def _no_weights(src, tmp_path):
    dst = _copy(src, tmp_path)
    (dst / "model.safetensors").unlink()
    return dst, {}


def _bad_rope(src, tmp_path):
    dst = _copy(src, tmp_path)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "yarn-ish", "rope_theta": 10000.0}
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst, {}


def _option(**options):
    def make(src, tmp_path):
        return src, options

    return make


ENGINE_ROWS = [
    ("missing folder", _missing_folder, FileNotFoundError, "not found"),
    ("no config.json", _no_config, FileNotFoundError, "config.json"),
    ("no weights", _no_weights, FileNotFoundError, "safetensors"),
    ("unknown architecture", _unknown_arch, ValueError, "FooForCausalLM"),
    ("unknown rope type", _bad_rope, ValueError, "yarn-ish"),
    ("truncated weights (half)", _truncate(lambda n: n // 2), ValueError, r"cannot read.*model\.safetensors"),
    ("truncated weights (tail)", _truncate(lambda n: n - 64), ValueError, r"cannot read.*model\.safetensors"),
    ("truncated weights (header)", _truncate(lambda n: 10), ValueError, r"cannot read.*model\.safetensors"),
    ("garbage weights", _garbage_weights, ValueError, r"cannot read.*model\.safetensors"),
    ("unknown option", _option(max_batch_size=4), TypeError, "unknown engine option.*max_batch_size"),
    ("bad dtype", _option(dtype="float8"), ValueError, "dtype"),
    ("bad schedule policy", _option(schedule_policy="random"), ValueError, "schedule_policy"),
    ("context beyond the model", _option(context_length=100_000), ValueError, "context_length"),
    ("tiny KV pool", _option(max_total_tokens=1), ValueError, "max_total_tokens"),
]


@pytest.mark.parametrize("name, make, exc, match", ENGINE_ROWS, ids=[r[0] for r in ENGINE_ROWS])
def test_bad_model_folder_or_option(name, make, exc, match, tiny_folder, tmp_path, reference):
    path, options = make(tiny_folder, tmp_path)
    with pytest.raises(exc, match=match):
        Engine(str(path), **options)
    assert_still_serving(get_engine("llama"), reference["default"])
