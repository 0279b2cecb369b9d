"""The OpenAI backend (`rl.OpenAI`) running programs against our own server (`radixlm serve`) through
the official `openai` client, with one shared server (it also serves the ZeroMQ endpoint, so the
runtime backend's select runs on the very same model for comparison):

* completion models: greedy gen equals the Engine's; roles built with the chat template; stop; n > 1;
  streaming; select agrees with `rl.RuntimeEndpoint`'s select, decision and scores, for each method;
* chat models: the conversation (system/user/assistant, multi-turn, forks) goes to chat.completions and
  equals the Engine on the model's chat template; stop, n, streaming;
* errors, each naming its cause: gen not opening an assistant turn, select on a chat model or on a server
  refusing echo, a bad api key, and the server's own 400s;
* sampling-parameter mapping (no server).
"""

from __future__ import annotations

import re

import httpx
import openai
import pytest
from helpers import get_engine
from server_process import ServerProcess

import radixlm as rl
from radixlm.lang.backend.base import BaseBackend
from radixlm.lang.backend.openai import guess_is_chat_model
from radixlm.lang.interpreter import ProgramError
from radixlm.testing import build_tiny_model

API_KEY = "lang-openai-key"
MODEL = "tiny"
PROMPT = "The history of Python began"


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def server():
    srv = ServerProcess(str(build_tiny_model("llama")), ["--api-key", API_KEY]).start()
    try:
        yield srv
    finally:
        srv.stop()


def backend(server, **kw) -> rl.OpenAI:
    return rl.OpenAI(
        MODEL,
        base_url=f"{server.url}/v1",
        api_key=kw.pop("api_key", API_KEY),
        max_retries=0,
        timeout=60,
        **kw,
    )


@pytest.fixture(scope="module")
def cmpl(server):
    be = backend(server, is_chat_model=False)
    yield be
    be.shutdown()


@pytest.fixture(scope="module")
def chat(server):
    be = backend(server, is_chat_model=True)
    yield be
    be.shutdown()


@pytest.fixture(scope="module")
def runtime(server):
    endpoint = rl.RuntimeEndpoint(f"tcp://127.0.0.1:{server.zmq_port}")
    yield endpoint
    endpoint.shutdown()


@pytest.fixture
def ref():
    return get_engine("llama")


def greedy(engine, prompt=None, n=12, input_ids=None, **extra) -> dict:
    return engine.generate(prompt, {"max_new_tokens": n, "temperature": 0, **extra}, input_ids=input_ids)


def chat_ids(engine, messages: list[dict]) -> list[int]:
    text = engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return engine.tokenizer(text, add_special_tokens=False).input_ids


# ---------------------------------------------------------------------------------------- programs
@rl.function
def continue_text(s, prompt, **gen_kw):
    s += prompt
    s += rl.gen("answer", **gen_kw)


@rl.function
def conversation(s, question, follow_up=None, max_tokens=8):
    s += rl.system("You are terse.")
    s += rl.user(question)
    s += rl.assistant(rl.gen("answer", max_tokens=max_tokens))
    if follow_up:
        s += rl.user(follow_up)
        s += rl.assistant(rl.gen("answer2", max_tokens=max_tokens))


# ======================================================================================== completion models
def test_completion_gen_equals_the_engines_greedy_output(cmpl, ref):
    want = greedy(ref, PROMPT, 12)
    st = continue_text.run(PROMPT, max_tokens=12, backend=cmpl, temperature=0)
    assert st["answer"] == want["text"]
    assert st.text() == PROMPT + want["text"]
    meta = st.get_meta_info("answer")
    assert meta["prompt_tokens"] == want["meta_info"]["prompt_tokens"]
    assert meta["completion_tokens"] == len(want["output_ids"])
    assert meta["finish_reason"]["type"] == want["meta_info"]["finish_reason"]["type"]
    # output logprobs come back as (logprob, None, token text)
    st = continue_text.run(
        PROMPT, max_tokens=4, return_logprob=True, top_logprobs_num=2, backend=cmpl, temperature=0
    )
    entries = st.get_meta_info("answer")["output_token_logprobs"]
    assert len(entries) == 4 and "".join(tok for _, _, tok in entries) == st["answer"]
    assert all(lp <= 0 and tid is None for lp, tid, _ in entries)
    assert all(len(top) == 2 for top in st.get_meta_info("answer")["output_top_logprobs"])


