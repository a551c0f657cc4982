"""``llmrt serve``: an HTTP server with llama-server's API, OpenAI's, and a web UI."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from llmrt.cli.common import (
    DeviceOption,
    ThreadsOption,
    VerboseOption,
    check_arg,
    check_common,
)
from llmrt.cli.run import ChatTemplateOpt, ModelOpt, NglOpt, graph_report, placement
from llmrt.errors import UsageError

Opt = typer.Option


def serve(
    model: ModelOpt = None,
    host: Annotated[str, Opt("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, Opt("--port", help="Port to listen on.")] = 8080,
    ctx_size: Annotated[
        int, Opt("-c", "--ctx-size", help="Context size of all slots together; 0: the model's.")
    ] = 4096,
    parallel: Annotated[int, Opt("-np", "--parallel", help="Slots served in parallel.")] = 1,
    batch_size: Annotated[int, Opt("-b", "--batch-size", help="Tokens per decode step.")] = 512,
    n_predict: Annotated[
        int, Opt("-n", "--n-predict", help="Most tokens a request may generate; -1: no limit.")
    ] = -1,
    api_key: Annotated[
        str | None, Opt("--api-key", help="Require `Authorization: Bearer KEY`.")
    ] = None,
    device: DeviceOption = "auto",
    threads: ThreadsOption = 0,
    n_gpu_layers: NglOpt = -1,
    chat_template: ChatTemplateOpt = None,
    cors: Annotated[bool, Opt("--cors/--no-cors", help="Allow cross-origin requests.")] = False,
    queue_size: Annotated[
        int, Opt("--queue-size", help="Requests waiting for a slot before 503.")
    ] = 64,
    alias: Annotated[str | None, Opt("-a", "--alias", help="Model name in the API.")] = None,
    metrics: Annotated[bool, Opt("--metrics/--no-metrics", help="Serve /metrics.")] = True,
    slots: Annotated[bool, Opt("--slots/--no-slots", help="Serve /slots.")] = True,
    verbose: VerboseOption = False,
) -> None:
    """Serve a model over HTTP (like llama-server): /completion, /v1/chat/completions, a web UI."""
    try:
        import uvicorn

        from llmrt.server import ServerSettings, create_app
    except ModuleNotFoundError as exc:
        raise UsageError(f"llmrt serve needs the server extra: pip install 'llmrt[server]' "
                         f"({exc.name} is missing)") from None  # fmt: skip
    check_common(n_predict=n_predict, ctx_size=ctx_size, n_gpu_layers=n_gpu_layers,
                 batch_size=batch_size, threads=threads)  # fmt: skip
    check_arg("-np", parallel, parallel >= 1, "a slot count >= 1")
    check_arg("--queue-size", queue_size, queue_size >= 0, "a request count >= 0")
    check_arg("--port", port, 0 <= port <= 65535, "a TCP port, 0 to 65535")
    from llmrt.tokenizer.chat import CHATML_TEMPLATE, GEMMA_TEMPLATE

    # llama-server takes a built-in template's name too
    chat_template = {"chatml": CHATML_TEMPLATE, "gemma": GEMMA_TEMPLATE}.get(
        chat_template or "", chat_template
    )
    settings = ServerSettings(
        model=model, host=host, port=port, n_ctx=ctx_size, n_parallel=parallel,
        n_batch=batch_size, n_predict=n_predict, api_key=api_key, device=device,
        n_gpu_layers=n_gpu_layers, threads=threads or None, chat_template=chat_template, cors=cors,
        queue_size=queue_size, alias=alias, metrics=metrics, slots_endpoint=slots,
    )  # fmt: skip
    failed: list[str] = []

    def on_load_error(message: str) -> None:
        failed.append(message)
        print(f"llmrt: error: cannot load the model: {message}", file=sys.stderr)
        server.should_exit = True

    def on_ready(model) -> None:
        print(f"llmrt: {model.path.name} loaded on {model.device.id}; ready at "
              f"http://{host}:{port}", file=sys.stderr)  # fmt: skip
        if verbose:
            print(f"llmrt: {placement(model)}", file=sys.stderr)
            for line in graph_report(model):
                print(f"llmrt: {line}", file=sys.stderr)

    # 5xx answers and the tracebacks behind them go to stderr (uvicorn logs only its own)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("llmrt: %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("llmrt").addHandler(handler)
    logging.getLogger("llmrt").setLevel(logging.INFO)
    app = create_app(settings, on_load_error=on_load_error, on_ready=on_ready)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    print(f"llmrt: listening on http://{host}:{port} (loading the model)", file=sys.stderr)
    server.run()
    if failed:
        raise SystemExit(1)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
