"""`llmrt inspect`: the model facts, metadata and tensors of the real models; bad files end as one
line with exit code 1."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

LLMRT = shutil.which("llmrt") or "llmrt"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LLMRT, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("fixture", "facts"),
    [
        ("smollm2_path", {"architecture": "llama", "file_type": "MOSTLY_Q4_1",
                          "context_length": 8192, "tokenizer_model": "gpt2",
                          "tokenizer_pre": "smollm", "chat_template": True,
                          "vocab_size": 49152, "tensor_count": 272}),
        ("gemma3_path", {"architecture": "gemma3", "file_type": "MOSTLY_Q4_K_M",
                         "context_length": 32768, "tokenizer_model": "llama",
                         "tokenizer_pre": "default", "chat_template": False,
                         "vocab_size": 262144, "tensor_count": 236}),
    ],
)  # fmt: skip
def test_json(request, fixture, facts):
    path = request.getfixturevalue(fixture)
    result = run("inspect", str(path), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    s = doc["summary"]
    assert {k: s[k] for k in facts} == facts
    assert 100e6 < s["parameters"] < 300e6
    tokens = doc["metadata"]["tokenizer.ggml.tokens"]
    assert tokens["type"] == "ARRAY[STRING]"
    assert tokens["value"]["length"] == facts["vocab_size"] and len(tokens["value"]["first"]) == 5
    assert len(doc["tensors"]) == facts["tensor_count"]
    t = doc["tensors"][0]
    assert set(t) == {"name", "type", "shape", "bytes", "offset"}


def test_table(smollm2_path):
    result = run("inspect", str(smollm2_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for text in ("llama", "MOSTLY_Q4_1", "smollm", "token_embd.weight", "Q8_0", "ARRAY[STRING] ×"):
        assert text in out


def test_bad_files_are_one_line(tmp_path):
    result = run("inspect", str(tmp_path / "missing.gguf"))
    assert result.returncode == 2  # a bad argument, as in every command that takes a model
    assert result.stderr.strip().count("\n") == 0 and "model file not found" in result.stderr
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 16)
    result = run("inspect", str(bad))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("llmrt: error: ") and "at byte" in result.stderr