def test_completion_model_builds_roles_with_its_chat_template(server, ref):
    be = backend(server, is_chat_model=False, chat_template="chatml")
    st = conversation.run("Name three colours.", max_tokens=8, backend=be, temperature=0)
    prompt = (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nName three colours.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert st.text().startswith(prompt)
    # the template's stop string (<|im_end|>) goes with every gen
    assert st["answer"] == greedy(ref, prompt, 8, stop=["<|im_end|>"])["text"]
    be.shutdown()


def test_completion_stop_strings_n_and_streaming(cmpl, ref):
    full = greedy(ref, PROMPT, 16, ignore_eos=True)["text"]
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), f"choose another stop: {full!r}"
    st = continue_text.run(PROMPT, max_tokens=16, stop=stop, ignore_eos=True, backend=cmpl, temperature=0)
    assert st["answer"] == full[: full.find(stop)]
    assert st.get_meta_info("answer")["finish_reason"]["type"] == "stop"
    # n > 1: a list of n completions, the first appended to the text
    want = greedy(ref, PROMPT, 6)["text"]
    st = continue_text.run(PROMPT, max_tokens=6, n=2, backend=cmpl, temperature=0)
    assert st["answer"] == [want, want] and st.text() == PROMPT + want
    assert isinstance(st.get_meta_info("answer"), list) and len(st.get_meta_info("answer")) == 2
    # streaming: the pieces concatenate to the same text
    st = continue_text.run(PROMPT, max_tokens=12, backend=cmpl, stream=True, temperature=0)
    pieces = list(st.text_iter())
    assert len(pieces) >= 3 and "".join(pieces) == PROMPT + greedy(ref, PROMPT, 12)["text"]
    assert st.get_meta_info("answer")["completion_tokens"] == 12


CASES = [
    # prompt ending in a space: each choice's first token merges with it (" yes"), as in the runtime backend
    ("Q: Is the sky blue?\nA: ", ["yes", "no", "maybe so"]),
    ("The capital of France is", [" Paris", " London", " Antidisestablishmentarianism"]),
]


@pytest.mark.parametrize(
    "method",
    [rl.token_length_normalized, rl.greedy_token_selection, rl.unconditional_likelihood_normalized],
    ids=["token_length", "greedy", "unconditional"],
)
def test_select_agrees_with_the_runtime_backend(cmpl, runtime, method):
    @rl.function
    def pick(s, prompt, choices):
        s += prompt + rl.select("pick", choices=choices, choices_method=method)

    for prompt, choices in CASES:
        got = pick.run(prompt, choices, backend=cmpl)
        want = pick.run(prompt, choices, backend=runtime)
        assert got["pick"] == want["pick"], (prompt, choices)
        assert got.text() == want.text() == prompt + want["pick"]
        g, w = got.get_meta_info("pick"), want.get_meta_info("pick")
        assert g["normalized_prompt_logprobs"] == pytest.approx(w["normalized_prompt_logprobs"], abs=1e-4)
        # the same tokens scored: one entry per runtime token, with the same logprob
        for mine, theirs in zip(g["input_token_logprobs"], w["input_token_logprobs"]):
            assert len(mine) == len(theirs)
            assert [e[0] for e in mine] == pytest.approx([e[0] for e in theirs], abs=1e-4)
            assert [e[2] for e in mine] == [runtime.tokenizer.decode([e[1]]) for e in theirs]
        if method is rl.unconditional_likelihood_normalized:
            assert g["normalized_unconditional_prompt_logprobs"] == pytest.approx(
                w["normalized_unconditional_prompt_logprobs"], abs=1e-4
            )
        if method is rl.greedy_token_selection:
            for mine, theirs in zip(g["greedy_logprob_matrix"], w["greedy_logprob_matrix"]):
                assert mine == pytest.approx(theirs, abs=1e-4)


# ======================================================================================== chat models
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three colours."},
]


def test_chat_program_sends_the_conversation(chat, ref):
    st = conversation.run(
        "Name three colours.", "And three animals?", max_tokens=8, backend=chat, temperature=0
    )
    assert st.error() is None
    want = greedy(ref, input_ids=chat_ids(ref, MESSAGES), n=8)["text"]
    assert st["answer"] == want
    # the second turn sees the first answer (as the program recorded it)
    history = st.messages()[:-1]
    assert [m["role"] for m in history] == ["system", "user", "assistant", "user"]
    assert st["answer2"] == greedy(ref, input_ids=chat_ids(ref, history), n=8)["text"]
    assert st.messages()[-1] == {"role": "assistant", "content": st["answer2"].lstrip()}
    # the state's text is the chat template's rendering (the default one: "ASSISTANT:" ...)
    assert st.text().startswith("SYSTEM:You are terse.\nUSER:Name three colours.\nASSISTANT:")


