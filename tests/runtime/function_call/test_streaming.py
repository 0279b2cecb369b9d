"""Streaming tool-call parsing: partial markers are never content, calls come out whole
(index, id and name first, then argument fragments), bad calls come out as content, and -
the fuzz test - the streamed events of any text, cut into any chunks, reassemble to exactly
the non-streamed parse of that text, for every family."""

from __future__ import annotations

import itertools
import json
import random
import re

import pytest
from text_chunks import random_chunks

from radixlm.runtime.function_call.parsers import PARSERS, ParsedCall, get_parser
from radixlm.runtime.function_call.streaming import (
    ContentDelta,
    ToolCallDelta,
    ToolCallStream,
    new_call_id,
    reassemble,
)

WS = " \t\r\n"


def counter_ids():
    numbers = itertools.count()
    return lambda: f"call_{next(numbers):024x}"


def stream(parser, chunks, **kwargs):
    s = ToolCallStream(parser, id_factory=counter_ids(), **kwargs)
    events = [e for chunk in chunks for e in s.feed(chunk)]
    return events + s.finish()


# ------------------------------------------------------------------------------ unit tests
def test_a_partial_marker_is_held_and_the_call_comes_out_whole():
    s = ToolCallStream(get_parser("hermes")(["noop", "search"]), id_factory=lambda: "call_x")
    assert s.feed("Hello <tool_") == [ContentDelta("Hello")]
    assert s.feed("call>\n") == []
    assert s.feed('{"name": "search", "arguments": {"q": 1}}') == []  # "</tool_call>" may follow
    assert s.feed("\n</tool_call>") == [
        ToolCallDelta(0, "", id="call_x", name="search"),
        ToolCallDelta(0, '{"q": 1}'),
    ]
    assert s.feed("\n<tool_call>") == []
    assert s.feed('{"name": "noop", "arguments": {}}</tool_call>') == [
        ToolCallDelta(1, "", id="call_x", name="noop"),
        ToolCallDelta(1, "{}"),
    ]
    assert s.finish() == []
    assert s.calls_emitted == 2


def test_text_that_only_looked_like_a_marker_is_released():
    s = ToolCallStream(get_parser("hermes")(["noop"]))
    assert s.feed("a <tool") == [ContentDelta("a")]
    assert s.feed("box> ") == [ContentDelta(" <toolbox>")]
    assert s.finish() == [ContentDelta(" ")]
    m = ToolCallStream(get_parser("mistral")(["noop"]))
    assert m.feed("x [TOOL_CALLS") == [ContentDelta("x")]
    assert m.feed("]oops") == []  # "oops" could still be a function name before [ARGS]
    assert m.feed("!") == [ContentDelta(" [TOOL_CALLS]oops!")]


def test_a_bad_call_comes_out_as_content_marker_included():
    s = ToolCallStream(get_parser("hermes")(["noop"]))
    events = [
        *s.feed('Hi <tool_call>{"name": "nope", "arguments": {}}'),
        *s.feed("</tool_call>"),
        *s.finish(),
    ]
    assert reassemble(events) == ('Hi <tool_call>{"name": "nope", "arguments": {}}</tool_call>', [])


def test_llama3_a_leading_brace_waits_until_the_object_is_judged():
    s = ToolCallStream(get_parser("llama3")(["noop"]), id_factory=lambda: "call_x")
    assert s.feed("  ") == []
    assert s.feed('{"name": "noop", "par') == []
    assert s.feed('ameters": {}}') == [ToolCallDelta(0, "", id="call_x", name="noop"), ToolCallDelta(0, "{}")]
    t = ToolCallStream(get_parser("llama3")(["noop"]))
    assert t.feed(' {"answer": 42') == []
    assert t.feed("}") == [ContentDelta(' {"answer": 42}')]  # judged at its closing brace: not a call


def test_call_ids_are_openai_style_and_injectable():
    assert re.fullmatch(r"call_[0-9a-f]{24}", new_call_id())
    assert new_call_id() != new_call_id()
    events = stream(get_parser("llama3")(["noop"]), ['{"name": "noop", "parameters": {}}'])
    assert events[0] == ToolCallDelta(0, "", id="call_" + "0" * 24, name="noop")


