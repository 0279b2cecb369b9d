"""Few-shot classification with `select`: a fixed header of labelled examples, then the
label is chosen by scoring every candidate against the prompt (no free-form generation).

    python examples/few_shot_select.py                       # launches the offline tiny model
    python examples/few_shot_select.py --model PATH          # any local Llama/Mistral/Qwen2/Qwen3 folder
    python examples/few_shot_select.py --endpoint tcp://127.0.0.1:30001
                                                             # a running `radixlm serve --zmq-port 30001`

`run_batch` first prefills the program's constant header (the few-shot examples) once, so
every review's request finds it in the radix cache. `select` always returns one of the
labels, whatever the model; the scores in its meta info say how close the call was.
"""

from __future__ import annotations

from _backend import backend_from_args, make_parser, print_cache_hit_rate

import radixlm as rl

LABELS = ["positive", "negative", "neutral"]
EXAMPLES = [
    ("The battery lasts all day and the screen is gorgeous.", "positive"),
    ("It stopped working after a week and support never answered.", "negative"),
    ("The box contains the phone, a cable and a manual.", "neutral"),
    ("Fast shipping, and it fits perfectly. Would buy again!", "positive"),
    ("The colour is fine but the fabric feels cheap.", "negative"),
]
REVIEWS = [
    "Absolutely love it, best purchase this year.",
    "Arrived broken and the refund took a month.",
    "It is a blue mug that holds about 300 ml.",
    "Works as described.",
    "Loud, slow and overpriced.",
    "My kids play with it every day.",
]


@rl.function
def classify(s, review: str):
    s += "Classify the sentiment of each product review as positive, negative or neutral.\n\n"
    for text, label in EXAMPLES:
        s += f"Review: {text}\nSentiment: {label}\n\n"
    s += f"Review: {review}\nSentiment: " + rl.select("label", LABELS)


def main() -> None:
    args = make_parser(__doc__, max_tokens=None).parse_args()  # select generates nothing
    with backend_from_args(args) as backend:
        states = classify.run_batch([{"review": r} for r in REVIEWS], temperature=0)
        for review, state in zip(REVIEWS, states):
            meta = state.get_meta_info("label")
            scores = ", ".join(f"{c}={s:.2f}" for c, s in zip(LABELS, meta["normalized_prompt_logprobs"]))
            print(f"{state['label']:>8}  <- {review!r}\n          scores: {scores}")
        print(f"choices made: {[s['label'] for s in states]}")
        print_cache_hit_rate(backend)


if __name__ == "__main__":
    main()
