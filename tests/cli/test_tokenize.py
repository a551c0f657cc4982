"""`llmrt tokenize`: llama-tokenize's output format and flags."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from llmrt.cli.tokenize import register
from llmrt.errors import LlmrtError


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:  # keeps "tokenize" a subcommand, as in the real app
        pass

    register(app)
    return app


def invoke(app: typer.Typer, *args: str) -> str:
    result = CliRunner().invoke(app, ["tokenize", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_pieces(app: typer.Typer, gemma3_path: Path) -> None:
    out = invoke(app, "-m", str(gemma3_path), "-p", "<start_of_turn>user Hi")
    assert out == (
        "     2 -> '<bos>'\n   105 -> '<start_of_turn>'\n  2364 -> 'user'\n 18428 -> ' Hi'\n"
    )


def test_ids_and_flags(app: typer.Typer, gemma3_path: Path) -> None:
    m = str(gemma3_path)
    assert invoke(app, "-m", m, "-p", "<start_of_turn>", "--ids") == "[2, 105]\n"
    assert invoke(app, "-m", m, "-p", "<start_of_turn>", "--ids", "--no-bos") == "[105]\n"
    out = invoke(app, "-m", m, "-p", "<eos>", "--ids", "--no-bos", "--no-parse-special")
    assert out == "[236820, 211827, 236813]\n"


def test_file_and_count(app: typer.Typer, smollm2_path: Path, tmp_path: Path) -> None:
    text = tmp_path / "prompt.txt"
    text.write_text("Hello world")
    out = invoke(app, "-m", str(smollm2_path), "-f", str(text), "--ids", "--show-count")
    assert out == "[19556, 905]\nTotal number of tokens: 2\n"


def test_byte_pieces_are_raw(app: typer.Typer, gemma3_path: Path) -> None:
    result = CliRunner().invoke(app, ["tokenize", "-m", str(gemma3_path), "-p", "\U000f0000"])
    assert result.stdout_bytes.endswith(b"   414 -> '\xb0'\n   366 -> '\x80'\n   366 -> '\x80'\n")


def test_user_errors(app: typer.Typer) -> None:
    with pytest.raises(LlmrtError, match="exactly one of"):
        CliRunner().invoke(app, ["tokenize", "-p", "x", "-f", "y"], catch_exceptions=False)
    with pytest.raises(LlmrtError, match="model file not found: nope"):
        CliRunner().invoke(app, ["tokenize", "-m", "nope", "-p", "x"], catch_exceptions=False)


@pytest.mark.skipif(shutil.which("llmrt") is None, reason="console script not installed")
def test_one_line_error() -> None:
    result = subprocess.run(
        ["llmrt", "tokenize", "-m", "/nonexistent.gguf", "-p", "x"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr == (
        "llmrt: error: model file not found: /nonexistent.gguf "
        "(nor a known model name: smollm2-135m, gemma3-270m)\n"
    )
