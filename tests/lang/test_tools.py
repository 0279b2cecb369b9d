"""Tools in the DSL: Python functions described as OpenAI tools (schemas from signatures and
type hints), what is refused and why, the calls a gen reads and the turns a program appends
(on a scripted backend), running calls, forced calls on a random tiny model that always parse
and validate, and calls the trained demo model writes on its own."""

from __future__ import annotations

import enum
import json
import pickle
from typing import Annotated, Literal

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, Field

import radixlm as rl
from radixlm.demo_model import tasks
from radixlm.demo_model.chat_format import tool_response_turn
from radixlm.lang.backend.base import BaseBackend
from radixlm.lang.chat_template import chat_template_from_tokenizer, get_chat_template
from radixlm.runtime.function_call.hermes_prompt import tools_system_prompt
from radixlm.runtime.function_call.tool_grammar import tool_call_regex
from radixlm.testing import build_tiny_model


class ScriptedBackend(BaseBackend):
    """Answers every gen with script(prompt); records (prompt, params)."""

    def __init__(self, script, template: str = "chatml", takes_messages: bool = False):
        self.script, self.calls = script, []
        self.chat_template = get_chat_template(template)
        self.takes_messages = takes_messages

    def generate(self, prompt, sampling_params, **kw):
        self.calls.append((prompt, dict(sampling_params)))
        n = sampling_params.get("n", 1)
        text = self.script(prompt)
        return ([text] * n, [{}] * n) if n > 1 else (text, {})

    def generate_stream(self, prompt, sampling_params, **kw):
        text, meta = self.generate(prompt, sampling_params)
        for ch in text:
            yield ch, meta


class JinjaTokenizer:
    """Just enough of a tokenizer for chat_template_from_tokenizer: a Jinja chat template."""

    def __init__(self, template: str):
        self.chat_template, self.eos_token = template, "<|im_end|>"
        self._template = ImmutableSandboxedEnvironment().from_string(template)

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False, tools=None):
        return self._template.render(
            messages=messages, tools=tools, add_generation_prompt=add_generation_prompt
        )


# ---------------------------------------------------------------------------------------- tools
class Unit(enum.Enum):
    CELSIUS = "c"
    FAHRENHEIT = "f"


class Place(BaseModel):
    city: Annotated[str, Field(max_length=8)]
    title: Literal["home", "work"] = "home"  # a property named like the keyword pydantic drops


def forecast(
    place: Place,
    unit: Unit,
    days: Literal[1, 3] = 1,
    note: Annotated[str, Field(max_length=6)] | None = None,
    tags: Annotated[list[Literal["rain", "wind"]], Field(max_length=2)] = [],  # noqa: B006 - never mutated
    detailed: bool = False,
) -> dict:
    """Forecast the weather
    for a place.

    Everything after the first paragraph stays out of the description."""
    return {"city": place.city, "unit": unit.value, "days": days, "note": note, "tags": tags, "d": detailed}


def calculator(expression: Annotated[str, Field(description="for example 12 * 34")]) -> str:
    """Evaluate an arithmetic expression and return the result."""
    a, b = (int(x) for x in expression.split("*"))
    return str(a * b)


def ping() -> str:
    return "pong"


def test_a_function_becomes_the_openai_tool_its_signature_describes():
    # the docstring's first line, the Annotated description, no pydantic titles: exactly the
    # tool the demo model was trained on
    assert rl.tool_spec(calculator) == tasks.CALCULATOR_TOOL
    assert rl.tool_spec(ping)["function"] == {
        "name": "ping",
        "parameters": {"type": "object", "properties": {}},
    }


def test_nested_models_enums_literals_optionals_lists_and_defaults():
    spec = rl.tool_spec(forecast)["function"]
    assert spec["description"] == "Forecast the weather for a place."  # the first paragraph, on one line
    params = spec["parameters"]
    assert list(params) == ["type", "properties", "required", "$defs"]
    assert params["required"] == ["place", "unit"]  # defaults make the rest optional
    props = params["properties"]
    assert list(props) == ["place", "unit", "days", "note", "tags", "detailed"]  # the signature's order
    assert props["place"] == {"$ref": "#/$defs/Place"} and props["unit"] == {"$ref": "#/$defs/Unit"}
    assert props["days"] == {"type": "integer", "default": 1, "enum": [1, 3]}
    assert props["note"] == {"anyOf": [{"type": "string", "maxLength": 6}, {"type": "null"}], "default": None}
    assert props["tags"] == {
        "type": "array",
        "default": [],
        "items": {"type": "string", "enum": ["rain", "wind"]},
        "maxItems": 2,
    }
    assert props["detailed"] == {"type": "boolean", "default": False}
    assert params["$defs"]["Unit"] == {"type": "string", "enum": ["c", "f"]}
    place = params["$defs"]["Place"]
    assert place["required"] == ["city"] and "title" not in place  # pydantic's titles are gone...
    assert place["properties"]["title"] == {"type": "string", "default": "home", "enum": ["home", "work"]}
    # ...and the schema is one the forcing regex can be built from
    assert tool_call_regex([rl.tool_spec(forecast)], "required", "hermes")


