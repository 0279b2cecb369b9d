"""Structured extraction: a pydantic model filled in from free text with a JSON-schema `gen`.

    python examples/json_extraction.py                       # launches the trained demo model
    python examples/json_extraction.py --model PATH          # any local Llama/Mistral/Qwen2/Qwen3 folder
    python examples/json_extraction.py --endpoint tcp://127.0.0.1:30001
                                                             # a running `radixlm serve --zmq-port 30001`

Each request asks, in the phrasing the demo model was trained on, "Extract name, age and
city as JSON: <sentence>". `rl.gen("person", json_schema=Person)` constrains decoding to the
JSON texts the model's schema allows (the same object as `tasks.EXTRACTION_SCHEMA`, the
schema the demo model is evaluated under), so `Person.model_validate_json(state["person"])`
always succeeds, as long as max_tokens leaves room for the whole object: every string here
is bounded. Text the schema forces -- the braces, the keys, the quotes -- is jump-forwarded:
drafted from the grammar and verified in one pass instead of decoded a token at a time; the
gen's meta info counts those tokens. One extraction runs alone, then three more with
`run_batch`, whose shared system prompt comes from the radix cache. Greedy (temperature=0).
"""

from __future__ import annotations

from _backend import backend_from_args, make_parser, print_cache_hit_rate
from pydantic import BaseModel, ConfigDict, Field

import radixlm as rl


class Person(BaseModel):
    # forbid extra keys: the schema then has additionalProperties false, as tasks.EXTRACTION_SCHEMA
    model_config = ConfigDict(extra="forbid")

    # a string's length is bounded so a model that never closes a quote stops at the bound, not at
    # max_tokens (no bound on age: the schema translation refuses minimum/maximum, which it cannot enforce)
    name: str = Field(max_length=40)
    age: int
    city: str = Field(max_length=40)


# (sentence, what a person would extract from it): the example checks every answer
TEXTS = [
    (
        "Grace Hopper is 37 years old and lives in Arlington.",
        {"name": "Grace Hopper", "age": 37, "city": "Arlington"},
    ),
    ("My friend Tomasz, aged 52, comes from Krakow.", {"name": "Tomasz", "age": 52, "city": "Krakow"}),
    ("Meet Aiko, a 29-year-old from Osaka.", {"name": "Aiko", "age": 29, "city": "Osaka"}),
    ("Name: Samuel Okafor. Age: 41. City: Lagos.", {"name": "Samuel Okafor", "age": 41, "city": "Lagos"}),
]


@rl.function
def extract_person(s, text: str, max_tokens: int):
    s += rl.system("You are a helpful assistant.")
    s += rl.user(f"Extract name, age and city as JSON: {text}")
    s += rl.assistant(rl.gen("person", json_schema=Person, max_tokens=max_tokens))


def show(state, expected: dict) -> Person:
    person = Person.model_validate_json(state["person"])  # the schema guarantees this parses
    meta = state.get_meta_info("person")
    verdict = "right" if person.model_dump() == expected else f"wrong, expected {expected}"
    print(f"validated Person: {person.model_dump_json()} ({verdict})")
    print(
        f"  {meta['completion_tokens']} tokens, {meta.get('jump_forward_tokens') or 0} of them "
        f"jump-forward (forced by the schema); finish: {meta['finish_reason']['type']}"
    )
    return person


def main() -> None:
    args = make_parser(__doc__, max_tokens=96).parse_args()
    with backend_from_args(args) as backend:
        text, expected = TEXTS[0]
        print(f"text: {text!r}")
        people = [show(extract_person.run(text=text, max_tokens=args.max_tokens, temperature=0), expected)]

        print("\nrun_batch over 3 more texts:")
        states = extract_person.run_batch(
            [{"text": t, "max_tokens": args.max_tokens} for t, _ in TEXTS[1:]], temperature=0
        )
        for (text, expected), state in zip(TEXTS[1:], states):
            print(f"text: {text!r}")
            people.append(show(state, expected))
        right = sum(p.model_dump() == expected for p, (_, expected) in zip(people, TEXTS))
        print(f"extracted {len(people)} people, {right} right; names: {[p.name for p in people]}")
        print_cache_hit_rate(backend)


if __name__ == "__main__":
    main()
