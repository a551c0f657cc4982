"""`llmrt convert` against llama.cpp's own convert_hf_to_gguf.py (0c1e570, from the
llama-cpp-python 0.3.36 sdist, fetched from PyPI once into the user cache and never committed):
on the same checkpoint, the same tensors (names, shapes, types, bytes) and the same metadata.

The checkpoints: a tiny random Llama with SmolLM2's real tokenizer (rebuilt from the GGUF as a
`tokenizers` BPE with SmolLM2's pre-tokenizer: llama.cpp names pre-tokenizers from a table of
known tokenizers' hashes, so a BPE tokenizer of our own would be refused by its script), and a
tiny random Gemma 3 with a SentencePiece tokenizer trained here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import platformdirs
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")  # llama.cpp's Llama converter imports it first

from refs import REFS  # noqa: E402

from llmrt.gguf import GGUFReader  # noqa: E402

SDIST = "llama-cpp-python==0.3.36"
ROOT = "llama_cpp_python-0.3.36/vendor/llama.cpp"
LLMRT = [sys.executable, "-m", "llmrt"]


@pytest.fixture(scope="session")
def llama_cpp_convert() -> Path:
    """The folder holding llama.cpp's convert_hf_to_gguf.py, conversion/ and gguf-py/."""
    cache = Path(os.environ.get("LLMRT_CACHE", platformdirs.user_cache_dir("llmrt")))
    folder = cache / "llama-cpp-convert-0.3.36"
    if not (folder / "convert_hf_to_gguf.py").is_file():
        downloads = cache / "downloads"
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--no-binary", ":all:", SDIST, "-d", str(downloads)],
                       check=True, capture_output=True, timeout=600)  # fmt: skip
        with tarfile.open(next(downloads.glob("llama_cpp_python-0.3.36.tar.gz"))) as tar:
            keep = (f"{ROOT}/convert_hf_to_gguf.py", f"{ROOT}/conversion/", f"{ROOT}/gguf-py/")
            wanted = [m for m in tar.getmembers() if m.name.startswith(keep)]
            tar.extractall(downloads / "x", members=wanted, filter="data")
        (downloads / "x" / ROOT).rename(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, smollm2_path) -> Path:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    folder = tmp_path_factory.mktemp("smol-tiny")
    md = GGUFReader(smollm2_path).metadata
    tokens = list(md["tokenizer.ggml.tokens"])
    types = list(md["tokenizer.ggml.token_type"])
    merges = [tuple(m.split(" ", 1)) for m in md["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])  # fmt: skip
    tok.decoder = decoders.ByteLevel()
    control = [t for t, kind in zip(tokens, types, strict=True) if kind == 3]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
        unk_token="<|endoftext|>", pad_token="<|im_end|>",
    )  # fmt: skip
    fast.chat_template = md["tokenizer.chat_template"]
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokens), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rms_norm_eps=1e-5, tie_word_embeddings=True,
    )  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


def differences(theirs: Path, ours: Path) -> list[str]:
    a, b = GGUFReader(theirs), GGUFReader(ours)
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    found = [f"tensors only in one file: {sorted(set(ta) ^ set(tb))}"] if set(ta) != set(tb) else []
    for name in sorted(set(ta) & set(tb)):
        x, y = ta[name], tb[name]
        if (x.shape, x.type) != (y.shape, y.type):
            found.append(f"{name}: {x.shape} {x.type.name} vs {y.shape} {y.type.name}")
        elif not np.array_equal(np.asarray(x.data), np.asarray(y.data)):
            found.append(f"{name}: other bytes")
    for key in sorted(set(a.metadata) | set(b.metadata)):
        va, vb = a.metadata.get(key), b.metadata.get(key)
        if isinstance(va, str | int | float) or va is None or vb is None:
            same = va == vb
        else:  # arrays: lists or numpy arrays of the same values
            same = len(va) == len(vb) and all(x == y for x, y in zip(va, vb, strict=True))
        if not same:
            found.append(f"metadata {key}: {str(va)[:60]!r} vs {str(vb)[:60]!r}")
    return found


