"""Few-shot classification with `select`: a fixed header of labelled examples, then the
label is chosen by scoring every candidate against the prompt (no free-form generation).

    python examples/few_shot_select.py                       # launches the trained demo model
    python examples/few_shot_select.py --model PATH          # any local Llama/Mistral/Qwen2/Qwen3 folder
    python examples/few_shot_select.py --endpoint tcp://127.0.0.1:30001
                                                             # a running `radixlm serve --zmq-port 30001`

The header is a short chat: a system prompt and two labelled reviews, asked in the phrasing
the demo model was trained on ("Is this review positive or negative? ..."). Each new review
is one more user turn, and `select` fills the assistant turn with "positive" or "negative".
`run_batch` first prefills the program's constant header once, so every review's request
finds it in the radix cache. `select` always returns one of the labels, whatever the model;
the scores in its meta info (mean log-probability per token) say how clear the call was.
"""

from __future__ import annotations

from _backend import backend_from_args, make_parser, print_cache_hit_rate

import radixlm as rl

LABELS = ["positive", "negative"]
QUESTION = "Is this review positive or negative? {review}"
EXAMPLES = [
    ("The battery lasts all day and the screen is gorgeous. I would happily buy it again.", "positive"),
    ("It stopped working after a week. A total waste of money.", "negative"),
]
# (review, the label a person would give it): the example prints both
REVIEWS = [
    ("Absolutely love this coffee maker, best purchase this year.", "positive"),
    ("The suitcase arrived broken and the refund took a month. I want my money back.", "negative"),
    ("The hotel room was spotless and the staff were friendly.", "positive"),
    ("Loud, slow and overpriced. I regret buying it.", "negative"),
    ("My kids play with it every day. It was a wonderful surprise.", "positive"),
    ("The pizza was cold and soggy, and the waiter was rude.", "negative"),
]


@rl.function
def classify(s, review: str):
    s += rl.system("You are a helpful assistant.")
    for text, label in EXAMPLES:
        s += rl.user(QUESTION.format(review=text))
        s += rl.assistant(label)
    s += rl.user(QUESTION.format(review=review))
    s += rl.assistant(rl.select("label", LABELS))


def main() -> None:
    args = make_parser(__doc__, max_tokens=None).parse_args()  # select generates nothing
    with backend_from_args(args) as backend:
        states = classify.run_batch([{"review": r} for r, _ in REVIEWS], temperature=0)
        for (review, expected), state in zip(REVIEWS, states):
            meta = state.get_meta_info("label")
            scores = ", ".join(f"{c}={s:.2f}" for c, s in zip(LABELS, meta["normalized_prompt_logprobs"]))
            mark = "right" if state["label"] == expected else f"wrong, expected {expected}"
            print(f"{state['label']:>8} ({mark}) <- {review!r}\n          scores: {scores}")
        choices = [s["label"] for s in states]
        right = sum(c == expected for c, (_, expected) in zip(choices, REVIEWS))
        print(f"choices made: {choices}")
        print(f"{right} of {len(REVIEWS)} right")
        print_cache_hit_rate(backend)


if __name__ == "__main__":
    main()
