"""`llmrt run -cnv`: a chat over stdin that re-evaluates only what the KV cache does not hold."""

from __future__ import annotations

import re
import shutil
import subprocess

import pexpect
import pytest

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


def chat(smollm2_path, *args: str) -> pexpect.spawn:
    """`llmrt run -cnv` on a terminal (pexpect's pty), so that Ctrl-C and Ctrl-D are keys."""
    child = pexpect.spawn(LLMRT, ["run", "-m", str(smollm2_path), "-cnv", "-c", "1024",
                                  "--temp", "0", *args],
                          encoding="utf-8", timeout=300)  # fmt: skip
    child.expect("/exit or /bye")  # the banner says how to leave and how to interrupt
    child.expect("Ctrl-C stops a reply")
    child.expect("\n> ")
    return child


@pytest.mark.parametrize("leave", ["/exit", "/bye", "ctrl-d", "ctrl-c"])
def test_chat_leaves_with_timings(smollm2_path, leave):
    child = chat(smollm2_path, "-n", "4")
    if leave.startswith("/"):
        child.sendline(leave)
    elif leave == "ctrl-d":
        child.sendeof()
    else:
        child.sendintr()  # at the prompt, Ctrl-C quits
    child.expect("total time =")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "Traceback" not in child.before


def test_ctrl_c_stops_a_reply_and_the_chat_goes_on(smollm2_path):
    child = chat(smollm2_path, "-n", "400")
    child.sendline("Write a long story about a dragon who learns to cook.")
    child.expect(r"cook\.\r\n")  # the terminal's echo of the line
    child.expect(r"\w{3}")  # the reply has started
    child.sendintr()
    child.expect(r"\[stopped\]")
    child.expect("\n> ")  # back at the prompt, with the conversation kept
    child.sendline("What was the story about? One word.")
    child.expect("\n> ")
    child.sendline("/exit")
    child.expect("total time =")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
