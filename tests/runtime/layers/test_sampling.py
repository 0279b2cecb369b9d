"""Sampling: the batched sampler on hand-made logits (greedy, top-k / top-p / min-p, penalties,
the min_new_tokens mask, seeded reproducibility, the sampled distribution), then the
Engine's sampling options end to end (seeds, n, stop strings and ids, min_new_tokens,
ignore_eos, max_new_tokens=0) and logprobs against Hugging Face."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from helpers import get_engine, hf_greedy, hf_logprobs

from radixlm.runtime.layers.sampling import SamplingBatch, SamplingParams, apply_penalties, sample

CPU = torch.device("cpu")


# ---------------------------------------------------------------------------- unit helpers
def build(params, seeds=None, prompts=None, outputs=None, stops=None, vocab=16) -> SamplingBatch:
    n = len(params)
    return SamplingBatch.build(
        params,
        seeds if seeds is not None else list(range(n)),
        prompts if prompts is not None else [[] for _ in range(n)],
        outputs if outputs is not None else [[] for _ in range(n)],
        stops if stops is not None else [[] for _ in range(n)],
        vocab,
        CPU,
    )


def draw(logits_row: torch.Tensor, params: SamplingParams, seeds, steps=None) -> list[int]:
    """One draw per seed from the same logits row (`steps[i]` output tokens already made)."""
    n = len(seeds)
    steps = steps if steps is not None else [0] * n
    sb = build([params] * n, seeds=list(seeds), outputs=[[4] * s for s in steps], vocab=logits_row.numel())
    return sample(logits_row.expand(n, -1).clone(), sb).tolist()


def logits_from_probs(probs: list[float], order: list[int] | None = None) -> torch.Tensor:
    """A logits row whose softmax is `probs`, placed at the positions `order` (a permutation)."""
    vals = torch.log(torch.tensor(probs, dtype=torch.float32))
    if order is None:
        return vals
    out = torch.empty_like(vals)
    out[torch.tensor(order)] = vals
    return out


# probabilities whose top-p / min-p sets are known; a permutation so the sort/scatter matters
PROBS = [0.40, 0.25, 0.15, 0.10, 0.05] + [0.05 / 11] * 11
PERM = [7, 2, 11, 0, 14, 1, 3, 4, 5, 6, 8, 9, 10, 12, 13, 15]  # rank r lives at index PERM[r]


# ---------------------------------------------------------------------------- greedy / filters
def test_greedy_is_argmax_even_next_to_sampling_rows():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 40, generator=gen)
    expected = logits.argmax(-1).tolist()
    greedy = SamplingParams(temperature=0.0)
    assert sample(logits.clone(), build([greedy] * 6, vocab=40)).tolist() == expected
    mixed = [
        greedy,
        SamplingParams(temperature=1.0),
        greedy,
        SamplingParams(temperature=0.7, top_k=3),
        greedy,
        SamplingParams(temperature=1.3, top_p=0.5),
    ]
    got = sample(logits.clone(), build(mixed, vocab=40)).tolist()
    for i in (0, 2, 4):
        assert got[i] == expected[i]


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0, top_k=1),
        SamplingParams(temperature=1.0, min_p=1.0),
        SamplingParams(temperature=1.0, top_p=1e-6),
        SamplingParams(temperature=2.0, top_p=0.01, top_k=5),
    ],
    ids=["top_k=1", "min_p=1", "tiny_top_p", "tiny_top_p+top_k"],
)
def test_degenerate_filters_give_argmax(params):
    gen = torch.Generator().manual_seed(1)
    row = torch.randn(30, generator=gen) * 0.3  # flat: without the filter, draws would vary
    got = draw(row, params, seeds=range(300))
    assert set(got) == {int(row.argmax())}


def test_top_k_never_leaves_the_top_k():
    gen = torch.Generator().manual_seed(2)
    row = torch.randn(50, generator=gen) * 0.5
    top5 = set(row.topk(5).indices.tolist())
    got = draw(row, SamplingParams(temperature=1.0, top_k=5), seeds=range(2000))
    assert set(got) <= top5
    assert len(set(got)) == 5  # flat logits: every one of the five shows up


@pytest.mark.parametrize("top_p, kept_ranks", [(0.3, 1), (0.6, 2), (0.7, 3), (0.85, 4), (0.93, 5)])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, kept_ranks):
    row = logits_from_probs(PROBS, PERM)
    got = draw(row, SamplingParams(temperature=1.0, top_p=top_p), seeds=range(3000))
    expected = {PERM[r] for r in range(kept_ranks)}
    assert set(got) == expected


@pytest.mark.parametrize("min_p, kept_ranks", [(0.3, 3), (0.5, 2), (0.2, 4), (0.9, 1)])
def test_min_p_drops_tokens_below_min_p_times_max(min_p, kept_ranks):
    # threshold min_p * 0.40: 0.3 -> 0.12 keeps {.40 .25 .15}; 0.5 -> 0.20 keeps {.40 .25};
    # 0.2 -> 0.08 keeps {.40 .25 .15 .10}; 0.9 -> 0.36 keeps {.40}
    row = logits_from_probs(PROBS, PERM)
    got = draw(row, SamplingParams(temperature=1.0, min_p=min_p), seeds=range(3000))
    assert set(got) == {PERM[r] for r in range(kept_ranks)}


# ---------------------------------------------------------------------------- penalties
def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([[2.0, -1.0, 3.0, -4.0, 0.5, 1.5, -0.5, 6.0]])
    # prompt has tokens 0 and 1, output has 3 and 4; 2, 5, 6, 7 unseen
    sb = build([SamplingParams(repetition_penalty=2.0)], prompts=[[0, 1]], outputs=[[3, 4, 4]], vocab=8)
    got = apply_penalties(logits.clone(), sb)
    expected = torch.tensor([[1.0, -2.0, 3.0, -8.0, 0.25, 1.5, -0.5, 6.0]])
    torch.testing.assert_close(got, expected)
    # penalties below 1 work the other way (rewarding repeats)
    sb = build([SamplingParams(repetition_penalty=0.5)], prompts=[[0, 1]], outputs=[[]], vocab=8)
    got = apply_penalties(logits.clone(), sb)
    torch.testing.assert_close(got[0, :2], torch.tensor([4.0, -0.5]))
    torch.testing.assert_close(got[0, 2:], logits[0, 2:])


def test_frequency_and_presence_penalties_count_output_tokens_only():
    logits = torch.zeros(1, 10)
    params = SamplingParams(frequency_penalty=0.5, presence_penalty=0.3)
    # token 1 is only in the prompt: untouched by frequency / presence
    sb = build([params], prompts=[[1, 1, 1]], outputs=[[5, 5, 5, 7, 2]], vocab=10)
    got = apply_penalties(logits.clone(), sb)[0]
    expected = torch.zeros(10)
    expected[5] = -(3 * 0.5 + 0.3)
    expected[7] = -(0.5 + 0.3)
    expected[2] = -(0.5 + 0.3)
    torch.testing.assert_close(got, expected)
    # negative penalties reward
    sb = build([SamplingParams(frequency_penalty=-1.0)], outputs=[[3, 3]], vocab=10)
    assert apply_penalties(torch.zeros(1, 10), sb)[0, 3].item() == pytest.approx(2.0)


def test_penalties_touch_only_their_own_rows():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 12, generator=gen)
    params = [
        SamplingParams(),
        SamplingParams(frequency_penalty=1.0, repetition_penalty=1.5),
        SamplingParams(),
    ]
    sb = build(params, prompts=[[1, 2], [3, 4], [5, 6]], outputs=[[7, 7], [8, 8], [9]], vocab=12)
    got = apply_penalties(logits.clone(), sb)
    torch.testing.assert_close(got[0], logits[0])
    torch.testing.assert_close(got[2], logits[2])
    row = logits[1].clone()
    for t in (3, 4, 8):
        row[t] = row[t] / 1.5 if row[t] > 0 else row[t] * 1.5
    row[8] -= 2.0
    torch.testing.assert_close(got[1], row)


def test_penalties_steer_greedy():
    logits = torch.tensor([[5.0, 4.0, 0.0, 0.0]])
    sb = build([SamplingParams(temperature=0.0, repetition_penalty=2.0)], prompts=[[0]], vocab=4)
    assert sample(logits.clone(), sb).tolist() == [1]  # 5 / 2 < 4
    sb = build([SamplingParams(temperature=0.0, presence_penalty=1.5)], outputs=[[0]], vocab=4)
    assert sample(logits.clone(), sb).tolist() == [1]  # 5 - 1.5 < 4


def test_min_new_tokens_masks_stop_ids_until_reached():
    logits = torch.tensor([[0.0, 1.0, 9.0, 0.5, 0.2, 8.0]]).repeat(3, 1)
    params = [SamplingParams(temperature=0.0, min_new_tokens=3)] * 3
    # rows with 0, 2 and 3 output tokens; stop ids 2 and 5 (the two best)
    sb = build(params, outputs=[[], [1, 1], [1, 1, 1]], stops=[[2, 5]] * 3, vocab=6)
    masked = apply_penalties(logits.clone(), sb)
    for row in (0, 1):
        assert masked[row, 2] == float("-inf") and masked[row, 5] == float("-inf")
        torch.testing.assert_close(masked[row, [0, 1, 3, 4]], logits[row, [0, 1, 3, 4]])
    torch.testing.assert_close(masked[2], logits[2])
    sb = build(params, outputs=[[], [1, 1], [1, 1, 1]], stops=[[2, 5]] * 3, vocab=6)
    assert sample(logits.clone(), sb).tolist() == [1, 1, 2]
    # while sampling (not greedy) too: a masked id never comes out
    sampler = SamplingParams(temperature=5.0, min_new_tokens=2)
    sb = build([sampler] * 500, seeds=list(range(500)), outputs=[[1]] * 500, stops=[[2, 5]] * 500, vocab=6)
    got = sample(logits[:1].repeat(500, 1), sb).tolist()
    assert 2 not in got and 5 not in got


# ---------------------------------------------------------------------------- seeds
def test_same_seed_and_step_give_the_same_sample_whatever_the_batch():
    gen = torch.Generator().manual_seed(4)
    V = 48
    flat = torch.randn(V, generator=gen) * 0.2
    others = torch.randn(4, V, generator=gen) * 3
    me = SamplingParams(temperature=1.0, top_p=0.9)
    neighbours = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.5, top_k=4),
        SamplingParams(temperature=1.2, min_p=0.1, frequency_penalty=0.5),
    ]

    def run(position: int, nb: list[SamplingParams], nb_seeds: list[int], nb_logits: torch.Tensor, step: int):
        params = list(nb)
        params.insert(position, me)
        seeds = list(nb_seeds)
        seeds.insert(position, 1234)
        rows = list(nb_logits)
        rows.insert(position, flat)
        outputs = [[9] * (i + 1) for i in range(len(nb))]
        outputs.insert(position, [4] * step)
        sb = build(params, seeds=seeds, outputs=outputs, vocab=V)
        return sample(torch.stack(rows).clone(), sb).tolist()[position]

    for step in (0, 1, 7):
        results = {
            run(0, neighbours[:2], [1, 2], others[:2], step),
            run(1, neighbours[:2], [3, 4], others[1:3], step),
            run(2, neighbours[1:], [5, 6], others[2:4], step),
            run(2, [neighbours[2], neighbours[0]], [7, 8], others[[3, 0]], step),
            draw(flat, me, seeds=[1234], steps=[step])[0],
        }
        assert len(results) == 1, (step, results)
    # different seeds, and different steps of one seed, do not all agree
    assert len(set(draw(flat, me, seeds=range(100, 140)))) > 10
    assert len(set(draw(flat, me, seeds=[1234] * 40, steps=list(range(40))))) > 10


@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
def test_sampled_frequencies_match_softmax(temperature):
    logits = torch.tensor([1.0, 0.2, -0.5, 0.7, -1.5])
    expected = torch.softmax(logits / temperature, dim=-1).tolist()
    params = SamplingParams(temperature=temperature)
    n = 4000
    for got in (
        draw(logits, params, seeds=range(n)),  # many seeds, one step
        draw(logits, params, seeds=[77] * n, steps=list(range(n))),
    ):  # one seed, many steps
        counts = Counter(got)
        for tok, p in enumerate(expected):
            assert abs(counts[tok] / n - p) < 0.03, (tok, counts[tok] / n, p)


def test_top_k_frequencies_are_renormalised():
    logits = torch.tensor([1.0, 0.2, -0.5, 0.7, -1.5])
    n = 4000
    got = Counter(draw(logits, SamplingParams(temperature=1.0, top_k=2), seeds=range(n)))
    keep = torch.softmax(logits[[0, 3]], dim=-1).tolist()
    assert set(got) == {0, 3}
    assert abs(got[0] / n - keep[0]) < 0.03 and abs(got[3] / n - keep[1]) < 0.03


# ---------------------------------------------------------------------------- engine level
PROMPT = "The quick brown fox jumps over the lazy dog."
# a prompt whose greedy continuation on the tiny llama hits <|endoftext|> (id 0) as the 8th token
EOS_PROMPT = [5983, 6964, 3462, 4193, 1068, 665, 5136, 4153, 7853]
EOS_AT = 7


def greedy(n: int, **kw) -> dict:
    return {"max_new_tokens": n, "temperature": 0, "ignore_eos": True, **kw}


@pytest.fixture
def llama():
    return get_engine("llama")


@pytest.fixture
def prompt_ids(llama):
    return llama.tokenizer(PROMPT).input_ids


@pytest.fixture
def greedy_ref(llama, prompt_ids):
    """24 greedy tokens of PROMPT, checked against Hugging Face once."""
    out = llama.generate(PROMPT, greedy(24))
    assert out["output_ids"] == hf_greedy("llama", prompt_ids, 24)
    return out


def test_temperature_zero_equals_hf_greedy(greedy_ref):
    assert len(greedy_ref["output_ids"]) == 24
    assert greedy_ref["meta_info"]["finish_reason"] == {"type": "length", "length": 24}


def test_seed_reproducible_and_independent_of_batch(llama):
    params = {"max_new_tokens": 32, "temperature": 1.0, "ignore_eos": True}
    a = llama.generate(PROMPT, {**params, "seed": 1234})
    b = llama.generate(PROMPT, {**params, "seed": 1234})
    c = llama.generate(PROMPT, {**params, "seed": 1235})
    assert len(a["output_ids"]) == 32
    assert a["output_ids"] == b["output_ids"] and a["text"] == b["text"]
    assert c["output_ids"] != a["output_ids"]
    # the same seeded request inside a batch, beside other sampling and greedy requests
    outs = llama.generate(
        [" other words", PROMPT, "and a third"], [{**params, "seed": 5}, {**params, "seed": 1234}, greedy(10)]
    )
    assert outs[1]["output_ids"] == a["output_ids"]


def test_n_samples_are_reproducible_and_distinct(llama):
    params = {"max_new_tokens": 16, "temperature": 1.0, "ignore_eos": True, "n": 3}
    first = llama.generate(PROMPT, {**params, "seed": 99})
    again = llama.generate(PROMPT, {**params, "seed": 99})
    assert isinstance(first, list) and len(first) == 3
    assert [o["output_ids"] for o in first] == [o["output_ids"] for o in again]
    assert len({tuple(o["output_ids"]) for o in first}) > 1
    assert all(len(o["output_ids"]) == 16 for o in first)
    unseeded = llama.generate(PROMPT, {**params, "max_new_tokens": 4})
    assert len(unseeded) == 3
    # in a batch, n applies per prompt: 3 + 1 entries, in order
    mixed = llama.generate([PROMPT, "hello"], [{**params, "seed": 99}, greedy(4)])
    assert len(mixed) == 4
    assert [o["output_ids"] for o in mixed[:3]] == [o["output_ids"] for o in first]
    assert mixed[3]["meta_info"]["prompt_tokens"] == len(llama.tokenizer("hello").input_ids)


def test_max_new_tokens_zero_returns_nothing_but_caches_the_prompt(llama, prompt_ids):
    out = llama.generate(PROMPT, {"max_new_tokens": 0})
    assert out["output_ids"] == [] and out["text"] == ""
    assert out["meta_info"]["completion_tokens"] == 0
    assert out["meta_info"]["prompt_tokens"] == len(prompt_ids)
    assert out["meta_info"]["finish_reason"] == {"type": "length", "length": 0}
    again = llama.generate(PROMPT, greedy(2))
    assert again["meta_info"]["cached_tokens"] >= len(prompt_ids) - 1


def _pick_stop_string(tokenizer, ids: list[int], full: str) -> tuple[str, int]:
    """A 2-4 character string that first occurs in `full` exactly at the end of token k
    (k >= 3). Returns (stop, k)."""
    for k in range(3, len(ids)):
        before = tokenizer.decode(ids[:k])
        upto = tokenizer.decode(ids[: k + 1])
        if not full.startswith(upto) or len(upto) <= len(before):
            continue
        for size in (3, 4, 2):
            stop = upto[-size:]
            if (
                len(stop) == size
                and stop.strip() == stop
                and full.find(stop) == len(upto) - size
                and len(upto) - size >= len(before)
            ):
                return stop, k
    raise AssertionError(f"no usable stop string in {full!r}")


@pytest.mark.parametrize("as_list", [False, True])
def test_stop_string_is_trimmed_unless_no_stop_trim(llama, greedy_ref, as_list):
    ids, full = greedy_ref["output_ids"], greedy_ref["text"]
    stop, k = _pick_stop_string(llama.tokenizer, ids, full)
    stop_arg = ["zzzqqq", stop] if as_list else stop
    out = llama.generate(PROMPT, greedy(24, stop=stop_arg))
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert out["output_ids"] == ids[: k + 1]
    assert out["text"] == full[: full.find(stop)]
    kept = llama.generate(PROMPT, greedy(24, stop=stop_arg, no_stop_trim=True))
    assert kept["output_ids"] == ids[: k + 1]
    assert kept["text"].endswith(stop)
    assert kept["text"] == full[: full.find(stop) + len(stop)]


def test_stop_token_id_ends_generation(llama, greedy_ref):
    ids = greedy_ref["output_ids"]
    assert ids[4] not in ids[:4], "test premise: the 5th greedy token is new"
    out = llama.generate(PROMPT, greedy(24, stop_token_ids=[ids[4]]))
    assert out["output_ids"] == ids[:5]
    assert out["meta_info"]["completion_tokens"] == 5
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": ids[4]}
    # the stop token is not part of the text unless no_stop_trim
    assert out["text"] == llama.tokenizer.decode(ids[:4])
    kept = llama.generate(PROMPT, greedy(24, stop_token_ids=[ids[4]], no_stop_trim=True))
    assert kept["text"] == llama.tokenizer.decode(ids[:5])


def test_min_new_tokens_holds_back_a_stop_id(llama, greedy_ref, prompt_ids):
    ids = greedy_ref["output_ids"]
    stop = ids[2]  # greedy would stop after 3 tokens
    out = llama.generate(PROMPT, greedy(12, stop_token_ids=[stop], min_new_tokens=8))
    got = out["output_ids"]
    assert got[:2] == ids[:2]
    assert stop not in got[:8]
    assert len(got) >= 9 or out["meta_info"]["finish_reason"]["type"] == "length"
    # the masked step took the best token other than the stop id
    lp = hf_logprobs("llama", prompt_ids + ids[:2])[-1].clone()
    lp[stop] = float("-inf")
    assert got[2] == int(lp.argmax())
    if stop in got:
        assert got.index(stop) == len(got) - 1 >= 8
        assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}


def test_eos_and_ignore_eos(llama):
    ref = hf_greedy("llama", EOS_PROMPT, 12)
    assert ref[EOS_AT] == 0 and 0 not in ref[:EOS_AT], "test premise: greedy emits <|endoftext|> 8th"
    plain = llama.generate(input_ids=EOS_PROMPT, sampling_params={"max_new_tokens": 12, "temperature": 0})
    assert plain["output_ids"] == ref[: EOS_AT + 1]
    assert plain["meta_info"]["finish_reason"] == {"type": "stop", "matched": 0}
    assert "<|endoftext|>" not in plain["text"]
    ignored = llama.generate(input_ids=EOS_PROMPT, sampling_params=greedy(12))
    assert ignored["output_ids"] == ref
    assert ignored["meta_info"]["finish_reason"] == {"type": "length", "length": 12}
    # min_new_tokens applies to EOS as well
    held = llama.generate(
        input_ids=EOS_PROMPT, sampling_params={"max_new_tokens": 12, "temperature": 0, "min_new_tokens": 10}
    )
    assert held["output_ids"][:EOS_AT] == ref[:EOS_AT]
    assert 0 not in held["output_ids"][:10] and 2 not in held["output_ids"][:10]


# ---------------------------------------------------------------------------- logprobs
LP_ARCHES = ["llama", "qwen2", "qwen3", "llama-tied", "mistral", "llama3-rope"]


def _check_entries(entries, lp_rows, ids, tol=1e-4):
    assert [t for _, t in entries] == list(ids)
    for (value, tok), row in zip(entries, lp_rows):
        assert value == pytest.approx(float(row[tok]), abs=tol)


@pytest.mark.parametrize("arch", LP_ARCHES)
def test_logprobs_match_hf(arch):
    engine = get_engine(arch)
    rng = random.Random(sum(map(ord, arch)))
    ids = [rng.randrange(4, 8192) for _ in range(20)]
    out = engine.generate(
        input_ids=ids, sampling_params=greedy(6), return_logprob=True, logprob_start_len=0, top_logprobs_num=5
    )
    meta = out["meta_info"]
    gen = out["output_ids"]
    ref = hf_logprobs(arch, ids + gen)
    # prompt: (None, first token), then each token's logprob given its prefix
    inp = meta["input_token_logprobs"]
    assert len(inp) == len(ids)
    assert inp[0] == (None, ids[0])
    _check_entries(inp[1:], ref[: len(ids) - 1], ids[1:])
    # output: greedy tokens, each the argmax of HF's continuation
    outp = meta["output_token_logprobs"]
    rows = ref[len(ids) - 1 : len(ids) - 1 + len(gen)]
    _check_entries(outp, rows, gen)
    assert gen == rows.argmax(-1).tolist()
    # top-5 lists, sorted, the first one the argmax (= the greedy token on the output side)
    assert meta["input_top_logprobs"][0] is None
    tops = meta["input_top_logprobs"][1:] + meta["output_top_logprobs"]
    assert len(tops) == len(ids) - 1 + len(gen)
    for top, row in zip(tops, ref):
        assert len(top) == 5
        values = [v for _, v in top]
        assert values == sorted(values, reverse=True)
        assert top[0][0] == int(row.argmax())
        hf_top = row.topk(5)
        for (tok, v), hv in zip(top, hf_top.values.tolist()):
            assert v == pytest.approx(hv, abs=1e-4)
            assert float(row[tok]) == pytest.approx(v, abs=1e-4)
    for top, tok in zip(meta["output_top_logprobs"], gen):
        assert top[0][0] == tok


def test_logprobs_across_prefill_chunks():
    engine = get_engine("llama", chunked_prefill_size=16)
    rng = random.Random(5)
    ids = [rng.randrange(4, 8192) for _ in range(50)]
    out = engine.generate(input_ids=ids, sampling_params=greedy(3), return_logprob=True, logprob_start_len=0)
    gen = out["output_ids"]
    ref = hf_logprobs("llama", ids + gen)
    inp = out["meta_info"]["input_token_logprobs"]
    assert inp[0] == (None, ids[0])
    _check_entries(inp[1:], ref[: len(ids) - 1], ids[1:])
    _check_entries(out["meta_info"]["output_token_logprobs"], ref[len(ids) - 1 :], gen)


@pytest.mark.parametrize("start", [1, 5, 19])
def test_logprob_start_len(llama, start):
    rng = random.Random(3)
    ids = [rng.randrange(4, 8192) for _ in range(20)]
    out = llama.generate(
        input_ids=ids, sampling_params=greedy(2), return_logprob=True, logprob_start_len=start
    )
    entries = out["meta_info"]["input_token_logprobs"]
    assert len(entries) == len(ids) - start
    ref = hf_logprobs("llama", ids)
    _check_entries(entries, ref[start - 1 : len(ids) - 1], ids[start:])
    assert "input_top_logprobs" not in out["meta_info"]  # top_logprobs_num = 0


def test_cached_prompt_still_gets_full_logprobs(llama):
    rng = random.Random(4)
    ids = [rng.randrange(4, 8192) for _ in range(24)]
    ref = hf_logprobs("llama", ids)
    llama.generate(input_ids=ids, sampling_params=greedy(3))  # put the prompt in the cache
    first = llama.generate(input_ids=ids, sampling_params=greedy(3), return_logprob=True, logprob_start_len=0)
    second = llama.generate(
        input_ids=ids, sampling_params=greedy(3), return_logprob=True, logprob_start_len=0
    )
    for out in (first, second):
        entries = out["meta_info"]["input_token_logprobs"]
        assert len(entries) == len(ids)
        assert entries[0] == (None, ids[0])
        _check_entries(entries[1:], ref[:-1], ids[1:])
    a = [v for v, _ in first["meta_info"]["input_token_logprobs"][1:]]
    b = [v for v, _ in second["meta_info"]["input_token_logprobs"][1:]]
    assert a == pytest.approx(b, abs=1e-5)
    assert first["output_ids"] == second["output_ids"]
    assert [v for v, _ in first["meta_info"]["output_token_logprobs"]] == pytest.approx(
        [v for v, _ in second["meta_info"]["output_token_logprobs"]], abs=1e-5
    )
    # a later start may reuse the cache, but never past the first position it must report
    late = llama.generate(input_ids=ids, sampling_params=greedy(3), return_logprob=True, logprob_start_len=10)
    assert late["meta_info"]["cached_tokens"] <= 9
    _check_entries(late["meta_info"]["input_token_logprobs"], ref[9:-1], ids[10:])


def test_logprobs_ignore_temperature_and_penalties(llama, prompt_ids):
    """Reported logprobs are the model's own log-softmax, whatever the sampling settings."""
    params = {
        "max_new_tokens": 4,
        "temperature": 0.5,
        "seed": 3,
        "repetition_penalty": 1.3,
        "frequency_penalty": 0.4,
        "ignore_eos": True,
    }
    out = llama.generate(PROMPT, params, return_logprob=True)
    gen = out["output_ids"]
    ref = hf_logprobs("llama", prompt_ids + gen)
    _check_entries(out["meta_info"]["output_token_logprobs"], ref[len(prompt_ids) - 1 :], gen)


