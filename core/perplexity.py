"""Perplexity over a text, and KL divergence between two runs, as llama-perplexity computes them.

The text is tokenized once (with BOS where the vocabulary adds one) and cut into non-overlapping
chunks of n_ctx tokens; each chunk is evaluated on an emptied cache with its first token replaced
by BOS, and only its second half is scored: the logits at positions n_ctx/2 .. n_ctx-2 against the
tokens that follow them, so every scored token sees at least n_ctx/2 tokens of context.

The KL-divergence mode saves one run's log-probabilities at the scored positions (the "base") and
compares another run with them: another quantization, backend or setting of the same vocabulary.
The log-probabilities are stored per row as uint16 between the row's minimum and maximum (the
precision llama.cpp's base files keep, ~4e-4 over a range of 25 nats).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmrt.engine import Batch
from llmrt.errors import LlmrtError, UsageError

BASE_FORMAT = "llmrt-kld-base-1"


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    top = x.max(axis=-1, keepdims=True)
    return x - (np.log(np.exp(x - top).sum(axis=-1, keepdims=True)) + top)


@dataclass
class ChunkScores:
    """What one chunk gave: the log-probs of the scored rows and the tokens that followed them."""

    index: int
    logp: np.ndarray  # f64 [n_ctx/2 - 1, n_vocab]
    targets: np.ndarray  # i64 [n_ctx/2 - 1]

    @property
    def target_logp(self) -> np.ndarray:
        return self.logp[np.arange(len(self.targets)), self.targets]


def chunk_scores(
    ctx: Any, tokens: list[int], bos: int | None, n_chunks: int = -1
) -> Iterator[ChunkScores]:
    """Evaluate the chunks of `tokens` in `ctx` (whose n_ctx is the chunk size), one at a time."""
    n_ctx = ctx.n_ctx
    available = len(tokens) // n_ctx
    if available < 1 or len(tokens) < 2 * n_ctx:
        raise UsageError(
            f"the text has {len(tokens)} tokens; perplexity with a context of {n_ctx} needs at "
            f"least {2 * n_ctx} (lower -c or give a longer text)"
        )
    count = available if n_chunks < 0 else min(n_chunks, available)
    first = n_ctx // 2
    for i in range(count):
        chunk = list(tokens[i * n_ctx : (i + 1) * n_ctx])
        if bos is not None:
            chunk[0] = bos
        ctx.clear()
        batch = Batch.of(chunk, 0)
        batch.logits[:] = False
        batch.logits[first : n_ctx - 1] = True  # the rows that are scored, and only those
        logits = ctx.decode(batch, prompt=True)
        targets = np.asarray(tokens[i * n_ctx + first + 1 : (i + 1) * n_ctx], np.int64)
        yield ChunkScores(i, log_softmax(logits), targets)


def mean_and_error(values: np.ndarray) -> tuple[float, float]:
    """The mean and its standard error, as llama-perplexity reports them."""
    n = len(values)
    mean = float(values.mean())
    if n < 2:
        return mean, 0.0
    return mean, float(math.sqrt(max(float((values**2).mean()) - mean * mean, 0.0) / (n - 1)))


@dataclass
class Perplexity:
    """Running sums over the scored tokens; `report` prints llama-perplexity's lines."""

    nll: list[np.ndarray] = field(default_factory=list)

    def add(self, scores: ChunkScores) -> float:
        self.nll.append(-scores.target_logp)
        return self.ppl

    @property
    def ppl(self) -> float:
        return math.exp(float(np.concatenate(self.nll).mean()))

    def estimate(self) -> tuple[float, float]:
        """PPL and its error: exp(mean NLL), with the error of the mean carried through exp."""
        mean, err = mean_and_error(np.concatenate(self.nll))
        return math.exp(mean), err * math.exp(mean)


