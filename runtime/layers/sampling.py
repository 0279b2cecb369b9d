"""Sampling parameters and batched sampling.

Per step, for the requests that sample: penalties (repetition over prompt + output,
frequency and presence over output), the min_new_tokens stop-token mask, then either
argmax (temperature 0) or temperature -> softmax -> top-k / top-p / min-p -> a draw.

Draws use a counter-based random stream keyed by (request seed, output position, token
id): a request's samples depend only on its own seed and history, never on which other
requests share the batch, so the same seed always gives the same output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from radixlm.runtime.model_executor.device_copy import to_device

_MASK64 = (1 << 64) - 1
# Most samples one request may ask for (OpenAI's limit): n = 10**6 would otherwise be
# attempted, one queued request per sample.
MAX_N = 128


def _as_int64(x: int) -> int:
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


_MIX1 = _as_int64(0xBF58476D1CE4E5B9)
_MIX2 = _as_int64(0x94D049BB133111EB)
_GOLDEN = _as_int64(0x9E3779B97F4A7C15)


CONSTRAINT_PARAMS = ("regex", "json_schema", "ebnf", "grammar", "structural_tag")


@dataclass
class SamplingParams:
    """Per-request sampling options (the names SGLang and vLLM users know)."""

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1: no limit
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    no_stop_trim: bool = False
    n: int = 1
    seed: int | None = None
    # constrained decoding (at most one): the output must match the regex / the JSON schema
    # (JSON text here; from_any also takes a dict, a pydantic model or a msgspec Struct type) /
    # the EBNF (GBNF: llama.cpp's dialect, `root ::= ...`) grammar / the Lark grammar
    regex: str | None = None
    json_schema: str | None = None
    ebnf: str | None = None
    grammar: str | None = None
    # free text whose tagged segments (tool calls) follow their JSON schemas: SGLang's
    # structural_tag, {"structures": [{"begin", "schema", "end"}], "triggers": [...]} as JSON
    # text (from_any also takes a dict); see constrained/structural_tag.py
    structural_tag: str | None = None
    # reasoning models: the constraint applies only after this token (the think-end token,
    # `</think>`) is sampled; the text before it is free. With reasoning_start_token_id too,
    # the output thinks only if it opens with that token (`<think>`), else the constraint
    # applies from the first token. Ignored without a constraint.
    reasoning_end_token_id: int | None = None
    reasoning_start_token_id: int | None = None

    @staticmethod
    def from_any(value: SamplingParams | dict[str, Any] | None) -> SamplingParams:
        if value is None:
            return SamplingParams()
        if isinstance(value, SamplingParams):
            return dataclasses.replace(value)
        if not isinstance(value, dict):
            raise TypeError(f"sampling_params must be a dict or SamplingParams, got {type(value).__name__}")
        names = {f.name for f in dataclasses.fields(SamplingParams)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ValueError(f"unknown sampling parameter(s): {', '.join(unknown)}")
        params = SamplingParams(**value)
        if params.json_schema is not None:
            from radixlm.runtime.constrained.json_schema import normalize_json_schema

            params.json_schema = normalize_json_schema(params.json_schema)
        if params.structural_tag is not None:
            from radixlm.runtime.constrained.structural_tag import normalize_structural_tag

            params.structural_tag = normalize_structural_tag(params.structural_tag)
        return params

    @property
    def stop_strs(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    def validate(
        self, vocab_size: int, grammar_backend: str = "auto", whitespace_pattern: str | None = None
    ) -> None:
        """Raise ValueError naming the first bad field. `grammar_backend` and
        `whitespace_pattern`: the engine's, which decide what a constraint may use."""

        def bad(msg: str) -> None:
            raise ValueError(msg)

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        def fits_msgpack(v: int) -> bool:  # a bigger int cannot cross to the scheduler
            return -(1 << 63) <= v < 1 << 64

        if not is_int(self.max_new_tokens) or self.max_new_tokens < 0:
            bad(f"max_new_tokens must be an integer >= 0, got {self.max_new_tokens!r}")
        if not is_int(self.min_new_tokens) or not 0 <= self.min_new_tokens:
            bad(f"min_new_tokens must be an integer >= 0, got {self.min_new_tokens!r}")
        if self.min_new_tokens > self.max_new_tokens:
            bad(
                f"min_new_tokens ({self.min_new_tokens}) must not exceed "
                f"max_new_tokens ({self.max_new_tokens})"
            )
        # infinity is refused too: logits / inf turns a banned (-inf) token's logit into NaN
        if not is_num(self.temperature) or not 0.0 <= self.temperature < float("inf"):
            bad(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not is_num(self.top_p) or not 0.0 < self.top_p <= 1.0:
            bad(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not is_int(self.top_k) or not (self.top_k == -1 or 1 <= self.top_k < 1 << 64):
            bad(f"top_k must be -1 (no limit) or in [1, 2**64), got {self.top_k!r}")
        if not is_num(self.min_p) or not 0.0 <= self.min_p <= 1.0:
            bad(f"min_p must be in [0, 1], got {self.min_p!r}")
        for name in ("frequency_penalty", "presence_penalty"):
            v = getattr(self, name)
            if not is_num(v) or not -2.0 <= v <= 2.0:
                bad(f"{name} must be in [-2, 2], got {v!r}")
        if not is_num(self.repetition_penalty) or not 0.0 < self.repetition_penalty <= 2.0:
            bad(f"repetition_penalty must be in (0, 2], got {self.repetition_penalty!r}")
        if not is_int(self.n) or not 1 <= self.n <= MAX_N:
            bad(f"n must be an integer in [1, {MAX_N}], got {self.n!r}")
        if self.seed is not None and not (is_int(self.seed) and fits_msgpack(self.seed)):
            bad(f"seed must be an integer in [-2**63, 2**64), got {self.seed!r}")
        if self.stop is not None:
            stops = [self.stop] if isinstance(self.stop, str) else self.stop
            if not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) and s for s in stops):
                bad(f"stop must be a non-empty string or a list of non-empty strings, got {self.stop!r}")
        if self.stop_token_ids is not None:
            ids = self.stop_token_ids
            if not isinstance(ids, (list, tuple)) or not all(is_int(t) and 0 <= t < vocab_size for t in ids):
                bad(f"stop_token_ids must be token ids in [0, {vocab_size}), got {ids!r}")
        for name in ("reasoning_end_token_id", "reasoning_start_token_id"):
            v = getattr(self, name)
            if v is not None and not (is_int(v) and 0 <= v < vocab_size):
                bad(f"{name} must be a token id in [0, {vocab_size}), got {v!r}")
        if self.reasoning_start_token_id is not None:
            if self.reasoning_end_token_id is None:
                bad("reasoning_start_token_id needs reasoning_end_token_id (the token that ends reasoning)")
            if self.reasoning_start_token_id == self.reasoning_end_token_id:
                bad("reasoning_start_token_id and reasoning_end_token_id must be different tokens")
        given = [n for n in CONSTRAINT_PARAMS if getattr(self, n) is not None]
        if len(given) > 1:
            bad(f"give at most one of {', '.join(CONSTRAINT_PARAMS)} (got {', '.join(given)})")
        if given:
            from radixlm.runtime.constrained.backend import check_constraint, constraint_of

            value = getattr(self, given[0])
            if not isinstance(value, str):
                what = "JSON text here" if given[0] in ("json_schema", "structural_tag") else "a string"
                bad(f"{given[0]} must be {what}, got {type(value).__name__}")
            check_constraint(constraint_of(self), grammar_backend, whitespace_pattern)


