"""Tokens per second tokenizing 1 MB of mixed text, llmrt beside llama.cpp (llama-cpp-python).

    python benchmarks/tokenize_speed.py [--peer-python /tmp/peer-venv/bin/python] [--mb 1]

The text mixes English prose, Python code, JSON, numbers, several scripts and emoji, seeded and
written to a temporary file that both tokenizers read. llmrt is timed cold (a new Tokenizer, empty
word cache) and warm (the same text again); llama.cpp through llama-cpp-python (vocab only, one
llama_tokenize C call over the whole text), when --peer-python names a venv that has it. The ids
of both are compared: the benchmark doubles as a 1 MB equality check.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = {
    "SmolLM2-135M (BPE)": "smollm2-135m",
    "Gemma 3 270M (SPM)": "gemma3-270m",
}

_COMMON = [
    "the", "of", "and", "to", "in", "is", "you", "that", "it", "was", "for", "on", "are", "as",
    "with", "they", "at", "be", "this", "have", "from", "or", "one", "by", "word", "but", "not",
    "what", "all", "were", "when", "your", "can", "there", "use", "each", "which", "how", "their",
    "will", "other", "about", "many", "then", "some", "would", "make", "like", "into", "time",
]  # fmt: skip


def _vocabulary(rng: random.Random, n: int = 30_000) -> list[str]:
    """Made-up words (syllable soup) so that the text is not a few words repeated."""
    syllables = [c + v for c in "bcdfghjklmnprstvwyz" for v in "aeiou"] + ["th", "st", "ng", "er"]
    return _COMMON + ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(n)]


_SCRIPTS = [
    "Ces données sont très intéressantes, n'est-ce pas ? Voilà pourquoi.",
    "Die Größe der Straße überrascht übrigens jeden Besucher.",
    "Привет, как дела? Это тестовая строка для токенизатора.",
    "これは日本語のテキストです。トークナイザーをテストします。",
    "这是一个用于测试分词器的中文句子，包含标点符号。",
    "토크나이저를 테스트하기 위한 한국어 문장입니다.",
    "هذه جملة عربية لاختبار المحلل.",
    "यह टोकनाइज़र का परीक्षण करने के लिए एक वाक्य है।",
    "Emoji: 😀 👍🏽 🎉 🚀 👨‍👩‍👧 — and symbols ©®™ ±×÷ ≤≥≠.",
]


def mixed_text(n_bytes: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    vocab = _vocabulary(rng)
    # Zipf-like: a few words very often, most rarely, as in real text
    weights = [1 / (rank + 1) for rank in range(len(vocab))]

    def words(k: int) -> list[str]:
        return rng.choices(vocab, weights, k=k)

    parts: list[str] = []
    size = 0
    while size < n_bytes:
        kind = rng.random()
        if kind < 0.45:
            sentence = words(rng.randint(8, 40))
            sentence[0] = sentence[0].capitalize()
            chunk = " ".join(sentence) + rng.choice([". ", "! ", "? ", ".\n\n", ", "])
        elif kind < 0.65:
            name = "_".join(words(2))
            chunk = (
                f"def {name}_{rng.randint(0, 999)}(x, y={rng.randint(0, 99)}):\n"
                f"    # {' '.join(words(6))}\n"
                f"    return x * {rng.random():.4f} + y  # {name}\n\n"
            )
        elif kind < 0.75:
            record = {w: rng.randint(0, 10**6) for w in words(4)}
            record["values"] = [round(rng.uniform(-1e3, 1e3), 3) for _ in range(3)]
            chunk = json.dumps(record, ensure_ascii=False) + "\n"
        elif kind < 0.85:
            day = f"20{rng.randint(10, 29)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}"
            chunk = f"{rng.randint(0, 10**9)} {rng.uniform(0, 1e4):.2f} {day}  "
        else:
            chunk = rng.choice(_SCRIPTS) + rng.choice([" ", "\n", "  \t"])
        parts.append(chunk)
        size += len(chunk.encode("utf-8"))
    return "".join(parts)


def run_peer(model: Path, text_file: Path) -> dict:
    """Runs inside the llama-cpp-python venv."""
    import llama_cpp

    data = text_file.read_bytes()
    llm = llama_cpp.Llama(str(model), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    # the C call with a buffer large enough: Llama.tokenize would tokenize twice (once to size)
    buf = (llama_cpp.llama_token * (len(data) + 16))()
    llama_cpp.llama_tokenize(vocab, data[:1000], 1000, buf, len(buf), True, False)  # warm-up
    t0 = time.perf_counter()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, len(buf), True, False)
    seconds = time.perf_counter() - t0
    ids = list(buf[:n])
    return {"seconds": seconds, "ids": ids}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--peer-python", default="/tmp/peer-venv/bin/python")
    ap.add_argument("--mb", type=float, default=1.0)
    ap.add_argument("--peer", nargs=2, help=argparse.SUPPRESS)  # MODEL TEXT_FILE (internal)
    args = ap.parse_args()
    if args.peer:
        json.dump(run_peer(Path(args.peer[0]), Path(args.peer[1])), sys.stdout)
        return

    from llmrt import pull
    from llmrt.tokenizer import Tokenizer

    text = mixed_text(int(args.mb * 1_000_000))
    n_bytes = len(text.encode("utf-8"))
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
        f.write(text.encode("utf-8"))
        text_file = Path(f.name)
    print(f"text: {n_bytes:,} bytes, python {platform.python_version()}, {platform.processor()}")
    print(
        "| model | load ms | tokens | llmrt cold t/s | llmrt warm t/s | llama.cpp t/s | ids equal |"
    )
    print("|---|---|---|---|---|---|---|")
    try:
        for label, name in MODELS.items():
            path = pull.pull(name, quiet=True)
            t0 = time.perf_counter()
            tok = Tokenizer.from_gguf(path)
            load = time.perf_counter() - t0
            t0 = time.perf_counter()
            ids = tok.encode(text, add_special=True, parse_special=False)
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            tok.encode(text, add_special=True, parse_special=False)
            warm = time.perf_counter() - t0
            peer_tps, same = "n/a", "n/a"
            if os.path.exists(args.peer_python):
                out = subprocess.run(
                    [args.peer_python, __file__, "--peer", str(path), str(text_file)],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                peer = json.loads(out.stdout)
                peer_tps = f"{len(peer['ids']) / peer['seconds']:,.0f}"
                same = "yes" if peer["ids"] == ids else "NO"
            n = len(ids)
            speeds = f"{n / cold:,.0f} | {n / warm:,.0f} | {peer_tps}"
            print(f"| {label} | {load * 1000:.0f} | {n:,} | {speeds} | {same} |")
    finally:
        text_file.unlink()


if __name__ == "__main__":
    main()