def quantize_rows(logp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lo = logp.min(axis=1, keepdims=True)
    span = np.maximum(logp.max(axis=1, keepdims=True) - lo, 1e-30)
    q = np.rint((logp - lo) / span * 65535.0).astype(np.uint16)
    return q, lo[:, 0].astype(np.float32), span[:, 0].astype(np.float32)


def dequantize_rows(q: np.ndarray, lo: np.ndarray, span: np.ndarray) -> np.ndarray:
    return q.astype(np.float64) / 65535.0 * span[:, None].astype(np.float64) + lo[:, None]


def save_base(path: Path, tokens: list[int], n_ctx: int, n_vocab: int, chunks: list[ChunkScores]):
    q, lo, span = zip(*(quantize_rows(c.logp) for c in chunks), strict=True)
    np.savez(
        path, format=BASE_FORMAT, tokens=np.asarray(tokens, np.int32), n_ctx=n_ctx,
        n_vocab=n_vocab, n_chunks=len(chunks), q=np.stack(q), lo=np.stack(lo), span=np.stack(span),
    )  # fmt: skip


@dataclass
class Base:
    tokens: np.ndarray
    n_ctx: int
    n_vocab: int
    q: np.ndarray  # u16 [chunks, rows, vocab]
    lo: np.ndarray
    span: np.ndarray

    @staticmethod
    def load(path: Path) -> Base:
        try:
            with np.load(path) as z:
                if str(z["format"]) != BASE_FORMAT:
                    raise LlmrtError(f"{path} is not a KL-divergence base file of llmrt")
                return Base(z["tokens"], int(z["n_ctx"]), int(z["n_vocab"]), z["q"], z["lo"],
                            z["span"])  # fmt: skip
        except (OSError, ValueError, KeyError) as exc:
            raise LlmrtError(f"cannot read the KL-divergence base {path}: {exc}") from None

    def logp(self, chunk: int) -> np.ndarray:
        return dequantize_rows(self.q[chunk], self.lo[chunk], self.span[chunk])


@dataclass
class Divergence:
    """Per scored token: KL(base || this run), both runs' target log-probs, top-1 agreement."""

    kld: list[np.ndarray] = field(default_factory=list)
    base_nll: list[np.ndarray] = field(default_factory=list)
    nll: list[np.ndarray] = field(default_factory=list)
    same_top: list[np.ndarray] = field(default_factory=list)

    def add(self, base_logp: np.ndarray, scores: ChunkScores) -> None:
        rows = np.arange(len(scores.targets))
        p = np.exp(base_logp)
        p /= p.sum(axis=1, keepdims=True)  # the stored rows are rounded: renormalize
        self.kld.append(np.maximum((p * (np.log(p + 1e-300) - scores.logp)).sum(axis=1), 0.0))
        self.base_nll.append(-np.log(p[rows, scores.targets] + 1e-300))
        self.nll.append(-scores.target_logp)
        self.same_top.append(base_logp.argmax(axis=1) == scores.logp.argmax(axis=1))

    def report(self, write: Callable[[str], None]) -> dict[str, float]:
        kld, nll, base = (np.concatenate(x) for x in (self.kld, self.nll, self.base_nll))
        same = np.concatenate(self.same_top).astype(np.float64)
        ppl_q, err_q = mean_and_error(nll)
        ppl_b, err_b = mean_and_error(base)
        ratio, ratio_err = mean_and_error(nll - base)
        kld_mean, kld_err = mean_and_error(kld)
        top, top_err = mean_and_error(same)

        def stat(label: str, value: float, error: float) -> None:
            write(f"{label:<30}: {value:10.6f} ± {error:10.6f}")

        write("====== Perplexity statistics ======")
        stat("Mean PPL(Q)", math.exp(ppl_q), err_q * math.exp(ppl_q))
        stat("Mean PPL(base)", math.exp(ppl_b), err_b * math.exp(ppl_b))
        write(f"Cor(ln(PPL(Q)), ln(PPL(base))): {100 * np.corrcoef(nll, base)[0, 1]:6.2f}%")
        stat("Mean ln(PPL(Q)/PPL(base))", ratio, ratio_err)
        stat("Mean PPL(Q)/PPL(base)", math.exp(ratio), ratio_err * math.exp(ratio))
        write("")
        write("====== KL divergence statistics ======")
        write(f"Mean    KLD: {kld_mean:10.6f} ± {kld_err:10.6f}")
        for name, q in (("Maximum", 100), ("99.9%  ", 99.9), ("99.0%  ", 99), ("Median ", 50),
                        ("10.0%  ", 10), ("Minimum", 0)):  # fmt: skip
            write(f"{name} KLD: {np.percentile(kld, q):10.6f}")
        write("")
        write("====== Token probability statistics ======")
        write(f"Same top p: {100 * top:6.3f} ± {100 * top_err:5.3f} %")
        return {"ppl": math.exp(ppl_q), "ppl_base": math.exp(ppl_b), "ppl_ratio": math.exp(ratio),
                "kld_mean": kld_mean, "kld_max": float(kld.max()), "same_top": top}  # fmt: skip
