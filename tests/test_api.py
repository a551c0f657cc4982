"""The Python API a user imports: llmrt.load, generate, tokenize, detokenize."""

from __future__ import annotations

import json

from refs import REFS

import llmrt


def test_load_generate_tokenize(smollm2_path):
    model = llmrt.load(smollm2_path, device="cpu")
    case = json.loads((REFS / "smollm2-135m" / "greedy.json").read_text())["prompts"][0]
    assert model.tokenize(case["text"]) == case["prompt_ids"]
    text = "".join(model.generate(case["text"], n_predict=6, temperature=0, n_ctx=128))
    expected = model.detokenize(case["generated_ids"][:6])
    assert text == expected and text.startswith(" Paris")
    assert model.hp.n_layer == 30 and model.device.id == "cpu:0"


def test_known_model_names_and_lazy_tokenizer_export():
    assert llmrt.Tokenizer.__name__ == "Tokenizer"
    model = llmrt.load("smollm2-135m")
    assert model.path.name == "smollm2-135m-instruct-q4_1.gguf"
