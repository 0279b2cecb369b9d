"""The wire protocol: every message type round-trips through the msgpack encoder and the
decoder of the socket that carries it; anything else (garbage, truncated frames, valid
msgpack of the wrong shape, a message type the socket does not carry, pickles) fails with
msgspec.DecodeError / ValidationError and runs nothing; no runtime code unpickles or evals."""

from __future__ import annotations

import math
import pickle
import random
import re
import sys
from pathlib import Path

import msgspec
import pytest

import radixlm
from radixlm.runtime.layers.sampling import SamplingParams
from radixlm.runtime.managers import messages as P

PKG_ROOT = Path(radixlm.__file__).resolve().parent  # the repo root is the package
DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError)

# The union each socket decodes with (see the decoder(...) calls in runtime/).
DETOK_UNION = P.TokenOutputBatch | P.ControlReq  # detokenizer.py
SOCKETS = {
    "scheduler": P.ToScheduler,  # scheduler_process.py
    "detokenizer": DETOK_UNION,
    "tokenizer_manager": P.ToTokenizerManager,  # tokenizer_manager.py
    "client_endpoint": P.ClientRequest,  # client_endpoint.py
    "client": P.ClientReply,  # client.py
    "router": P.ToRouter,  # router.py: what data-parallel replicas send back
}


def _members(union) -> set[type]:
    return set(getattr(union, "__args__", (union,)))


# ------------------------------------------------------------------------------ sample messages
def _token_output(**kw) -> P.TokenOutput:
    base = dict(
        rid="r1",
        new_ids=[5, 6, 7],
        finished_reason=None,
        prompt_tokens=3,
        completion_tokens=3,
        cached_tokens=1,
    )
    base.update(kw)
    return P.TokenOutput(**base)


FULL_TOKEN_OUTPUT = _token_output(
    finished_reason={"type": "stop", "matched": "\n\n"},
    retractions=2,
    skip_special_tokens=False,
    no_stop_trim=True,
    stop_strs=["\n\n", "END"],
    stream=True,
    input_token_logprobs=[(None, 11), (-0.25, 12), (-math.inf, 13)],
    input_top_logprobs=[None, [(12, -0.25), (40, -3.5)], None],
    output_token_logprobs=[(-0.5, 5), (-1e-9, 6), (0.0, 7)],
    output_top_logprobs=[[(5, -0.5), (8, -1.5)], [(6, -1e-9)], []],
)

