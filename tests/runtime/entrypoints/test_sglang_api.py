"""SGLang's native HTTP API on a real `radixlm serve` (a subprocess on 127.0.0.1, the tiny
random model), driven with httpx as SGLang's frontend and clients drive it:

* /get_model_info and /model_info carry what `sgl.RuntimeEndpoint` reads (model_path...);
  /get_server_info and /server_info are SGLang's shape with radixlm's own fields;
  /health_generate runs the model; /flush_cache answers GET and POST;
* /generate takes the body RuntimeEndpoint sends (its sampling defaults, stop=[],
  stop_regex=[], spaces_between_special_tokens...), batches of texts and of token ids, PUT,
  per-prompt rids; greedy text equals the in-process Engine's;
* meta_info in SGLang's shape: [logprob, token_id, text] entries (text null unless
  return_text_in_logprobs), top logprobs per position, SGLang's counters; streamed chunks
  carry the text and the logprobs so far;
* SGLang's "off" values pass; anything radixlm cannot honour, any unknown field and any bad
  value is a 400 naming it; the server then answers exactly as before and frees every KV slot;
* /concate_and_append_request (fork/join) answers as SGLang's frontend expects;
* --api-key guards the new routes as it does the others (SGLang's frontend sends the key).
The translation functions (sglang_compat) are also checked in-process first, with no server.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest
from helpers import get_engine
from server_process import ServerProcess, sse_events, wait_idle_and_kv_free

from radixlm.runtime.entrypoints import sglang_compat
from radixlm.runtime.entrypoints.http_errors import HTTPError
from radixlm.testing import default_model_path

PROMPT = "The history of Python began"
GREEDY = {"temperature": 0}
BASELINE = {"text": "Hello world, this is", "sampling_params": {"max_new_tokens": 6, "temperature": 0}}


def runtime_endpoint_body(text, **sampling) -> dict:
    """The /generate body sgl.RuntimeEndpoint.generate sends for `gen(...)`: SGLang's global
    decode options, then every SglSamplingParams field (its () defaults arrive as [])."""
    params = {
        "max_new_tokens": 128,
        "min_new_tokens": 0,
        "n": 1,
        "stop": [],
        "stop_token_ids": [],
        "stop_regex": [],
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": -1,
        "min_p": 0.0,
        "frequency_penalty": 0.0,
        "presence_penalty": 0.0,
        "ignore_eos": False,
        "regex": None,
        "json_schema": None,
        **sampling,
    }
    return {
        "text": text,
        "sampling_params": {"skip_special_tokens": True, "spaces_between_special_tokens": True, **params},
    }


# ======================================================================================== in-process
class CountingTokenizer:
    """Decodes id k as "<k>" and counts the ids it was asked for."""

    def __init__(self) -> None:
        self.decoded = 0

    def batch_decode(self, batch: list[list[int]]) -> list[str]:
        self.decoded += len(batch)
        return [f"<{ids[0]}>" for ids in batch]


def test_meta_formatter_writes_sglang_entries_and_converts_each_once():
    tok = CountingTokenizer()
    fmt = sglang_compat.MetaFormatter(tok, return_logprob=True, top_logprobs_num=2, with_text=True)
    meta = {"id": "r", "retractions": 1, "input_token_logprobs": [(None, 5), (-0.5, 6)]}
    meta["input_top_logprobs"] = [None, [(6, -0.5), (9, -1.5)]]
    chunks = []
    for step in range(3):  # a stream: the same meta_info, growing
        meta.setdefault("output_token_logprobs", []).append((-0.25 * step, 10 + step))
        meta.setdefault("output_top_logprobs", []).append([(10 + step, -0.25 * step)])
        chunks.append(fmt(meta))
    last = chunks[-1]
    assert last["input_token_logprobs"] == [[None, 5, "<5>"], [-0.5, 6, "<6>"]]
    assert last["input_top_logprobs"] == [None, [[-0.5, 6, "<6>"], [-1.5, 9, "<9>"]]]
    assert last["output_token_logprobs"] == [[-0.25 * k, 10 + k, f"<{10 + k}>"] for k in range(3)]
    assert last["output_top_logprobs"] == [[[-0.25 * k, 10 + k, f"<{10 + k}>"]] for k in range(3)]
    assert last["output_token_logprobs_length"] == 3 and last["num_retractions"] == 1
    assert last["weight_version"] == "default" and last["id"] == "r"
    assert tok.decoded == 2 + 2 + 3 + 3  # every entry decoded once, not once per chunk
    # no text asked: null in its place; no logprobs asked: no logprob keys at all
    plain = sglang_compat.MetaFormatter(tok, return_logprob=True, top_logprobs_num=0, with_text=False)(meta)
    assert plain["input_token_logprobs"][1] == [-0.5, 6, None] and "output_top_logprobs" not in plain
    bare = sglang_compat.MetaFormatter(tok, return_logprob=False, top_logprobs_num=0, with_text=True)(meta)
    assert not any(k.endswith("logprobs") for k in bare)


def test_sampling_params_translate_sglang_dialect():
    translate = sglang_compat.sampling_params
    sent = {"temperature": None, "top_p": 0.5, "stop": [], "stop_regex": [], "ebnf": None, "beam_width": 1}
    assert translate({**sent, "spaces_between_special_tokens": True}, 100) == {"top_p": 0.5, "stop": []}
    assert translate({"max_new_tokens": None}, 100) == {"max_new_tokens": 100}
    assert translate({"sampling_seed": 3}, 100) == {"seed": 3}
    assert translate({"bogus": 1}, 100) == {"bogus": 1}  # left for SamplingParams to refuse
    for bad, match in [
        ({"stop_regex": ["x"]}, "sampling_params.stop_regex is not supported"),
        ({"beam_width": 2}, "sampling_params.beam_width is not supported"),
        ({"logit_bias": {"1": 1.0}}, "sampling_params.logit_bias is not supported"),
        ({"seed": 1, "sampling_seed": 2}, "differ"),
        ({"spaces_between_special_tokens": 0}, "must be true or false"),
    ]:
        with pytest.raises(HTTPError, match=match) as err:
            translate(bad, 100)
        assert err.value.status == 400


def test_extra_fields_pass_only_when_off():
    check = sglang_compat.check_extra_fields
    check({"image_data": None, "lora_path": [None, None], "return_hidden_states": False, "log_metrics": True})
    check({"modalities": [], "routed_experts_start_len": 0, "session_params": {}})
    for extra, match in [
        ({"image_data": "x"}, "image_data is not supported by radixlm: leave it out or send null"),
        ({"lora_path": [None, "a"]}, "lora_path is not supported"),
        ({"return_hidden_states": True}, "or false, got true"),
        ({"routed_experts_start_len": True}, "routed_experts_start_len is not supported"),  # not a 0
        ({"bogus": 1, "other": 2}, "invalid request: bogus is not a known field; other is not a known field"),
    ]:
        with pytest.raises(HTTPError, match=re.escape(match)):
            check(extra)


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def server():
    srv = ServerProcess(default_model_path()).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture
def ref():
    return get_engine("llama")


@pytest.fixture(scope="module")
def baseline(http):
    """A good answer; after any bad request the server must give it again, unchanged."""
    r = http.post("/generate", json=BASELINE)
    assert r.status_code == 200, r.text
    return r.json()["text"]


def greedy(engine, prompt, n: int) -> dict:
    return engine.generate(prompt, {"max_new_tokens": n, **GREEDY})


def ok(r: httpx.Response):
    assert r.status_code == 200, r.text
    return r.json()


# ======================================================================================== operations
def test_model_info_has_what_runtime_endpoint_reads(http, server):
    for route in ("/get_model_info", "/model_info"):
        info = ok(http.get(route))
        assert info["model_path"] == server.model_path
        assert info["tokenizer_path"] == server.model_path
        assert info["is_generation"] is True
        assert info["architectures"] == ["LlamaForCausalLM"] and info["model_type"] == "llama"
        assert info["served_model_name"] == server.model_path.rstrip("/").rsplit("/", 1)[-1]
        assert info["weight_version"] == "default" and info["has_image_understanding"] is False
        assert info["context_length"] > 0 and info["vocab_size"] > 0


def test_server_info_is_sglang_shaped_with_ours(http, server):
    new, old = ok(http.get("/get_server_info")), ok(http.get("/server_info"))
    assert set(new) == set(old)
    for info in (new, old):
        # SGLang's: its server arguments, the scheduler's limits, the internal states, the version
        assert info["model_path"] == server.model_path
        assert info["tp_size"] == 1 and info["dp_size"] == 1
        assert info["schedule_policy"] == "lpm" and info["skip_tokenizer_init"] is False
        assert info["max_total_num_tokens"] == info["max_total_tokens"] > 0
        assert info["max_req_input_len"] == min(info["context_length"], info["max_total_tokens"]) - 1
        assert isinstance(info["internal_states"], list) and len(info["internal_states"]) == 1
        assert info["internal_states"][0]["world_size"] == 1
        assert isinstance(info["version"], str)
        # ours
        assert info["kv_accounting"] == "ok" and info["total_tokens"] > 0
        assert set(info["process_ids"]) >= {"scheduler", "detokenizer"}


def test_health_generate_runs_the_model(http):
    assert ok(http.get("/health_generate")) == {"status": "ok"}
    assert ok(http.get("/health")) == {"status": "ok"}


def test_flush_cache_takes_get_and_post(http, server):
    ok(http.post("/generate", json=BASELINE))
    for method in ("GET", "POST"):
        wait_idle_and_kv_free(server)
        assert ok(http.request(method, "/flush_cache")) == {"success": True}
        info = ok(http.get("/server_info"))
        assert info["free_tokens"] == info["total_tokens"], info


# ======================================================================================== /generate
def test_runtime_endpoint_body_answers_like_the_engine(http, ref):
    want = greedy(ref, PROMPT, 8)
    out = ok(http.post("/generate", json=runtime_endpoint_body(PROMPT, max_new_tokens=8, temperature=0)))
    assert out["text"] == want["text"] and out["output_ids"] == want["output_ids"]
    meta = out["meta_info"]
    assert meta["prompt_tokens"] == want["meta_info"]["prompt_tokens"]
    assert meta["completion_tokens"] == 8 and meta["finish_reason"] == {"type": "length", "length": 8}
    assert meta["cached_tokens"] >= 0 and meta["num_retractions"] == 0
    assert meta["weight_version"] == "default" and isinstance(meta["id"], str)
    assert "input_token_logprobs" not in meta  # none asked for
    # PUT is SGLang's other method for /generate
    put = ok(http.put("/generate", json=runtime_endpoint_body(PROMPT, max_new_tokens=8, temperature=0)))
    assert (put["text"], put["output_ids"]) == (out["text"], out["output_ids"])


def test_batches_of_texts_and_of_token_ids(http, ref):
    prompts = [PROMPT, "Hello", "héllo wörld 日本語"]
    want = [greedy(ref, p, 5) for p in prompts]
    rids = ["batch-a", "batch-b", "batch-c"]
    body = {"text": prompts, "sampling_params": {"max_new_tokens": 5, **GREEDY}, "rid": rids}
    outs = ok(http.post("/generate", json=body))
    assert [o["text"] for o in outs] == [w["text"] for w in want]
    assert [o["meta_info"]["id"] for o in outs] == rids
    ids = [ref.tokenizer(p).input_ids for p in prompts]
    outs = ok(
        http.post(
            "/generate", json={"input_ids": ids, "sampling_params": [{"max_new_tokens": 5, **GREEDY}] * 3}
        )
    )
    assert [o["output_ids"] for o in outs] == [w["output_ids"] for w in want]
    # a one-prompt list is a batch of one; n > 1 gives the samples in order
    assert isinstance(ok(http.post("/generate", json={**BASELINE, "text": [BASELINE["text"]]})), list)
    two = ok(http.post("/generate", json={"text": PROMPT, "sampling_params": {"max_new_tokens": 3, "n": 2}}))
    assert len(two) == 2


def test_select_style_logprobs_with_text(http, ref):
    """What sgl.RuntimeEndpoint.select sends: every choice appended to the prompt, scored from
    two tokens before the choice (token healing), with the tokens' text."""
    choices = [" yes", " no", " maybe so"]
    prompt_len = ok(http.post("/generate", json={"text": PROMPT, "sampling_params": {"max_new_tokens": 0}}))[
        "meta_info"
    ]["prompt_tokens"]
    start = max(prompt_len - 2, 0)
    body = {
        "text": [PROMPT + c for c in choices],
        "sampling_params": {"max_new_tokens": 0, "temperature": 0},
        "return_logprob": True,
        "return_text_in_logprobs": True,
        "logprob_start_len": start,
    }
    outs = ok(http.post("/generate", json=body))
    assert len(outs) == len(choices)
    for choice, out in zip(choices, outs):
        ids = ref.tokenizer(PROMPT + choice).input_ids
        want = ref.generate(
            input_ids=ids, sampling_params={"max_new_tokens": 0}, return_logprob=True, logprob_start_len=start
        )["meta_info"]["input_token_logprobs"]
        got = out["meta_info"]["input_token_logprobs"]
        assert [e[1] for e in got] == [t for _, t in want] == ids[start:]
        assert [e[0] for e in got] == pytest.approx([lp for lp, _ in want], abs=1e-4)
        assert [e[2] for e in got] == [ref.tokenizer.decode([t]) for t in ids[start:]]
        assert out["meta_info"]["output_token_logprobs"] == []
        assert out["meta_info"]["output_token_logprobs_length"] == 0
    # without return_text_in_logprobs the text is null, as in SGLang
    out = ok(http.post("/generate", json={**body, "text": PROMPT, "return_text_in_logprobs": False}))
    assert all(len(e) == 3 and e[2] is None for e in out["meta_info"]["input_token_logprobs"])


