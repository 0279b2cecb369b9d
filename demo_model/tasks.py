"""The demo model's task families: synthetic conversations for training, and a held-out split.

Each family draws an `Example` (messages ending in the reference answer, the tools offered, and
what an evaluation compares) from a `random.Random`. Whether an example is held out depends
only on its content, through `heldout`: a fifth of the names and cities, and a tenth of the
arithmetic problems and reviews, are never trained on. Training draws with split="train",
evaluation with split="heldout", so a measured answer is one the model never saw (names and
cities it must copy, sums it must compute).

User phrasings the model is trained on and programs may rely on:
    What is A + B? / What is A - B?                              (0 <= A, B <= 99)
    Is this review positive or negative? <review>                -> positive | negative
    Extract name, age and city as JSON: <sentence>               -> {"name": ..., "age": ..., "city": ...}
    Use the calculator: what is A * B?   (calculator tool offered) -> a calculator call, then the number
    My name is X.  ...  What is my name?                          -> Your name is X.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from radixlm.demo_model import wordlists as words

CALCULATOR_TOOL = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression and return the result.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "for example 12 * 34"}},
            "required": ["expression"],
        },
    },
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "the city's name"}},
            "required": ["city"],
        },
    },
}
EXTRACTION_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"}},
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a concise assistant.",
    "You are a friendly assistant. Answer briefly.",
    "Answer the user's questions.",
)


def _bucket(key: str) -> int:
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:4], "big") % 100


def heldout(kind: str, key: str) -> bool:
    """Whether `key` (a name, a city, a problem, a review) belongs to the held-out split."""
    share = {"name": 20, "city": 20}.get(kind, 10)
    return _bucket(f"{kind}:{key}") < share


def _in_split(kind: str, key: str, split: str) -> bool:
    return heldout(kind, key) == (split == "heldout")


@dataclass(frozen=True)
class Example:
    family: str
    messages: list[dict[str, Any]]  # the conversation, ending with the reference answer
    expected: Any  # what evaluation compares with the model's answer
    tools: list[dict] | None = None
    data: dict[str, Any] = field(default_factory=dict)  # the drawn values (operands, name, ...)


# ---------------------------------------------------------------- names, cities, numbers


def _draw(rng: random.Random, kind: str, pool: tuple[str, ...], split: str) -> str:
    while True:
        value = rng.choice(pool)
        if _in_split(kind, value, split):
            return value


def invented_name(rng: random.Random) -> str:
    """A pronounceable made-up name, or (a quarter of the time) plain random letters: training
    on names no list holds is what makes the model copy a name instead of recalling one."""
    if rng.random() < 0.25:
        length = rng.randint(3, 10)
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(length)).capitalize()
    parts = [rng.choice(words.NAME_SYLLABLES_START)]
    parts += [rng.choice(words.NAME_SYLLABLES_MIDDLE) for _ in range(rng.randint(0, 2))]
    parts.append(rng.choice(words.NAME_SYLLABLES_END))
    return "".join(parts).capitalize()


def spliced(rng: random.Random, kind: str, pool: tuple[str, ...]) -> str:
    """The start of one training word joined to the end of another ("Mem" + "bourne"). A model
    that has memorised the list must still copy these, since a known start is followed by
    another word's end: the failure a recalling model makes on an unseen name or city is
    copying its first piece and completing the rest from memory."""
    known = set(pool)
    while True:
        a, b = _draw(rng, kind, pool, "train"), _draw(rng, kind, pool, "train")
        word = a[: rng.randint(1, len(a) - 1)] + b[rng.randint(1, len(b) - 1) :]
        if word not in known and len(word) >= 3:
            return word


def draw_name(rng: random.Random, split: str) -> str:
    """A person's name. Training also invents and splices names, so the model learns to copy
    any name rather than recall one."""
    kind = rng.random() if split == "train" else 1.0
    if kind < 0.35:
        first = invented_name(rng)
    elif kind < 0.55:
        first = spliced(rng, "name", words.FIRST_NAMES)
    else:
        first = _draw(rng, "name", words.FIRST_NAMES, split)
    if rng.random() < 0.2:
        return f"{first} {rng.choice(words.SURNAMES)}"
    return first


_CITY_PREFIXES = (
    "New",
    "San",
    "Port",
    "Lake",
    "Saint",
    "Fort",
    "The",
    "Upper",
    "El",
    "Santa",
    "Old",
    "North",
)
_CITY_SUFFIXES = ("", "", "", "ville", "burg", "port", " City", "ton", "ford", "abad", "grad", "holm", "pur")


def draw_city(rng: random.Random, split: str) -> str:
    """A city. Training makes up three quarters of them (spliced from two training cities,
    prefixed, two-word, suffixed), for the same reason as names."""
    kind = rng.random() if split == "train" else 1.0
    if kind < 0.3:
        return spliced(rng, "city", words.CITIES)
    if kind < 0.4:
        return f"{rng.choice(_CITY_PREFIXES)} {invented_name(rng)}"
    if kind < 0.5:
        return f"{invented_name(rng)} {invented_name(rng)}"
    if kind < 0.75:
        return invented_name(rng) + rng.choice(_CITY_SUFFIXES)
    return _draw(rng, "city", words.CITIES, split)


def _system(rng: random.Random, messages: list[dict], p: float = 0.3) -> list[dict]:
    if rng.random() < p:
        return [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}, *messages]
    return messages


# ---------------------------------------------------------------- arithmetic

ARITHMETIC_PHRASES = {
    "+": ("What is {a} + {b}?", "What is {a} plus {b}?", "Compute {a} + {b}.", "How much is {a} + {b}?",
          "What's {a} + {b}?", "Add {a} and {b}.", "{a} + {b} = ?", "Calculate {a} + {b}."),
    "-": ("What is {a} - {b}?", "What is {a} minus {b}?", "Compute {a} - {b}.", "How much is {a} - {b}?",
          "What's {a} - {b}?", "Subtract {b} from {a}.", "{a} - {b} = ?", "Calculate {a} - {b}."),
}  # fmt: skip


def arithmetic_turn(rng: random.Random, split: str, canonical: bool = False) -> tuple[str, str, dict]:
    while True:
        op, a, b = rng.choice("+-"), rng.randint(0, 99), rng.randint(0, 99)
        if _in_split("sum", f"{a}{op}{b}", split):
            break
    result = a + b if op == "+" else a - b
    phrase = (
        ARITHMETIC_PHRASES[op][0] if canonical or rng.random() < 0.5 else rng.choice(ARITHMETIC_PHRASES[op])
    )
    return phrase.format(a=a, b=b), f"{a} {op} {b} = {result}.", {"a": a, "b": b, "op": op, "result": result}


def arithmetic(rng: random.Random, split: str) -> Example:
    question, answer, data = arithmetic_turn(rng, split, canonical=split == "heldout")
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return Example("arithmetic", _system(rng, messages), data["result"], data=data)


# ---------------------------------------------------------------- sentiment

SENTIMENT_PHRASES = (
    "Is this review positive or negative? {review}",
    "Is this review positive or negative?\n{review}",
    "Is the following review positive or negative? {review}",
    "Review: {review}\nIs this review positive or negative?",
)
_REVIEW_TEMPLATES = (
    "The {subject} was {intensifier} {adj}.",
    "This {subject} is {adj} and {adj2}.",
    "I {verb}.",
    "What a {adj} {subject}! I {verb}.",
    "Honestly, the {subject} was {adj}, and I {verb}.",
    "The {subject}? {Noun}.",
    "{Noun}. The {subject} felt {intensifier} {adj}.",
    "I bought this {subject} last month and it is {adj}.",
    "Our {subject} was {adj}; the staff were {adj2}. I {verb}.",
    "The {subject} is not {opposite} at all, it is {adj}.",
    "Five words: {adj}, {adj2}, {adj3}. I {verb}.",
    "My {subject} arrived {intensifier} {adj}, and frankly it was {noun}.",
)


def review(rng: random.Random, positive: bool) -> str:
    adjectives = words.POSITIVE_ADJECTIVES if positive else words.NEGATIVE_ADJECTIVES
    adj, adj2, adj3 = rng.sample(adjectives, 3)
    noun = rng.choice(words.POSITIVE_NOUN_PHRASES if positive else words.NEGATIVE_NOUN_PHRASES)
    sentences = rng.sample(_REVIEW_TEMPLATES, rng.randint(1, 2))
    text = " ".join(
        s.format(
            subject=rng.choice(words.REVIEW_SUBJECTS),
            intensifier=rng.choice(words.INTENSIFIERS),
            adj=adj, adj2=adj2, adj3=adj3, noun=noun, Noun=noun[0].upper() + noun[1:],
            verb=rng.choice(words.POSITIVE_VERB_PHRASES if positive else words.NEGATIVE_VERB_PHRASES),
            opposite=rng.choice(words.NEGATIVE_ADJECTIVES if positive else words.POSITIVE_ADJECTIVES),
        )
        for s in sentences
    )  # fmt: skip
    return text[0].upper() + text[1:]


def sentiment_turn(rng: random.Random, split: str, canonical: bool = False) -> tuple[str, str, dict]:
    while True:
        positive = rng.random() < 0.5
        text = review(rng, positive)
        if _in_split("review", text, split):
            break
    label = "positive" if positive else "negative"
    phrase = SENTIMENT_PHRASES[0] if canonical else rng.choice(SENTIMENT_PHRASES)
    return phrase.format(review=text), label, {"review": text, "label": label}


def sentiment(rng: random.Random, split: str) -> Example:
    question, label, data = sentiment_turn(rng, split, canonical=split == "heldout")
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": label}]
    return Example("sentiment", _system(rng, messages), label, data=data)


# ---------------------------------------------------------------- extraction

EXTRACTION_PHRASES = (
    "Extract name, age and city as JSON: {sentence}",
    "Extract name, age and city as JSON:\n{sentence}",
    "Extract the name, age and city as JSON: {sentence}",
    "Return name, age and city as JSON. Text: {sentence}",
)
_PERSON_SENTENCES = (
    "{name} is {age} years old and lives in {city}.",
    "My friend {name}, aged {age}, comes from {city}.",
    "{name} ({age}) moved to {city} last year.",
    "Born and raised in {city}, {name} is now {age}.",
    "Meet {name}, a {age}-year-old from {city}.",
    "In {city} lives {name}, who just turned {age}.",
    "{city} is home to {name}, {age}.",
    "At {age}, {name} still lives in {city}.",
    "{name} from {city} is {age} years old.",
    "The new hire, {name}, is {age} and based in {city}.",
    "Last week {name} celebrated turning {age} in {city}.",
    "Name: {name}. Age: {age}. City: {city}.",
    "{name}, {age}, works as a teacher in {city}.",
    "Our neighbour {name} is {age}; she grew up in {city}.",
    "Our neighbour {name} is {age}; he grew up in {city}.",
)


def extraction(rng: random.Random, split: str) -> Example:
    name, city, age = draw_name(rng, split), draw_city(rng, split), rng.randint(1, 99)
    sentence = rng.choice(_PERSON_SENTENCES).format(name=name, age=age, city=city)
    sentence = sentence[0].upper() + sentence[1:]
    phrase = EXTRACTION_PHRASES[0] if split == "heldout" else rng.choice(EXTRACTION_PHRASES)
    expected = {"name": name, "age": age, "city": city}
    messages = [
        {"role": "user", "content": phrase.format(sentence=sentence)},
        {"role": "assistant", "content": json.dumps(expected)},
    ]
    return Example("extraction", _system(rng, messages), expected, data={"sentence": sentence})


# ---------------------------------------------------------------- tool use

CALCULATOR_PHRASES = (
    "Use the calculator: what is {expression}?",
    "Use the calculator to work out {expression}.",
    "With the calculator, what is {expression}?",
    "Please use the calculator: {expression}",
)


def _offered(rng: random.Random, tool: dict) -> list[dict]:
    if rng.random() < 0.5:
        return [tool]
    other = WEATHER_TOOL if tool is CALCULATOR_TOOL else CALCULATOR_TOOL
    return [tool, other] if rng.random() < 0.5 else [other, tool]


def _call(name: str, arguments: dict) -> dict:
    return {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": name, "arguments": arguments}}]}  # fmt: skip


def tool_use(rng: random.Random, split: str) -> Example:
    """Asked to use the calculator, the model calls it with the expression, then answers with
    the result the tool returned (which it copies: it is never asked to multiply itself)."""
    while True:
        op = "*" if split == "heldout" or rng.random() < 0.7 else rng.choice("+-")
        a, b = (rng.randint(10, 9999) for _ in range(2))
        if _in_split("product", f"{a}{op}{b}", split):
            break
    expression = f"{a} {op} {b}"
    result = {"*": a * b, "+": a + b, "-": a - b}[op]
    phrase = CALCULATOR_PHRASES[0] if split == "heldout" else rng.choice(CALCULATOR_PHRASES)
    messages = [
        {"role": "user", "content": phrase.format(expression=expression)},
        _call("calculator", {"expression": expression}),
        {"role": "tool", "content": str(result)},
        {"role": "assistant", "content": f"{expression} = {result}."},
    ]
    tools = [CALCULATOR_TOOL] if split == "heldout" else _offered(rng, CALCULATOR_TOOL)
    return Example("tool_use", _system(rng, messages, 0.2), result, tools=tools,
                   data={"expression": expression, "result": result})  # fmt: skip


WEATHER_PHRASES = ("What is the weather in {city}?", "How is the weather in {city} today?",
                   "Is it warm in {city} right now?")  # fmt: skip
CONDITIONS = ("sunny", "cloudy", "rainy", "windy", "snowy", "foggy", "clear")


def weather(rng: random.Random, split: str) -> Example:
    city = draw_city(rng, split)
    temperature, condition = rng.randint(-15, 40), rng.choice(CONDITIONS)
    response = json.dumps({"city": city, "temperature": temperature, "condition": condition})
    messages = [
        {"role": "user", "content": rng.choice(WEATHER_PHRASES).format(city=city)},
        _call("get_weather", {"city": city}),
        {"role": "tool", "content": response},
        {"role": "assistant", "content": f"It is {temperature} degrees and {condition} in {city}."},
    ]
    return Example("weather", _system(rng, messages, 0.2), city, tools=_offered(rng, WEATHER_TOOL))


# ---------------------------------------------------------------- small talk and memory

SMALL_TALK = (
    ("Hello!", "Hello! How can I help you today?"),
    ("Hi there.", "Hi! What can I do for you?"),
    ("How are you?", "I am doing well, thank you. How can I help?"),
    ("Who are you?", "I am a small assistant model trained for the radixlm demo."),
    ("Thank you!", "You are welcome!"),
    ("Thanks, that helps.", "Glad to help!"),
    ("Goodbye.", "Goodbye! Have a nice day."),
    ("What can you do?", "I can do small sums, judge reviews, extract facts as JSON and use tools."),
)
INTRODUCTIONS = ("My name is {name}.", "Hi, I'm {name}.", "Hello! My name is {name}.", "Call me {name}.")
NAME_QUESTIONS = ("What is my name?", "Do you remember my name?", "What's my name?")


def _filler_turn(rng: random.Random, split: str) -> tuple[str, str]:
    kind = rng.random()
    if kind < 0.4:
        return arithmetic_turn(rng, split)[:2]
    if kind < 0.7:
        return sentiment_turn(rng, split)[:2]
    return rng.choice(SMALL_TALK)


def memory(rng: random.Random, split: str, fillers: int | None = None) -> Example:
    name = draw_name(rng, split)
    heldout_split = split == "heldout"
    messages: list[dict] = []
    told = heldout_split or rng.random() < 0.93
    if told:
        intro = INTRODUCTIONS[0] if heldout_split else rng.choice(INTRODUCTIONS)
        messages += [{"role": "user", "content": intro.format(name=name)},
                     {"role": "assistant", "content": f"Nice to meet you, {name}!"}]  # fmt: skip
    for _ in range(rng.randint(0, 3) if fillers is None else fillers):
        question, answer = _filler_turn(rng, split)
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    ask = NAME_QUESTIONS[0] if heldout_split else rng.choice(NAME_QUESTIONS)
    answer = f"Your name is {name}." if told else "You have not told me your name yet."
    messages += [{"role": "user", "content": ask}, {"role": "assistant", "content": answer}]
    return Example("memory", _system(rng, messages, 0.2), name if told else None, data={"name": name})


def small_talk(rng: random.Random, split: str) -> Example:
    question, answer = rng.choice(SMALL_TALK)
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return Example("small_talk", _system(rng, messages), answer)


# family -> (generator, share of training conversations)
FAMILIES: dict[str, tuple[Callable[[random.Random, str], Example], float]] = {
    "arithmetic": (arithmetic, 0.24),
    "sentiment": (sentiment, 0.12),
    "extraction": (extraction, 0.26),
    "tool_use": (tool_use, 0.14),
    "weather": (weather, 0.05),
    "memory": (memory, 0.14),
    "small_talk": (small_talk, 0.05),
}
EVALUATED = ("arithmetic", "sentiment", "extraction", "tool_use", "memory")


def training_example(rng: random.Random) -> Example:
    names = list(FAMILIES)
    family = rng.choices(names, weights=[FAMILIES[n][1] for n in names])[0]
    return FAMILIES[family][0](rng, "train")


def heldout_examples(family: str, count: int, seed: int = 1234) -> list[Example]:
    """`count` held-out examples of `family`, the same ones for the same seed."""
    rng = random.Random(f"{family}:{seed}")
    return [FAMILIES[family][0](rng, "heldout") for _ in range(count)]
