"""Greedy generation against llama.cpp's own tokens (fixtures made with llama-cpp-python 0.3.36).

Prompt ids must be identical. Generated ids must equal llama.cpp's at least up to the first step
whose recorded top-1/top-2 logit gap is below NEAR_TIE: there a correct implementation may pick
the other token (the fixture README measured llama.cpp itself flipping such steps when only its
attention path changes), and the texts differ from there on. A divergence at a wider gap is a bug.

How wide a "near tie" is was measured, not guessed (llama-cpp-python 0.3.36, this machine,
2026-11-25; benchmarks/llama_cpp_self_divergence.py): with only its attention path changed (flash
attention on, llama-cli's CPU default), llama.cpp itself leaves its own fixtures at steps whose gap
is up to 0.31 (SmolLM2 prompt 1; 0.19 on prompt 0) and 0.24 (Gemma 3 prompt 7). The same numpy
reference run against two BLAS builds moves SmolLM2 prompt 2's first step (gap 0.28) from one side
to the other. So the fixture README's suggested 0.15 sits inside the rounding noise of an exact
implementation; both models are held to NEAR_TIE = 0.35, just above llama.cpp's own 0.31, and far
below the README's "> 0.5 is a bug".

LLMRT_TEST_DEVICE picks the device (default cpu), so the same check runs on every backend, and
LLMRT_TEST_NGL the layers offloaded to it (default all), for partial offload.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from refs import REFS

from llmrt.engine import load

NEAR_TIE = 0.35
DEVICE = os.environ.get("LLMRT_TEST_DEVICE", "cpu")
NGL = int(os.environ.get("LLMRT_TEST_NGL", "-1"))
FIXTURES = Path(__file__).parent / "fixtures"


def first_divergence(ours: list[int], theirs: list[int]) -> int | None:
    for i, (a, b) in enumerate(zip(ours, theirs, strict=False)):
        if a != b:
            return i
    return None if len(ours) == len(theirs) else min(len(ours), len(theirs))


def greedy(model, prompt_ids: list[int], n_new: int) -> list[int]:
    ctx = model.context(n_ctx=512)
    logits = ctx.eval(prompt_ids)
    out: list[int] = []
    for _ in range(n_new):
        token = int(np.argmax(logits))  # the first index on ties, as llama.cpp's greedy sampler
        out.append(token)
        if model.tokenizer.is_eog(token):
            break
        logits = ctx.eval([token])
    return out


def check_prompt(model, case: dict) -> None:
    tok = model.tokenizer
    call = case.get("tokenize_call", {})
    text = case.get("rendered", case.get("text"))
    special = call.get("special", "rendered" in case)
    add_bos = call.get("add_bos", tok.add_bos)
    assert tok.encode(text, add_special=add_bos, parse_special=special) == case["prompt_ids"]
    ours = greedy(model, case["prompt_ids"], len(case["generated_ids"]))
    theirs, gaps = case["generated_ids"], case["top1_top2_logit_gap"]
    i = first_divergence(ours, theirs)
    if i is not None:
        assert gaps[i] < NEAR_TIE, (
            f"diverged at step {i} where llama.cpp's top-2 gap is {gaps[i]:.3f}: "
            f"ours {tok.decode(ours)!r} vs llama.cpp {tok.decode(theirs)!r}"
        )


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return load(smollm2_path, device=DEVICE, n_gpu_layers=NGL)


@pytest.fixture(scope="module")
def gemma3(gemma3_path):
    return load(gemma3_path, device=DEVICE, n_gpu_layers=NGL)


def _cases(path: Path) -> list[dict]:
    return json.loads(path.read_text())["prompts"] if path.exists() else []


SMOLLM2_CASES = _cases(REFS / "smollm2-135m" / "greedy.json")
GEMMA3_CASES = _cases(FIXTURES / "gemma3-270m-greedy.json")


def test_fixtures_present():
    assert len(SMOLLM2_CASES) == 8, f"llama.cpp fixtures missing under {REFS}"
    assert len(GEMMA3_CASES) == 8


@pytest.mark.parametrize("index", range(len(SMOLLM2_CASES)))
def test_smollm2_greedy_matches_llama_cpp(smollm2, index):
    check_prompt(smollm2, SMOLLM2_CASES[index])


@pytest.mark.parametrize("index", range(len(GEMMA3_CASES)))
def test_gemma3_greedy_matches_llama_cpp(gemma3, index):
    check_prompt(gemma3, GEMMA3_CASES[index])
