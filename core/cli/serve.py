"""``llmrt serve``: an HTTP server with llama-server's API, OpenAI's, and a web UI."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer

from llmrt.cli.common import (
    DeviceOption,
    MainGpuOption,
    SplitModeOption,
    TensorSplitOption,
    ThreadsOption,
    VerboseOption,
    check_arg,
    check_common,
    parse_tensor_split,
)
from llmrt.cli.run import ModelOpt, NglOpt, graph_report, placement
from llmrt.errors import UsageError

Opt = typer.Option


def serve(
    model: ModelOpt = None,
    host: Annotated[
        str,
        Opt(
            "--host",
            help="Addresses to listen on, comma-separated (IPv4, IPv6, or UNIX socket paths "
            "ending in .sock); with several TCP addresses, :: is IPv6 only.",
        ),
    ] = "127.0.0.1",
    port: Annotated[int, Opt("--port", help="Port to listen on.")] = 8080,
    ctx_size: Annotated[
        int, Opt("-c", "--ctx-size", help="Context size of all slots together; 0: the model's.")
    ] = 4096,
    parallel: Annotated[int, Opt("-np", "--parallel", help="Slots served in parallel.")] = 1,
    batch_size: Annotated[int, Opt("-b", "--batch-size", help="Tokens per decode step.")] = 512,
    n_predict: Annotated[
        int, Opt("-n", "--n-predict", help="Default tokens to generate; -1: until the end.")
    ] = -1,
    seed: Annotated[int, Opt("-s", "--seed", help="Default RNG seed; -1: random.")] = -1,
    temp: Annotated[float, Opt("--temp", help="Default temperature; 0 or below: greedy.")] = 0.8,
    top_k: Annotated[int, Opt("--top-k", help="Default top-k; 0: off.")] = 40,
    top_p: Annotated[float, Opt("--top-p", help="Default top-p; 1.0: off.")] = 0.95,
    min_p: Annotated[float, Opt("--min-p", help="Default min-p; 0.0: off.")] = 0.05,
    typical: Annotated[float, Opt("--typical", help="Default locally typical p; 1.0: off.")] = 1.0,
    repeat_penalty: Annotated[float, Opt("--repeat-penalty", help="Default; 1.0: off.")] = 1.0,
    repeat_last_n: Annotated[
        int, Opt("--repeat-last-n", help="Tokens the penalties look at; -1: all.")
    ] = 64,
    presence_penalty: Annotated[float, Opt("--presence-penalty", help="Default; 0: off.")] = 0.0,
    frequency_penalty: Annotated[float, Opt("--frequency-penalty", help="Default; 0: off.")] = 0.0,
    top_nsigma: Annotated[float, Opt("--top-nsigma", help="Default top-n-sigma; -1: off.")] = -1.0,
    xtc_probability: Annotated[
        float, Opt("--xtc-probability", help="Default XTC probability; 0: off.")
    ] = 0.0,
    xtc_threshold: Annotated[float, Opt("--xtc-threshold", help="Default XTC threshold.")] = 0.1,
    dynatemp_range: Annotated[
        float, Opt("--dynatemp-range", help="Default dynamic temperature range; 0: off.")
    ] = 0.0,
    dynatemp_exp: Annotated[
        float, Opt("--dynatemp-exp", help="Default dynamic temperature exponent.")
    ] = 1.0,
    api_key: Annotated[
        str | None, Opt("--api-key", help="Require `Authorization: Bearer KEY`.")
    ] = None,
    device: DeviceOption = "auto",
    tensor_split: TensorSplitOption = None,
    split_mode: SplitModeOption = "layer",
    main_gpu: MainGpuOption = 0,
    threads: ThreadsOption = 0,
    n_gpu_layers: NglOpt = -1,
    chat_template: Annotated[
        str | None,
        Opt(
            "--chat-template",
            help="A built-in template's name (llama3, chatml, gemma, "
            "mistral-v7, ...: see docs/server.md) or a Jinja template's text; default: the "
            "GGUF's.",
        ),
    ] = None,
    chat_template_file: Annotated[
        Path | None, Opt("--chat-template-file", help="Read the Jinja chat template from a file.")
    ] = None,
    reasoning: Annotated[
        str,
        Opt(
            "--reasoning",
            help="on, off or auto (default): whether chat templates that can "
            "make a model think get enable_thinking true.",
        ),
    ] = "auto",
    chat_template_kwargs: Annotated[
        str | None,
        Opt(
            "--chat-template-kwargs",
            help="Extra template variables as JSON, e.g. '{\"enable_thinking\": false}'.",
        ),
    ] = None,
    cors_origins: Annotated[
        str,
        Opt(
            "--cors-origins",
            help="Origins allowed cross-origin access, as llama-server: * (any: "
            "the request's Origin is echoed), localhost (loopback origins only), one origin, or "
            "none.",
        ),
    ] = "*",
    queue_size: Annotated[
        int, Opt("--queue-size", help="Requests waiting for a slot before 503.")
    ] = 64,
    alias: Annotated[
        str | None, Opt("-a", "--alias", help="Model name(s) in the API, comma-separated.")
    ] = None,
    tags: Annotated[
        str | None, Opt("--tags", help="Model tags in /models, comma-separated.")
    ] = None,
    ui: Annotated[bool, Opt("--ui/--no-ui", help="Serve the web UI at /.")] = True,
    metrics: Annotated[bool, Opt("--metrics/--no-metrics", help="Serve /metrics.")] = False,
    slots: Annotated[bool, Opt("--slots/--no-slots", help="Serve /slots.")] = True,
    embedding: Annotated[
        bool,
        Opt(
            "--embedding", "--embeddings", help="Serve /embedding, /embeddings and /v1/embeddings."
        ),
    ] = False,
    pooling: Annotated[
        str | None,
        Opt(
            "--pooling",
            help="How embeddings are pooled: none, mean, cls or last; default: the "
            "model's (GGUF pooling_type), else mean.",
        ),
    ] = None,
    context_shift: Annotated[
        bool,
        Opt(
            "--context-shift/--no-context-shift",
            help="When a slot's context is full, drop half of its tokens after n_keep and go on.",
        ),
    ] = False,
    slot_save_path: Annotated[
        Path | None,
        Opt("--slot-save-path", help="Folder for /slots/{id}?action=save|restore files."),
    ] = None,
    kv_unified: Annotated[
        bool,
        Opt(
            "-kvu",
            "--kv-unified/--no-kv-unified",
            help="The slots share one pool of -c cells, each may fill it; when a step finds no "
            "room, every active request fails (llama-server's --kv-unified).",
        ),
    ] = False,
    cache_ram: Annotated[
        int,
        Opt(
            "-cram",
            "--cache-ram",
            help="Host-memory prompt cache in MiB: prompts of slots about to be overwritten, "
            "loaded again for a request that shares them (-1: no limit, 0: off).",
        ),
    ] = 8192,
    replicas: Annotated[
        int,
        Opt(
            "--replicas",
            help="Serve through N replicas on Ray Serve (llmrt[ray]); 0: this process alone.",
        ),
    ] = 0,
    ray_address: Annotated[
        str | None, Opt("--ray-address", help="Join this Ray cluster (default: start one here).")
    ] = None,
    min_replicas: Annotated[
        int | None, Opt("--min-replicas", help="With --replicas: autoscale from this many.")
    ] = None,
    max_replicas: Annotated[
        int | None, Opt("--max-replicas", help="With --replicas: autoscale up to this many.")
    ] = None,
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
    check_arg("--cache-ram", cache_ram, cache_ram >= -1, "MiB >= 0, or -1 for no limit")
    hosts = parse_hosts(host)
    if port == 0 and sum(not h.endswith(".sock") for h in hosts) > 1:
        raise UsageError("--port 0 is not supported with several TCP addresses in --host")
    from llmrt.sampling import SamplingParams

    check_common(top_k=top_k)
    sampling = SamplingParams(
        temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical,
        repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n,
        presence_penalty=presence_penalty, frequency_penalty=frequency_penalty, seed=seed,
        top_n_sigma=top_nsigma, xtc_probability=xtc_probability, xtc_threshold=xtc_threshold,
        dynatemp_range=dynatemp_range, dynatemp_exponent=dynatemp_exp,
    )  # fmt: skip
    sampling.validate()
    if pooling is not None:
        check_arg("--pooling", pooling, pooling in ("none", "mean", "cls", "last"),
                  "none, mean, cls or last")  # fmt: skip
    if slot_save_path is not None and not slot_save_path.is_dir():
        raise UsageError(f"--slot-save-path: not a directory: {slot_save_path}")
    check_arg("--reasoning", reasoning, reasoning in ("on", "off", "auto"), "on, off or auto")
    template = _chat_template(chat_template, chat_template_file)
    kwargs = _template_kwargs(chat_template_kwargs)
    settings = ServerSettings(
        model=model, host=host, port=port, n_ctx=ctx_size, n_parallel=parallel,
        n_batch=batch_size, n_predict=n_predict, sampling=sampling, api_key=api_key,
        device=device, n_gpu_layers=n_gpu_layers, threads=threads or None,
        tensor_split=parse_tensor_split(tensor_split), split_mode=split_mode, main_gpu=main_gpu,
        chat_template=template, chat_template_kwargs=kwargs, reasoning=reasoning, verbose=verbose,
        cors_origins=cors_origins, queue_size=queue_size, alias=alias, tags=tags, ui=ui,
        metrics=metrics, slots_endpoint=slots, embedding=embedding, pooling=pooling,
        slot_save_path=str(slot_save_path) if slot_save_path is not None else None,
        context_shift=context_shift, kv_unified=kv_unified, cache_ram_mib=cache_ram,
    )  # fmt: skip
    if replicas or ray_address or min_replicas is not None or max_replicas is not None:
        if len(hosts) > 1 or hosts[0].endswith(".sock"):
            raise UsageError("--replicas serves on one TCP address: give --host one")
        _serve_on_ray(settings, replicas, ray_address, min_replicas, max_replicas)
        return
    failed: list[str] = []

    def on_load_error(message: str) -> None:
        failed.append(message)
        print(f"llmrt: error: cannot load the model: {message}", file=sys.stderr)
        server.should_exit = True

    where = ", ".join(address_url(h, port) for h in hosts)

    def on_ready(model) -> None:
        print(f"llmrt: {model.path.name} loaded on {model.device.id}; ready at {where}",
              file=sys.stderr)  # fmt: skip
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
    # h11 writes header names as given (httptools lowers them): clients that look up
    # llama-server's names (Access-Control-Allow-Origin, ...) case-sensitively find them
    config = uvicorn.Config(app, host=hosts[0], port=port, log_level="warning",
                            access_log=False, http="h11")  # fmt: skip
    # several addresses (or a UNIX socket): bound here, all served by the one server
    sockets = bind_sockets(hosts, port) if len(hosts) > 1 or hosts[0].endswith(".sock") else None
    server = _uvicorn_server(config, sockets or [])
    print(f"llmrt: listening on {where} (loading the model)", file=sys.stderr)
    server.run(sockets=sockets)
    if failed:
        raise SystemExit(1)


def _uvicorn_server(config, sockets: list[socket.socket]):
    """uvicorn's server, removing its UNIX socket files when it shuts down (uvicorn raises the
    signal that stopped it again after shutdown, so nothing after run() would)."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            try:
                await super().shutdown(sockets)
            finally:
                for path in files:
                    with contextlib.suppress(OSError):
                        os.unlink(path)

    files = [s.getsockname() for s in sockets if s.family == socket.AF_UNIX]  # before closing
    return Server(config)


