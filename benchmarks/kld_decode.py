"""KL divergence and perplexity against llama.cpp's distributions through the decode path: each
chunk's first half is one prompt (as kld_ref.py's score), and every scored position after it is
a one-token decode step (mat-vecs on q8 activations, split attention over the cache), where
kld_ref.py's score runs the whole chunk as one prompt and so checks only the prompt kernels.

    python benchmarks/kld_decode.py KLD_REF MODEL TEXT REF_NPZ [DEVICE=cpu] [module.NAME=VALUE ...]

KLD_REF is ../shared/tools/kld_ref.py (its chunking and metrics are used as they are);
module.NAME=VALUE sets a constant of a backend module before the model loads
(llmrt_opencl.launch_weights.MMVQ_LANES=32), LIMIT.NAME=VALUE one of the device's limits
(LIMIT.cpu=0 runs a GPU's kernels on PoCL). Prints one JSON line as kld_ref.py's score does.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time

import numpy as np
from with_constants import set_constants  # benchmarks/, run as a script

from llmrt.engine import load


def main(kld_ref: str, model: str, text: str, ref_path: str, device: str, sets: list[str]) -> dict:
    spec = importlib.util.spec_from_file_location("kld_ref", kld_ref)
    kr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kr)
    set_constants(sets, device)
    ref = dict(np.load(ref_path))
    n_ctx = json.loads(str(ref["meta"]))["n_ctx"]
    start = time.time()
    m = load(model, device=device)
    tok = m.tokenizer
    with open(text, encoding="utf-8", newline="") as f:
        tokens = tok.encode(f.read(), add_special=tok.add_bos, parse_special=False)
    rows, tgts = [], []
    for chunk, tgt in kr.chunks(tokens, n_ctx, tok.bos_id if tok.add_bos else None):
        ctx = m.context(n_ctx=n_ctx)
        half = n_ctx // 2
        logits = [np.asarray(ctx.eval(chunk[: half + 1]))]  # predicts the first scored token
        logits += [np.asarray(ctx.eval([t])) for t in chunk[half + 1 : n_ctx - 1]]
        rows.append(kr.log_softmax(np.stack(logits)))
        tgts.append(tgt)
    lp, tgt = np.concatenate(rows), np.concatenate([np.asarray(t) for t in tgts])
    kl, agree = kr.stats(ref, lambda i: lp[i])
    ppl = float(np.exp(-lp[np.arange(len(tgt)), tgt].mean()))
    ppl_ref = float(np.exp(-ref["tgt_logp"].astype(np.float64).mean()))
    return dict(device=device, path="decode", sets=sets, mean_kld=float(kl.mean()),
                p99_kld=float(np.percentile(kl, 99)), max_kld=float(kl.max()), top1=agree,
                ppl=ppl, ppl_ref=ppl_ref, ppl_ratio=ppl / ppl_ref, n=len(tgt),
                seconds=round(time.time() - start, 1))  # fmt: skip


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if "=" not in a]
    sets = [a for a in sys.argv[1:] if "=" in a]
    print(json.dumps(main(*args[:4], args[4] if len(args) > 4 else "cpu", sets)))
