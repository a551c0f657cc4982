"""`llmrt run -cnv`: a chat over stdin that re-evaluates only what the KV cache does not hold."""

from __future__ import annotations

import re
import shutil
import subprocess

from llmrt.tokenizer import Tokenizer

LLMRT = shutil.which("llmrt") or "llmrt"


def test_two_turn_chat_reuses_the_cache(smollm2_path):
    first, second = "What is the capital of France? Answer in one word.", "And Germany?"
    result = subprocess.run(
        [LLMRT, "run", "-m", str(smollm2_path), "-cnv", "-p", first, "-n", "12", "--temp", "0",
         "-c", "512"],
        input=second + "\n", capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout.split(">")[0]  # llama.cpp's greedy answer starts likewise
    assert result.stdout.count("> ") >= 1  # asked for the second turn
    tok = Tokenizer.from_gguf(smollm2_path)
    turn1 = tok.encode(tok.apply_chat_template([{"role": "user", "content": first}]),
                       parse_special=True)  # fmt: skip
    evaluated = int(re.search(r"prompt eval time =.*?/\s+(\d+) tokens", result.stderr).group(1))
    # the second turn evaluates its own few tokens plus the first reply's tail, not the whole chat
    assert len(turn1) < evaluated < 2 * len(turn1)
