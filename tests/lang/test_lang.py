"""The DSL's rules, driven by a fake backend that records requests and returns scripted text."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import radixlm as rl
from radixlm.lang.backend.base import BaseBackend
from radixlm.lang.chat_template import get_chat_template
from radixlm.lang.choices import ChoicesDecision
from radixlm.lang.interpreter import ProgramError


class FakeBackend(BaseBackend):
    """Completion = script(prompt, params) (default: "<N>" with a running counter)."""

    def __init__(
        self, script=None, template: str = "default", delay: float = 0.0, fail_on: str | None = None
    ):
        self.chat_template = get_chat_template(template)
        self.script = script
        self.delay = delay
        self.fail_on = fail_on
        self.calls: list[tuple[str, str, dict]] = []
        self.lock = threading.Lock()
        self.count = 0
        self.intervals: list[tuple[str, tuple[float, float]]] = []  # (prompt tail, (start, end)) per generate

    def _record(self, kind: str, prompt: str, params: dict) -> int:
        with self.lock:
            self.calls.append((kind, prompt, dict(params)))
            self.count += 1
            return self.count

    def generate(
        self, prompt, sampling_params, return_logprob=False, logprob_start_len=None, top_logprobs_num=0
    ):
        k = self._record("gen", prompt, sampling_params)
        started = time.monotonic()
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in prompt:
            raise ConnectionError("backend exploded")
        n = sampling_params.get("n", 1)
        text = self.script(prompt, sampling_params) if self.script else f"<{k}>"
        with self.lock:
            self.intervals.append((prompt[-2:], (started, time.monotonic())))
        meta = {"prompt": prompt, "return_logprob": return_logprob}
        if n > 1:
            return [f"{text}#{i}" for i in range(n)], [meta] * n
        return text, meta

    def generate_stream(self, prompt, sampling_params, **kw):
        text, meta = self.generate(prompt, sampling_params, **kw)
        for ch in text:
            yield ch, meta

    def select(self, prompt, choices, temperature, method):
        self._record("select", prompt, {"choices": choices})
        # the longest choice wins: a rule a test can predict
        best = max(choices, key=len)
        return ChoicesDecision(best, {"scored": choices})

    def cache_prefix(self, prompt):
        self._record("cache", prompt, {})


def gens(backend):
    return [c for c in backend.calls if c[0] == "gen"]


def test_text_accumulates_and_gen_stores_its_value():
    be = FakeBackend()

    @rl.function
    def prog(s, q):
        s += "Q: " + q + "\n"
        s += "A:" + rl.gen("a", max_tokens=5)

    st = prog.run(q="why?", backend=be)
    assert st["a"] == "<1>"
    assert st.text() == "Q: why?\nA:<1>"
    assert gens(be)[0][1] == "Q: why?\nA:"  # the prompt is the full text so far


def test_parameter_layering_run_defaults_then_gen_overrides_and_template_stops():
    be = FakeBackend(template="chatml")

    @rl.function
    def prog(s):
        s += rl.gen("x", max_tokens=7, stop="\n")
        s += rl.gen("y", temperature=0.3)

    st = prog.run(temperature=0.9, top_p=0.5, backend=be)
    st.sync()
    px, py = gens(be)[0][2], gens(be)[1][2]
    assert px["max_new_tokens"] == 7 and px["temperature"] == 0.9 and px["top_p"] == 0.5
    assert px["stop"] == ["\n", "<|im_end|>"]  # the template's stop string is always added
    assert py["temperature"] == 0.3 and py["max_new_tokens"] == 128 and py["stop"] == ["<|im_end|>"]


def test_program_argument_named_like_a_sampling_keyword_stays_an_argument():
    be = FakeBackend()

    @rl.function
    def prog(s, temperature):
        s += f"t={temperature}" + rl.gen("x")

    st = prog.run(temperature="hot", backend=be)
    st.sync()
    assert gens(be)[0][1] == "t=hot" and gens(be)[0][2]["temperature"] == 1.0


def test_roles_text_messages_and_default_system_prompt():
    be = FakeBackend(template="chatml")

    @rl.function
    def chat(s):
        s += rl.system("Be brief.")
        s += rl.user("Hi")
        s += rl.assistant(rl.gen("r1"))
        with s.user():
            s += "More?"
        s += rl.assistant_begin() + rl.gen("r2") + rl.assistant_end()

    st = chat.run(backend=be)
    assert st.text() == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n<1><|im_end|>\n<|im_start|>user\nMore?<|im_end|>\n"
        "<|im_start|>assistant\n<2><|im_end|>\n"
    )
    assert st.messages() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<1>"},
        {"role": "user", "content": "More?"},
        {"role": "assistant", "content": "<2>"},
    ]


def test_nested_roles_are_an_error_that_names_the_roles():
    be = FakeBackend()

    @rl.function
    def bad(s):
        s += rl.user_begin()
        s += rl.assistant("x")
        s += rl.gen("never")

    st = bad.run(backend=be)
    assert isinstance(st.error(), ValueError) and "nested roles" in str(st.error())
    with pytest.raises(ProgramError, match="nested roles"):
        st["never"]


def test_failed_generation_names_its_cause_and_skips_the_rest():
    be = FakeBackend(fail_on="boom")

    @rl.function
    def prog(s):
        s += "ok" + rl.gen("a")
        s += "boom" + rl.gen("b")
        s += rl.gen("c")

    st = prog.run(backend=be)
    assert st["a"] == "<1>"
    with pytest.raises(ProgramError, match="backend exploded") as info:
        st["b"]
    assert isinstance(info.value.__cause__, ConnectionError)
    with pytest.raises(ProgramError):
        st["c"]
    assert isinstance(st.error(), ConnectionError)
    assert len(gens(be)) == 2
    with pytest.raises(KeyError, match="nope"):
        st["nope"]


def test_appending_none_or_a_number_fails_at_the_call_site():
    st = rl.function(lambda s: None).run(backend=FakeBackend())
    with pytest.raises(ValueError):
        st += None
    with pytest.raises(TypeError, match="str"):
        st += 42


def test_var_scope_captures_the_text_inside():
    be = FakeBackend()

    @rl.function
    def prog(s):
        s += "{"
        with s.var_scope("obj"):
            s += '"k": ' + rl.gen("v")
        s += "}"

    st = prog.run(backend=be)
    assert st["obj"] == '"k": <1>' and st.text() == '{"k": <1>}'


def test_fork_copies_state_warms_the_prefix_and_join_gathers_in_child_order():
    be = FakeBackend(script=lambda p, _: p.rsplit("#", 1)[-1])

    @rl.function
    def tot(s):
        s += "Question. "
        forks = s.fork(3)
        forks += lambda i: f"Path #{i}"
        forks += rl.gen("idea")
        forks.join()
        s += "Done"

    st = tot.run(backend=be)
    assert st["idea"] == ["0", "1", "2"]
    assert st.text() == "Question. Done"  # gather joins variables, not text
    kinds = [c[0] for c in be.calls]
    assert kinds[0] == "cache" and be.calls[0][1] == "Question. "
    assert sorted(c[1] for c in gens(be)) == ["Question. Path #0", "Question. Path #1", "Question. Path #2"]


def test_nested_forks_give_nested_lists_and_children_run_concurrently():
    # each inner fork's two children must both be inside the backend at once to get past
    # their barrier: run one after the other, the first waits alone and the barrier breaks
    barriers = {"a": threading.Barrier(2, timeout=30), "b": threading.Barrier(2, timeout=30)}

    def meet_sibling(prompt: str, _params: dict) -> str:
        barriers[prompt[-2]].wait()
        return prompt[-2:]

    be = FakeBackend(script=meet_sibling)

    @rl.function
    def prog(s):
        outer = s.fork(2)
        outer += ["a", "b"]
        for child in outer:
            inner = child.fork(2)
            inner += ["1", "2"]
            inner += rl.gen("leaf")
            inner.join()
        outer.join()

    st = prog.run(backend=be)
    assert st.error() is None, st.error()
    assert st["leaf"] == [["a1", "a2"], ["b1", "b2"]]
    assert not any(b.broken for b in barriers.values())  # siblings were in the backend together
    intervals = dict(be.intervals)
    for pair in (("a1", "a2"), ("b1", "b2")):
        (start0, end0), (start1, end1) = (intervals[p] for p in pair)
        assert start0 < end1 and start1 < end0, (pair, intervals)  # the calls overlapped in time


def test_join_concate_and_append_appends_children_text_in_order():
    be = FakeBackend(script=lambda p, _: p[-1].upper())

    @rl.function
    def prog(s):
        s += "Docs:"
        forks = s.fork(3)
        forks += [" x", " y", " z"]
        forks += rl.gen("summary")
        forks.join("concate_and_append")
        s += " End"

    st = prog.run(backend=be)
    assert st.text() == "Docs: xX yY zZ End"


def test_fork_broadcast_rejects_wrong_list_length_and_bad_join_mode():
    st = rl.function(lambda s: None).run(backend=FakeBackend())
    forks = st.fork(2)
    with pytest.raises(ValueError, match="2 forks"):
        forks += ["a", "b", "c"]
    with pytest.raises(ValueError, match="join mode"):
        forks.join("bogus")


def test_gen_n_stores_a_list():
    be = FakeBackend()

    @rl.function
    def prog(s):
        s += "Q" + rl.gen("a", n=2)

    st = prog.run(backend=be)
    assert st["a"] == ["<1>#0", "<1>#1"] and st.text() == "Q<1>#0"


def test_select_and_gen_choices():
    be = FakeBackend()

    @rl.function
    def prog(s):
        s += "Pick: " + rl.select("a", choices=["no", "yes!"])
        s += " " + rl.gen("b", choices=["x", "longer"])

    st = prog.run(backend=be)
    assert (st["a"], st["b"]) == ("yes!", "longer")
    assert st.text() == "Pick: yes! longer"
    assert st.get_meta_info("a") == {"scored": ["no", "yes!"]}
    with pytest.raises(ValueError):
        rl.select("c", choices=[])


def test_dtype_sets_a_regex_and_bad_regex_fails_eagerly():
    be = FakeBackend(script=lambda p, _: "42")

    @rl.function
    def prog(s):
        s += "n=" + rl.gen_int("n")

    st = prog.run(backend=be)
    assert st["n"] == "42"
    params = gens(be)[0][2]
    assert params["regex"] == rl.REGEX_INT and " " in params["stop"]
    with pytest.raises(ValueError, match="invalid regex"):
        rl.gen("x", regex="(")
    with pytest.raises(ValueError, match="dtype"):
        rl.gen("x", dtype=list)


def test_run_batch_keeps_order_checks_arity_and_precaches_the_prefix():
    be = FakeBackend(script=lambda p, _: p.split("|")[1])
    header = "You are a classifier. " * 5

    @rl.function
    def classify(s, text, suffix="."):
        s += header + "|" + text + "|" + suffix
        s += rl.gen("label")

    states = classify.run_batch([{"text": f"t{i}"} for i in range(20)] + [("pos",), ("p2", "!")], backend=be)
    assert [st["label"] for st in states] == [f"t{i}" for i in range(20)] + ["pos", "p2"]
    assert be.calls[0] == ("cache", header + "|", {})  # the constant prefix, cached once
    with pytest.raises(TypeError, match="positional"):
        classify.run_batch([("a", "b", "c")], backend=be)
    with pytest.raises(TypeError, match="no argument"):
        classify.run_batch([{"txt": "a"}], backend=be)
    gen_style = classify.run_batch([{"text": "g1"}, {"text": "g2"}], backend=be, generator_style=True)
    assert [st["label"] for st in gen_style] == ["g1", "g2"]


def test_run_batch_keeps_going_when_one_program_fails():
    @rl.function
    def prog(s, i):
        s += f"item {i}:" + rl.gen("out")
        if i == 1:
            raise ZeroDivisionError("program 1 divided by zero")

    states = prog.run_batch([{"i": 0}, {"i": 1}, {"i": 2}], backend=FakeBackend(fail_on="item 2"))
    assert states[0].error() is None and states[0]["out"].startswith("<")
    assert isinstance(states[1].error(), ZeroDivisionError) and states[1]["out"].startswith("<")
    assert isinstance(states[2].error(), ConnectionError)
    with pytest.raises(ProgramError, match="backend exploded"):
        states[2]["out"]


def test_trace_stops_at_the_first_non_constant():
    be = FakeBackend(template="chatml")

    @rl.function
    def prog(s, question):
        s += rl.system("Fixed system prompt.")
        s += rl.user("Context: " + question)
        s += rl.assistant(rl.gen("a"))

    assert prog.trace(backend=be) == (
        "<|im_start|>system\nFixed system prompt.<|im_end|>\n<|im_start|>user\nContext: "
    )
    bound = prog.bind(question="known")
    assert bound.trace(backend=be).endswith("Context: known<|im_end|>\n<|im_start|>assistant\n")


class LockstepBackend(FakeBackend):
    """Streams one character at a time, each only after the reader took the previous chunk
    (`taken` released once per chunk read), so what the reader sees does not depend on timing."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.taken = threading.Semaphore(0)

    def generate_stream(self, prompt, sampling_params, **kw):
        text, meta = self.generate(prompt, sampling_params, **kw)
        for ch in text:
            assert self.taken.acquire(timeout=30), "the reader stopped reading"
            yield ch, meta


