"""Serving past one machine: replicas of llmrt's server on Ray Serve, behind one endpoint.

`llmrt serve --replicas N` starts (or with `--ray-address`, joins) a Ray cluster and runs N
replicas of `LlmrtReplica`, a Ray Serve deployment: each one an actor process that asks Ray for its
device (a GPU, or CPU threads), loads the model once and runs llmrt's own server app in process,
with its own slots and continuous batching. The process that ran the command is the front door:
it serves the same HTTP API (native and OpenAI routes, streaming, API key, /metrics) and hands
every request to a replica through a deployment handle.

Routing keeps a conversation's prompt cache warm: each request carries a key made from the start
of its prompt (or its messages up to the first user message), and `PrefixAffinityRouter` ranks
the live replicas by rendezvous hashing of that key, so requests sharing a prefix go to the same
replica while it is healthy and has a free slot, and to the next one in that key's order when it
has not (a dead replica's keys move, no other key does). A request whose replica dies before
answering is tried on the next; one that dies mid-stream ends with an error event. Ray restarts a
dead replica.

`deployment(model=...)` is the replica deployment for people who compose their own Ray apps
(`serve.run(llmrt.ray.deployment(model="smollm2-135m"))` serves it through Ray's own proxy).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any

from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from llmrt.errors import UsageError
from llmrt.server import ServerSettings

APP_NAME = "llmrt"
AFFINITY_CHARS = 64  # how much of a prompt's start keys its replica
RETRIES = 2  # further replicas a request that failed before its first byte is tried on
METRICS_EVERY_S = 2.0  # how often a replica posts its /metrics to the front door's board
HOP_HEADERS = {b"content-length", b"transfer-encoding", b"connection"}


def affinity_key(path: str, body: bytes) -> str | None:
    """What a request's replica is chosen by: for a chat, its messages up to the first user
    message (what every later turn of the conversation starts with too); for a prompt, its first
    AFFINITY_CHARS characters. None when there is no prompt."""
    try:
        data = json.loads(body) if body else None
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("messages"), list):
        opening = []
        for message in data["messages"]:
            if isinstance(message, dict):
                opening.append(str(message.get("content", "")))
                if message.get("role") == "user":
                    break
        text = "\x00".join(opening)
    else:
        prompt = data.get("prompt", data.get("content"))
        text = (prompt if isinstance(prompt, str) else json.dumps(prompt))[:AFFINITY_CHARS]
    return f"{path}\x00{text}" if text else None


def rank(key: str | None, replica_ids: list[str]) -> list[str]:
    """Replica ids in the order a key prefers them (rendezvous hashing); None: as given."""
    if key is None:
        return list(replica_ids)

    def weight(rid: str) -> bytes:
        return hashlib.blake2b(f"{key}\x00{rid}".encode(), digest_size=8).digest()

    return sorted(replica_ids, key=weight, reverse=True)


class PrefixAffinityRouter(RequestRouter):
    """Ranks the live replicas by a request's `affinity` key: one rank each, so that a full or
    dead first choice falls to the key's second, and so on."""

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if pending_request is not None:
            pending_request.routing_context.should_backoff = True  # all full: wait, then retry
        if not candidate_replicas:
            return []
        key = pending_request.kwargs.get("affinity") if pending_request is not None else None
        if key is None:
            return [candidate_replicas]
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        return [[by_id[rid]] for rid in rank(key, list(by_id))]


async def call_asgi(app: Any, scope: Mapping[str, Any], body: bytes) -> AsyncIterator[Any]:
    """Run one HTTP request through an ASGI app in process: yields the response-start message,
    then the body's chunks as they come (a stream's events one by one)."""
    queue: asyncio.Queue = asyncio.Queue()
    sent = False
    disconnected = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await queue.put(message)

    async def run() -> None:
        try:
            await app(dict(scope), receive, send)
        finally:
            await queue.put(None)

    task = asyncio.create_task(run())
    try:
        while True:
            message = await queue.get()
            if message is None:
                break
            if message["type"] == "http.response.start":
                yield message
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body"):
                    break
    finally:
        disconnected.set()  # the client went away, or the response ended
        await task


