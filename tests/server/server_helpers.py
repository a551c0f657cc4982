"""Helpers of the server tests: a uvicorn server in a thread, reference tokens, SSE parsing.
(A module of its own, not conftest: `from conftest import` would be ambiguous beside
tests/conftest.py.)"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import uvicorn

from llmrt.server import ServerSettings, create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_process(args: list[str], log_dir: Path, timeout: float = 90) -> Iterator[str]:
    """`llmrt serve ARGS --port P` in a process of its own (its output in log_dir/serve.log),
    ready when /health answers 200; yields its URL and stops it on leaving."""
    port = free_port()
    cmd = [sys.executable, "-m", "llmrt", "serve", "--port", str(port), *args]
    url = f"http://127.0.0.1:{port}"
    with open(log_dir / "serve.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)


class LiveServer:
    """A uvicorn server in a thread, serving create_app(settings, model)."""

    def __init__(self, model, **settings) -> None:
        self.port = free_port()
        self.settings = ServerSettings(port=self.port, **settings)
        self.app = create_app(self.settings, model=model)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError("the server did not become ready")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    @property
    def scheduler(self):
        return self.app.state.llmrt.scheduler


def reference_tokens(model, prompt: str, n_predict: int) -> list[int]:
    """Greedy tokens of llmrt.engine.generate on a fresh context."""
    from llmrt.engine import generate
    from llmrt.sampling import Sampler, SamplingParams

    tok = model.tokenizer
    ids = tok.encode(prompt, add_special=True, parse_special=True)
    ctx = model.context(n_ctx=512)
    sampler = Sampler(SamplingParams(temperature=0.0), model.hp.n_vocab)
    return list(generate(ctx, ids, n_predict, sampler, tok.eog_ids))


def sse_events(response: httpx.Response) -> list[dict]:
    """The JSON objects of an SSE stream's `data:` lines ([DONE] left out)."""
    import json

    out = []
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[6:]))
    return out
