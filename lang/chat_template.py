"""Chat templates: the text that `system(...)`, `user(...)` and `assistant(...)` wrap around a turn.

A program builds plain text, so a role is a fixed (prefix, suffix) pair around its content. There
are named built-ins, and `chat_template_from_tokenizer` derives the pairs from a Hugging Face
tokenizer's own Jinja template by rendering probe conversations, so the text the program builds
is the text `apply_chat_template` would have produced.

The "tool" role (a tool's result, `tool_response`) is derived only from a template that renders
`tools=` itself; every other template gets the Hermes / Qwen2.5 fallback that the server's tool
calling uses too: a user turn with the result inside <tool_response></tool_response>.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from radixlm.runtime.function_call.hermes_prompt import TOOL_RESPONSE_CLOSE, TOOL_RESPONSE_OPEN

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    role_prefix_and_suffix: dict[str, tuple[str, str]]
    # Inserted as a system turn before the first turn when that turn is not a system turn. "" is
    # meaningful: the template always opens with a (possibly empty) system block.
    default_system_prompt: str | None = None
    # Added to every gen's stop strings so generation ends with the assistant turn.
    stop_str: tuple[str, ...] = ()

    def get_prefix_and_suffix(self, role: str, history: list[dict]) -> tuple[str, str]:
        """(prefix, suffix) for a turn of `role`. `history` (the messages so far) is unused by these
        fixed-pair templates; it is part of the signature for styles that merge turns."""
        try:
            return self.role_prefix_and_suffix[role]
        except KeyError:
            if role == "tool":  # the Hermes fallback, as runtime/entrypoints/tool_serving.py's
                prefix, suffix = self.get_prefix_and_suffix("user", history)
                return prefix + TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE + suffix
            known = ", ".join(sorted(self.role_prefix_and_suffix))
            raise ValueError(f"chat template {self.name!r} has no role {role!r} (known: {known})") from None

    def render(self, messages: Sequence[dict]) -> str:
        """The text the role expressions build for `messages`, default system prompt included."""
        turns = list(messages)
        if turns and turns[0]["role"] != "system" and self.default_system_prompt is not None:
            turns.insert(0, {"role": "system", "content": self.default_system_prompt})
        parts = []
        for i, message in enumerate(turns):
            prefix, suffix = self.get_prefix_and_suffix(message["role"], turns[:i])
            parts.append(prefix + message["content"] + suffix)
        return "".join(parts)


_TEMPLATES: dict[str, ChatTemplate] = {}


def register_chat_template(template: ChatTemplate) -> ChatTemplate:
    """Add (or replace) a named template; returns it so it can be used as an expression."""
    _TEMPLATES[template.name] = template
    return template


def get_chat_template(name: str) -> ChatTemplate:
    try:
        return _TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown chat template {name!r}; known: {', '.join(sorted(_TEMPLATES))}") from None


register_chat_template(
    ChatTemplate(
        name="default",
        role_prefix_and_suffix={
            "system": ("SYSTEM:", "\n"),
            "user": ("USER:", "\n"),
            "assistant": ("ASSISTANT:", "\n"),
        },
    )
)
register_chat_template(
    ChatTemplate(
        name="chatml",
        role_prefix_and_suffix={role: (f"<|im_start|>{role}\n", "<|im_end|>\n") for role in ROLES},
        stop_str=("<|im_end|>",),
    )
)
register_chat_template(
    ChatTemplate(
        name="llama-3-instruct",
        role_prefix_and_suffix={
            role: (f"<|start_header_id|>{role}<|end_header_id|>\n\n", "<|eot_id|>") for role in ROLES
        },
        stop_str=("<|eot_id|>",),
    )
)


# --- Deriving a template from a tokenizer's Jinja chat template ---------------------------------

# Letters and digits only, so templates that trim, strip or escape content leave them whole.
_CONTENT = "Qz7RoleContentMarker"
_SYSTEM_FILL = "Qz7SystemFiller"
_USER_FILL = "Qz7UserFiller"

# Conversations to render before the probed turn, best first. A preceding system turn keeps a
# template from inserting its default system block into the user/assistant probe; the bare
# fallbacks serve templates that reject system turns there.
_SYSTEM = {"role": "system", "content": _SYSTEM_FILL}
_USER = {"role": "user", "content": _USER_FILL}
_PROBE_TOOL = {
    "type": "function",
    "function": {"name": "probe", "parameters": {"type": "object", "properties": {}}},
}
_PROBE_CALL = {
    "role": "assistant",
    "content": "",
    "tool_calls": [{"type": "function", "function": {"name": "probe", "arguments": {}}}],
}
_PROBE_BASES: dict[str, list[list[dict]]] = {
    "system": [[]],
    "user": [[_SYSTEM], []],
    "assistant": [[_SYSTEM, _USER], [_USER]],
}


def chat_template_from_tokenizer(tokenizer: Any, name: str | None = None) -> ChatTemplate | None:
    """The template a Hugging Face tokenizer's `chat_template` describes, or None when it has none
    or it cannot be written as fixed per-role (prefix, suffix) pairs (e.g. Llama-2's system turn
    merged into the first user turn, or a template that rejects a role). Never raises: callers fall
    back to a named built-in."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        return _derive(tokenizer, name or f"tokenizer:{getattr(tokenizer, 'name_or_path', '') or '?'}")
    except Exception:  # a template's own errors (raise_exception, missing keys) mean "cannot derive"
        return None


