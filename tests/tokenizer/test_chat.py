"""Chat templates render as transformers' apply_chat_template renders them."""

from __future__ import annotations

import pytest

from llmrt.tokenizer import ChatTemplateError, Tokenizer, render_chat_template
from llmrt.tokenizer.chat import CHATML_TEMPLATE, GEMMA_TEMPLATE

CONVERSATIONS = [
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi there!"},
        {"role": "assistant", "content": "  Hello! How can I help?\n"},
        {"role": "user", "content": "A joke about 🐍, naïve café and <b>tags</b>, please."},
    ],
    [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6"},
        {"role": "user", "content": "Thanks\n\n  bye"},
    ],
]


def _transformers_render(tok: Tokenizer, messages: list, add_generation_prompt: bool) -> str:
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    # a tokenizer object with no vocabulary: only its chat-template code path is used (no hub)
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer(tokenizers.models.BPE()),
        bos_token=tok.token_text(tok.bos_id),
        eos_token=tok.token_text(tok.eos_id),
    )
    hf.chat_template = tok.chat_template
    return hf.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


@pytest.mark.parametrize("model", ["smollm2_tok", "gemma3_tok"])
@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_matches_transformers(
    model: str, conversation: int, add_generation_prompt: bool, request: pytest.FixtureRequest
) -> None:
    tok: Tokenizer = request.getfixturevalue(model)
    messages = CONVERSATIONS[conversation]
    expected = _transformers_render(tok, messages, add_generation_prompt)
    assert tok.apply_chat_template(messages, add_generation_prompt) == expected


def test_template_sources(smollm2_tok: Tokenizer, gemma3_tok: Tokenizer) -> None:
    assert smollm2_tok.chat_template.startswith("{% for message in messages %}")
    # the Gemma 3 GGUF carries no template: its family's is used rather than ChatML
    assert gemma3_tok.chat_template == GEMMA_TEMPLATE
    out = gemma3_tok.apply_chat_template([{"role": "user", "content": " hi "}])
    assert out == "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    ids = gemma3_tok.encode(out, add_special=False, parse_special=True)
    assert ids[:2] == [2, 105]


def test_chatml_fallback() -> None:
    messages = [{"role": "user", "content": "hi"}]
    expected = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert render_chat_template(None, messages) == expected
    assert render_chat_template(CHATML_TEMPLATE, messages, add_generation_prompt=False) == (
        "<|im_start|>user\nhi<|im_end|>\n"
    )


def test_template_errors() -> None:
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        render_chat_template(
            GEMMA_TEMPLATE, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
        )
    with pytest.raises(ChatTemplateError, match="does not compile"):
        render_chat_template("{% for %}", [])


def test_template_helpers() -> None:
    template = (
        "{% for m in messages %}{% generation %}{{ m | tojson }}{% endgeneration %}"
        "{% if loop.first %}{% continue %}{% endif %}{% endfor %}{{ strftime_now('%Y') | length }}"
    )
    out = render_chat_template(template, [{"role": "user", "content": "é"}])
    assert out == '{"role": "user", "content": "é"}4'


def test_sandboxed() -> None:
    with pytest.raises(Exception, match="unsafe|not safely|access"):
        render_chat_template("{{ messages.__class__.__mro__ }}", [])
