"""The sampler chain: each stage on hand-checked logits, the chain's order, seeding, the draw."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from llmrt.errors import UsageError
from llmrt.sampling import Sampler, SamplingParams, greedy

# A distribution whose arithmetic is easy to follow by hand.
P4 = [0.5, 0.3, 0.15, 0.05]
L4 = np.log(np.array(P4, dtype=np.float32))

# Every truncation off, temperature 1: probs() is then the plain softmax.
PLAIN = dict(top_k=0, top_p=1.0, min_p=0.0, temperature=1.0, seed=1)


def probs_of(logits, n: int = 0, **params) -> list[tuple[int, float]]:
    values = np.asarray(logits, dtype=np.float32)
    return Sampler(SamplingParams(**{**PLAIN, **params}), len(values)).probs(values, n)


def assert_probs(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> None:
    assert [t for t, _ in got] == [t for t, _ in want]
    assert [p for _, p in got] == pytest.approx([p for _, p in want], abs=1e-6)


def softmax(x) -> np.ndarray:
    e = np.exp(np.asarray(x, dtype=np.float64) - np.max(x))
    return e / e.sum()


def test_defaults_are_llama_cpp_defaults():
    p = SamplingParams()
    assert (p.temperature, p.top_k, p.top_p, p.min_p, p.typical_p) == (0.8, 40, 0.95, 0.05, 1.0)
    assert (p.repeat_penalty, p.repeat_last_n) == (1.0, 64)
    assert (p.frequency_penalty, p.presence_penalty, p.seed) == (0.0, 0.0, -1)
    assert (p.top_n_sigma, p.xtc_probability, p.xtc_threshold) == (-1.0, 0.0, 0.1)
    assert (p.dynatemp_range, p.dynatemp_exponent, p.min_keep) == (0.0, 1.0, 0)
    p.validate()


# --- greedy -------------------------------------------------------------------------------------


def test_greedy_takes_first_index_on_ties():
    assert greedy(np.array([1.0, 3.0, 3.0, 2.0], dtype=np.float32)) == 1


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_temperature_zero_or_less_is_greedy(temperature):
    logits = np.array([0.0, 5.0, 5.0, 5.0, 1.0], dtype=np.float32)
    s = Sampler(SamplingParams(temperature=temperature, seed=3), 5)
    assert [s.sample(logits) for _ in range(10)] == [1] * 10
    assert s.probs(logits, 5) == [(1, 1.0)]


def test_greedy_through_the_full_chain_keeps_first_tie():
    # typical_p < 1 forces the whole chain (no argmax shortcut); top_k=2 cuts inside the tie.
    logits = np.array([0.0, 5.0, 5.0, 5.0, 1.0], dtype=np.float32)
    s = Sampler(SamplingParams(temperature=0.0, top_k=2, typical_p=0.99, seed=3), 5)
    assert s.sample(logits) == 1


# --- each stage ---------------------------------------------------------------------------------


def test_top_k_keeps_k_best_and_lowest_ids_on_boundary_ties():
    # logits [1, 3, 2, 0], k=2 -> tokens 1 and 2; p1 = e^3 / (e^3 + e^2) = 1 / (1 + e^-1)
    p1 = 1 / (1 + math.exp(-1))
    assert_probs(probs_of([1, 3, 2, 0], top_k=2), [(1, p1), (2, 1 - p1)])
    # Three tokens tie for second place: the lowest id (1) takes the one free slot.
    assert [t for t, _ in probs_of([2, 1, 1, 1], top_k=2)] == [0, 1]
    # k <= 0 disables; k above the vocabulary keeps everything.
    assert len(probs_of([1, 3, 2, 0], top_k=0)) == len(probs_of([1, 3, 2, 0], top_k=99)) == 4


def test_top_p_keeps_smallest_prefix_reaching_p():
    # cumulative 0.5, 0.8, 0.95, 1.0: p=0.75 is reached at the 2nd token -> {0, 1},
    # renormalised 0.5/0.8 = 0.625 and 0.3/0.8 = 0.375
    assert_probs(probs_of(L4, top_p=0.75), [(0, 0.625), (1, 0.375)])
    # p=0.85 needs the 3rd token: 0.5/0.95, 0.3/0.95, 0.15/0.95
    assert_probs(probs_of(L4, top_p=0.85), [(0, 0.5 / 0.95), (1, 0.3 / 0.95), (2, 0.15 / 0.95)])
    # p=0.1 alone would keep one token; min_keep=3 keeps three.
    assert len(probs_of(L4, top_p=0.1)) == 1
    assert len(probs_of(L4, top_p=0.1, min_keep=3)) == 3


def test_top_p_on_a_large_flat_vocabulary_widens_its_first_guess():
    # 5000 equal tokens: the first 256 hold 5% of the mass, so top_p=0.5 must look further.
    # 2499 tokens hold 0.4998 < 0.4999, 2500 hold 0.5 >= 0.4999
    got = probs_of(np.zeros(5000), top_p=0.4999)
    assert len(got) == 2500
    assert [t for t, _ in got[:3]] == [0, 1, 2]


def test_min_p_is_relative_to_the_most_probable_token():
    # min_p=0.2: threshold 0.2 * 0.5 = 0.1 -> keeps 0.5, 0.3, 0.15 (0.05 < 0.1); sum 0.95
    assert_probs(probs_of(L4, min_p=0.2), [(0, 0.5 / 0.95), (1, 0.3 / 0.95), (2, 0.15 / 0.95)])
    # min_p=0.5: threshold 0.25 -> keeps 0.5 and 0.3; sum 0.8
    assert_probs(probs_of(L4, min_p=0.5), [(0, 0.625), (1, 0.375)])
    assert len(probs_of(L4, min_p=0.9, min_keep=3)) == 3


def test_typical_keeps_tokens_whose_surprise_is_near_the_entropy():
    h = -sum(p * math.log(p) for p in P4)  # 0.3466 + 0.3612 + 0.2846 + 0.1498 = 1.1421
    distance = [abs(-math.log(p) - h) for p in P4]  # 0.4490, 0.0619, 0.7550, 1.8536
    assert sorted(range(4), key=distance.__getitem__) == [1, 0, 2, 3]
    # Most typical first: token 1 (mass 0.3, not > 0.5), then token 0 (0.8 > 0.5): keep {1, 0}.
    assert_probs(probs_of(L4, typical_p=0.5), [(0, 0.625), (1, 0.375)])
    # typical_p=0.2 is met by token 1 alone: the most probable token is gone, even greedily.
    assert probs_of(L4, typical_p=0.2) == [(1, 1.0)]
    s = Sampler(SamplingParams(temperature=0.0, typical_p=0.2, seed=1), 4)
    assert s.sample(L4) == 1


def test_top_n_sigma_keeps_logits_within_n_std_of_the_max():
    # logits [3, 2, 0, -1, -4]: mean 0, variance (9 + 4 + 0 + 1 + 16) / 5 = 6, std 2.449
    # n=1: keep logits >= 3 - 2.449 = 0.551 -> tokens 0 and 1
    p0 = 1 / (1 + math.exp(-1))
    assert_probs(probs_of([3, 2, 0, -1, -4], top_n_sigma=1.0), [(0, p0), (1, 1 - p0)])
    assert len(probs_of([3, 2, 0, -1, -4], top_n_sigma=-1.0)) == 5


def test_xtc_removes_all_but_the_least_likely_top_choice():
    # threshold 0.1: 0.5, 0.3, 0.15 are "top choices"; all but the last of them go -> {2, 3},
    # renormalised 0.15/0.2 = 0.75 and 0.05/0.2 = 0.25. probability 1 means always.
    assert_probs(probs_of(L4, xtc_probability=1.0, xtc_threshold=0.1), [(2, 0.75), (3, 0.25)])
    # Only one token above the threshold: nothing to remove.
    assert len(probs_of(L4, xtc_probability=1.0, xtc_threshold=0.4)) == 4
    # threshold > 0.5 disables XTC.
    assert len(probs_of(L4, xtc_probability=1.0, xtc_threshold=0.6)) == 4


def test_temperature_divides_logits():
    # [1, 0] / 0.5 = [2, 0] -> p0 = 1 / (1 + e^-2) = 0.8808
    p0 = 1 / (1 + math.exp(-2))
    assert_probs(probs_of([1, 0], temperature=0.5), [(0, p0), (1, 1 - p0)])


def test_dynamic_temperature_follows_normalised_entropy():
    h = -sum(p * math.log(p) for p in P4)  # 1.1421
    t = 0.5 + (1.5 - 0.5) * (h / math.log(4)) ** 1.0  # range [1-0.5, 1+0.5]: t = 1.3239
    want = softmax(np.log(P4) / t)
    got = probs_of(L4, temperature=1.0, dynatemp_range=0.5)
    assert_probs(got, list(enumerate(want)))


# --- penalties ----------------------------------------------------------------------------------


def test_penalties_apply_to_the_last_n_tokens_only():
    logits = [2.0, -1.0, 0.5, 1.0, 0.0]
    s = Sampler(
        SamplingParams(
            **{**PLAIN, "repeat_penalty": 2.0, "frequency_penalty": 0.1, "presence_penalty": 0.25},
            repeat_last_n=3,
        ),
        5,
    )
    for token in (3, 0, 1, 1):  # the window of 3 is [0, 1, 1]; token 3 has left it
        s.accept(token)
    penalised = [
        2.0 / 2.0 - (1 * 0.1 + 0.25),  # token 0: positive, divided; seen once -> 0.65
        -1.0 * 2.0 - (2 * 0.1 + 0.25),  # token 1: negative, multiplied; seen twice -> -2.45
        0.5,
        1.0,  # token 3: outside the window, untouched
        0.0,
    ]
    got = s.probs(np.array(logits, dtype=np.float32), 0)
    want = sorted(enumerate(softmax(penalised)), key=lambda tp: -tp[1])
    assert_probs(got, want)


def test_sampled_tokens_enter_the_penalty_window():
    # Greedy with a strong penalty over the last 1 token alternates between the two best.
    logits = np.array([1.0, 0.9, -5.0], dtype=np.float32)
    s = Sampler(SamplingParams(temperature=0.0, repeat_penalty=10.0, repeat_last_n=1, seed=1), 3)
    assert [s.sample(logits) for _ in range(4)] == [0, 1, 0, 1]
    s.reset()  # history forgotten
    assert s.sample(logits) == 0


def test_penalty_window_off_and_unbounded():
    logits = np.array([1.0, 0.9, -5.0], dtype=np.float32)
    off = Sampler(SamplingParams(temperature=0.0, repeat_penalty=10.0, repeat_last_n=0), 3)
    off.accept(0)
    assert off.sample(logits) == 0
    every = Sampler(SamplingParams(temperature=0.0, repeat_penalty=10.0, repeat_last_n=-1), 3)
    every.accept(0)
    for _ in range(500):
        every.accept(2)
    assert every.sample(logits) == 1  # token 0, 501 tokens back, is still penalised


# --- the chain's order --------------------------------------------------------------------------


def test_top_k_runs_before_top_p():
    # top_k=2 first: {0.5, 0.3} renormalised to {0.625, 0.375}; top_p=0.6 then keeps token 0 alone.
    # The other way round, top_p=0.6 on 0.5, 0.8, ... would keep two tokens.
    assert probs_of(np.log([0.5, 0.3, 0.2]), top_k=2, top_p=0.6) == [(0, 1.0)]


def test_min_p_runs_before_temperature():
    # Untempered, p1/p0 = e^-1.5 = 0.223 < 0.3: token 1 goes. Had temperature 2 come first,
    # p1/p0 = e^-0.75 = 0.472 would keep it.
    assert probs_of([0.0, -1.5], min_p=0.3, temperature=2.0) == [(0, 1.0)]


# --- seeding and the draw -----------------------------------------------------------------------


def random_steps(n_steps: int, n_vocab: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [(rng.standard_normal(n_vocab) * 2).astype(np.float32) for _ in range(n_steps)]


def draw(sampler: Sampler, steps: list[np.ndarray]) -> list[int]:
    return [sampler.sample(logits) for logits in steps]


def test_same_seed_same_tokens_different_seed_different_tokens():
    steps = random_steps(200, 50_000)
    a = draw(Sampler(SamplingParams(seed=42), 50_000), steps)
    b = draw(Sampler(SamplingParams(seed=42), 50_000), steps)
    c = draw(Sampler(SamplingParams(seed=43), 50_000), steps)
    assert a == b
    assert a != c


def test_random_seed_is_reported_and_replays():
    steps = random_steps(50, 1000)
    first = Sampler(SamplingParams(seed=-1), 1000)
    assert 0 <= first.seed < 2**32
    tokens = draw(first, steps)
    assert draw(Sampler(SamplingParams(seed=first.seed), 1000), steps) == tokens


def test_reset_restarts_the_stream_and_probs_draws_nothing():
    steps = random_steps(30, 1000)
    s = Sampler(SamplingParams(seed=5, xtc_probability=0.5), 1000)
    tokens = draw(s, steps)
    s.reset()
    for logits in steps:
        s.probs(logits, 5)  # must not move either random stream
    assert draw(s, steps) == tokens


def test_draws_at_temperature_one_match_softmax():
    logits = np.array([0.0, 0.5, 1.0, -0.5, 2.0, -1.0, 0.3, 1.5], dtype=np.float32)
    s = Sampler(SamplingParams(**PLAIN), len(logits))
    n = 20_000
    counts = np.bincount([s.sample(logits) for _ in range(n)], minlength=len(logits))
    expected = softmax(logits) * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 24.32  # the chi-square 0.999 quantile with 7 degrees of freedom


def test_large_vocabulary_default_chain():
    logits = random_steps(1, 256_000)[0]
    s = Sampler(SamplingParams(seed=1), 256_000)
    top = s.probs(logits, 0)
    assert 1 <= len(top) <= 40
    assert sum(p for _, p in top) == pytest.approx(1.0)
    assert s.sample(logits) in {t for t, _ in top}


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("top_p", 1.5),
        ("top_p", -0.1),
        ("min_p", 2.0),
        ("typical_p", -1.0),
        ("xtc_probability", 1.1),
        ("repeat_penalty", 0.0),
        ("repeat_last_n", -2),
        ("min_keep", -1),
        ("n_probs", -1),
        ("dynatemp_range", -0.5),
        ("temperature", float("nan")),
        ("seed", -5),
        ("seed", 2**32),
    ],
)
def test_validate_rejects_bad_values(field, value):
    params = SamplingParams(**{field: value})
    with pytest.raises(UsageError, match=field) as err:
        params.validate()
    assert "\n" not in str(err.value)
    with pytest.raises(UsageError):
        Sampler(params, 10)


@pytest.mark.parametrize(
    "field, value", [("top_k", -5), ("temperature", -1.0), ("seed", 0xFFFFFFFF), ("top_p", 1.0)]
)
def test_validate_accepts_llama_cpp_off_values(field, value):
    SamplingParams(**{field: value}).validate()


def test_bad_tokens_and_logits():
    s = Sampler(SamplingParams(), 4)
    with pytest.raises(UsageError):
        s.accept(4)
    with pytest.raises(ValueError):
        s.sample(np.zeros(5, dtype=np.float32))


def test_logit_bias_bans_and_forces_tokens():
    logits = np.array([3.0, 2.0, 1.0, 0.0], dtype=np.float32)
    greedy_params = {"temperature": 0.0, "seed": 1}
    # -inf bans the best token: greedy takes the next one
    banned = Sampler(SamplingParams(**greedy_params, logit_bias=((0, -math.inf),)), 4)
    assert banned.sample(logits) == 1
    # a large bias lifts the worst token above the rest, also when sampling
    lifted = Sampler(SamplingParams(**{**PLAIN, "logit_bias": ((3, 100.0),)}), 4)
    assert {lifted.sample(logits) for _ in range(20)} == {3}
    # biases add up, and the probabilities the chain reports include them
    twice = probs_of(L4, logit_bias=((1, math.log(2.0)), (1, math.log(2.0))))
    want = softmax(np.log(np.array([0.5, 1.2, 0.15, 0.05])))
    assert_probs(twice, sorted(enumerate(want.tolist()), key=lambda x: -x[1]))


@pytest.mark.parametrize(
    ("bias", "message"),
    [(((-1, 1.0),), "token ids are >= 0"), (((0, math.nan),), "finite or -inf"),
     (((9, 1.0),), "outside the vocabulary")],
)  # fmt: skip
def test_logit_bias_rejects_bad_entries(bias, message):
    with pytest.raises(UsageError, match=message):
        Sampler(SamplingParams(logit_bias=bias), 4)


def test_constraint_holds_against_random_logits(smollm2_path):
    """Whatever the logits say, the drawn tokens spell what the grammar allows, then end."""
    pytest.importorskip("llguidance")
    from llmrt.grammar import Constraint, compile_grammar, grammar_tokenizer
    from llmrt.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(smollm2_path)
    lltok = grammar_tokenizer(tok, tok.n_vocab)
    grammar = compile_grammar(lltok, regex=r"[0-9]{3}-(red|blue)")
    rng = np.random.default_rng(0)
    for seed in range(5):
        params = SamplingParams(temperature=2.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed)
        sampler = Sampler(params, tok.n_vocab, constraint=Constraint(lltok, grammar))
        out = []
        while True:
            t = sampler.sample(rng.normal(0, 5, tok.n_vocab).astype(np.float32))
            if t in tok.eog_ids:
                break
            out.append(t)
            assert len(out) < 20
        assert re.fullmatch(r"[0-9]{3}-(red|blue)", tok.decode(out))


def test_grammar_errors_are_usage_errors(smollm2_path):
    pytest.importorskip("llguidance")
    from llmrt.grammar import GrammarError, compile_grammar, grammar_tokenizer
    from llmrt.tokenizer import Tokenizer

    lltok = grammar_tokenizer(Tokenizer.from_gguf(smollm2_path))
    for kwargs in ({"gbnf": "root ::= ("}, {"json_schema": {"type": "nope"}},
                   {"json_schema": "[1"}, {"gbnf": "root ::= x", "regex": "a"}):  # fmt: skip
        with pytest.raises(GrammarError):
            compile_grammar(lltok, **kwargs)
    assert issubclass(GrammarError, UsageError)
