"""`llmrt run`, `llmrt bench` and `llmrt pull` as a user types them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

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
    # 8 tokens sampled, 7 evaluated: nothing reads the logits after the last one (as llama.cpp)
    assert "eval time =" in result.stderr and "/     7 runs" in result.stderr


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
    too_long = llmrt("run", "-m", str(smollm2_path), "-p", long, "-c", "64")
    assert "more than the context holds" in one_error_line(too_long)
    assert too_long.stdout == ""  # the prompt is not echoed before its error
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


def test_bench_lists_and_depth_as_llama_bench(tiny_gguf_with_vocab):
    result = llmrt("bench", "-m", str(tiny_gguf_with_vocab), "-p", "8,16", "-n", "2",
                   "-d", "0,40", "-r", "1", "-o", "json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    names = ["pp8", "pp16", "tg2", "pp8 @ d40", "pp16 @ d40", "tg2 @ d40"]
    assert [r["test"] for r in rows] == names
    assert [r["n_depth"] for r in rows] == [0, 0, 0, 40, 40, 40]
    assert '"-d": invalid value 4k (token counts >= 0' in one_error_line(
        llmrt("bench", "-m", str(tiny_gguf_with_vocab), "-d", "4k")
    )


def test_bench_depth_is_in_the_context_of_every_repetition(tiny_gguf_with_vocab):
    from llmrt.cli.bench import _fill, _run_test
    from llmrt.engine import load

    model = load(tiny_gguf_with_vocab, device="cpu")
    ctx = model.context(n_ctx=128)
    _fill(ctx, model.hp.n_vocab, 40)
    for _ in range(3):
        _run_test(ctx, model.hp.n_vocab, 8, 2, 40)
        assert ctx.seq_len() == 40 + 8 + 2


def test_pull_lists_known_models():
    result = llmrt("pull", "--list")
    assert result.returncode == 0
    assert "smollm2-135m" in result.stdout and "gemma3-270m" in result.stdout
    assert "unknown model 'nope'" in one_error_line(llmrt("pull", "nope"))


def prompt_eval_tokens(stderr: str) -> int:
    return int(re.search(r"prompt eval time =.*?/\s+(\d+) tokens", stderr).group(1))


def test_prompt_longer_than_a_ubatch_gives_the_one_ubatch_tokens(smollm2_path, tmp_path):
    prompt = tmp_path / "p600.txt"
    prompt.write_text("The quick brown fox jumps over the lazy dog. " * 60)
    args = ("run", "-m", str(smollm2_path), "-f", str(prompt), "-n", "2", "--temp", "0",
            "-c", "1024", "--no-display-prompt")  # fmt: skip
    split = llmrt(*args)  # the default -ub 512: two ubatches, the first wanting no logits
    assert split.returncode == 0, split.stderr
    assert prompt_eval_tokens(split.stderr) > 512
    whole = llmrt(*args, "-ub", "1024")
    assert whole.returncode == 0, whole.stderr
    assert split.stdout == whole.stdout and split.stdout.strip()


def test_gemma_prompt_over_several_small_ubatches(gemma3_path, tmp_path):
    prompt = tmp_path / "p.txt"
    prompt.write_text("Once upon a time, in a land far away, there lived a king. " * 8)
    args = ("run", "-m", str(gemma3_path), "-f", str(prompt), "-n", "2", "--temp", "0",
            "-c", "256", "--no-display-prompt")  # fmt: skip
    split, whole = llmrt(*args, "-ub", "32"), llmrt(*args, "-ub", "256")
    assert split.returncode == 0, split.stderr
    assert prompt_eval_tokens(split.stderr) > 3 * 32
    assert split.stdout == whole.stdout


def test_bench_prompt_longer_than_a_ubatch(tiny_gguf_with_vocab):
    result = llmrt("bench", "-m", str(tiny_gguf_with_vocab), "-p", "600", "-n", "0", "-r", "1",
                   "-o", "json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [r["test"] for r in json.loads(result.stdout)] == ["pp600"]


def test_context_too_large_for_memory_says_which_fits(smollm2_path):
    line = one_error_line(llmrt("run", "-m", str(smollm2_path), "-p", "hi", "-c", "100000000"))
    fit = int(re.search(r"-c (\d+) would fit", line).group(1))
    assert "not enough memory on cpu:0" in line and "GiB is free" in line
    assert 0 < fit < 100_000_000


@pytest.mark.parametrize(
    "flag, value",
    [("-n", "-5"), ("-c", "-5"), ("-ngl", "-7"), ("--top-k", "-3"), ("-ub", "0"), ("-b", "0"),
     ("-t", "-4")],
)  # fmt: skip
def test_nonsensical_values_are_rejected_before_loading(flag, value):
    result = llmrt("run", "-m", "does-not-exist.gguf", "-p", "hi", flag, value)
    line = one_error_line(result)
    assert result.returncode == 2
    assert f'error while handling argument "{flag}": invalid value {value}' in line


def test_temperature_below_zero_is_greedy_and_one_token_prompt_is_prompt_eval(smollm2_path):
    args = ("run", "-m", str(smollm2_path), "-p", "The capital of France is", "-n", "3", "-c", "64")
    greedy = llmrt(*args, "--temp", "0")
    below = llmrt(*args, "--temp", "-1", "-s", "7")
    assert below.returncode == 0, below.stderr
    assert below.stdout == greedy.stdout
    one = llmrt("run", "-m", str(smollm2_path), "-p", "hi", "-n", "2", "-c", "64")
    assert one.returncode == 0, one.stderr
    assert prompt_eval_tokens(one.stderr) == 1  # "hi" is one token; no BOS for SmolLM2
    assert re.search(r"\beval time =.*?/\s+1 runs", one.stderr)  # the last token is not evaluated


def test_threads_flag_is_honoured(smollm2_path):
    for n in ("1", "2"):
        result = llmrt("run", "-m", str(smollm2_path), "-p", "hi", "-n", "1", "-c", "64",
                       "--device", "cpu", "-t", n, "--verbose")  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert f", {n} CPU threads" in result.stderr


def test_directory_as_model_is_one_line(tmp_path):
    for command in (["run", "-p", "x", "-m"], ["bench", "-m"], ["tokenize", "-p", "x", "-m"],
                    ["inspect"]):  # fmt: skip
        line = one_error_line(llmrt(*command, str(tmp_path)))
        assert f"{tmp_path} is a directory" in line, command


def test_known_names_and_the_default_model_everywhere(smollm2_path, gemma3_path):
    assert llmrt("inspect", "smollm2-135m", "--json").returncode == 0
    ids = llmrt("tokenize", "-m", "smollm2-135m", "-p", "Hello world", "--ids")
    assert ids.returncode == 0 and ids.stdout.startswith("[")
    default = llmrt("bench", "-p", "0", "-n", "1", "-r", "1", "-o", "json")
    assert default.returncode == 0, default.stderr
    row = json.loads(default.stdout)[0]
    assert row["file"] == str(smollm2_path) and row["model"] == "llama 135M Q4_1"
    gemma = llmrt("bench", "-m", "gemma3-270m", "-p", "0", "-n", "1", "-r", "1", "-o", "json")
    assert gemma.returncode == 0, gemma.stderr
    # general.file_type, not the type of the largest tensor (Q6_K embedding, Q5_0/Q8_0 layers)
    assert json.loads(gemma.stdout)[0]["model"] == "gemma3 270M Q4_K_M"
