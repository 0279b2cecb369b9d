"""Chat templates: the built-ins, the registry, and deriving role prefixes/suffixes from a
tokenizer's Jinja template (the tiny model's ChatML, plus small hand-written templates)."""

from __future__ import annotations

import pytest
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken

from radixlm.lang.chat_template import (
    ROLES,
    ChatTemplate,
    chat_template_from_tokenizer,
    get_chat_template,
    register_chat_template,
)
from radixlm.runtime.tokenizer import load_tokenizer
from radixlm.testing import build_tiny_model

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3+3?"},
]

# A Llama-3-style template: BOS before the first turn, header tokens, trimmed content.
LLAMA3 = (
    "{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# ChatML that opens with a system block of its own when the conversation has none (Qwen-style).
CHATML_WITH_DEFAULT = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CHATML_REJECTING = (
    "{% for message in messages %}{% if message['role'] == '__ROLE__' %}"
    "{{ raise_exception('__ROLE__ role not supported') }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}"
)

# Llama-2-style: the system turn is folded into the first user turn, so no fixed pairs exist.
LLAMA2_FOLDING = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set sys = '<<SYS>>\n' + messages[0]['content'] + '\n<</SYS>>\n\n' %}{% set rest = messages[1:] %}"
    "{% else %}{% set sys = '' %}{% set rest = messages %}{% endif %}"
    "{% for m in rest %}{% if m['role'] == 'user' %}"
    "{{ '[INST] ' + (sys if loop.first else '') + m['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + m['content'] + ' </s>' }}{% endif %}{% endfor %}"
)


class JinjaTokenizer:
    """Just enough of a Hugging Face tokenizer for chat_template_from_tokenizer."""

    def __init__(
        self,
        template: str | None,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        all_special_tokens: tuple[str, ...] = (),
        added_tokens_decoder: dict | None = None,
    ):
        self.chat_template = template
        self.bos_token, self.eos_token = bos_token, eos_token
        self.all_special_tokens = list(all_special_tokens)
        self.added_tokens_decoder = added_tokens_decoder or {}
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = self._raise
        self._template = env.from_string(template) if template else None

    @staticmethod
    def _raise(message: str):
        raise TemplateError(message)

    def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=False):
        assert not tokenize
        return self._template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
        )


@pytest.fixture(scope="module")
def model_path():
    return build_tiny_model("llama")


@pytest.fixture
def tokenizer(model_path):
    # A fresh load per test, so tests that swap chat_template do not leak into each other.
    return load_tokenizer(model_path)


def render(tok, messages) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)


# --- built-ins and registry ---------------------------------------------------------------------


def test_builtins():
    default = get_chat_template("default")
    assert default.get_prefix_and_suffix("user", []) == ("USER:", "\n")
    assert default.get_prefix_and_suffix("system", []) == ("SYSTEM:", "\n")
    assert default.get_prefix_and_suffix("assistant", []) == ("ASSISTANT:", "\n")
    assert default.stop_str == () and default.default_system_prompt is None
    chatml = get_chat_template("chatml")
    assert chatml.get_prefix_and_suffix("assistant", []) == ("<|im_start|>assistant\n", "<|im_end|>\n")
    assert chatml.stop_str == ("<|im_end|>",)
    llama3 = get_chat_template("llama-3-instruct")
    assert llama3.get_prefix_and_suffix("user", []) == (
        "<|start_header_id|>user<|end_header_id|>\n\n",
        "<|eot_id|>",
    )
    assert llama3.stop_str == ("<|eot_id|>",)


def test_unknown_names_and_roles():
    with pytest.raises(ValueError, match=r"'no-such-template'.*chatml.*default.*llama-3-instruct"):
        get_chat_template("no-such-template")
    with pytest.raises(ValueError, match="'narrator'"):
        get_chat_template("chatml").get_prefix_and_suffix("narrator", [])


def test_register_and_frozen():
    mine = register_chat_template(
        ChatTemplate(
            name="test-brackets",
            role_prefix_and_suffix={r: (f"[{r}]", "[/]") for r in ROLES},
            default_system_prompt="Be nice.",
            stop_str=("[/]",),
        )
    )
    assert get_chat_template("test-brackets") is mine
    assert mine.render([{"role": "user", "content": "hi"}]) == "[system]Be nice.[/][user]hi[/]"
    with pytest.raises(AttributeError):
        mine.name = "other"  # type: ignore[misc]


# --- derived from the tiny model's ChatML template ------------------------------------------------


def test_tiny_model_chatml_matches_builtin(tokenizer):
    derived = chat_template_from_tokenizer(tokenizer)
    chatml = get_chat_template("chatml")
    assert derived is not None
    assert derived.role_prefix_and_suffix == chatml.role_prefix_and_suffix
    assert derived.stop_str == chatml.stop_str
    assert derived.default_system_prompt is None