# ---------------------------------------------------------------------------------------- refusals
class Opaque:
    """A plain class: pydantic cannot describe it as JSON."""


def test_functions_that_cannot_be_described_are_refused_by_name():
    def star(x: int, *rest: int) -> None: ...

    def stars(**options: str) -> None: ...

    def unhinted(x, y: int) -> None: ...

    def odd(x: int, when: Opaque) -> None: ...

    cases = [
        (star, r"tool 'star': \*rest cannot be described"),
        (stars, r"tool 'stars': \*\*options cannot be described"),
        (unhinted, r"tool 'unhinted': parameter 'x' has no type hint"),
        (odd, r"tool 'odd': parameter 'when' has a type that cannot be described as JSON"),
        (lambda x: x, "needs a name"),
    ]
    for function, message in cases:
        with pytest.raises(ValueError, match=message):
            rl.tool_spec(function)
    with pytest.raises(TypeError, match="Python functions or OpenAI tool dicts"):
        rl.gen("x", tools=calculator)
    with pytest.raises(TypeError, match="a Python function or an OpenAI tool dict"):
        rl.gen("x", tools=[42])


def test_bad_tool_sets_and_tool_choices_are_refused_where_the_gen_is_written():
    def twin() -> None: ...

    other = twin

    def twin() -> None: ...  # the point: a second function of the same name

    with pytest.raises(ValueError, match="'twin' is used by more than one tool"):
        rl.gen("x", tools=[other, twin])
    with pytest.raises(ValueError, match="at least one tool"):
        rl.gen("x", tools=[])
    with pytest.raises(ValueError, match="names function 'search', which is not in tools"):
        rl.gen("x", tools=[calculator], tool_choice="search")
    with pytest.raises(ValueError, match="names function 'ping', which is not in tools"):
        rl.gen("x", tools=[calculator], tool_choice=ping)
    with pytest.raises(ValueError, match="need tools"):
        rl.gen("x", tool_choice="required")
    with pytest.raises(ValueError, match="cannot be combined"):
        rl.gen("x", tools=[calculator], regex="[0-9]+")

    def distinct(tags: set[int]) -> None: ...  # uniqueItems: neither grammar backend enforces it

    rl.gen("x", tools=[distinct])  # offered freely: fine
    with pytest.raises(ValueError, match="tool 'distinct': its parameters schema cannot be enforced.*unique"):
        rl.gen("x", tools=[distinct], tool_choice="required")


# ---------------------------------------------------------------------------------------- programs
CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "6 * 7"}}</tool_call>'


def test_a_tool_loop_reads_calls_runs_them_and_appends_results():
    replies = iter(["Let me see. " + CALL, "6 * 7 = 42."])
    be = ScriptedBackend(lambda prompt: next(replies))

    @rl.function
    def agent(s):
        s += rl.system(rl.tools_prompt([calculator], "Be brief."))
        s += rl.user("What is 6 * 7?")
        s += rl.assistant(rl.gen("first", tools=[calculator]))
        for call in s.tool_calls("first"):
            s += rl.tool_response(rl.run_tool_call(call, [calculator]))
        s += rl.assistant(rl.gen("second", tools=[calculator]))

    st = agent.run(backend=be)
    first = st["first"]
    assert first == "Let me see. " + CALL  # the value is the text...
    assert isinstance(first, str) and first.content == "Let me see."  # ...with what the calls leave
    assert st.tool_calls("first") == [
        rl.ToolCall("calculator", {"expression": "6 * 7"}, '{"expression": "6 * 7"}')
    ]
    assert st.tool_calls("second") == [] and st["second"].content == "6 * 7 = 42."
    system = tools_system_prompt([rl.tool_spec(calculator)], "Be brief.")
    # plain ChatML has no tool turn: the result goes back as the server's fallback writes it
    assert st.text() == (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nWhat is 6 * 7?<|im_end|>\n"
        f"<|im_start|>assistant\nLet me see. {CALL}<|im_end|>\n"
        "<|im_start|>user\n<tool_response>42</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n6 * 7 = 42.<|im_end|>\n"
    )
    assert [m["role"] for m in st.messages()] == ["system", "user", "assistant", "tool", "assistant"]
    assert st.messages()[3]["content"] == "42"
    assert "regex" not in be.calls[0][1]  # "auto" generates freely


