"""The Engine over its processes: n > 1, streaming, early stream close, process death, shutdown,
and bad options failing Engine() with a clear error while other engines keep serving."""

from __future__ import annotations

import os
import random
import signal
import threading
from pathlib import Path

import pytest
from helpers import assert_serves_as_before, get_engine
from polling import wait_until

from radixlm import Engine
from radixlm.runtime.managers.tokenizer_manager import RuntimeDiedError
from radixlm.testing import build_tiny_model


def ids_of(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(4, 8192) for _ in range(n)]


def gone(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "zombie" in status.read_text().lower()
    except FileNotFoundError:
        return True


def test_n_samples_share_the_prompt_through_the_cache():
    engine = get_engine("llama")
    ids = ids_of(60, 6)
    outs = engine.generate(
        input_ids=ids, sampling_params={"max_new_tokens": 6, "n": 4, "temperature": 1.0, "seed": 3}
    )
    assert len(outs) == 4
    # the prompt is computed once (a warm-up request), then every sample hits the cache
    assert all(o["meta_info"]["cached_tokens"] >= 59 for o in outs)
    again = engine.generate(
        input_ids=ids, sampling_params={"max_new_tokens": 6, "n": 4, "temperature": 1.0, "seed": 3}
    )
    assert [o["output_ids"] for o in again] == [o["output_ids"] for o in outs]
    assert len({tuple(o["output_ids"]) for o in outs}) > 1


def test_batch_with_n_keeps_prompt_order():
    engine = get_engine("llama")
    prompts = [ids_of(10 + i, 70 + i) for i in range(3)]
    outs = engine.generate(
        input_ids=prompts, sampling_params={"max_new_tokens": 3, "n": 2, "temperature": 0, "ignore_eos": True}
    )
    assert len(outs) == 6
    for i, ids in enumerate(prompts):
        single = engine.generate(
            input_ids=ids, sampling_params={"max_new_tokens": 3, "temperature": 0, "ignore_eos": True}
        )
        assert outs[2 * i]["output_ids"] == outs[2 * i + 1]["output_ids"] == single["output_ids"]


def test_stream_concatenates_to_the_full_result():
    engine = get_engine("llama")
    params = {"max_new_tokens": 20, "temperature": 0, "ignore_eos": True}
    full = engine.generate("The history of Python began", params)
    chunks = list(engine.generate("The history of Python began", params, stream=True))
    assert chunks[-1]["finished"] and not any(c["finished"] for c in chunks[:-1])
    assert "".join(c["text"] for c in chunks) == full["text"]
    assert [t for c in chunks for t in c["output_ids"]] == full["output_ids"]
    assert chunks[-1]["meta_info"]["finish_reason"] == full["meta_info"]["finish_reason"]


def test_closing_a_stream_early_aborts_and_frees_kv():
    engine = get_engine("llama")
    stream = engine.generate(
        "Once upon a time", {"max_new_tokens": 1500, "temperature": 0, "ignore_eos": True}, stream=True
    )
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    wait_until(
        lambda: engine.get_server_info()["running"] == 0, 10, what="the closed stream's request to stop"
    )
    usage = engine.check_accounting()
    assert usage["in_use_tokens"] == 0 and usage["locked_tokens"] == 0


def test_killed_scheduler_fails_pending_requests_fast_and_shutdown_leaves_no_orphans():
    engine = Engine(str(build_tiny_model("llama")))
    try:
        pids = engine.process_ids
        errors: list[BaseException] = []
        streaming = threading.Event()

        def long_request() -> None:
            try:
                for _ in engine.generate(
                    "Hello", {"max_new_tokens": 1900, "temperature": 0, "ignore_eos": True}, stream=True
                ):
                    streaming.set()  # the request is running in the scheduler: kill it now
            except BaseException as exc:
                errors.append(exc)

        worker = threading.Thread(target=long_request)
        worker.start()
        assert streaming.wait(60), "the request never started streaming"
        os.kill(pids["scheduler"], signal.SIGKILL)
        worker.join(30)  # a bound on a hang, not a speed: the watchdog fails it within a second or so
        assert not worker.is_alive(), "the pending request did not fail"
        assert errors and isinstance(errors[0], RuntimeDiedError)
        assert "scheduler" in str(errors[0])
        with pytest.raises(RuntimeDiedError, match="scheduler"):
            engine.generate("Hello", {"max_new_tokens": 2})
    finally:
        engine.shutdown()
    wait_until(
        lambda: all(gone(pid) for pid in pids.values()),
        10,
        what=f"the engine's processes {pids} to exit",
    )


def test_shutdown_stops_children_and_rejects_new_work():
    engine = Engine(str(build_tiny_model("llama")))
    pids = engine.process_ids
    assert engine.generate("hi", {"max_new_tokens": 2})["meta_info"]["completion_tokens"] == 2
    engine.shutdown()
    wait_until(
        lambda: all(gone(pid) for pid in pids.values()),
        10,
        what=f"the engine's processes {pids} to exit",
    )
    with pytest.raises(RuntimeError, match="shut down"):
        engine.generate("hi", {"max_new_tokens": 2})
    engine.shutdown()  # idempotent


def test_ipc_directory_is_private():
    engine = get_engine("llama")
    directory = engine._runtime.addrs.directory
    assert os.stat(directory).st_mode & 0o777 == 0o700


def test_cached_tokens_reported_through_the_engine():
    engine = get_engine("llama")
    ids = ids_of(57, 81)
    params = {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True}
    first = engine.generate(input_ids=ids, sampling_params=params)
    second = engine.generate(input_ids=ids, sampling_params=params)
    assert first["meta_info"]["cached_tokens"] == 0
    assert second["meta_info"]["cached_tokens"] >= len(ids) - 1
    prefix = ids_of(100, 82)
    a = engine.generate(input_ids=prefix + ids_of(7, 83), sampling_params=params)
    b = engine.generate(input_ids=prefix + ids_of(9, 84), sampling_params=params)
    assert a["meta_info"]["cached_tokens"] == 0 and b["meta_info"]["cached_tokens"] >= 100
    assert 0 < engine.get_server_info()["cache_hit_rate"] < 1


GOOD_PROMPT = "Once upon a time, in a land far away"
GOOD = {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True}
BAD_OPTIONS = [
    ("unknown option", {"max_batch_size": 4}, TypeError, "unknown engine option.*max_batch_size"),
    ("bad dtype", {"dtype": "float8"}, ValueError, "dtype"),
    ("bad schedule policy", {"schedule_policy": "random"}, ValueError, "schedule_policy"),
    ("context beyond the model", {"context_length": 100_000}, ValueError, "context_length"),
    ("tiny KV pool", {"max_total_tokens": 1}, ValueError, "max_total_tokens"),
]


@pytest.mark.parametrize("name, options, exc, match", BAD_OPTIONS, ids=[r[0] for r in BAD_OPTIONS])
def test_bad_option_fails_engine_clearly(name, options, exc, match):
    engine = get_engine("llama")
    before = engine.generate(GOOD_PROMPT, GOOD)["output_ids"]
    with pytest.raises(exc, match=match):
        Engine(str(build_tiny_model("llama")), **options)
    assert_serves_as_before(engine, GOOD_PROMPT, GOOD, before)
