"""`llmrt serve --replicas` on a local Ray instance (issue 21): two CPU replicas of SmolLM2 with
one thread each behind one endpoint. Concurrent OpenAI clients get the tokens each request gets
alone; a conversation stays on one replica; a killed replica's requests are retried or fail
cleanly while the others complete, and Ray brings it back; /metrics adds the replicas up; and
stopping the server leaves no Ray process behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from llmrt.ray import affinity_key, aggregate_metrics, rank

PROMPTS = [f"Write one sentence about the number {i}." for i in range(8)]


def post(base: str, path: str, body: dict, timeout: float = 120) -> tuple[int, dict, dict]:
    req = urllib.request.Request(base + path, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def health(base: str) -> dict:
    try:
        with urllib.request.urlopen(base + "/health", timeout=5) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return {}


def ray_processes() -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "raylet" in line or "gcs_server" in line]


@pytest.fixture(scope="module")
def server(smollm2_path):
    assert not ray_processes(), "a Ray instance is already running on this machine"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmrt", "serve", "-m", str(smollm2_path), "--replicas", "2",
         "-t", "1", "-np", "4", "-c", "2048", "--metrics", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.time() + 240
    while len(health(base).get("replicas", [])) < 2:
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"llmrt serve --replicas 2 did not come up:\n{proc.stdout.read()}")
        time.sleep(1)
    yield base
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("llmrt serve --replicas did not stop on Ctrl-C")
    deadline = time.time() + 30
    while ray_processes() and time.time() < deadline:
        time.sleep(1)
    assert not ray_processes(), ray_processes()


def complete(base: str, prompt: str, tokens: int = 16) -> tuple[str, str]:
    status, headers, body = post(base, "/v1/completions", {"prompt": prompt, "max_tokens": tokens,
                                                           "temperature": 0})  # fmt: skip
    assert status == 200, body
    return body["choices"][0]["text"], headers["x-llmrt-replica"]


def test_concurrent_clients_get_what_each_gets_alone(server):
    alone = [complete(server, p)[0] for p in PROMPTS]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda p: complete(server, p), PROMPTS))
    assert [text for text, _ in together] == alone
    assert len({replica for _, replica in together}) == 2  # both replicas served


def test_a_conversation_stays_on_its_replica(server):
    messages = [{"role": "system", "content": "You are terse."}]
    replicas = set()
    for turn in ("Hello!", "What is 2+2?", "And 3+3?"):
        messages.append({"role": "user", "content": turn})
        status, headers, body = post(
            server,
            "/v1/chat/completions",
            {"messages": messages, "max_tokens": 8, "temperature": 0},
        )
        assert status == 200, body
        replicas.add(headers["x-llmrt-replica"])
        messages.append(body["choices"][0]["message"])
    assert len(replicas) == 1


def test_metrics_add_the_replicas_up(server):
    before = metric(server, "llamacpp:requests_total")
    for p in PROMPTS[:4]:
        complete(server, p, 2)
    assert metric(server, "llamacpp:requests_total") - before == 4


def metric(base: str, name: str) -> float:
    time.sleep(5)  # replicas post their metrics every 2 s: let the posted values settle
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_a_killed_replica_loses_no_request_and_comes_back(server):
    before = health(server)["replicas"]
    pids = {}
    for p in PROMPTS:
        _, headers, _ = post(server, "/completion", {"prompt": p, "n_predict": 1})
        pids[headers["x-llmrt-replica"]] = int(headers["x-llmrt-replica-pid"])
    assert set(pids) == set(before)

    def long_request(i: int) -> int:
        body = {"prompt": f"Tell a story, number {i}.", "n_predict": 200, "ignore_eos": True,
                "temperature": 0}  # fmt: skip
        status, _, payload = post(server, "/completion", body, timeout=180)
        assert status == 200 or (status == 503 and payload["error"]["message"]), payload
        return status

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(long_request, i) for i in range(8)]
        time.sleep(1.0)
        victim = sorted(pids)[0]
        os.kill(pids[victim], signal.SIGKILL)
        statuses = [f.result(timeout=200) for f in futures]  # none hangs
    assert statuses.count(200) >= 4, statuses  # the other replica's complete (others retried)
    deadline = time.time() + 120
    while time.time() < deadline:
        now = health(server).get("replicas", [])
        if len(now) == 2 and victim not in now:
            break
        time.sleep(1)
    assert len(now) == 2 and victim not in now, now
    assert complete(server, PROMPTS[0])[0]


def test_the_affinity_key_is_the_prompt_start():
    assert affinity_key("/completion", b'{"prompt": "abc"}') == "/completion\x00abc"
    turn = [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]
    later = [*turn, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "?"}]
    key = affinity_key("/v1/chat/completions", json.dumps({"messages": turn}).encode())
    assert key == "/v1/chat/completions\x00S\x00hi"
    assert affinity_key("/v1/chat/completions", json.dumps({"messages": later}).encode()) == key
    long = json.dumps({"prompt": "x" * 1000 + "tail"}).encode()
    assert affinity_key("/c", long) == affinity_key("/c", json.dumps({"prompt": "x" * 64}).encode())
    assert affinity_key("/c", b"not json") is None and affinity_key("/c", b"") is None


def test_a_gone_replica_moves_only_its_own_keys():
    replicas = ["r1", "r2", "r3", "r4"]
    keys = [f"prompt {i}" for i in range(200)]
    first = {k: rank(k, replicas)[0] for k in keys}
    assert set(first.values()) == set(replicas)  # spread over all of them
    after = {k: rank(k, ["r1", "r2", "r4"])[0] for k in keys}
    moved = {k for k in keys if after[k] != first[k]}
    assert moved == {k for k in keys if first[k] == "r3"}
    assert all(rank(k, replicas)[1] == after[k] for k in moved)  # to their second choice


def test_metrics_of_replicas_are_summed_and_ratios_averaged():
    one = (
        "# HELP llamacpp:requests Number.\n# TYPE llamacpp:requests counter\n"
        "llamacpp:requests_total {r}\n# HELP llamacpp:kv_cache_usage_ratio KV.\n"
        "# TYPE llamacpp:kv_cache_usage_ratio gauge\nllamacpp:kv_cache_usage_ratio {k}\n"
    )
    text = aggregate_metrics([one.format(r=3, k=0.5), one.format(r=4, k=0.25)])
    assert "llamacpp:requests_total 7\n" in text
    assert "llamacpp:kv_cache_usage_ratio 0.375\n" in text


def test_replicas_ask_ray_for_their_device_and_scale_between_bounds():
    from llmrt.ray import deployment_options
    from llmrt.server import ServerSettings

    cpu = deployment_options(ServerSettings(device="cpu", threads=3, n_parallel=4), 2, None, None)
    assert cpu["num_replicas"] == 2 and "autoscaling_config" not in cpu
    assert cpu["ray_actor_options"] == {"num_cpus": 3} and cpu["max_ongoing_requests"] == 4
    gpu = deployment_options(ServerSettings(device="cuda:0", n_parallel=2), 1, 1, 4)
    assert gpu["ray_actor_options"] == {"num_gpus": 1, "num_cpus": 1}
    assert gpu["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4,
                                         "target_ongoing_requests": 2}  # fmt: skip
    assert "num_replicas" not in gpu
