"""Messages between the runtime's processes and its clients: msgspec structs, msgpack-encoded.

Every message is a tagged struct, so one decoder per socket turns bytes into exactly one
of the types that socket may carry, or raises `msgspec.DecodeError`/`ValidationError` for
anything else. Nothing is ever unpickled: a hostile message fails to decode, it does not
run code.

    tokenizer manager --ToScheduler--> scheduler --TokenOutputBatch--> detokenizer
          ^      \\______________________________/ (control replies)          |
          +-------------------------- TextOutputBatch ------------------------+
    clients --ClientRequest--> tokenizer manager (ROUTER) --ClientReply--> clients
"""

from __future__ import annotations

from typing import Any

import msgspec

from radixlm.runtime.layers.sampling import SamplingParams
from radixlm.runtime.managers.frame_errors import explain_decode_failure

# Upper bound on one message; bigger frames are refused before decoding.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class Msg(msgspec.Struct, tag=True, forbid_unknown_fields=True):
    """Base: subclasses are tagged with their class name."""


# --------------------------------------------------------------------- to the scheduler
class GenerateReq(Msg):
    rid: str
    input_ids: list[int]
    sampling_params: SamplingParams
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    stream: bool = False
    seed: int = 0


class AbortReq(Msg):
    rid: str
    message: str = "aborted"


class ControlReq(Msg):
    """flush_cache | server_info | health | check_accounting | cache_snapshot | shutdown"""

    rid: str
    op: str
    args: dict[str, int | str] = {}  # the operation's options (cache_snapshot: its limits)


ToScheduler = GenerateReq | AbortReq | ControlReq


# --------------------------------------------------------------------- scheduler -> detokenizer
class TokenOutput(msgspec.Struct):
    rid: str
    new_ids: list[int]  # output ids since the last message for this rid
    finished_reason: dict[str, Any] | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    retractions: int = 0
    jump_forward_tokens: int | None = None  # constrained requests: output tokens not sampled
    # speculative decoding on: draft tokens proposed for this request, and those accepted
    spec_proposed_tokens: int | None = None
    spec_accepted_tokens: int | None = None
    skip_special_tokens: bool = True
    no_stop_trim: bool = False
    stop_strs: list[str] = []
    min_new_tokens: int = 0
    stream: bool = False
    # logprobs new since the last message (None when not requested)
    input_token_logprobs: list[tuple[float | None, int]] | None = None
    input_top_logprobs: list[list[tuple[int, float]] | None] | None = None
    output_token_logprobs: list[tuple[float, int]] | None = None
    output_top_logprobs: list[list[tuple[int, float]]] | None = None


class TokenOutputBatch(Msg):
    outputs: list[TokenOutput]


class ControlReply(Msg):
    rid: str
    op: str
    ok: bool
    data: dict[str, Any] = {}
    error: str = ""


class ShutdownAck(Msg):
    process: str


class RequestsDone(Msg):
    """Data parallel: a replica tells the router which of its requests finished (its load)."""

    rids: list[str]


ToRouter = ControlReply | ShutdownAck | RequestsDone  # a replica's replies, to the router


# --------------------------------------------------------------------- detokenizer -> tokenizer manager
class TextOutput(msgspec.Struct):
    rid: str
    text_delta: str
    token: TokenOutput


class TextOutputBatch(Msg):
    outputs: list[TextOutput]


ToTokenizerManager = TextOutputBatch | ControlReply | ShutdownAck


# --------------------------------------------------------------------- clients <-> tokenizer manager
class ClientGenerate(Msg):
    rid: str
    text: str | None = None
    input_ids: list[int] | None = None
    sampling_params: dict[str, Any] = {}
    return_logprob: bool = False
    logprob_start_len: int | None = None
    top_logprobs_num: int = 0
    stream: bool = False


class ClientBatch(Msg):
    """Several non-streaming generate requests sent together, so the scheduler sees them
    at once (select scores all its choices this way); one ClientResult with every output."""

    rid: str
    requests: list[ClientGenerate]


class ClientGroup(Msg):
    """Independent non-streaming requests that left a client together (run_batch's gathered
    requests, client/request_gather.py): one frame, each request answered alone on its rid,
    as if each had come in a frame of its own."""

    requests: list[ClientGenerate | ClientBatch]


class ClientAbort(Msg):
    rid: str


class ClientControl(Msg):
    rid: str
    op: str  # flush_cache | server_info | health


class ClientTokenize(Msg):
    """Tokenise `text` exactly as a text prompt is tokenised (the DSL's cache report reads where
    a prompt left the cached prefix). The endpoint answers it with the tokenizer manager's
    tokenizer; it never reaches the scheduler. Answered by a ClientResult whose data is
    {"input_ids": [...], "offsets": [[start, end], ...]} (character spans in `text`)."""

    rid: str
    text: str


ClientRequest = ClientGenerate | ClientBatch | ClientGroup | ClientAbort | ClientControl | ClientTokenize


class ClientChunk(Msg):
    """A streamed delta, or (finished=True) the last message for a generate request."""

    rid: str
    text: str  # streaming: the new text; final: the whole text
    output_ids: list[int]
    meta_info: dict[str, Any]
    finished: bool


class ClientResult(Msg):
    rid: str
    ok: bool
    data: dict[str, Any] = {}
    error: str = ""


ClientReply = ClientChunk | ClientResult


# What decoding a bad frame raises, and all it may raise (see SafeDecoder).
DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError)


class SafeDecoder:
    """A msgpack decoder for one union of message types. Every failure is raised as
    `msgspec.DecodeError` whose text says in our words what is wrong and where (see
    frame_errors), so a receive loop catches DECODE_ERRORS only and what it reports does not
    change with msgspec's wording. (msgspec raises UnicodeDecodeError for invalid UTF-8 in
    some releases and RecursionError for absurd nesting: those are caught here too.)"""

    def __init__(self, kind: Any) -> None:
        self._kind = kind
        self._dec = msgspec.msgpack.Decoder(kind)

    def decode(self, frame: bytes) -> Any:
        try:
            return self._dec.decode(frame)
        except (
            *DECODE_ERRORS,
            UnicodeDecodeError,
            RecursionError,
            ValueError,
            TypeError,
            OverflowError,
        ) as exc:
            text = explain_decode_failure(frame, self._kind, f"{type(exc).__name__}: {exc}")
            raise msgspec.DecodeError(text) from None


def encoder() -> msgspec.msgpack.Encoder:
    return msgspec.msgpack.Encoder()


def decoder(kind: Any) -> SafeDecoder:
    return SafeDecoder(kind)
