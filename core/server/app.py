"""The FastAPI app: llama-server's native endpoints, OpenAI's, the web UI, auth and errors.

Errors are llama-server's JSON: `{"error": {"code": 400, "message": "...", "type":
"invalid_request_error"}}`. Request bodies are parsed as JSON whatever their Content-Type (as
llama-server does), validated by the pydantic models of `schemas.py`; anything a client can get
wrong is a 4xx. The model loads in a thread after the server starts listening: until it is ready
/health and every model endpoint answer 503. The routes are in `native.py` and `openai.py`.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmrt.errors import LlmrtError
from llmrt.server import anthropic, embeddings, infill, native, openai, responses
from llmrt.server.state import (
    ERROR_TYPES,
    ApiError,
    ServerSettings,
    State,
    error_response,
    log,
)

__all__ = ["ServerSettings", "create_app"]

# Paths served without an API key (llama-server's public endpoints, the UI and the schema).
PUBLIC = {"/", "/health", "/v1/health", "/models", "/v1/models", "/openapi.json", "/docs"}
# Paths that answer while the model loads.
WHILE_LOADING = {"/", "/health", "/v1/health", "/openapi.json", "/docs", "/docs/oauth2-redirect"}


class _Asgi:
    """A plain ASGI middleware around `handler(scope, receive, send, app)` (Starlette's
    BaseHTTPMiddleware would hide a client's hang-up from the endpoints)."""

    def __init__(self, app: Any, handler: Callable) -> None:
        self.app, self.handler = app, handler

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        await self.handler(scope, receive, send, self.app)


async def _json_body(scope: dict, receive: Callable, send: Callable, app: Any) -> None:
    """POST bodies are JSON whatever the Content-Type says (llama-server ignores it; curl -d
    without -H sends application/x-www-form-urlencoded)."""
    if scope["type"] == "http" and scope["method"] == "POST":
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
        headers.append((b"content-type", b"application/json"))
        scope = {**scope, "headers": headers}
    await app(scope, receive, send)


def create_app(
    settings: ServerSettings,
    model: Any = None,
    on_load_error: Callable[[str], None] | None = None,
    on_ready: Callable[[Any], None] | None = None,
) -> FastAPI:
    """The app. `model`: an already loaded `llmrt.engine.Model` (tests share one); otherwise
    `settings.model` is loaded in a thread when the app starts. `on_ready(model)` is called once
    the model serves requests, `on_load_error(message)` if it cannot load."""
    state = State(settings)

    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        def load() -> None:
            try:
                state.load(model)
            except Exception:  # noqa: BLE001
                if on_load_error is not None:
                    on_load_error(state.load_error or "failed to load the model")
                return
            if on_ready is not None:
                on_ready(state.model)

        loader = threading.Thread(target=load, name="llmrt-load", daemon=True)
        loader.start()
        yield
        if state.scheduler is not None:
            state.scheduler.shutdown()

    app = FastAPI(
        title="llmrt server",
        version="0.1.0",
        description="llama-server's API and OpenAI's, served by llmrt.",
        lifespan=lifespan,
    )
    app.state.llmrt = state

    _install_middleware(app, state)
    _install_error_handlers(app)
    native.add_routes(app, state)
    openai.add_routes(app, state)
    anthropic.add_routes(app, state)
    infill.add_routes(app, state)
    responses.add_routes(app, state)
    embeddings.add_routes(app, state)
    return app


def _install_middleware(app: FastAPI, state: State) -> None:
    settings = state.settings

    async def gate(scope: dict, receive: Callable, send: Callable, app: Any) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            return await app(scope, receive, send)
        path = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = None
        if settings.api_key and path not in PUBLIC:
            auth = headers.get("authorization", "")
            bearer = auth.lower().startswith("bearer ")
            key = auth[7:] if bearer else headers.get("x-api-key")
            if key != settings.api_key:
                refusal = error_response(401, "Invalid API Key", "authentication_error")
        if refusal is None and not state.ready and path not in WHILE_LOADING:
            if state.load_error:
                refusal = error_response(500, state.load_error, "server_error")
            else:
                refusal = error_response(503, "Loading model", "unavailable_error")
        if refusal is not None:
            return await refusal(scope, receive, send)
        return await app(scope, receive, send)

    app.add_middleware(_Asgi, handler=gate)
    if settings.cors_origins not in (None, "", "none"):
        app.add_middleware(_Asgi, handler=_cors(settings.cors_origins))
    app.add_middleware(_Asgi, handler=_json_body)
    app.add_middleware(_Asgi, handler=_unhandled)


CORS_METHODS = b"GET, POST, DELETE, OPTIONS"


def _is_loopback(origin: str) -> bool:
    from urllib.parse import urlsplit

    try:
        return urlsplit(origin).hostname in ("localhost", "127.0.0.1", "::1")
    except ValueError:
        return False


def _cors(origins: str) -> Callable:
    """llama-server's CORS: `*` gives every origin access (its Origin header is echoed, with
    credentials), `localhost` only loopback origins, anything else is sent as the allowed origin.
    Every OPTIONS request (a browser's preflight) is answered here, 200 and empty."""

    async def handler(scope: dict, receive: Callable, send: Callable, app: Any) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        origin = dict(scope["headers"]).get(b"origin", b"").decode("latin-1")
        if origins == "*":
            allowed = origin
        elif origins == "localhost":
            allowed = origin if _is_loopback(origin) else ""
        else:
            allowed = origins
        # llama-server's spelling of the names (HTTP names are case-insensitive, some clients not)
        extra = [(b"Access-Control-Allow-Origin", allowed.encode("latin-1"))] if allowed else []
        if scope["method"] == "OPTIONS":
            extra += [
                (b"Access-Control-Allow-Credentials", b"true"),
                (b"Access-Control-Allow-Methods", CORS_METHODS),
                (b"Access-Control-Allow-Headers", b"*"),
                (b"content-type", b"text/html"),
                (b"content-length", b"0"),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": extra})
            await send({"type": "http.response.body", "body": b""})
            return None

        async def send_with_cors(message: dict) -> None:
            if message["type"] == "http.response.start" and extra:
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return await app(scope, receive, send_with_cors)

    return handler


async def _unhandled(scope: dict, receive: Callable, send: Callable, app: Any) -> None:
    """An exception no handler answered is a bug: log it with its traceback and answer 500 in
    llama-server's JSON (or end the stream if the response had started)."""
    started = False

    async def tracking_send(message: dict) -> None:
        nonlocal started
        started = started or message["type"] == "http.response.start"
        await send(message)

    try:
        await app(scope, receive, tracking_send)
    except Exception as exc:  # noqa: BLE001
        if scope["type"] != "http":
            raise
        log.exception("%s %s failed", scope.get("method"), scope.get("path"))
        if not started:
            response = error_response(500, f"{type(exc).__name__}: {exc}", "server_error")
            await response(scope, receive, send)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.code, exc.message, exc.type, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:5]:
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return error_response(400, "; ".join(parts) or "invalid request", "invalid_request_error")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = exc.status_code
        return error_response(code, str(exc.detail), ERROR_TYPES.get(code, "server_error"))

    @app.exception_handler(LlmrtError)
    async def llmrt_error(request: Request, exc: LlmrtError) -> JSONResponse:
        return error_response(400, str(exc), "invalid_request_error")
