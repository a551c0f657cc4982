"""Aggregate generation throughput of `llmrt serve --replicas N` (Ray Serve) under concurrent
OpenAI clients, against one replica: each client asks for the same number of tokens (greedy,
ignore_eos), all at once, and the tokens received over the wall time are counted.

    python benchmarks/ray_replicas.py [MODEL] [--clients 8] [--tokens 128] [--replicas 1 2 1 2]

Each replica runs with one CPU thread (-t 1) and --parallel clients/replicas slots; the servers
are started one after the other on a free port and stopped after their run.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

DEFAULT_MODEL = "smollm2-135m"
SERVED_BY: list[str | None] = []  # the replica that answered each measured request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, replicas: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as r:
                if len(json.loads(r.read()).get("replicas", [])) >= replicas:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{base} not ready after {timeout} s")


def complete(base: str, prompt: str, tokens: int) -> int:
    body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
    req = urllib.request.Request(base + "/v1/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=600) as r:
        SERVED_BY.append(r.headers.get("x-llmrt-replica"))
        return json.loads(r.read())["usage"]["completion_tokens"]


def measure(model: str, replicas: int, clients: int, tokens: int) -> float:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    slots = max(1, clients // replicas)
    server = subprocess.Popen(
        [sys.executable, "-m", "llmrt", "serve", "-m", model, "--replicas", str(replicas),
         "-t", "1", "--parallel", str(slots), "-c", str(slots * (tokens + 64)),
         "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_ready(base, replicas)
        prompts = [f"Write a long story about the number {i}." for i in range(clients)]
        with ThreadPoolExecutor(clients) as pool:  # warm-up: every slot compiles its graphs
            list(pool.map(lambda p: complete(base, p, 8), prompts))
        SERVED_BY.clear()
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            received = sum(pool.map(lambda p: complete(base, p, tokens), prompts))
        rate = received / (time.perf_counter() - start)
        counts = sorted(SERVED_BY.count(r) for r in set(SERVED_BY))
        print(f"  requests per replica: {counts}")
        return rate
    finally:
        server.terminate()
        server.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    one = None  # the latest one-replica rate: each later rate is read against it (interleaved)
    for n in args.replicas:
        rate = measure(args.model, n, args.clients, args.tokens)
        one = rate if n == 1 else one
        versus = f", {rate / one:.2f}x the one-replica run before it" if one and n != 1 else ""
        print(f"replicas {n}: {rate:.1f} tokens/s ({args.clients} clients x {args.tokens}){versus}")


if __name__ == "__main__":
    main()
