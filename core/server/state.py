"""What the server's modules share: its settings, the loaded model's state, and errors in
llama-server's JSON shape (`{"error": {"code": 400, "message": "...", "type": "..."}}`)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import JSONResponse

from llmrt.errors import LlmrtError
from llmrt.sampling import SamplingParams
from llmrt.server.slots import Scheduler

log = logging.getLogger("llmrt.server")


@dataclass
class ServerSettings:
    """What `llmrt serve` takes; llama-server's defaults where it has one."""

    model: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    n_ctx: int = 4096  # all slots together; each gets n_ctx // n_parallel (all: kv_unified)
    n_parallel: int = 1
    n_batch: int = 512
    n_predict: int = -1  # the tokens a request that names no count generates; -1: no limit
    sampling: SamplingParams = field(default_factory=SamplingParams)  # a request's defaults
    api_key: str | None = None
    device: str = "auto"
    n_gpu_layers: int = -1
    tensor_split: list[float] | None = None  # with several devices: their shares of the layers
    split_mode: str = "layer"  # llama.cpp's -sm: layer, or none (the main_gpu-th device alone)
    main_gpu: int = 0
    threads: int | None = None  # host threads for the kernels; None: the physical cores
    chat_template: str | None = None  # Jinja text (serve resolves built-in names); None: the GGUF's
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)  # extra template variables
    reasoning: str = "auto"  # on | off | auto: templates get enable_thinking (true unless off)
    verbose: bool = False  # every response carries `__verbose`
    cors_origins: str | None = "*"  # llama-server's --cors-origins; None or "none": no CORS
    queue_size: int = 64
    alias: str | None = None  # names of the model in the API, separated by commas
    tags: str | None = None  # the model's tags in /models, separated by commas
    ui: bool = True  # the web UI at /
    metrics: bool = False  # /metrics only when asked (llama-server's --metrics)
    slots_endpoint: bool = True
    embedding: bool = False  # /embedding, /embeddings and /v1/embeddings (--embedding)
    pooling: str | None = None  # none, mean, cls or last; None: the GGUF's, else mean
    context_shift: bool = False  # a full slot drops old tokens and goes on (--context-shift)
    slot_save_path: str | None = None  # the folder of /slots/{id}?action=save|restore files
    kv_unified: bool = False  # the slots share one pool of n_ctx cells (--kv-unified)
    # host-memory prompt cache in MiB (--cache-ram; -1: no limit). `llmrt serve` defaults to
    # llama-server's 8192; an app made here has none unless asked
    cache_ram_mib: int = 0


class ApiError(Exception):
    """A request the server answers with an error; `extra` goes into the error object."""

    def __init__(
        self, code: int, message: str, type_: str = "invalid_request_error", **extra: Any
    ) -> None:
        super().__init__(message)
        self.code, self.message, self.type, self.extra = code, message, type_, extra


def error_body(code: int, message: str, type_: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "type": type_, **extra}}


def error_response(code: int, message: str, type_: str, **extra: Any) -> JSONResponse:
    if code >= 500:  # the exception behind it, if any, was logged with its traceback where caught
        log.warning("answered %d: %s", code, message)
    return JSONResponse(error_body(code, message, type_, **extra), status_code=code)


ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    501: "not_supported_error",
    503: "unavailable_error",
}


class State:
    """The loaded model and its scheduler, shared by the handlers."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.model: Any = None
        self.scheduler: Scheduler | None = None
        self.load_error: str | None = None
        self.t_start = int(time.time())

    @property
    def ready(self) -> bool:
        return self.scheduler is not None

    @property
    def alias(self) -> str:
        """The model's name in the API: the first of its aliases in sorted order (as
        llama-server), else the file's name."""
        if self.aliases:
            return self.aliases[0]
        return self.model.path.name if self.model is not None else str(self.settings.model)

    @property
    def aliases(self) -> list[str]:
        return sorted({a.strip() for a in (self.settings.alias or "").split(",") if a.strip()})

    @property
    def tags(self) -> list[str]:
        return sorted({t.strip() for t in (self.settings.tags or "").split(",") if t.strip()})

    @property
    def pooling(self) -> str:
        """How embeddings are pooled: --pooling, else the model's (its GGUF's pooling_type),
        else mean. (llama.cpp falls back to none for a GGUF that names none, which makes a
        decoder's /v1/embeddings a 400 until --pooling is given; mean is the useful default.)"""
        return self.settings.pooling or self.model.pooling or "mean"

    def load(self, model: Any = None) -> None:
        s = self.settings
        try:
            if model is None:
                from llmrt.engine import load

                model = load(s.model, device=s.device, n_gpu_layers=s.n_gpu_layers,
                             threads=s.threads, tensor_split=s.tensor_split,
                             split_mode=s.split_mode, main_gpu=s.main_gpu)  # fmt: skip
            scheduler = Scheduler(
                model,
                n_ctx=s.n_ctx,
                n_parallel=s.n_parallel,
                n_batch=s.n_batch,
                queue_size=s.queue_size,
                context_shift=s.context_shift,
                kv_unified=s.kv_unified,
                cache_ram_mib=s.cache_ram_mib,
            )
            _ = model.tokenizer  # read the vocabulary now, not on the first request
            self.model = model
            scheduler.start()
            self.scheduler = scheduler
        except Exception as exc:  # noqa: BLE001 - reported by /health and the CLI
            self.load_error = (
                str(exc) if isinstance(exc, LlmrtError) else f"{type(exc).__name__}: {exc}"
            )
            if not isinstance(exc, LlmrtError):  # a bug, not a bad setting: keep its traceback
                log.exception("cannot load the model")
            raise


def scheduler_of(state: State) -> Scheduler:
    assert state.scheduler is not None  # the gate answers 503 until it is set
    return state.scheduler
