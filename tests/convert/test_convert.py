"""`llmrt convert` on tiny random checkpoints made here with transformers (torch on the CPU):
the converted file's logits against transformers' own, its tokenization against `tokenizers`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from llmrt.engine import load  # noqa: E402
from llmrt.gguf import GGUFReader  # noqa: E402

LLMRT = shutil.which("llmrt") or "llmrt"
CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 4,
    "Hello world! How are you today? I'm fine, thanks; and you?",
    "Numbers like 1234567 and 3.14159 appear, as do emails like a.b@example.com.",
    "Ünïcödé wörds, 日本語のテキスト, and emoji 🙂🙃 mixed with code: def f(x): return x**2",
    "  leading spaces,\ttabs,\nnew lines\n\nand trailing spaces   ",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def write_tokenizer(folder: Path, split: str | None = None) -> int:
    """A byte-level BPE trained on CORPUS, saved as transformers does: GPT-2's pre-tokenizer, or
    a `split` regex of our own before a byte-level step that splits no further."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split is not None:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])  # fmt: skip
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(CORPUS * 20, trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )  # fmt: skip
    fast.chat_template = "{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}"
    fast.save_pretrained(folder)
    return tok.get_vocab_size()


def write_checkpoint(folder: Path, arch: str) -> Path:
    n_vocab = write_tokenizer(folder)
    common = dict(vocab_size=n_vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-5, rope_theta=50000.0, tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    if arch == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    with torch.no_grad():  # random norms and biases, so that a mistake in either shows
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.rand_like(p) * 0.5 + 0.75 if "norm" in name else torch.randn_like(p))
    model.eval()
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def write_pytorch_bin(model, folder: Path) -> None:
    """The older checkpoint format (transformers 5 writes safetensors whatever it is asked)."""
    folder.mkdir(exist_ok=True)
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink(missing_ok=True)


