"""`state.cache_report()`: per gen/select call, its prompt tokens, the tokens reused from the
radix cache and where its prompt left the cached prefix, on the tiny model through `Runtime`
(ZeroMQ) and through the HTTP routes; the tokenize operation it rests on (ZeroMQ and
`POST /tokenize`), whose ids must be those the server counts. The report's rules on
hand-made records, without a runtime: test_cache_report_rules.py."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request

import httpx
import msgspec
import pytest
import uvicorn
import zmq
from polling import wait_until

import radixlm as rl
from radixlm.client.http_client import HttpRuntimeClient
from radixlm.lang.cache_report import (
    MARK,
    CacheReportRow,
    format_table,
)
from radixlm.runtime.entrypoints.http_server import create_app
from radixlm.runtime.managers import messages as P
from radixlm.testing import build_tiny_model

FEW_SHOT = "".join(
    f"Question: what is {a} plus {b}?\nAnswer: {a + b}\n\n"
    for a, b in [(1, 2), (3, 4), (10, 5), (7, 7), (12, 30), (8, 1), (6, 9), (20, 22)]
)
TEXTS = [
    "Hello world",
    "naïve café ☕ — déjà vu\n\tline two",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    FEW_SHOT,
]


@rl.function
def few_shot(s, question):
    # the question follows a newline, so its first token starts exactly where it does
    s += FEW_SHOT + "Question:\n" + question + "\nAnswer:" + rl.gen("answer", max_tokens=3, temperature=0)


@pytest.fixture(scope="module")
def rt():
    runtime = rl.Runtime(str(build_tiny_model("llama")))
    yield runtime
    runtime.shutdown()


@pytest.fixture(autouse=True)
def _cold_cache(rt):
    """Each test starts on an empty cache, and leaves the KV accounting balanced."""
    assert rt.flush_cache()
    yield
    rt.engine.check_accounting()
    assert rt.flush_cache()


@pytest.fixture(scope="module")
def http_url(rt):
    """The HTTP app over the Runtime's own tokenizer manager, served on its event loop as
    `radixlm serve` does (its lifespan off: the manager is already running)."""
    tm = rt.engine.tokenizer_manager
    metrics = tm.metrics
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        create_app(tm, "tiny"), host="127.0.0.1", port=port, lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    serving = asyncio.run_coroutine_threadsafe(server.serve(), rt.engine._loop)
    wait_until(lambda: server.started or serving.done(), 30, what="the HTTP server to start")
    assert server.started, serving.result()
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    serving.result(30)
    tm.metrics = metrics


def _prompt_of(state, name: str) -> str:
    """The prompt of the state's (only) gen `name`: its text up to the generated value."""
    text = state.text()
    return text[: text.rindex(state[name])] if state[name] else text


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


# ------------------------------------------------------------------------------ programs
def test_a_few_shot_program_run_twice_diverges_exactly_at_the_new_question(rt):
    tok = rt.endpoint.tokenizer
    first = few_shot.run(question="What is the capital of France?", backend=rt)
    (cold,) = first.cache_report(print_table=False)
    prompt1 = _prompt_of(first, "answer")
    assert (cold.call, cold.kind) == ("answer", "gen")
    assert cold.prompt_tokens == len(tok(prompt1).input_ids) == first.get_meta_info("answer")["prompt_tokens"]
    # an empty cache: nothing reused, the prompt diverges at its first character
    assert cold.cached_tokens == 0 and cold.hit_rate == 0.0
    assert cold.diverged_at_char == 0 and cold.context.startswith(MARK + "Question: what is 1")

    second = few_shot.run(question="Name a colour.", backend=rt)
    (warm,) = second.cache_report(print_table=False)
    prompt2 = _prompt_of(second, "answer")
    # the examples came from the cache: every token the two prompts share, and no more
    assert warm.cached_tokens == _common_prefix(tok(prompt1).input_ids, tok(prompt2).input_ids) > 100
    assert warm.hit_rate == pytest.approx(warm.cached_tokens / warm.prompt_tokens)
    assert warm.diverged_at_char == prompt2.index("Name a colour.") == len(FEW_SHOT) + len("Question:\n")
    assert warm.context.endswith("Question:\n" + MARK + "Name a colour.\nAnswer:")

    # the same program and arguments again: all but the last token (always computed) reused
    third = few_shot.run(question="Name a colour.", backend=rt)
    (full,) = third.cache_report(print_table=False)
    assert full.cached_tokens == full.prompt_tokens - 1
    assert full.diverged_at_char is None and full.context == ""


