"""The README written into the demo model's folder, from the training recipe."""

from __future__ import annotations

import json


def render(recipe: dict) -> str:
    shape, args = recipe["shape"], recipe["arguments"]
    heads = f"{shape['num_attention_heads']} query heads over {shape['num_key_value_heads']} KV heads"
    seconds = f"{recipe['train_seconds']:.0f} s of training ({recipe['total_seconds']:.0f} s in all)"
    when = f"{seconds}, {recipe['date']}"
    accuracy = recipe["heldout_accuracy_at_training"]
    rows = "\n".join(f"| {metric} | {100 * value:.1f}% |" for metric, value in accuracy.items())
    count = args["eval_count"]
    return f"""# radixlm demo model

A {recipe["parameters"] / 1e6:.1f} M-parameter Llama (tied embeddings) trained from scratch for radixlm's
demo, examples and accuracy tests. It is small and narrow: it does the task families below,
and writes Python-looking text, nothing else. Nothing here was downloaded.

## How it was made

    {recipe["command"]}

on {recipe["device"]} in {when},
Python {recipe["python"]}, torch {recipe["torch"]}. `recipe.json` holds every argument and count.

- **Shape:** {shape["num_hidden_layers"]} layers, hidden {shape["hidden_size"]}, \
MLP {shape["intermediate_size"]}, {heads}, vocabulary {shape["vocab_size"]}, \
RoPE theta {shape["rope_theta"]:g}.
- **Tokenizer:** byte-level BPE trained by the script (digits split one by one; ChatML special
  tokens; `<tool_call>`, `</tool_call>`, `<tool_response>`, `</tool_response>`, `<tools>`,
  `</tools>` as tokens of their own).
- **Data:** the Python standard library's sources and pydoc's documentation topics (every
  token learned), and synthetic ChatML conversations from `radixlm/demo_model/tasks.py`
  (only the assistant's turns learned): {json.dumps(recipe["data"])}.
- **Training:** {args["steps"]} steps of {args["batch_size"]} rows x {args["seq_len"]} tokens \
({100 * args["text_share"]:.0f}% Python text), AdamW, peak learning rate {args["lr"]}, cosine decay, \
bf16 autocast, seed {args["seed"]}; final loss {recipe["final_loss"]}.

## What it can do

User phrasings it was trained on (the rest of each prompt varies):

- `What is A + B?` / `What is A - B?` (0 <= A, B <= 99): answers `A + B = C.`
- `Is this review positive or negative? <review>`: answers `positive` or `negative`.
- `Extract name, age and city as JSON: <sentence>`: answers `{{"name": ..., "age": ..., "city": ...}}`.
- Offered the `calculator(expression)` tool (the chat template renders `tools=` in the system
  turn, Qwen2.5 / Hermes style), `Use the calculator: what is A * B?`: calls
  `<tool_call>{{"name": "calculator", "arguments": {{"expression": "A * B"}}}}</tool_call>`, then,
  given `<tool_response>` with the result, answers with the number. Also `get_weather(city)`.
- `My name is X.` ... `What is my name?`: `Your name is X.`
- Python: continues the start of a function or class in the standard library's style.

Held-out accuracy measured by the training script ({count} examples per family, greedy, no
constraints; radixlm's README has the figures through the DSL and the Engine):

| metric | accuracy |
|---|---|
{rows}
"""