def test_streaming_text_iter_concatenates_to_the_final_text():
    be = FakeBackend(script=lambda p, _: "streamed words")

    @rl.function
    def prog(s):
        s += "Say: " + rl.gen("x")

    lockstep = LockstepBackend(script=lambda p, _: "streamed words")
    st = prog.run(backend=lockstep, stream=True)
    chunks = []
    for chunk in st.text_iter():
        chunks.append(chunk)
        lockstep.taken.release()
    assert chunks == ["Say: ", *"streamed words"]  # each piece as it was appended
    assert "".join(chunks) == st.text() == "Say: streamed words"
    st2 = prog.run(backend=be, stream=True)
    assert "".join(st2.text_iter("x")) == "streamed words"

    async def collect():
        st3 = prog.run(backend=be, stream=True)
        return "".join([c async for c in st3.text_async_iter("x")])

    assert asyncio.run(collect()) == "streamed words"
    st4 = prog.run(backend=be)  # not streaming: yields once
    assert list(st4.text_iter()) == ["Say: streamed words"]


def test_no_backend_is_a_clear_error():
    rl.set_default_backend(None)
    with pytest.raises(ValueError, match="backend"):
        rl.function(lambda s: None).run()


def test_state_methods_for_roles_copy_and_set_var():
    be = FakeBackend(template="chatml")

    @rl.function
    def prog(s):
        s += s.user("Hi")  # SGLang style: s.user(x) already appends, so += adds nothing more
        s.set_var("topic", "trees")
        with s.copy() as c:
            c += rl.assistant(rl.gen("draft"))
        s += rl.assistant("final " + s["topic"])

    st = prog.run(backend=be)
    assert st.text() == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nfinal trees<|im_end|>\n"
    assert st["draft"] == ["<1>"]  # the copy is a one-child fork, gathered on exit
    assert st["topic"] == "trees" and "topic" in st