def test_a_changing_date_at_the_top_of_the_system_prompt_diverges_near_the_start(rt):
    @rl.function
    def dated(s, date):
        s += rl.system(f"Today is {date}. You are a helpful assistant who answers briefly.")
        s += rl.user("What day of the week is it?")
        s += rl.assistant(rl.gen("answer", max_tokens=3, temperature=0))

    dated.run(date="2024-05-01", backend=rt).sync()
    state = dated.run(date="2024-06-17", backend=rt)
    (row,) = state.cache_report(print_table=False)
    text = state.text()
    date_at = text.index("2024-06-17")
    # only the chat markup and "Today is 2024-0" are shared: the rest of the prompt is recomputed
    assert date_at <= row.diverged_at_char < date_at + len("2024-06-17") < 40
    assert 0 < row.cached_tokens < row.prompt_tokens / 3
    assert "2024-06-17" in row.context.replace(MARK, "") and row.context.index(MARK) > 0
    assert text[row.diverged_at_char :].startswith(row.context.split(MARK)[1])


def test_select_rows_report_the_shared_prompt(rt):
    prompt = "Question: is the sky blue on a clear day?\nAnswer:"
    choices = [" yes", " no", " it depends on the weather"]

    @rl.function
    def ask(s):
        s += prompt + rl.select("pick", choices=choices)
        s += "\nWhy?" + rl.gen("why", max_tokens=2, temperature=0)

    tok = rt.endpoint.tokenizer
    cold = ask.run(backend=rt)
    pick, why = cold.cache_report(print_table=False)
    assert [(r.call, r.kind) for r in (pick, why)] == [("pick", "select"), ("why", "gen")]
    assert pick.prompt_tokens == len(tok(prompt).input_ids)
    # the fewest any choice found cached: none, on an empty cache (whichever choice the
    # scheduler prefilled first computed the shared prompt)
    assert pick.cached_tokens == 0 and pick.diverged_at_char == 0
    meta = cold.get_meta_info("pick")
    assert (meta["prompt_tokens"], meta["cached_tokens"]) == (pick.prompt_tokens, 0)
    # the gen after it reuses the select's prompt and choice: it diverges after them
    assert why.cached_tokens > pick.prompt_tokens
    assert why.diverged_at_char >= len(prompt)

    (again, _) = ask.run(backend=rt).cache_report(print_table=False)
    assert again.cached_tokens >= again.prompt_tokens - 1
    assert again.diverged_at_char is None and again.context == ""


def test_run_batch_states_each_have_their_own_rows(rt):
    questions = ["One dog?", "Two cats?", "Six owls?"]
    states = few_shot.run_batch([{"question": q} for q in questions], backend=rt)
    reused = 0
    for state, question in zip(states, questions):
        (row,) = state.cache_report(print_table=False)
        prompt = _prompt_of(state, "answer")
        assert row.call == "answer" and row.prompt_tokens == len(rt.endpoint.tokenizer(prompt).input_ids)
        # each diverged at the start of the prompt (it computed the shared examples) or at
        # its own question (it found them in the cache)
        assert row.diverged_at_char in (0, prompt.index(question)), row
        if row.diverged_at_char:
            reused += 1
            assert row.context.split(MARK)[1].startswith(question)
    assert reused >= len(questions) - 1


def test_forks_report_their_own_calls_and_join_hands_them_to_the_parent_once(rt):
    children = []

    @rl.function
    def tree(s):
        s += FEW_SHOT + "Start:" + rl.gen("first", max_tokens=2, temperature=0)
        forks = s.fork(2)
        forks += lambda i: f"Branch {i}:"
        forks += rl.gen("idea", max_tokens=2, temperature=0)
        forks.join()
        forks.join()  # a second join hands nothing over again
        children.extend(forks)
        s += "Done." + rl.gen("end", max_tokens=2, temperature=0)

    state = tree.run(backend=rt)
    rows = state.cache_report(print_table=False)
    assert [(r.label, r.fork) for r in rows] == [
        ("first", ()),
        ("idea (fork 0)", (0,)),
        ("idea (fork 1)", (1,)),
        ("end", ()),
    ]
    # the fork prefilled the parent's text: both children, and the parent after them, found it
    assert all(r.cached_tokens >= len(rt.endpoint.tokenizer(FEW_SHOT).input_ids) - 1 for r in rows[1:])
    for i, child in enumerate(children):  # a child's report: its own call only
        (own,) = child.cache_report(print_table=False)
        assert own == CacheReportRow(**{**rows[1 + i].__dict__, "fork": ()})
        assert child.text()[own.diverged_at_char :].startswith(own.context.split(MARK)[1])


