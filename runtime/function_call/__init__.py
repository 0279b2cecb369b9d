"""The model-output side of OpenAI tool calling: `parsers` turns a finished output into
content and tool calls for one model family's format (hermes for Hermes/Qwen2.5/Qwen3, llama3
for Llama 3.1+ JSON calls, mistral for `[TOOL_CALLS]`), `detect_parser` picks the family from
a chat template; `streaming` does the same incrementally, emitting OpenAI-style content and
tool-call deltas that reassemble to exactly the non-streamed result; `tool_grammar` checks a
request's `tools` and `tool_choice` and builds the regex that forces a valid call when
tool_choice is "required" or names a function. Malformed calls are content, never errors.
`reasoning` splits a `<think>` model's output into reasoning and content (whole or streamed),
before any tool call is looked for.
"""

from radixlm.runtime.function_call.parsers import (
    PARSERS,
    HermesParser,
    Llama3Parser,
    MistralParser,
    ParsedCall,
    ToolCallParser,
    detect_parser,
    get_parser,
)
from radixlm.runtime.function_call.reasoning import (
    REASONING_PARSERS,
    Opening,
    ReasoningDelta,
    ReasoningParser,
    ReasoningStream,
    get_reasoning_parser,
    prompt_reasoning,
)
from radixlm.runtime.function_call.streaming import (
    ContentDelta,
    StreamEvent,
    ToolCallDelta,
    ToolCallStream,
    new_call_id,
    reassemble,
)
from radixlm.runtime.function_call.tool_grammar import (
    ToolChoice,
    check_tool_choice,
    forced_call_constraint,
    parallel_calls,
    strict_tool_tag,
    tool_call_regex,
    validate_tools,
)

__all__ = [
    "PARSERS",
    "REASONING_PARSERS",
    "ContentDelta",
    "HermesParser",
    "Llama3Parser",
    "MistralParser",
    "Opening",
    "ParsedCall",
    "ReasoningDelta",
    "ReasoningParser",
    "ReasoningStream",
    "StreamEvent",
    "ToolCallDelta",
    "ToolCallParser",
    "ToolCallStream",
    "ToolChoice",
    "check_tool_choice",
    "detect_parser",
    "forced_call_constraint",
    "get_parser",
    "get_reasoning_parser",
    "new_call_id",
    "parallel_calls",
    "prompt_reasoning",
    "reassemble",
    "strict_tool_tag",
    "tool_call_regex",
    "validate_tools",
]
