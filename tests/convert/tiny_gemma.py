"""A tiny random Gemma 3 checkpoint with a SentencePiece tokenizer trained here, saved as
Hugging Face saves one (config.json, model.safetensors, tokenizer.model, tokenizer_config.json)."""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 4,
    "Hello world! How are you today? I'm fine, thanks; and you?",
    "Numbers like 1234567 and 3.14159 appear.",
    "Ünïcödé wörds, 日本語のテキスト, and emoji 🙂🙃",
]
TURN_TOKENS = ["<start_of_turn>", "<end_of_turn>"]


def write_tiny_gemma(folder: Path) -> Path:
    import sentencepiece as spm
    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    # Gemma's tokenizer: BPE with byte fallback, no dummy prefix, no normalization, digits split
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 50), model_prefix=str(folder / "tokenizer"),
        vocab_size=400, model_type="bpe", byte_fallback=True, pad_id=0, eos_id=1, bos_id=2,
        unk_id=3, add_dummy_prefix=False, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
        user_defined_symbols=TURN_TOKENS, minloglevel=2,
    )  # fmt: skip
    (folder / "tokenizer.vocab").unlink()
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    decoder = {str(sp.piece_to_id(t)): {"content": t, "special": True} for t in TURN_TOKENS}
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
        "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": decoder,
    }))  # fmt: skip
    config = transformers.Gemma3TextConfig(
        vocab_size=sp.vocab_size(), hidden_size=64, intermediate_size=96, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
        sliding_window=16, max_position_embeddings=512, rms_norm_eps=1e-6,
    )  # fmt: skip
    config.architectures = ["Gemma3ForCausalLM"]
    torch.manual_seed(0)
    model = transformers.Gemma3ForCausalLM(config)
    with torch.no_grad():  # random norms, so that a missing 1 + w shows
        for _, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.randn_like(p) * 0.3)
    model.save_pretrained(folder)
    return folder