SAMPLES: list[tuple[str, object]] = [
    ("GenerateReq/defaults", P.GenerateReq(rid="a", input_ids=[1, 2, 3], sampling_params=SamplingParams())),
    (
        "GenerateReq/stop-str",
        P.GenerateReq(
            rid="b",
            input_ids=[4, 8191, 0],
            sampling_params=SamplingParams(
                max_new_tokens=7,
                min_new_tokens=2,
                temperature=0.7,
                top_p=0.9,
                top_k=40,
                min_p=0.05,
                frequency_penalty=-0.5,
                presence_penalty=1.5,
                repetition_penalty=1.2,
                stop="\n",
                stop_token_ids=[2, 3],
                ignore_eos=True,
                skip_special_tokens=False,
                no_stop_trim=True,
                n=3,
                seed=2**62,
            ),
            return_logprob=True,
            logprob_start_len=1,
            top_logprobs_num=5,
            stream=True,
            seed=-7,
        ),
    ),
    (
        "GenerateReq/stop-list",
        P.GenerateReq(
            rid="c",
            input_ids=[9],
            sampling_params=SamplingParams(stop=["END", "日本", "🙂"], temperature=0.0, seed=None),
        ),
    ),
    ("AbortReq", P.AbortReq(rid="a")),
    ("AbortReq/message", P.AbortReq(rid="a", message="client disconnected")),
    ("ControlReq", P.ControlReq(rid="x", op="flush_cache")),
    ("TokenOutputBatch/empty", P.TokenOutputBatch(outputs=[])),
    ("TokenOutputBatch/minimal", P.TokenOutputBatch(outputs=[_token_output()])),
    (
        "TokenOutputBatch/full",
        P.TokenOutputBatch(
            outputs=[
                FULL_TOKEN_OUTPUT,
                _token_output(
                    rid="r2",
                    new_ids=[],
                    finished_reason={"type": "abort", "message": "bad", "status_code": 400},
                ),
            ]
        ),
    ),
    (
        "ControlReply",
        P.ControlReply(
            rid="x",
            op="server_info",
            ok=True,
            data={"running": 0, "cache_hit_rate": 0.5, "device": "cpu", "nested": [1, [2]]},
        ),
    ),
    ("ControlReply/error", P.ControlReply(rid="x", op="flush_cache", ok=False, error="busy")),
    ("ShutdownAck", P.ShutdownAck(process="scheduler")),
    ("RequestsDone", P.RequestsDone(rids=["r1", "r2"])),
    (
        "TextOutputBatch",
        P.TextOutputBatch(
            outputs=[
                P.TextOutput(rid="r1", text_delta="héllo 日本語 🙂", token=FULL_TOKEN_OUTPUT),
                P.TextOutput(rid="r2", text_delta="", token=_token_output(rid="r2")),
            ]
        ),
    ),
    (
        "ClientGenerate/text",
        P.ClientGenerate(
            rid="c1", text="Hello", sampling_params={"max_new_tokens": 8, "temperature": 0, "stop": "\n"}
        ),
    ),
    (
        "ClientGenerate/ids",
        P.ClientGenerate(
            rid="c2",
            input_ids=[5, 6],
            sampling_params={"stop": ["a", "b"], "top_p": 0.5, "seed": None},
            return_logprob=True,
            logprob_start_len=0,
            top_logprobs_num=3,
            stream=True,
        ),
    ),
    ("ClientGenerate/defaults", P.ClientGenerate(rid="c3")),
    (
        "ClientBatch",
        P.ClientBatch(
            rid="b1",
            requests=[
                P.ClientGenerate(
                    rid="c5",
                    text="a",
                    sampling_params={"max_new_tokens": 0},
                    return_logprob=True,
                    logprob_start_len=0,
                ),
                P.ClientGenerate(rid="c6", input_ids=[1, 2, 3]),
            ],
        ),
    ),
    (
        "ClientGroup",
        P.ClientGroup(
            requests=[
                P.ClientGenerate(rid="c7", text="a", sampling_params={"max_new_tokens": 1}),
                P.ClientBatch(rid="b2", requests=[P.ClientGenerate(rid="c8", input_ids=[4])]),
            ]
        ),
    ),
    ("ClientAbort", P.ClientAbort(rid="c1")),
    ("ClientControl", P.ClientControl(rid="c4", op="server_info")),
    ("ClientTokenize", P.ClientTokenize(rid="c9", text="Hello ☕\n")),
    (
        "ClientChunk",
        P.ClientChunk(
            rid="c1",
            text="abc",
            output_ids=[1, 2],
            finished=True,
            meta_info={
                "id": "c1",
                "prompt_tokens": 2,
                "finish_reason": {"type": "length", "length": 2},
                "input_token_logprobs": [[None, 5], [-0.5, 6]],
                "output_top_logprobs": [None, [[1, -0.1]]],
                "e2e_latency": 0.125,
            },
        ),
    ),
    ("ClientChunk/stream", P.ClientChunk(rid="c1", text="", output_ids=[], meta_info={}, finished=False)),
    ("ClientResult", P.ClientResult(rid="c4", ok=True, data={"running": 0})),
    ("ClientResult/error", P.ClientResult(rid="", ok=False, error="undecodable message")),
]


def _unions_carrying(msg_type: type) -> list[str]:
    return [name for name, union in SOCKETS.items() if msg_type in _members(union)]


def test_samples_cover_every_message_type():
    tagged = set()
    stack = [P.Msg]
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            tagged.add(sub)
            stack.append(sub)
    sampled = {type(m) for _, m in SAMPLES}
    assert tagged - sampled == set(), f"message types without a round-trip sample: {tagged - sampled}"
    # every tagged message is carried by at least one socket
    for cls in tagged:
        assert _unions_carrying(cls), f"{cls.__name__} is in no socket's union"


@pytest.mark.parametrize("name,msg", SAMPLES, ids=[n for n, _ in SAMPLES])
def test_round_trip(name, msg):
    enc = P.encoder()
    data = enc.encode(msg)
    assert isinstance(data, bytes) and len(data) < P.MAX_MESSAGE_BYTES
    sockets = _unions_carrying(type(msg))
    assert sockets
    for sock in sockets:
        back = P.decoder(SOCKETS[sock]).decode(data)
        assert type(back) is type(msg), sock
        assert back == msg, sock
        # re-encoding the decoded message is byte-identical
        assert enc.encode(back) == data


