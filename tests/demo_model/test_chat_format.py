"""The demo model's chat format is one format: the Python renderer training used, the Jinja
template shipped in the folder (what `apply_chat_template(messages, tools=...)` and an
OpenAI-style server render), the DSL's role pairs and the tool helpers all agree."""

from __future__ import annotations

import random

import pytest

from radixlm.demo_model import chat_format as fmt
from radixlm.demo_model import demo_model_path, tasks
from radixlm.lang.chat_template import chat_template_from_tokenizer
from radixlm.runtime.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(demo_model_path())


def _conversations():
    rng = random.Random(7)
    examples = [tasks.training_example(rng) for _ in range(300)]
    examples += [ex for family in tasks.FAMILIES for ex in tasks.heldout_examples(family, 5)]
    return examples


def test_renderer_equals_the_shipped_template(tokenizer):
    for ex in _conversations():
        ours, spans = fmt.render_chat(ex.messages, tools=ex.tools)
        assert ours == tokenizer.apply_chat_template(ex.messages, tools=ex.tools, tokenize=False)
        # the learned spans are exactly the assistant turns' text and their end-of-turn token
        assistant = [m for m in ex.messages if m["role"] == "assistant"]
        assert len(spans) == len(assistant)
        for (a, b), message in zip(spans, assistant):
            assert ours[a:b].endswith(fmt.IM_END)
            assert ours[a:b].startswith(message["content"] or fmt.TOOL_CALL_OPEN)
        prompt, _ = fmt.render_chat(ex.messages[:-1], tools=ex.tools, add_generation_prompt=True)
        assert prompt == tokenizer.apply_chat_template(
            ex.messages[:-1], tools=ex.tools, tokenize=False, add_generation_prompt=True
        )


def test_tool_call_arguments_as_json_text_are_kept_verbatim(tokenizer):
    """An OpenAI client sends a call's arguments back as a JSON string; it renders unchanged."""
    call = {"type": "function", "function": {"name": "calculator", "arguments": '{"expression": "2 * 3"}'}}
    messages = [
        {"role": "user", "content": "Use the calculator: what is 2 * 3?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "6"},
    ]
    text = tokenizer.apply_chat_template(messages, tools=[tasks.CALCULATOR_TOOL], tokenize=False)
    assert text == fmt.render_chat(messages, tools=[tasks.CALCULATOR_TOOL])[0]
    expected_call = '<tool_call>{"name": "calculator", "arguments": {"expression": "2 * 3"}}</tool_call>'
    assert f"<|im_start|>assistant\n{expected_call}<|im_end|>\n" in text
    assert text.endswith(fmt.tool_response_turn("6"))
    assert fmt.tool_call_text("calculator", {"expression": "2 * 3"}) == expected_call


def test_the_dsl_derives_plain_chatml_and_tools_go_in_the_system_turn(tokenizer):
    template = chat_template_from_tokenizer(tokenizer)
    assert template is not None and template.default_system_prompt is None
    assert template.role_prefix_and_suffix["assistant"] == ("<|im_start|>assistant\n", "<|im_end|>\n")
    assert template.stop_str == ("<|im_end|>",)
    # a DSL program's system turn with tools_system_prompt(...) is the template's tools block
    prefix, suffix = template.role_prefix_and_suffix["system"]
    system_text = fmt.tools_system_prompt([tasks.CALCULATOR_TOOL], "Be brief.")
    rendered = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}], tools=[tasks.CALCULATOR_TOOL], tokenize=False
    )
    assert rendered == prefix + system_text + suffix


def test_tool_tags_are_single_ordinary_tokens(tokenizer):
    for tag in fmt.TOOL_TOKENS:
        ids = tokenizer(tag).input_ids
        assert len(ids) == 1
        assert tokenizer.decode(ids, skip_special_tokens=True) == tag  # kept in the output text
    assert len(tokenizer) == 8192
