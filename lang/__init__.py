"""The prompt-program DSL: `@function` programs with gen, select, roles, tools and fork/join."""

from radixlm.lang.api import (
    assistant,
    assistant_begin,
    assistant_end,
    flush_cache,
    gen,
    gen_int,
    gen_string,
    get_default_backend,
    get_server_info,
    global_config,
    select,
    set_default_backend,
    system,
    system_begin,
    system_end,
    user,
    user_begin,
    user_end,
)
from radixlm.lang.cache_report import CacheReportRow
from radixlm.lang.choices import (
    greedy_token_selection,
    token_length_normalized,
    unconditional_likelihood_normalized,
)
from radixlm.lang.interpreter import ProgramError
from radixlm.lang.ir import REGEX_BOOL, REGEX_FLOAT, REGEX_INT, REGEX_STR
from radixlm.lang.program import SglFunction, function
from radixlm.lang.program_state import ProgramState, ProgramStateGroup
from radixlm.lang.tools import ToolCall, ToolReply, run_tool_call, tool_response, tool_spec, tools_prompt

__all__ = [
    "SglFunction",
    "function",
    "gen",
    "gen_int",
    "gen_string",
    "select",
    "system",
    "user",
    "assistant",
    "system_begin",
    "system_end",
    "user_begin",
    "user_end",
    "assistant_begin",
    "assistant_end",
    "set_default_backend",
    "get_default_backend",
    "global_config",
    "flush_cache",
    "get_server_info",
    "ProgramState",
    "ProgramStateGroup",
    "ProgramError",
    "CacheReportRow",
    "token_length_normalized",
    "greedy_token_selection",
    "unconditional_likelihood_normalized",
    "REGEX_INT",
    "REGEX_FLOAT",
    "REGEX_BOOL",
    "REGEX_STR",
    "tools_prompt",
    "tool_response",
    "tool_spec",
    "run_tool_call",
    "ToolCall",
    "ToolReply",
]
