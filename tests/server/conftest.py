"""Servers for the tests: real uvicorn servers on free localhost ports.

Most tests share one in-process server (`server`: 4 slots) that uses the session's loaded
SmolLM2; tests that need other settings start their own with `live_server(...)`. One test starts
the real `llmrt serve` command in a subprocess. The CPU backend is the numpy reference (a few
tokens per second), so every request asks for a handful of tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from server_helpers import LiveServer  # noqa: E402


@pytest.fixture(scope="session")
def model(smollm2_path: Path):
    from llmrt.engine import load

    return load(smollm2_path, device="cpu")


@pytest.fixture(scope="session")
def live_server(model):
    """Start a server with other settings: live_server(n_parallel=1, api_key="k")."""
    started: list[LiveServer] = []

    def start(**settings) -> LiveServer:
        srv = LiveServer(model, **settings).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture(scope="session")
def server(live_server) -> LiveServer:
    """The shared server: 4 slots of 128 tokens."""
    return live_server(n_ctx=512, n_parallel=4, metrics=True)


@pytest.fixture()
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c
