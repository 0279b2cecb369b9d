"""Synthetic inputs for the program workloads, made here from templates (no downloads).

Every generator is a pure function of the program index, so all configurations see the same inputs."""

from __future__ import annotations

NAMES = [
    "Ava",
    "Ben",
    "Chloe",
    "Dev",
    "Emma",
    "Farid",
    "Grace",
    "Hiro",
    "Ines",
    "Jonas",
    "Kira",
    "Liam",
    "Maya",
    "Noah",
    "Olga",
    "Pablo",
    "Quinn",
    "Rosa",
    "Sami",
    "Tara",
    "Uma",
    "Victor",
    "Wen",
    "Yusuf",
]
ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "stamps", "coins", "cookies", "shells", "cards"]
PLACES = ["the market", "school", "the park", "a fair", "the library", "a garage sale", "the beach", "a shop"]


def _question(i: int) -> tuple[str, int]:
    name, item, place = NAMES[i % len(NAMES)], ITEMS[(i * 7) % len(ITEMS)], PLACES[(i * 3) % len(PLACES)]
    a, b, c = 3 + (i * 5) % 17, 2 + (i * 11) % 13, 1 + (i * 3) % 7
    q = (
        f"{name} has {a} {item}. At {place}, {name} gets {b} more {item} and then gives {c} {item} "
        f"to a friend. How many {item} does {name} have now?"
    )
    return q, a + b - c


FEW_SHOT_EXAMPLES = [_question(1000 + k) for k in range(8)]
FEW_SHOT_HEADER = (
    "Solve each arithmetic word problem. Think about what is added and what is taken away, "
    "then write the final number on a single line.\n\n"
    + "".join(
        f"Question: {q}\nAnswer: {q.split(' has ')[0]} ends with {ans}. The answer is {ans}.\n\n"
        for q, ans in FEW_SHOT_EXAMPLES
    )
)

ACTIVITIES = [
    (
        "A man is standing on a ladder next to a house.",
        "He",
        [
            "paints the window frame with a brush.",
            "eats a bowl of soup at the table.",
            "swims across a wide river.",
            "reads a newspaper in bed.",
        ],
    ),
    (
        "A woman kneels in a garden holding a small shovel.",
        "She",
        [
            "digs a hole and plants a flower.",
            "drives a bus through the city.",
            "types an email on a laptop.",
            "throws a ball to a dog on a beach.",
        ],
    ),
    (
        "A chef places a pan on the stove and pours in oil.",
        "The chef",
        [
            "adds chopped onions and stirs them.",
            "climbs a mountain in the snow.",
            "plays a violin on stage.",
            "washes a car in the driveway.",
        ],
    ),
    (
        "A boy ties the laces of his running shoes at a track.",
        "The boy",
        [
            "starts jogging around the track.",
            "bakes a cake in the oven.",
            "paints a portrait of his sister.",
            "sleeps on the sofa at home.",
        ],
    ),
    (
        "Two players stand at a table holding ping pong paddles.",
        "They",
        [
            "hit the ball back and forth over the net.",
            "plant trees along the road.",
            "sing a song in a choir.",
            "repair the roof of a barn.",
        ],
    ),
    (
        "A girl sits at a piano and opens a book of music.",
        "She",
        [
            "begins to play the first notes of a song.",
            "rides a horse across a field.",
            "fixes a flat tire on a bike.",
            "scuba dives near a reef.",
        ],
    ),
    (
        "A man fills a bucket with soapy water beside his car.",
        "He",
        [
            "scrubs the hood with a sponge.",
            "knits a scarf by the fire.",
            "teaches a math class.",
            "flies a kite on a hill.",
        ],
    ),
    (
        "A climber clips a rope to her harness at the base of a wall.",
        "She",
        [
            "starts climbing up the holds.",
            "orders a coffee at a cafe.",
            "mows the lawn in the yard.",
            "sews a button onto a shirt.",
        ],
    ),
]


