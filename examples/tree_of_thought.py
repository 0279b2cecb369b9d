"""Tree of thought with fork/join: branch into several approaches, let a few reviewers judge
each branch (a nested fork), gather the results, and finish from the best branch.

    python examples/tree_of_thought.py                       # launches the trained demo model
    python examples/tree_of_thought.py --branches 2 --reviewers 3 --temperature 0
    python examples/tree_of_thought.py --model PATH          # any local Llama/Mistral/Qwen2/Qwen3 folder
    python examples/tree_of_thought.py --endpoint tcp://127.0.0.1:30001
                                                             # a running `radixlm serve --zmq-port 30001`

The problem, "What is 47 + 38 - 29?", takes two steps, and the demo model only does one sum
or difference of two numbers at a time ("What is A + B?"). Each branch is one approach: a
different first step (47 + 38, 47 - 29 or 38 - 29), which the model works out by sampling
(--temperature; 0 makes every step greedy). Each branch's reviewers check its step greedily
by working it backwards (the sum minus one operand must give the other) or by redoing it, and
the approach whose step most reviewers confirm is finished greedily: its step is replayed
in the main conversation, and the model does the second step.

`s.fork(n)` gives n states that start from the parent's text; their requests run concurrently
and share the parent's prefix through the radix cache. `join()` waits for them and gathers each
new variable into a list on the parent, so `s["thought"]` is one thought per branch and
`s["check"]` one list of checks per branch.
"""

from __future__ import annotations

import re

from _backend import backend_from_args, make_parser, print_cache_hit_rate

import radixlm as rl

A, B, C = 47, 38, 29  # the problem: A + B - C; every intermediate result stays within 0..99
QUESTION = f"What is {A} + {B} - {C}?"
# each approach: (first step, how to finish with its result r); the model sees one step at a time
APPROACHES = [
    ((A, "+", B), lambda r: (r, "-", C)),
    ((A, "-", C), lambda r: (r, "+", B)),
    ((B, "-", C), lambda r: (A, "+", r)),
]
VERDICTS = {True: "confirms", False: "disagrees"}
STEP = re.compile(r"^(-?\d+) ([-+]) (-?\d+) = (-?\d+)\.$")  # how the demo model answers: "47 + 38 = 85."


def ask(step: tuple[int, str, int]) -> str:
    return f"What is {step[0]} {step[1]} {step[2]}?"


def result_of(answer: str) -> int | None:
    match = STEP.match(answer.strip())
    return int(match.group(4)) if match else None


def checks(step: tuple[int, str, int], result: int) -> list[tuple[tuple[int, str, int], int]]:
    """The reviewers' questions for a step that claims `result`, each with the answer that
    confirms it: undo the step to get each operand back, or redo it."""
    x, op, y = step
    if op == "+":
        return [((result, "-", y), x), ((result, "-", x), y), (step, result)]
    return [((result, "+", y), x), ((x, "-", result), y), (step, result)]


@rl.function
def tree_of_thought(s, branches: int, reviewers: int, max_tokens: int, branch_temperature: float):
    s += rl.system("You are a helpful assistant.")
    forks = s.fork(branches)
    # the branches' steps are sampled; everything else in the program is greedy
    forks += lambda i: (
        rl.user(ask(APPROACHES[i][0]))
        + rl.assistant(rl.gen("thought", max_tokens=max_tokens, temperature=branch_temperature))
    )
    expected = []  # per branch, the answers that confirm its step
    for i, branch in enumerate(forks):  # each branch is reviewed by its own nested fork
        step = APPROACHES[i][0]
        claimed = result_of(branch["thought"])  # waits for this branch's thought
        # a branch whose answer has no number gets the plain step again: its reviewers redo it
        questions = checks(step, claimed) if claimed is not None else [(step, None)] * 3
        expected.append([answer for _, answer in questions[:reviewers]])
        panel = branch.fork(reviewers)
        # a list gives reviewer j its own item j (above, a callable gave branch i its own text)
        panel += [
            rl.user(ask(question)) + rl.assistant(rl.gen("check", max_tokens=max_tokens))
            for question, _ in questions[:reviewers]
        ]
        panel.join()  # branch["check"] = [check of reviewer 1, ...]
    forks.join()  # s["thought"] = [thought of branch 1, ...]; s["check"] = [[...], ...]

    verdicts = [
        [VERDICTS[want is not None and result_of(check) == want] for check, want in zip(branch_checks, wants)]
        for branch_checks, wants in zip(s["check"], expected)
    ]
    best = max(range(branches), key=lambda i: verdicts[i].count("confirms"))  # ties: the first
    first, finish = APPROACHES[best]
    result = result_of(s["thought"][best])
    if result is None:  # no branch wrote a number (a sampling slip): nothing to finish from
        return best, verdicts, False
    s += rl.user(ask(first)) + rl.assistant(s["thought"][best].strip())
    s += rl.user(ask(finish(result))) + rl.assistant(rl.gen("answer", max_tokens=max_tokens))
    return best, verdicts, True


def main() -> None:
    parser = make_parser(__doc__, max_tokens=16)
    parser.add_argument("--branches", type=int, default=3, choices=range(1, len(APPROACHES) + 1))
    parser.add_argument("--reviewers", type=int, default=2, choices=range(1, 4))
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature of the branches")
    args = parser.parse_args()
    with backend_from_args(args) as backend:
        state = tree_of_thought.run(
            branches=args.branches,
            reviewers=args.reviewers,
            max_tokens=args.max_tokens,
            branch_temperature=args.temperature,
            temperature=0,  # run-level default for every other gen: greedy
        )
        best, verdicts, finished = state.ret_value
        print(f"question: {QUESTION}")
        for i, (thought, branch_checks) in enumerate(zip(state["thought"], state["check"])):
            last = i == args.branches - 1
            print(f"{'└──' if last else '├──'} branch {i + 1}{' (chosen)' if i == best else ''}: {thought!r}")
            for j, (check, verdict) in enumerate(zip(branch_checks, verdicts[i])):
                print(
                    f"{'   ' if last else '│  '} {'└──' if j == len(branch_checks) - 1 else '├──'} "
                    f"reviewer {j + 1}: {check!r} -> {verdict}"
                )
        if finished:  # reading state["answer"] waits for it
            verdict = "right" if result_of(state["answer"]) == A + B - C else f"wrong, expected {A + B - C}"
            print(f"answer: {state['answer']!r} ({verdict})")
        else:
            print("answer: none (no branch wrote a number)")
        print_cache_hit_rate(backend)


if __name__ == "__main__":
    main()
