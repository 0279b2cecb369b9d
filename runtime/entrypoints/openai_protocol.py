"""HTTP request bodies (pydantic) for the native and OpenAI-compatible routes, and their
translation into radixlm sampling parameters.

OpenAI routes ignore fields they do not know (clients send many); fields they do know are
type-checked, and features radixlm does not support yet are refused by name rather than
silently ignored. The native /generate route refuses unknown fields too (SGLang's own fields
it keeps for sglang_compat to judge).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class StreamOptions(BaseModel):
    include_usage: bool = False


class _OpenAISampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = "default"
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    # extensions that SGLang and vLLM users know
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    no_stop_trim: bool = False
    stop_token_ids: list[int] | None = None
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, Any] | None = None
    regex: str | None = None
    json_schema: Any = None
    # grammars: `ebnf` (SGLang: GBNF text) and `grammar` (Lark); vLLM's guided_* spellings
    ebnf: str | None = None
    grammar: str | None = None
    guided_regex: str | None = None
    guided_json: Any = None
    guided_grammar: str | None = None

    def unsupported(self) -> str | None:
        if self.logit_bias:
            return "logit_bias is not supported"
        try:
            self.constraint()
        except ValueError as exc:
            return str(exc)
        return None

    def constraint(self) -> dict[str, Any]:
        """The constraint sampling parameter this request asks for, from `response_format`
        (OpenAI's types, and SGLang's `structural_tag`) or the extensions: `regex`,
        `json_schema`, `ebnf`, `grammar` (SGLang) and `guided_regex`, `guided_json`,
        `guided_grammar` (vLLM; a Lark or GBNF grammar)."""
        found: dict[str, Any] = {}
        extensions = [
            ("regex", self.regex),
            ("json_schema", self.json_schema),
            ("ebnf", self.ebnf),
            ("grammar", self.grammar),
            ("regex", self.guided_regex),
            ("json_schema", self.guided_json),
            ("grammar", self.guided_grammar),
        ]
        given = [(name, value) for name, value in extensions if value is not None]
        if len(given) > 1:
            raise ValueError("give at most one of response_format, regex, json_schema, ebnf and grammar")
        found.update(given)
        fmt = self.response_format
        if fmt is not None:
            kind = fmt.get("type")
            if kind == "json_object":
                found["json_schema"] = {"type": "object"}
            elif kind == "json_schema":
                spec = fmt.get("json_schema")
                if not isinstance(spec, dict) or not isinstance(spec.get("schema"), (dict, bool)):
                    raise ValueError(
                        "response_format json_schema needs {'json_schema': {'name': ..., 'schema': {...}}}"
                    )
                found["json_schema"] = spec["schema"]
            elif kind == "structural_tag":  # SGLang's: {"type", "structures", "triggers"}
                found["structural_tag"] = {k: v for k, v in fmt.items() if k != "type"}
            elif kind not in (None, "text"):
                raise ValueError(
                    "response_format type must be 'text', 'json_object', 'json_schema' or 'structural_tag', "
                    f"got {kind!r}"
                )
        if len(found) > 1 or (fmt is not None and fmt.get("type") not in (None, "text") and given):
            raise ValueError("give at most one of response_format, regex, json_schema, ebnf and grammar")
        return found

    def sampling_params(self, max_tokens: int | None) -> dict[str, Any]:
        params: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "repetition_penalty": self.repetition_penalty,
            "min_new_tokens": self.min_tokens,
            "ignore_eos": self.ignore_eos,
            "skip_special_tokens": self.skip_special_tokens,
            "no_stop_trim": self.no_stop_trim,
            "stop": self.stop,
            "stop_token_ids": self.stop_token_ids,
            "seed": self.seed,
            "n": self.n,
            **self.constraint(),
        }
        if max_tokens is not None:
            params["max_new_tokens"] = max_tokens
        return params


class CompletionRequest(_OpenAISampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=0)
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None

    def unsupported(self) -> str | None:
        if self.suffix:
            return "suffix is not supported"
        return super().unsupported()


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ToolCallFunction(BaseModel):
    name: str
    arguments: str  # JSON text, as OpenAI sends it back


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool message: the call it answers
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_OpenAISampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=0)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = None
    # tool calling: checked by runtime/function_call (validate_tools, check_tool_choice)
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    # variables for the chat template (SGLang's and vLLM's name), e.g. {"enable_thinking": false}
    chat_template_kwargs: dict[str, Any] | None = None
    # with --reasoning-parser: reasoning in message.reasoning_content (false: left in content)
    separate_reasoning: bool = True


class GenerateRequest(BaseModel):
    """The native /generate body (SGLang's field names).

    Fields beyond these are kept (`model_extra`) for sglang_compat to judge: SGLang's fields
    that radixlm does not act on pass only with their "off" value, and any other field is
    refused by name, as extra="forbid" would."""

    model_config = ConfigDict(extra="allow")

    text: str | list[str] | None = None
    input_ids: list[int] | list[list[int]] | None = None
    # one value for all prompts, or a list with one per prompt (a batch)
    sampling_params: dict[str, Any] | list[dict[str, Any]] = Field(default_factory=dict)
    return_logprob: bool | list[bool] = False
    logprob_start_len: int | None | list[int | None] = None
    top_logprobs_num: int | list[int] = 0
    return_text_in_logprobs: bool = False
    stream: bool = False
    # one id, or one per prompt of a batch (sample k of an n > 1 request gets "<rid>-<k>")
    rid: str | list[str] | None = None

    @field_validator(
        "sampling_params",
        "return_logprob",
        "top_logprobs_num",
        "return_text_in_logprobs",
        "stream",
        mode="before",
    )
    @classmethod
    def _null_is_default(cls, value: Any, info: ValidationInfo) -> Any:
        # SGLang clients send null for "the default" (sgl.Runtime.generate sends
        # top_logprobs_num=None); a null here means exactly that
        if value is None:
            return {} if info.field_name == "sampling_params" else cls.model_fields[info.field_name].default
        return value


class ConcatAndAppendRequest(BaseModel):
    """What SGLang's frontend sends when a program joins its forks with
    `join(mode="concate_and_append")`: the forks' state ids and the destination's."""

    model_config = ConfigDict(extra="forbid")

    src_rids: list[str] = Field(min_length=1)
    dst_rid: str


class TokenizeRequest(BaseModel):
    """The /tokenize body: the text to tokenise as a prompt, under `text` (the native name) or
    `prompt` (vLLM's), exactly one of them."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    prompt: str | None = None


def finish_reason_name(reason: dict | None) -> str | None:
    if not reason:
        return None
    kind = reason.get("type")
    if kind == "length":
        return "length"
    if kind == "abort":
        return "abort"
    return "stop"