def test_sampling_params_stop_forms_round_trip():
    enc, dec = P.encoder(), P.decoder(P.ToScheduler)
    for stop in (None, "\n", "日本語", ["\n\n", "END", "🙂"], []):
        sp = SamplingParams(stop=stop, stop_token_ids=[2] if stop else None, temperature=0.0)
        back = dec.decode(enc.encode(P.GenerateReq(rid="s", input_ids=[1], sampling_params=sp)))
        assert back.sampling_params == sp
        assert type(back.sampling_params.stop) is type(stop)
        assert back.sampling_params.stop_strs == sp.stop_strs


def test_logprob_none_entries_round_trip():
    dec = P.decoder(DETOK_UNION)
    back = dec.decode(P.encoder().encode(P.TokenOutputBatch(outputs=[FULL_TOKEN_OUTPUT])))
    out = back.outputs[0]
    assert out.input_token_logprobs[0] == (None, 11)
    assert out.input_token_logprobs[2][0] == -math.inf
    assert out.input_top_logprobs[0] is None and out.input_top_logprobs[2] is None
    assert out.input_top_logprobs[1] == [(12, -0.25), (40, -3.5)]
    assert isinstance(out.output_token_logprobs[0], tuple)
    assert out.output_top_logprobs[2] == []


def test_floats_are_bit_exact():
    rng = random.Random(0)
    vals = [rng.uniform(-30, 0) for _ in range(200)] + [-0.0, 5e-324, -1.7976931348623157e308]
    tok = _token_output(output_token_logprobs=[(v, i) for i, v in enumerate(vals)])
    back = P.decoder(DETOK_UNION).decode(P.encoder().encode(P.TokenOutputBatch([tok])))
    got = [v for v, _ in back.outputs[0].output_token_logprobs]
    assert got == vals
    assert math.copysign(1.0, got[200]) == -1.0  # -0.0 keeps its sign


# ------------------------------------------------------------------------------ what must not decode
def _assert_rejected(dec, data: bytes):
    try:
        dec.decode(data)
    except DECODE_ERRORS:
        return
    except BaseException as exc:
        raise AssertionError(
            f"{type(exc).__name__} (not DecodeError/ValidationError) for {data[:40]!r}: {exc}"
        ) from exc
    raise AssertionError(f"decoded without error: {data[:60]!r}")


def test_message_types_outside_the_union_are_rejected():
    enc = P.encoder()
    for _, msg in SAMPLES:
        data = enc.encode(msg)
        for _sock, union in SOCKETS.items():
            if type(msg) not in _members(union):
                _assert_rejected(P.decoder(union), data)


@pytest.mark.parametrize("sock", list(SOCKETS))
def test_truncated_frames_are_rejected(sock):
    dec = P.decoder(SOCKETS[sock])
    enc = P.encoder()
    for _, msg in SAMPLES:
        data = enc.encode(msg)
        for cut in range(len(data)):  # every proper prefix, including b""
            _assert_rejected(dec, data[:cut])
        _assert_rejected(dec, data + b"\x00")  # trailing bytes
        _assert_rejected(dec, data + data)


@pytest.mark.parametrize("sock", list(SOCKETS))
def test_random_garbage_is_rejected(sock):
    dec = P.decoder(SOCKETS[sock])
    rng = random.Random(1234)
    for _ in range(3000):
        _assert_rejected(dec, rng.randbytes(rng.randint(0, 300)))
    # single bytes, every one
    for b in range(256):
        _assert_rejected(dec, bytes([b]))
    # lengths that promise far more data than present
    for head in (
        b"\xdc\xff\xff",
        b"\xdd\xff\xff\xff\xff",
        b"\xde\xff\xff",
        b"\xdf\xff\xff\xff\xff",
        b"\xdb\xff\xff\xff\xff",
        b"\xc6\xff\xff\xff\xff",
        b"\xc9\xff\xff\xff\xff\x01",
    ):
        _assert_rejected(dec, head)