def _derive(tokenizer: Any, name: str) -> ChatTemplate | None:
    # A leading BOS belongs to the conversation, not to a role, and the runtime's tokenizer adds
    # BOS itself when encoding; keeping it would give a double BOS, so it is dropped.
    bos = getattr(tokenizer, "bos_token", None) or ""

    def render(messages: list[dict], **kw: Any) -> str:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False, **kw)
        if not isinstance(text, str):
            raise TypeError(f"apply_chat_template returned {type(text).__name__}, not str")
        return text

    def drop_bos(text: str) -> str:
        return text[len(bos) :] if bos and text.startswith(bos) else text

    def probe(role: str, base: list[dict], **kw: Any) -> tuple[str, str] | None:
        """The turn's text as the difference between renderings with and without it."""
        before = render(base, **kw) if base else ""
        after = render(base + [{"role": role, "content": _CONTENT}], **kw)
        if not after.startswith(before):
            return None
        piece = after[len(before) :] if base else drop_bos(after)
        # The marker once, and nothing of the earlier turns (a template that folds the system
        # turn into the user turn cannot be expressed as fixed pairs).
        if piece.count(_CONTENT) != 1 or _SYSTEM_FILL in piece or _USER_FILL in piece:
            return None
        prefix, suffix = piece.split(_CONTENT)
        return prefix, suffix

    pairs: dict[str, tuple[str, str]] = {}
    for role, bases in _PROBE_BASES.items():
        for base in bases:
            try:
                pair = probe(role, base)
            except Exception:  # this probe is not accepted by the template; try the next
                pair = None
            if pair is not None:
                pairs[role] = pair
                break
        else:
            return None
    try:
        tool_pair = _probe_tool_turn(render, probe)
    except Exception:  # a template that refuses the probe's tool call or result: the fallback
        tool_pair = None
    if tool_pair is not None:
        pairs["tool"] = tool_pair

    # A lone user turn shows what the template puts before the first turn on its own: nothing,
    # or a default system block (e.g. Qwen's "You are a helpful assistant.").
    user_prefix, user_suffix = pairs["user"]
    alone = drop_bos(render([{"role": "user", "content": _CONTENT}]))
    tail = user_prefix + _CONTENT + user_suffix
    if not alone.endswith(tail):
        return None
    lead = alone[: len(alone) - len(tail)]
    default_system_prompt = None
    if lead:
        system_prefix, system_suffix = pairs["system"]
        if not (
            lead.startswith(system_prefix)
            and lead.endswith(system_suffix)
            and len(lead) >= len(system_prefix) + len(system_suffix)
        ):
            return None  # something other than a system block: not expressible
        default_system_prompt = lead[len(system_prefix) : len(lead) - len(system_suffix)]

    return ChatTemplate(
        name=name,
        role_prefix_and_suffix=pairs,
        default_system_prompt=default_system_prompt,
        stop_str=_stop_strings(tokenizer, pairs["assistant"][1]),
    )


def _probe_tool_turn(render: Any, probe: Any) -> tuple[str, str] | None:
    """The tool turn's pair, from a template that renders `tools=` (else None: the fallback).
    A template without tool support may still render a "tool" turn generically, but the model
    behind it was not shown results that way; the server's fallback is used for it as well."""
    if render([_USER], tools=[_PROBE_TOOL]) == render([_USER]):
        return None
    return probe("tool", [_SYSTEM, _USER, _PROBE_CALL], tools=[_PROBE_TOOL])


def _special_tokens(tokenizer: Any) -> set[str]:
    tokens = set(getattr(tokenizer, "all_special_tokens", None) or ())
    # Chat markers such as Llama-3's <|eot_id|> are often added tokens flagged special without
    # being in the special-tokens map, so all_special_tokens alone misses them.
    for added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(added, "special", False):
            tokens.add(getattr(added, "content", None) or str(added))
    eos = getattr(tokenizer, "eos_token", None)
    if eos:
        tokens.add(eos)
    return {t for t in tokens if t and t.strip()}


def _stop_strings(tokenizer: Any, assistant_suffix: str) -> tuple[str, ...]:
    """The special tokens in the assistant suffix, in order: generating one of them means the
    model closed its turn. Plain-text suffixes (e.g. "\\n") give no stop strings, since they
    also occur inside answers."""
    specials = sorted(_special_tokens(tokenizer), key=len, reverse=True)  # longest match first
    found: list[str] = []
    i = 0
    while i < len(assistant_suffix):
        match = next((t for t in specials if assistant_suffix.startswith(t, i)), None)
        if match is None:
            i += 1
            continue
        if match not in found:
            found.append(match)
        i += len(match)
    return tuple(found)


__all__ = [
    "ChatTemplate",
    "ROLES",
    "chat_template_from_tokenizer",
    "get_chat_template",
    "register_chat_template",
]
