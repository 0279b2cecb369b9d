"""Benchmark the grammar backends (outlines-core, llguidance) over the JSON-schema corpus.

    python benchmarks/bench_grammar_backends.py --vocab tiny                      # quick
    python benchmarks/bench_grammar_backends.py --out benchmarks/results/grammar-backends.json

No model runs: only the grammar layer (runtime/constrained/), on two vocabularies:
- tiny: the offline tiny model's tokenizer (8192 tokens, byte-level BPE);
- large: a Llama-3-sized byte-level BPE built offline (128,000 tokens). It is trained with
  `tokenizers` (Llama 3's pre-tokenizer regex) on the pydoc topics and every `.py` file of
  the standard library, which reaches only about 98k tokens (the count depends on the
  Python version); the rest are longer words made by concatenating two trained tokens (a
  word-start token, with or without its leading space, and a lowercase-letters one; at most
  16 bytes; seeded), appended with a merge each, up to 128,000. It is cached under
  `radixlm.testing.cache_root()`. (An earlier build concatenated any two tokens, punctuation
  included: on that vocabulary llguidance hit its Earley item limit on one schema, see
  `walk_odd` below.)

Measured, over `tests/json_schema_corpus.py` (each schema normalised as a request's is):
1. acceptance: `check_constraint` per backend setting (outlines, llguidance, auto): accepted,
   refused (reasons grouped by their first 80 characters), per corpus kind;
2. compile time: `GrammarCache._compile` per accepted schema (one cache per vocabulary and
   backend, its `_compile` called directly: nothing is cached across schemas but the
   per-vocabulary tokenizer tables, as in the engine). outlines-core on the large vocabulary
   takes seconds per schema: --max-schemas-large of them, evenly spaced over the accepted
   ones, within --budget-s per vocabulary and backend. outlines-core compiles in a forked
   worker, abandoned after --compile-timeout-s (some schemas take minutes even on the tiny
   vocabulary). A schema that passes `check_constraint` and then fails to compile or times
   out is listed, and the exit status is 1. For vocabularies where both backends ran, the
   compile times over the schemas both compiled are also compared;
3. mask time per step: from each compiled schema one matcher walks one path (seeded: with
   probability 0.5 the allowed token of fewest bytes, else a uniform allowed one) until it is
   complete, nothing is allowed, or --max-steps. Only `matcher.mask_row(cpu)` is timed, and
   `draft()` separately. outlines' first visit of a state (cold: it asks the automaton and
   builds the row) is reported apart from a replay of the same tokens (every row cached);
   llguidance computes every mask. A walk that ends other than complete or at --max-steps
   (no token allowed in a non-final state, or an allowed token refused) is listed;
4. `build_vocab_mask` over --batch-rows matchers of different schemas (the first compiled
   ones, each replaying its walk), per step.
Timings are CPU wall times of this process; the load average is recorded before and after.
torch runs with --threads intra-op threads (default 1): a [128k] mask unpack is large enough
for torch to go parallel, and on a busy machine two OpenMP threads made it 100x slower
(~24 ms instead of ~0.2 ms per row) while waiting on a descheduled thread.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch
from json_schema_corpus import load_corpus
from run_info import command_line, git_commit, git_dirty, load_before_run, loadavg, machine_info, utc_now

from radixlm.runtime.constrained.backend import Constraint, check_constraint, choose_backend
from radixlm.runtime.constrained.grammar import CompiledGrammar, build_vocab_mask
from radixlm.runtime.constrained.grammar_cache import GrammarCache
from radixlm.runtime.constrained.json_schema import normalize_json_schema
from radixlm.runtime.constrained.llguidance_backend import llguidance_tokenizer
from radixlm.runtime.constrained.vocabulary import TokenizerVocab

CPU = torch.device("cpu")
SETTINGS = ("outlines", "llguidance", "auto")
LARGE_VOCAB = 128_000
LARGE_VERSION = "2"  # bump to rebuild the cached large tokenizer
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


# ---------------------------------------------------------------------- vocabularies
def _stdlib_text() -> list[str]:
    import sysconfig
    from pydoc_data import topics

    texts = list(topics.topics.values())
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        if "site-packages" not in path.parts:
            try:
                texts.append(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, OSError):
                continue
    return texts


def large_tokenizer_dir() -> Path:
    """Build (once) the 128k-token byte-level BPE; the folder holding its tokenizer.json."""
    from radixlm.testing import _atomic_build, cache_root

    def build(out: Path) -> None:
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        split = pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated")
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        trainer = trainers.BpeTrainer(vocab_size=LARGE_VOCAB, min_frequency=2, special_tokens=SPECIAL_TOKENS)
        trainer.initial_alphabet, trainer.show_progress = alphabet, False
        tok.train_from_iterator(_stdlib_text(), trainer=trainer)
        cfg = json.loads(tok.to_str())
        vocab, merges = cfg["model"]["vocab"], cfg["model"]["merges"]
        trained = len(vocab)
        # the text ran out of merges: longer words, a word-start token and a letters-only one
        heads = [t for t in vocab if re.fullmatch("\u0120?[A-Za-z]+", t)]  # \u0120: a space
        tails = [t for t in vocab if re.fullmatch("[a-z]+", t)]
        rng = random.Random(0)
        while len(vocab) < LARGE_VOCAB:
            a, b = rng.choice(heads), rng.choice(tails)
            if len(a) + len(b) <= 16 and a + b not in vocab:  # byte-level: one char per byte
                vocab[a + b] = len(vocab)
                merges.append([a, b] if isinstance(merges[0], list) else f"{a} {b}")
        (out / "tokenizer.json").write_text(json.dumps(cfg, ensure_ascii=False))
        (out / "build.json").write_text(json.dumps({"trained_tokens": trained, "total": len(vocab)}))

    key = f"tokenizer-large-{LARGE_VOCAB}-v{LARGE_VERSION}-py{sys.version_info[0]}{sys.version_info[1]}"
    return _atomic_build(cache_root() / key, build)


def load_vocab(name: str) -> tuple[TokenizerVocab, dict]:
    """The vocabulary `name` (tiny | large) and what setting it up cost."""
    t0 = time.perf_counter()
    if name == "tiny":
        from radixlm.runtime.tokenizer import load_tokenizer
        from radixlm.testing import build_tiny_model

        tok = load_tokenizer(build_tiny_model("llama"))
        info: dict[str, Any] = {"tokenizer": "tiny llama (radixlm.testing)"}
    else:
        from transformers import PreTrainedTokenizerFast

        folder = large_tokenizer_dir()
        specials = {"additional_special_tokens": ["<|endoftext|>", "<|im_start|>"], "pad_token": "<|pad|>"}
        tok = PreTrainedTokenizerFast(
            tokenizer_file=str(folder / "tokenizer.json"), eos_token="<|im_end|>", **specials
        )
        info = {"tokenizer": str(folder), **json.loads((folder / "build.json").read_text())}
    t1 = time.perf_counter()
    vocab = TokenizerVocab(tok, len(tok), [tok.eos_token_id])
    t2 = time.perf_counter()
    llguidance_tokenizer(vocab)
    t3 = time.perf_counter()
    info.update(vocab_size=vocab.vocab_size, tokenizer_load_s=t1 - t0, tokenizer_vocab_s=t2 - t1)
    info["llguidance_tokenizer_s"] = t3 - t2
    return vocab, info


# ---------------------------------------------------------------------- acceptance
def corpus_constraints() -> list[dict]:
    out = []
    for entry in load_corpus():
        item = {"name": entry["name"], "kind": entry["kind"], "constraint": None, "error": None}
        try:
            item["constraint"] = Constraint("json", normalize_json_schema(entry["schema"]))
        except (ValueError, TypeError) as exc:
            item["error"] = str(exc)
        out.append(item)
    return out


_UNSUPPORTED = "unsupported json_schema feature(s), which the output could not be held to: "


def _reason(why: str) -> str:
    """A refusal's group: the first 80 characters, without the shared preamble or JSON pointers."""
    why = re.sub(r" at /[^,]*", "", " ".join(why.replace(_UNSUPPORTED, "unsupported: ").split()))
    if why.startswith("unsupported: "):  # outlines: "minimum at /a, minimum at /b" -> "minimum"
        why = "unsupported: " + ", ".join(dict.fromkeys(why[13:].split(", ")))
    return why[:80]