@pytest.fixture(scope="module")
def gemma_checkpoint(tmp_path_factory) -> Path:
    from tiny_gemma import write_tiny_gemma

    return write_tiny_gemma(tmp_path_factory.mktemp("gemma") / "gemma")


@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0"])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_same_file_as_llama_cpps_converter(llama_cpp_convert, request, tmp_path, arch, outtype):
    checkpoint = request.getfixturevalue("checkpoint" if arch == "llama" else "gemma_checkpoint")
    theirs, ours = tmp_path / "theirs.gguf", tmp_path / "ours.gguf"
    env = {**os.environ, "PYTHONPATH": f"{llama_cpp_convert / 'gguf-py'}:{llama_cpp_convert}"}
    ran = subprocess.run([sys.executable, str(llama_cpp_convert / "convert_hf_to_gguf.py"),
                          str(checkpoint), "--outfile", str(theirs), "--outtype", outtype],
                         capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-2000:]
    args = [*LLMRT, "convert", str(checkpoint), "--outfile", str(ours), "--outtype", outtype]
    ran = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr
    assert differences(theirs, ours) == []


def test_split_files_as_llama_cpps_and_loadable(llama_cpp_convert, checkpoint, tmp_path):
    """--split-max-size: the same shards as llama.cpp's (names, split keys, tensors), and llmrt
    runs the split model as it runs the single file."""
    env = {**os.environ, "PYTHONPATH": f"{llama_cpp_convert / 'gguf-py'}:{llama_cpp_convert}"}
    (tmp_path / "theirs").mkdir()
    (tmp_path / "ours").mkdir()
    ran = subprocess.run([sys.executable, str(llama_cpp_convert / "convert_hf_to_gguf.py"),
                          str(checkpoint), "--outfile", str(tmp_path / "theirs" / "m.gguf"),
                          "--outtype", "f32", "--split-max-size", "40K"],
                         capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-2000:]
    args = [*LLMRT, "convert", str(checkpoint), "--outfile", str(tmp_path / "ours" / "m.gguf"),
            "--outtype", "f32", "--split-max-size", "40K"]  # fmt: skip
    ran = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr
    theirs = sorted(p.name for p in (tmp_path / "theirs").iterdir())
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == theirs
    assert len(theirs) > 1 and theirs[0] == f"m-00001-of-{len(theirs):05d}.gguf"
    for name in theirs:
        assert differences(tmp_path / "theirs" / name, tmp_path / "ours" / name) == [], name
    single = tmp_path / "single.gguf"
    args = [*LLMRT, "convert", str(checkpoint), "--outfile", str(single), "--outtype", "f32"]
    assert subprocess.run(args, capture_output=True, timeout=600).returncode == 0
    from llmrt.engine import load

    ids = list(range(100, 120))
    split_logits = load(tmp_path / "ours" / theirs[0], device="cpu").context(n_ctx=32).eval(ids)
    single_logits = load(single, device="cpu").context(n_ctx=32).eval(ids)
    assert np.array_equal(split_logits, single_logits)


def test_converted_tokenizer_gives_tokenizers_ids_on_a_broad_text_set(checkpoint, tmp_path):
    """The converted file's tokenizer against the `tokenizers` library itself, on every string
    of the SmolLM2 tokenization fixture (unicode, whitespace runs, code, special tokens...)."""
    import json

    import tokenizers

    from llmrt.tokenizer import Tokenizer

    out = tmp_path / "vocab.gguf"
    args = [*LLMRT, "convert", str(checkpoint), "--outfile", str(out), "--vocab-only"]
    assert subprocess.run(args, capture_output=True, timeout=600).returncode == 0
    ours = Tokenizer.from_gguf(out)
    theirs = tokenizers.Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    cases = json.loads((REFS / "smollm2-135m" / "tokenize.json").read_text())["cases"]
    texts = [c["text"] for c in cases]
    assert len(texts) > 40
    for text in texts:
        expected = theirs.encode(text, add_special_tokens=False).ids
        assert ours.encode(text, add_special=False, parse_special=True) == expected, repr(text)
