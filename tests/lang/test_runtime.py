"""The DSL end to end: programs on the tiny model through `Runtime` (runtime processes + ZeroMQ)."""

from __future__ import annotations

import asyncio
import re

import pytest

import radixlm as rl
from radixlm.lang.interpreter import ProgramError
from radixlm.testing import build_tiny_model

LONG_PROMPT = (
    "The radix tree keeps every prompt prefix the runtime has computed, so a second request "
    "that starts the same way skips the work already done. "
) * 6
FEW_SHOT = "".join(
    f"Question: what is {a} plus {b}?\nAnswer: {a + b}\n\n"
    for a, b in [(1, 2), (3, 4), (10, 5), (7, 7), (12, 30), (8, 1), (6, 9), (20, 22)]
)


@pytest.fixture(scope="module")
def rt():
    runtime = rl.Runtime(str(build_tiny_model("llama")))
    yield runtime
    runtime.shutdown()


@pytest.fixture(autouse=True)
def _balanced(rt):
    """After each test the runtime's KV accounting holds and a flush empties the pool."""
    yield
    rt.engine.check_accounting()
    assert rt.flush_cache()
    usage = rt.engine.check_accounting()
    assert usage["free_tokens"] == usage["total_tokens"], usage


def _greedy(engine, prompt: str, max_new_tokens: int) -> str:
    return engine.generate(prompt, {"max_new_tokens": max_new_tokens, "temperature": 0})["text"]


def test_gen_matches_the_engine_and_roles_render_the_models_template(rt):
    @rl.function
    def chat(s, question):
        s += rl.system("You answer briefly.")
        s += rl.user(question)
        s += rl.assistant(rl.gen("answer", max_tokens=6))

    st = chat.run(question="What is a list?", temperature=0, backend=rt)
    text = st.text()
    assert text.startswith("<|im_start|>system\nYou answer briefly.<|im_end|>\n<|im_start|>user\n")
    # the same prompt straight through the Engine gives the same greedy tokens
    prompt = text[: len(text) - len(st["answer"]) - len("<|im_end|>\n")]
    assert prompt.endswith("<|im_start|>assistant\n")
    assert st["answer"] == _greedy(rt.engine, prompt, 6).split("<|im_end|>")[0]
    assert [m["role"] for m in st.messages()] == ["system", "user", "assistant"]
    meta = st.get_meta_info("answer")
    assert meta["prompt_tokens"] > 10 and meta["finish_reason"]["type"] in ("length", "stop")


def test_three_way_fork_after_a_long_prompt_hits_the_cache_in_every_child(rt):
    children: list = []

    @rl.function
    def tree(s):
        s += LONG_PROMPT
        forks = s.fork(3)
        forks += lambda i: f"Branch {i}:"
        forks += rl.gen("idea", max_tokens=4, temperature=0.9)
        forks.join()
        children.extend(forks)

    st = tree.run(backend=rt)
    assert len(st["idea"]) == 3
    assert st["idea"] == [child["idea"] for child in children]
    prompt_len = len(rt.endpoint.tokenizer(LONG_PROMPT).input_ids)
    for child in children:
        meta = child.get_meta_info("idea")
        # the fork prefilled the shared prompt once; each child's request reuses all of it
        assert meta["cached_tokens"] >= prompt_len - 1, meta
        assert meta["prompt_tokens"] > meta["cached_tokens"]


def test_select_scores_equal_the_engines_prompt_logprobs(rt):
    prompt = "Question: is the sky blue?\nAnswer:"
    choices = [" yes", " no", " it depends on the weather"]

    @rl.function
    def ask(s):
        s += prompt + rl.select("answer", choices=choices)

    st = ask.run(backend=rt)
    meta = st.get_meta_info("answer")
    tok = rt.endpoint.tokenizer
    prompt_ids = tok(prompt).input_ids
    for choice, scored in zip(choices, meta["input_token_logprobs"]):
        ids = tok(prompt + choice).input_ids
        out = rt.engine.generate(
            input_ids=ids, sampling_params={"max_new_tokens": 0}, return_logprob=True, logprob_start_len=0
        )
        reference = out["meta_info"]["input_token_logprobs"]
        common = next(i for i in range(len(ids)) if i >= len(prompt_ids) or ids[i] != prompt_ids[i])
        expected = reference[common:]
        assert [t for _, t in scored] == [t for _, t in expected] == ids[common:]
        assert [lp for lp, _ in scored] == pytest.approx([lp for lp, _ in expected], abs=1e-5)
    # the decision is the highest mean logprob (token_length_normalized)
    means = meta["normalized_prompt_logprobs"]
    assert st["answer"] == choices[max(range(3), key=lambda i: means[i])]
    assert st.text() == prompt + st["answer"]