def acceptance(items: list[dict]) -> dict[str, dict]:
    """Per setting: accepted names, refusal reasons grouped, counts per kind (and auto's picks)."""
    out = {}
    for setting in SETTINGS:
        accepted, reasons, per_kind, picks, crashes = [], Counter(), {}, Counter(), []
        for it in items:
            ok, why = it["constraint"] is not None, it["error"]
            if ok:
                try:
                    check_constraint(it["constraint"], setting, None)
                except (ValueError, TypeError) as exc:
                    ok, why = False, str(exc)
                except Exception as exc:  # not a refusal: a crash in the checker
                    ok, why = False, f"CRASH {type(exc).__name__}: {exc}"
                    crashes.append(f"{it['name']}: {why[:200]}")
            kind = per_kind.setdefault(it["kind"], {"accepted": 0, "total": 0})
            kind["total"] += 1
            if ok:
                kind["accepted"] += 1
                accepted.append(it["name"])
                picks[choose_backend(setting, it["constraint"])] += 1
            else:
                reasons[_reason(why)] += 1
        out[setting] = dict(accepted=len(accepted), refused=len(items) - len(accepted))
        out[setting].update(
            accepted_names=accepted, refusal_reasons=dict(reasons.most_common()), per_kind=per_kind
        )
        out[setting].update(backend_picked=dict(picks), checker_crashes=crashes)
    return out