def _hellaswag_item(i: int) -> tuple[str, list[str], int]:
    ctx, subj, endings = ACTIVITIES[i % len(ACTIVITIES)]
    name = NAMES[i % len(NAMES)]
    context = f"{ctx} {name} watches for a moment. {subj}"
    rot = (i // len(ACTIVITIES)) % 4  # rotate the endings so the right one moves around
    choices = [" " + e for e in endings[rot:] + endings[:rot]]
    return context, choices, (4 - rot) % 4


SELECT_HEADER = (
    "Each passage describes an everyday scene. Pick the most plausible way the passage continues.\n\n"
    + "".join(f"Passage: {ctx} {subj} {endings[0]}\n\n" for ctx, subj, endings in ACTIVITIES)
)

TOT_HEADER = (
    "You are a careful planner. For the problem below, first propose a short plan, then carry it out "
    "step by step, checking every intermediate result before moving on. Prefer simple, concrete steps; "
    "state assumptions explicitly; when two approaches disagree, explain which one is right and why. "
    "Keep each plan and each answer to a single line so that a reviewer can compare them side by side. "
    "A good plan names the quantities involved, the operation that relates them, and the order in which "
    "they are combined. A good answer follows its plan exactly and ends with the final number.\n\n"
    "Example problem: A baker makes 24 rolls, sells 9 in the morning and bakes 6 more at noon. "
    "How many rolls are there in the afternoon?\n"
    "Example plan: start from 24, subtract the 9 sold, add the 6 baked.\n"
    "Example answer: 24 - 9 = 15, 15 + 6 = 21, so there are 21 rolls.\n\n"
)

CHAT_SYSTEM = (
    "You are a friendly, concise assistant for a small bookshop. You help customers find books, explain "
    "store policies, and suggest reading lists. Store facts: the shop opens 9am to 7pm Monday to Saturday "
    "and 11am to 5pm on Sunday; returns are accepted within 30 days with a receipt; members get 10% off "
    "every purchase and a free tote bag once a year; orders over 40 dollars ship for free; gift cards "
    "never expire. Answer in one or two sentences, and ask a follow-up question when a request is vague."
)
CHAT_TOPICS = [
    "mystery novels",
    "books about space",
    "cookbooks",
    "poetry",
    "history of Rome",
    "graphic novels",
    "gardening guides",
    "travel writing",
    "science fiction",
    "biographies",
]


def _chat_turns(i: int) -> list[str]:
    topic, name = CHAT_TOPICS[i % len(CHAT_TOPICS)], NAMES[(i * 5) % len(NAMES)]
    return [
        f"Hi, I'm {name}. Can you recommend some {topic}?",
        f"Which of those would suit a reader who is {8 + i % 60} years old?",
        "Are you open on Sunday, and can I return it if I don't like it?",
        f"Great. Does the member discount apply to {topic} too?",
    ]


def select_input(i: int) -> dict:
    context, choices, _ = _hellaswag_item(i)
    return {"context": context, "choices": choices}


# ---------------------------------------------------------------------- mmlu (few-shot, 1-token answer)
COUNTRIES = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Canada", "Ottawa"),
    ("Egypt", "Cairo"),
    ("Norway", "Oslo"),
    ("Chile", "Santiago"),
    ("India", "New Delhi"),
    ("Spain", "Madrid"),
    ("Ghana", "Accra"),
    ("Vietnam", "Hanoi"),
]
PLANETS = ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"]
UNITS = [
    ("minutes", "hours", 60),
    ("centimeters", "meters", 100),
    ("grams", "kilograms", 1000),
    ("seconds", "minutes", 60),
    ("months", "years", 12),
    ("days", "weeks", 7),
]
MMLU_SUBJECTS = ["elementary mathematics", "world geography", "astronomy", "measurement"]


