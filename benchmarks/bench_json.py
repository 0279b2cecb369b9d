"""Benchmark JSON-schema decoding with jump-forward on and off, and the cost of the vocab mask.

    python benchmarks/bench_json.py                                   # tiny offline model, 32 requests
    python benchmarks/bench_json.py --num-requests 64 --repeats 5 --json out.json
    python benchmarks/bench_json.py --model /path/to/hf-folder --device cuda --json out.json

Workload, after SGLang's `benchmark/json_jump_forward` and `json_decode_regex`: --num-requests
prompts, alternately a "character" request (a Harry Potter character to describe: name, house,
blood status, occupation, a nested wand object, alive, patronus, bogart) and a "city" request (a
short page about a city to extract name, country, latitude, population and top 3 landmarks
from), each constrained by a JSON schema with long constant keys. Every free value is bounded
(maxLength on strings, maxDigits on integers -- minimum/maximum under the other backends --,
enums, fixed-size arrays) so that even a random-weight model finishes every object well within
--max-tokens.

For each configuration -- jump-forward on, jump-forward off (each a fresh `Engine` in this
process, same prompts, same seeds) -- a warm-up batch (other prompts, both schemas: compiles the
grammars) runs first. Then for each sampling mode (greedy; temperature 1.0 with a seed per
request) the batch runs once outside the median (its wall time is kept as `first_run_wall_s`:
prompts not yet cached, the grammars' per-state caches partly cold), then --repeats timed times;
the run with the median wall time is reported. So the timed runs measure steady-state decoding:
prompts in the radix cache, grammars compiled with their per-state results cached. (The cache is
deliberately not flushed between runs: `flush_cache` also empties the grammar cache, so every run
after a flush would recompile both schemas inside its timing.) Decode steps, generated tokens and
jump-forward tokens are `get_server_info` deltas over the run. Reported per run: wall time,
output tokens/s, decode steps, jump-forward tokens (and their fraction of the output tokens),
whether every output validates against its schema (`jsonschema`), and whether the outputs are
identical with jump-forward on and off (and across repeats). Exit status 1 when any output is
invalid or differs between on and off.

Unconstrained baseline: the same prompts in the jump-forward-off engine, no schema, with
max_new_tokens equal to the mean constrained output length of that mode (plain generation
throughput, so the cost of constraining is visible; a request may stop early at EOS).

Mask micro-benchmark: `radixlm.runtime.constrained.grammar.build_vocab_mask` alone, for batches of
1, 8 and 32 grammars in realistic states: each row walks a hand-written, schema-valid sample
output (the tokenizer's own tokenization of it), rows staggered so they sit at different
positions, one mask per step. Reported: mean µs per step with the per-state caches warm, and
for the first pass over the samples (per-state caches empty: includes asking the automaton for
the allowed tokens and building the per-state tensors). On CPU, and on CUDA (timed with
synchronize) when the device is cuda.

With the offline tiny model (random weights) the text is noise, but the grammar work, the
timings and the jump-forward accounting are real. Its vocabulary is 8192 tokens: masks over a
real model's 32k-150k vocabulary cost more.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from run_info import command_line, git_commit, git_dirty, load_before_run, loadavg, machine_info, utc_now

from radixlm import Engine

# ---------------------------------------------------------------------- schemas
MAX_STR = 16


def _string(n: int = MAX_STR) -> dict:
    return {"type": "string", "maxLength": n}


CHARACTER_SCHEMA: dict = {
    "type": "object",
    "properties": {
        "name": _string(),
        "house": {"enum": ["Gryffindor", "Slytherin", "Ravenclaw", "Hufflepuff"]},
        "blood status": {"enum": ["Pure-blood", "Half-blood", "Muggle-born"]},
        "occupation": {
            "enum": [
                "student",
                "teacher",
                "auror",
                "ministry of magic",
                "death eater",
                "order of the phoenix",
            ]
        },
        "wand": {
            "type": "object",
            "properties": {
                "wood": _string(),
                "core": _string(),
                "length": {"type": "integer", "maxDigits": 2},
            },
            "required": ["wood", "core", "length"],
        },
        "alive": {"enum": ["Alive", "Deceased"]},
        "patronus": _string(),
        "bogart": _string(),
    },
    "required": ["name", "house", "blood status", "occupation", "wand", "alive", "patronus", "bogart"],
}
CITY_SCHEMA: dict = {
    "type": "object",
    "properties": {
        "name": _string(),
        "country": _string(),
        # integers, not "number": outlines-core's bounded-number regex admits texts like "12." that are
        # not JSON
        "latitude": {"type": "integer", "maxDigits": 2},
        "population": {"type": "integer", "maxDigits": 9},
        "top 3 landmarks": {"type": "array", "items": _string(), "minItems": 3, "maxItems": 3},
    },
    "required": ["name", "country", "latitude", "population", "top 3 landmarks"],
}
SCHEMAS = {"character": CHARACTER_SCHEMA, "city": CITY_SCHEMA}


def with_standard_bounds(schema: Any) -> Any:
    """`maxDigits: k` (outlines-core's extension, which other backends ignore as JSON Schema
    says unknown keywords are) as the standard `minimum: 0, maximum: 10^k - 1`: the same bound,
    written so that the llguidance backend enforces it too."""
    if isinstance(schema, list):
        return [with_standard_bounds(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: with_standard_bounds(v) for k, v in schema.items() if k != "maxDigits"}
    if "maxDigits" in schema:
        out.update(minimum=0, maximum=10 ** schema["maxDigits"] - 1)
    return out


# schema-valid outputs a real model might write: the mask benchmark walks its grammars through these
SAMPLE_OUTPUTS = {
    "character": [
        {
            "name": "Hermione Granger",
            "house": "Gryffindor",
            "blood status": "Muggle-born",
            "occupation": "student",
            "wand": {"wood": "vine", "core": "dragon heart", "length": 10},
            "alive": "Alive",
            "patronus": "otter",
            "bogart": "failure",
        },
        {
            "name": "Severus Snape",
            "house": "Slytherin",
            "blood status": "Half-blood",
            "occupation": "teacher",
            "wand": {"wood": "ebony", "core": "unknown", "length": 13},
            "alive": "Deceased",
            "patronus": "doe",
            "bogart": "Lily Potter",
        },
    ],
    "city": [
        {
            "name": "Paris",
            "country": "France",
            "latitude": 48,
            "population": 2102650,
            "top 3 landmarks": ["Eiffel Tower", "Louvre Museum", "Notre-Dame"],
        },
        {
            "name": "Tokyo",
            "country": "Japan",
            "latitude": 35,
            "population": 13960000,
            "top 3 landmarks": ["Tokyo Tower", "Senso-ji", "Meiji Shrine"],
        },
    ],
}

# ---------------------------------------------------------------------- prompts
CHARACTERS = [
    "Harry Potter",
    "Hermione Granger",
    "Ron Weasley",
    "Albus Dumbledore",
    "Severus Snape",
    "Rubeus Hagrid",
    "Draco Malfoy",
    "Luna Lovegood",
    "Neville Longbottom",
    "Ginny Weasley",
    "Minerva McGonagall",
    "Sirius Black",
    "Remus Lupin",
    "Bellatrix Lestrange",
    "Cedric Diggory",
    "Cho Chang",
    "Fred Weasley",
    "George Weasley",
    "Dolores Umbridge",
    "Nymphadora Tonks",
]
CITIES = [
    (
        "Paris",
        "France",
        "Paris is the capital and largest city of France, on the river Seine. It is known for the "
        "Eiffel Tower, the Louvre, the cathedral of Notre-Dame and its cafes, and has about two million "
        "inhabitants.",
    ),
    (
        "Tokyo",
        "Japan",
        "Tokyo is the capital of Japan and the centre of the largest metropolitan area in the world. "
        "Landmarks include Tokyo Tower, the Senso-ji temple in Asakusa and the Meiji Shrine.",
    ),
    (
        "Cairo",
        "Egypt",
        "Cairo is the capital of Egypt, on the Nile. The pyramids of Giza stand at its western edge, "
        "and the city is home to the Egyptian Museum and the Citadel of Saladin.",
    ),
    (
        "Lima",
        "Peru",
        "Lima is the capital of Peru, on the Pacific coast. Its historic centre, the Plaza Mayor and "
        "the Larco Museum draw visitors, and about ten million people live in the metropolitan area.",
    ),
    (
        "Oslo",
        "Norway",
        "Oslo is the capital of Norway, at the head of the Oslofjord. The Opera House, the Vigeland "
        "sculpture park and the Akershus Fortress are among its best-known sights.",
    ),
    (
        "Sydney",
        "Australia",
        "Sydney is the largest city in Australia. Its harbour holds the Opera House and the "
        "Harbour Bridge, and Bondi Beach lies a short ride from the centre.",
    ),
    (
        "Toronto",
        "Canada",
        "Toronto is the largest city in Canada, on Lake Ontario. The CN Tower, the Royal Ontario "
        "Museum and the Distillery District are popular with visitors.",
    ),
    (
        "Nairobi",
        "Kenya",
        "Nairobi is the capital of Kenya. Nairobi National Park lies inside the city limits, next to "
        "the Giraffe Centre and the Karen Blixen Museum.",
    ),
]


def _character_prompt(name: str) -> str:
    return (
        f"{name} is a character in Harry Potter. Please fill in the following information about this "
        f"character.\n"
    )


def _city_prompt(i: int) -> str:
    name, country, doc = CITIES[i % len(CITIES)]
    return (
        "Please extract the information of a city from the following wikipedia page.\n"
        f"Page begin.\n{doc}\nPage end.\n"
        "Here is the name, country, latitude, population and top 3 landmarks of the city in JSON format.\n"
    )


def make_requests(count: int, offset: int = 0) -> list[tuple[str, str]]:
    """(prompt, schema name) pairs, alternately character and city."""
    out = []
    for k in range(offset, offset + count):
        if k % 2 == 0:
            out.append((_character_prompt(CHARACTERS[(k // 2) % len(CHARACTERS)]), "character"))
        else:
            out.append((_city_prompt(k // 2), "city"))
    return out


WARMUP_OFFSET = 1001  # odd: the warm-up's first request is a city, its second a character
WARMUP_REQUESTS = 2
MODES = {"greedy": {"temperature": 0.0}, "temperature": {"temperature": 1.0}}
SEED_BASE = 1234
MASK_BATCHES = (1, 8, 32)


# ---------------------------------------------------------------------- engine runs
def _params(schema_names: list[str], mode: str, max_tokens: int, constrained: bool = True) -> list[dict]:
    params = []
    for i, name in enumerate(schema_names):
        p: dict[str, Any] = {"max_new_tokens": max_tokens, **MODES[mode], "seed": SEED_BASE + i}
        if constrained:
            p["json_schema"] = SCHEMAS[name]
        params.append(p)
    return params


def _validate(text: str, schema: dict) -> str | None:
    """None when the text is JSON that validates against the schema, else the reason."""
    import jsonschema

    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError) as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]} in {text[:200]!r}"
    return None


def _timed_batch(
    engine: Engine, prompts: list[str], params: list[dict], schema_names: list[str] | None
) -> dict:
    before = engine.get_server_info()
    t0 = time.perf_counter()
    outs = engine.generate(prompts, params)
    wall = time.perf_counter() - t0
    after = engine.get_server_info()

    tokens = [o["meta_info"]["completion_tokens"] for o in outs]
    jf_meta = sum(o["meta_info"].get("jump_forward_tokens") or 0 for o in outs)
    finish: dict[str, int] = {}
    for o in outs:
        kind = (o["meta_info"].get("finish_reason") or {}).get("type", "none")
        finish[kind] = finish.get(kind, 0) + 1
    invalid = []
    if schema_names is not None:
        invalid = [
            (i, why)
            for i, (o, name) in enumerate(zip(outs, schema_names))
            if (why := _validate(o["text"], SCHEMAS[name])) is not None
        ]
    out_tokens = sum(tokens)
    jf = after.get("jump_forward_tokens", 0) - before.get("jump_forward_tokens", 0)
    steps = after["decode_steps"] - before["decode_steps"]
    return {
        "num_requests": len(outs),
        "wall_s": wall,
        "output_tokens": out_tokens,
        "output_tokens_per_s": out_tokens / wall if wall > 0 else 0.0,
        "mean_output_tokens": out_tokens / len(outs) if outs else 0.0,
        "decode_steps": steps,
        "prefill_batches": after["prefill_batches"] - before["prefill_batches"],
        "generated_tokens": after["generated_tokens"] - before["generated_tokens"],
        "prompt_tokens": after["prompt_tokens"] - before["prompt_tokens"],
        "cached_tokens": after["cached_tokens"] - before["cached_tokens"],
        "grammar_compiles": after.get("grammar_cache_misses", 0) - before.get("grammar_cache_misses", 0),
        "jump_forward_tokens": jf,
        "jump_forward_tokens_meta": jf_meta,
        "jump_forward_fraction": jf / out_tokens if out_tokens else 0.0,
        "finish_reasons": finish,
        "valid": len(outs) - len(invalid) if schema_names is not None else None,
        "invalid": len(invalid) if schema_names is not None else None,
        "first_invalid": f"request {invalid[0][0]}: {invalid[0][1]}" if invalid else None,
        "_output_ids": [o["output_ids"] for o in outs],
    }


def _median_run(first: dict, runs: list[dict]) -> dict:
    """The timed run of median wall time, with the first (untimed) run's wall time and checks
    over all of them."""
    median = sorted(runs, key=lambda r: r["wall_s"])[(len(runs) - 1) // 2]
    same = all(r["_output_ids"] == first["_output_ids"] for r in runs)
    timed, runs = runs, [first, *runs]
    return {
        **median,
        "repeats": len(timed),
        "first_run_wall_s": first["wall_s"],
        "wall_s_all": [round(r["wall_s"], 4) for r in timed],
        "wall_s_min": min(r["wall_s"] for r in timed),
        "invalid": None if median["invalid"] is None else max(r["invalid"] for r in runs),
        "first_invalid": next((r["first_invalid"] for r in runs if r["first_invalid"]), None),
        "identical_across_repeats": same,
    }


def run_engine(
    args: argparse.Namespace,
    jump_forward: bool,
    modes: list[str],
    baseline_tokens: dict[str, int] | None = None,
) -> tuple[dict, dict]:
    """One fresh Engine: warm-up, then every mode --repeats times (and, given baseline_tokens,
    the unconstrained baseline of each mode). Returns (results by mode, engine info)."""
    t0 = time.perf_counter()
    engine = Engine(
        args.model,
        device=args.device,
        disable_jump_forward=not jump_forward,
        grammar_backend=args.grammar_backend,
        **({"dtype": args.dtype} if args.dtype else {}),
    )
    startup = time.perf_counter() - t0
    config = "jf_on" if jump_forward else "jf_off"
    results: dict[str, dict] = {}
    try:
        info0 = engine.get_server_info()
        if not info0.get("constrained_decoding"):
            raise RuntimeError("this runtime has no constrained decoding")
        print(
            f"[{config}] engine up in {startup:.1f}s on {info0.get('device')} ({info0.get('dtype')})",
            file=sys.stderr,
            flush=True,
        )
        warm = make_requests(WARMUP_REQUESTS, WARMUP_OFFSET)
        warm_names = [n for _, n in warm]
        # one batch: every mode's warm-up requests together
        outs = engine.generate(
            [p for p, _ in warm] * len(modes),
            [q for mode in modes for q in _params(warm_names, mode, args.max_tokens)],
        )
        bad = [
            why for o, n in zip(outs, warm_names * len(modes)) if (why := _validate(o["text"], SCHEMAS[n]))
        ]
        if bad:
            print(f"[{config}] warm-up output invalid: {bad[0]}", file=sys.stderr)
        compiled = engine.get_server_info()
        reqs = make_requests(args.num_requests)
        prompts, names = [p for p, _ in reqs], [n for _, n in reqs]
        for mode in modes:
            params = _params(names, mode, args.max_tokens)
            first = _timed_batch(engine, prompts, params, names)
            r = _median_run(
                first, [_timed_batch(engine, prompts, params, names) for _ in range(args.repeats)]
            )
            results[mode] = r
            print(
                f"[{config}] {mode:<11} {r['wall_s']:7.2f}s  {r['output_tokens_per_s']:8.1f} tok/s  "
                f"{r['decode_steps']:4d} steps  jf {r['jump_forward_tokens']:5d}  invalid {r['invalid']}",
                file=sys.stderr,
                flush=True,
            )
            if baseline_tokens is not None:
                n = baseline_tokens[mode]
                params = _params(names, mode, n, constrained=False)
                first = _timed_batch(engine, prompts, params, None)
                b = _median_run(
                    first, [_timed_batch(engine, prompts, params, None) for _ in range(args.repeats)]
                )
                b["max_new_tokens"] = n
                results[mode + ":unconstrained"] = b
                print(
                    f"[{config}] {mode:<11} unconstrained (max_new_tokens {n}) {b['wall_s']:7.2f}s  "
                    f"{b['output_tokens_per_s']:8.1f} tok/s  {b['decode_steps']:4d} steps",
                    file=sys.stderr,
                    flush=True,
                )
        info = {
            "startup_s": startup,
            "device": info0.get("device"),
            "dtype": info0.get("dtype"),
            "max_total_tokens": info0.get("max_total_tokens"),
            "context_length": info0.get("context_length"),
            "architecture": info0.get("architecture"),
            "grammar_cache_misses_warmup": compiled.get("grammar_cache_misses"),
            "grammar_compile_time_s": compiled.get("grammar_compile_time_s"),
        }
        final = engine.get_server_info()
        info["grammar_cache_hits"] = final.get("grammar_cache_hits")
        info["grammar_cache_misses"] = final.get("grammar_cache_misses")
        info["grammar_failures"] = final.get("grammar_failures")
    finally:
        engine.shutdown()
    return results, info


def run_decode_benchmark(args: argparse.Namespace) -> tuple[dict, dict]:
    """jump-forward on, then off (+ the unconstrained baseline). Results by mode."""
    on, info_on = run_engine(args, True, args.modes)
    # the baseline's length: the mean constrained output length of each mode (identical on/off when all
    # is well)
    baseline_tokens = {m: max(1, round(on[m]["mean_output_tokens"])) for m in args.modes}
    off, info_off = run_engine(args, False, args.modes, baseline_tokens)
    results: dict[str, dict] = {}
    for mode in args.modes:
        r_on, r_off = on[mode], off[mode]
        results[mode] = {
            "jf_on": r_on,
            "jf_off": r_off,
            "unconstrained": off[mode + ":unconstrained"],
            "identical_on_off": r_on["_output_ids"] == r_off["_output_ids"],
            "requests_differing_on_off": sum(
                a != b for a, b in zip(r_on["_output_ids"], r_off["_output_ids"])
            ),
            "speedup_jf": r_off["wall_s"] / r_on["wall_s"] if r_on["wall_s"] > 0 else None,
            "decode_steps_saved": r_off["decode_steps"] - r_on["decode_steps"],
            "constrained_vs_unconstrained_tok_s": (
                r_off["output_tokens_per_s"] / off[mode + ":unconstrained"]["output_tokens_per_s"]
                if off[mode + ":unconstrained"]["output_tokens_per_s"]
                else None
            ),
        }
    for mode_results in results.values():
        for key in ("jf_on", "jf_off", "unconstrained"):
            mode_results[key].pop("_output_ids", None)
    return results, {"jf_on": info_on, "jf_off": info_off}


# ---------------------------------------------------------------------- mask micro-benchmark
def _mask_setup(model: str) -> tuple[Any, dict, int, list[int]]:
    from radixlm.runtime.config import ModelConfig
    from radixlm.runtime.constrained.grammar_cache import GrammarCache
    from radixlm.runtime.constrained.json_schema import normalize_json_schema
    from radixlm.runtime.constrained.vocabulary import TokenizerVocab
    from radixlm.runtime.tokenizer import load_tokenizer

    model_cfg = ModelConfig.from_path(model)
    tokenizer = load_tokenizer(model)
    eos = set(model_cfg.eos_token_ids)
    if tokenizer.eos_token_id is not None:
        eos.add(tokenizer.eos_token_id)
    vocab = TokenizerVocab(tokenizer, model_cfg.vocab_size, sorted(eos))
    cache = GrammarCache(vocab, backend="outlines")
    try:
        compiled = {
            name: cache.get(("json", normalize_json_schema(schema))).result()
            for name, schema in SCHEMAS.items()
        }
    finally:
        cache.shutdown()
    return vocab, compiled, model_cfg.vocab_size, sorted(eos)


def _sample_paths(vocab: Any, compiled: dict) -> list[tuple[str, list[int]]]:
    """(schema name, automaton states before each token) of every sample output."""
    from radixlm.runtime.constrained.grammar import Grammar

    paths = []
    for name, samples in SAMPLE_OUTPUTS.items():
        for sample in samples:
            err = _validate(json.dumps(sample), SCHEMAS[name])
            assert err is None, err
            grammar = Grammar(compiled[name])
            states = []
            for t in vocab.encode(json.dumps(sample)):
                states.append(grammar.state)
                if not grammar.advance(t):
                    raise AssertionError(f"the {name} grammar refuses its own sample at token {t}")
            assert grammar.is_complete, f"the {name} sample does not complete its grammar"
            paths.append((name, states))
    return paths


def _time_masks(
    rows: list[tuple[Any, list[int]]], stop_ids: list[int], vocab_size: int, device: torch.device, steps: int
) -> float:
    """Mean seconds per build_vocab_mask call over `steps` steps; row j at step t sits at
    position (t + offset_j) of its path."""
    from radixlm.runtime.constrained.grammar import Grammar, build_vocab_mask

    grammars = [Grammar(c) for c, _ in rows]
    offsets = [(j * 7) % len(path) for j, (_, path) in enumerate(rows)]
    stops = [stop_ids] * len(rows)
    cuda = device.type == "cuda"
    total = 0.0
    for t in range(steps):
        for g, (_, path), off in zip(grammars, rows, offsets):
            g.state = path[(t + off) % len(path)]
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        mask = build_vocab_mask(grammars, stops, vocab_size, device)
        if cuda:
            torch.cuda.synchronize(device)
        total += time.perf_counter() - t0
        assert mask is not None
    return total / steps


def run_mask_benchmark(args: argparse.Namespace, devices: list[str]) -> dict:
    from radixlm.runtime.constrained.grammar import CompiledGrammar

    vocab, compiled, vocab_size, eos = _mask_setup(args.model)
    paths = _sample_paths(vocab, compiled)
    cycle = max(len(p) for _, p in paths)
    results = []
    for dev_name in devices:
        device = torch.device(dev_name)
        for batch in MASK_BATCHES:
            # first pass: fresh per-state caches (the same automata), one cycle over the samples
            fresh = {name: CompiledGrammar(c.key, c.regex, c.index, c.vocab) for name, c in compiled.items()}
            rows_fresh = [(fresh[paths[j % len(paths)][0]], paths[j % len(paths)][1]) for j in range(batch)]
            first = _time_masks(rows_fresh, eos, vocab_size, device, cycle)
            # warm: the same grammars again, their per-state results cached
            rows = [(fresh[paths[j % len(paths)][0]], paths[j % len(paths)][1]) for j in range(batch)]
            _time_masks(rows, eos, vocab_size, device, cycle)
            runs = [_time_masks(rows, eos, vocab_size, device, args.mask_steps) for _ in range(args.repeats)]
            warm = statistics.median(runs)
            results.append(
                {
                    "device": dev_name,
                    "batch": batch,
                    "steps": args.mask_steps,
                    "repeats": args.repeats,
                    "warm_us_per_step": warm * 1e6,
                    "warm_us_per_row": warm * 1e6 / batch,
                    "warm_us_per_step_all": [round(r * 1e6, 2) for r in runs],
                    "first_pass_us_per_step": first * 1e6,
                    "first_pass_steps": cycle,
                }
            )
            print(
                f"[mask] {dev_name:<5} batch {batch:3d}: {warm * 1e6:9.1f} us/step warm, "
                f"{first * 1e6:9.1f} us/step first pass",
                file=sys.stderr,
                flush=True,
            )
    lengths = [len(p) for _, p in paths]
    allowed = [len(compiled[name].allowed(s)) for name, p in paths for s in p]
    return {
        "vocab_size": vocab_size,
        "sample_tokens": lengths,
        "mean_allowed_tokens_per_state": statistics.mean(allowed),
        "median_allowed_tokens_per_state": statistics.median(allowed),
        "results": results,
    }


# ---------------------------------------------------------------------- reporting
def _table(head: list[str], rows: list[list[str]], left: int) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
            )
            + " |"
        )

    sep = (
        "|" + "|".join("-" * (w + 2) if i < left else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    )
    return "\n".join([line(head), sep, *(line(r) for r in rows)])


def format_decode_table(results: dict) -> str:
    head = [
        "mode",
        "config",
        "wall s",
        "1st run s",
        "out tok",
        "out tok/s",
        "decode steps",
        "ms/step",
        "tok/step",
        "JF tok",
        "JF %",
        "valid",
        "identical on/off",
        "speedup",
    ]
    rows = []
    for mode, r in results.items():
        for config in ("jf_on", "jf_off", "unconstrained"):
            c = r[config]
            label = {
                "jf_on": "jump-forward on",
                "jf_off": "jump-forward off",
                "unconstrained": f"unconstrained ({c.get('max_new_tokens')} max)",
            }[config]
            constrained = config != "unconstrained"
            rows.append(
                [
                    mode,
                    label,
                    f"{c['wall_s']:.2f}",
                    f"{c['first_run_wall_s']:.2f}",
                    str(c["output_tokens"]),
                    f"{c['output_tokens_per_s']:.1f}",
                    str(c["decode_steps"]),
                    f"{1000 * c['wall_s'] / c['decode_steps']:.2f}" if c["decode_steps"] else "-",
                    f"{c['output_tokens'] / c['decode_steps']:.2f}" if c["decode_steps"] else "-",
                    str(c["jump_forward_tokens"]) if constrained else "-",
                    f"{c['jump_forward_fraction']:.1%}" if constrained else "-",
                    f"{c['valid']}/{c['num_requests']}" if constrained else "-",
                    ("yes" if r["identical_on_off"] else f"NO ({r['requests_differing_on_off']} differ)")
                    if config == "jf_on"
                    else "",
                    f"{r['speedup_jf']:.2f}x" if config == "jf_on" and r["speedup_jf"] else "",
                ]
            )
    return _table(head, rows, 2)


def format_mask_table(mask: dict) -> str:
    head = ["device", "batch", "warm us/step", "warm us/row", "first-pass us/step"]
    rows = [
        [
            m["device"],
            str(m["batch"]),
            f"{m['warm_us_per_step']:.1f}",
            f"{m['warm_us_per_row']:.1f}",
            f"{m['first_pass_us_per_step']:.1f}",
        ]
        for m in mask["results"]
    ]
    return _table(head, rows, 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=None, help="local HF model folder (default: the offline tiny model)"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="runtime device")
    parser.add_argument(
        "--grammar-backend",
        default="outlines",
        choices=["auto", "outlines", "llguidance"],
        help="the engine's grammar backend (default outlines: this benchmark measures its automaton "
        "and masks; llguidance's costs are benchmarks/bench_grammar_backends.py)",
    )
    parser.add_argument(
        "--dtype", default=None, help="the engine's dtype (default: its own, bf16 on CUDA); float32: exact"
    )
    parser.add_argument("--num-requests", type=int, default=32, help="requests per batch (default 32)")
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=256,
        help="max new tokens per constrained request (default 256: every bounded object fits)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed runs per configuration and mode; the median is reported (default 3)",
    )
    parser.add_argument("--modes", default="greedy,temperature", help="comma list of greedy, temperature")
    parser.add_argument("--mask-steps", type=int, default=200, help="steps per mask timing (default 200)")
    parser.add_argument("--skip-mask", action="store_true", help="skip the mask micro-benchmark")
    parser.add_argument("--json", metavar="OUT", default=None, help="write the results as JSON to OUT")
    args = parser.parse_args(argv)
    if min(args.num_requests, args.max_tokens, args.repeats, args.mask_steps) < 1:
        parser.error("--num-requests, --max-tokens, --repeats and --mask-steps must be >= 1")
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown or not args.modes:
        parser.error(f"--modes: choose from {', '.join(MODES)}")
    if args.model is None:
        from radixlm.testing import default_model_path

        args.model = str(default_model_path())
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.grammar_backend != "outlines":
        SCHEMAS.update({name: with_standard_bounds(schema) for name, schema in SCHEMAS.items()})
    command, date, load_before = command_line(argv), utc_now(), load_before_run()
    t0 = time.perf_counter()
    results, engines = run_decode_benchmark(args)
    runtime_device = str(engines["jf_on"].get("device") or args.device)
    mask = None
    if not args.skip_mask:
        devices = ["cpu"] + (["cuda"] if runtime_device.startswith("cuda") else [])
        mask = run_mask_benchmark(args, devices)
    total = time.perf_counter() - t0

    machine = machine_info(runtime_device)
    machine["loadavg_before"], machine["loadavg_after"] = load_before, loadavg()
    print(f"\nmodel: {args.model}")
    print(
        f"device: {runtime_device} ({engines['jf_on'].get('dtype')}), {machine['device_name']}, "
        f"torch {machine['torch']}"
    )
    print(
        f"{args.num_requests} requests (character/city schemas alternating), "
        f"max_new_tokens {args.max_tokens}, "
        f"median of {args.repeats} timed run(s), total {total:.1f}s; "
        f"grammar compile {engines['jf_on'].get('grammar_compile_time_s')}s (2 schemas, in warm-up)\n"
    )
    print(format_decode_table(results))
    print(
        "\nwall s: median of the timed runs (steady state: prompts cached, grammar caches warm); "
        "1st run s: the untimed first run of the batch; ms/step: wall s / decode steps; JF = jump-forward "
        "tokens (drafted from the grammar's forced text and kept); speedup = wall time off / on; "
        "unconstrained = same prompts, no schema, max_new_tokens = mean constrained length."
    )
    if mask is not None:
        print(
            f"\nbuild_vocab_mask, vocab {mask['vocab_size']}, grammars walking sample outputs "
            f"({mask['mean_allowed_tokens_per_state']:.0f} allowed tokens per state on average):\n"
        )
        print(format_mask_table(mask))

    problems = []
    for mode, r in results.items():
        if not r["identical_on_off"]:
            problems.append(
                f"{mode}: {r['requests_differing_on_off']} output(s) differ with jump-forward on/off"
            )
        for config in ("jf_on", "jf_off"):
            c = r[config]
            if c["invalid"]:
                problems.append(f"{mode}/{config}: {c['invalid']} invalid output(s): {c['first_invalid']}")
            if not c["identical_across_repeats"]:
                problems.append(f"{mode}/{config}: outputs differ between repeats")
    for p in problems:
        print(f"WARNING: {p}", file=sys.stderr)

    if args.json:
        payload = {
            "command": command,
            "argv": sys.argv if argv is None else [sys.argv[0], *argv],
            "date": date,
            "git_commit": git_commit(),
            "git_dirty": git_dirty(),
            "machine": machine,
            "engines": engines,
            "settings": {
                "model": args.model,
                "device": args.device,
                "num_requests": args.num_requests,
                "max_tokens": args.max_tokens,
                "repeats": args.repeats,
                "modes": args.modes,
                "mode_params": {m: MODES[m] for m in args.modes},
                "seed_base": SEED_BASE,
                "warmup_requests": WARMUP_REQUESTS,
                "mask_steps": args.mask_steps,
            },
            "schemas": SCHEMAS,
            "total_s": total,
            "results": results,
            "mask": mask,
            "problems": problems,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