def test_select_methods_and_sampling_through_the_runtime(rt):
    choices = [" red", " green", " blue"]

    @rl.function
    def pick(s, method, temperature):
        s += "My favourite colour is" + rl.select(
            "c", choices=choices, choices_method=method, temperature=temperature
        )

    for method in (
        rl.token_length_normalized,
        rl.greedy_token_selection,
        rl.unconditional_likelihood_normalized,
    ):
        st = pick.run(method=method, temperature=0.0, backend=rt)
        assert st["c"] in choices
    drawn = {pick.run(method=rl.token_length_normalized, temperature=5.0, backend=rt)["c"] for _ in range(12)}
    assert drawn <= set(choices) and len(drawn) >= 2  # near-uniform at a high temperature


def test_run_batch_of_64_sharing_a_few_shot_header_hits_the_cache(rt):
    @rl.function
    def solve(s, a, b):
        s += FEW_SHOT
        s += f"Question: what is {a} plus {b}?\nAnswer:" + rl.gen("answer", max_tokens=4, stop="\n")

    before = rt.get_server_info()
    states = solve.run_batch([{"a": i, "b": 2 * i} for i in range(64)], temperature=0, backend=rt)
    after = rt.get_server_info()
    assert len(states) == 64
    assert all(st.error() is None for st in states)
    # input order is kept: each state's text contains its own question
    assert all(f"what is {i} plus {2 * i}?" in st.text() for i, st in enumerate(states))
    prompt = after["prompt_tokens"] - before["prompt_tokens"]
    cached = after["cached_tokens"] - before["cached_tokens"]
    hit_rate = cached / prompt
    assert hit_rate > 0.8, (cached, prompt)
    assert after["cache_hit_rate"] > before["cache_hit_rate"] or before["cache_hit_rate"] > 0.8


@pytest.mark.parametrize("policy", ["lpm", "fcfs"])
def test_run_batch_prefills_the_shared_header_once_under_either_policy(policy):
    """Under LPM the programs' gathered first calls pre-cache their header (the scheduler admits
    one and defers the rest a round); under FCFS, which would prefill it in all of them, run_batch
    sends the header first and holds the programs until it is cached. Either way the cold batch
    hits the cache for all but one copy of the header."""

    @rl.function
    def solve(s, a):
        s += FEW_SHOT  # a statement of its own: the traced constant prefix
        s += f"Question: what is {a} plus 1?\nAnswer:" + rl.gen("answer", max_tokens=2)

    with rl.Runtime(str(build_tiny_model("llama")), schedule_policy=policy) as runtime:
        before = runtime.get_server_info()
        states = solve.run_batch([{"a": i} for i in range(16)], temperature=0, backend=runtime)
        after = runtime.get_server_info()
        runtime.engine.check_accounting()
    assert all(st.error() is None for st in states)
    # FCFS: the header went first as a request of its own; LPM: the programs' calls alone
    assert after["finished_requests"] - before["finished_requests"] == 16 + (policy == "fcfs")
    prompt = after["prompt_tokens"] - before["prompt_tokens"]
    cached = after["cached_tokens"] - before["cached_tokens"]
    assert cached / prompt > 0.8, (policy, cached, prompt)