def _mc(subject: int, j: int) -> tuple[str, list[str], int]:
    """A multiple-choice question of `subject`, number j: (question, 4 options, index of the answer)."""
    if subject == 0:
        a, b = 3 + j % 9, 4 + (j * 7) % 8
        q, right, wrong = f"What is {a} times {b}?", str(a * b), [str(a * b + d) for d in (a, -b, 1 + j % 5)]
    elif subject == 1:
        country, city = COUNTRIES[j % len(COUNTRIES)]
        q = f"What is the capital city of {country}?"
        right = city
        wrong = [COUNTRIES[(j + k) % len(COUNTRIES)][1] for k in (3, 5, 7)]
    elif subject == 2:
        n = j % len(PLANETS)
        q, right = f"Which planet is number {n + 1} in order from the Sun?", PLANETS[n]
        wrong = [PLANETS[(n + k) % len(PLANETS)] for k in (1, 3, 6)]
    else:
        small, big, factor = UNITS[j % len(UNITS)]
        n = 2 + j % 5
        q, right = f"How many {small} are there in {n} {big}?", str(n * factor)
        wrong = [str(n * factor + d) for d in (factor, -factor // 2, 10)]
    pos = (j * 3 + subject) % 4
    options = wrong[:pos] + [right] + wrong[pos:]
    return q, options, pos


def _mc_text(q: str, options: list[str]) -> str:
    return q + "\n" + "".join(f"{'ABCD'[k]}. {o}\n" for k, o in enumerate(options)) + "Answer:"


def mmlu_header(subject: int, shots: int = 5) -> str:
    head = f"The following are multiple choice questions (with answers) about {MMLU_SUBJECTS[subject]}.\n\n"
    for j in range(shots):
        q, options, pos = _mc(subject, 1000 + j)
        head += _mc_text(q, options) + f" {'ABCD'[pos]}\n\n"
    return head


def mmlu_input(i: int) -> dict:
    subject = i % len(MMLU_SUBJECTS)
    q, options, _ = _mc(subject, i // len(MMLU_SUBJECTS))
    return {"header": mmlu_header(subject), "question": _mc_text(q, options)}


# -------------------------------------------------------------- react (agent loop, replayed observations)
REACT_HEADER = (
    "Solve a question answering task with interleaving Thought, Action, Observation steps. Thought can "
    "reason about the current situation, and Action can be three types:\n"
    "(1) Search[entity], which searches the exact entity on Wikipedia and returns the first paragraph "
    "if it exists.\n"
    "(2) Lookup[keyword], which returns the next sentence containing keyword in the current passage.\n"
    "(3) Finish[answer], which returns the answer and finishes the task.\n"
    "Here are some examples.\n\n"
    "Question: Which river flows through the town where the painter Ada Morrow was born?\n"
    "Thought 1: I need to search Ada Morrow and find the town where she was born.\n"
    "Action 1: Search[Ada Morrow]\n"
    "Observation 1: Ada Morrow (1871-1940) was a landscape painter born in Eldham, a market town in the "
    "north.\n"
    "Thought 2: Ada Morrow was born in Eldham. I need to search Eldham and find its river.\n"
    "Action 2: Search[Eldham]\n"
    "Observation 2: Eldham is a market town on the banks of the river Wend, known for its stone bridge.\n"
    "Thought 3: The river Wend flows through Eldham, so the answer is the Wend.\n"
    "Action 3: Finish[Wend]\n\n"
    "Question: In what year did the bridge designed by Tomas Reyes open?\n"
    "Thought 1: I need to search Tomas Reyes and find the bridge he designed.\n"
    "Action 1: Search[Tomas Reyes]\n"
    "Observation 1: Tomas Reyes was an engineer who designed the Harlow Viaduct and several railway "
    "stations.\n"
    "Thought 2: Tomas Reyes designed the Harlow Viaduct. I need to find when it opened.\n"
    "Action 2: Lookup[opened]\n"
    "Observation 2: The Harlow Viaduct opened to traffic in 1902 after four years of construction.\n"
    "Thought 3: The Harlow Viaduct opened in 1902.\n"
    "Action 3: Finish[1902]\n\n"
)
TOWNS = [
    "Brackley",
    "Corwen",
    "Dunmore",
    "Eastby",
    "Fenwick",
    "Galloway",
    "Hexham",
    "Ivybridge",
    "Kelso",
    "Ludlow",
    "Marlow",
    "Newport",
    "Oakham",
    "Penrith",
    "Rye",
    "Selby",
]
RIVERS = ["Avon", "Tees", "Ouse", "Wye", "Dee", "Exe", "Trent", "Severn"]


def react_input(i: int) -> dict:
    """A question and the observations an environment would return, replayed whatever the model
    says; 2-4 steps, the last one ends with Finish."""
    person = f"{NAMES[i % len(NAMES)]} {['Hale', 'Stone', 'Marsh', 'Field', 'Brook'][i % 5]}"
    town, river = TOWNS[(i * 3) % len(TOWNS)], RIVERS[i % len(RIVERS)]
    year = 1850 + (i * 13) % 150
    observations = [
        f"{person} ({year}-{year + 60}) was a writer and teacher born in {town}, "
        "where a school bears the name.",
        f"{town} is a small town on the river {river}, with a population of {2000 + (i * 37) % 9000}.",
        f"The river {river} is {40 + i % 200} kilometres long and reaches the sea near "
        f"{TOWNS[(i + 5) % len(TOWNS)]}.",
    ]
    steps = 2 + i % 3
    return {
        "question": f"Which river flows through the birthplace of {person}, and how long is it?",
        "observations": observations[: steps - 1],
    }


# ---------------------------------------------------------------------- llm judge (fork over dimensions)
JUDGE_SYSTEM = (
    "You are an expert editor. You evaluate articles on one dimension at a time, explain your "
    "reasoning briefly, and end every evaluation with the word END.\n\n"
)
JUDGE_DIMENSIONS = [
    ("Clarity", "Is the article easy to follow? Are the sentences clear and the terms explained?"),
    ("Accuracy", "Are the facts correct and the claims supported by evidence?"),
    ("Structure", "Does the article have a logical order, with an introduction and a conclusion?"),
    ("Engagement", "Does the article hold the reader's interest with examples or a story?"),
    ("Conciseness", "Does the article avoid repetition and unnecessary detail?"),
]
TOPICS = [
    "urban beekeeping",
    "night trains in Europe",
    "community gardens",
    "repairing old radios",
    "the history of maps",
    "tidal energy",
    "learning a second language",
    "public libraries",
]


def judge_input(i: int) -> dict:
    topic, name = TOPICS[i % len(TOPICS)], NAMES[(i * 7) % len(NAMES)]
    n = 3 + i % 5
    article = (
        f"A short guide to {topic}, by {name}.\n"
        f"Interest in {topic} has grown over the last {n} years. Many people start with a small project "
        f"and a few questions, and soon find a local group that meets every {['week', 'month'][i % 2]}. "
        f"The first step is to read about the basics; the second is to talk to someone with experience. "
        f"Costs are usually modest, around {20 * n} dollars to begin, though tools can be shared. "
        f"Common mistakes include starting too big and skipping the safety advice. "
        f"In the end, {topic} rewards patience, and {name} recommends keeping a simple notebook of "
        f"progress.\n"
    )
    return {"article": article}


# ---------------------------------------------------------------------- json decoding (regex)
CITIES = [
    ("Lyon", "France"),
    ("Osaka", "Japan"),
    ("Mombasa", "Kenya"),
    ("Cusco", "Peru"),
    ("Calgary", "Canada"),
    ("Luxor", "Egypt"),
    ("Bergen", "Norway"),
    ("Valparaiso", "Chile"),
    ("Pune", "India"),
    ("Seville", "Spain"),
]
JSON_COUNTRIES = sorted({c for _, c in CITIES})
REGEX_NAME = r'"[A-Z][a-z]{1,11}"'
REGEX_COUNTRY = '"(' + "|".join(JSON_COUNTRIES) + ')"'
REGEX_INT = r"[1-9][0-9]{0,6}"
REGEX_FLOAT = r"-?[0-9]{1,2}\.[0-9]{1,2}"


def json_input(i: int) -> dict:
    city, country = CITIES[i % len(CITIES)]
    pop, lat = 50_000 + (i * 7919) % 2_000_000, -40 + (i * 17) % 100 + 0.25
    doc = (
        f"{city} is a city in {country}. It lies at latitude {lat:.2f} and has about {pop} inhabitants. "
        f"The city is known for its old market, a river port and a university founded {100 + i % 300} "
        f"years ago. "
        f"Visitors arrive by train or by road; the main festival takes place every "
        f"{['spring', 'autumn'][i % 2]}.\n"
    )
    return {"document": doc}