def test_forced_none_streamed_and_sampled_gens():
    be = ScriptedBackend(lambda prompt: CALL)

    @rl.function
    def prog(s):
        s += rl.gen("forced", tools=[calculator, ping], tool_choice="calculator", parallel_tool_calls=False)
        s += rl.gen("free", tools=[calculator], tool_choice="none")
        s += rl.gen("many", tools=[calculator], n=2)
        s += rl.gen("plain")

    st = prog.run(backend=be)
    assert [c.name for c in st.tool_calls("forced")] == ["calculator"]
    choice = {"type": "function", "function": {"name": "calculator"}}
    expected = tool_call_regex(
        [rl.tool_spec(calculator), rl.tool_spec(ping)], choice, "hermes", parallel=False
    )
    assert be.calls[0][1]["regex"] == expected  # the forced call is the gen's constraint
    assert st.tool_calls("free") == [] and st["free"].content == CALL  # "none" reads no calls
    assert [r.tool_calls[0].name for r in st["many"]] == ["calculator", "calculator"]
    with pytest.raises(ValueError, match="n > 1"):
        st.tool_calls("many")
    with pytest.raises(ValueError, match="not generated with tools"):
        st.tool_calls("plain")
    streamed = prog.run(backend=be, stream=True)
    assert [c.name for c in streamed.tool_calls("forced")] == ["calculator"]
    copy = pickle.loads(pickle.dumps(st["forced"]))
    assert copy == CALL and copy.tool_calls == st.tool_calls("forced")


def test_tools_need_a_backend_that_takes_text():
    be = ScriptedBackend(lambda prompt: CALL, takes_messages=True)
    st = (rl.function(lambda s: s.__iadd__(rl.gen("x", tools=[calculator])))).run(backend=be)
    assert isinstance(st.error(), ValueError) and "takes chat messages" in str(st.error())
    with pytest.raises(TypeError, match="result as text"):
        rl.tool_response(42)


def test_the_tool_turn_comes_from_a_template_that_renders_tools():
    # Qwen2.5's tool handling, cut down: results go back inside a user turn, with newlines
    qwen = (
        "{%- if tools %}{{ '<|im_start|>system\\n# Tools' }}{% for t in tools %}{{ t | tojson }}{% endfor %}"
        "{{ '<|im_end|>\\n' }}{% endif %}"
        "{%- for m in messages %}{%- if m.role == 'tool' %}"
        "{{ '<|im_start|>user\\n<tool_response>\\n' + m.content + '\\n</tool_response><|im_end|>\\n' }}"
        "{%- else %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}"
        "{%- endfor %}"
    )
    derived = chat_template_from_tokenizer(JinjaTokenizer(qwen))
    assert derived.get_prefix_and_suffix("tool", []) == (
        "<|im_start|>user\n<tool_response>\n",
        "\n</tool_response><|im_end|>\n",
    )
    assert get_chat_template("default").get_prefix_and_suffix("tool", []) == (
        "USER:<tool_response>",
        "</tool_response>\n",
    )


# ---------------------------------------------------------------------------------------- running calls
def test_run_tool_call_checks_arguments_and_turns_failures_into_text():
    def run(name, arguments, tools=(forecast, calculator)):
        return rl.run_tool_call(rl.ToolCall(name, arguments, json.dumps(arguments)), list(tools))

    result = json.loads(run("forecast", {"place": {"city": "Oslo"}, "unit": "f", "tags": ["rain"]}))
    # nested models and enums arrive as Python objects; left-out arguments take the function's defaults
    assert result == {"city": "Oslo", "unit": "f", "days": 1, "note": None, "tags": ["rain"], "d": False}
    assert run("calculator", {"expression": "6 * 7"}) == "42"
    assert run("calculator", {"expression": "six"}).startswith("error: invalid literal")  # the tool raised
    assert run("forecast", {"place": {}, "unit": "k", "extra": 1}).startswith(
        "error: forecast: missing argument 'place.city'; argument 'unit' is invalid ("
    )
    assert run("forecast", {"place": {"city": "Oslo"}, "unit": "c", "extra": 1}) == (
        "error: forecast: unexpected argument 'extra'"
    )
    assert run("search", {}) == "error: no tool named 'search'; the tools are forecast, calculator"

    def silent() -> None:
        raise RuntimeError

    assert run("silent", {}, [silent]) == "error: silent raised RuntimeError"
    weather = {"type": "function", "function": {"name": "weather"}}
    with pytest.raises(ValueError, match="'weather' is an OpenAI tool dict"):
        run("weather", {}, [weather, calculator])