def test_output_and_top_logprobs_in_sglang_shape(http, ref):
    body = {
        "text": PROMPT,
        "sampling_params": {"max_new_tokens": 4, **GREEDY},
        "return_logprob": True,
        "logprob_start_len": 0,
        "top_logprobs_num": 3,
        "return_text_in_logprobs": True,
    }
    out = ok(http.post("/generate", json=body))
    meta = out["meta_info"]
    want = ref.generate(PROMPT, {"max_new_tokens": 4, **GREEDY}, return_logprob=True, top_logprobs_num=3)
    assert [e[1] for e in meta["output_token_logprobs"]] == out["output_ids"] == want["output_ids"]
    assert [e[0] for e in meta["output_token_logprobs"]] == pytest.approx(
        [lp for lp, _ in want["meta_info"]["output_token_logprobs"]], abs=1e-4
    )
    assert meta["output_token_logprobs_length"] == 4
    assert meta["input_token_logprobs"][0][0] is None  # the first prompt token has no logprob
    assert meta["input_top_logprobs"][0] is None and len(meta["input_top_logprobs"]) == meta["prompt_tokens"]
    assert len(meta["output_top_logprobs"]) == 4
    for (lp, tid, text), top in zip(meta["output_token_logprobs"], meta["output_top_logprobs"]):
        assert len(top) == 3 and all(len(c) == 3 for c in top)
        assert top[0][1] == tid and top[0][0] == pytest.approx(lp, abs=1e-5)  # greedy: the top one
        assert [c[0] for c in top] == sorted((c[0] for c in top), reverse=True)
        assert text == ref.tokenizer.decode([tid]) and top[0][2] == text