# ---------------------------------------------------------------------- compile and walk
def summary(values: list[float], scale: float = 1.0) -> dict | None:
    """n, mean and nearest-rank p50/p90/p99/max of `values` times `scale`."""
    if not values:
        return None
    s = sorted(v * scale for v in values)
    rank = lambda q: s[max(0, math.ceil(q * len(s)) - 1)]
    return dict(n=len(s), mean=sum(s) / len(s), p50=rank(0.5), p90=rank(0.9), p99=rank(0.99), max=s[-1])


def token_lengths(vocab: TokenizerVocab) -> torch.Tensor:
    lengths = torch.full((vocab.vocab_size,), 1 << 20, dtype=torch.int64)
    for t, raw in vocab.token_bytes.items():
        if t < vocab.vocab_size and raw:
            lengths[t] = len(raw)
    return lengths


def walk(compiled: Any, backend: str, lengths: torch.Tensor, rng: random.Random, max_steps: int) -> dict:
    """One seeded path through a compiled schema, timing mask_row and draft per step."""
    m = compiled.new_matcher(None, None)
    mask_s, cold, draft_s, tokens, allowed_counts = [], [], [], [], []
    end, detail = "max-steps", ""
    for _ in range(max_steps):
        if m.is_complete:
            end = "complete"
            break
        if backend == "outlines":
            cold.append((m.state, str(CPU)) not in compiled._mask_rows)
        t0 = time.perf_counter()
        row = m.mask_row(CPU)
        t1 = time.perf_counter()
        m.draft()
        t2 = time.perf_counter()
        mask_s.append(t1 - t0)
        draft_s.append(t2 - t1)
        allowed = (~row).nonzero().flatten()
        allowed_counts.append(allowed.numel())
        if allowed.numel() == 0:
            end = "final, nothing allowed" if m.is_final else "dead end"
            if backend == "llguidance" and m.matcher.is_error():  # its mask came back all banned
                detail = m.matcher.get_error().splitlines()[0][:200]
            break
        shortest = rng.random() < 0.5
        token = int(allowed[lengths[allowed].argmin()] if shortest else allowed[rng.randrange(len(allowed))])
        if not m.advance(token):
            end, detail = "allowed token rejected", f"token {token}"
            break
        tokens.append(token)
    out = dict(end=end, detail=detail, tokens=tokens, mask_s=mask_s, draft_s=draft_s, allowed=allowed_counts)
    if backend == "outlines":  # first visits vs a replay of the same tokens (rows cached)
        out["cold"] = cold
        replay, m = [], compiled.new_matcher(None, None)
        for token in tokens:
            t0 = time.perf_counter()
            m.mask_row(CPU)
            replay.append(time.perf_counter() - t0)
            m.advance(token)
        out["replay_s"] = replay
    return out


