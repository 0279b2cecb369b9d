"""Structured extraction: a pydantic model filled in from free text with a JSON-schema `gen`.

    python examples/json_extraction.py                       # launches the offline tiny model
    python examples/json_extraction.py --model PATH          # any local Llama/Mistral/Qwen2/Qwen3 folder
    python examples/json_extraction.py --endpoint tcp://127.0.0.1:30001
                                                             # a running `radixlm serve --zmq-port 30001`

`rl.gen("contact", json_schema=Contact)` constrains decoding to the JSON texts the model's
schema allows, so `Contact.model_validate_json(state["contact"])` always succeeds (as long as
max_tokens leaves room for the whole object: every field here is bounded). Text the schema
forces -- the braces, the keys, the quotes -- is jump-forwarded: drafted from the grammar and
verified in one pass instead of decoded a token at a time; the gen's meta info counts those
tokens. One extraction runs alone, then three more with `run_batch`, whose shared
instructions come from the radix cache. (The tiny model has random weights, so the values are
gibberish -- but valid gibberish.)
"""

from __future__ import annotations

from typing import Annotated, Literal

from _backend import backend_from_args, make_parser, print_cache_hit_rate
from pydantic import BaseModel, Field, StringConstraints

import radixlm as rl

# Every string and list is bounded: a model that never closes a quote would otherwise run to max_tokens.
# (The email's pattern bounds it. A max_length next to a pattern is refused: the regex
# translation would keep the length and drop the pattern.)
Tag = Annotated[str, StringConstraints(max_length=12)]


class Contact(BaseModel):
    name: str = Field(max_length=32)
    email: str = Field(pattern=r"[a-z0-9._]{1,16}@[a-z0-9]{1,12}\.(com|org|net|io)")
    role: Literal["customer", "supplier", "partner", "employee"]
    tags: list[Tag] | None = Field(default=None, max_length=3)


TEXTS = [
    "Hi, this is Maria Lopez from Acme Packaging. We supply the boxes for your spring orders; "
    "you can reach me at maria.lopez@acmepack.com if the delivery dates change.",
    "Customer note: Tom Becker (tom@beckerbikes.io) bought two touring bikes last week and asked "
    "about extending the warranty. Repeat buyer, prefers email.",
    "Our contact at Northwind Traders is Aiko Tanaka, aiko_t@northwind.org. She runs the joint "
    "marketing campaign with us this autumn.",
    "Please welcome Sam Okafor to the support team! Sam starts Monday and can be reached at "
    "sam.okafor@ourshop.net.",
]


@rl.function
def extract_contact(s, text: str, max_tokens: int):
    s += rl.system(
        "You extract contact details from text. Answer with one JSON object: the person's "
        "name, email address, their role towards us (customer, supplier, partner or "
        "employee) and up to three short tags."
    )
    s += rl.user(text)
    s += rl.assistant(rl.gen("contact", json_schema=Contact, max_tokens=max_tokens))


def show(state) -> Contact:
    contact = Contact.model_validate_json(state["contact"])  # the schema guarantees this parses
    meta = state.get_meta_info("contact")
    print(f"validated Contact: {contact.model_dump_json()}")
    print(
        f"  {meta['completion_tokens']} tokens, {meta.get('jump_forward_tokens') or 0} of them "
        f"jump-forward (forced by the schema); finish: {meta['finish_reason']['type']}"
    )
    return contact


def main() -> None:
    args = make_parser(__doc__, max_tokens=256).parse_args()
    with backend_from_args(args) as backend:
        print(f"text: {TEXTS[0]!r}")
        contacts = [show(extract_contact.run(text=TEXTS[0], max_tokens=args.max_tokens, temperature=0))]

        print("\nrun_batch over 3 more texts:")
        states = extract_contact.run_batch(
            [{"text": t, "max_tokens": args.max_tokens} for t in TEXTS[1:]], temperature=0
        )
        for text, state in zip(TEXTS[1:], states):
            print(f"text: {text[:60]!r}...")
            contacts.append(show(state))
        print(f"extracted {len(contacts)} contacts; roles: {[c.role for c in contacts]}")
        print_cache_hit_rate(backend)


if __name__ == "__main__":
    main()