def test_run_batch_precaches_a_header_too_short_for_the_schedulers_dedup():
    """LPM's in-batch deduplication only catches shared prefixes of `in_batch_prefix_tokens` or
    more. A shorter traced header (still worth caching: over 64 characters) goes first, alone,
    so a cold batch whose programs all arrive in one round still reads it from the cache."""
    header = "You are a concise assistant; answer every question in one short line.\n"

    @rl.function
    def solve(s, a):
        s += header
        s += f"Question: what is {a} plus 1?\nAnswer:" + rl.gen("answer", max_tokens=2)

    with rl.Runtime(str(build_tiny_model("llama")), schedule_policy="lpm") as runtime:
        before = runtime.get_server_info()
        header_tokens = len(runtime.endpoint.tokenizer(header).input_ids)
        assert len(header) > 64 and 4 < header_tokens < before["in_batch_prefix_tokens"]
        states = solve.run_batch([{"a": i} for i in range(16)], temperature=0, backend=runtime)
        after = runtime.get_server_info()
        runtime.engine.check_accounting()
    assert all(st.error() is None for st in states)
    # the header was its own request, ahead of the programs' first calls
    assert after["finished_requests"] - before["finished_requests"] == 16 + 1
    cached = after["cached_tokens"] - before["cached_tokens"]
    # every program reads the header (all but a token where it meets the question) from the cache
    assert cached >= 16 * (header_tokens - 1), (cached, header_tokens)


def test_run_batch_equals_running_each_program_alone(rt):
    """Programs that read their own variables mid-body, fork, join and select: run_batch's
    gathered requests (several programs' calls in one frame, the pre-cache sent with them)
    give each state exactly what running the program alone gives."""

    @rl.function
    def prog(s, i):
        s += FEW_SHOT + f"Question: what is {i} plus 1?\nAnswer:" + rl.gen("a", max_tokens=3, stop="\n")
        if len(s["a"]) % 2 == 0:  # a read in the middle of the body
            s += " (even)"
        forks = s.fork(2)
        for k, f in enumerate(forks):
            f += f" Branch {k}:" + rl.gen("b", max_tokens=2)
        forks.join()
        s += " So:" + rl.select("c", choices=[" yes", " no", " maybe"])

    items = [{"i": i} for i in range(10)]
    alone = [prog.run(**item, temperature=0, backend=rt) for item in items]
    for threads in (4, "auto"):
        batch = prog.run_batch(items, temperature=0, backend=rt, num_threads=threads)
        assert [st.error() for st in batch] == [None] * len(items)
        assert [st.text() for st in batch] == [st.text() for st in alone]
        assert [st["c"] for st in batch] == [st["c"] for st in alone]


def test_run_batch_keeps_each_programs_failure_in_its_own_state(rt):
    """A request the server refuses, a program's own exception and a good program, gathered
    together: each state gets its own outcome, in input order."""

    @rl.function
    def prog(s, kind):
        s += FEW_SHOT + f"Question: {kind}?\nAnswer:"
        if kind == "refused":
            s += rl.gen("x", max_tokens=4, stop_token_ids=[10**9])
        else:
            s += rl.gen("x", max_tokens=4)
        if kind == "raises":
            raise KeyError("the program's own bug")

    kinds = ["good", "refused", "raises", "good"] * 3
    states = prog.run_batch([{"kind": k} for k in kinds], temperature=0, backend=rt)
    for kind, st in zip(kinds, states):
        assert f"Question: {kind}?" in st.text()
        if kind == "good":
            assert st.error() is None and isinstance(st["x"], str)
        elif kind == "refused":
            assert "stop_token_ids" in str(st.error())
            with pytest.raises(ProgramError, match="stop_token_ids"):
                st["x"]
        else:
            assert isinstance(st.error(), KeyError) and isinstance(st["x"], str)
    gen_style = prog.run_batch([{"kind": k} for k in kinds], temperature=0, backend=rt, generator_style=True)
    assert [st.text() for st in gen_style] == [st.text() for st in states]


def test_gen_n_samples_streaming_and_async_streaming(rt):
    @rl.function
    def many(s):
        s += "Once upon a time" + rl.gen("story", max_tokens=5, n=3, temperature=1.0)

    st = many.run(backend=rt)
    assert isinstance(st["story"], list) and len(st["story"]) == 3
    assert st.text() == "Once upon a time" + st["story"][0]

    @rl.function
    def tell(s):
        s += "Once upon a time" + rl.gen("story", max_tokens=8, ignore_eos=True)

    st = tell.run(backend=rt, stream=True, temperature=0)
    chunks = list(st.text_iter())
    assert "".join(chunks) == st.text()
    assert st["story"] == _greedy(rt.engine, "Once upon a time", 8)

    async def collect():
        state = tell.run(backend=rt, stream=True, temperature=0)
        return [c async for c in state.text_async_iter("story")], state

    pieces, st2 = asyncio.run(collect())
    assert "".join(pieces) == st2["story"] == st["story"]


