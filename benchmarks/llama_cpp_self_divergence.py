"""Where llama.cpp leaves its own greedy fixtures when only its evaluation path changes.

Run with the python of a venv holding llama-cpp-python 0.3.36
(tests/tokenizer/make_gemma_reference.py says how to build one):

    PEER=/tmp/peer-venv/bin/python
    $PEER benchmarks/llama_cpp_self_divergence.py ../shared/refs/smollm2-135m/greedy.json \\
        ~/.cache/llmrt/models/smollm2-135m-instruct-q4_1.gguf 0,2,4
    $PEER benchmarks/llama_cpp_self_divergence.py tests/models/fixtures/gemma3-270m-greedy.json \\
        ~/.cache/llmrt/models/gemma-3-270m-q4_k_m.gguf 1,106,212

For each variant (flash attention on; token-by-token prefill) it prints, per prompt, the first step
whose token differs from the fixture and that step's recorded top-1/top-2 gap. The largest such gap
is how wide a near tie is for that model: tests/models/test_greedy.py cites it.
"""

import json
import sys

import llama_cpp
import numpy as np
from llama_cpp import Llama


def last_logits(llm: Llama) -> np.ndarray:
    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


def main() -> None:
    fixture, model, eog_text = sys.argv[1:4]
    with open(fixture) as f:
        prompts = json.load(f)["prompts"]
    eog = {int(x) for x in eog_text.split(",")}
    for flash_attn, n_batch in ((True, 512), (False, 1), (True, 1)):
        llm = Llama(model_path=model, n_ctx=2048, n_batch=n_batch, n_ubatch=n_batch, n_threads=2,
                    n_gpu_layers=0, flash_attn=flash_attn, verbose=False)  # fmt: skip
        found = []
        for p in prompts:
            llm.reset()
            llm.eval(p["prompt_ids"])
            out = []
            for _ in range(len(p["generated_ids"])):
                token = int(np.argmax(last_logits(llm)))
                out.append(token)
                if token in eog:
                    break
                llm.eval([token])
            theirs, gaps = p["generated_ids"], p["top1_top2_logit_gap"]
            step = next(
                (i for i, (a, b) in enumerate(zip(out, theirs, strict=False)) if a != b), None
            )
            found.append(None if step is None else (step, gaps[step]))
        print(f"flash_attn={flash_attn} n_batch={n_batch}: {found}", flush=True)


if __name__ == "__main__":
    main()