@pytest.mark.parametrize(
    "conversation",
    [CONVERSATION, CONVERSATION[:3], CONVERSATION[1:2]],
    ids=["4-turns", "3-turns", "user-only"],
)
def test_tiny_model_concatenation_equals_apply_chat_template(tokenizer, conversation):
    derived = chat_template_from_tokenizer(tokenizer)
    pieces = []
    for i, message in enumerate(conversation):
        prefix, suffix = derived.get_prefix_and_suffix(message["role"], conversation[:i])
        pieces.append(prefix + message["content"] + suffix)
    assert "".join(pieces) == render(tokenizer, conversation)
    assert derived.render(conversation) == render(tokenizer, conversation)


def test_template_with_default_system_prompt(tokenizer):
    tokenizer.chat_template = CHATML_WITH_DEFAULT
    derived = chat_template_from_tokenizer(tokenizer, name="qwen-like")
    assert derived.name == "qwen-like"
    assert derived.role_prefix_and_suffix == get_chat_template("chatml").role_prefix_and_suffix
    assert derived.default_system_prompt == "You are a helpful assistant."
    assert derived.stop_str == ("<|im_end|>",)
    # With and without a system turn of our own, the role expressions rebuild the template's text.
    for conversation in (CONVERSATION, CONVERSATION[1:]):
        assert derived.render(conversation) == render(tokenizer, conversation)


def test_template_with_empty_default_system_block():
    tok = JinjaTokenizer(
        CHATML_WITH_DEFAULT.replace("You are a helpful assistant.", ""), eos_token="<|im_end|>"
    )
    derived = chat_template_from_tokenizer(tok)
    assert derived.default_system_prompt == ""  # an empty block is still inserted
    assert derived.render(CONVERSATION[1:]) == tok.apply_chat_template(CONVERSATION[1:], tokenize=False)


def test_llama3_style_template():
    tok = JinjaTokenizer(
        LLAMA3,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        all_special_tokens=("<|begin_of_text|>", "<|eot_id|>"),
    )
    derived = chat_template_from_tokenizer(tok)
    assert derived is not None
    assert derived.role_prefix_and_suffix == get_chat_template("llama-3-instruct").role_prefix_and_suffix
    assert derived.stop_str == ("<|eot_id|>",)
    assert derived.default_system_prompt is None
    # BOS is left to the tokenizer's encode, so the template's text is BOS + the role text.
    assert "<|begin_of_text|>" + derived.render(CONVERSATION) == tok.apply_chat_template(
        CONVERSATION, tokenize=False
    )


def test_stop_token_found_among_added_special_tokens():
    # Llama-3 base tokenizers: eos is <|end_of_text|>; <|eot_id|> is only a special added token.
    tok = JinjaTokenizer(
        LLAMA3,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        all_special_tokens=("<|begin_of_text|>", "<|end_of_text|>"),
        added_tokens_decoder={
            128009: AddedToken("<|eot_id|>", special=True),
            7: AddedToken("<|eot", special=False),
        },
    )
    assert chat_template_from_tokenizer(tok).stop_str == ("<|eot_id|>",)
    # No special token in the suffix: no stop strings (plain text could occur in answers).
    plain = JinjaTokenizer("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}")
    derived = chat_template_from_tokenizer(plain)
    assert derived.get_prefix_and_suffix("user", []) == ("user: ", "\n")
    assert derived.stop_str == ()


@pytest.mark.parametrize("role", ROLES)
def test_template_that_rejects_a_role_gives_none(tokenizer, role):
    tokenizer.chat_template = CHATML_REJECTING.replace("__ROLE__", role)
    with pytest.raises(TemplateError):
        render(tokenizer, [{"role": role, "content": "x"}])  # the real HF path does raise
    assert chat_template_from_tokenizer(tokenizer) is None


@pytest.mark.parametrize(
    "template",
    [
        LLAMA2_FOLDING,  # system folded into the first user turn
        "{{ '[gMASK]<sop>' }}" + CHATML_REJECTING.replace("__ROLE__", "nobody"),  # a non-BOS preamble
        "{{ messages[0]['content'] }}",  # ignores roles entirely
        "{% for m in messages %}{{ m['content'] + m['content'] }}{% endfor %}",  # content twice
    ],
)
def test_unrepresentable_templates_give_none(template):
    assert chat_template_from_tokenizer(JinjaTokenizer(template)) is None


def test_no_template_or_broken_tokenizer_gives_none():
    assert chat_template_from_tokenizer(JinjaTokenizer(None)) is None
    assert chat_template_from_tokenizer(object()) is None

    class Exploding(JinjaTokenizer):
        def apply_chat_template(self, *args, **kwargs):
            raise RuntimeError("boom")

    assert chat_template_from_tokenizer(Exploding("{{ x }}")) is None

    class NotText(JinjaTokenizer):
        def apply_chat_template(self, *args, **kwargs):
            return [1, 2, 3]

    assert chat_template_from_tokenizer(NotText("{{ x }}")) is None
