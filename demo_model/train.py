"""Train the demo model: a small Llama from Python's own text and synthetic conversations.

    python -m radixlm.demo_model.train --out /tmp/demo-model          # on one GPU (see recipe.json)
    python -m radixlm.demo_model.train --out /tmp/tiny --steps 20 --conversations 10000 --device cpu

Everything comes from this machine: the standard library's sources and pydoc topics
(corpus.py) and conversations drawn from tasks.py's training split. The script trains the
tokenizer, packs the rows, trains with AdamW in bf16 autocast, checks the exported Hugging
Face model against its own forward pass, measures held-out accuracy with a plain greedy loop
(evaluate.py measures it again through the DSL and the Engine), and writes the folder with
its recipe and README.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from radixlm.demo_model import chat_format as fmt
from radixlm.demo_model import corpus, model_card, quick_eval


@dataclass(frozen=True)
class Shape:
    vocab_size: int = 8192
    hidden_size: int = 384
    intermediate_size: int = 896
    num_hidden_layers: int = 6
    num_attention_heads: int = 6
    num_key_value_heads: int = 2
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 2048

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # as transformers' LlamaRMSNorm: normalise in fp32, scale in the input's dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Block(nn.Module):
    """One Llama decoder layer, named as transformers names its weights."""

    def __init__(self, shape: Shape) -> None:
        super().__init__()
        d, hd = shape.hidden_size, shape.head_dim
        self.shape = shape
        self.input_layernorm = RMSNorm(d, shape.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(d, shape.rms_norm_eps)
        self.self_attn = nn.ModuleDict(
            {
                "q_proj": nn.Linear(d, shape.num_attention_heads * hd, bias=False),
                "k_proj": nn.Linear(d, shape.num_key_value_heads * hd, bias=False),
                "v_proj": nn.Linear(d, shape.num_key_value_heads * hd, bias=False),
                "o_proj": nn.Linear(shape.num_attention_heads * hd, d, bias=False),
            }
        )
        self.mlp = nn.ModuleDict(
            {
                "gate_proj": nn.Linear(d, shape.intermediate_size, bias=False),
                "up_proj": nn.Linear(d, shape.intermediate_size, bias=False),
                "down_proj": nn.Linear(shape.intermediate_size, d, bias=False),
            }
        )

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        b, t, _ = x.shape
        s, attn = self.shape, self.self_attn
        h = self.input_layernorm(x)
        q = attn["q_proj"](h).view(b, t, s.num_attention_heads, s.head_dim).transpose(1, 2)
        k = attn["k_proj"](h).view(b, t, s.num_key_value_heads, s.head_dim).transpose(1, 2)
        v = attn["v_proj"](h).view(b, t, s.num_key_value_heads, s.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        rep = s.num_attention_heads // s.num_key_value_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + attn["o_proj"](o.transpose(1, 2).reshape(b, t, -1))
        h = self.post_attention_layernorm(x)
        return x + self.mlp["down_proj"](F.silu(self.mlp["gate_proj"](h)) * self.mlp["up_proj"](h))


class DemoLlama(nn.Module):
    """A Llama with tied embeddings whose forward takes per-token positions and document ids
    (packed rows); weights load into transformers' LlamaForCausalLM unchanged."""

    def __init__(self, shape: Shape) -> None:
        super().__init__()
        self.shape = shape
        self.embed_tokens = nn.Embedding(shape.vocab_size, shape.hidden_size)
        self.layers = nn.ModuleList(Block(shape) for _ in range(shape.num_hidden_layers))
        self.norm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        inv_freq = 1.0 / (shape.rope_theta ** (torch.arange(0, shape.head_dim, 2).float() / shape.head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = 0.02
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):  # residual branches, GPT-2 style
                nn.init.normal_(p, std=std / math.sqrt(2 * self.shape.num_hidden_layers))
            else:
                nn.init.normal_(p, std=std)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
        freqs = positions[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (b, 1, t, head_dim)
        cos, sin = emb.cos(), emb.sin()
        t = tokens.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril()
        mask = (causal & (docs[:, :, None] == docs[:, None, :]))[:, None]
        x = self.embed_tokens(tokens)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.norm(x) @ self.embed_tokens.weight.t()

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        return {f"model.{k}": v for k, v in self.state_dict().items()}


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def loss_of(model: DemoLlama, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(batch["tokens"][:, :-1], batch["positions"][:, :-1], batch["docs"][:, :-1])
    targets = batch["tokens"][:, 1:].masked_fill(~batch["learn"][:, 1:], -100)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1).long())


def make_train_step(
    model: DemoLlama, *, device: str, compile_loss: bool
) -> Callable[[dict[str, torch.Tensor], float], torch.Tensor]:
    """One optimiser step at a given learning rate: AdamW (decay on matrices only), bf16
    autocast on a GPU, gradients clipped to norm 1. `compile_loss` runs the forward and the
    loss through torch.compile (one graph: every batch has the same shape)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=0.0, betas=(0.9, 0.95), fused=device.startswith("cuda"),
    )  # fmt: skip
    loss_fn = torch.compile(loss_of) if compile_loss else loss_of

    def step(batch: dict[str, torch.Tensor], lr: float) -> torch.Tensor:
        for group in opt.param_groups:
            group["lr"] = lr
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=device != "cpu"):
            loss = loss_fn(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.detach()

    return step


def _to_device(rows: corpus.Rows, device: str) -> dict[str, torch.Tensor]:
    return {
        name: torch.from_numpy(getattr(rows, name)).to(device)
        for name in ("tokens", "learn", "positions", "docs")
    }


def export(model: DemoLlama, tokenizer, out: Path, shape: Shape) -> None:
    """Save as an ordinary transformers folder (bf16 safetensors, tokenizer with the chat
    template) and check transformers' forward equals ours on a conversation."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=None,
        eos_token=fmt.IM_END,
        pad_token=fmt.PAD,
        unk_token=None,
        additional_special_tokens=[fmt.END_OF_TEXT, fmt.IM_START],
    )
    hf_tok.chat_template = fmt.CHAT_TEMPLATE
    config = LlamaConfig(
        **{k: v for k, v in asdict(shape).items() if k != "rope_theta"},
        head_dim=shape.head_dim,
        rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta},
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
    )
    hf = LlamaForCausalLM(config).float()
    missing, unexpected = hf.load_state_dict(model.hf_state_dict(), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"weights do not map onto LlamaForCausalLM: {missing} {unexpected}")
    hf.tie_weights()
    text, _ = fmt.render_chat([{"role": "user", "content": "What is 12 + 30?"}], add_generation_prompt=True)
    ids = torch.tensor([tokenizer.encode(text).ids])
    ours = model.float().cpu()
    with torch.no_grad():
        pos = torch.arange(ids.shape[1])[None]
        diff = (hf(ids).logits - ours(ids, pos, torch.zeros_like(ids))).abs().max().item()
    if diff > 1e-3:
        raise RuntimeError(f"transformers' forward differs from the training model's by {diff}")
    hf.generation_config = GenerationConfig(
        eos_token_id=[hf_tok.eos_token_id, hf_tok.convert_tokens_to_ids(fmt.END_OF_TEXT)],
        pad_token_id=hf_tok.pad_token_id,
        do_sample=False,
    )
    hf.to(torch.bfloat16).save_pretrained(out)
    hf_tok.save_pretrained(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the model folder to write")
    p.add_argument("--steps", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=96, help="rows of --seq-len tokens per step")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--text-share", type=float, default=0.2, help="share of each batch from Python's text")
    p.add_argument("--conversations", type=int, default=1_500_000)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-count", type=int, default=200, help="held-out examples per family at the end")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None,
        help="torch.compile the forward and loss (2.3x the steps per second on an H100; default: on a GPU)",
    )  # fmt: skip
    p.add_argument(
        "--deterministic", action=argparse.BooleanOptionalAction, default=False,
        help="torch.use_deterministic_algorithms (about 15%% slower on an H100)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.compile is None:
        args.compile = args.device.startswith("cuda")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.deterministic:
        # cuBLAS reads this when CUDA starts, which has not happened yet in this process
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    shape = Shape()
    t0 = time.perf_counter()
    log = open(out / "train.log", "w")

    def say(msg: str) -> None:
        print(msg, flush=True)
        log.write(msg + "\n")
        log.flush()

    texts = corpus.python_texts()
    tokenizer = corpus.train_tokenizer(
        texts, corpus.sample_conversations(20_000, args.seed), shape.vocab_size
    )
    pad = tokenizer.token_to_id(fmt.PAD)
    text_rows = corpus.shuffled(
        corpus.pack(corpus.text_documents(tokenizer, texts), args.seq_len, pad), args.seed
    )
    chat, dropped = corpus.chat_rows(tokenizer, args.conversations, args.seed, args.seq_len)
    chat = corpus.shuffled(chat, args.seed + 1)
    data = {
        "python_text_files": len(texts),
        "python_text_tokens": int((text_rows.tokens != pad).sum()),
        "conversations": args.conversations,
        "conversations_too_long": dropped,
        "chat_tokens": int((chat.tokens != pad).sum()),
        "chat_learned_tokens": int(chat.learn.sum()),
    }
    say(f"data in {time.perf_counter() - t0:.0f} s: {json.dumps(data)}")

    device = args.device
    model = DemoLlama(shape).to(device)
    params = sum(p.numel() for p in model.parameters())
    say(f"{params / 1e6:.2f} M parameters; {shape}")
    text_t, chat_t = _to_device(text_rows, device), _to_device(chat, device)
    n_text = round(args.batch_size * args.text_share)
    n_chat = args.batch_size - n_text
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    train_step = make_train_step(model, device=device, compile_loss=args.compile)
    chat_cursor, t_train = 0, time.perf_counter()
    for step in range(args.steps):
        ti = torch.randint(len(text_rows.tokens), (n_text,), generator=gen).to(device)
        ci = (torch.arange(chat_cursor, chat_cursor + n_chat) % len(chat.tokens)).to(device)
        chat_cursor += n_chat
        batch = {k: torch.cat([text_t[k][ti], chat_t[k][ci]]) for k in text_t}
        lr = lr_at(step, args.steps, args.lr, args.warmup)
        loss = train_step(batch, lr)
        if step % 100 == 0 or step == args.steps - 1:
            elapsed = time.perf_counter() - t_train
            say(f"step {step} loss {loss.item():.4f} lr {lr:.2e} {elapsed:.0f} s")
    train_s = time.perf_counter() - t_train
    model.eval()
    accuracy = quick_eval.evaluate(model, tokenizer, count=args.eval_count, device=device)
    say(f"held-out accuracy (greedy, {args.eval_count} per family): {json.dumps(accuracy)}")
    export(model, tokenizer, out, shape)
    recipe = {
        "command": "python -m radixlm.demo_model.train " + " ".join(sys.argv[1:] if argv is None else argv),
        "arguments": vars(args),
        "shape": asdict(shape),
        "parameters": params,
        "data": data,
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "final_loss": round(loss.item(), 4),
        "heldout_accuracy_at_training": accuracy,
        "device": torch.cuda.get_device_name()
        if device.startswith("cuda")
        else platform.processor() or "cpu",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    (out / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    (out / "README.md").write_text(model_card.render(recipe))
    say(f"wrote {out} in {time.perf_counter() - t0:.0f} s")
    log.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
