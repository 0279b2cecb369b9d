"""Tool grammars: tools / tool_choice checking, and the forced-call regex - for random tool
sets, outputs written to the schema match it, parse into offered calls and validate; wrong
names, missing required arguments and stray text do not match; and the regex compiles into
the runtime's outlines-core automaton, which accepts a valid output token by token."""

from __future__ import annotations

import json
import random
import re
from functools import cache

import jsonschema
import pytest

from radixlm.runtime.constrained.grammar_cache import ascii_shorthands
from radixlm.runtime.constrained.json_schema import check_regex_syntax
from radixlm.runtime.function_call.parsers import PARSERS, get_parser
from radixlm.runtime.function_call.tool_grammar import (
    EMPTY_PARAMETERS,
    ToolChoice,
    check_tool_choice,
    regex_literal,
    tool_call_regex,
    validate_tools,
)

FAMILIES = sorted(PARSERS)


def tool(name, parameters=None, **extra):
    function = {"name": name, **extra}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


WEATHER = tool(
    "get_weather",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
        "required": ["city"],
    },
    description="Current weather",
)


# ------------------------------------------------------------------------------ validate_tools
def test_validate_tools_fills_in_parameters_and_keeps_the_rest():
    tools = validate_tools([WEATHER, tool("noop"), tool("strict.one", {"type": "object"}, strict=True)])
    assert tools[0] == WEATHER
    assert tools[1]["function"]["parameters"] == EMPTY_PARAMETERS
    assert tools[2]["function"]["strict"] is True


@pytest.mark.parametrize(
    "tools, message",
    [
        ({"type": "function"}, "must be a list"),
        ([], "at least one tool"),
        (["get_weather"], r"tools\[0\] must be an object"),
        ([{"type": "retrieval"}], 'only tools of type "function"'),
        ([{"type": "function"}], '"function" must be an object'),
        ([tool("")], "non-empty string name"),
        ([{"type": "function", "function": {"parameters": {}}}], "non-empty string name"),
        ([tool("has space")], "1 to 64 letters"),
        ([tool("x" * 65)], "1 to 64 letters"),
        ([WEATHER, tool("get_weather")], r"tools\[1\]: function name 'get_weather' is used by more than one"),
        ([tool("f", {"type": "string"})], 'parameters must be a JSON schema with "type": "object"'),
        ([tool("f", ["a"])], 'parameters must be a JSON schema with "type": "object"'),
        ([tool("f", {"properties": {}})], 'parameters must be a JSON schema with "type": "object"'),
        ([tool("f", description=3)], "description must be a string"),
    ],
)
def test_validate_tools_names_the_problem(tools, message):
    with pytest.raises(ValueError, match=message):
        validate_tools(tools)


# ------------------------------------------------------------------------------ check_tool_choice
def test_check_tool_choice_modes():
    tools = validate_tools([WEATHER, tool("noop")])
    assert check_tool_choice(None, tools) == ToolChoice("auto")
    assert check_tool_choice(None, None) == ToolChoice("none")
    assert check_tool_choice("none", tools) == ToolChoice("none")
    assert check_tool_choice("required", tools).forces_call
    named = check_tool_choice({"type": "function", "function": {"name": "noop"}}, tools)
    assert named == ToolChoice("function", "noop") and named.forces_call


@pytest.mark.parametrize(
    "choice, tools, message",
    [
        ("any", [WEATHER], "unknown tool_choice 'any'"),
        ("required", None, '"required" needs at least one tool'),
        ({"type": "function", "function": {"name": "nope"}}, [WEATHER], "'nope', which is not in tools"),
        ({"type": "function", "function": {}}, [WEATHER], 'needs "function": {"name"'),
        ({"type": "allowed_tools"}, [WEATHER], "tool_choice must be"),
        (3, [WEATHER], "tool_choice must be"),
    ],
)
def test_check_tool_choice_names_the_problem(choice, tools, message):
    with pytest.raises(ValueError, match=re.escape(message) if "{" in message else message):
        check_tool_choice(choice, validate_tools(tools) if tools else tools)


# ------------------------------------------------------------------------------ the regex: refusals
def test_regex_refusals_name_the_problem():
    with pytest.raises(ValueError, match='tool_choice "auto" leaves the output free'):
        tool_call_regex([WEATHER], "auto", "hermes")
    with pytest.raises(ValueError, match="unknown tool-call parser 'qwen'"):
        tool_call_regex([WEATHER], "required", "qwen")
    bounded = tool("count", {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}})
    with pytest.raises(
        ValueError, match=r"tool 'count': its parameters schema cannot be enforced: .*minimum"
    ):
        tool_call_regex([WEATHER, bounded], "required", "hermes")


