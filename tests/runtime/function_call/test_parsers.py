"""Tool-call parsers: each family's good calls, several calls, content before calls, and
malformed or unknown calls coming back as content; family detection and the registry."""

from __future__ import annotations

import json
import random

import pytest

from radixlm.runtime.function_call.parsers import (
    PARSERS,
    HermesParser,
    Llama3Parser,
    MistralParser,
    ParsedCall,
    detect_parser,
    get_parser,
    json_container_end,
)

NAMES = ["get_weather", "search", "noop"]


# ------------------------------------------------------------------------------ hermes
def test_hermes_qwen_layout_with_content_before():
    text = (
        "Let me look that up.\n\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>'
    )
    assert HermesParser(NAMES).parse(text) == (
        "Let me look that up.",
        [ParsedCall("get_weather", '{"city": "Paris", "unit": "c"}')],
    )


def test_hermes_several_calls_compact_and_arguments_kept_as_written():
    text = (
        '<tool_call>{"name":"search","arguments":{"q":"caf\u00e9 \\"quoted\\"","n":[1, 2.50]}}</tool_call>\n'
        '<tool_call>{"name": "noop", "arguments": {}}</tool_call>'
    )
    content, calls = HermesParser(NAMES).parse(text)
    assert content == ""
    assert calls == [
        ParsedCall("search", '{"q":"caf\u00e9 \\"quoted\\"","n":[1, 2.50]}'),
        ParsedCall("noop", "{}"),
    ]


def test_hermes_closing_tag_inside_a_string_and_a_missing_final_tag():
    text = '<tool_call>{"name": "search", "arguments": {"q": "</tool_call>"}}'
    assert HermesParser(NAMES).parse(text) == ("", [ParsedCall("search", '{"q": "</tool_call>"}')])


def test_hermes_missing_arguments_means_none():
    assert HermesParser(NAMES).parse('<tool_call>{"name": "noop"}</tool_call>') == (
        "",
        [ParsedCall("noop", "{}")],
    )


@pytest.mark.parametrize(
    "bad",
    [
        "<tool_call>{not json}</tool_call>",
        '<tool_call>{"arguments": {}}</tool_call>',  # no name
        '<tool_call>{"name": "search", "arguments": "q=1"}</tool_call>',  # arguments not an object
        '<tool_call>{"name": "search", "arguments": [1]}</tool_call>',
        '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',  # not offered
        '<tool_call>{"name": "search", "arguments": {"x": NaN}}</tool_call>',
        '<tool_call>{"name": "search", "name": "noop", "arguments": {}}</tool_call>',  # duplicate key
        '<tool_call>{"name": "search", "arguments": {"q": "cut off',  # truncated
        '<tool_call>{"name": "noop", "arguments": {}} trailing</tool_call>',
        '<tool_call>{"name": "noop", "arguments": {}}</tool_',  # torn closing tag
        '<tool_call>["name", "noop"]</tool_call>',
        "<tool_call>",
    ],
)
def test_hermes_malformed_calls_are_content_unchanged(bad):
    text = f"Sure. {bad} Done."
    assert HermesParser(NAMES).parse(text) == (text, [])


def test_hermes_a_bad_block_stays_content_and_a_later_good_one_is_a_call():
    text = 'a <tool_call>{oops}</tool_call> b\n<tool_call>{"name": "noop", "arguments": {}}</tool_call>\nc'
    assert HermesParser(NAMES).parse(text) == (
        "a <tool_call>{oops}</tool_call> bc",
        [ParsedCall("noop", "{}")],
    )
    doubled = '<tool_call><tool_call>{"name": "noop", "arguments": {}}</tool_call>'
    assert HermesParser(NAMES).parse(doubled) == ("<tool_call>", [ParsedCall("noop", "{}")])


# ------------------------------------------------------------------------------ llama3
def test_llama3_bare_json_and_python_tag():
    parser = Llama3Parser(NAMES)
    call = '{"name": "get_weather", "parameters": {"city": "Oslo"}}'
    assert parser.parse(call) == ("", [ParsedCall("get_weather", '{"city": "Oslo"}')])
    assert parser.parse("  \n" + call) == ("", [ParsedCall("get_weather", '{"city": "Oslo"}')])
    assert parser.parse("<|python_tag|>" + call) == ("", [ParsedCall("get_weather", '{"city": "Oslo"}')])
    assert parser.parse("Checking. <|python_tag|>" + call) == (
        "Checking.",
        [ParsedCall("get_weather", '{"city": "Oslo"}')],
    )


def test_llama3_several_calls_and_the_arguments_key():
    text = '{"name": "search", "parameters": {"q": "a;b"}}; {"name": "noop", "arguments": {}}'
    assert Llama3Parser(NAMES).parse(text) == (
        "",
        [ParsedCall("search", '{"q": "a;b"}'), ParsedCall("noop", "{}")],
    )


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "Ada", "age": 36}',  # JSON the user asked for, not a call
        '{"name": "search", "parameters": {"q": 1}, "arguments": {"q": 2}}',  # both keys
        '{"name": "search", "parameters": null}',
        '{"name": "search", "parameters": {"q": 1}',  # unbalanced
        'Here: {"name": "search", "parameters": {}}',  # bare JSON only counts at the start
        '<|python_tag|>brave_search.call(query="x")',  # a built-in tool: not ours to parse
    ],
)
def test_llama3_non_calls_are_content_unchanged(text):
    assert Llama3Parser(NAMES).parse(text) == (text, [])


def test_llama3_text_after_the_calls_is_content():
    text = '{"name": "noop", "parameters": {}}; then {"name": "noop", "parameters": {}}'
    assert Llama3Parser(NAMES).parse(text) == (
        'then {"name": "noop", "parameters": {}}',
        [ParsedCall("noop", "{}")],
    )