def test_openai_delta_shapes():
    first = ToolCallDelta(2, "", id="call_1", name="f")
    assert first.to_openai() == {
        "index": 2,
        "id": "call_1",
        "type": "function",
        "function": {"name": "f", "arguments": ""},
    }
    assert ToolCallDelta(2, '{"a"').to_openai() == {"index": 2, "function": {"arguments": '{"a"'}}


def test_argument_fragments_and_stream_lifecycle():
    s = ToolCallStream(get_parser("mistral")(["f"]), max_fragment_chars=2)
    events = s.feed('[TOOL_CALLS]f[ARGS]{"ab": 1}') + s.finish()
    assert [e.arguments for e in events] == ["", '{"', "ab", '":', " 1", "}"]
    assert s.finish() == []
    with pytest.raises(RuntimeError):
        s.feed("x")
    with pytest.raises(ValueError):
        ToolCallStream(get_parser("mistral")(["f"]), max_fragment_chars=0)


# ------------------------------------------------------------------------------ fuzz
NAME_CHARS = "abcdefghijklmnopqrstuvwxyz_0123456789.-"
TEXT_PIECES = [
    "hello", " world", "é", "中文", "🙂", "\n", " ", "\t", "x", "Sure,", ".", ";", ":", ",", "'", '"', "\\",
    "{", "}", "[", "]", "<", ">", "<tool", "</tool_call", "[TOOL", "[TOOL_CALLS", "[ARGS", "<|python",
    "<|python_tag", "name", '"name"', "arguments",
]  # fmt: skip
STRING_PIECES = [
    "a",
    "Z",
    " ",
    '"',
    "\\",
    "\n",
    "\t",
    "é",
    "ß",
    "中",
    "🙂",
    "</tool_call>",
    "[ARGS]",
    "{",
    "}",
    ";",
]
MARKERS = ["<tool_call>", "</tool_call>", "[TOOL_CALLS]", "[ARGS]", "<|python_tag|>"]


def rand_name(rng):
    return rng.choice("abcdefghijklmnopqrstuvwxyz") + "".join(
        rng.choice(NAME_CHARS) for _ in range(rng.randint(0, 15))
    )