@dataclass
class SamplingBatch:
    """The sampling state of one step's sampling requests, as device tensors."""

    temperatures: torch.Tensor  # [B, 1] fp32; 0 rows are greedy
    top_ps: torch.Tensor  # [B]
    top_ks: torch.Tensor  # [B] int64, vocab_size where unlimited
    min_ps: torch.Tensor  # [B]
    seeds: torch.Tensor  # [B] int64
    steps: torch.Tensor  # [B] int64 output position being sampled
    is_all_greedy: bool
    need_top_k: bool
    need_top_p: bool
    need_min_p: bool
    # penalties: built only when some request uses them
    penalty_rows: torch.Tensor | None = None  # rows with any penalty
    output_counts: torch.Tensor | None = None  # [P, V] occurrences in the output
    prompt_seen: torch.Tensor | None = None  # [P, V] bool, token in prompt or output
    frequency: torch.Tensor | None = None  # [P, 1]
    presence: torch.Tensor | None = None
    repetition: torch.Tensor | None = None
    # min_new_tokens: [2, n] (row, token id) pairs banned while a row is below its minimum
    min_tokens_banned: torch.Tensor | None = None
    # constrained decoding: [B, V] True where the row's grammar bans the token, or a builder of
    # it that the sampler calls (after the forward is queued, so the host's grammar work
    # overlaps the device's)
    vocab_mask: torch.Tensor | None = None
    mask_builder: Callable[[], torch.Tensor | None] | None = None

    @staticmethod
    def build(
        params: Sequence[SamplingParams],
        seeds: Sequence[int],
        prompt_ids: Sequence[Sequence[int]],
        output_ids: Sequence[Sequence[int]],
        stop_ids: Sequence[Sequence[int]],
        vocab_size: int,
        device: torch.device,
        pending: Sequence[int] | None = None,
    ) -> SamplingBatch:
        """`stop_ids[i]`: the token ids request i may not emit before min_new_tokens.
        `pending[i]`: tokens request i has sampled in steps still in flight (not yet in
        `output_ids[i]`); they count for the output position, and a request with pending
        tokens must not use penalties, which need their ids."""
        out_lens = [len(o) + (pending[i] if pending else 0) for i, o in enumerate(output_ids)]
        f32 = dict(dtype=torch.float32, device=device)
        i64 = dict(dtype=torch.int64, device=device)
        greedy = [p.is_greedy for p in params]
        # one host-to-device copy per dtype, none of which waits for the device
        floats = to_device(
            [
                [0.0 if g else float(p.temperature) for p, g in zip(params, greedy)],
                [float(p.top_p) for p in params],
                [float(p.min_p) for p in params],
            ],
            torch.float32,
            device,
        )
        ints = to_device(
            [
                [vocab_size if p.top_k < 0 else min(p.top_k, vocab_size) for p in params],
                [_as_int64(s) for s in seeds],
                out_lens,
            ],
            torch.int64,
            device,
        )
        batch = SamplingBatch(
            temperatures=floats[0][:, None],
            top_ps=floats[1],
            min_ps=floats[2],
            top_ks=ints[0],
            seeds=ints[1],
            steps=ints[2],
            is_all_greedy=all(greedy),
            need_top_k=any(0 < p.top_k < vocab_size and not g for p, g in zip(params, greedy)),
            need_top_p=any(p.top_p < 1.0 and not g for p, g in zip(params, greedy)),
            need_min_p=any(p.min_p > 0.0 and not g for p, g in zip(params, greedy)),
        )
        pen = [
            i
            for i, p in enumerate(params)
            if p.frequency_penalty or p.presence_penalty or p.repetition_penalty != 1.0
        ]
        if pen:
            assert not any(out_lens[i] != len(output_ids[i]) for i in pen), "penalties need every output id"
            counts = torch.zeros((len(pen), vocab_size), **f32)
            seen = torch.zeros((len(pen), vocab_size), dtype=torch.bool, device=device)
            for row, i in enumerate(pen):
                if output_ids[i]:
                    out = torch.tensor(output_ids[i], **i64)
                    counts[row].scatter_add_(0, out, torch.ones(len(out), **f32))
                    seen[row, out] = True
                if params[i].repetition_penalty != 1.0 and prompt_ids[i]:
                    seen[row, torch.tensor(prompt_ids[i], **i64)] = True
            batch.penalty_rows = torch.tensor(pen, **i64)
            batch.output_counts = counts
            batch.prompt_seen = seen
            batch.frequency = torch.tensor([[float(params[i].frequency_penalty)] for i in pen], **f32)
            batch.presence = torch.tensor([[float(params[i].presence_penalty)] for i in pen], **f32)
            batch.repetition = torch.tensor([[float(params[i].repetition_penalty)] for i in pen], **f32)
        below = [i for i, p in enumerate(params) if out_lens[i] < p.min_new_tokens and stop_ids[i]]
        if below:
            pairs = [(i, t) for i in below for t in stop_ids[i]]
            batch.min_tokens_banned = to_device(
                [[i for i, _ in pairs], [t for _, t in pairs]], torch.int64, device
            )
        return batch


