"""The workloads: one radixlm program each, in the shape of the SGLang paper's benchmarks.

mmlu      5-shot multiple-choice header per subject (4 subjects) + question + gen(max_tokens=1)
few-shot  8 worked arithmetic examples + question + gen(stop="\\n")          (gsm8k-like)
select    8-passage header + context + select among 4 endings               (hellaswag-like)
tree      long prompt, fork(3) plans, a nested fork(2) of answers per plan  (tree of thought)
react     2-example ReAct prompt, 2-4 Thought/Action gens with stop strings, replayed Observations
chat      shared system prompt + 4 user/assistant turns, gen per turn       (multi-turn chat)
judge     article, fork over 5 dimensions (a gen each), join, final score gen (LLM judge)
json      document + JSON object filled by regex-constrained gens in a var_scope (json_decode_regex)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import radixlm as rl
from programs import data as d


@rl.function
def mmlu(s, header, question):
    s += header + question
    s += rl.gen("answer", max_tokens=1)


@rl.function
def few_shot(s, question):
    s += d.FEW_SHOT_HEADER
    s += "Question: " + question + "\nAnswer:"
    s += rl.gen("answer", stop="\n")


@rl.function
def select_ending(s, context, choices):
    s += d.SELECT_HEADER
    s += "Passage: " + context
    s += rl.select("ending", choices=choices)


@rl.function
def tree_of_thought(s, question):
    s += d.TOT_HEADER
    s += "Problem: " + question + "\n"
    plans = s.fork(3)
    plans += lambda i: f"Plan {i + 1}:" + rl.gen("plan", stop="\n") + "\n"
    for plan in plans:
        answers = plan.fork(2)
        answers += lambda j: f"Answer {j + 1}:" + rl.gen("answer", stop="\n") + "\n"
        answers.join()
    plans.join()


@rl.function
def react(s, question, observations):
    s += d.REACT_HEADER
    s += "Question: " + question + "\n"
    for k in range(1, len(observations) + 2):  # the last step has no observation (it should Finish)
        s += f"Thought {k}:" + rl.gen(f"thought_{k}", stop=["\n", f"Action {k}:"]) + "\n"
        s += f"Action {k}:" + rl.gen(f"action_{k}", stop=["\n", "]"]) + "]\n"
        if k <= len(observations):
            s += f"Observation {k}: {observations[k - 1]}\n"  # replayed: the environment's answer


@rl.function
def multi_turn_chat(s, turns):
    s += rl.system(d.CHAT_SYSTEM)
    for k, turn in enumerate(turns):
        s += rl.user(turn)
        s += rl.assistant(rl.gen(f"reply_{k}"))


@rl.function
def judge(s, article):
    s += d.JUDGE_SYSTEM + "Article:\n" + article + "\n"
    forks = s.fork(len(d.JUDGE_DIMENSIONS))
    for f, (dim, question) in zip(forks, d.JUDGE_DIMENSIONS):
        f += f"Evaluate the article on {dim}. {question}\nEvaluation:"
        f += rl.gen("judgement", stop="END")
    forks.join()
    s += "Summary of the evaluations:\n"
    for f, (dim, _) in zip(forks, d.JUDGE_DIMENSIONS):
        s += f"{dim}: {f['judgement'].strip()}\n"
    s += "On a scale of 1 to 10, the article gets a score of"
    s += rl.gen("score", max_tokens=2)


@rl.function
def json_decode(s, document):
    s += "Extract the information about a city from the page below.\n"
    s += "Page begin.\n" + document + "Page end.\n"
    s += "Here are the name, country, population and latitude of the city in JSON format.\n"
    with s.var_scope("json_output"):
        s += "{\n"
        s += '  "name": ' + rl.gen("name", regex=d.REGEX_NAME, max_tokens=16) + ",\n"
        s += '  "country": ' + rl.gen("country", regex=d.REGEX_COUNTRY, max_tokens=16) + ",\n"
        s += '  "population": ' + rl.gen("population", regex=d.REGEX_INT, max_tokens=16) + ",\n"
        s += '  "latitude": ' + rl.gen("latitude", regex=d.REGEX_FLOAT, max_tokens=16) + "\n"
        s += "}"


@dataclass
class Workload:
    name: str
    program: Any
    make_input: Callable[[int], dict]
    description: str

    def inputs(self, count: int, offset: int = 0) -> list[dict]:
        return [self.make_input(offset + i) for i in range(count)]


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload("mmlu", mmlu, d.mmlu_input, "5-shot MC header (4 subjects) + question + gen(max_tokens=1)"),
        Workload(
            "few-shot",
            few_shot,
            lambda i: {"question": d._question(i)[0]},
            "8-shot arithmetic header + question + gen(stop='\\n')",
        ),
        Workload(
            "select", select_ending, d.select_input, "8-passage header + context + select among 4 endings"
        ),
        Workload(
            "tree",
            tree_of_thought,
            lambda i: {"question": d._question(500 + i)[0]},
            "long prompt, fork(3) plans, nested fork(2) answers each, join",
        ),
        Workload(
            "react",
            react,
            d.react_input,
            "2-example ReAct prompt, 2-4 steps of thought/action gens (stop strings), replayed observations",
        ),
        Workload(
            "chat",
            multi_turn_chat,
            lambda i: {"turns": d._chat_turns(i)},
            "shared system prompt + 4 user/assistant turns, gen per turn",
        ),
        Workload("judge", judge, d.judge_input, "article, fork(5) dimension gens, join, final score gen"),
        Workload("json", json_decode, d.json_input, "document + 4 regex-constrained gens in a var_scope"),
    ]
}
ALIASES = {
    "tree-of-thought": "tree",
    "tot": "tree",
    "multi-turn": "chat",
    "multi-turn-chat": "chat",
    "fewshot": "few-shot",
    "hellaswag": "select",
    "llm-judge": "judge",
    "json-decode": "json",
    "agent": "react",
}
