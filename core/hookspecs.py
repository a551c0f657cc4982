"""The plugin contract. Read this file first.

llmrt finds plugins through the entry-point group ``llmrt`` (``[project.entry-points.llmrt]`` in a
plugin's pyproject.toml); the entry point names a module whose functions are marked with
``@llmrt.hookimpl``. The built-in backends (cpu, cuda, vulkan, opencl) register exactly this way.

Every hook takes a ``register`` callback (or the object to extend) instead of returning values, so
that llmrt owns validation and ordering. A plugin implements any subset of the hooks, and an
implementation may accept any subset of a hook's arguments. Hooks are called once per process,
each plugin's implementation guarded on its own: one that raises is reported by ``llmrt plugins``
and ``llmrt devices`` and skipped, and every other plugin keeps working.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import typer

    from llmrt.device import Backend

PROJECT = "llmrt"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_backends(register: Callable[[Backend], None]) -> None:
    """Register compute backends, one ``llmrt.device.Backend`` instance per library.

    :param register: call ``register(backend)`` once per backend. ``backend.name`` must be a unique
        lowercase word (it becomes the prefix of ``--device name:N``) and ``backend.api_version``
        must equal ``llmrt.device.API_VERSION``; a backend that fails either check is rejected
        and reported.

    Registering must be cheap and must not import the backend's heavy library (cupy, vulkan,
    pyopencl): that happens in ``Backend.probe()``, which says whether the backend can run here.
    """


@hookspec
def register_architectures(register: Callable[[str, Any], None]) -> None:
    """Map a GGUF ``general.architecture`` value to the function that builds its forward graph.

    :param register: call ``register(name, builder)``; a second builder for the same name is
        rejected and reported.
    """


@hookspec
def register_commands(app: typer.Typer) -> None:
    """Add subcommands to the ``llmrt`` command line (``@app.command()``)."""


@hookspec
def register_conformance_cases(register: Callable[[Any], None]) -> None:
    """Add op cases (for instance fused ops a backend implements) to the shared conformance suite.

    :param register: call ``register(case)`` with an ``llmrt.testing`` op case.
    """
