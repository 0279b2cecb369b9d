"""A client for `radixlm serve`'s native HTTP routes with the same interface as
`RuntimeClient` (the ZeroMQ one), so the DSL's `RuntimeEndpoint` takes either address:

    client = HttpRuntimeClient("http://127.0.0.1:30000")
    out = client.generate("Hello", {"max_new_tokens": 8, "temperature": 0})

Standard library only (`urllib`); each call opens its own connection, so it is thread-safe.
A batch goes out as one `/generate` request with lists, so the scheduler sees it at once.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any


class HttpRuntimeClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 600.0) -> None:
        self.address = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s

    def _open(self, method: str, route: str, body: Any = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.address + route, data=data, headers=headers, method=method)
        try:
            return urllib.request.urlopen(req, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{route}: HTTP {exc.code}: {_error_message(exc)}") from None
        except urllib.error.URLError as exc:
            raise ConnectionError(f"cannot reach {self.address}: {exc.reason}") from None

    def _json(self, method: str, route: str, body: Any = None) -> Any:
        with self._open(method, route, body) as resp:
            return json.loads(resp.read())

    @staticmethod
    def _body(
        prompt: str | None,
        input_ids: Sequence[int] | None,
        sampling_params: dict | None,
        return_logprob: bool,
        logprob_start_len: int | None,
        top_logprobs_num: int,
    ) -> dict:
        body: dict[str, Any] = {
            "sampling_params": dict(sampling_params or {}),
            "return_logprob": return_logprob,
            "logprob_start_len": logprob_start_len,
            "top_logprobs_num": top_logprobs_num,
        }
        if input_ids is not None:
            body["input_ids"] = list(input_ids)
        else:
            body["text"] = prompt
        return body

    def generate(
        self,
        prompt: str | None = None,
        sampling_params: dict | None = None,
        input_ids: Sequence[int] | None = None,
        return_logprob: bool = False,
        logprob_start_len: int | None = None,
        top_logprobs_num: int = 0,
    ) -> dict | list[dict]:
        out = self._json(
            "POST",
            "/generate",
            self._body(
                prompt, input_ids, sampling_params, return_logprob, logprob_start_len, top_logprobs_num
            ),
        )
        if isinstance(out, list):  # n > 1: the n samples
            return [{**_as_runtime_output(o), "finished": True} for o in out]
        return {**_as_runtime_output(out), "finished": True}

    def generate_batch(self, requests: Sequence[dict]) -> list[dict]:
        """Several requests in one `/generate` call (per-request options as lists)."""
        if not requests:
            return []
        uses_ids = ["input_ids" in r and r["input_ids"] is not None for r in requests]
        if any(uses_ids) and not all(uses_ids):
            # one /generate body takes either texts or token ids: split and keep the order
            ids_idx = [i for i, u in enumerate(uses_ids) if u]
            text_idx = [i for i, u in enumerate(uses_ids) if not u]
            outs: list[dict] = [{}] * len(requests)
            for idx in (ids_idx, text_idx):
                for i, out in zip(idx, self.generate_batch([requests[i] for i in idx])):
                    outs[i] = out
            return outs
        body: dict[str, Any] = {
            "sampling_params": [dict(r.get("sampling_params") or {}) for r in requests],
            "return_logprob": [bool(r.get("return_logprob", False)) for r in requests],
            "logprob_start_len": [r.get("logprob_start_len") for r in requests],
            "top_logprobs_num": [int(r.get("top_logprobs_num", 0)) for r in requests],
        }
        if uses_ids[0]:
            body["input_ids"] = [list(r["input_ids"]) for r in requests]
        else:
            body["text"] = [r["prompt"] for r in requests]
        return [_as_runtime_output(o) for o in self._json("POST", "/generate", body)]

    def generate_stream(
        self,
        prompt: str | None = None,
        sampling_params: dict | None = None,
        input_ids: Sequence[int] | None = None,
        return_logprob: bool = False,
        logprob_start_len: int | None = None,
        top_logprobs_num: int = 0,
    ) -> Iterator[dict]:
        """Chunks with the text and token ids *added* since the last one (the route sends
        cumulative text; this turns it into deltas like the ZeroMQ client)."""
        body = {
            **self._body(
                prompt, input_ids, sampling_params, return_logprob, logprob_start_len, top_logprobs_num
            ),
            "stream": True,
        }
        text_len = ids_len = 0
        last: dict | None = None
        with self._open("POST", "/generate", body) as resp:
            for raw in resp:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                payload = line[len("data:") :].strip()
                if payload == "[DONE]":
                    break
                chunk = json.loads(payload)
                if "error" in chunk:
                    raise RuntimeError(chunk["error"].get("message", str(chunk["error"])))
                if last is not None:
                    yield {**last, "finished": False}
                last = {
                    "text": chunk["text"][text_len:],
                    "output_ids": chunk["output_ids"][ids_len:],
                    "meta_info": _as_runtime_meta(chunk["meta_info"]),
                }
                text_len, ids_len = len(chunk["text"]), len(chunk["output_ids"])
        if last is None:
            raise RuntimeError("the stream ended without output")
        yield {**last, "finished": True}

    def tokenize(self, text: str) -> dict:
        """`text`'s token ids as the server counts a text prompt's, and each token's (start, end)
        character span: {"input_ids": [...], "offsets": [(start, end), ...]} (POST /tokenize)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        out = self._json("POST", "/tokenize", {"text": text})
        return {"input_ids": list(out["tokens"]), "offsets": [tuple(o) for o in out["offsets"]]}

    def flush_cache(self) -> bool:
        try:
            return bool(self._json("POST", "/flush_cache").get("success"))
        except RuntimeError:
            return False

    def get_server_info(self) -> dict:
        return self._json("GET", "/server_info")

    def close(self) -> None:
        pass


def _as_runtime_output(out: dict) -> dict:
    return {**out, "meta_info": _as_runtime_meta(out["meta_info"])}


def _as_runtime_meta(meta: dict) -> dict:
    """/generate writes logprobs as SGLang does: [logprob, token_id, text] entries, top
    candidates alike with null for a position without any. RuntimeClient's (and so the DSL's)
    are (logprob, token_id), and (token_id, logprob) for top candidates."""
    meta = dict(meta)
    for key in ("input_token_logprobs", "output_token_logprobs"):
        if meta.get(key) is not None:
            meta[key] = [(e[0], e[1]) for e in meta[key]]
    for key, empty in (("input_top_logprobs", None), ("output_top_logprobs", [])):
        if meta.get(key) is not None:
            meta[key] = [[(c[1], c[0]) for c in pos] if pos is not None else empty for pos in meta[key]]
    return meta


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read())
    except (ValueError, OSError):
        return exc.reason
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return error.get("message", str(error))
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)


__all__ = ["HttpRuntimeClient"]
