"""A tiny random "thinking" model for the reasoning tests: the tiny Qwen3 with `<think>` and
`</think>` added to its tokenizer (added, not special, as in Qwen3's), a Qwen3-like chat
template, and weights edited so that random sampling writes `</think>` often.

Random weights would write `</think>` about once in eight thousand tokens. Here one hidden
dimension is a constant: every embedding holds THINK_DIM_VALUE there and no layer writes to
it, so after the final norm it is always positive; the `</think>` row of the LM head reads
only that dimension and no other row reads it. `</think>` then gets a logit of its own at
every step (a fixed bias, in effect) and, at temperature 1, a chance of roughly one in five,
while every other token keeps its random logits. Outputs stay deterministic per seed.

The template renders the generation prompt as Qwen3 thinking models do: the think block
opened (`<think>\\n`); with enable_thinking=false an empty block closed
(`<think>\\n\\n</think>\\n\\n`); with open_think=false (a variable of this template only) no
block at all, as the original Qwen3 leaves the choice to the model.
"""

from __future__ import annotations

from pathlib import Path

THINK_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{% elif open_think is not defined or open_think %}{{ '<think>\\n' }}"
    "{% endif %}{% endif %}"
)
THINK_DIM_VALUE = 4.0  # the constant hidden dimension (others are about 0.5)
THINK_END_WEIGHT = 1.5  # the `</think>` logit per unit of that dimension after the norm


def build_thinking_model(out: Path) -> Path:
    """Write the model folder to `out` (a fresh directory) and return it."""
    import torch
    from transformers import AutoModelForCausalLM

    from radixlm.testing import build_tiny_model, load_tokenizer

    src = build_tiny_model("qwen3")
    tok = load_tokenizer(src)
    tok.add_tokens(["<think>", "</think>"])
    tok.chat_template = THINK_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    end = tok.convert_tokens_to_ids("</think>")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        embed = model.get_input_embeddings().weight
        head = model.get_output_embeddings().weight
        new = embed.shape[0] - old
        embed[old:] = 0.5 * torch.randn(new, embed.shape[1], generator=gen)
        head[old:] = 0.08 * torch.randn(new, head.shape[1], generator=gen)
        embed[:, 0] = THINK_DIM_VALUE
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0, :] = 0.0
            layer.mlp.down_proj.weight[0, :] = 0.0
        head[:, 0] = 0.0
        head[end, :] = 0.0
        head[end, 0] = THINK_END_WEIGHT
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
