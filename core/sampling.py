"""The sampler chain: llama.cpp's default order and defaults, in numpy, seeded and reproducible.

The chain, as llama-cli builds it (common/sampling.cpp, `common_params_sampling::samplers`):

    logit_bias -> penalties -> top_n_sigma -> top_k -> typical_p -> top_p -> min_p -> xtc
        -> temperature -> dist

(llama.cpp also has DRY between penalties and top_n_sigma; llmrt does not implement it yet, so it
has no parameters here.) Truncating samplers act on the logits before temperature, as in llama.cpp:
top_p and min_p see the untempered distribution.

Each stage takes and returns a `_Candidates` (token ids and their logits) and never writes into the
arrays it was given, so the caller's logits are not copied unless a penalty must change them. With
the defaults a step costs one `argpartition` over the vocabulary and then works on 40 candidates.

The draw uses numpy's PCG64 generator, not llama.cpp's mt19937: a seed gives the same tokens every
time in llmrt, but not the same tokens as llama.cpp with that seed.
"""

from __future__ import annotations

import math
import secrets
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np

from llmrt.errors import UsageError
from llmrt.grammar import Constraint, GrammarError

# llama.cpp's LLAMA_DEFAULT_SEED (0xFFFFFFFF) is what `-s -1` becomes as a uint32: both mean random.
RANDOM_SEED = -1
_LLAMA_DEFAULT_SEED = 0xFFFFFFFF

# top_p first tries this many best candidates before sorting the whole vocabulary (llama.cpp's
# adaptive partial sort): nucleus sets are nearly always much smaller.
_TOP_P_FIRST_TRY = 256