def test_chat_stop_n_streaming_and_forks(chat, ref):
    ids = chat_ids(ref, MESSAGES)
    full = greedy(ref, input_ids=ids, n=16, ignore_eos=True)["text"]
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), f"choose another stop: {full!r}"

    @rl.function
    def ask(s, **kw):
        s += rl.system("You are terse.")
        s += rl.user("Name three colours.")
        s += rl.assistant(rl.gen("answer", **kw))

    st = ask.run(max_tokens=16, stop=[stop], ignore_eos=True, backend=chat, temperature=0)
    assert st["answer"] == full[: full.find(stop)]
    want = greedy(ref, input_ids=ids, n=6)["text"]
    st = ask.run(max_tokens=6, n=2, backend=chat, temperature=0)
    assert st["answer"] == [want, want]
    st = ask.run(max_tokens=6, backend=chat, stream=True, temperature=0)
    assert "".join(st.text_iter("answer")) == want
    assert st.get_meta_info("answer")["completion_tokens"] == len(
        greedy(ref, input_ids=ids, n=6)["output_ids"]
    )

    @rl.function
    def branches(s):
        s += rl.system("You are terse.")
        s += rl.user("Name three colours.")
        forks = s.fork(2)
        forks += rl.assistant(rl.gen("answer", max_tokens=6))
        forks.join()

    st = branches.run(backend=chat, temperature=0)
    assert st["answer"] == [want, want]


# ======================================================================================== errors
def test_chat_gen_must_open_an_assistant_turn(chat):
    @rl.function
    def prefilled(s):
        s += rl.user("Hi")
        s += rl.assistant("Sure: " + rl.gen("a", max_tokens=4))

    @rl.function
    def in_user_turn(s):
        s += rl.user("Hi " + rl.gen("a", max_tokens=4))

    @rl.function
    def outside_roles(s):
        s += rl.user("Hi")
        s += "Answer: " + rl.gen("a", max_tokens=4)

    for prog, where in (
        (prefilled, "after the text 'Sure: '"),
        (in_user_turn, "not at the start"),
        (outside_roles, "not at the start"),
    ):
        st = prog.run(backend=chat)
        err = st.error()
        assert isinstance(err, RuntimeError), (prog, err)
        assert where in str(err) and "right after assistant begins" in str(err)
        with pytest.raises(ProgramError, match="right after assistant"):
            st["a"]


def test_select_on_a_chat_model_says_it_needs_a_completion_model(chat):
    @rl.function
    def pick(s):
        s += rl.user("Yes or no?")
        s += rl.assistant(rl.select("a", choices=["yes", "no"]))

    err = pick.run(backend=chat).error()
    assert isinstance(err, NotImplementedError)
    assert "completion model" in str(err) and "is_chat_model=False" in str(err)


def test_select_on_a_server_refusing_echo_says_why(server, monkeypatch):
    be = backend(server, is_chat_model=False)

    def refuse(**kw):
        request = httpx.Request("POST", f"{server.url}/v1/completions")
        raise openai.BadRequestError(
            "echo is not supported", response=httpx.Response(400, request=request), body=None
        )

    monkeypatch.setattr(be.client.completions, "create", refuse)
    with pytest.raises(NotImplementedError, match="echo=True with logprobs.*echo is not supported"):
        be.select("Q: ", ["a", "b"], 0.0, rl.token_length_normalized)
    be.shutdown()


def test_server_errors_propagate_with_the_servers_message(server, cmpl):
    bad = backend(server, api_key="wrong-key", is_chat_model=False)
    st = continue_text.run(PROMPT, max_tokens=2, backend=bad)
    assert isinstance(st.error(), openai.AuthenticationError) and "api key" in str(st.error()).lower()
    bad.shutdown()
    # a parameter the server refuses (sent through extra_body): its 400 names the parameter
    st = continue_text.run(PROMPT, max_tokens=2, top_k=0, backend=cmpl)
    assert isinstance(st.error(), openai.BadRequestError) and "top_k" in str(st.error())
    st = continue_text.run(PROMPT, max_tokens=2, top_k=0, backend=cmpl, stream=True)
    assert list(st.text_iter()) == [PROMPT]
    assert isinstance(st.error(), openai.BadRequestError)