def test_use_thread_false_runs_each_append_in_the_callers_thread():
    be = FakeBackend()
    threads = []
    be.script = lambda p, _: threads.append(threading.current_thread()) or "ok"

    @rl.function
    def prog(s):
        s += "a" + rl.gen("x")
        assert s.stream_executor.variables["x"] == "ok"  # already done: no queue

    st = prog.run(backend=be, use_thread=False)
    assert st.error() is None and threads == [threading.current_thread()]
    with pytest.raises(ValueError, match="use_thread"):
        prog.run(backend=be, use_thread=False, stream=True)


def test_unsupported_gen_options_fail_at_the_call_site():
    with pytest.raises(ValueError, match="stop_regex"):
        rl.gen("x", stop_regex=r"\d")
    with pytest.raises(TypeError, match="unknown @function option"):
        rl.function(speculate=64)
    with pytest.warns(UserWarning, match="num_api_spec_tokens"):  # SGLang programs still load
        prog = rl.function(num_api_spec_tokens=64)(lambda s: s.__iadd__("x" + rl.gen("y")))
    assert prog.run(backend=FakeBackend())["y"] == "<1>"


def test_global_config_default_backend_and_precache_switch():
    be = FakeBackend()
    rl.global_config.default_backend = be
    try:
        assert rl.get_default_backend() is be

        @rl.function
        def prog(s, q):
            s += "A long constant header that is worth caching once per batch. " * 2 + q + rl.gen("a")

        prog.run_batch([{"q": "1"}, {"q": "2"}])
        assert sum(kind == "cache" for kind, _, _ in be.calls) == 1
        rl.global_config.enable_precache_with_tracing = False
        prog.run_batch([{"q": "1"}, {"q": "2"}])
        assert sum(kind == "cache" for kind, _, _ in be.calls) == 1
    finally:
        rl.global_config.enable_precache_with_tracing = True
        rl.set_default_backend(None)


def test_async_iter_with_meta_data_and_a_failing_stream():
    be = FakeBackend(script=lambda p, _: "abc")

    @rl.function
    def prog(s):
        s += "Say: " + rl.gen("x")

    async def collect():
        st = prog.run(backend=be, stream=True)
        return [item async for item in st.text_async_iter("x", return_meta_data=True)]

    items = asyncio.run(collect())
    assert "".join(c for c, _ in items) == "abc"
    assert all(meta["prompt"] == "Say: " for _, meta in items)

    bad = FakeBackend(fail_on="Say")
    st = prog.run(backend=bad, stream=True)
    with pytest.raises(ProgramError, match="backend exploded"):
        list(st.text_iter("x"))


def test_an_exception_in_a_streamed_program_body_reaches_error():
    @rl.function
    def prog(s):
        s += "hi" + rl.gen("a", max_tokens=3)
        raise ValueError("boom")

    st = prog.run(backend=FakeBackend(), stream=True)
    assert "".join(st.text_iter()) == "hi<1>"
    assert isinstance(st.error(), ValueError) and st["a"] == "<1>"
    with pytest.raises(ValueError, match="boom"):
        prog.run(backend=FakeBackend())