@pytest.mark.parametrize("start", [None, -1])
def test_default_logprob_start_len_reports_output_logprobs_only(llama, prompt_ids, start):
    llama.generate(PROMPT, greedy(2))  # cache the prompt
    out = llama.generate(PROMPT, greedy(3), return_logprob=True, logprob_start_len=start)
    assert len(out["meta_info"]["output_token_logprobs"]) == 3
    assert out["meta_info"]["input_token_logprobs"] == []
    assert out["meta_info"]["cached_tokens"] >= len(prompt_ids) - 1


def test_uniform_noise_stays_strictly_inside_zero_one_and_banned_tokens_are_never_drawn():
    from radixlm.runtime.layers.sampling import _uniform

    # seed 1060, step 0 hits the top 24-bit value for token 2532 (fp32 rounding made u == 1.0,
    # the noise -0, and a banned token's 0 / -0 a NaN that argmax picked)
    u = _uniform(torch.tensor([1060]), torch.tensor([0]), 8192)
    assert float(u.max()) < 1.0 and float(u.min()) > 0.0
    for seed in range(1055, 1065):
        u = _uniform(torch.tensor([seed] * 64), torch.arange(64), 8192)
        assert bool((u < 1.0).all()) and bool((u > 0.0).all())
    logits = torch.randn(1, 8192)
    banned = torch.ones(1, 8192, dtype=torch.bool)
    banned[0, :5] = False
    sb = SamplingBatch.build(
        [SamplingParams(temperature=1.0)], [1060], [[1]], [[]], [[]], 8192, torch.device("cpu")
    )
    sb.vocab_mask = banned
    for step in range(200):
        sb.steps = torch.tensor([step])
        assert int(sample(logits.clone(), sb)[0]) < 5
