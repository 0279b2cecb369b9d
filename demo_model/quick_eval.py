"""Held-out accuracy of the training model itself, by plain batched greedy decoding: the
check the training script prints before it exports. No KV cache, no constraints; the
numbers the README reports come from evaluate.py, through the DSL and the Engine."""

from __future__ import annotations

import torch

from radixlm.demo_model import chat_format as fmt
from radixlm.demo_model import grading, tasks


@torch.no_grad()
def greedy(model, tokenizer, prompts: list[str], max_new_tokens: int, device: str) -> list[str]:
    """Each prompt's greedy continuation up to <|im_end|>; one batch, right-padded (a causal
    model never looks at the padding after a row's last token)."""
    end = tokenizer.token_to_id(fmt.IM_END)
    pad = tokenizer.token_to_id(fmt.PAD)
    encoded = [e.ids for e in tokenizer.encode_batch(prompts)]
    lengths = torch.tensor([len(ids) for ids in encoded], device=device)
    width = int(lengths.max()) + max_new_tokens
    tokens = torch.full((len(prompts), width), pad, dtype=torch.long, device=device)
    for row, ids in enumerate(encoded):
        tokens[row, : len(ids)] = torch.tensor(ids, device=device)
    positions = torch.arange(width, device=device).expand(len(prompts), width)
    docs = torch.zeros_like(tokens)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    rows = torch.arange(len(prompts), device=device)
    start = lengths.clone()
    for _ in range(max_new_tokens):
        limit = int(lengths.max())
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=device != "cpu"):
            logits = model(tokens[:, :limit], positions[:, :limit], docs[:, :limit])
        nxt = logits[rows, lengths - 1].argmax(-1)
        active = ~done
        tokens[rows[active], lengths[active]] = nxt[active]
        lengths = lengths + active.long()
        done = done | (active & (nxt == end))
        if bool(done.all()):
            break
    texts = []
    for row in range(len(prompts)):
        ids = tokens[row, int(start[row]) : int(lengths[row])].tolist()
        ids = ids[: ids.index(end)] if end in ids else ids
        texts.append(tokenizer.decode(ids, skip_special_tokens=False))
    return texts


def evaluate(model, tokenizer, count: int, device: str, seed: int = 1234) -> dict[str, float]:
    """Share of right answers per metric over `count` held-out examples of each family."""
    results: dict[str, float] = {}
    for family in tasks.EVALUATED:
        all_stages = [s for ex in tasks.heldout_examples(family, count, seed) for s in grading.stages(ex)]
        for metric in dict.fromkeys(s.metric for s in all_stages):
            chosen = [s for s in all_stages if s.metric == metric]
            prompts = [fmt.render_chat(s.messages, s.tools, add_generation_prompt=True)[0] for s in chosen]
            answers = []
            for i in range(0, len(prompts), 64):
                answers += greedy(model, tokenizer, prompts[i : i + 64], max_new_tokens=48, device=device)
            results[metric] = round(sum(s.check(a) for s, a in zip(chosen, answers)) / len(chosen), 4)
    return results