def _wrong_shapes() -> list[object]:
    """Valid msgpack values that are not any message."""
    return [
        None,
        0,
        -1,
        2**64 - 1,
        1.5,
        True,
        "GenerateReq",
        b"bytes",
        [],
        [1, 2, 3],
        ["ClientGenerate", "r"],
        {},
        {"type": None},
        {"type": 5},
        {"type": "Nope"},
        {"type": "Msg"},
        {"type": "SamplingParams"},
        {"type": "TokenOutput", "rid": "x"},
        {"type": "TextOutput"},
        {"rid": "x", "op": "server_info"},  # no tag
        {"type": "ClientControl"},  # missing fields
        {"type": "ClientControl", "rid": 5, "op": "server_info"},  # wrong field type
        {"type": "ClientControl", "rid": "x", "op": "server_info", "evil": 1},  # unknown field
        {"type": "ClientGenerate", "rid": "x", "input_ids": "abc"},
        {"type": "ClientGenerate", "rid": "x", "input_ids": [1.5]},
        {"type": "ClientGenerate", "rid": "x", "sampling_params": [1, 2]},
        {"type": "ClientGenerate", "rid": "x", "sampling_params": {1: 2}},
        {"type": "ClientGenerate", "rid": "x", "stream": "yes"},
        {"type": "ClientAbort"},
        {"type": "ClientChunk", "rid": "x", "text": 1, "output_ids": [], "meta_info": {}, "finished": True},
        {"type": "ClientResult", "rid": "x", "ok": "true"},
        {"type": "GenerateReq", "rid": "x", "input_ids": [1], "sampling_params": {"temperature": "hot"}},
        {"type": "GenerateReq", "rid": "x", "input_ids": [1], "sampling_params": {"stop": 5}},
        {"type": "GenerateReq", "rid": "x", "input_ids": [1.5], "sampling_params": {}},
        {"type": "GenerateReq", "rid": "x", "input_ids": [1]},
        {"type": "AbortReq", "rid": ["x"]},
        {"type": "ControlReq", "rid": "x"},
        {"type": "TokenOutputBatch", "outputs": [{"rid": "x"}]},
        {
            "type": "TokenOutputBatch",
            "outputs": [
                {
                    "rid": "x",
                    "new_ids": [],
                    "finished_reason": None,
                    "prompt_tokens": 1,
                    "completion_tokens": 0,
                    "cached_tokens": 0,
                    "input_token_logprobs": [[1.0]],
                }
            ],
        },
        {"type": "TokenOutputBatch", "outputs": {"rid": "x"}},
        {"type": "TextOutputBatch", "outputs": [{"rid": "x", "text_delta": "a"}]},
        {"type": "ShutdownAck", "process": None},
        {"type": "ControlReply", "rid": "x", "op": "o", "ok": True, "data": []},
        msgspec.msgpack.Ext(1, b"\x80\x04"),
        {"type": "ClientControl", "rid": msgspec.msgpack.Ext(5, b"x"), "op": "health"},
    ]


@pytest.mark.parametrize("sock", list(SOCKETS))
def test_valid_msgpack_of_the_wrong_shape_is_rejected(sock):
    dec = P.decoder(SOCKETS[sock])
    for value in _wrong_shapes():
        _assert_rejected(dec, msgspec.msgpack.encode(value))


class _Exploit:
    def __reduce__(self):
        return (exec, ("import sys; sys._radixlm_protocol_pwned = True",))


@pytest.mark.parametrize("sock", list(SOCKETS))
def test_pickles_do_not_decode_or_run(sock):
    dec = P.decoder(SOCKETS[sock])
    for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
        for obj in (_Exploit(), {"type": "ClientControl", "rid": "x", "op": "health"}):
            _assert_rejected(dec, pickle.dumps(obj, protocol=proto))
    assert not hasattr(sys, "_radixlm_protocol_pwned")


# Frames whose only fault is a msgpack str that is not UTF-8. msgspec raises UnicodeDecodeError
# (a ValueError, not a msgspec error) for these: see the xfail tests below.
E = msgspec.msgpack.encode
# per socket: a message type it carries, and that type's string field
_STR_FIELD_MSG = {
    "client_endpoint": ("ClientControl", "rid", {"op": "health"}),
    "scheduler": ("ControlReq", "rid", {"op": "health"}),
    "detokenizer": ("ControlReq", "op", {"rid": "x"}),
    "tokenizer_manager": ("ShutdownAck", "process", {}),
}


def bad_utf8_frames(sock: str) -> dict[str, bytes]:
    tag, field, rest = _STR_FIELD_MSG[sock]
    tail = b"".join(E(k) + E(v) for k, v in rest.items())
    head = bytes([0x80 + 2 + len(rest)]) + E("type")
    return {
        "field": head + E(tag) + E(field) + b"\xa1\xff" + tail,
        "surrogate": head + E(tag) + E(field) + b"\xa3\xed\xa0\x80" + tail,
        "truncated-char": head + E(tag) + E(field) + b"\xa2a\xe6" + tail,
        "tag": head + b"\xa2\xc3\x28" + E(field) + E("x") + tail,
    }


