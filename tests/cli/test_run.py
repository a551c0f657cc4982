"""`llmrt run`, `llmrt bench` and `llmrt pull` as a user types them."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np

from llmrt.gguf import GGUFWriter

LLMRT = shutil.which("llmrt") or "llmrt"


def llmrt(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([LLMRT, *args], capture_output=True, text=True, timeout=timeout)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.startswith("llmrt: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_greedy_run_prints_llama_cpp_continuation_and_timings(smollm2_path):
    result = llmrt("run", "-m", str(smollm2_path), "-p", "The capital of France is", "-n", "8",
                   "--temp", "0", "-c", "256")  # fmt: skip
    assert result.returncode == 0, result.stderr
    # llama.cpp's greedy continuation (../shared/refs/smollm2-135m/greedy.json, prompt 1)
    assert result.stdout.startswith("The capital of France is Paris.")
    assert "prompt eval time =" in result.stderr and "tokens per second" in result.stderr
    assert "eval time =" in result.stderr and "/     8 runs" in result.stderr


def test_default_model_and_seeded_sampling_is_reproducible(smollm2_path):
    args = ("run", "-p", "Once upon a time", "-n", "12", "-s", "42", "-c", "128")
    first, second = llmrt(*args), llmrt(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and len(first.stdout) > len("Once upon a time")
    assert "smollm2-135m-instruct-q4_1.gguf" in first.stderr


def test_negative_n_predict_runs_until_the_context_is_full(smollm2_path):
    result = llmrt("run", "-m", str(smollm2_path), "-p", "1, 2, 3, 4,", "-n", "-1", "-c", "24",
                   "--temp", "0")  # fmt: skip
    assert result.returncode == 0, result.stderr
    # prompt and generated tokens fill all 24 cells of the context, then generation stops
    assert "/    24 tokens" in result.stderr


def test_bad_inputs_are_one_line_errors(tmp_path, smollm2_path):
    assert "model file not found" in one_error_line(llmrt("run", "-m", "nope.gguf", "-p", "x"))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 40)
    assert "bad GGUF file at byte" in one_error_line(llmrt("run", "-m", str(junk), "-p", "x"))
    odd = tmp_path / "odd.gguf"
    with GGUFWriter(odd) as w:
        w.add("general.architecture", "mamba9")
        w.add_tensor("x.weight", np.zeros(4, np.float32))
    line = one_error_line(llmrt("run", "-m", str(odd), "-p", "x"))
    assert "unsupported architecture 'mamba9'" in line and "gemma3" in line and "llama" in line
    long = "word " * 200
    line = one_error_line(llmrt("run", "-m", str(smollm2_path), "-p", long, "-c", "64"))
    assert "more than the context holds" in line
    line = one_error_line(llmrt("run", "-m", str(smollm2_path), "-p", "x", "--top-p", "2"))
    assert "top_p" in line
    bad_flag = llmrt("run", "--n-predict", "many")
    assert bad_flag.returncode == 2 and "Traceback" not in bad_flag.stderr


def test_bench_prints_llama_bench_rows(tiny_gguf_with_vocab):
    result = llmrt("bench", "-m", str(tiny_gguf_with_vocab), "-p", "32", "-n", "4", "-r", "2",
                   "-o", "json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["test"] for r in rows] == ["pp32", "tg4"]
    for row in rows:
        assert row["avg_ts"] > 0 and len(row["samples_ts"]) == 2 and row["backend"] == "cpu:0"
    table = llmrt("bench", "-m", str(tiny_gguf_with_vocab), "-p", "16", "-n", "2", "-r", "1")
    assert table.returncode == 0, table.stderr
    assert "| model | size | params | backend | ngl | test | t/s |" in table.stdout
    assert "| pp16 |" in table.stdout and "| tg2 |" in table.stdout


def test_pull_lists_known_models():
    result = llmrt("pull", "--list")
    assert result.returncode == 0
    assert "smollm2-135m" in result.stdout and "gemma3-270m" in result.stdout
    assert "unknown model 'nope'" in one_error_line(llmrt("pull", "nope"))
