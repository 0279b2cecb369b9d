"""Reasoning on /v1/chat/completions (`--reasoning-parser`), through the official `openai`
client against a real `radixlm serve` on a tiny random thinking model (tests/thinking_model.py:
its weights write `</think>` often, so random outputs do end their reasoning, at a step fixed
by the seed). Checked: reasoning_content apart from content, exactly as the parser splits the
raw output; streamed deltas that join to the whole message; chat_template_kwargs reaching the
template (enable_thinking=false closes the block in the prompt: no reasoning); a json_schema
or a forced tool call that applies only after the reasoning and always validates; requests
refused by name; a server without a parser ignoring the reasoning fields; an unknown parser
refused at startup."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest
from server_process import ServerProcess
from thinking_model import build_thinking_model

from radixlm.runtime.entrypoints import cli
from radixlm.runtime.entrypoints.reasoning_serving import ReasoningPlan, chat_message
from radixlm.runtime.entrypoints.tool_serving import ToolPlan
from radixlm.runtime.function_call import ToolChoice, get_reasoning_parser

QWEN3 = get_reasoning_parser("qwen3")
QUESTION = [{"role": "user", "content": "Is the sky blue? Think first."}]
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
    "required": ["answer", "sure"],
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": SCHEMA}}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"enum": ["Paris", "Oslo"]}},
            "required": ["city"],
        },
    },
}
SEEDS = range(4)
NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}
MODEL_CHOOSES = {"chat_template_kwargs": {"open_think": False}}  # no <think> in the prompt


def _client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return str(build_thinking_model(tmp_path_factory.mktemp("thinking") / "model"))


@pytest.fixture(scope="module")
def thinking(model_path):
    srv = ServerProcess(model_path, ["--reasoning-parser", "qwen3"]).start()
    try:
        yield _client(srv)
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def plain(model_path):
    srv = ServerProcess(model_path).start()
    try:
        yield _client(srv)
    finally:
        srv.stop()


def ask(client, seed: int, **kw):
    args = {"model": "m", "messages": QUESTION, "temperature": 1.0, "seed": seed, "max_tokens": 40}
    return client.chat.completions.create(**{**args, **kw})


def together(fn, items) -> list:
    """fn over items, all sent at once (the server batches them; outputs depend only on seeds)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(fn, items))


def reassemble(chunks) -> tuple[str | None, str, list[dict], str | None]:
    """A streamed choice's reasoning, content, tool calls and finish reason; reasoning must
    all come before any content."""
    reasoning, content, calls, finish = "", "", {}, None
    for chunk in chunks:
        for choice in chunk.choices:
            delta = choice.delta
            piece = getattr(delta, "reasoning_content", None)
            if piece:
                assert not content and not calls, "reasoning after content"
                reasoning += piece
            content += delta.content or ""
            for call in delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
                entry["name"] += call.function.name or ""
                entry["arguments"] += call.function.arguments or ""
            finish = choice.finish_reason or finish
    return reasoning or None, content, [calls[i] for i in sorted(calls)], finish


# ------------------------------------------------------------------------------ reading the output
def test_reasoning_content_is_the_parsers_split_of_the_raw_output(thinking):
    messages = together(lambda seed: ask(thinking, seed).choices[0].message, SEEDS)
    raws = together(lambda seed: ask(thinking, seed, extra_body={"separate_reasoning": False}), SEEDS)
    reasoned = 0
    for message, raw in zip(messages, raws):
        raw = raw.choices[0].message
        assert getattr(raw, "reasoning_content", None) is None
        # the prompt opened the block, so the raw output starts inside the reasoning
        assert (message.reasoning_content, message.content) == QWEN3.parse(raw.content, prompt_open=True)
        reasoned += message.reasoning_content is not None and "</think>" in raw.content
    assert reasoned >= 2, "the thinking model should end its reasoning for most seeds"


@pytest.mark.parametrize("extra", [{}, NO_THINKING, MODEL_CHOOSES], ids=["open", "closed", "model-chooses"])
def test_streamed_deltas_join_to_the_whole_message(thinking, extra):
    wholes = together(lambda seed: ask(thinking, seed, extra_body=extra).choices[0], SEEDS)
    streams = together(lambda seed: reassemble(ask(thinking, seed, stream=True, extra_body=extra)), SEEDS)
    for whole, (reasoning, content, calls, finish) in zip(wholes, streams):
        message, whole_finish = whole.message, whole.finish_reason
        assert (reasoning, content, finish) == (message.reasoning_content, message.content, whole_finish)
        assert not calls


def test_chat_template_kwargs_reach_the_template(thinking):
    raw_off = {**NO_THINKING, "separate_reasoning": False}
    for seed in SEEDS[:2]:
        on, off, raw, chooses = together(
            lambda extra, seed=seed: ask(thinking, seed, extra_body=extra),
            [{}, NO_THINKING, raw_off, MODEL_CHOOSES],
        )
        # "<think>\n\n</think>\n\n" instead of "<think>\n": a longer prompt, and reasoning closed
        assert off.usage.prompt_tokens > on.usage.prompt_tokens
        assert off.choices[0].message.reasoning_content is None
        assert off.choices[0].message.content == raw.choices[0].message.content  # all of it content
        # with no block in the prompt qwen3 reasons only if the output opens one
        chooses = chooses.choices[0].message
        assert not chooses.content.lstrip().startswith("<think>") and chooses.reasoning_content is None