def _scope(method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]]) -> dict:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": query, "headers": headers, "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 80),
    }  # fmt: skip


class LlmrtReplica:
    """One replica: the model loaded once, llmrt's server app run in process."""

    async def __init__(self, settings: ServerSettings, board: str | None = None) -> None:
        from llmrt.engine import load
        from llmrt.server import create_app

        model = await asyncio.to_thread(
            load, settings.model, settings.device, settings.n_gpu_layers, settings.threads,
            settings.tensor_split, settings.split_mode, settings.main_gpu,
        )  # fmt: skip
        self.app = create_app(settings, model=model)
        self.lifespan = self.app.router.lifespan_context(self.app)
        await self.lifespan.__aenter__()
        state = self.app.state.llmrt
        while not state.ready and state.load_error is None:  # binding the loaded model
            await asyncio.sleep(0.01)
        if state.load_error:
            raise RuntimeError(state.load_error)
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.pid = os.getpid()
        self.board = board
        if board is not None:
            self.poster = asyncio.create_task(self._post_metrics())

    async def handle_request(
        self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]],
        body: bytes, affinity: str | None = None,
    ) -> AsyncIterator[Any]:  # fmt: skip
        """A request from the front door (`affinity` is read by the router): its response's
        start message, tagged with this replica, then the body's chunks."""
        async for item in call_asgi(self.app, _scope(method, path, query, headers), body):
            if isinstance(item, dict):
                item = {
                    **item,
                    "headers": [
                        *item.get("headers", []),
                        (b"x-llmrt-replica", self.replica_id.encode()),
                        (b"x-llmrt-replica-pid", str(self.pid).encode()),
                    ],
                }
            yield item

    async def __call__(self, request: Any) -> Any:
        """A request through Ray Serve's own HTTP proxy (a composed app)."""
        from starlette.responses import StreamingResponse

        body = await request.body()
        stream = call_asgi(self.app, request.scope, body)
        start = await anext(stream)
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in HOP_HEADERS]
        response = StreamingResponse(stream, status_code=start["status"])
        response.raw_headers = [*response.raw_headers, *headers]
        return response

    async def _post_metrics(self) -> None:
        import ray

        board = ray.get_actor(self.board)
        while True:
            try:
                text = await self._metrics_text()
                await board.post.remote(self.replica_id, text)
            except Exception:  # noqa: BLE001 - the board may be gone with the front door
                pass
            await asyncio.sleep(METRICS_EVERY_S)

    async def _metrics_text(self) -> str:
        chunks = []
        scope = _scope("GET", "/metrics", b"", [])
        async for item in call_asgi(self.app, scope, b""):
            if isinstance(item, dict) and item["status"] != 200:
                return ""
            if isinstance(item, bytes):
                chunks.append(item)
        return b"".join(chunks).decode()


def deployment(
    model: str | None = None, *, replicas: int = 1, min_replicas: int | None = None,
    max_replicas: int | None = None, settings: ServerSettings | None = None,
    board: str | None = None, **fields: Any,
) -> Any:  # fmt: skip
    """The replica deployment, bound: `serve.run(deployment(model="smollm2-135m"))`. Server
    settings come as `settings` or as `ServerSettings` fields (`n_parallel=4`, `threads=1`...);
    `min_replicas`/`max_replicas` turn on Ray Serve's autoscaling between them."""
    settings = replace(settings or ServerSettings(), **fields)
    if model is not None:
        settings = replace(settings, model=model)
    options = deployment_options(settings, replicas, min_replicas, max_replicas)
    cls = serve.deployment(name="LlmrtReplica", **options)(LlmrtReplica)
    return cls.bind(settings, board)


