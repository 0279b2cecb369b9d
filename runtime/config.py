"""Configuration: what the model folder says (ModelConfig) and how to run it (EngineConfig)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    # mixture-of-experts: the same decoder with a sparse MoE block in place of the MLP
    "MixtralForCausalLM": "mixtral",
    "Qwen2MoeForCausalLM": "qwen2_moe",
    "Qwen3MoeForCausalLM": "qwen3_moe",
}
MOE_FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class RopeConfig:
    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class MoeConfig:
    """A mixture-of-experts model's sparse blocks (config.json's names differ per family:
    Mixtral's `num_local_experts` / `intermediate_size`, Qwen's `num_experts` /
    `moe_intermediate_size`)."""

    num_experts: int
    top_k: int  # num_experts_per_tok
    intermediate_size: int  # of one expert
    renormalize: bool  # the top-k probabilities rescaled to sum to 1 (Mixtral always; Qwen: norm_topk_prob)
    # the layers whose MLP is the sparse block; the others keep a dense MLP of ModelConfig's
    # intermediate_size (Qwen: `mlp_only_layers`, `decoder_sparse_step`; Mixtral: every layer)
    sparse_layers: tuple[int, ...]
    # Qwen2-MoE's always-on expert, gated by sigmoid(x @ shared_expert_gate); 0 = none
    shared_expert_intermediate_size: int = 0

    @staticmethod
    def from_raw(family: str, raw: dict[str, Any], num_layers: int) -> MoeConfig:
        if family == "mixtral":
            return MoeConfig(
                num_experts=raw["num_local_experts"],
                top_k=raw.get("num_experts_per_tok", 2),
                intermediate_size=raw["intermediate_size"],
                renormalize=True,
                sparse_layers=tuple(range(num_layers)),
            )
        step = raw.get("decoder_sparse_step", 1) or 1
        dense = set(raw.get("mlp_only_layers") or [])
        # "num_experts" in Qwen's own configs; transformers >= 5 writes its alias "num_local_experts"
        num_experts = raw["num_experts"] if "num_experts" in raw else raw["num_local_experts"]
        # HF's rule (Qwen2MoeDecoderLayer / Qwen3MoeDecoderLayer): sparse unless listed in
        # mlp_only_layers, on every decoder_sparse_step-th layer, when there are experts at all
        sparse = tuple(
            i for i in range(num_layers) if i not in dense and num_experts > 0 and (i + 1) % step == 0
        )
        return MoeConfig(
            num_experts=num_experts,
            top_k=raw.get("num_experts_per_tok", 8),
            intermediate_size=raw["moe_intermediate_size"],
            renormalize=bool(raw.get("norm_topk_prob", False)),
            sparse_layers=sparse,
            shared_expert_intermediate_size=(
                raw.get("shared_expert_intermediate_size", 0) if family == "qwen2_moe" else 0
            ),
        )


@dataclass(frozen=True)
class ModelConfig:
    """The subset of a Hugging Face config.json that our model code needs."""

    path: str
    architecture: str
    family: str  # llama | qwen2 | qwen3 | mixtral | qwen2_moe | qwen3_moe: which model to build
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    qk_norm: bool
    rope: RopeConfig
    torch_dtype: str
    eos_token_ids: tuple[int, ...]
    sliding_window: int | None = None
    # the checkpoint's own quantisation: ("fp8", (block_n, block_k)) for Hugging Face's
    # block-wise fp8 format (`quantization_config.weight_block_size`, `weight_scale_inv`)
    checkpoint_fp8_block: tuple[int, int] | None = None
    moe: MoeConfig | None = None  # mixture-of-experts families only

    @staticmethod
    def from_path(path: str | os.PathLike) -> ModelConfig:
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"model folder not found: {str(path)!r}")
        cfg_file = folder / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"no config.json in model folder {str(path)!r}")
        raw = json.loads(cfg_file.read_text())
        archs = raw.get("architectures") or []
        arch = archs[0] if archs else None
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unsupported model architecture {arch!r} in {cfg_file} "
                f"(supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))})"
            )
        family = SUPPORTED_ARCHITECTURES[arch]
        num_heads = raw["num_attention_heads"]
        head_dim = raw.get("head_dim") or raw["hidden_size"] // num_heads
        eos = _eos_ids(folder, raw)
        sliding = raw.get("sliding_window")
        if family not in ("llama", "mixtral") and not raw.get("use_sliding_window", False):
            sliding = None
        return ModelConfig(
            path=str(folder.resolve()),
            architecture=arch,
            family=family,
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            # Qwen-MoE's dense layers (mlp_only_layers); Mixtral's is its experts' size, also in moe
            intermediate_size=raw.get("intermediate_size", 0),
            num_layers=raw["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=raw.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            max_position_embeddings=raw.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            attention_bias=family == "qwen2"
            or (family == "qwen2_moe" and bool(raw.get("qkv_bias", True)))
            or bool(raw.get("attention_bias", False)),
            qk_norm=family in ("qwen3", "qwen3_moe"),
            rope=_rope_config(raw, cfg_file),
            torch_dtype=str(raw.get("dtype") or raw.get("torch_dtype") or "float32"),
            eos_token_ids=eos,
            sliding_window=sliding,
            checkpoint_fp8_block=_checkpoint_fp8_block(raw, cfg_file),
            moe=MoeConfig.from_raw(family, raw, raw["num_hidden_layers"]) if family in MOE_FAMILIES else None,
        )


def _rope_config(raw: dict[str, Any], where: Path) -> RopeConfig:
    # transformers >= 5 writes "rope_parameters"; older folders have rope_theta + rope_scaling.
    params = dict(raw.get("rope_parameters") or {})
    if not params:
        params = dict(raw.get("rope_scaling") or {})
        params.setdefault("rope_theta", raw.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"unsupported rope type {rope_type!r} in {where} (supported: {SUPPORTED_ROPE_TYPES})"
        )
    return RopeConfig(
        theta=float(params.get("rope_theta", raw.get("rope_theta", 10000.0))),
        rope_type=rope_type,
        factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(
            params.get("original_max_position_embeddings", raw.get("max_position_embeddings", 8192))
        ),
    )


def _checkpoint_fp8_block(raw: dict[str, Any], cfg_file: Path) -> tuple[int, int] | None:
    qc = raw.get("quantization_config")
    if not qc:
        return None
    method = qc.get("quant_method")
    if method != "fp8":
        raise ValueError(f"{cfg_file}: quantization method {method!r} is not supported (only 'fp8')")
    if qc.get("activation_scheme", "dynamic") != "dynamic":
        raise ValueError(
            f"{cfg_file}: fp8 activation_scheme {qc.get('activation_scheme')!r} is not supported "
            "(only 'dynamic': per-token-group scales computed at run time)"
        )
    block = qc.get("weight_block_size")
    if not (
        isinstance(block, list) and len(block) == 2 and all(isinstance(b, int) and b >= 16 for b in block)
    ):
        raise ValueError(
            f"{cfg_file}: fp8 checkpoints must be block-quantised: weight_block_size [n, k] with "
            f"n, k >= 16, got {block!r}"
        )
    return block[0], block[1]


def _eos_ids(folder: Path, raw: dict[str, Any]) -> tuple[int, ...]:
    ids: list[int] = []

    def add(value: Any) -> None:
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, int) and v not in ids:
                ids.append(v)

    add(raw.get("eos_token_id"))
    gen_file = folder / "generation_config.json"
    if gen_file.is_file():
        add(json.loads(gen_file.read_text()).get("eos_token_id"))
    return tuple(ids)


@dataclass(frozen=True)
class EngineConfig:
    """How to run a model. Every field is an `Engine(...)` keyword."""

    model_path: str
    tokenizer_path: str | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16
    context_length: int | None = None  # default: the model's max_position_embeddings
    # KV pool size: a token count wins; else a fraction of free GPU memory; CPU defaults to a budget.
    max_total_tokens: int | None = None
    mem_fraction_static: float = 0.85
    max_running_requests: int | None = None
    max_prefill_tokens: int = 16384
    chunked_prefill_size: int | None = None  # default: 8192 on GPU, 2048 on CPU; -1 disables chunking
    schedule_policy: str = "lpm"  # lpm | fcfs
    disable_radix_cache: bool = False
    # the radix cache's host tier: prefixes evicted from the device KV pool move to pinned host
    # memory and come back on a hit. Its size: hicache_size GiB when > 0, else hicache_ratio
    # times the device pool. write_back copies a prefix out when it is evicted; write_through
    # when its request finishes (eviction is then free, but every prefix is copied once)
    enable_hierarchical_cache: bool = False
    hicache_ratio: float = 2.0
    hicache_size: float = 0.0
    hicache_write_policy: str = "write_back"  # write_back | write_through
    # constrained requests: draft the text their grammar forces and verify it in one pass
    disable_jump_forward: bool = False
    # speculative decoding without a draft model (runtime/scheduler/draft_proposers.py):
    # None | "ngram" (prompt lookup) | "lookahead" (the radix tree's continuation, then n-gram);
    # at most speculative_num_draft_tokens drafts per request and step (adaptive below that),
    # and none while more than speculative_max_batch requests decode (compute-bound by then)
    speculative_algorithm: str | None = None
    speculative_num_draft_tokens: int = 8
    speculative_max_batch: int = 16
    # regex for the whitespace a JSON-schema output may have between tokens (default "[ ]?")
    constrained_json_whitespace_pattern: str | None = None
    # who compiles and enforces constraints: auto | outlines | llguidance (runtime/constrained/
    # backend.py: choose_backend says what auto picks and why)
    grammar_backend: str = "auto"
    # tool calls in /v1/chat/completions: hermes | llama3 | mistral (None: detected from the
    # chat template, else hermes)
    tool_call_parser: str | None = None
    # <think> models in /v1/chat/completions: reasoning apart from content, constraints only
    # after it (qwen3 | qwen3-thinking | deepseek-r1; None: the output is all content)
    reasoning_parser: str | None = None
    schedule_conservativeness: float = 1.0
    # GPU kernels: auto/triton = Triton on CUDA; torch = the PyTorch reference kernels everywhere
    attention_backend: str = "auto"
    # decode steps replay CUDA graphs captured at start-up for batch sizes up to this (GPU only)
    disable_cuda_graph: bool = False
    cuda_graph_max_bs: int = 128
    # queue decode step N+1 before processing step N's tokens: auto = on for CUDA, off on CPU
    # (where the host is also the device and nothing can overlap)
    overlap_schedule: str = "auto"  # auto | on | off
    # weights: None = as stored (an fp8 checkpoint loads as fp8); "fp8" = block-quantise a
    # bf16/fp16/fp32 checkpoint at load time (128 x 128 blocks, per-token-group activations)
    quantization: str | None = None
    # the LM head: None = the model dtype (as SGLang and vLLM keep it, fp8 model or not); "fp8" =
    # block-quantise it too (each tensor-parallel rank its vocabulary rows; a tied model keeps
    # its embedding table and adds an fp8 copy for the head). benchmarks/bench_lm_head_fp8.py
    # measures what it does to logprobs
    lm_head_quantization: str | None = None
    # fp8 W8A8 products: "auto" = cuBLAS block-scaled GEMM from the tuned M where torch has it
    # (prefill), Triton below; "triton" = the Triton GEMM at every M
    fp8_gemm_backend: str = "auto"
    # KV cache: "auto" = the model dtype; "fp8_e4m3" halves KV bytes (per-layer scales)
    kv_cache_dtype: str = "auto"
    # tensor parallelism: one scheduler process per rank (one GPU each), weights sharded;
    # dist_init_addr (host:port) rendezvous for torch.distributed, default a private file
    tp_size: int = 1
    dist_init_addr: str | None = None
    # multi-node tensor parallelism: tp_size / nnodes ranks per node; node 0 serves clients,
    # the others run `radixlm serve --node-rank R` (worker ranks only) with the same dist_init_addr
    nnodes: int = 1
    node_rank: int = 0
    # data parallelism: dp_size replicas (each tp_size ranks) behind a prefix-aware router
    dp_size: int = 1
    random_seed: int | None = None
    log_level: str = "warning"

    def __post_init__(self) -> None:
        if self.schedule_policy not in ("lpm", "fcfs"):
            raise ValueError(f"schedule_policy must be 'lpm' or 'fcfs', got {self.schedule_policy!r}")
        if self.grammar_backend not in ("auto", "outlines", "llguidance"):
            raise ValueError(
                f"grammar_backend must be auto, outlines or llguidance, got {self.grammar_backend!r}"
            )
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ValueError(f"dtype must be auto, float32, float16 or bfloat16, got {self.dtype!r}")
        if self.max_total_tokens is not None and self.max_total_tokens < 2:
            raise ValueError(f"max_total_tokens must be >= 2, got {self.max_total_tokens}")
        if not 0.0 < self.mem_fraction_static < 1.0:
            raise ValueError(f"mem_fraction_static must be in (0, 1), got {self.mem_fraction_static}")
        if self.context_length is not None and self.context_length < 2:
            raise ValueError(f"context_length must be >= 2, got {self.context_length}")
        if self.chunked_prefill_size is not None and self.chunked_prefill_size == 0:
            raise ValueError("chunked_prefill_size must be positive, or -1 to disable chunking")
        if self.attention_backend not in ("auto", "triton", "torch"):
            raise ValueError(
                f"attention_backend must be auto, triton or torch, got {self.attention_backend!r}"
            )
        if self.overlap_schedule not in ("auto", "on", "off"):
            raise ValueError(f"overlap_schedule must be auto, on or off, got {self.overlap_schedule!r}")
        if self.quantization not in (None, "fp8"):
            raise ValueError(f"quantization must be None or 'fp8', got {self.quantization!r}")
        if self.lm_head_quantization not in (None, "fp8"):
            raise ValueError(f"lm_head_quantization must be None or 'fp8', got {self.lm_head_quantization!r}")
        if self.fp8_gemm_backend not in ("auto", "triton"):
            raise ValueError(f"fp8_gemm_backend must be auto or triton, got {self.fp8_gemm_backend!r}")
        if self.kv_cache_dtype not in ("auto", "fp8_e4m3"):
            raise ValueError(f"kv_cache_dtype must be auto or fp8_e4m3, got {self.kv_cache_dtype!r}")
        if self.tool_call_parser is not None:
            from radixlm.runtime.function_call import PARSERS

            if self.tool_call_parser not in PARSERS:
                known = ", ".join(sorted(PARSERS))
                raise ValueError(f"tool_call_parser must be one of {known}, got {self.tool_call_parser!r}")
        if self.reasoning_parser is not None:
            from radixlm.runtime.function_call import REASONING_PARSERS

            if self.reasoning_parser not in REASONING_PARSERS:
                known = ", ".join(sorted(REASONING_PARSERS))
                raise ValueError(f"reasoning_parser must be one of {known}, got {self.reasoning_parser!r}")
        if self.tp_size < 1:
            raise ValueError(f"tp_size must be >= 1, got {self.tp_size}")
        if self.dp_size < 1:
            raise ValueError(f"dp_size must be >= 1, got {self.dp_size}")
        if self.dp_size > 1 and self.nnodes > 1:
            raise ValueError("data parallelism across several nodes is not supported yet (use nnodes=1)")
        if self.nnodes < 1 or self.tp_size % self.nnodes:
            raise ValueError(f"tp_size ({self.tp_size}) must be a multiple of nnodes ({self.nnodes})")
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"node_rank must be in [0, {self.nnodes}), got {self.node_rank}")
        if self.nnodes > 1 and not self.dist_init_addr:
            raise ValueError("several nodes need dist_init_addr (host:port of node 0) to meet")
        if self.cuda_graph_max_bs < 1:
            raise ValueError(f"cuda_graph_max_bs must be >= 1, got {self.cuda_graph_max_bs}")
        if self.speculative_algorithm not in (None, "ngram", "lookahead"):
            raise ValueError(
                f"speculative_algorithm must be ngram, lookahead or None, got {self.speculative_algorithm!r}"
            )
        if not 1 <= self.speculative_num_draft_tokens <= 32:
            raise ValueError(
                f"speculative_num_draft_tokens must be in [1, 32], got {self.speculative_num_draft_tokens}"
            )
        if self.speculative_max_batch < 1:
            raise ValueError(f"speculative_max_batch must be >= 1, got {self.speculative_max_batch}")
        if self.hicache_ratio <= 0 or self.hicache_size < 0:
            raise ValueError(
                f"hicache_ratio must be > 0 and hicache_size (GiB) >= 0, got {self.hicache_ratio} "
                f"and {self.hicache_size}"
            )
        if self.hicache_write_policy not in ("write_back", "write_through"):
            raise ValueError(
                f"hicache_write_policy must be write_back or write_through, got {self.hicache_write_policy!r}"
            )
        if self.enable_hierarchical_cache and self.disable_radix_cache:
            raise ValueError("enable_hierarchical_cache needs the radix cache (drop disable_radix_cache)")
        if self.max_prefill_tokens < 1:
            raise ValueError(f"max_prefill_tokens must be >= 1, got {self.max_prefill_tokens}")

    @staticmethod
    def from_kwargs(model_path: str, **options: Any) -> EngineConfig:
        names = {f.name for f in dataclasses.fields(EngineConfig)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"unknown engine option(s): {', '.join(unknown)}")
        return EngineConfig(model_path=str(model_path), **options)


__all__ = ["ModelConfig", "EngineConfig", "MoeConfig", "RopeConfig", "SUPPORTED_ARCHITECTURES"]
