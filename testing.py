"""Offline tiny models for tests, examples and benchmarks.

Everything is built locally and cached on disk: a byte-level BPE tokenizer trained with
`tokenizers` on text that ships with Python, and randomly initialised Llama / Mistral /
Qwen2 / Qwen3 models and Mixtral / Qwen2-MoE / Qwen3-MoE mixtures of experts saved as
ordinary Hugging Face folders (config.json, safetensors, tokenizer files, chat template).
Nothing is ever downloaded.

Weights use a large init std so logits are peaked: greedy parity tests against Hugging
Face are then not decided by near-ties.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sysconfig
import tempfile
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
VOCAB_SIZE = 8192
_BUILD_VERSION = "1"  # bump to rebuild every cached folder

# name -> (architecture, config overrides). Shapes are tiny but keep the real structure:
# GQA (4 query heads over 2 KV heads), head_dim 16, two layers.
TINY_MODELS: dict[str, tuple[str, dict]] = {
    "llama": ("llama", {"tie_word_embeddings": False}),
    "llama-tied": ("llama", {"tie_word_embeddings": True}),
    "llama3-rope": (
        "llama",
        {
            "tie_word_embeddings": False,
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        },
    ),
    "mistral": ("mistral", {"tie_word_embeddings": False, "sliding_window": None}),
    "qwen2": ("qwen2", {"tie_word_embeddings": True}),
    "qwen3": ("qwen3", {"tie_word_embeddings": False}),
    # mixture of experts (runtime/models/moe.py): Mixtral's top-2 of 8 in every layer; Qwen3-MoE's
    # top-4 of 16 renormalised, three layers with the middle one dense (mlp_only_layers);
    # Qwen2-MoE's top-2 of 8 unnormalised, with its sigmoid-gated shared expert
    "mixtral": (
        "mixtral",
        {
            "tie_word_embeddings": False,
            "sliding_window": None,
            "num_local_experts": 8,
            "num_experts_per_tok": 2,
            "intermediate_size": 64,
        },
    ),
    "qwen3-moe": (
        "qwen3_moe",
        {
            "tie_word_embeddings": False,
            "num_hidden_layers": 3,
            "num_experts": 16,
            "num_experts_per_tok": 4,
            "norm_topk_prob": True,
            "moe_intermediate_size": 32,
            "mlp_only_layers": [1],
        },
    ),
    "qwen2-moe": (
        "qwen2_moe",
        {
            "tie_word_embeddings": True,
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "norm_topk_prob": False,
            "moe_intermediate_size": 32,
            "shared_expert_intermediate_size": 64,
        },
    ),
}
# the mixture-of-experts ones among them
MOE_TINY_MODELS = ("mixtral", "qwen3-moe", "qwen2-moe")
DEFAULT_MODEL = "llama"


def cache_root() -> Path:
    root = os.environ.get("RADIXLM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "radixlm"
    )
    return Path(root)


def _training_text() -> list[str]:
    """English prose (pydoc topics) plus some stdlib source, all shipped with Python."""
    from pydoc_data import topics

    texts = list(topics.topics.values())
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in [
        "json/__init__.py",
        "argparse.py",
        "dataclasses.py",
        "functools.py",
        "textwrap.py",
        "heapq.py",
        "bisect.py",
        "string.py",
        "pathlib.py",
        "random.py",
        "statistics.py",
    ]:
        path = stdlib / name
        if path.exists():
            try:
                texts.append(path.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                continue
    return texts


def _atomic_build(target: Path, build) -> Path:
    """Build into a temp dir beside target and rename, so concurrent builders never see halves."""
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp", dir=target.parent))
    try:
        build(tmp)
        (tmp / ".complete").write_text("ok")
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race
            if not (target / ".complete").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_tokenizer_files() -> Path:
    """Train (once) a byte-level BPE tokenizer; returns the folder holding tokenizer.json."""
    key = hashlib.sha1(f"tok-{VOCAB_SIZE}-{_BUILD_VERSION}".encode()).hexdigest()[:10]

    def build(out: Path) -> None:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=VOCAB_SIZE,
            min_frequency=2,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(_training_text(), trainer=trainer)
        tok.save(str(out / "tokenizer.json"))

    return _atomic_build(cache_root() / f"tokenizer-{key}", build)


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer of a folder, with ids exactly as tokenizer.json defines them."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(path))


def _make_hf_tokenizer():
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(build_tokenizer_files() / "tokenizer.json"),
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
        additional_special_tokens=["<|endoftext|>", "<|im_start|>"],
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def _hf_config(arch: str, overrides: dict, tok):
    from transformers import (
        LlamaConfig,
        MistralConfig,
        MixtralConfig,
        Qwen2Config,
        Qwen2MoeConfig,
        Qwen3Config,
        Qwen3MoeConfig,
    )

    cls = {
        "llama": LlamaConfig,
        "mistral": MistralConfig,
        "qwen2": Qwen2Config,
        "qwen3": Qwen3Config,
        "mixtral": MixtralConfig,
        "qwen2_moe": Qwen2MoeConfig,
        "qwen3_moe": Qwen3MoeConfig,
    }[arch]
    kw = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=2048,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        rms_norm_eps=1e-6,
    )
    kw.update(overrides)
    return cls(**kw)


def _randomize(model, seed: int) -> None:
    """Peaked random weights: std 0.08 matrices, norm gains near 1, non-zero biases."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
            elif name.endswith("embed_tokens.weight"):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=gen))