def hf_logits(folder: Path, ids: list[int]) -> np.ndarray:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_f32_logits_equal_transformers(tmp_path, arch):
    folder = write_checkpoint(tmp_path / arch, arch)
    out = tmp_path / f"{arch}.gguf"
    result = subprocess.run([LLMRT, "convert", str(folder), "--outfile", str(out), "--outtype",
                             "f32"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    model = load(out, device="cpu")
    ids = model.tokenize(CORPUS[0] + CORPUS[1])[:40]
    ours = model.context(n_ctx=64, kv_type="f32").eval(ids, all_logits=True)
    theirs = hf_logits(folder, ids)
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()


@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
def test_other_outtypes_within_their_rounding(tmp_path, outtype):
    folder = write_checkpoint(tmp_path / "llama", "llama")
    result = subprocess.run([LLMRT, "convert", "--model", str(folder), "--outfile",
                             str(tmp_path / "m.gguf"), "--outtype", outtype],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    reader = GGUFReader(tmp_path / "m.gguf")
    types = {t.name: t.type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == outtype.upper()
    assert types["blk.0.attn_norm.weight"] == "F32"  # 1-D tensors stay f32, as llama.cpp's
    model = load(tmp_path / "m.gguf", device="cpu")
    ids = model.tokenize(CORPUS[2])[:32]
    ours = model.context(n_ctx=64, kv_type="f32").eval(ids, all_logits=True)
    theirs = hf_logits(folder, ids)
    tolerance = {"f16": 5e-3, "bf16": 3e-2, "q8_0": 3e-2}[outtype]
    assert np.abs(ours - theirs).max() <= tolerance * np.abs(theirs).max()


def test_tokenization_equals_tokenizers(tmp_path):
    folder = write_checkpoint(tmp_path / "llama", "llama")
    out = tmp_path / "v.gguf"
    args = [LLMRT, "convert", str(folder), "--outfile", str(out), "--vocab-only"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    from llmrt.tokenizer import Tokenizer

    ours = Tokenizer.from_gguf(out)
    theirs = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    md = GGUFReader(out).metadata
    assert md["tokenizer.ggml.pre"] == "gpt-2"
    assert md["tokenizer.ggml.bos_token_id"] == theirs.token_to_id("<|im_start|>")
    texts = [*CORPUS, "unseen: Zebra-crossing 42!!", "<|im_start|>hi<|im_end|>", ""]
    for text in texts:
        expected = theirs.encode(text, add_special_tokens=False).ids
        assert ours.encode(text, add_special=False, parse_special=True) == expected, text
    assert "<|im_start|>" in md["tokenizer.chat_template"]


def test_a_pre_tokenizer_llama_cpp_does_not_know_travels_as_its_rules(tmp_path):
    """No update script for a new tokenizer: its split rules go into the file and llmrt runs
    them (llama.cpp, which knows pre-tokenizers only by name, refuses such a file)."""
    folder = tmp_path / "odd"
    folder.mkdir()
    split = r"\p{L}+|\p{N}{1,2}|[^\s\p{L}\p{N}]+|\s+"
    n_vocab = write_tokenizer(folder, split=split)
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "vocab_size": n_vocab, "hidden_size": 64,
        "intermediate_size": 96, "num_hidden_layers": 1, "num_attention_heads": 4,
    }))  # fmt: skip
    out = tmp_path / "odd.gguf"
    args = [LLMRT, "convert", str(folder), "--outfile", str(out), "--vocab-only"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    md = GGUFReader(out).metadata
    assert md["tokenizer.ggml.pre"] == "llmrt-split"
    assert list(md["llmrt.tokenizer.pre_patterns"]) == [split]
    from llmrt.tokenizer import Tokenizer

    ours = Tokenizer.from_gguf(out)
    theirs = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    for text in [*CORPUS, "abc123456 x1y22z333", "a  b\t\tc\n\n d"]:
        assert ours.encode(text, add_special=False) == theirs.encode(text).ids, text


def test_sharded_bin_and_bf16_checkpoints(tmp_path):
    """Shards named by model.safetensors.index.json, and pytorch_model.bin (read by torch with
    weights_only), give the file one safetensors gives; a bf16 checkpoint converts without
    torch's help (auto picks bf16, the bits carried as they are)."""
    single = write_checkpoint(tmp_path / "single", "llama")
    model = transformers.AutoModelForCausalLM.from_pretrained(single, torch_dtype=torch.float32)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    shutil.copy(single / "tokenizer.json", tmp_path / "sharded")
    shutil.copy(single / "tokenizer_config.json", tmp_path / "sharded")
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    write_pytorch_bin(model, tmp_path / "bin")
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(single / name, tmp_path / "bf16")
        shutil.copy(single / name, tmp_path / "bin")
    files = {}
    for name, outtype in (("single", "f32"), ("sharded", "f32"), ("bf16", "auto"), ("bin", "f32")):
        files[name] = tmp_path / f"{name}.gguf"
        args = [LLMRT, "convert", str(tmp_path / name), "--outfile", str(files[name]),
                "--outtype", outtype]  # fmt: skip
        result = subprocess.run(args, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    single_t = {t.name: np.asarray(t.data) for t in GGUFReader(files["single"]).tensors}
    sharded_t = {t.name: np.asarray(t.data) for t in GGUFReader(files["sharded"]).tensors}
    bin_t = {t.name: np.asarray(t.data) for t in GGUFReader(files["bin"]).tensors}
    assert single_t.keys() == sharded_t.keys() == bin_t.keys()
    assert all(np.array_equal(single_t[k], sharded_t[k]) for k in single_t)
    assert all(np.array_equal(single_t[k], bin_t[k]) for k in single_t)
    bf16 = {t.name: t for t in GGUFReader(files["bf16"]).tensors}
    assert bf16["blk.0.ffn_up.weight"].type.name == "BF16"
    stored = model.model.layers[0].mlp.up_proj.weight.detach().view(torch.int16).numpy()
    assert np.array_equal(np.asarray(bf16["blk.0.ffn_up.weight"].data).view(np.int16).ravel(),
                          stored.ravel())  # fmt: skip


def test_gemma3_with_a_sentencepiece_tokenizer(tmp_path):
    """Five sliding-window layers of 16 tokens and a global one, norms stored as 1 + w, a
    SentencePiece vocabulary: logits as transformers', ids as sentencepiece's."""
    import sentencepiece as spm
    from tiny_gemma import CORPUS as GEMMA_CORPUS
    from tiny_gemma import write_tiny_gemma

    folder = write_tiny_gemma(tmp_path / "gemma")
    out = tmp_path / "gemma.gguf"
    args = [LLMRT, "convert", str(folder), "--outfile", str(out), "--outtype", "f32"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    model = load(out, device="cpu")
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    for text in [
        *GEMMA_CORPUS,
        "  two  spaces\nnew line 42",
        "<start_of_turn>user hi<end_of_turn>",
    ]:
        assert model.tokenize(text, add_special=False, parse_special=True) == sp.encode(text)
    ids = model.tokenize(GEMMA_CORPUS[0])[:40]
    assert ids[0] == 2 and len(ids) > 16  # BOS, and more tokens than the sliding window
    ours = model.context(n_ctx=64, kv_type="f32").eval(ids, all_logits=True)
    theirs = hf_logits(folder, ids)
    # ggml's GELU (and so llmrt's) reads an f16 table: ~1e-3 from transformers' exact tanh GELU
    assert np.abs(ours - theirs).max() <= 2e-3 * np.abs(theirs).max()


def test_a_pytorch_checkpoint_without_torch_is_one_line(tmp_path):
    folder = write_checkpoint(tmp_path / "m", "llama")
    write_pytorch_bin(transformers.AutoModelForCausalLM.from_pretrained(folder), folder)
    args = ["convert", str(folder), "--outfile", str(tmp_path / "o.gguf")]
    hide_torch = f"import sys; sys.modules['torch']=None; from llmrt.cli import main; main({args})"
    result = subprocess.run([sys.executable, "-c", hide_torch], capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "reading it needs torch" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "o.gguf").exists()


def test_bad_folders_are_one_line(tmp_path):
    for args in (["convert", str(tmp_path)], ["convert"], ["convert", str(tmp_path / "nope")]):
        result = subprocess.run([LLMRT, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("llmrt: error:")
