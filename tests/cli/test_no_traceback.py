"""No command ends with a Python traceback: bad values get one line (typer's usage message for a
value of the wrong type), and an exception nobody expected is one line too, its traceback only
with --verbose."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llmrt.cli import main

BAD = {
    "run": [
        ["-n", "-5"], ["-c", "-5"], ["-ngl", "-7"], ["--top-k", "-3"], ["--top-p", "2"],
        ["--temp", "nan"], ["--repeat-penalty", "0"], ["-n", "many"], ["-ctk", "q9"],
        ["-f", "/nonexistent/prompt.txt"], ["-p", "x", "-f", "/etc/hostname"], ["-m", "{dir}"],
        ["-m", "{junk}"], ["-m", "nope.gguf"], ["--device", "nope"], ["--device", "cpu:9"],
        ["-c", "100000000"], ["-p", "{long}", "-c", "32"], ["-s"],
    ],
    "bench": [
        ["-p", "-1"], ["-r", "0"], ["-o", "xml"], ["-m", "nope.gguf"], ["-ub", "0"],
        ["-ngl", "-9"], ["--device", "nope"], ["-m", "{dir}"],
    ],
    "perplexity": [[], ["-f", "/nonexistent.txt"], ["-f", "{junk}"], ["-f", "/etc/hostname"],
                   ["-f", "/etc/hostname", "--kl-divergence"], ["-f", "{junk}", "-c", "-1"]],
    "convert": [[], ["{dir}"], ["/nonexistent"], ["{dir}", "--outtype", "q3"]],
    "quantize": [[], ["{junk}", "{dir}/o.gguf", "Q4_0"], ["/nonexistent", "{dir}/o.gguf", "Q4_0"],
                 ["{junk}", "{dir}/o.gguf", "Q9"], ["{junk}", "{junk}", "Q4_0"],
                 ["{junk}", "{dir}/o.gguf", "Q4_0", "--output-tensor-type", "zz"]],
    "pull": [["nope"], ["--bogus"]],
    "devices": [["--device", "nope"], ["--device", "cuda:99"]],
    "inspect": [["nope.gguf"], ["{dir}"], ["{junk}"]],
    "tokenize": [[], ["-m", "nope.gguf", "-p", "x"], ["-f", "/nonexistent", "-m", "{dir}"]],
    "serve": [["-np", "0"], ["--port", "70000"], ["-c", "-1"], ["-m", "nope.gguf"],
              ["--device", "nope"], ["-c", "100000000", "--port", "0"]],
}  # fmt: skip
CASES = [(command, args) for command, cases in BAD.items() for args in cases]


@pytest.fixture(scope="module")
def paths(tmp_path_factory, smollm2_path):
    base = tmp_path_factory.mktemp("bad")
    junk = base / "junk.gguf"
    junk.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 40)
    return {"dir": str(base), "junk": str(junk), "long": "word " * 100}


@pytest.mark.parametrize(("command", "args"), CASES, ids=[f"{c} {' '.join(a)}" for c, a in CASES])
def test_bad_values_end_in_one_line(paths, command, args):
    args = [a.format(**paths) for a in args]
    if command in ("run", "tokenize") and "-p" not in args and "-f" not in args and args:
        args += ["-p", "hi"]
    result = subprocess.run([sys.executable, "-m", "llmrt", command, *args], capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    # llmrt's one line, or typer's usage message for a flag it could not parse
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith(("llmrt: error:", "Error:"))]
    assert len(errors) == 1, result.stderr


@pytest.fixture()
def buggy_devices(monkeypatch):
    """`llmrt devices` with a bug inside: an exception no one expected."""
    import llmrt.cli.devices as devices_cli

    def broken(*args, **kwargs):
        raise KeyError("injected bug")

    monkeypatch.setattr(devices_cli, "registry", broken)


def test_an_unexpected_exception_is_one_line_and_verbose_shows_the_traceback(buggy_devices, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["devices"])
    err = capsys.readouterr().err
    assert exit_.value.code == 1
    assert err.strip().splitlines() == [
        "llmrt: error: KeyError: 'injected bug'; this is a bug (--verbose shows where)"
    ]
    with pytest.raises(SystemExit):
        main(["--verbose", "devices"])
    err = capsys.readouterr().err
    assert "Traceback" in err and "injected bug" in err.splitlines()[-1]