def build_tiny_model(name: str = DEFAULT_MODEL) -> Path:
    """Build (once) and return the folder of the tiny model `name` (see TINY_MODELS)."""
    if name not in TINY_MODELS:
        raise ValueError(f"unknown tiny model {name!r}; choose one of {sorted(TINY_MODELS)}")
    arch, overrides = TINY_MODELS[name]
    key = hashlib.sha1(json.dumps([arch, overrides, VOCAB_SIZE, _BUILD_VERSION], sort_keys=True).encode())
    folder = cache_root() / f"tiny-{name}-{key.hexdigest()[:10]}"

    def build(out: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, GenerationConfig

        tok = _make_hf_tokenizer()
        cfg = _hf_config(arch, overrides, tok)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        _randomize(model, seed=sum(map(ord, name)))
        if cfg.tie_word_embeddings:
            model.tie_weights()
        model.generation_config = GenerationConfig(
            eos_token_id=[tok.eos_token_id, tok.convert_tokens_to_ids("<|endoftext|>")],
            pad_token_id=tok.pad_token_id,
            do_sample=False,
        )
        model.save_pretrained(out)
        tok.save_pretrained(out)

    return _atomic_build(folder, build)


def random_llama(config: dict, dtype, device, seed: int = 0, std: float = 0.02):
    """HF `LlamaForCausalLM` with `LlamaConfig(**config)`, built directly on `device` in `dtype`
    with N(0, std) matrices and unit norm gains: the large random models of GPU speed and
    logprob runs (no download, never materialised on the CPU)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**{"bos_token_id": None, "eos_token_id": 0, "pad_token_id": 0, **config})
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, std)
    return model.eval()


def save_model_folder(model, folder: str | os.PathLike) -> Path:
    """Save an HF model as an ordinary model folder (replacing `folder`) with this module's
    offline tokenizer files, so radixlm can load the same weights."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    model.save_pretrained(folder)
    for f in build_tokenizer_files().iterdir():
        if f.is_file():
            shutil.copy(f, folder / f.name)
    return folder


def default_model_path() -> str:
    return str(build_tiny_model(DEFAULT_MODEL))


if __name__ == "__main__":
    for model_name in TINY_MODELS:
        print(model_name, build_tiny_model(model_name))


def tp_greedy_worker(
    rank: int,
    size: int,
    init_file: str,
    model_path: str,
    prompts: list[list[int]],
    max_new_tokens: int,
    out_dir: str,
    options: dict | None = None,
) -> None:
    """One tensor-parallel rank (gloo, CPU) running the scheduler over `prompts` greedily and
    writing its outputs to out_dir/rank{rank}.json: every rank must produce the same tokens,
    equal to the single-rank model's. A module-level function so `torch.multiprocessing`
    can spawn it."""
    import json as _json

    import torch

    from radixlm.runtime.config import EngineConfig, ModelConfig
    from radixlm.runtime.layers.sampling import SamplingParams
    from radixlm.runtime.model_executor.distributed import init_tensor_parallel
    from radixlm.runtime.model_executor.model_runner import ModelRunner
    from radixlm.runtime.scheduler.request import Req
    from radixlm.runtime.scheduler.scheduler import Scheduler

    torch.set_num_threads(1)
    tp = init_tensor_parallel(rank, size, f"file://{init_file}", "gloo")
    cfg = EngineConfig(model_path, device="cpu", max_total_tokens=4000, **(options or {}))
    model_cfg = ModelConfig.from_path(model_path)
    runner = ModelRunner(cfg, model_cfg, tp)
    scheduler = Scheduler(cfg, runner, decode_tokens=lambda ids: "")
    reqs = []
    for i, ids in enumerate(prompts):
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, ignore_eos=True)
        reqs.append(
            Req(
                rid=f"r{i}",
                origin_input_ids=list(ids),
                sampling_params=params,
                seed=i,
                eos_ids=frozenset(model_cfg.eos_token_ids),
            )
        )
        scheduler.add_request(reqs[-1])
    while scheduler.has_work:
        scheduler.step()
        scheduler.check_accounting()
    Path(out_dir, f"rank{rank}.json").write_text(
        _json.dumps(
            {
                "outputs": [r.output_ids for r in reqs],
                "local_heads": [runner.num_heads, runner.num_kv_heads],
                "kv_pool_heads": runner.kv_pool.k_buffers[0].shape[1],
            }
        )
    )
    tp.close()  # together, after the last collective (see TPGroup.close)