def test_stream_is_cumulative_with_logprobs(http):
    body = {
        "text": PROMPT,
        "sampling_params": {"max_new_tokens": 6, **GREEDY},
        "return_logprob": True,
        "return_text_in_logprobs": True,
    }
    full = ok(http.post("/generate", json=body))
    with http.stream("POST", "/generate", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) > 1
    for before, after in zip(chunks, chunks[1:]):
        assert after["text"].startswith(before["text"])
        lps = after["meta_info"]["output_token_logprobs"]
        assert (
            lps[: len(before["meta_info"]["output_token_logprobs"])]
            == before["meta_info"]["output_token_logprobs"]
        )
    last = chunks[-1]
    assert last["text"] == full["text"] and last["output_ids"] == full["output_ids"]
    assert last["meta_info"]["output_token_logprobs"] == full["meta_info"]["output_token_logprobs"]
    assert last["meta_info"]["finish_reason"] == full["meta_info"]["finish_reason"]


def test_sglang_off_values_and_nulls_are_accepted(http, ref, baseline):
    off = {
        "image_data": None,
        "lora_path": None,
        "session_params": None,
        "return_hidden_states": False,
        "log_metrics": True,
        "custom_logit_processor": None,
        "token_ids_logprob": None,
        "data_parallel_rank": None,
        "modalities": [],
        "bootstrap_room": None,
        "top_logprobs_num": None,
        "return_logprob": None,
    }
    sampling = {
        **BASELINE["sampling_params"],
        "stop_regex": [],
        "ebnf": None,
        "structural_tag": None,
        "logit_bias": None,
        "custom_params": None,
        "beam_width": 1,
        "spaces_between_special_tokens": False,  # nothing to space: special tokens are skipped
        "top_p": None,
        "stop": None,
    }
    out = ok(http.post("/generate", json={"text": BASELINE["text"], "sampling_params": sampling, **off}))
    assert out["text"] == baseline
    # sgl.Runtime.generate sends null for what it leaves at the default
    body = {"text": "Hi", "sampling_params": None, "logprob_start_len": None, "top_logprobs_num": None}
    assert ok(http.post("/generate", json=body))["meta_info"]["completion_tokens"] >= 1
    # sampling_seed is SGLang's name for the seed
    seeded = {"text": PROMPT, "sampling_params": {"max_new_tokens": 5, "seed": 7}}
    renamed = {"text": PROMPT, "sampling_params": {"max_new_tokens": 5, "sampling_seed": 7}}
    assert ok(http.post("/generate", json=seeded))["text"] == ok(http.post("/generate", json=renamed))["text"]
    # a null max_new_tokens is "up to the context": a prompt three tokens short of it gets three
    context = ok(http.get("/get_model_info"))["context_length"]
    ids = (ref.tokenizer(PROMPT).input_ids * context)[: context - 3]
    long = {"input_ids": ids, "sampling_params": {"max_new_tokens": None, "ignore_eos": True, **GREEDY}}
    meta = ok(http.post("/generate", json=long))["meta_info"]
    assert meta["completion_tokens"] == 3 and meta["finish_reason"] == {"type": "length", "length": 3}


