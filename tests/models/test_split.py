"""A model split over several devices of different backends (`--device cpu,vulkan:0,opencl:0`),
the layers in contiguous ranges and the values between them passed through the device contract:
it must generate what one device generates, and llama.cpp's tokens up to the first near-tie."""

from __future__ import annotations

import pytest
from test_greedy import NEAR_TIE, SMOLLM2_CASES, check_prompt, first_divergence, greedy

from llmrt.cli import main
from llmrt.engine import load
from llmrt.errors import LlmrtError

SPLIT = "cpu,vulkan:0,opencl:0"


@pytest.fixture(scope="module")
def split_smollm2(smollm2_path):
    return load(smollm2_path, device=SPLIT, tensor_split=[2, 1, 1])


def test_the_layers_go_to_each_device_in_turn(split_smollm2):
    ids = [d.id for d in split_smollm2.layers]
    # 2:1:1 of the 30 layers and the output, by index as llama.cpp: 0-15, 16-23, 24-29 + output
    assert ids == ["cpu:0"] * 16 + ["vulkan:0"] * 8 + ["opencl:0"] * 7
    assert [d.id for d in split_smollm2.decode_segments] == ["cpu:0", "vulkan:0", "opencl:0"]


@pytest.mark.parametrize("index", [0, 3, 7])
def test_a_split_model_generates_llama_cpp_s_tokens(split_smollm2, index):
    check_prompt(split_smollm2, SMOLLM2_CASES[index])


@pytest.mark.parametrize("index", [1, 4])
def test_a_split_model_generates_the_single_device_tokens(split_smollm2, smollm2_path, index):
    """Identical up to the first step where the top two logits are within NEAR_TIE (the split
    rounds three backends' ways; the cpu and llama.cpp themselves part at such steps)."""
    case = SMOLLM2_CASES[index]
    n = len(case["generated_ids"])
    ours = greedy(split_smollm2, case["prompt_ids"], n)
    alone = greedy(load(smollm2_path, device="cpu"), case["prompt_ids"], n)
    i = first_divergence(ours, alone)
    assert i is None or case["top1_top2_logit_gap"][i] < NEAR_TIE, (i, ours, alone)


def run(capsys, *args: str) -> tuple[str, str]:
    try:
        main(["run", "-p", "The capital of France is", "-n", "12", "--temp", "0", *args])
    except SystemExit as exc:
        assert not exc.code
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_llmrt_run_splits_over_the_devices_it_is_given(smollm2_path, capsys):
    one, _ = run(capsys, "-m", str(smollm2_path), "--device", "cpu")
    split, err = run(capsys, "-m", str(smollm2_path), "--device", "vulkan:0,opencl:0,cpu",
                     "-ts", "1,1,2", "--verbose")  # fmt: skip
    assert split == one
    assert (
        "layers 0-7 on vulkan:0, layers 8-15 on opencl:0, layers 16-29 and the output on cpu:0"
        in err
    )
    assert "graph splits = 3 (the decode graph: 1 on vulkan:0, 1 on opencl:0, 1 on cpu:0)" in err


def test_bad_split_flags_are_one_line_errors(smollm2_path, capsys):
    two = ["--device", "cpu,vulkan:0"]
    for args, why in ((["--device", "cpu,cpu"], "listed twice"),
                      ([*two, "-ts", "1,x"], 'argument "-ts"'),
                      ([*two, "-ts", "1,1,1"], "takes 2 proportions")):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            main(["run", "-m", str(smollm2_path), "-p", "hi", "-n", "1", *args])
        assert exc.value.code
        err = capsys.readouterr().err
        assert why in err and len(err.strip().splitlines()) == 1, err


def test_split_mode_none_runs_the_main_device_alone(smollm2_path):
    model = load(smollm2_path, device="cpu,opencl:0", split_mode="none", main_gpu=1)
    assert [d.id for d in model.devices] == ["opencl:0"]
    assert {d.id for d in model.layers} == {"opencl:0"}
    for kw, why in (({"split_mode": "row"}, "row is not supported"),
                    ({"main_gpu": 2}, "--main-gpu 2 names no device: 2 given")):  # fmt: skip
        with pytest.raises(LlmrtError, match=why):
            load(smollm2_path, device="cpu,opencl:0", **kw)


def test_llmrt_serve_splits_over_the_devices_it_is_given(smollm2_path):
    import json
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "llmrt", "serve", "-m", str(smollm2_path), "--device",
         "cpu,opencl:0", "-ts", "1,1", "-c", "512", "--port", str(port), "--verbose"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        body = {"prompt": "The capital of France is", "n_predict": 12, "temperature": 0}
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/completion", json.dumps(body).encode()
        )
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    content = json.loads(r.read())["content"]
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "serve did not come up"
                time.sleep(0.5)
    finally:
        server.terminate()
        err = server.communicate(timeout=60)[1]
    cpu = load(smollm2_path, device="cpu")
    alone = "".join(cpu.generate("The capital of France is", n_predict=12, temperature=0))
    assert content == alone
    assert "layers 0-15 on cpu:0, layers 16-29 and the output on opencl:0" in err