def deployment_options(settings: ServerSettings, replicas: int, min_replicas: int | None,
                       max_replicas: int | None) -> dict[str, Any]:  # fmt: skip
    """The replica deployment's Ray Serve options: its resources, a slot per ongoing request,
    quick health checks, the prefix router, and a fixed count or autoscaling bounds."""
    options: dict[str, Any] = {
        "ray_actor_options": _actor_resources(settings),
        "max_ongoing_requests": max(1, settings.n_parallel),  # a slot each: more queue in Ray
        "health_check_period_s": 2.0,
        "health_check_timeout_s": 30.0,
        "request_router_config": RequestRouterConfig(request_router_class=PrefixAffinityRouter),
    }
    if min_replicas is not None or max_replicas is not None:
        low = min_replicas if min_replicas is not None else 1
        options["autoscaling_config"] = {
            "min_replicas": low, "max_replicas": max(low, max_replicas or low),
            "target_ongoing_requests": max(1, settings.n_parallel),
        }  # fmt: skip
    else:
        options["num_replicas"] = replicas
    return options


def _actor_resources(settings: ServerSettings) -> dict[str, Any]:
    """What a replica asks Ray for: a GPU for a GPU device, else its CPU threads."""
    spec = settings.device
    if spec.strip().lower() in ("", "auto"):
        from llmrt.device import registry

        spec = registry().best().backend.name
    devices = {d.strip().split(":")[0] for d in spec.split(",")}
    if devices & {"cuda", "vulkan", "opencl"}:
        return {"num_gpus": 1, "num_cpus": 1}
    return {"num_cpus": settings.threads or 1}


def _check_resources(settings: ServerSettings, replicas: int, local: bool) -> None:
    """Fail in one line when the replicas ask for more than the Ray cluster has (Ray would wait
    for it forever); on a joined cluster, whose autoscaler may add machines, only say so."""
    import ray

    have = ray.cluster_resources()
    for option, name in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
        need = _actor_resources(settings).get(option, 0) * replicas
        if need > have.get(name, 0):
            what = (f"{replicas} replicas need {need:g} {name}s (each -t {settings.threads or 1}"
                    f"{', one GPU' if name == 'GPU' else ''}) and the Ray cluster has "
                    f"{have.get(name, 0):g}")  # fmt: skip
            if local:
                ray.shutdown()
                raise UsageError(f"{what}: lower --replicas or -t, or join a larger cluster "
                                 "with --ray-address")  # fmt: skip
            print(f"llmrt: {what}; waiting for the cluster to grow", file=sys.stderr)


def _board_class() -> Any:
    import ray

    @ray.remote(num_cpus=0)
    class MetricsBoard:
        """The replicas' latest /metrics, each dropped when not renewed in 5 posting periods
        (its replica has gone)."""

        def __init__(self) -> None:
            self.texts: dict[str, tuple[float, str]] = {}

        def post(self, replica: str, text: str) -> None:
            self.texts[replica] = (time.monotonic(), text)

        def read(self) -> dict[str, str]:
            now = time.monotonic()
            return {r: t for r, (at, t) in self.texts.items() if now - at < 5 * METRICS_EVERY_S}

    return MetricsBoard