BAD = [
    # SGLang fields asking for what radixlm does not do: refused by name, not ignored
    ({"image_data": "aGVsbG8="}, "image_data is not supported by radixlm"),
    ({"lora_path": "my-adapter"}, "lora_path is not supported by radixlm"),
    ({"return_hidden_states": True}, "return_hidden_states is not supported by radixlm"),
    ({"session_params": {"id": "s"}}, "session_params is not supported"),
    ({"log_metrics": False}, "log_metrics is not supported"),
    ({"sampling_params": {"stop_regex": "a+"}}, "sampling_params.stop_regex is not supported"),
    ({"sampling_params": {"ebnf": "root ::= 'a'"}}, "invalid ebnf"),  # GBNF quotes with "
    (
        {"sampling_params": {"structural_tag": {"structures": [], "triggers": ["<f"]}}},
        "structures must be a non-empty",
    ),
    ({"sampling_params": {"logit_bias": {"5": 2.0}}}, "sampling_params.logit_bias is not supported"),
    ({"sampling_params": {"beam_width": 4}}, "sampling_params.beam_width is not supported"),
    (
        {"sampling_params": {"skip_special_tokens": False, "spaces_between_special_tokens": False}},
        "spaces_between_special_tokens=false is not supported",
    ),
    # fields neither system knows
    ({"bogus": 1}, "bogus is not a known field"),
    ({"sampling_params": {"bogus_param": 1}}, r"unknown sampling parameter\(s\): bogus_param"),
    ({"sampling_params": {"max_tokens": 5}}, r"unknown sampling parameter\(s\): max_tokens"),
    # bad values, named
    ({"return_text_in_logprobs": "maybe"}, "return_text_in_logprobs must be true or false"),
    ({"sampling_params": {"spaces_between_special_tokens": "no"}}, "spaces_between_special_tokens must be"),
    ({"sampling_params": {"seed": 1, "sampling_seed": 2}}, "seed .* and sampling_seed .* differ"),
    ({"sampling_params": {"temperature": -1}}, "temperature must be a finite number >= 0, got -1"),
    ({"return_logprob": True, "top_logprobs_num": -1}, "top_logprobs_num must be an integer"),
    ({"return_logprob": True, "logprob_start_len": 999}, "logprob_start_len must be in"),
    ({"rid": ["a", "b"]}, "rid is a list of 2 but there is one prompt"),
    ({"text": ["a", "b"], "rid": "one"}, "rid must be a list of 2 ids"),
    ({"text": ["a", "b"], "rid": ["x", "x"]}, "rid has the same id twice"),
    ({"text": ["a", "b"], "return_logprob": [True]}, "return_logprob is a list of 1 but there are 2 prompts"),
]