def apply_penalties(logits: torch.Tensor, sb: SamplingBatch) -> torch.Tensor:
    """Penalties and the min_new_tokens mask, in place on fp32 logits [B, V]."""
    if sb.penalty_rows is not None:
        rows = logits[sb.penalty_rows]
        # repetition (Hugging Face / CTRL form): shrink positive logits, grow negative ones
        rep = torch.where(rows > 0, rows / sb.repetition, rows * sb.repetition)
        rows = torch.where(sb.prompt_seen, rep, rows)
        rows = rows - sb.frequency * sb.output_counts - sb.presence * (sb.output_counts > 0).float()
        logits[sb.penalty_rows] = rows
    if sb.min_tokens_banned is not None:
        # a device tensor as the value: a Python float would be copied to the device with a sync
        logits.index_put_(
            (sb.min_tokens_banned[0], sb.min_tokens_banned[1]), logits.new_full((1,), float("-inf"))
        )
    if sb.mask_builder is not None:
        sb.vocab_mask, sb.mask_builder = sb.mask_builder(), None
    if sb.vocab_mask is not None:
        logits.masked_fill_(sb.vocab_mask, float("-inf"))
    return logits


def _uniform(seeds: torch.Tensor, steps: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Uniform (0, 1) noise [B, V], a pure function of (seed, step, token id)."""

    def mix(x: torch.Tensor) -> torch.Tensor:  # splitmix64 finaliser with logical shifts
        x = (x ^ ((x >> 30) & ((1 << 34) - 1))) * _MIX1
        x = (x ^ ((x >> 27) & ((1 << 37) - 1))) * _MIX2
        return x ^ ((x >> 31) & ((1 << 33) - 1))

    base = mix(seeds * _GOLDEN + steps)
    cols = torch.arange(vocab_size, dtype=torch.int64, device=seeds.device)
    bits = mix(base[:, None] + (cols[None, :] + 1) * _GOLDEN)
    top24 = ((bits >> 40) & ((1 << 24) - 1)).float()
    # (2**24 - 0.5) / 2**24 rounds to exactly 1.0 in fp32; the noise -log(u) would then be
    # -0, and a banned token's 0 / -0 a NaN that argmax picks. Keep u strictly below 1.
    return ((top24 + 0.5) * (1.0 / (1 << 24))).clamp_(max=1.0 - 2.0**-24)


def sample(logits: torch.Tensor, sb: SamplingBatch) -> torch.Tensor:
    """fp32 logits [B, V] -> token ids [B] (int64, on the logits' device)."""
    logits = apply_penalties(logits, sb)
    greedy_ids = logits.argmax(dim=-1)
    if sb.is_all_greedy:
        return greedy_ids
    vocab = logits.shape[-1]
    temps = torch.where(sb.temperatures > 0, sb.temperatures, torch.ones_like(sb.temperatures))
    probs = torch.softmax(logits / temps, dim=-1)
    if sb.need_top_k or sb.need_top_p:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        ranks = torch.arange(vocab, device=probs.device)[None, :]
        drop = ranks >= sb.top_ks[:, None]
        # keep the smallest prefix whose mass reaches top_p (the first token is always kept)
        drop |= ((sorted_p.cumsum(dim=-1) - sorted_p) >= sb.top_ps[:, None]) & (sb.top_ps[:, None] < 1.0)
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(1, order, sorted_p)
    if sb.need_min_p:
        probs = probs.masked_fill(probs < probs.max(dim=-1, keepdim=True).values * sb.min_ps[:, None], 0.0)
    exp_noise = -torch.log(_uniform(sb.seeds, sb.steps, vocab))
    sampled = (probs / exp_noise).argmax(dim=-1)
    return torch.where(sb.temperatures[:, 0] > 0, sampled, greedy_ids)


def logprobs_of(logits: torch.Tensor, targets: torch.Tensor, top_k: Sequence[int]) -> list[torch.Tensor]:
    """Log-softmax of fp32 logits [N, V], on the device: the targets' logprobs [N], and when
    any row asks for alternatives, the top-k values and ids [N, max k] (rows slice their own k)."""
    logp = torch.log_softmax(logits, dim=-1)
    out = [logp.gather(1, targets[:, None])[:, 0]]
    k = max(top_k, default=0)
    if k > 0:
        vals, ids = logp.topk(min(k, logp.shape[-1]), dim=-1)
        out += [vals, ids]
    return out