def rand_value(rng, depth=0):
    kind = rng.choice(["str", "int", "float", "bool", "null"] + (["obj", "arr"] * 2 if depth < 3 else []))
    if kind == "str":
        return "".join(rng.choice(STRING_PIECES) for _ in range(rng.randint(0, 6)))
    if kind == "int":
        return rng.randint(-(10**12), 10**12)
    if kind == "float":
        return round(rng.uniform(-1e6, 1e6), rng.randint(0, 6))
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "arr":
        return [rand_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return rand_object(rng, depth + 1)


def rand_object(rng, depth=0):
    return {rand_key(rng): rand_value(rng, depth) for _ in range(rng.randint(0, 4))}


def rand_key(rng):
    return "".join(rng.choice(STRING_PIECES + ["key", "name", "arguments"]) for _ in range(rng.randint(1, 3)))


def dumps(rng, value):
    style = rng.choice(["compact", "default", "indent"])
    kw = {"ensure_ascii": rng.random() < 0.3}
    if style == "compact":
        return json.dumps(value, separators=(",", ":"), **kw)
    if style == "indent":
        return json.dumps(value, indent=rng.choice([1, 2, "\t"]), **kw)
    return json.dumps(value, **kw)


def rand_text(rng, n):
    text = "".join(rng.choice(TEXT_PIECES) for _ in range(rng.randint(0, n)))
    for marker in MARKERS:  # clean content holds no whole marker
        text = text.replace(marker, "~")
    return text


def rand_ws(rng):
    return "".join(rng.choice(WS) for _ in range(rng.choice([0, 0, 1, 2])))


def build_output(rng, family, names):
    """A well-formed output (content, then calls), and the content and calls it holds."""
    calls = [(rng.choice(names), rand_object(rng)) for _ in range(rng.randint(0, 3))]
    before = rand_text(rng, 8)
    if family == "llama3" and before.lstrip(WS).startswith("{"):
        before = "x" + before  # a bare "{" at the start would be read as a call attempt
    if not calls:
        return before, before, []
    after = rng.choice(["", "", "Done.", "ok " + rand_text(rng, 4)])
    if family == "hermes":
        blocks = [
            f"<tool_call>{rand_ws(rng)}{dumps(rng, {'name': n, 'arguments': a})}{rand_ws(rng)}</tool_call>"
            for n, a in calls
        ]
        if not after and rng.random() < 0.3:
            blocks[-1] = blocks[-1].removesuffix("</tool_call>")  # a model that ends at the JSON
        body = "".join(rand_ws(rng) + b for b in blocks)
        text = before + rand_ws(rng) + body
    elif family == "llama3":
        key = rng.choice(["parameters", "parameters", "arguments"])
        sep = rng.choice([";", "; ", " ;\n", ""])
        body = sep.join(dumps(rng, {"name": n, key: a}) for n, a in calls)
        tag = "<|python_tag|>" if before or rng.random() < 0.5 else ""
        text = before + rand_ws(rng) + tag + rand_ws(rng) + body
        after = "" if not after else "Done."
    elif rng.random() < 0.5:  # mistral, array form
        body = dumps(rng, [{"name": n, "arguments": a} for n, a in calls])
        text = before + rand_ws(rng) + "[TOOL_CALLS]" + rand_ws(rng) + body
    else:  # mistral, NAME[ARGS] form
        body = "".join(f"{rand_ws(rng)}[TOOL_CALLS]{n}[ARGS]{rand_ws(rng)}{dumps(rng, a)}" for n, a in calls)
        text = before + body
    if after:
        text += rng.choice([" ", "\n", ""]) + after
    return text, before.rstrip(WS) + after, calls


def corrupt(rng, text):
    """Truncate, splice in junk or drop a character: outputs a model may really produce."""
    if not text:
        return text
    i = rng.randrange(len(text) + 1)
    kind = rng.choice(["truncate", "junk", "drop"])
    if kind == "truncate":
        return text[:i]
    if kind == "junk":
        return text[:i] + rng.choice(TEXT_PIECES + MARKERS) + text[i:]
    return text[:i] + text[i + 1 :]


def check_stream_matches_parse(rng, parser, text):
    expected = parser.parse(text)
    events = stream(parser, random_chunks(rng, text), max_fragment_chars=rng.choice([None, 1, 3, 16]))
    assert reassemble(events) == expected, repr(text)
    seen = -1
    for e in events:
        if isinstance(e, ToolCallDelta):
            if e.name is not None:  # a call opens with index, id and name, arguments empty
                assert (e.index, e.id, e.arguments) == (seen + 1, f"call_{seen + 1:024x}", "")
                seen = e.index
            else:
                assert (e.index, e.id) == (seen, None) and e.arguments
        else:
            assert e.text
    return expected


@pytest.mark.parametrize("family", sorted(PARSERS))
def test_fuzz_streamed_events_reassemble_to_the_parse(family):
    rng = random.Random(f"stream-{family}")
    for _ in range(300):
        names = [rand_name(rng) for _ in range(rng.randint(1, 4))]
        parser = get_parser(family)(names)
        text, content, calls = build_output(rng, family, names)
        got = check_stream_matches_parse(rng, parser, text)
        # the well-formed output parses to what was written
        assert got[0] == content, repr(text)
        assert [(c.name, json.loads(c.arguments)) for c in got[1]] == calls, repr(text)
        for _ in range(2):  # and damaged outputs still stream exactly as they parse
            text = corrupt(rng, text)
            check_stream_matches_parse(rng, parser, text)


@pytest.mark.parametrize("family", sorted(PARSERS))
def test_fuzz_junk_streams_as_it_parses(family):
    rng = random.Random(f"junk-{family}")
    parser = get_parser(family)(["f", "search"])
    pieces = (
        TEXT_PIECES + MARKERS + ['{"name": "f", "arguments": {}}', '{"name": "f", "parameters": {"a": 1}}']
    )
    pieces += ["f[ARGS]{}", '[{"name": "search", "arguments": {"q": "x"}}]', " ", "\n"]
    for _ in range(300):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        check_stream_matches_parse(rng, parser, text)


def test_reassemble_rejects_inconsistent_streams():
    with pytest.raises(ValueError):
        reassemble([ToolCallDelta(0, "{}")])
    with pytest.raises(ValueError):
        reassemble([ToolCallDelta(1, "", id="c", name="f")])
    assert reassemble(
        [ContentDelta("a"), ToolCallDelta(0, "", id="c", name="f"), ToolCallDelta(0, "{}")]
    ) == (
        "a",
        [ParsedCall("f", "{}")],
    )
