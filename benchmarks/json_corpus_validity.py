"""Do constrained outputs validate? Every schema of the corpus (tests/data/json_schemas/) that a
backend accepts is generated at temperature 1.0 on the tiny random model and checked with
`jsonschema`; a refused one is listed with its reason.

    python benchmarks/json_corpus_validity.py --backends auto,outlines,llguidance \\
        --out benchmarks/results/json-corpus-validity-cpu.json

A random model is the hard case: it takes any allowed token, so strings, arrays and nesting run
as long as the schema lets them. An output that hits `--max-new-tokens` before the schema
closes is reported as "length" (not a validity failure: the constraint held at every token,
the text was only cut); everything that stopped must validate. Per backend: accepted, refused
(grouped by reason), stopped and valid, stopped and invalid (with the text), cut by length.
With --compile-timeout-s, a schema outlines-core compiles more slowly than that is listed and
left out of the generation (a request waits for its grammar: one would hold up its batch).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run_info
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the corpus loader

import jsonschema
from json_schema_corpus import load_corpus, validate_output
from run_info import command_line, git_commit, git_dirty, load_before_run, loadavg, utc_now

import radixlm as rl
from radixlm.runtime.constrained.backend import Constraint, check_constraint, choose_backend
from radixlm.runtime.constrained.json_schema import normalize_json_schema


def accepted_schemas(corpus: list[dict], backend: str) -> tuple[list[tuple[dict, str]], dict[str, str]]:
    """(the entries the backend accepts with their schema text, name -> refusal reason)."""
    accepted, refused = [], {}
    for entry in corpus:
        text = normalize_json_schema(entry["schema"])
        try:
            check_constraint(Constraint("json", text), backend, None)
        except ValueError as exc:
            refused[entry["name"]] = str(exc)
            continue
        accepted.append((entry, text))
    return accepted, refused


def slow_to_compile(accepted: list[tuple[dict, str]], backend: str, timeout_s: float) -> dict[str, float]:
    """name -> seconds, for the accepted schemas that outlines-core cannot compile within
    `timeout_s` on the tiny vocabulary (tried in a forked worker: bench_grammar_backends.py's
    Compiler). A request waits for its grammar, so one such schema would hold its whole batch."""
    from bench_grammar_backends import Compiler, load_vocab

    vocab, _ = load_vocab("tiny")
    compiler = Compiler(vocab, "outlines", timeout_s)
    slow = {}
    try:
        for entry, text in accepted:
            constraint = Constraint("json", text)
            if choose_backend(backend, constraint) != "outlines":
                continue
            seconds, _, error = compiler(constraint)
            if error == "timeout":
                slow[entry["name"]] = seconds
    finally:
        compiler.close()
    return slow


def generate_each(engine, accepted: list[tuple[dict, str]], max_new_tokens: int, batch: int) -> list[dict]:
    """One output (or {"error": ...}) per accepted schema, generated in batches."""
    outs: list[dict] = []
    for start in range(0, len(accepted), batch):
        chunk = accepted[start : start + batch]
        prompts = [f"A JSON value for {entry['name']}:" for entry, _ in chunk]
        params = [
            {"json_schema": text, "temperature": 1.0, "seed": start + k, "max_new_tokens": max_new_tokens}
            for k, (_, text) in enumerate(chunk)
        ]
        try:
            outs += engine.generate(prompts, params)
        except Exception:  # one failed: run them one by one to see which and why
            for prompt, p in zip(prompts, params):
                try:
                    outs.append(engine.generate(prompt, p))
                except Exception as exc:
                    outs.append({"error": f"{type(exc).__name__}: {str(exc)[:300]}"})
    return outs


def check_outputs(accepted: list[tuple[dict, str]], outs: list[dict]) -> dict:
    counts: collections.Counter = collections.Counter()
    by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    invalid, errors = [], []
    for (entry, _), out in zip(accepted, outs):
        if "error" in out:
            verdict = "error"
            errors.append({"name": entry["name"], "error": out["error"]})
        elif out["meta_info"]["finish_reason"]["type"] != "stop":
            verdict = "length"
        else:
            try:
                validate_output(out["text"], entry["schema"])
                verdict = "valid"
            except (ValueError, jsonschema.ValidationError) as exc:
                verdict = "invalid"
                invalid.append({"name": entry["name"], "why": str(exc)[:300], "text": out["text"][:500]})
        counts[verdict] += 1
        by_kind[entry["kind"]][verdict] += 1
    return {
        "counts": dict(counts),
        "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "invalid": invalid,
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="auto", help="comma list of auto, outlines, llguidance")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16, help="requests per generate call")
    parser.add_argument(
        "--compile-timeout-s",
        type=float,
        default=0.0,
        help="leave out (and list) the schemas outlines-core takes longer than this to compile (0: none)",
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    from radixlm.testing import default_model_path

    corpus = load_corpus()
    command, date, load_before = command_line(argv), utc_now(), load_before_run()
    results = {}
    for backend in args.backends.split(","):
        t0 = time.perf_counter()
        accepted, refused = accepted_schemas(corpus, backend)
        slow = slow_to_compile(accepted, backend, args.compile_timeout_s) if args.compile_timeout_s else {}
        accepted = [(entry, text) for entry, text in accepted if entry["name"] not in slow]
        engine = rl.Engine(model_path=default_model_path(), grammar_backend=backend)
        try:
            outs = generate_each(engine, accepted, args.max_new_tokens, args.batch)
        finally:
            engine.shutdown()
        checked = check_outputs(accepted, outs)
        reasons = collections.Counter(
            r.split(":")[0] + ": " + r.split(":", 1)[-1][:60] for r in refused.values()
        )
        compiled_by = collections.Counter(choose_backend(backend, Constraint("json", t)) for _, t in accepted)
        results[backend] = {
            "schemas": len(corpus),
            "accepted": len(accepted) + len(slow),
            "compile_over_timeout": slow,
            "refused": len(refused),
            "refusal_reasons": dict(reasons.most_common()),
            "refused_names": refused,
            "compiled_by": dict(compiled_by),
            **checked,
            "wall_s": round(time.perf_counter() - t0, 1),
        }
        c = checked["counts"]
        print(
            f"{backend:<10} accepted {len(accepted) + len(slow)}/{len(corpus)}  "
            f"compile over {args.compile_timeout_s:g} s {len(slow)}  "
            f"valid {c.get('valid', 0)}  "
            f"invalid {c.get('invalid', 0)}  cut by length {c.get('length', 0)}  errors {c.get('error', 0)}  "
            f"({results[backend]['wall_s']} s)",
            flush=True,
        )
        for bad in checked["invalid"][:10] + checked["errors"][:10]:
            print("   ", json.dumps(bad)[:300])
    if args.out:
        payload = {
            "command": command,
            "date": date,
            "git_commit": git_commit(),
            "git_dirty": git_dirty(),
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
            "model": "tiny random llama (radixlm.testing.default_model_path())",
            "temperature": 1.0,
            "max_new_tokens": args.max_new_tokens,
            "results": results,
        }
        Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0 if all(not r["invalid"] and not r["errors"] for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