def test_regex_literal_escapes_only_metacharacters():
    text = "<tool_call>[TOOL_CALLS]<|python_tag|>a.b-c{1}"
    assert re.fullmatch(regex_literal(text), text)
    assert "\\<" not in regex_literal(text) and "\\-" not in regex_literal(text)  # Rust's regex refuses \<


# ------------------------------------------------------------------------------ random tool sets
STRING_CHARS = ["a", "b", "Z", "0", " ", "-", '"', "\\", "/", "é", "中", "🙂", "<", "{", "]", ",", ";"]


def rand_string(rng, max_len=6):
    return "".join(rng.choice(STRING_CHARS) for _ in range(rng.randint(0, max_len)))


def rand_schema(rng, depth):
    kinds = ["string", "integer", "number", "boolean", "enum"] + (["array", "object"] if depth < 2 else [])
    kind = rng.choice(kinds)
    if kind == "string":
        return {"type": "string", "maxLength": 8} if rng.random() < 0.3 else {"type": "string"}
    if kind == "enum":
        return {
            "enum": list(dict.fromkeys(rand_string(rng, 4) for _ in range(rng.randint(1, 3))))
            + [rng.randint(0, 9)]
        }
    if kind == "array":
        return {"type": "array", "items": rand_schema(rng, depth + 1), "maxItems": 3}
    if kind == "object":
        return rand_object_schema(rng, depth + 1)
    return {"type": kind}


def rand_object_schema(rng, depth=0):
    keys = rng.sample(
        ["city", "unit", "q", "limit", "tags", "opts", "mode", "ünï", "deep_key"], rng.randint(0, 4)
    )
    schema = {"type": "object", "properties": {k: rand_schema(rng, depth) for k in keys}}
    schema["required"] = [k for k in keys if rng.random() < 0.6]
    if rng.random() < 0.3:
        schema["additionalProperties"] = False
    return schema


def sample(rng, schema):
    """A value valid for `schema`, object properties in schema order (as the regex writes them)."""
    if "enum" in schema:
        return rng.choice(schema["enum"])
    kind = schema["type"]
    if kind == "string":
        return rand_string(rng, schema.get("maxLength", 6))
    if kind == "integer":
        return rng.randint(-5000, 5000)
    if kind == "number":
        return rng.choice([rng.randint(-50, 50), round(rng.uniform(-1e4, 1e4), 3), 1.5e-7])
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "array":
        return [sample(rng, schema["items"]) for _ in range(rng.randint(0, 3))]
    required = schema.get("required", [])
    return {k: sample(rng, s) for k, s in schema["properties"].items() if k in required or rng.random() < 0.5}


def write_calls(rng, family, calls):
    """The output a model would write for `calls` [(name, arguments)] in `family`'s format."""
    sep = rng.choice([(",", ":"), (", ", ": ")])
    objects = []
    for name, arguments in calls:
        args = json.dumps(arguments, ensure_ascii=False, separators=sep)
        key = "parameters" if family == "llama3" else "arguments"
        objects.append(f'{{"name"{sep[1]}{json.dumps(name)}{sep[0]}"{key}"{sep[1]}{args}}}')
    if family == "hermes":
        nl = rng.choice(["", "\n"])
        return rng.choice(["", "\n"]).join(f"<tool_call>{nl}{o}{nl}</tool_call>" for o in objects)
    if family == "llama3":
        return rng.choice([";", "; "]).join(objects)
    return "[TOOL_CALLS][" + sep[0].join(objects) + "]"


def rand_tools(rng):
    names = rng.sample(
        ["get_weather", "search", "calc.add", "send-mail", "lookup_2", "noop"], rng.randint(1, 4)
    )
    return [
        tool(n) if rng.random() < 0.15 else tool(n, rand_object_schema(rng), description=f"the {n} tool")
        for n in names
    ]


def assert_parses_and_validates(family, tools, text, calls):
    functions = {t["function"]["name"]: t["function"] for t in validate_tools(tools)}
    content, parsed = get_parser(family)(functions).parse(text)
    assert content == "" and [c.name for c in parsed] == [name for name, _ in calls], text
    for call in parsed:
        jsonschema.validate(json.loads(call.arguments), functions[call.name]["parameters"])