# ---------------------------------------------------------------------------------------- random weights
QUESTIONS = ["Plan my week.", "What now?", "Forecast, please.", "Anything for me?", "Tell me."]


@pytest.fixture(scope="module")
def tiny():
    runtime = rl.Runtime(str(build_tiny_model("qwen2")))
    yield runtime
    runtime.shutdown()


@rl.function
def forced(s, question, choice, parallel):
    s += rl.system(rl.tools_prompt([forecast, ping]))
    s += rl.user(question)
    s += rl.assistant(
        rl.gen("call", tools=[forecast, ping], tool_choice=choice, parallel_tool_calls=parallel)
    )


@pytest.mark.parametrize("choice", ["required", "forecast"])
def test_forced_calls_on_random_weights_always_parse_and_validate(tiny, choice):
    batch = [{"question": q, "choice": choice, "parallel": k % 2 == 0} for k, q in enumerate(QUESTIONS)]
    states = forced.run_batch(batch, backend=tiny, temperature=1.0, max_new_tokens=256)
    for item, state in zip(batch, states):
        reply = state["call"]
        assert state.get_meta_info("call")["finish_reason"]["type"] != "length", reply
        assert reply.tool_calls and reply.content == "", reply  # only calls, and they parse
        if not item["parallel"]:
            assert len(reply.tool_calls) == 1
        for call in reply.tool_calls:
            assert call.name == choice if choice != "required" else call.name in ("forecast", "ping")
            result = rl.run_tool_call(call, [forecast, ping])
            assert not result.startswith("error:"), (call, result)  # the arguments validate


def repeat(times: Annotated[int, Field(ge=1, le=5)]) -> str:
    """Say it again"""
    return "again " * times


@rl.function
def forced_bounded(s, question):
    s += rl.system(rl.tools_prompt([repeat, ping]))
    s += rl.user(question)
    s += rl.assistant(rl.gen("call", tools=[repeat, ping], tool_choice="repeat", parallel_tool_calls=False))


def test_a_forced_call_with_numeric_bounds_holds_them_through_a_grammar(tiny):
    # ge/le have no regex: the forced call is an llguidance grammar (tool_grammar.forced_call_constraint)
    states = forced_bounded.run_batch(
        [{"question": q} for q in QUESTIONS], backend=tiny, temperature=1.0, max_new_tokens=64
    )
    for state in states:
        reply = state["call"]
        assert reply.tool_calls and reply.content == "", reply
        for call in reply.tool_calls:
            assert call.name == "repeat" and 1 <= call.arguments["times"] <= 5, call
            assert not rl.run_tool_call(call, [repeat, ping]).startswith("error:")


# ---------------------------------------------------------------------------------------- the demo model
@pytest.fixture(scope="module")
def demo():
    runtime = rl.Runtime(rl.demo_model_path())
    yield runtime
    runtime.shutdown()


@rl.function
def ask(s, question, choice):
    s += rl.system(rl.tools_prompt([calculator]))
    s += rl.user(question)
    s += rl.assistant(rl.gen("reply", tools=[calculator], tool_choice=choice, max_tokens=48))
    for call in s.tool_calls("reply"):
        s += rl.tool_response(rl.run_tool_call(call, [calculator]))
        s += rl.assistant(rl.gen("answer", tools=[calculator], max_tokens=32))


def test_the_demo_model_calls_a_tool_on_its_own_and_answers_from_the_result(demo):
    states = ask.run_batch(
        [{"question": "Use the calculator: what is 12 * 345?", "choice": c} for c in ("auto", "required")],
        backend=demo,
        temperature=0,
    )
    for state in states:
        assert state.tool_calls("reply") == [
            rl.ToolCall("calculator", {"expression": "12 * 345"}, '{"expression": "12 * 345"}')
        ]
        assert state.tool_calls("answer") == [] and state["answer"] == "12 * 345 = 4140."
        assert tool_response_turn("4140") in state.text()  # the tool turn the model was trained on