# ======================================================================================== no server
def test_sampling_parameters_map_to_openai_names():
    be = rl.OpenAI("some-model", base_url="http://127.0.0.1:9/v1", is_chat_model=False)
    defaults = {
        "max_new_tokens": 128,
        "min_new_tokens": 0,
        "n": 1,
        "stop": None,
        "stop_token_ids": None,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": -1,
        "min_p": 0.0,
        "frequency_penalty": 0.0,
        "presence_penalty": 0.0,
        "repetition_penalty": 1.0,
        "ignore_eos": False,
    }
    assert be._kwargs(defaults, False, None, 0) == {
        "max_tokens": 128,
        "n": 1,
        "temperature": 1.0,
        "top_p": 1.0,
        "frequency_penalty": 0.0,
        "presence_penalty": 0.0,
    }  # no extra_body when every extension is at its default
    kw = be._kwargs(
        {
            **defaults,
            "stop": "x",
            "top_k": 5,
            "min_p": 0.1,
            "repetition_penalty": 1.2,
            "min_new_tokens": 2,
            "ignore_eos": True,
            "stop_token_ids": [7],
            "regex": "a+",
            "seed": 3,
            "json_schema": '{"type": "object"}',
        },
        True,
        None,
        2,
    )
    assert kw["stop"] == ["x"] and kw["seed"] == 3 and kw["logprobs"] == 2
    assert kw["extra_body"] == {
        "top_k": 5,
        "min_p": 0.1,
        "repetition_penalty": 1.2,
        "min_tokens": 2,
        "ignore_eos": True,
        "stop_token_ids": [7],
        "regex": "a+",
        "json_schema": '{"type": "object"}',
    }
    with pytest.raises(NotImplementedError, match="logprob_start_len"):
        be._kwargs(defaults, True, 0, 0)

    chat = rl.OpenAI("some-model", base_url="http://127.0.0.1:9/v1", is_chat_model=True)
    kw = chat._kwargs({**defaults, "json_schema": {"type": "object"}}, True, None, 3)
    assert kw["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": {"type": "object"}},
    }
    assert kw["logprobs"] is True and kw["top_logprobs"] == 3 and "extra_body" not in kw
    o1 = rl.OpenAI("o1-mini", base_url="http://127.0.0.1:9/v1")
    assert "max_completion_tokens" in o1._kwargs(defaults, False, None, 0)
    assert guess_is_chat_model("gpt-4o") and not guess_is_chat_model("gpt-3.5-turbo-instruct")
    assert o1.is_chat_model and o1.takes_messages and not be.takes_messages


def test_a_chat_backend_gets_the_conversation_with_the_open_turn():
    seen = []

    class Recorder(BaseBackend):
        takes_messages = True

        def generate(
            self,
            prompt,
            sampling_params,
            return_logprob=False,
            logprob_start_len=None,
            top_logprobs_num=0,
            messages=None,
        ):
            seen.append(messages)
            return "ok", {}

    @rl.function
    def prog(s):
        s += rl.system("sys")
        s += rl.user("hello " + rl.gen("a"))
        s += rl.assistant(rl.gen("b"))

    assert prog.run(backend=Recorder()).error() is None
    assert seen == [
        [{"role": "system", "content": "sys"}, {"role": "user", "content": "hello "}],
        [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "hello ok"},
            {"role": "assistant", "content": ""},
        ],
    ]


# ================================================================================== RuntimeEndpoint over HTTP
@pytest.fixture(scope="module")
def http_runtime(server):
    endpoint = rl.RuntimeEndpoint(server.url, api_key=API_KEY)  # SGLang style: the HTTP address
    yield endpoint
    endpoint.shutdown()


