"""Aggregate generation speed of `llmrt serve -np 4` with 1, 2, 4 and 8 concurrent clients.

Starts the real server in a subprocess on a free localhost port, then for each client count
sends that many /completion requests at once (distinct prompts, greedy, `ignore_eos` so every
request generates exactly -n tokens, `cache_prompt` off so each run evaluates its prompt) and
reports generated tokens / wall time, end to end as the clients see it (best of -r runs: the first
run of a count also compiles the graphs of its batch shapes). Prints a Markdown table.

    python benchmarks/server_clients.py [-m MODEL] [-n 16] [--clients 1,2,4,8] [--np 4]
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was",
    "The three primary colors are",
    "Water boils at",
    "My favourite food is",
    "The largest planet in the solar system is",
    "To make a cup of tea, first",
    "The opposite of hot is",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the server exited")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit("the server did not become ready")


def one(url: str, prompt: str, n: int) -> tuple[int, float]:
    body = {"prompt": prompt, "n_predict": n, "temperature": 0, "ignore_eos": True,
            "cache_prompt": False}  # fmt: skip
    r = httpx.post(url + "/completion", json=body, timeout=3600)
    r.raise_for_status()
    out = r.json()
    return out["tokens_predicted"], out["timings"]["predicted_per_second"]


def run(url: str, clients: int, n: int) -> dict[str, float]:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(clients)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda p: one(url, p, n), prompts))
    wall = time.perf_counter() - t0
    tokens = sum(r[0] for r in results)
    return {
        "clients": clients,
        "tokens": tokens,
        "wall_s": wall,
        "aggregate_tps": tokens / wall,
        "per_client_tps": sum(r[1] for r in results) / len(results),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default="smollm2-135m")
    ap.add_argument("-n", type=int, default=16, help="tokens each request generates")
    ap.add_argument("--clients", default="1,2,4,8")
    ap.add_argument("--np", type=int, default=4, help="server slots")
    ap.add_argument("-c", "--ctx-size", type=int, default=1024)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("-r", "--repeat", type=int, default=2, help="runs per count; the best")
    args = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "llmrt", "serve", "-m", args.model, "--port", str(port),
           "-np", str(args.np), "-c", str(args.ctx_size), "--device", args.device]  # fmt: skip
    proc = subprocess.Popen(cmd)
    try:
        wait_ready(url, proc)
        one(url, PROMPTS[0], 2)  # warm up: first graphs, first allocations
        rows = []
        for c in args.clients.split(","):
            runs = [run(url, int(c), args.n) for _ in range(args.repeat)]
            rows.append(max(runs, key=lambda r: r["aggregate_tps"]))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"\n`{' '.join(['llmrt', *cmd[3:]])}`, {args.n} tokens per request, "
          f"best of {args.repeat}\n")  # fmt: skip
    print("| clients | tokens | wall (s) | aggregate tokens/s | mean per-request tokens/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clients']} | {r['tokens']} | {r['wall_s']:.1f} | "
              f"{r['aggregate_tps']:.2f} | {r['per_client_tps']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