def parse_hosts(value: str) -> list[str]:
    """--host as llama-server reads it: comma-separated addresses, blanks dropped; an IPv6
    address may be written in brackets."""
    hosts = [h.strip() for h in value.split(",")]
    hosts = [h[1:-1] if h.startswith("[") and h.endswith("]") else h for h in hosts if h]
    if not hosts:
        raise UsageError("--host requires at least one address")
    return hosts


def address_url(host: str, port: int) -> str:
    if host.endswith(".sock"):
        return f"unix://{host}"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def bind_sockets(hosts: list[str], port: int) -> list[socket.socket]:
    """A listening socket for each address (llama-server's: with several TCP addresses, an
    IPv6 one is IPv6 only, so that :: and 0.0.0.0 can both be given)."""
    n_tcp = sum(not h.endswith(".sock") for h in hosts)
    sockets: list[socket.socket] = []
    try:
        for host in hosts:
            if host.endswith(".sock"):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(host)
                sock.bind(host)
            else:
                try:
                    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                              flags=socket.AI_PASSIVE)  # fmt: skip
                except socket.gaierror as exc:
                    raise UsageError(f"--host: cannot resolve {host}: {exc.strerror}") from None
                family, kind, proto, _, addr = info[0]
                sock = socket.socket(family, kind, proto)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6 and n_tcp > 1:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    sock.bind(addr)
                except OSError as exc:
                    sock.close()
                    raise UsageError(f"--host: cannot listen on {address_url(host, port)}: "
                                     f"{exc.strerror}") from None  # fmt: skip
            sockets.append(sock)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _serve_on_ray(settings, replicas: int, address: str | None, low: int | None,
                  high: int | None) -> None:  # fmt: skip
    """--replicas: the same API served by replicas on Ray Serve (llmrt.ray)."""
    check_arg("--replicas", replicas, replicas >= 0, "a replica count >= 1 (0: no Ray)")
    if low is not None:
        check_arg("--min-replicas", low, low >= 0 and (high is None or low <= high),
                  "a count from 0 to --max-replicas")  # fmt: skip
    if high is not None:
        check_arg("--max-replicas", high, high >= 1, "a count >= 1")
    try:
        from llmrt.ray import serve_replicas
    except ModuleNotFoundError as exc:
        raise UsageError(f"--replicas needs Ray Serve: pip install 'llmrt[ray]' ({exc.name} is "
                         "missing)") from None  # fmt: skip
    n = replicas or (low if low is not None else 1)

    def on_ready() -> None:
        print(f"llmrt: {n} replica(s) of {settings.model or 'the default model'} on Ray; ready "
              f"at http://{settings.host}:{settings.port}", file=sys.stderr)  # fmt: skip

    serve_replicas(settings, n, ray_address=address, min_replicas=low, max_replicas=high,
                   on_ready=on_ready)  # fmt: skip


def _chat_template(value: str | None, path: Path | None) -> str | None:
    from llmrt.server.chat import resolve_template

    if value is not None and path is not None:
        raise UsageError("give --chat-template or --chat-template-file, not both")
    if path is not None:
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--chat-template-file: cannot read {path}: {exc.strerror}") from None
    return resolve_template(value)


def _template_kwargs(text: str | None) -> dict:
    if text is None:
        return {}
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--chat-template-kwargs: not JSON: {exc}") from None
    if not isinstance(kwargs, dict):
        raise UsageError(
            "--chat-template-kwargs: a JSON object, e.g. '{\"enable_thinking\": false}'"
        )
    return kwargs


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
