"""/infill: the fill-in-the-middle prompt from the vocabulary's FIM tokens, bad input a 400,
and a model without FIM tokens (SmolLM2) a 501."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from llmrt.server.infill import SNIPPET, infill_prompt
from llmrt.server.state import ApiError

PRE, SUF, MID, REP, SEP, BOS = 900, 901, 902, 903, 904, 1


def fake_tokenizer(rep_sep: bool = True, add_bos: bool = False):
    """One token per character (its code), and FIM tokens as a GGUF would give them."""
    special = {"fim_pre": PRE, "fim_suf": SUF, "fim_mid": MID}
    special.update(fim_rep=REP if rep_sep else None, fim_sep=SEP if rep_sep else None)
    return SimpleNamespace(
        vocab=SimpleNamespace(special=special), bos_id=BOS, add_bos=add_bos,
        encode=lambda text, add_special=False, parse_special=False: [ord(c) for c in text],
    )  # fmt: skip


def codes(text: str) -> list[int]:
    return [ord(c) for c in text]


def test_repo_level_prompt():
    got = infill_prompt(fake_tokenizer(), "ab", "yz", "m", [("f.h", "T")], n_batch=64,
                        n_ctx=512, n_predict=16)  # fmt: skip
    head = [REP, *codes("myproject\n"), SEP, *codes("f.h\n"), *codes("T")]
    want = [*head, SEP, *codes("filename\n"), PRE, *codes("abm"), SUF, *codes("yz"), MID]
    assert got == want


def test_without_separators_and_with_bos():
    got = infill_prompt(fake_tokenizer(rep_sep=False, add_bos=True), "ab", "", "", [("x", "T")],
                        n_batch=64, n_ctx=512, n_predict=16)  # fmt: skip
    assert got == [*codes(SNIPPET), *codes("T"), BOS, PRE, *codes("ab"), SUF, MID]


def test_long_prefix_and_suffix_are_cut_to_the_batch():
    got = infill_prompt(fake_tokenizer(rep_sep=False), "p" * 100 + "END", "BEGIN" + "s" * 100,
                        "", [], n_batch=16, n_ctx=512, n_predict=16)  # fmt: skip
    # the prefix keeps its last 3/4 batch, the suffix its first quarter less FIM_SUF and MID
    assert got == [PRE, *codes("p" * 9 + "END"), SUF, *codes("BE"), MID]


def test_a_model_without_fim_tokens():
    tok = fake_tokenizer()
    tok.vocab.special["fim_mid"] = None
    with pytest.raises(ApiError) as err:
        infill_prompt(tok, "a", "b", "", [], n_batch=64, n_ctx=512, n_predict=4)
    assert err.value.code == 501 and "mid" in err.value.message


@pytest.mark.parametrize(
    "extra", [{}, {"filename": "ok"}, {"filename": 123}, {"filename": 123, "text": "abc"}]
)
def test_bad_input_extra_is_400(client, extra):
    body = {"input_prefix": "int main() {\n", "input_suffix": "}\n", "input_extra": [extra]}
    r = client.post("/infill", json=body)
    assert r.status_code == 400 and "input_extra" in r.json()["error"]["message"]


def test_smollm2_has_no_fim_tokens(client):
    r = client.post("/infill", json={"input_prefix": "def f(", "input_suffix": "):\n"})
    assert r.status_code == 501 and "infill is not supported" in r.json()["error"]["message"]