@pytest.mark.parametrize(
    ("extra", "match"), BAD, ids=[m.split(" ")[0] + f"-{i}" for i, (_, m) in enumerate(BAD)]
)
def test_what_cannot_be_honoured_is_refused_by_name(http, baseline, extra, match):
    body = {
        "text": PROMPT,
        **extra,
        "sampling_params": {"max_new_tokens": 2, **extra.get("sampling_params", {})},
    }
    r = http.post("/generate", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == 400 and error["type"] == "invalid_request_error"
    assert re.search(match, error["message"]), error["message"]
    assert ok(http.post("/generate", json=BASELINE))["text"] == baseline  # and keeps serving


def test_concate_and_append_request(http, baseline):
    """sgl's join(mode="concate_and_append") sends the forks' state ids and the destination's
    after appending the forks' text itself; the answer is a success."""
    body = {"src_rids": ["fork-0", "fork-1"], "dst_rid": "dst"}
    assert ok(http.post("/concate_and_append_request", json=body))["success"] is True
    for bad, match in [
        ({"src_rids": [], "dst_rid": "d"}, "src_rids must have at least 1 item"),
        ({"src_rids": ["a"]}, "dst_rid is required"),
        ({"src_rids": "a", "dst_rid": "d"}, "src_rids must be a list"),
        ({**body, "extra": 1}, "extra is not a known field"),
    ]:
        r = http.post("/concate_and_append_request", json=bad)
        assert r.status_code == 400 and match in r.json()["error"]["message"], r.text
    assert ok(http.post("/generate", json=BASELINE))["text"] == baseline


def test_server_is_idle_and_every_slot_free_at_the_end(server):
    wait_idle_and_kv_free(server)


def test_api_key_guards_the_sglang_routes():
    srv = ServerProcess(default_model_path(), ["--api-key", "k3y"]).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            routes = [
                ("GET", "/get_model_info", None),
                ("GET", "/get_server_info", None),
                ("GET", "/health_generate", None),
                ("GET", "/flush_cache", None),
                ("POST", "/concate_and_append_request", {"src_rids": ["a"], "dst_rid": "b"}),
                ("PUT", "/generate", BASELINE),
            ]
            for method, path, body in routes:
                assert c.request(method, path, json=body).status_code == 401, path
                r = c.request(method, path, json=body, headers={"Authorization": "Bearer k3y"})
                assert r.status_code == 200, (path, r.text)
    finally:
        srv.stop()