def test_runtime_endpoint_over_http_equals_the_zeromq_one(http_runtime, runtime, ref):
    st = continue_text.run(PROMPT, max_tokens=8, backend=http_runtime, temperature=0)
    assert st["answer"] == greedy(ref, PROMPT, 8)["text"]
    assert st.get_meta_info("answer")["prompt_tokens"] > 0

    @rl.function
    def ask(s):
        s += "Question: is the sky blue?\nAnswer:" + rl.select("a", choices=[" yes", " no", " maybe so"])

    over_http, over_zmq = ask.run(backend=http_runtime), ask.run(backend=runtime)
    assert over_http["a"] == over_zmq["a"]
    assert over_http.get_meta_info("a")["normalized_prompt_logprobs"] == pytest.approx(
        over_zmq.get_meta_info("a")["normalized_prompt_logprobs"], abs=1e-6
    )

    st = continue_text.run(PROMPT, max_tokens=8, backend=http_runtime, temperature=0, stream=True)
    chunks = list(st.text_iter("answer"))
    assert len(chunks) > 1 and "".join(chunks) == greedy(ref, PROMPT, 8)["text"]

    st = continue_text.run(PROMPT, max_tokens=4, n=3, backend=http_runtime, temperature=1.0)
    assert len(st["answer"]) == 3

    st = continue_text.run(PROMPT, max_tokens=4, top_k=0, backend=http_runtime)
    with pytest.raises(ProgramError, match="top_k"):
        st["answer"]


def test_runtime_endpoint_over_http_names_connection_and_auth_problems(server):
    with pytest.raises(RuntimeError, match="401"):
        rl.RuntimeEndpoint(server.url, api_key="wrong")
    with pytest.raises(ConnectionError, match="cannot reach"):
        rl.RuntimeEndpoint("http://127.0.0.1:9")
    with pytest.raises(ValueError, match="http://"):
        rl.RuntimeEndpoint("localhost:30000")


def test_native_generate_takes_per_prompt_options(server):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    body = {
        "text": ["a b c", "d e f g"],
        "sampling_params": [{"max_new_tokens": 0}, {"max_new_tokens": 2}],
        "return_logprob": [True, False],
        "logprob_start_len": [1, None],
        "top_logprobs_num": 0,
    }
    r = httpx.post(f"{server.url}/generate", json=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    first, second = r.json()
    assert first["output_ids"] == [] and len(first["meta_info"]["input_token_logprobs"]) >= 1
    assert len(second["output_ids"]) == 2 and "input_token_logprobs" not in second["meta_info"]
    r = httpx.post(
        f"{server.url}/generate", json={**body, "return_logprob": [True]}, headers=headers, timeout=60
    )
    assert r.status_code == 400 and "return_logprob is a list of 1 but there are 2 prompts" in r.text


# ======================================================================================== constrained output
SHAPE = {
    "type": "object",
    "properties": {"shape": {"enum": ["circle", "square"]}, "label": {"type": "string", "maxLength": 8}},
    "required": ["shape", "label"],
}


def test_response_format_json_schema_through_the_openai_client_and_the_backend(server, chat, cmpl):
    import json

    import jsonschema

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "A shape, as JSON."}],
        max_tokens=64,
        temperature=1.0,
        seed=3,
        response_format={"type": "json_schema", "json_schema": {"name": "shape", "schema": SHAPE}},
    )
    jsonschema.validate(json.loads(r.choices[0].message.content), SHAPE)
    assert r.choices[0].finish_reason == "stop"
    r = client.completions.create(
        model=MODEL, prompt="Code:", max_tokens=16, extra_body={"regex": "[A-Z]{3}-[0-9]{2}"}
    )
    assert re.fullmatch("[A-Z]{3}-[0-9]{2}", r.choices[0].text)
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "JSON please"}],
        max_tokens=48,
        response_format={"type": "json_object"},
        temperature=0,
    )
    assert r.choices[0].message.content.startswith("{")
    with pytest.raises(openai.BadRequestError, match="unsupported json_schema feature"):
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "n"}],
            max_tokens=8,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "n", "schema": {"type": "array", "uniqueItems": True}},
            },
        )

    @rl.function
    def shape(s):
        s += rl.user("Describe a shape.")
        s += rl.assistant(rl.gen("json", json_schema=SHAPE, max_tokens=64))

    for backend in (chat,):
        st = shape.run(backend=backend, temperature=0.7)
        jsonschema.validate(json.loads(st["json"]), SHAPE)

    @rl.function
    def code(s):
        s += "Code: " + rl.gen("code", regex="[A-Z]{3}-[0-9]{2}", max_tokens=16)

    assert re.fullmatch("[A-Z]{3}-[0-9]{2}", code.run(backend=cmpl)["code"])