# ------------------------------------------------------------------------------ constraints after reasoning
@pytest.mark.parametrize("stream", [False, True])
def test_a_json_schema_applies_only_after_the_reasoning(thinking, stream):
    kw = {"response_format": FORMAT, "max_tokens": 120}

    def run(seed):
        if stream:
            reasoning, content, _, finish = reassemble(ask(thinking, seed, stream=True, **kw))
            return reasoning, content, finish
        choice = ask(thinking, seed, **kw).choices[0]
        return choice.message.reasoning_content, choice.message.content, choice.finish_reason

    reasoned = 0
    for reasoning, content, finish in together(run, SEEDS):
        assert finish == "stop", f"{reasoning!r} {content!r}"
        jsonschema.validate(json.loads(content), SCHEMA)
        # the reasoning was free: the random model wrote text no JSON grammar would allow
        reasoned += reasoning is not None and not reasoning.lstrip().startswith("{")
    assert reasoned >= 2


def test_a_json_schema_applies_from_the_first_token_when_the_prompt_closed_the_reasoning(thinking):
    kw = {"response_format": FORMAT, "max_tokens": 120, "extra_body": NO_THINKING}
    for choice in together(lambda seed: ask(thinking, seed, **kw).choices[0], SEEDS):
        assert choice.message.reasoning_content is None and choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)


def test_a_json_schema_when_the_model_chooses_whether_to_think(thinking):
    """No block in the prompt: the first token may open one (then the schema waits for its
    end), or else the schema applies from that first token."""
    kw = {"response_format": FORMAT, "max_tokens": 120}
    raw_kw = {**kw, "extra_body": {**MODEL_CHOOSES, "separate_reasoning": False}}
    choices = together(lambda seed: ask(thinking, seed, extra_body=MODEL_CHOOSES, **kw).choices[0], range(8))
    raws = together(lambda seed: ask(thinking, seed, **raw_kw).choices[0].message.content, range(8))
    opened = []
    for choice, raw_text in zip(choices, raws):
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)
        assert (choice.message.reasoning_content, choice.message.content) == QWEN3.parse(raw_text)
        opened.append(raw_text.startswith("<think>"))
        if not opened[-1]:
            jsonschema.validate(json.loads(raw_text), SCHEMA)  # constrained from the first token
    assert any(opened) and not all(opened), opened


@pytest.mark.parametrize("stream", [False, True])
def test_a_forced_tool_call_comes_after_the_reasoning_and_validates(thinking, stream):
    schema = WEATHER["function"]["parameters"]
    kw = {"tools": [WEATHER], "tool_choice": "required", "max_tokens": 120}

    def run(seed):
        if stream:
            _, _, calls, finish = reassemble(ask(thinking, seed, stream=True, **kw))
            return [(c["name"], c["arguments"]) for c in calls], finish
        choice = ask(thinking, seed, **kw).choices[0]
        calls = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
        return calls, choice.finish_reason

    for calls, finish in together(run, SEEDS):
        assert finish == "tool_calls" and calls
        for name, arguments in calls:
            assert name == "get_weather"
            jsonschema.validate(json.loads(arguments), schema)


def test_tool_calls_are_read_from_the_content_after_the_reasoning_only():
    tools = ToolPlan([WEATHER], ToolChoice("auto"), "hermes", {})
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    plan = ReasoningPlan(QWEN3, None, separate=True)
    message, called = chat_message(tools, plan, f"<think>maybe {call}</think>\n\nNo call.")
    assert not called and message == {
        "role": "assistant",
        "content": "No call.",
        "reasoning_content": f"maybe {call}",
    }
    message, called = chat_message(tools, plan, f"<think>Oslo, then.</think>\n\n{call}")
    assert called and message["reasoning_content"] == "Oslo, then."
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}


# ------------------------------------------------------------------------------ refusals and defaults
@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"chat_template_kwargs": "enable_thinking"}, "chat_template_kwargs"),
        ({"chat_template_kwargs": {"tokenize": True}}, "tokenize"),
        ({"separate_reasoning": "sometimes"}, "separate_reasoning"),
    ],
)
def test_bad_reasoning_fields_are_refused_by_name(thinking, extra, named):
    with pytest.raises(openai.BadRequestError) as err:
        ask(thinking, 0, extra_body=extra)
    assert err.value.status_code == 400 and named in str(err.value)


def test_a_server_without_a_reasoning_parser_ignores_the_reasoning_fields(plain):
    message = ask(plain, 0, extra_body={"separate_reasoning": True}).choices[0].message
    assert getattr(message, "reasoning_content", None) is None
    off = ask(plain, 0, extra_body=NO_THINKING)
    assert off.usage.prompt_tokens > ask(plain, 0).usage.prompt_tokens  # the kwargs still reach the template


def test_an_unknown_reasoning_parser_is_refused_at_startup(model_path, capsys):
    args = cli.build_parser().parse_args(["serve", "--model", model_path, "--reasoning-parser", "r2"])
    assert cli.serve(args) == 1
    err = capsys.readouterr().err
    assert "reasoning_parser must be one of deepseek-r1, qwen3, qwen3-thinking, got 'r2'" in err