@dataclass
class SamplingParams:
    """Sampling settings with llama.cpp's defaults (common/common.h, common_params_sampling)."""

    temperature: float = 0.8  # <= 0: greedy (first index on ties)
    top_k: int = 40  # <= 0: disabled
    top_p: float = 0.95  # 1.0: disabled
    min_p: float = 0.05  # 0.0: disabled; relative to the most probable token
    typical_p: float = 1.0  # 1.0: disabled
    repeat_penalty: float = 1.0  # 1.0: disabled
    repeat_last_n: int = 64  # 0: penalties off; -1: every token the sampler has seen
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int = RANDOM_SEED  # -1 (or 0xFFFFFFFF): a random seed, readable from Sampler.seed
    top_n_sigma: float = -1.0  # <= 0: disabled
    xtc_probability: float = 0.0  # 0.0: disabled
    xtc_threshold: float = 0.1  # > 0.5: disabled
    dynatemp_range: float = 0.0  # 0.0: disabled; temperature varies in [temp - r, temp + r]
    dynatemp_exponent: float = 1.0
    min_keep: int = 0  # truncating samplers keep at least this many candidates
    n_probs: int = 0  # how many candidates a caller wants from probs(); the chain ignores it
    # (token, bias) pairs added to the logits before anything else; -inf bans a token.
    logit_bias: tuple[tuple[int, float], ...] = ()

    def validate(self) -> None:
        """Raise UsageError naming the first bad value; llama.cpp's "off" values are fine."""
        for name in (
            "temperature",
            "top_p",
            "min_p",
            "typical_p",
            "repeat_penalty",
            "frequency_penalty",
            "presence_penalty",
            "top_n_sigma",
            "xtc_probability",
            "xtc_threshold",
            "dynatemp_range",
            "dynatemp_exponent",
        ):
            if not math.isfinite(getattr(self, name)):
                raise UsageError(f"{name} must be a finite number, got {getattr(self, name)}")
        for name in ("top_p", "min_p", "typical_p", "xtc_probability", "xtc_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UsageError(f"{name} must be between 0 and 1, got {value}")
        if self.repeat_penalty <= 0.0:
            raise UsageError(
                f"repeat_penalty must be > 0 (1.0 disables), got {self.repeat_penalty}"
            )
        if self.repeat_last_n < -1:
            raise UsageError(
                f"repeat_last_n must be >= -1 (0 disables, -1 = all), got {self.repeat_last_n}"
            )
        if self.dynatemp_range < 0.0:
            raise UsageError(f"dynatemp_range must be >= 0, got {self.dynatemp_range}")
        if self.dynatemp_exponent < 0.0:
            raise UsageError(f"dynatemp_exponent must be >= 0, got {self.dynatemp_exponent}")
        if self.min_keep < 0:
            raise UsageError(f"min_keep must be >= 0, got {self.min_keep}")
        if self.n_probs < 0:
            raise UsageError(f"n_probs must be >= 0, got {self.n_probs}")
        if not (self.seed == RANDOM_SEED or 0 <= self.seed <= _LLAMA_DEFAULT_SEED):
            raise UsageError(f"seed must be -1 (random) or in [0, 2**32 - 1], got {self.seed}")
        for token, bias in self.logit_bias:
            if token < 0:
                raise UsageError(f"logit_bias: token ids are >= 0, got {token}")
            if math.isnan(bias) or bias == math.inf:
                raise UsageError(f"logit_bias: a bias is finite or -inf, got {bias}")


@dataclass
class _Candidates:
    ids: np.ndarray  # int64 token ids
    logits: np.ndarray  # float32, same length; never written in place
    sorted: bool = False  # True when ordered by descending logit (ties: lower position first)

    def take(self, index: np.ndarray | slice, sorted_: bool) -> _Candidates:
        return _Candidates(self.ids[index], self.logits[index], sorted_)


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities in float64; -inf logits get 0."""
    # exp in float32 (fast on a whole vocabulary), normalised in float64 (sums stay exact enough).
    e = np.exp(logits - logits.max(), dtype=np.float32).astype(np.float64)
    return e / e.sum()


def _sort(c: _Candidates) -> _Candidates:
    if c.sorted:
        return c
    # A stable sort makes ties deterministic: the earlier candidate (lower id at first) wins.
    return c.take(np.argsort(-c.logits, kind="stable"), True)


def _top_k_indices(logits: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest logits, best first, ties broken towards the lower position."""
    kth = logits[np.argpartition(-logits, k - 1)[k - 1]]
    # argpartition picks arbitrarily among values equal to the k-th; take the lowest positions.
    above = np.flatnonzero(logits > kth)
    tied = np.flatnonzero(logits == kth)[: k - len(above)]
    chosen = np.concatenate([above, tied])
    return chosen[np.argsort(-logits[chosen], kind="stable")]


def _penalize(
    logits: np.ndarray, counts: Counter[int], repeat: float, freq: float, present: float
) -> np.ndarray:
    """llama.cpp's repetition penalty: shrink the logits of tokens seen in the window."""
    out = logits.astype(np.float32, copy=True)
    ids = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
    n = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
    seen = out[ids]
    # Dividing a negative logit would make the token likelier, so those are multiplied instead.
    seen = np.where(seen <= 0, seen * np.float32(repeat), seen / np.float32(repeat))
    out[ids] = seen - (n * np.float32(freq) + np.float32(present))
    return out


def _top_n_sigma(c: _Candidates, n: float) -> _Candidates:
    if n <= 0 or len(c.ids) <= 1:
        return c
    finite = c.logits[np.isfinite(c.logits)]
    if len(finite) == 0:
        return c
    threshold = finite.max() - n * finite.std()  # population std, as llama.cpp
    # llama.cpp sets the rest to -inf; dropping them gives the same draw and fewer candidates.
    return _sort(c.take(c.logits >= threshold, False))


def _top_k(c: _Candidates, k: int) -> _Candidates:
    if k <= 0:
        return c
    k = min(k, len(c.ids))
    if c.sorted:
        return c.take(slice(0, k), True)
    return c.take(_top_k_indices(c.logits, k), True)


def _typical(c: _Candidates, p: float, min_keep: int) -> _Candidates:
    if p >= 1.0:
        return c
    c = _sort(c)
    probs = _softmax(c.logits)
    with np.errstate(divide="ignore", invalid="ignore"):
        neg_log = -np.log(probs)
        entropy = float(np.nansum(probs * neg_log))
        # How far each token's surprise is from the expected surprise: small means "typical".
        order = np.argsort(np.abs(neg_log - entropy), kind="stable")
    cum = np.cumsum(probs[order])
    over = cum > p
    over[: max(min_keep - 1, 0)] = False
    keep = int(np.argmax(over)) + 1 if over.any() else len(order)
    return c.take(order[:keep], False)


def _top_p(c: _Candidates, p: float, min_keep: int) -> _Candidates:
    if p >= 1.0:
        return c
    probs = _softmax(c.logits)
    if c.sorted:
        order = np.arange(len(c.ids))
    else:
        order = _top_k_indices(probs, min(_TOP_P_FIRST_TRY, len(c.ids)))
    while True:
        cum = np.cumsum(probs[order])
        # The smallest prefix whose mass reaches p, but no shorter than min_keep.
        reached = cum >= p
        reached[: max(min_keep - 1, 0)] = False
        if reached.any():
            return c.take(order[: int(np.argmax(reached)) + 1], True)
        if len(order) == len(c.ids):
            return c.take(order, True)
        # Too little mass in the best few: widen the net rather than sort the whole vocabulary.
        order = _top_k_indices(probs, min(len(order) * 16, len(c.ids)))


def _min_p(c: _Candidates, p: float, min_keep: int) -> _Candidates:
    if p <= 0.0 or len(c.ids) == 0:
        return c
    # p_i >= p * p_max  <=>  logit_i >= max_logit + log(p), computed in float32 like llama.cpp.
    min_logit = np.float32(c.logits.max()) + np.float32(math.log(p))
    keep = c.logits >= min_logit
    if keep.sum() >= max(min_keep, 1):
        return c.take(keep, c.sorted)
    return _sort(c).take(slice(0, min(min_keep, len(c.ids))), True)


def _xtc(
    c: _Candidates, probability: float, threshold: float, min_keep: int, rng: np.random.Generator
) -> _Candidates:
    if probability <= 0.0 or threshold > 0.5 or len(c.ids) < 2:
        return c
    if rng.random() > probability:
        return c
    c = _sort(c)
    above = _softmax(c.logits) >= threshold
    # Index of the last token of the leading run above the threshold: drop all before it, so the
    # least likely of the "top choices" stays.
    last = int(np.argmin(above)) - 1 if not above.all() else len(above) - 1
    if last > 0 and len(c.ids) - last >= min_keep:
        return c.take(slice(last, None), True)
    return c


def _temperature(c: _Candidates, temp: float, delta: float, exponent: float) -> _Candidates:
    if delta > 0.0:
        if len(c.ids) <= 1:
            return c
        c = _sort(c)
        probs = _softmax(c.logits)
        nz = probs[probs > 0]
        entropy = float(-(nz * np.log(nz)).sum())
        normalized = entropy / math.log(len(c.ids))
        low, high = max(0.0, temp - delta), temp + delta
        temp = low + (high - low) * normalized**exponent
    if temp <= 0.0:
        # Greedy: only the first maximum survives, whatever order the candidates are in.
        return c.take(np.array([int(np.argmax(c.logits))]), True)
    return _Candidates(c.ids, c.logits / np.float32(temp), c.sorted)


class Sampler:
    """The sampler chain for one sequence: its penalty history and its random generators."""

    def __init__(
        self, params: SamplingParams, n_vocab: int, constraint: Constraint | None = None
    ) -> None:
        """`constraint` (llmrt.grammar): the tokens a grammar allows, enforced before the chain
        (they win over logit_bias: a bias cannot make the grammar fail)."""
        params.validate()
        if n_vocab <= 0:
            raise UsageError(f"n_vocab must be positive, got {n_vocab}")
        self.params = params
        self.n_vocab = n_vocab
        self.constraint = constraint
        self._allowed: np.ndarray | None = None  # the constraint's mask for the coming draw
        self._ids = np.arange(n_vocab, dtype=np.int64)
        bad = [t for t, _ in params.logit_bias if t >= n_vocab]
        if bad:
            raise UsageError(f"logit_bias: token {bad[0]} is outside the vocabulary ({n_vocab})")
        self._bias_ids = np.array([t for t, _ in params.logit_bias], dtype=np.int64)
        self._bias = np.array([b for _, b in params.logit_bias], dtype=np.float32)
        last_n = params.repeat_last_n
        self._window: deque[int] = deque(maxlen=None if last_n < 0 else last_n)
        self._counts: Counter[int] = Counter()
        self.reset()

    @property
    def seed(self) -> int:
        """The seed in use: the one asked for, or the random one chosen for -1."""
        return self._seed

    def reset(self) -> None:
        """Forget the token history and restart the random streams (a new seed if random)."""
        self._window.clear()
        self._counts.clear()
        if self.constraint is not None:
            self.constraint.reset()
            self._allowed = None
        seed = self.params.seed
        if seed in (RANDOM_SEED, _LLAMA_DEFAULT_SEED):
            seed = secrets.randbits(32)
        self._seed = seed
        # Separate streams, so turning XTC on does not change which numbers the draw gets.
        self._rng = np.random.default_rng(seed)
        self._xtc_rng = np.random.default_rng([seed, 1])

    def accept(self, token: int) -> None:
        """Record a token that sample() did not draw (prompt tokens), so penalties see it."""
        if not 0 <= token < self.n_vocab:
            raise UsageError(f"token {token} is outside the vocabulary (n_vocab={self.n_vocab})")
        if self.params.repeat_last_n == 0:
            return
        if self._window.maxlen is not None and len(self._window) == self._window.maxlen:
            old = self._window[0]
            self._counts[old] -= 1
            if self._counts[old] == 0:
                del self._counts[old]
        self._window.append(token)
        self._counts[token] += 1

    def sample(self, logits: np.ndarray) -> int:
        """Run the chain on the last position's logits, draw a token, and record it."""
        logits = self._check(logits)
        if self._plain_greedy():
            # Every stage left keeps the best token, so greedy needs no candidates at all.
            token = int(np.argmax(self._prepared(logits)))
        else:
            c = self._chain(logits, self._xtc_rng)
            token = int(c.ids[self._draw(c)])
        if self.constraint is not None:
            self.constraint.accept(token)
            self._allowed = None
        self.accept(token)
        return token

    def probs(self, logits: np.ndarray, n: int) -> list[tuple[int, float]]:
        """The n most probable candidates left by the chain, with the probabilities the draw uses.

        Nothing is drawn or recorded. `n <= 0` returns every remaining candidate. At temperature
        <= 0 only the greedy token remains, with probability 1.
        """
        logits = self._check(logits)
        # A copy of XTC's generator, so asking for probabilities does not move the real stream.
        xtc_rng = np.random.default_rng()
        xtc_rng.bit_generator.state = self._xtc_rng.bit_generator.state
        c = _sort(self._chain(logits, xtc_rng))
        probs = _softmax(c.logits)
        count = len(c.ids) if n <= 0 else min(n, len(c.ids))
        return [(int(t), float(q)) for t, q in zip(c.ids[:count], probs[:count], strict=True)]

    def _check(self, logits: np.ndarray) -> np.ndarray:
        logits = np.asarray(logits, dtype=np.float32)
        if logits.shape != (self.n_vocab,):
            raise ValueError(f"logits must have shape ({self.n_vocab},), got {logits.shape}")
        return logits

    def _plain_greedy(self) -> bool:
        # typical_p and XTC can drop the best token, and dynamic temperature can lift a zero
        # temperature above zero: with any of them on, the full chain must run.
        p = self.params
        xtc_on = p.xtc_probability > 0.0 and p.xtc_threshold <= 0.5
        return p.temperature <= 0.0 and p.typical_p >= 1.0 and not xtc_on and p.dynatemp_range == 0

    def _prepared(self, logits: np.ndarray) -> np.ndarray:
        """The logits the chain starts from: biased, penalized, and masked by the constraint."""
        out = self._penalized(self._biased(logits))
        if self.constraint is None:
            return out
        if self._allowed is None:
            self._allowed = self.constraint.allowed()
        masked = np.where(self._allowed, out, np.float32(-np.inf))
        if not np.isfinite(masked).any():  # biases banned all the grammar allows: it wins
            masked = np.where(self._allowed, logits, np.float32(-np.inf))
            if not np.isfinite(masked).any():
                raise GrammarError("the grammar allows no token here")
        return masked

    def _biased(self, logits: np.ndarray) -> np.ndarray:
        if not len(self._bias_ids):
            return logits
        out = logits.copy()
        np.add.at(out, self._bias_ids, self._bias)  # a token named twice gets both biases
        return out

    def _penalized(self, logits: np.ndarray) -> np.ndarray:
        p = self.params
        off = p.repeat_penalty == 1.0 and p.frequency_penalty == 0.0 and p.presence_penalty == 0.0
        if off or not self._counts:
            return logits
        return _penalize(
            logits, self._counts, p.repeat_penalty, p.frequency_penalty, p.presence_penalty
        )

    def _chain(self, logits: np.ndarray, xtc_rng: np.random.Generator) -> _Candidates:
        p = self.params
        c = _Candidates(self._ids, self._prepared(logits))
        c = _top_n_sigma(c, p.top_n_sigma)
        c = _top_k(c, p.top_k)
        c = _typical(c, p.typical_p, p.min_keep)
        c = _top_p(c, p.top_p, p.min_keep)
        c = _min_p(c, p.min_p, p.min_keep)
        c = _xtc(c, p.xtc_probability, p.xtc_threshold, p.min_keep, xtc_rng)
        return _temperature(c, p.temperature, p.dynatemp_range, p.dynatemp_exponent)

    def _draw(self, c: _Candidates) -> int:
        if len(c.ids) == 1:
            return 0
        # Inverse CDF over the candidates in their current order: the first whose running mass
        # reaches u * total, as llama.cpp's dist sampler does.
        weights = np.exp(c.logits - c.logits.max(), dtype=np.float32)
        cum = weights.astype(np.float64).cumsum()
        index = int(np.searchsorted(cum, self._rng.random() * cum[-1], side="left"))
        return min(index, len(cum) - 1)


def greedy(logits: np.ndarray) -> int:
    """The most likely token; the first index on ties (what llama.cpp's greedy sampler picks)."""
    return int(np.argmax(logits))