def test_a_failed_request_names_its_cause_and_the_runtime_keeps_serving(rt):
    @rl.function
    def bad(s):
        s += "x" + rl.gen("a", max_tokens=3, top_p=0.0)  # refused by the runtime's checks
        s += rl.gen("b", max_tokens=3)

    st = bad.run(backend=rt)
    assert st.error() is not None and "top_p" in str(st.error())
    with pytest.raises(ProgramError, match="top_p"):
        st["a"]
    with pytest.raises(ProgramError, match="top_p"):
        st["b"]

    ok = rl.function(lambda s: s.__iadd__("y" + rl.gen("a", max_tokens=2))).run(backend=rt)
    assert ok.error() is None and isinstance(ok["a"], str)


def test_cache_prefills_the_traced_prefix(rt):
    @rl.function
    def solve(s, a):
        s += FEW_SHOT
        s += f"Question: {a}\nAnswer:" + rl.gen("x", max_tokens=2)

    assert solve.trace(rt) == FEW_SHOT
    solve.cache(rt)
    st = solve.run(a="what is 2 plus 2?", backend=rt)
    assert st.get_meta_info("x")["cached_tokens"] >= len(rt.endpoint.tokenizer(FEW_SHOT).input_ids) - 2


def test_streamed_logprobs_come_in_increments_aligned_with_the_tokens(rt):
    """SGLang's test_stream_logprobs contract, through the ZeroMQ runtime."""

    @rl.function
    def qa(s):
        s += rl.user("Tell me about Hawaii.")
        s += rl.assistant(rl.gen("answer", return_logprob=True, return_text_in_logprobs=True))

    async def collect():
        state = qa.run(backend=rt, stream=True, temperature=0, max_new_tokens=12, ignore_eos=True)
        return [item async for item in state.text_async_iter("answer", return_meta_data=True)], state

    items, st = asyncio.run(collect())
    assert items and all(chunk for chunk, _ in items)
    previous = 0
    for _, meta in items:
        assert meta["completion_tokens"] == meta["output_token_logprobs_length"]
        assert len(meta["output_token_logprobs"]) == meta["completion_tokens"] - previous
        previous = meta["completion_tokens"]
    assert previous == 12
    entries = [e for _, meta in items for e in meta["output_token_logprobs"]]
    assert "".join(text for _, _, text in entries) == st["answer"]
    assert rt.get_model_name() == rt.endpoint.info["model_path"]


def test_constrained_gens_in_programs(rt):
    import json
    from typing import Literal

    import jsonschema
    import pydantic

    class Pet(pydantic.BaseModel):
        name: str = pydantic.Field(max_length=10)
        kind: str = pydantic.Field(pattern=r"^(cat|dog|owl)$")
        legs: Literal[0, 2, 4]

    @rl.function
    def prog(s):
        s += "Hours in a day: " + rl.gen_int("hours", max_tokens=6) + "\n"
        s += "Is water wet? " + rl.gen("wet", dtype=bool) + "\n"
        s += "Pi is about " + rl.gen("pi", dtype=float, max_tokens=8) + "\n"
        s += "Date: " + rl.gen("date", regex=r"20[0-9]{2}-(0[1-9]|1[0-2])-[0-2][0-9]") + "\n"
        s += "Pet: " + rl.gen("pet", json_schema=Pet, max_tokens=96)

    st = prog.run(backend=rt, temperature=0)
    assert st.error() is None, st.error()
    int(st["hours"])
    assert st["wet"] in ("True", "False")
    float(st["pi"])
    assert re.fullmatch(r"20[0-9]{2}-(0[1-9]|1[0-2])-[0-2][0-9]", st["date"])
    pet = Pet.model_validate_json(st["pet"])
    jsonschema.validate(json.loads(st["pet"]), Pet.model_json_schema())
    assert st.get_meta_info("pet")["jump_forward_tokens"] > 0 and pet.kind in ("cat", "dog", "owl")

    @rl.function
    def bad(s):
        s += "x" + rl.gen("v", json_schema={"type": "array", "uniqueItems": True})

    with pytest.raises(ProgramError, match="unsupported json_schema feature.*uniqueItems"):
        bad.run(backend=rt)["v"]
