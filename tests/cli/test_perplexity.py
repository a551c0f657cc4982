"""`llmrt perplexity` against llama.cpp's own distributions over the same text and chunks
(tests/fixtures/refs/smollm2-135m/kld: llama-cpp-python 0.3.36, n_ctx 256, flash attention off),
and its KL-divergence mode."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess

import numpy as np
import pytest
from refs import REFS

LLMRT = shutil.which("llmrt") or "llmrt"
KLD = REFS / "smollm2-135m" / "kld"


def llmrt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LLMRT, "perplexity", *args], capture_output=True, text=True,
                          timeout=900)  # fmt: skip


def final_ppl(stdout: str) -> float:
    return float(re.search(r"Final estimate: PPL = ([\d.]+) \+/- [\d.]+", stdout).group(1))


def test_perplexity_is_llama_cpps_within_half_a_percent(smollm2_path):
    ref = np.load(KLD / "llama_cpp_fa0.npz")
    meta = json.loads(str(ref["meta"]))
    expected = math.exp(-float(ref["tgt_logp"].astype(np.float64).mean()))
    result = llmrt("-m", str(smollm2_path), "-f", str(KLD / "text.txt"), "-c",
                   str(meta["n_ctx"]), "--device", "cpu")  # fmt: skip
    assert result.returncode == 0, result.stderr
    # the running estimate after each of the 8 chunks, then the final one
    assert len(re.findall(r"\[\d+\][\d.]+,", result.stdout)) == meta["n_tokens"] // meta["n_ctx"]
    ppl = final_ppl(result.stdout)
    assert abs(ppl / expected - 1) < 0.005, (ppl, expected)


def test_gemma3_perplexity_is_llama_perplexitys_within_half_a_percent(gemma3_path):
    """llama-perplexity's own number on the same text and chunks (its run recorded in the
    fixture: the SmolLM2 line there equals the distributions above, 17.7340)."""
    ref = json.loads((REFS / "gemma3-270m" / "perplexity.json").read_text())
    expected = ref["models"][gemma3_path.name]
    result = llmrt("-m", str(gemma3_path), "-f", str(KLD / "text.txt"), "-c",
                   str(expected["n_ctx"]), "--device", "cpu")  # fmt: skip
    assert result.returncode == 0, result.stderr
    ppl = final_ppl(result.stdout)
    assert abs(ppl / expected["ppl"] - 1) < 0.005, (ppl, expected["ppl"])


def test_kl_divergence_against_a_saved_base(smollm2_path, tmp_path):
    base = tmp_path / "base.npz"
    common = ("-m", str(smollm2_path), "-f", str(KLD / "text.txt"), "-c", "256", "--chunks", "2",
              "--device", "cpu", "--kl-divergence-base", str(base))  # fmt: skip
    saved = llmrt(*common)
    assert saved.returncode == 0, saved.stderr
    assert base.is_file()
    same = llmrt(*common, "--kl-divergence")
    assert same.returncode == 0, same.stderr
    assert final_ppl(same.stdout) == final_ppl(saved.stdout)
    mean_kld = float(re.search(r"Mean    KLD:\s+([\d.]+)", same.stdout).group(1))
    assert mean_kld < 1e-5  # the same run: only the stored rows' uint16 rounding
    assert "Same top p: 100.000" in same.stdout
    other = llmrt(*common, "--kl-divergence", "-ctk", "f32")  # an f32 KV cache instead of f16
    assert other.returncode == 0, other.stderr
    mean_kld = float(re.search(r"Mean    KLD:\s+([\d.]+)", other.stdout).group(1))
    ratio = float(re.search(r"Mean PPL\(Q\)/PPL\(base\)\s+:\s+([\d.]+)", other.stdout).group(1))
    assert 0 < mean_kld < 0.02 and abs(ratio - 1) < 0.01


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-c", "4096"], "perplexity with a context of 4096 needs at least 8192"),
        (["--kl-divergence"], "--kl-divergence needs --kl-divergence-base"),
        (["-c", "4"], 'error while handling argument "-c"'),
        (["--chunks", "0"], 'error while handling argument "--chunks"'),
    ],
)
def test_bad_requests_are_one_line(smollm2_path, args, message):
    result = llmrt("-m", str(smollm2_path), "-f", str(KLD / "text.txt"), "--device", "cpu", *args)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]


def test_a_base_of_another_text_is_refused(smollm2_path, tmp_path):
    text = tmp_path / "other.txt"
    text.write_text("Another text altogether. " * 200)
    base = tmp_path / "base.npz"
    made = llmrt("-m", str(smollm2_path), "-f", str(text), "-c", "64", "--chunks", "1",
                 "--device", "cpu", "--kl-divergence-base", str(base))  # fmt: skip
    assert made.returncode == 0, made.stderr
    result = llmrt("-m", str(smollm2_path), "-f", str(KLD / "text.txt"), "--device", "cpu",
                   "--kl-divergence-base", str(base), "--kl-divergence")  # fmt: skip
    assert result.returncode == 1
    assert "tokenizes the text differently" in result.stderr.strip().splitlines()[-1]
