"""Tree of thought with fork/join: branch into several approaches, let a few reviewers judge
each branch (a nested fork), gather the results, and finish from the best branch.

    python examples/tree_of_thought.py                       # launches the offline tiny model
    python examples/tree_of_thought.py --branches 4 --reviewers 3
    python examples/tree_of_thought.py --model PATH          # any local Llama/Mistral/Qwen2/Qwen3 folder
    python examples/tree_of_thought.py --endpoint tcp://127.0.0.1:30001
                                                             # a running `radixlm serve --zmq-port 30001`

`s.fork(n)` gives n states that start from the parent's text; their requests run concurrently
and share the parent's prefix through the radix cache. `join()` waits for them and gathers each
new variable into a list on the parent, so `s["thought"]` is one thought per branch and
`s["verdict"]` one list of verdicts per branch.
"""

from __future__ import annotations

from _backend import backend_from_args, make_parser, print_cache_hit_rate

import radixlm as rl

QUESTION = "How can a city cut traffic congestion without building new roads?"
VERDICTS = ["promising", "flawed"]


@rl.function
def tree_of_thought(s, question: str, branches: int, reviewers: int, max_tokens: int):
    s += f"Question: {question}\nLet us consider several different approaches.\n"
    forks = s.fork(branches)
    forks += lambda i: f"Approach {i + 1}:" + rl.gen("thought", max_tokens=max_tokens, stop="\n") + "\n"
    for branch in forks:  # each branch is reviewed by its own nested fork
        panel = branch.fork(reviewers)
        panel += lambda j: f"Reviewer {j + 1} thinks this approach is " + rl.select("verdict", VERDICTS)
        panel.join()  # branch["verdict"] = [verdict of reviewer 1, ...]
    forks.join()  # s["thought"] = [thought of branch 1, ...]; s["verdict"] = [[...], ...]

    votes = [verdicts.count("promising") for verdicts in s["verdict"]]
    best = max(range(branches), key=lambda i: votes[i])
    s += f"The most promising approach is:{s['thought'][best]}\nIn one sentence, the plan is:"
    s += rl.gen("plan", max_tokens=max_tokens, stop="\n")
    return best


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--branches", type=int, default=3)
    parser.add_argument("--reviewers", type=int, default=2)
    args = parser.parse_args()
    with backend_from_args(args) as backend:
        state = tree_of_thought.run(
            question=QUESTION,
            branches=args.branches,
            reviewers=args.reviewers,
            max_tokens=args.max_tokens,
            temperature=0,
        )
        best = state.ret_value
        print(f"question: {QUESTION}")
        for i, (thought, verdicts) in enumerate(zip(state["thought"], state["verdict"])):
            last = i == args.branches - 1
            print(f"{'└──' if last else '├──'} branch {i + 1}{' (chosen)' if i == best else ''}: {thought!r}")
            for j, verdict in enumerate(verdicts):
                print(
                    f"{'   ' if last else '│  '} {'└──' if j == len(verdicts) - 1 else '├──'} "
                    f"reviewer {j + 1}: {verdict}"
                )
        print(f"plan: {state['plan']!r}")
        print_cache_hit_rate(backend)


if __name__ == "__main__":
    main()
