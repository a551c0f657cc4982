"""How far a model's last-position logits move against llama.cpp's fixtures (std, mean and the
largest top-20 difference, as tests/models/test_logits.py checks them) when one norm weight
vector is nudged by one ulp: a last-bit change, such as a different summation order makes. On
the q8-activation products a nudge mostly changes nothing, and where it flips one int8 activation
the logits move as far as two correct implementations differ.

    python benchmarks/logits_ulp_noise.py FIXTURE.json MODEL.gguf [DEVICE]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from llmrt.engine import load
from llmrt.gguf import GGUFReader


def evaluate(path: str, cases: list[dict], device: str) -> list[tuple[float, float, float]]:
    model = load(path, device=device)
    out = []
    for c in cases:
        logits = model.context(n_ctx=512).eval(c["prompt_ids"])
        ids = [i for i, _ in c["last_top20"]]
        top = np.abs(logits[ids] - np.array([v for _, v in c["last_top20"]])).max()
        out.append((float(logits.std()) - c["last_std"], float(logits.mean()) - c["last_mean"],
                    float(top)))  # fmt: skip
    return out


def main() -> None:
    fixture, path = sys.argv[1], sys.argv[2]
    device = sys.argv[3] if len(sys.argv) > 3 else "cpu"
    cases = json.loads(Path(fixture).read_text())["prompts"]
    reader = GGUFReader(path)
    norms = [t for t in reader.tensors if t.name.endswith(("attn_norm.weight", "ffn_norm.weight"))]
    src = Path(path).read_bytes()
    nudged = Path("/tmp/logits_ulp_noise.gguf")
    show = lambda rows: [tuple(round(v, 4) for v in r) for r in rows]  # noqa: E731
    print("(std diff, mean diff, top-20 max diff) per prompt")
    as_is = evaluate(path, cases, device)
    print("as is:", show(as_is), flush=True)
    results = []
    for t in norms[::2]:
        orig = np.asarray(t.data)
        at = src.find(orig.tobytes())
        data = bytearray(src)
        data[at : at + orig.nbytes] = (orig.view(np.uint32) + np.uint32(1)).view(np.uint8).tobytes()
        nudged.write_bytes(data)
        results.append(evaluate(str(nudged), cases, device))
        print(f"{t.name} +1 ulp:", show(results[-1]), flush=True)
    moved = np.abs(np.array(results) - np.array(as_is))  # nudge, prompt, (std, mean, top-20)
    for i, what in enumerate(("std diff", "mean diff", "top-20 max diff")):
        print(f"largest move of the {what} from as is, per prompt:", moved[:, :, i].max(0).round(4))
    changed = int((moved.max(axis=(1, 2)) > 0).sum())
    print(f"nudges that moved anything: {changed} of {len(results)}")


if __name__ == "__main__":
    main()
