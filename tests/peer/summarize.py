"""Why each test of llama.cpp's server suite fails against `llmrt serve` (SmolLM2 on the CPU).

    python tests/peer/summarize.py tests/peer/.suite/outcomes.txt

reads the outcomes the runner writes and prints, per file, how many tests pass, then every
failure under its reason: `model` (the test asserts the suite's own tiny models' text, tokens or
files, which SmolLM2 does not have), `http` (a detail of the wire that llmrt does differently on
purpose), `missing` (a llama-server feature llmrt does not have yet: work left for issue 18).
A failure no rule explains is listed as `unexplained`: a bug or a new test to look at.
"""

from __future__ import annotations

import collections
import re
import sys

# (pattern on "file::test", reason); the first that matches wins
RULES = [
    (r"test_compat_oai_responses::test_responses(_stream)?_with_openai_library",
     "model: asserts the text of the suite's model (tinyllama stories260K)"),
    (r"test_completion::test_completion\[|test_completion::test_completion_stream\[|"
     r"test_completion::test_completion.*with_openai_library|"
     r"test_chat_completion::test_chat_completion\[|test_chat_completion_stream\[|"
     r"test_chat_completion::test_chat_completion_with_openai_library",
     "model: asserts the text or prompt token counts of the suite's model (tinyllama "
     "stories260K), or llama.cpp's build number in system_fingerprint"),
    (r"test_tokenize_with_bos|test_completion_response_fields|"
     r"test_chat_completion::test_chat_template$|test_nocache_long_input_prompt|"
     r"test_chat_completion_cached_tokens|test_return_progress\[64-4-False\]",
     "model: depends on tinyllama's tokenizer (BOS id 1, '<s> ' in the prompt, token counts)"),
    (r"test_ctx_shift::test_ctx_shift_enabled",
     "model: tinyllama's prompt is 226 tokens, filling the 256-token slot; SmolLM2's is 117, "
     "and 96 more tokens never fill it (tests/server/test_context_shift.py shifts)"),
    (r"test_ctx_shift", "model: tinyllama's token counts, and it never ends a reply (SmolLM2 "
                        "does)"),
    (r"test_embedding::test_embedding_(usage|pooling_none$|mixed_input\[-False\])",
     "model: bert-bge-small's tokenizer adds [CLS] and [SEP] (its token counts; an empty input "
     "is 2 tokens there, 0 with SmolLM2: a 400, as llama-server with a model that adds none)"),
    (r"test_slot_save.*(image|multimodal)|media_file_without_mmproj|local_media_file",
     "missing: multimodal models (mmproj, --media-path)"),
    (r"test_slot_save", "model: asserts tinyllama's text (Whiskers|Flana) and token counts "
                        "(n_saved 84); SmolLM2 ends that reply at once"),
    (r"test_infill::test_infill_with|test_infill::test_infill_without",
     "model: asserts tinyllama-infill's text; SmolLM2 has no FIM tokens (501)"),
    (r"test_template::test_reasoning|test_anthropic_thinking",
     "missing: --reasoning / --reasoning-format (thinking prompts and reasoning_content)"),
    (r"test_access_static_assets",
     "model: llama-server's own web UI files (/sw.js, /manifest.webmanifest, /_app/version.json)"),
    (r"cors_proxy", "missing: --ui-mcp-proxy (/cors-proxy)"),
    (r"cors_origins_defaults_to_localhost_with_tools", "missing: --tools (server-side tools)"),
    (r"test_load_split_model", "model: downloads a split GGUF from the hub"),
    (r"test_completion_unified\[256-4-n_predict_vals[023]-",
     "model: SmolLM2 ends its reply to 'A' (seed 42) with EOS after 74 tokens, and the test "
     "wants every 200 to have its full n_predict (80 or 90; tinyllama never ends); the pool's "
     "500s are llama-server's (vals1 passes; tests/server/test_kv_pool.py)"),
    (r"test_completion_prompt_cache",
     "model: tinyllama's token counts (' Hello N' is 5 tokens there, 3 with SmolLM2, so "
     "prompt_n + cache_n != (40 + r) * 5 + 2); --cache-ram: tests/server/test_kv_pool.py"),
    (r"anthropic.*(vision|image)",
     "http: an image for a model without vision is a 400 here (llama-server: 500)"),
]  # fmt: skip


def reason(name: str) -> str:
    for pattern, why in RULES:
        if re.search(pattern, name):
            return why
    return "unexplained"


def main(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    per_file: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    why: dict[str, list[str]] = collections.defaultdict(list)
    for outcome, name in rows:
        per_file[name.split("::")[0]][outcome] += 1
        if outcome in ("failed", "errors"):
            why[reason(name)].append(name)
    print("| file | passed | failed | skipped |\n|---|---|---|---|")
    for f, c in sorted(per_file.items()):
        print(f"| {f.removeprefix('unit.')} | {c['passed']} | {c['failed'] + c['errors']} | "
              f"{c['skipped']} |")  # fmt: skip
    total = collections.Counter()
    for c in per_file.values():
        total.update(c)
    print(f"| **all** | **{total['passed']}** | **{total['failed'] + total['errors']}** | "
          f"**{total['skipped']}** |\n")  # fmt: skip
    for reason_, names in sorted(why.items(), key=lambda kv: (kv[0] == "unexplained", kv[0])):
        print(f"- {reason_} ({len(names)}):")
        for n in names:
            print(f"  - `{n.removeprefix('unit.')}`")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/peer/.suite/outcomes.txt")