# ------------------------------------------------------------------------------ mistral
def test_mistral_array_form():
    text = (
        'One moment. [TOOL_CALLS] [{"name": "search", "arguments": {"q": "x"}}, '
        '{"name": "noop", "arguments": {}, "id": "abc123def"}]'
    )
    assert MistralParser(NAMES).parse(text) == (
        "One moment.",
        [ParsedCall("search", '{"q": "x"}'), ParsedCall("noop", "{}")],
    )


def test_mistral_name_args_form():
    text = '[TOOL_CALLS]search[ARGS]{"q": "[ARGS]"}[TOOL_CALLS]noop[ARGS] {}'
    assert MistralParser(NAMES).parse(text) == (
        "",
        [ParsedCall("search", '{"q": "[ARGS]"}'), ParsedCall("noop", "{}")],
    )


@pytest.mark.parametrize(
    "bad",
    [
        '[TOOL_CALLS][{"name": "search", "arguments": {}}, {"name": "nope", "arguments": {}}]',  # one unknown
        "[TOOL_CALLS][]",
        '[TOOL_CALLS][{"name": "search", "arguments": 3}]',
        '[TOOL_CALLS]{"name": "search", "arguments": {}}',  # not in an array
        "[TOOL_CALLS]search[ARGS][1, 2]",
        "[TOOL_CALLS]nope[ARGS]{}",
        "[TOOL_CALLS]search {}",
        "[TOOL_CALLS]search[ARG",
        "[TOOL_CALLS] just talking",
    ],
)
def test_mistral_malformed_calls_are_content_unchanged(bad):
    text = f"ok {bad}"
    assert MistralParser(NAMES).parse(text) == (text, [])


# ------------------------------------------------------------------------------ every family
@pytest.mark.parametrize("family", sorted(PARSERS))
def test_no_tools_offered_means_no_calls(family):
    texts = {
        "hermes": '<tool_call>{"name": "search", "arguments": {}}</tool_call>',
        "llama3": '{"name": "search", "parameters": {}}',
        "mistral": '[TOOL_CALLS][{"name": "search", "arguments": {}}]',
    }
    assert get_parser(family)([]).parse(texts[family]) == (texts[family], [])


@pytest.mark.parametrize("family", sorted(PARSERS))
def test_random_junk_never_raises_and_without_calls_is_returned_unchanged(family):
    pieces = [
        "<tool_call>", "</tool_call>", "<tool_", "[TOOL_CALLS]", "[ARGS]", "<|python_tag|>", "{", "}",
        "[", "]", '"', "\\", ":", ",", ";", " ", "\n", '"name"', '"search"', '"arguments"', '"parameters"',
        "search", "NaN", "1", "é", "{}",
    ]  # fmt: skip
    parser = get_parser(family)(NAMES)
    rng = random.Random(7)
    for _ in range(1500):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 25)))
        content, calls = parser.parse(text)
        if not calls:
            assert content == text


def test_absurd_nesting_is_content_not_a_crash():
    text = (
        '<tool_call>{"name": "noop", "arguments": {"a": ' + "[" * 100_000 + "]" * 100_000 + "}}</tool_call>"
    )
    assert HermesParser(NAMES).parse(text) == (text, [])


def test_a_container_scan_resumes_exactly_where_a_fresh_scan_ends():
    text = '{"a": "x\\"}{[", "b": [1, {"c": "\\\\"}], "d": "}"} tail ]'
    fresh, _ = json_container_end(text, 0)
    assert json.loads(text[:fresh]) == {"a": 'x"}{[', "b": [1, {"c": "\\"}], "d": "}"}
    for cut in range(len(text) + 1):
        end, memo = json_container_end(text[:cut], 0)
        assert end in (None, fresh)
        assert json_container_end(text, 0, memo)[0] == fresh
        assert json_container_end(text + "]}", 0, json_container_end(text, 0, memo)[1])[0] == fresh


# ------------------------------------------------------------------------------ detection, registry
QWEN_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n# Tools\n<tools>{{ tool | tojson }}</tools>\n"
    '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>{%- endif %}'
)
LLAMA31_TEMPLATE = (
    "<|start_header_id|>assistant<|end_header_id|>\n\n{%- if builtin_tools %}<|python_tag|>{%- endif %}"
    "{{- '{\"name\": \"' + tool_call.name + '\", ' }}{{- '\"parameters\": ' }}<|eot_id|>"
)
LLAMA32_TEMPLATE = (
    "<|start_header_id|>user<|end_header_id|>\n\nRespond in the format "
    '{"name": function name, "parameters": dictionary of argument name and its value}<|eot_id|>'
)
MISTRAL_TEMPLATE = "[AVAILABLE_TOOLS]{{ tools|tojson }}[/AVAILABLE_TOOLS]{{ '[TOOL_CALLS]' + calls }}</s>"
CHATML_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


@pytest.mark.parametrize(
    "template, family",
    [
        (QWEN_TEMPLATE, "hermes"),
        (LLAMA31_TEMPLATE, "llama3"),
        (LLAMA32_TEMPLATE, "llama3"),
        (MISTRAL_TEMPLATE, "mistral"),
        (CHATML_TEMPLATE, None),
        ("", None),
        (None, None),
    ],
)
def test_detect_parser(template, family):
    assert detect_parser(template) == family


def test_registry_and_unknown_names():
    assert set(PARSERS) == {"hermes", "llama3", "mistral"}
    assert get_parser("hermes") is HermesParser
    with pytest.raises(ValueError, match="known: hermes, llama3, mistral"):
        get_parser("qwen25")