def time_batch(kept: list[tuple[Any, list[int]]], vocab: TokenizerVocab, rows: int, steps: int) -> dict:
    """build_vocab_mask over `rows` matchers (the kept schemas, cycled), each replaying its walk."""
    paths = [kept[i % len(kept)] for i in range(rows)]
    matchers = [c.new_matcher(None, None) for c, _ in paths]
    pos = [i % max(1, len(p)) for i, (_, p) in enumerate(paths)]  # staggered starts
    for m, (_, p), k in zip(matchers, paths, pos):
        for token in p[:k]:
            m.advance(token)
    stop = [[vocab.anchor_eos]] * rows
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        build_vocab_mask(matchers, stop, vocab.vocab_size, CPU)
        times.append(time.perf_counter() - t0)
        for i, (compiled, p) in enumerate(paths):
            if pos[i] < len(p):
                matchers[i].advance(p[pos[i]])
                pos[i] += 1
            else:  # path done: start it again (untimed)
                matchers[i], pos[i] = compiled.new_matcher(None, None), 0
    return {"rows": rows, "distinct_schemas": len(kept), "steps": steps, "us_per_step": summary(times, 1e6)}


class Compiler:
    """`GrammarCache._compile` for one backend and vocabulary, timed. outlines-core compiles in a
    forked worker (its Index comes back pickled; unpickling is not timed) so that a schema it
    cannot build within --compile-timeout-s is abandoned (the worker killed) and listed."""

    def __init__(self, vocab: TokenizerVocab, backend: str, timeout_s: float) -> None:
        global _WORKER_CACHE
        self.backend, self.timeout_s, self.vocab = backend, timeout_s, vocab
        self.cache = _WORKER_CACHE = GrammarCache(vocab, backend=backend)
        self.pool = None

    def __call__(self, constraint: Constraint) -> tuple[float, Any, str | None]:
        """(seconds, compiled or None, error or None); error "timeout" past the timeout."""
        if self.backend != "outlines":
            return _compile_here(constraint, self.backend)
        if self.pool is None:
            self.pool = mp.get_context("fork").Pool(1)
        job = self.pool.apply_async(_compile_here, (constraint, "outlines", True))
        try:
            seconds, found, error = job.get(self.timeout_s)
        except mp.TimeoutError:
            self.close()
            return self.timeout_s, None, "timeout"
        if found is None:
            return seconds, None, error
        return seconds, CompiledGrammar(constraint, found[0], found[1], self.vocab), None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
        self.pool = None


_WORKER_CACHE: GrammarCache | None = None  # the Compiler's cache, inherited by its forked worker


def _compile_here(constraint: Constraint, backend: str, ship: bool = False) -> tuple[float, Any, str | None]:
    t0 = time.perf_counter()
    try:
        compiled = _WORKER_CACHE._compile((backend, constraint))
    except Exception as exc:  # accepted by check_constraint, then failed: a runtime bug
        return time.perf_counter() - t0, None, f"{type(exc).__name__}: {str(exc)[:300]}"
    seconds = time.perf_counter() - t0
    return seconds, (compiled.regex, compiled.index) if ship else compiled, None


