"""`llmrt quantize`: llama-quantize's mixes (checked against the tensor types of a file that
llama-quantize made), and the command on a small model."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from llmrt.engine import load
from llmrt.gguf import GGMLType, GGUFReader, GGUFWriter
from llmrt.gguf.quants import QUANTIZERS
from llmrt.quantize import FTYPES, PLAIN, MixState, Options, category, target_type

LLMRT = [sys.executable, "-m", "llmrt"]


def plan(reader: GGUFReader, ftype: str, **options) -> dict[str, GGMLType]:
    md, names = reader.metadata, [t.name for t in reader.tensors]
    arch = md["general.architecture"]
    st = MixState(
        n_layer=md[f"{arch}.block_count"],
        n_gqa=md[f"{arch}.attention.head_count"] // md[f"{arch}.attention.head_count_kv"],
        n_attn_v=sum(category(n) == "attn_v" for n in names), tied="output.weight" not in names,
        is_70b=False,
    )  # fmt: skip
    opts = Options(ftype, **options)
    source = {t.name: GGMLType.F16 if len(t.shape) > 1 else GGMLType.F32 for t in reader.tensors}
    return {t.name: target_type(t.name, tuple(t.shape), st, opts, source[t.name])
            for t in reader.tensors}  # fmt: skip


def test_q4_k_m_mix_is_the_one_llama_quantize_chose_for_gemma3(gemma3_path):
    """The Gemma 3 270M file was made by llama-quantize: Q4_K, Q6_K for the sensitive layers'
    attn_v and ffn_down, 640-wide rows falling back to Q5_0 and Q8_0, the tied embedding Q6_K."""
    reader = GGUFReader(gemma3_path)
    assert reader.metadata["general.file_type"] == 15  # MOSTLY_Q4_K_M
    ours = plan(reader, "Q4_K_M")
    theirs = {t.name: t.type for t in reader.tensors}
    assert ours == theirs
    assert {t.name for t in theirs.values()} == {"F32", "Q4_K", "Q5_0", "Q6_K", "Q8_0"}


def test_pure_and_overrides(gemma3_path):
    reader = GGUFReader(gemma3_path)
    pure = plan(reader, "Q8_0", pure=True)
    assert {t for n, t in pure.items() if n.endswith("norm.weight")} == {GGMLType.F32}
    assert {t for n, t in pure.items() if not n.endswith("norm.weight")} == {GGMLType.Q8_0}
    mixed = plan(reader, "Q4_K_M", token_embedding_type=GGMLType.Q8_0)
    assert mixed["token_embd.weight"] == GGMLType.Q8_0


@pytest.fixture(scope="module")
def f16_model(tmp_path_factory, smollm2_path):
    """SmolLM2's own metadata and shapes, its weights dequantized to F16."""
    reader = GGUFReader(smollm2_path)
    out = tmp_path_factory.mktemp("f16") / "smollm2-f16.gguf"
    from llmrt.gguf import dequantize

    with GGUFWriter(out) as w:
        for key, value in reader.metadata.items():
            if key != "general.file_type":
                w.add(key, value, reader.metadata_types[key])
        w.add("general.file_type", 1)
        for t in reader.tensors:
            values = dequantize(np.asarray(t.data), t.type, tuple(t.shape))
            w.add_tensor(t.name, values.astype(np.float16 if len(t.shape) > 1 else np.float32))
    return out


def test_quantized_model_runs_and_stays_close(f16_model, tmp_path):
    out = tmp_path / "q8.gguf"
    result = subprocess.run([*LLMRT, "quantize", str(f16_model), str(out), "q8_0"],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr
    reader = GGUFReader(out)
    assert reader.metadata["general.file_type"] == 7
    types = {t.name: t.type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    ids = load(f16_model, device="cpu").tokenize("The capital of France is")
    base = load(f16_model, device="cpu").context(n_ctx=64).eval(ids)
    q8 = load(out, device="cpu").context(n_ctx=64).eval(ids)
    assert int(q8.argmax()) == int(base.argmax())
    assert np.abs(q8 - base).max() < 0.05 * np.abs(base).max()


def test_requantizing_needs_the_flag_and_bad_types_are_one_line(smollm2_path, tmp_path):
    out = tmp_path / "re.gguf"
    refused = subprocess.run([*LLMRT, "quantize", str(smollm2_path), str(out), "Q4_0"],
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert refused.returncode == 1 and "--allow-requantize" in refused.stderr
    assert "Traceback" not in refused.stderr and not out.exists()
    args = [*LLMRT, "quantize", str(smollm2_path), str(out), "Q4_0", "--allow-requantize"]
    allowed = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert allowed.returncode == 0, allowed.stderr
    bad = subprocess.run([*LLMRT, "quantize", str(smollm2_path), str(out), "Q9_X"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "unknown type Q9_X" in bad.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("ftype", sorted(FTYPES))
def test_every_type_llama_quantize_names_has_its_quantizers(gemma3_path, ftype):
    """Each mix only asks for types llmrt can write (for Gemma 3's shapes, fallbacks included)."""
    for t in plan(GGUFReader(gemma3_path), ftype).values():
        assert t in PLAIN or t in QUANTIZERS, (ftype, t.name)


def test_q2_k_s_needs_an_importance_matrix_as_in_llama_quantize(f16_model, tmp_path):
    out = tmp_path / "q2ks.gguf"
    result = subprocess.run([*LLMRT, "quantize", str(f16_model), str(out), "Q2_K_S"],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 1 and "needs an importance matrix" in result.stderr
    assert not out.exists()
