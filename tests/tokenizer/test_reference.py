"""Token ids and detokenized text equal llama.cpp's (llama-cpp-python 0.3.36) on both models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmrt.tokenizer import Tokenizer

FIXTURES = Path(__file__).parent / "fixtures"


def load_fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def _check_case(tok: Tokenizer, text: str, result: dict[str, Any]) -> None:
    ids = tok.encode(text, add_special=result["add_bos"], parse_special=result["special"])
    assert ids == result["ids"]
    assert tok.decode(result["ids"]) == result["detok"]
    assert tok.decode(result["ids"], unparse_special=True) == result["detok_special"]
    assert [tok.token_to_piece(i).hex() for i in result["ids"]] == result["pieces_hex"]


def test_smollm2_shared_refs(smollm2_tok: Tokenizer, refs_dir) -> None:
    ref = json.loads((refs_dir / "smollm2-135m" / "tokenize.json").read_text())
    assert len(ref["cases"]) == 43
    for case in ref["cases"]:
        assert len(case["results"]) == 4
        for result in case["results"]:
            _check_case(smollm2_tok, case["text"], result)


@pytest.mark.parametrize(
    ("model", "fixture"),
    [("smollm2_tok", "smollm2-135m-tokenize.json"), ("gemma3_tok", "gemma3-270m-tokenize.json")],
)
def test_own_reference(model: str, fixture: str, request: pytest.FixtureRequest) -> None:
    tok = request.getfixturevalue(model)
    ref = load_fixture(fixture)
    for case in ref["cases"]:
        for result in case["results"]:
            _check_case(tok, case["text"], result)


@pytest.mark.parametrize(
    ("model", "fixture"),
    [("smollm2_tok", "smollm2-135m-tokenize.json"), ("gemma3_tok", "gemma3-270m-tokenize.json")],
)
def test_special_ids(model: str, fixture: str, request: pytest.FixtureRequest) -> None:
    tok = request.getfixturevalue(model)
    m = load_fixture(fixture)["model"]
    assert tok.n_vocab == m["n_vocab"]
    assert (tok.bos_id, tok.eos_id, tok.eot_id) == (m["bos"], m["eos"], m["eot"])
    assert (tok.add_bos, tok.add_eos) == (m["add_bos"], m["add_eos"])
    assert sorted(tok.eog_ids) == m["eog"]


def test_gemma_fixture_covers_enough(gemma3_tok: Tokenizer) -> None:
    cases = load_fixture("gemma3-270m-tokenize.json")["cases"]
    assert len(cases) >= 40
    # the set exercises byte fallback and special-token parsing
    ids = {i for c in cases for r in c["results"] for i in r["ids"]}
    assert any(gemma3_tok.token_text(i).startswith("<0x") for i in ids)
    assert gemma3_tok.encode("<start_of_turn>", parse_special=True) == [2, 105]


def test_greedy_prompts_tokenize_as_recorded(smollm2_tok: Tokenizer, refs_dir) -> None:
    ref = json.loads((refs_dir / "smollm2-135m" / "greedy.json").read_text())
    for prompt in ref["prompts"]:
        call = prompt.get("tokenize_call", {})
        if "rendered" in prompt:
            text = smollm2_tok.apply_chat_template(prompt["messages"])
            assert text == prompt["rendered"]
            ids = smollm2_tok.encode(text, add_special=False, parse_special=True)
        else:
            ids = smollm2_tok.encode(prompt["text"], add_special=False, parse_special=False)
        assert ids == prompt["prompt_ids"], call
        generated = prompt["generated_ids"]
        assert smollm2_tok.decode(generated) == prompt["generated_text"]
        assert (
            smollm2_tok.decode(generated, unparse_special=True) == prompt["generated_text_special"]
        )
        assert (prompt["stop"] == "eog") == smollm2_tok.is_eog(generated[-1])
