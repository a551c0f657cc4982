"""llmrt.ray.deployment() in someone's own Ray app (issue 21's Python entry point): served through
Ray Serve's own HTTP proxy, it answers llmrt's API with what the model generates alone. Its own
module, so that test_ray_serve.py's Ray instance is gone before this one starts."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

from test_ray_serve import ray_processes

COMPOSED = """
import json, sys, urllib.request
import ray
from ray import serve
import llmrt.ray

ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
try:
    serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[2])})
    serve.run(llmrt.ray.deployment(model=sys.argv[1], threads=1), route_prefix="/")
    body = {"prompt": "The capital of France is", "n_predict": 6, "temperature": 0}
    req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[2]}/completion",
                                 json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=120) as r:
        reply = {"status": r.status, "content": json.loads(r.read())["content"]}
        print("REPLY " + json.dumps(reply), flush=True)
finally:
    serve.shutdown()
    ray.shutdown()
"""


def test_a_composed_ray_app_serves_the_api_through_ray_s_proxy(smollm2_path, tmp_path):
    """llmrt.ray.deployment() in someone's own Ray app, behind Ray Serve's HTTP proxy."""
    from llmrt.engine import load

    assert not ray_processes()
    script = tmp_path / "composed.py"
    script.write_text(COMPOSED)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = subprocess.run([sys.executable, str(script), str(smollm2_path), str(port)],
                            capture_output=True, text=True, timeout=240)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("REPLY ")]
    reply = json.loads(line.removeprefix("REPLY "))
    alone = "".join(load(smollm2_path, device="cpu").generate(
        "The capital of France is", n_predict=6, temperature=0))  # fmt: skip
    assert reply == {"status": 200, "content": alone}


def test_more_replicas_than_the_cluster_holds_is_one_line_not_a_hang(smollm2_path):
    result = subprocess.run(
        [sys.executable, "-m", "llmrt", "serve", "-m", str(smollm2_path), "--replicas", "64",
         "-t", "1"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    lines = [x for x in result.stderr.splitlines() if x.startswith("llmrt: error:")]
    assert len(lines) == 1 and "64 replicas need 64 CPUs (each -t 1)" in lines[0], result.stderr
    assert not ray_processes()
