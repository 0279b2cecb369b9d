"""Reasoning parsers: where each family's outputs start (and what the prompt overrides), the
whole split into reasoning and content, partial markers that never leak into either part,
and - the fuzz tests - the streamed deltas of any output, cut into any chunks, joining to
exactly the whole parse."""

from __future__ import annotations

import random

import pytest
from text_chunks import random_chunks

from radixlm.runtime.function_call import (
    REASONING_PARSERS,
    Opening,
    ReasoningDelta,
    get_reasoning_parser,
    prompt_reasoning,
)

QWEN3 = get_reasoning_parser("qwen3")
R1 = get_reasoning_parser("deepseek-r1")
PROMPT_STATES = [None, True, False]


def streamed(parser, chunks, prompt_open=None):
    """(reasoning or None, content, the deltas) as a client would rebuild them."""
    s = parser.stream(prompt_open)
    deltas = [s.feed(c) for c in chunks] + [s.finish()]
    reasoning = "".join(d.reasoning for d in deltas)
    return reasoning or None, "".join(d.content for d in deltas), deltas


# ------------------------------------------------------------------------------ whole outputs
def test_qwen3_reasons_only_when_the_output_opens_with_think():
    assert QWEN3.parse("<think>\nLet me see.\n</think>\n\nIt is 4.") == ("Let me see.", "It is 4.")
    assert QWEN3.parse("  <think>a</think>b") == ("a", "b")
    assert QWEN3.parse("It is 4.") == (None, "It is 4.")
    # a closing marker with no opening one is just text for qwen3
    assert QWEN3.parse("a</think>b") == (None, "a</think>b")
    assert QWEN3.parse("x <think>a</think>") == (None, "x <think>a</think>")


def test_deepseek_r1_reasons_until_the_end_marker_with_or_without_an_opening_one():
    assert R1.parse("Let me see.\n</think>\n\nIt is 4.") == ("Let me see.", "It is 4.")
    assert R1.parse("<think>\nLet me see.</think>It is 4.") == ("Let me see.", "It is 4.")
    assert R1.parse("no end yet") == ("no end yet", "")  # cut off while thinking


def test_an_unfinished_or_empty_think_block():
    assert QWEN3.parse("<think>\nstill thinking </thi") == ("still thinking </thi", "")
    assert QWEN3.parse("<think>\n\n</think>\n\nHi") == (None, "Hi")
    assert QWEN3.parse("<think>") == (None, "")


def test_what_the_prompt_says_wins_over_the_family():
    # the prompt opened the block (Qwen3 thinking models): no opening marker needed
    assert QWEN3.parse("Let me see.</think>4", prompt_open=True) == ("Let me see.", "4")
    # the prompt closed an empty block (enable_thinking=False): the output is all content
    assert R1.parse("Let me see.</think>4", prompt_open=False) == (None, "Let me see.</think>4")
    assert QWEN3.opening(None) is Opening.MODEL_CHOOSES and R1.opening(None) is Opening.REASONING
    assert QWEN3.opening(True) is R1.opening(True) is Opening.REASONING
    assert QWEN3.opening(False) is R1.opening(False) is Opening.CONTENT


def test_prompt_reasoning_reads_the_end_of_the_rendered_prompt():
    assert prompt_reasoning("<|im_start|>assistant\n<think>\n", QWEN3) is True
    assert prompt_reasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n", QWEN3) is False
    assert prompt_reasoning("<|im_start|>assistant\n", QWEN3) is None
    # a marker earlier in the conversation says nothing about this turn
    assert prompt_reasoning("user wrote <think> here<|im_start|>assistant\n", QWEN3) is None


def test_unknown_parser_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown reasoning parser 'nope'.*deepseek-r1.*qwen3"):
        get_reasoning_parser("nope")


# ------------------------------------------------------------------------------ streaming
def test_partial_markers_are_held_and_never_leak():
    s = QWEN3.stream()
    assert s.feed(" <thi") == ReasoningDelta()  # may still open the block
    assert s.feed("nk>\nStep one. </th") == ReasoningDelta(reasoning="Step one.")
    assert s.feed("ink>\n\n") == ReasoningDelta()  # the blank line after the block is dropped
    assert s.feed("The answer") == ReasoningDelta(content="The answer")
    assert s.feed(" </think>") == ReasoningDelta(content=" </think>")  # content is verbatim
    assert s.finish() == ReasoningDelta()