def run_backend(vocab: TokenizerVocab, vname: str, backend: str, items: list[dict], args) -> dict:
    sampled = vname == "large" and backend == "outlines" and len(items) > args.max_schemas_large
    if sampled:  # evenly spaced over the accepted ones
        n = args.max_schemas_large
        items = [items[(i * len(items)) // n] for i in range(n)]
    compiler = Compiler(vocab, backend, args.compile_timeout_s)
    lengths = token_lengths(vocab)
    compile_s, failures, timeouts, walks, kept = {}, [], [], {}, []
    start, skipped = time.perf_counter(), 0
    for i, it in enumerate(items):
        if time.perf_counter() - start > args.budget_s:
            skipped = len(items) - i
            break
        seconds, compiled, error = compiler(it["constraint"])
        if args.verbose:
            print(f"  {vname}/{backend} {i + 1}/{len(items)} {it['name']}: {seconds:.3f}s {error or ''}")
        if error == "timeout":
            timeouts.append(it["name"])
            continue
        if error is not None:
            failures.append({"name": it["name"], "error": error})
            continue
        compile_s[it["name"]] = seconds
        rng = random.Random(f"{args.seed}:{it['name']}")
        w = walks[it["name"]] = walk(compiled, backend, lengths, rng, args.max_steps)
        if len(kept) < args.batch_rows and w["tokens"]:
            kept.append((compiled, w["tokens"]))
        del compiled
    compiler.close()
    ws = list(walks.values())
    mask = [t for w in ws for t in w["mask_s"]]
    out: dict[str, Any] = dict(schemas=len(items), sampled=sampled, measured=len(compile_s))
    out.update(skipped_for_budget=skipped, compile_failures=failures, compile_timeouts=timeouts)
    out["compile_ms"] = summary(list(compile_s.values()), 1e3)
    out["compile_s_per_schema"] = {k: round(v, 6) for k, v in compile_s.items()}
    out["walk_ends"] = dict(Counter(w["end"] for w in ws))
    odd = {n: w for n, w in walks.items() if w["end"] not in ("complete", "max-steps")}
    out["walk_odd"] = {n: f"{w['end']} after {len(w['tokens'])} tokens {w['detail']}" for n, w in odd.items()}
    out["steps"], out["mask_us"] = len(mask), summary(mask, 1e6)
    out["mean_allowed_per_step"] = sum(a for w in ws for a in w["allowed"]) / max(1, len(mask))
    out["draft_us"] = summary([t for w in ws for t in w["draft_s"]], 1e6)
    if backend == "outlines":
        pairs = [(t, c) for w in ws for t, c in zip(w["mask_s"], w["cold"])]
        out["mask_cold_us"] = summary([t for t, c in pairs if c], 1e6)
        out["mask_first_walk_cached_us"] = summary([t for t, c in pairs if not c], 1e6)
        out["mask_repeat_us"] = summary([t for w in ws for t in w["replay_s"]], 1e6)
    out["batch_mask"] = time_batch(kept, vocab, args.batch_rows, args.batch_steps) if kept else None
    return out


# ---------------------------------------------------------------------- report
def _table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    cell = lambda i, c, w: c.rjust(w) if i else c.ljust(w)
    line = lambda cells: (
        "| " + " | ".join(cell(i, c, w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    )
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _pq(s: dict | None, fmt: str = "{:.0f}") -> str:
    return "-" if s is None else f"{fmt.format(s['p50'])} / {fmt.format(s['p99'])}"


def print_report(acc: dict, results: dict, batch_rows: int) -> None:
    kinds = list(acc["auto"]["per_kind"])
    rows = [
        [s, str(a["accepted"]), str(a["refused"])]
        + [f"{a['per_kind'][k]['accepted']}/{a['per_kind'][k]['total']}" for k in kinds]
        for s, a in acc.items()
    ]
    print(_table(["setting", "accepted", "refused", *kinds], rows))
    print(f"auto picks: {acc['auto']['backend_picked']}")
    for s, a in acc.items():
        print(f"\n{s} refusals (top 6 of {len(a['refusal_reasons'])} groups):")
        for reason, n in list(a["refusal_reasons"].items())[:6]:
            print(f"  {n:4d}  {reason}")
    rows = []
    for vname, v in results.items():
        for b, r in v["backends"].items():
            cm, batch = r["compile_ms"], (r["batch_mask"] or {}).get("us_per_step")
            rows.append([f"{vname} ({v['setup']['vocab_size']})", b])
            rows[-1].append(f"{r['measured']}/{r['schemas']}" + (" sample" if r["sampled"] else ""))
            rows[-1].append(f"{len(r['compile_failures'])}/{len(r['compile_timeouts'])}")
            rows[-1] += [_pq(cm, "{:.1f}"), f"{cm['max']:.0f}" if cm else "-", str(r["steps"])]
            rows[-1] += [
                _pq(r[k]) if r.get(k) else "-" for k in ("mask_us", "mask_cold_us", "mask_repeat_us")
            ]
            rows[-1] += [_pq(r["draft_us"]), _pq(batch)]
    head = ["vocab", "backend", "compiled", "fail/timeout", "compile ms p50/p99", "max ms", "steps"]
    head += ["mask us p50/p99", "cold", "repeat", "draft us", f"batch{batch_rows} us"]
    print("\n" + _table(head, rows))
    for vname, v in results.items():
        if v.get("common_compile_ms") and v["common_compile_ms"]["outlines"]:
            common = ", ".join(f"{b} {_pq(c, '{:.1f}')} ms" for b, c in v["common_compile_ms"].items())
            n = v["common_compile_ms"]["outlines"]["n"]
            print(f"{vname}: compile p50/p99 over the {n} schemas both backends compiled: {common}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", default="tiny,large", help="comma list of tiny, large")
    p.add_argument("--backends", default="outlines,llguidance", help="comma list of outlines, llguidance")
    p.add_argument("--max-schemas-large", type=int, default=40, help="outlines schemas on the large vocab")
    p.add_argument("--budget-s", type=float, default=900.0, help="compile+walk time per vocab and backend")
    p.add_argument("--compile-timeout-s", type=float, default=30.0, help="outlines: abandon a schema after")
    p.add_argument("--max-steps", type=int, default=64, help="steps per walk (default 64)")
    p.add_argument("--batch-rows", type=int, default=64, help="build_vocab_mask rows (0: skip)")
    p.add_argument("--batch-steps", type=int, default=32, help="build_vocab_mask steps timed")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per compiled schema")
    args = p.parse_args(argv)
    args.vocab = [v for v in args.vocab.split(",") if v]
    args.backends = [b for b in args.backends.split(",") if b]
    if not set(args.vocab) <= {"tiny", "large"} or not set(args.backends) <= {"outlines", "llguidance"}:
        p.error("--vocab: tiny, large; --backends: outlines, llguidance")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command, date, load_before = command_line(argv), utc_now(), load_before_run()
    t_start = time.perf_counter()
    items = corpus_constraints()
    acc = acceptance(items)
    by_name = {it["name"]: it for it in items}
    results: dict[str, Any] = {}
    for vname in args.vocab:
        vocab, setup = load_vocab(vname)
        print(f"[{vname}] vocab {vocab.vocab_size}: {setup}", file=sys.stderr, flush=True)
        results[vname] = {"setup": setup, "backends": {}}
        for b in args.backends:
            t0 = time.perf_counter()
            accepted = [by_name[n] for n in acc[b]["accepted_names"]]
            r = run_backend(vocab, vname, b, accepted, args)
            r["wall_s"] = time.perf_counter() - t0
            results[vname]["backends"][b] = r
            print(f"[{vname}/{b}] {r['measured']} measured, {r['wall_s']:.1f}s", file=sys.stderr, flush=True)
        per = {b: r["compile_s_per_schema"] for b, r in results[vname]["backends"].items()}
        if len(per) == 2:  # the schemas both backends compiled
            common = set.intersection(*(set(d) for d in per.values()))
            results[vname]["common_compile_ms"] = {
                b: summary([d[n] for n in common], 1e3) for b, d in per.items()
            }
        del vocab
    total = time.perf_counter() - t_start
    machine = machine_info("cpu")
    machine["loadavg_before"], machine["loadavg_after"] = load_before, loadavg()
    print_report(acc, results, args.batch_rows)
    failures = []
    for v, r in results.items():
        for b, x in r["backends"].items():
            for f in x["compile_failures"]:
                failures.append(
                    f"{v}/{b}: {f['name']} passed check_constraint, then failed to compile: {f['error']}"
                )
            late = f"passed check_constraint, then did not compile within {args.compile_timeout_s:.0f}s"
            failures += [f"{v}/{b}: {n} {late}" for n in x["compile_timeouts"]]
            failures += [f"{v}/{b}: {n}: walk ended: {end}" for n, end in x["walk_odd"].items()]
    for f in failures:
        print(f"WARNING: {f[:240]}")
    print(f"\ntotal {total:.1f}s; load average before {load_before}, after {machine['loadavg_after']}")
    if args.out:
        payload = dict(command=command, date=date, git_commit=git_commit(), git_dirty=git_dirty())
        payload.update(machine=machine, settings={k: v for k, v in vars(args).items() if k != "out"})
        payload.update(corpus_size=len(items), total_s=total, problems=failures)
        payload.update(acceptance=acc, results=results)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
