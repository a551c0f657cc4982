"""The plugin contract. Read this file first.

llmrt finds plugins through the entry-point group ``llmrt`` (``[project.entry-points.llmrt]`` in a
plugin's pyproject.toml); the entry point names a module whose functions are marked with
``@llmrt.hookimpl``. The built-in backends (cpu, cuda, vulkan, opencl) register exactly this way.

Every hook takes a ``register`` callback (or the object to extend) instead of returning values, so
that llmrt owns validation and ordering. A plugin implements any subset of the hooks, and an
implementation may accept any subset of a hook's arguments. Hooks are called once per process
through pluggy's hook caller, with pluggy's semantics: the last registered implementation runs
first (entry points are registered so that theirs run in name order), ``@hookimpl(tryfirst=True)``
and ``trylast`` move one, and ``@hookimpl(wrapper=True)`` generators run around the others. Each
implementation is guarded on its own: one that raises is reported by ``llmrt plugins`` and
``llmrt devices`` and skipped, and every other plugin keeps working.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import typer

    from llmrt.device import Backend
    from llmrt.models import Architecture
    from llmrt.testing import OpCase

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
def register_architectures(register: Callable[[str, Architecture], None]) -> None:
    """Map a GGUF ``general.architecture`` value to how its forward graph is built.

    :param register: call ``register(name, architecture)`` with an ``llmrt.models.Architecture``
        (its name, ``hparams(metadata)`` and ``build(hparams, shape, weights)``); a second one
        for the same name is rejected and reported.
    """


@hookspec
def register_commands(app: typer.Typer) -> None:
    """Add subcommands to the ``llmrt`` command line (``@app.command()``)."""


@hookspec
def register_conformance_cases(register: Callable[[OpCase], None]) -> None:
    """Add op cases (for instance fused ops a backend implements) to the shared conformance suite.

    :param register: call ``register(case)`` with an ``llmrt.testing.OpCase``; it runs on every
        device with the built-in cases (docs/plugins/testing.md).
    """