def test_text_that_only_looked_like_a_marker_is_released():
    s = QWEN3.stream()
    assert s.feed("<th") == ReasoningDelta()
    assert s.feed("ree>") == ReasoningDelta(content="<three>")
    r = R1.stream()
    assert r.feed("a </thin") == ReasoningDelta(reasoning="a")
    assert r.feed("g> b") == ReasoningDelta(reasoning=" </thing> b")
    assert r.finish() == ReasoningDelta()


def test_a_stream_ending_inside_a_marker_or_whitespace():
    s = R1.stream()
    assert s.feed("thinking \n</thi") == ReasoningDelta(reasoning="thinking")
    assert s.finish() == ReasoningDelta(reasoning=" \n</thi")
    q = QWEN3.stream()
    assert q.feed("\n <th") == ReasoningDelta()
    assert q.finish() == ReasoningDelta(content="\n <th")
    with pytest.raises(RuntimeError):
        q.feed("more")


PIECES = ["a", "b", "Let", " me", " think", ".", "\n", " ", "\t", "  ", "<", ">", "/", "th", "ink", "{}"]
MARKERS = ["<think>", "</think>"]


def rand_text(rng, n, markers=False):
    pool = PIECES + (MARKERS if markers else [])
    return "".join(rng.choice(pool) for _ in range(rng.randint(0, n)))


def build_output(rng):
    """(output, reasoning, content): a well-formed output in one of the shapes the families
    write, and its parts as a parser that reads it as reasoning must give them back."""
    ws = lambda: rng.choice(["", "", "\n", "\n\n", " "])
    reasoning = rand_text(rng, 8).replace("</think>", "~")
    content = rand_text(rng, 8)
    parts = (reasoning.strip() or None, content.lstrip())
    shape = rng.choice(["full", "no-open", "unfinished", "content-only"])
    if shape == "full":
        return ws() + "<think>" + ws() + reasoning + ws() + "</think>" + ws() + content, parts
    if shape == "no-open":
        return reasoning + ws() + "</think>" + ws() + content, None
    if shape == "unfinished":
        return "<think>" + ws() + reasoning, (parts[0], "")
    return content, None


def check_stream_matches_parse(rng, parser, text, prompt_open):
    expected = parser.parse(text, prompt_open)
    reasoning, content, deltas = streamed(parser, random_chunks(rng, text, longest=20), prompt_open)
    # deltas are only ever appended, so equal joins mean no delta held text that a later
    # one took back: a piece of a marker never reached either part
    assert (reasoning, content) == expected, (parser.name, prompt_open, text)
    return expected


@pytest.mark.parametrize("name", sorted(REASONING_PARSERS))
@pytest.mark.parametrize("prompt_open", PROMPT_STATES)
def test_fuzz_streamed_deltas_join_to_the_parse(name, prompt_open):
    rng = random.Random(f"reasoning-{name}-{prompt_open}")
    parser = get_reasoning_parser(name)
    for _ in range(400):
        text, parts = build_output(rng)
        got = check_stream_matches_parse(rng, parser, text, prompt_open)
        if parts is not None and parser.opening(prompt_open) is not Opening.CONTENT:
            assert got == parts, (parser.name, prompt_open, text)  # what was written comes back
        cut = text[: rng.randrange(len(text) + 1)]  # the same output cut off anywhere
        check_stream_matches_parse(rng, parser, cut, prompt_open)


@pytest.mark.parametrize("name", sorted(REASONING_PARSERS))
@pytest.mark.parametrize("prompt_open", PROMPT_STATES)
def test_fuzz_junk_streams_as_it_parses(name, prompt_open):
    rng = random.Random(f"reasoning-junk-{name}-{prompt_open}")
    parser = get_reasoning_parser(name)
    for _ in range(400):
        check_stream_matches_parse(rng, parser, rand_text(rng, 14, markers=True), prompt_open)