def aggregate_metrics(texts: list[str]) -> str:
    """The replicas' Prometheus texts as one: counters and counts summed, ratios and averages
    (names with "ratio", "per_decode" or "seconds" after a rate) averaged."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, list[float]] = {}
    kinds: dict[str, tuple[str, str]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            kinds.setdefault(family.name, (family.type, family.documentation))
            for sample in family.samples:
                totals.setdefault(sample.name, []).append(sample.value)
    lines = []
    for family, (kind, doc) in kinds.items():
        lines += [f"# HELP {family} {doc}", f"# TYPE {family} {kind}"]
        for name, values in totals.items():
            if name != family and name != f"{family}_total":
                continue
            averaged = any(w in family for w in ("ratio", "per_decode", "tokens_seconds"))
            value = sum(values) / len(values) if averaged else sum(values)
            lines.append(f"{name} {value:g}")
    return "\n".join(lines) + "\n"


def front_door(handle: Any, board: Any, api_key: str | None, n_replicas: int) -> Any:
    """The HTTP app of `llmrt serve --replicas`: /health and /metrics itself, every other request
    handed to a replica by its prompt's prefix."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    def error(code: int, message: str, type_: str = "unavailable_error") -> JSONResponse:
        return JSONResponse({"error": {"code": code, "message": message, "type": type_}}, code)

    async def live_replicas() -> dict[str, str]:
        try:
            return await board.read.remote()
        except Exception:  # noqa: BLE001
            return {}

    async def health(request: Request) -> Response:
        live = await live_replicas()
        if not live:
            return error(503, "no replica is serving yet")
        return JSONResponse({"status": "ok", "replicas": sorted(live), "wanted": n_replicas})

    async def metrics(request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        key = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("x-api-key")
        if api_key and key != api_key:
            return error(401, "Invalid API Key", "authentication_error")
        live = await live_replicas()
        if not live or not all(live.values()):
            return error(501, "metrics are off: start the server with --metrics",
                         "not_supported_error")  # fmt: skip
        return Response(aggregate_metrics(list(live.values())),
                        media_type="text/plain; version=0.0.4")  # fmt: skip

    async def forward(request: Request) -> Response:
        body = await request.body()
        key = affinity_key(request.url.path, body)
        headers = [(k, v) for k, v in request.headers.raw if k.lower() not in HOP_HEADERS]
        call = handle.options(stream=True).handle_request
        for attempt in range(RETRIES + 1):
            stream = call.remote(request.method, request.url.path, request.url.query.encode(),
                                 headers, body, affinity=key)  # fmt: skip
            try:
                start = await stream.__anext__()
                break
            except Exception as exc:  # noqa: BLE001 - the replica died or could not be reached
                if attempt == RETRIES:
                    return error(503, f"no replica could answer: {type(exc).__name__}")
                await asyncio.sleep(0.5 * (attempt + 1))

        async def body_chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in stream:
                    yield chunk
            except Exception as exc:  # noqa: BLE001 - the replica died mid-stream
                why = f"the replica died mid-response ({type(exc).__name__})"
                message = {"error": {"code": 503, "type": "unavailable_error", "message": why}}
                yield f"data: {json.dumps(message)}\n\n".encode()

        response = StreamingResponse(body_chunks(), status_code=start["status"])
        kept = [(k, v) for k, v in start.get("headers", []) if k.lower() not in HOP_HEADERS]
        replaced = {k.lower() for k, _ in kept}
        own = [(k, v) for k, v in response.raw_headers if k.lower() not in replaced]
        response.raw_headers = [*own, *kept]
        return response

    methods = ["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]
    routes = [
        Route("/health", health), Route("/v1/health", health), Route("/metrics", metrics),
        Route("/{path:path}", forward, methods=methods),
    ]  # fmt: skip
    return Starlette(routes=routes)


def serve_replicas(
    settings: ServerSettings, replicas: int = 2, *, ray_address: str | None = None,
    min_replicas: int | None = None, max_replicas: int | None = None,
    on_ready: Any = None,
) -> None:  # fmt: skip
    """`llmrt serve --replicas`: start or join Ray, deploy the replicas, serve the front door on
    settings.host:port until interrupted; then remove the app (and a Ray instance started here)."""
    import ray
    import uvicorn

    from llmrt import pull

    # resolved here, once: a replica must not fetch the default model on its own
    settings = replace(settings, model=str(pull.resolve(settings.model)))
    started_here = ray_address is None
    ray.init(address=ray_address, include_dashboard=False, logging_level="ERROR",
             log_to_driver=settings.verbose)  # fmt: skip
    _check_resources(settings, max(replicas, min_replicas or 0), started_here)
    board_name = f"llmrt-metrics-{os.getpid()}"
    board = _board_class().options(name=board_name).remote()
    try:
        app = deployment(replicas=replicas, min_replicas=min_replicas, max_replicas=max_replicas,
                         settings=settings, board=board_name)  # fmt: skip
        handle = serve.run(app, name=APP_NAME, route_prefix=None)
        front = front_door(handle, board, settings.api_key, replicas)
        if on_ready is not None:
            on_ready()
        config = uvicorn.Config(front, host=settings.host, port=settings.port,
                                log_level="warning", access_log=False)  # fmt: skip
        uvicorn.Server(config).run()
    finally:
        try:
            serve.delete(APP_NAME)
        finally:
            if started_here:
                serve.shutdown()
                ray.shutdown()