def test_the_printed_table_names_every_call(rt, capsys):
    state = few_shot.run(question="Is water wet?", backend=rt)
    rows = state.cache_report()
    table = capsys.readouterr().out
    lines = table.splitlines()
    assert lines[0].startswith("cache report: 1 call, ") and lines[1].split()[:2] == ["call", "kind"]
    assert lines[2].startswith("answer ") and " gen " in lines[2]
    assert MARK + "Question: what" in lines[2] and len(lines) == 3  # one line per call
    assert table.rstrip("\n") == format_table(rows)
    # a streamed gen is recorded as well, with its final counts
    streamed = few_shot.run(question="Do fish swim?", backend=rt, stream=True)
    assert "".join(streamed.text_iter()) == streamed.text()
    (row,) = streamed.cache_report(print_table=False)
    assert row.call == "answer" and row.cached_tokens > 100
    assert row.diverged_at_char == streamed.text().index("Do fish swim?")


# ------------------------------------------------------------------------------ tokenize
def test_tokenize_over_zeromq_gives_the_ids_the_server_counts(rt):
    client = rt.endpoint.client
    tm = rt.engine.tokenizer_manager
    for text in TEXTS:
        out = client.tokenize(text)
        counted = rt.engine.generate(text, {"max_new_tokens": 0})["meta_info"]["prompt_tokens"]
        assert out["input_ids"] == tm.prepare(text, None, {}).input_ids
        assert len(out["input_ids"]) == counted == len(out["offsets"])
        # the spans cover the text, in order (the tiny tokenizer adds no BOS); the byte tokens
        # of one multi-byte character each carry that character's span
        spans = [span for k, span in enumerate(out["offsets"]) if k == 0 or span != out["offsets"][k - 1]]
        assert "".join(text[s:e] for s, e in spans) == text
    assert client.tokenize("") == {"input_ids": [], "offsets": []}


def test_bad_tokenize_requests_over_zeromq_get_errors_naming_the_problem(rt):
    client = rt.endpoint.client
    with pytest.raises(TypeError, match="text must be a string, got int"):
        client.tokenize(5)
    with pytest.raises(ValueError, match="text is not valid Unicode: lone surrogate"):
        client.tokenize("a\ud800b")
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(rt.endpoint.address)
    dec = P.decoder(P.ClientReply)
    try:
        for frame, error in [
            (
                {"type": "ClientTokenize", "rid": "t1", "text": 5},
                "field 'text' of ClientTokenize must be str",
            ),
            ({"type": "ClientTokenize", "rid": "t2"}, "ClientTokenize is missing required field(s): 'text'"),
        ]:
            sock.send(msgspec.msgpack.encode(frame))
            assert sock.poll(10_000)
            reply = dec.decode(sock.recv())
            assert isinstance(reply, P.ClientResult) and not reply.ok and error in reply.error, reply
    finally:
        sock.close(0)
    assert client.tokenize("still serving")["input_ids"]  # the endpoint carries on


def test_tokenize_over_http_equals_zeromq_and_bad_bodies_get_400(rt, http_url):
    http = HttpRuntimeClient(http_url)
    for text in TEXTS:
        assert http.tokenize(text) == rt.endpoint.client.tokenize(text)
    body = httpx.post(f"{http_url}/tokenize", json={"prompt": TEXTS[1]}).json()
    assert body["count"] == len(body["tokens"]) == len(body["offsets"])
    assert body["tokens"] == rt.engine.tokenizer_manager.prepare(TEXTS[1], None, {}).input_ids
    assert all(isinstance(span, list) and len(span) == 2 for span in body["offsets"])

    bad = [
        ({"text": 5}, "invalid request: text must be a string, got an integer"),
        ({}, "give exactly one of text or prompt"),
        ({"text": "a", "prompt": "b"}, "give exactly one of text or prompt"),
        ({"txt": "a"}, "invalid request: txt is not a known field"),
        ('{"text": "a\\ud800"}', "text is not valid Unicode: lone surrogate"),
        ("{not json", "invalid request: request body is not valid JSON"),
    ]
    for payload, message in bad:
        content = payload if isinstance(payload, str) else json.dumps(payload)
        resp = httpx.post(
            f"{http_url}/tokenize", content=content, headers={"Content-Type": "application/json"}
        )
        assert resp.status_code == 400, (payload, resp.text)
        assert message in resp.json()["error"]["message"], (payload, resp.json())
    with pytest.raises(RuntimeError, match="/tokenize: HTTP 400: text is not valid Unicode"):
        http.tokenize("\udfff")


def test_the_report_over_an_http_endpoint(rt, http_url):
    endpoint = rl.RuntimeEndpoint(http_url)
    try:
        few_shot.run(question="Who wrote Hamlet?", backend=endpoint).sync()
        state = few_shot.run(question="Name a river.", backend=endpoint)
        (row,) = state.cache_report(print_table=False)
        assert row.diverged_at_char == _prompt_of(state, "answer").index("Name a river.")
    finally:
        endpoint.shutdown()
    with urllib.request.urlopen(f"{http_url}/health") as resp:  # the server is unharmed
        assert json.loads(resp.read())["status"] == "ok"