def test_bad_utf8_frames_are_otherwise_valid():
    for sock in _STR_FIELD_MSG:
        for data in bad_utf8_frames(sock).values():
            fixed = data.replace(b"\xa1\xff", E("x")).replace(b"\xa3\xed\xa0\x80", E("x"))
            fixed = fixed.replace(b"\xa2a\xe6", E("x")).replace(b"\xa2\xc3\x28", E(_STR_FIELD_MSG[sock][0]))
            assert type(P.decoder(SOCKETS[sock]).decode(fixed)).__name__ == _STR_FIELD_MSG[sock][0]


DECODE_OR_UTF8_ERRORS = DECODE_ERRORS + (UnicodeDecodeError,)


@pytest.mark.parametrize("sock", ["client_endpoint", "scheduler", "detokenizer", "tokenizer_manager"])
def test_random_mutations_of_valid_messages_fail_cleanly(sock):
    """Byte flips of valid frames either decode to a message of the union, or raise a decode error.
    (UnicodeDecodeError is tolerated here only because it is the known bug pinned by
    test_invalid_utf8_raises_only_decode_errors; any other exception type fails this test.)"""
    union = SOCKETS[sock]
    dec = P.decoder(union)
    members = _members(union)
    enc = P.encoder()
    frames = [enc.encode(m) for _, m in SAMPLES if type(m) in members]
    rng = random.Random(99)
    for _ in range(4000):
        data = bytearray(rng.choice(frames))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            msg = dec.decode(bytes(data))
        except DECODE_OR_UTF8_ERRORS:
            continue
        assert type(msg) in members


@pytest.mark.parametrize("sock", list(_STR_FIELD_MSG))
def test_invalid_utf8_raises_only_decode_errors(sock):
    for data in bad_utf8_frames(sock).values():
        _assert_rejected(P.decoder(SOCKETS[sock]), data)


def test_invalid_utf8_frames_fail_to_decode_somehow():
    """Whatever the exception type, a bad-UTF-8 frame never decodes into a message."""
    for sock in _STR_FIELD_MSG:
        for data in bad_utf8_frames(sock).values():
            with pytest.raises(DECODE_OR_UTF8_ERRORS):
                P.decoder(SOCKETS[sock]).decode(data)


def _nested(depth: int) -> bytes:
    """A ClientGenerate whose sampling_params value nests `depth` one-element arrays (~depth bytes)."""
    e = msgspec.msgpack.encode
    return (
        b"\x83"
        + e("type")
        + e("ClientGenerate")
        + e("rid")
        + e("deep")
        + e("sampling_params")
        + b"\x81"
        + e("stop")
        + b"\x91" * depth
        + b"\xc0"
    )


def test_moderately_nested_values_decode():
    msg = P.decoder(P.ClientRequest).decode(_nested(200))
    assert isinstance(msg, P.ClientGenerate) and msg.rid == "deep"


@pytest.mark.parametrize("sock", ["client_endpoint"])
def test_deeply_nested_frame_raises_only_decode_errors(sock):
    _assert_rejected(P.decoder(SOCKETS[sock]), _nested(5000))


# ------------------------------------------------------------------------------ no unpickling anywhere
FORBIDDEN = {
    "pickle.loads": re.compile(r"\bpickle\s*\.\s*loads?\b"),
    "recv_pyobj": re.compile(r"\brecv_pyobj\b"),
    "send_pyobj": re.compile(r"\bsend_pyobj\b"),
    "eval(": re.compile(r"(?<![\w.])eval\s*\("),  # the builtin; `module.eval()` (torch) is fine
    "exec(": re.compile(r"(?<![\w.])exec\s*\("),
}


def test_no_pickle_or_eval_in_runtime_lang_and_client():
    roots = [PKG_ROOT / "runtime", PKG_ROOT / "lang", PKG_ROOT / "client"]
    files = [f for root in roots for f in root.rglob("*.py")]
    assert len(files) > 10, files  # the scan really looked at the sources
    hits = []
    for f in files:
        for lineno, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            for name, pattern in FORBIDDEN.items():
                if pattern.search(code):
                    hits.append(f"{f.relative_to(PKG_ROOT)}:{lineno}: {name}: {line.strip()}")
    assert hits == []


def test_forbidden_patterns_match_what_they_should():
    assert FORBIDDEN["pickle.loads"].search("x = pickle.loads(frame)")
    assert FORBIDDEN["recv_pyobj"].search("sock.recv_pyobj()")
    assert FORBIDDEN["send_pyobj"].search("sock.send_pyobj(obj)")
    assert FORBIDDEN["eval("].search("eval(text)") and FORBIDDEN["eval("].search("y = eval (s)")
    assert not FORBIDDEN["eval("].search("model.eval()")
    assert not FORBIDDEN["eval("].search("literal_eval(s)")