@pytest.mark.parametrize("family", FAMILIES)
def test_random_tool_sets_valid_outputs_match_parse_and_validate(family):
    rng = random.Random(f"grammar-{family}")
    for _ in range(60):
        tools = rand_tools(rng)
        by_name = {t["function"]["name"]: t["function"].get("parameters", EMPTY_PARAMETERS) for t in tools}
        required = re.compile(tool_call_regex(tools, "required", family))
        single = re.compile(tool_call_regex(tools, "required", family, parallel=False))
        target = rng.choice(list(by_name))
        named = re.compile(tool_call_regex(tools, {"type": "function", "function": {"name": target}}, family))
        check_regex_syntax(required.pattern)
        for _ in range(5):
            calls = [(n, sample(rng, by_name[n])) for n in rng.choices(list(by_name), k=rng.randint(1, 3))]
            text = write_calls(rng, family, calls)
            assert required.fullmatch(text), text
            assert bool(single.fullmatch(text)) == (len(calls) == 1), text
            assert bool(named.fullmatch(text)) == all(n == target for n, _ in calls), text
            assert_parses_and_validates(family, tools, text, calls)
            # never: an unoffered name, stray text around the calls
            wrong = write_calls(rng, family, [("not_offered", calls[0][1])] + calls[1:])
            assert not required.fullmatch(wrong), wrong
            assert not required.fullmatch("Sure! " + text) and not required.fullmatch(text + " ok")
            # never: a required argument left out, or given the wrong type
            for i, (name, arguments) in enumerate(calls):
                must = [k for k in by_name[name].get("required", []) if k in arguments]
                if must:
                    short = {k: v for k, v in arguments.items() if k != must[0]}
                    assert not required.fullmatch(write_calls(rng, family, [*calls[:i], (name, short)]))
                    typed = {**arguments, must[0]: {"no": "such type"}}
                    if by_name[name]["properties"][must[0]].get("type") != "object":
                        assert not required.fullmatch(write_calls(rng, family, [*calls[:i], (name, typed)]))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_custom_json_whitespace_pattern_is_used_throughout(family):
    regex = tool_call_regex([WEATHER], "required", family, whitespace_pattern=r"[ \n]*")
    text = write_calls(random.Random(0), family, [("get_weather", {"city": "Rome"})])
    spaced = text.replace('{"name":', '{\n  "name" :').replace('{"city":', '{ "city" :\n')
    assert re.fullmatch(regex, spaced), spaced
    assert_parses_and_validates(family, [WEATHER], spaced, [("get_weather", None)])


# ------------------------------------------------------------------------------ outlines-core, as the runtime
@cache
def tiny_vocab():
    from radixlm.runtime.constrained.vocabulary import TokenizerVocab
    from radixlm.runtime.tokenizer import load_tokenizer
    from radixlm.testing import build_tiny_model

    tok = load_tokenizer(build_tiny_model("llama"))
    return TokenizerVocab(tok, len(tok), [tok.eos_token_id])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("parallel", [True, False])
def test_the_regex_compiles_in_outlines_core_and_accepts_a_valid_output(family, parallel):
    """Built as grammar_cache builds it, the automaton walks a valid output's natural tokens to
    a final state. One call for hermes and llama3: outlines-core 0.2.14 drops a one-byte
    token that leaves an accepting state for a non-accepting one (its DFA reports matches a
    byte late), so after a complete call the next call is reachable only through tokens that
    span the separator, which the tiny vocabulary lacks. Mistral's array has no accepting
    state between calls."""
    from outlines_core import Index

    rng = random.Random(f"index-{family}")
    vocab = tiny_vocab()
    for _ in range(3):
        tools = [WEATHER, *[t for t in rand_tools(rng) if t["function"]["name"] != "get_weather"][:1]]
        regex = tool_call_regex(tools, "required", family, parallel=parallel)
        index = Index(ascii_shorthands(regex), vocab.vocabulary)
        calls = [("get_weather", {"city": 'Zürich "centre"', "unit": "c"}), ("get_weather", {"city": ""})]
        calls = calls[: 2 if parallel and family == "mistral" else 1]
        state = index.get_initial_state()
        for token in vocab.encode(write_calls(rng, family, calls)):
            state = index.get_next_state(state, token)
            assert state is not None
        assert index.is_final_state(state)


