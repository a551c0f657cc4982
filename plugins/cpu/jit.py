"""How the CPU kernels are compiled, and how many threads run them.

Every kernel is a numba function compiled for the host processor with `cache=True`: the machine
code is written next to the sources (or to numba's user cache where that is read-only), so the
compile happens once per machine and later processes load it in milliseconds. `fastmath` stays off:
the kernels must round as the reference does, and reassociated sums would not.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import numba
from numba.core import event

F = TypeVar("F", bound=Callable[..., Any])

COMPILE_NOTE = "llmrt: compiling CPU kernels (once per machine)..."
_KERNEL_MODULES = ("llmrt_cpu.",)
_noted = False


def jit(fn: F) -> F:
    """A kernel: compiled for the host, cached on disk, run without the GIL."""
    return numba.njit(cache=True, nogil=True, fastmath=False)(fn)


def pjit(fn: F) -> F:
    """A kernel whose `prange` loops are split over numba's threads."""
    return numba.njit(cache=True, nogil=True, fastmath=False, parallel=True)(fn)


class _CompileNote(event.Listener):
    """Says once per process, on stderr, that kernels are being compiled (not loaded from the
    cache): the first run on a machine pauses for that, and a silent pause looks like a hang."""

    def on_start(self, ev: event.Event) -> None:
        global _noted
        dispatcher = ev.data.get("dispatcher") if isinstance(ev.data, dict) else None
        module = getattr(getattr(dispatcher, "py_func", None), "__module__", "") or ""
        if not _noted and module.startswith(_KERNEL_MODULES):
            _noted = True
            print(COMPILE_NOTE, file=sys.stderr, flush=True)

    def on_end(self, ev: event.Event) -> None:
        pass


event.register("numba:compile", _CompileNote())


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask), at least one."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


_threads = 1  # what set_threads chose; numba's own setting is per calling thread


def set_threads(n: int | None = None) -> int:
    """Run the kernels on `n` threads (None or < 1: the usable cores); returns the count set.

    This is what `-t/--threads` maps to. numba cannot start more threads than it was launched
    with (NUMBA_NUM_THREADS, by default the machine's cores), so larger requests are clamped."""
    global _threads
    wanted = usable_cores() if n is None or n < 1 else int(n)
    _threads = max(1, min(wanted, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(_threads)
    return _threads


def threads() -> int:
    """The thread count the kernels run on."""
    return _threads


def apply_threads() -> None:
    """Make the calling thread's kernels use the chosen count: numba keeps the setting per
    thread, and a server runs its steps on worker threads, not the one that set it."""
    if numba.get_num_threads() != _threads:
        numba.set_num_threads(_threads)


set_threads()
