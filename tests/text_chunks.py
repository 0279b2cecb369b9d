"""Random ways to cut a text into the pieces a stream delivers, for the streaming parsers' fuzz
tests (tool calls and reasoning): every piece one character, small pieces, mixed sizes up to
`longest`, or the whole text at once."""

from __future__ import annotations

import random


def random_chunks(rng: random.Random, text: str, longest: int = 40) -> list[str]:
    mode = rng.choice(["one", "small", "mixed", "whole"])
    if mode == "whole":
        return [text]
    chunks, i = [], 0
    while i < len(text):
        n = 1 if mode == "one" else rng.randint(1, 4 if mode == "small" else longest)
        chunks.append(text[i : i + n])
        i += n
    return chunks