@pytest.mark.parametrize("family", ["hermes", "llama3"])
def test_strict_tools_become_a_structural_tag_in_the_familys_format(family):
    """tool_choice "auto" with a strict tool: free text, and every call in the family's format,
    its arguments held to the strict tool's schema (any object for a non-strict one); the calls
    the tag admits parse with the family's parser."""
    from radixlm.runtime.constrained.backend import Constraint
    from radixlm.runtime.constrained.llguidance_backend import llguidance_grammar
    from radixlm.runtime.constrained.structural_tag import normalize_structural_tag
    from radixlm.runtime.function_call.tool_grammar import strict_tool_tag

    plain = tool("note", {"type": "object", "properties": {"text": {"type": "string"}}})
    assert strict_tool_tag([WEATHER, plain], family) is None, "no strict tool: no constraint"
    strict = tool("get_weather", WEATHER["function"]["parameters"], strict=True)
    assert strict_tool_tag([strict], "mistral") is None, "its opener is a special token"
    tag = strict_tool_tag([strict, plain], family)
    text = normalize_structural_tag(tag)  # a well-formed tag
    llguidance_grammar(Constraint("structural_tag", text))  # that compiles
    (trigger,) = tag["triggers"]
    by_name = {}
    for s in tag["structures"]:
        assert s["begin"].startswith(trigger)
        by_name.setdefault(json.loads(s["begin"][s["begin"].index('"name": ') + 8 :].split(",")[0]), s)
    assert by_name["get_weather"]["schema"] == strict["function"]["parameters"]
    assert by_name["note"]["schema"] == {"type": "object"}
    for s in tag["structures"]:  # each layout, written out, is a call the family's parser reads
        args = {"city": "Oslo"} if '"get_weather"' in s["begin"] else {"text": "hi"}
        text, calls = get_parser(family)(["get_weather", "note"]).parse(
            s["begin"] + json.dumps(args) + s["end"]
        )
        assert [json.loads(c.arguments) for c in calls] == [args] and not text.strip(), s


@pytest.mark.parametrize("family", FAMILIES)
def test_a_forced_call_the_regex_cannot_hold_becomes_an_llguidance_grammar(family):
    """Numeric bounds in a tool's parameters: outlines-core's regex refuses them, so the forced
    call is a Lark grammar for llguidance; the calls it admits parse and validate, and an
    argument out of bounds is rejected token by token."""
    from radixlm.runtime.constrained.grammar_cache import GrammarCache
    from radixlm.runtime.constrained.vocabulary import TokenizerVocab
    from radixlm.runtime.function_call.tool_grammar import forced_call_constraint
    from radixlm.runtime.tokenizer import load_tokenizer
    from radixlm.testing import build_tiny_model

    bounded = {"type": "integer", "minimum": 1, "maximum": 5}
    count = tool("count", {"type": "object", "properties": {"n": bounded}})
    assert list(forced_call_constraint([WEATHER], ToolChoice("required"), family, True)) == ["regex"]
    constraint = forced_call_constraint([WEATHER, count], ToolChoice("function", "count"), family, False)
    assert list(constraint) == ["grammar"]
    tok = load_tokenizer(str(build_tiny_model("llama")))
    vocab = TokenizerVocab(tok, len(tok), [tok.eos_token_id])
    compiled = GrammarCache(vocab, backend="llguidance").get(("lark", constraint["grammar"])).result()
    arg_key = "parameters" if family == "llama3" else "arguments"
    wrap = {"hermes": ("<tool_call>\n", "\n</tool_call>"), "llama3": ("", "")}
    wrap["mistral"] = ("[TOOL_CALLS][", "]")
    for n, ok in [(3, True), (7, False)]:
        text = wrap[family][0] + json.dumps({"name": "count", arg_key: {"n": n}}) + wrap[family][1]
        m = compiled.new_matcher(None, None)
        accepted = all(m.advance(t) for t in vocab.encode(text))
        assert accepted == ok and (not ok or m.is_final), text
        if ok:
            _, calls = get_parser(family)(["get_weather", "count"]).parse(text)
            assert [(c.name, json.loads(c.arguments)) for c in calls] == [("count", {"n": 3})]
    refusal = r"tool 'odd': its parameters schema cannot be enforced: .*uniqueItems"
    with pytest.raises(ValueError, match=refusal):
        odd = tool("odd", {"type": "object", "properties": {"x": {"type": "array", "uniqueItems": True}}})
        forced_call_constraint([odd], ToolChoice("required"), family, True)
