"""`llmrt serve --host` with several addresses, comma-separated, as llama-server takes them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from server_helpers import free_port

from llmrt.cli.serve import bind_sockets, parse_hosts
from llmrt.errors import UsageError


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_parse_hosts():
    assert parse_hosts("127.0.0.1") == ["127.0.0.1"]
    assert parse_hosts(" 127.0.0.1, [::1] ,,/tmp/x.sock") == ["127.0.0.1", "::1", "/tmp/x.sock"]
    with pytest.raises(UsageError, match="at least one"):
        parse_hosts(" , ")


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_is_ipv6_only_beside_other_addresses():
    port = free_port()
    socks = bind_sockets(["127.0.0.1", "::1"], port)
    try:
        v6 = [s for s in socks if s.family == socket.AF_INET6]
        assert len(socks) == 2 and len(v6) == 1
        assert v6[0].getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        socks[0].listen()
        with pytest.raises(UsageError, match="cannot listen"):  # the port is taken
            bind_sockets(["127.0.0.1"], port)
    finally:
        for s in socks:
            s.close()


def test_serve_on_every_address(smollm2_path, tmp_path):
    hosts = ["127.0.0.1", str(tmp_path / "llmrt.sock")]
    if _has_ipv6_loopback():
        hosts.append("::1")
    port = free_port()
    cmd = [sys.executable, "-m", "llmrt", "serve", "-m", str(smollm2_path), "--port", str(port),
           "-c", "128", "--device", "cpu", "--host", ",".join(hosts), "--api-key", "k"]  # fmt: skip
    auth = {"Authorization": "Bearer k"}
    body = {"prompt": "Once upon a time", "max_tokens": 3, "temperature": 0}
    clients = [httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120),
               httpx.Client(base_url="http://localhost", timeout=120,
                            transport=httpx.HTTPTransport(uds=hosts[1]))]  # fmt: skip
    if len(hosts) == 3:
        clients.append(httpx.Client(base_url=f"http://[::1]:{port}", timeout=120))
    with open(tmp_path / "serve.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if clients[0].get("/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()
                time.sleep(0.2)
            for c in clients:
                assert c.get("/health").status_code == 200
                assert c.post("/v1/completions", json=body).status_code == 401
                r = c.post("/v1/completions", json=body, headers=auth)
                assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            for c in clients:
                c.close()
    assert not os.path.exists(hosts[1])  # the socket file is removed at exit
