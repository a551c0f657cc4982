"""How the CPU kernels are compiled, and how many threads run them.

Every kernel is a numba function compiled for the host processor with `cache=True`: the machine
code is written next to the sources (or to numba's user cache where that is read-only), so the
compile happens once per machine and later processes load it in milliseconds. `fastmath` stays off:
the kernels must round as the reference does, and reassociated sums would not.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numba
import numpy as np
from numba.core import caching, cgutils, event
from numba.extending import intrinsic

F = TypeVar("F", bound=Callable[..., Any])


# numba's threads come from OpenMP (its "omp" layer). A decode step runs hundreds of parallel
# regions a few microseconds apart, so how idle workers wait decides decode speed, and the best
# wait depends on whether the cores are shared. Measured on this project's 2-core machine,
# SmolLM2 tg with 2 threads (2026-12-04): quiet, sleeping workers (OMP_WAIT_POLICY=passive) 22
# t/s, spinning ones 52 (active) or 54 (a bounded spin, GOMP_SPINCOUNT=100000); beside two busy
# processes, passive 36, active 18, bounded spin 15 +/- 19 (a spinning worker takes the core
# the main thread needs, and each region waits out a timeslice). So: spin for a while when the
# machine is quiet at start-up (fewer other runnable tasks than half the usable cores, counted
# now from /proc/loadavg: the load average lags a minute behind), sleep otherwise.
# OMP_WAIT_POLICY or GOMP_SPINCOUNT set by the user win. Read by OpenMP when numba starts its
# threads, after this import.
def wait_policy(env: dict[str, str], other_runnable: int | None, cores: int) -> dict[str, str]:
    """The OpenMP settings to add to `env`: none if the user chose, a bounded spin when fewer
    than half the cores have other work (None: unknown, so do not spin), sleeping otherwise."""
    if "OMP_WAIT_POLICY" in env or "GOMP_SPINCOUNT" in env:
        return {}
    if other_runnable is not None and other_runnable < 0.5 * cores:
        return {"GOMP_SPINCOUNT": "100000"}
    return {"OMP_WAIT_POLICY": "PASSIVE"}


def _other_runnable() -> int | None:
    """Tasks ready to run now besides this process (/proc/loadavg's fourth field), or None."""
    try:
        with open("/proc/loadavg") as f:
            return int(f.read().split()[3].split("/")[0]) - 1
    except (OSError, ValueError, IndexError):  # not Linux
        return None


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


os.environ.update(wait_policy(dict(os.environ), _other_runnable(), _usable_cores()))

COMPILE_NOTE = "llmrt: compiling CPU kernels (once per machine)..."


# numba stamps a cached kernel with its own source file only, but our kernels inline helpers and
# LLVM intrinsics from the package's other files: an edit there would leave stale machine code
# in the cache. So every kernel's stamp is a hash of all the package's sources.
def sources_stamp(directory: Path) -> str:
    """A hash of the names and contents of the Python files in `directory`."""
    files = sorted(directory.glob("*.py"))
    return hashlib.sha256(b"".join(f.name.encode() + f.read_bytes() for f in files)).hexdigest()


_PACKAGE = Path(__file__).resolve().parent
_SOURCES_STAMP = sources_stamp(_PACKAGE)


class _PackageStamp:
    """A numba cache locator mixin for this package's files: stamped with all its sources."""

    def get_source_stamp(self) -> str:
        return _SOURCES_STAMP

    @classmethod
    def from_function(cls, py_func: Any, py_file: str) -> Any:
        if Path(py_file).resolve().parent != _PACKAGE:
            return None
        return super().from_function(py_func, py_file)  # type: ignore[misc]


class _InTreeLocator(_PackageStamp, caching.InTreeCacheLocator):
    pass


class _UserWideLocator(_PackageStamp, caching.UserWideCacheLocator):
    pass


_cache_impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl
_cache_impl._locator_classes[:0] = [_InTreeLocator, _UserWideLocator]
_KERNEL_MODULES = ("llmrt_cpu.",)
_noted = False


def jit(fn: F) -> F:
    """A kernel: compiled for the host, cached on disk, run without the GIL."""
    return numba.njit(cache=True, nogil=True, fastmath=False)(fn)


def inline(fn: F) -> F:
    """A helper inlined into the kernels that call it (numba IR inlining), so that LLVM sees the
    stack arrays it fills as the caller's and vectorizes across the call."""
    return numba.njit(cache=True, nogil=True, fastmath=False, inline="always")(fn)


def pjit(fn: F) -> F:
    """A kernel whose `prange` loops are split over numba's threads."""
    return numba.njit(cache=True, nogil=True, fastmath=False, parallel=True)(fn)


def stack_array(n: int, dtype: Any) -> Callable[[], Any]:
    """A function for kernels that returns a pointer to `n` elements of `dtype` on the stack;
    `numba.carray(ptr, n)` makes it an array.

    A kernel's lane accumulators must live on the stack: numba's own arrays are heap memory that
    LLVM cannot prove distinct from the kernel's inputs, so it keeps every lane in memory and does
    not vectorize them. Call it in the kernel itself (the memory lives as long as that frame)."""
    element = numba.from_dtype(np.dtype(dtype))

    @intrinsic
    def stack(typingctx):  # noqa: ANN001, ANN202 (numba's intrinsic protocol)
        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            size = context.get_constant(numba.types.intp, n)
            return cgutils.alloca_once(builder, context.get_value_type(element), size=size)

        return numba.types.CPointer(element)(), codegen

    return stack


def _ours(ev: event.Event) -> bool:
    dispatcher = ev.data.get("dispatcher") if isinstance(ev.data, dict) else None
    module = getattr(getattr(dispatcher, "py_func", None), "__module__", "") or ""
    return module.startswith(_KERNEL_MODULES)


class _CompileHook(event.Listener):
    """Around each compile of one of our kernels (not loads from the cache):

    - says once per process, on stderr, that kernels are being compiled: the first run on a
      machine pauses for that, and a silent pause looks like a hang;
    - turns on LLVM's SLP vectorizer, which numba leaves off by default since a miscompilation
      (numba#8705): the kernels' fixed-width lane loops (8, 16, 32 lanes) are vectorized by it
      and by nothing else. Only our kernels are compiled with it, and every one of them is
      checked against the reference by tests/plugins/test_cpu_kernels.py."""

    def __init__(self) -> None:
        self._depth = 0
        self._saved_slp = 0

    def on_start(self, ev: event.Event) -> None:
        global _noted
        if not _ours(ev):
            return
        if not _noted:
            _noted = True
            print(COMPILE_NOTE, file=sys.stderr, flush=True)
        if self._depth == 0:
            self._saved_slp = numba.config.SLP_VECTORIZE
            numba.config.SLP_VECTORIZE = 1
        self._depth += 1

    def on_end(self, ev: event.Event) -> None:
        if not _ours(ev):
            return
        self._depth -= 1
        if self._depth == 0:
            numba.config.SLP_VECTORIZE = self._saved_slp


event.register("numba:compile", _CompileHook())


def usable_cpus() -> list[int]:
    """The logical CPUs this process may run on (its affinity mask)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def usable_cores() -> int:
    """The physical cores among the usable CPUs, as llama.cpp counts threads by default: two
    hyperthreads of one core share its vector units, and a second thread there only contends.
    Where the topology is unknown, every usable CPU counts as a core."""
    cpus = usable_cpus()
    cores = set()
    for cpu in cpus:
        try:
            path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
            cores.add(path.read_text().strip())
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores))


_threads = 1  # what set_threads chose; numba's own setting is per calling thread
_auto = True  # no -t given: decode steps may run on fewer threads when that is faster now


def set_threads(n: int | None = None) -> int:
    """Run the kernels on `n` threads (None or < 1: the usable physical cores, and decode steps
    timed against one thread by `Governor`); returns the count set.

    This is what `-t/--threads` maps to. numba cannot start more threads than it was launched
    with (NUMBA_NUM_THREADS, by default the machine's cores), so larger requests are clamped."""
    global _threads, _auto
    _auto = n is None or n < 1
    wanted = usable_cores() if _auto else int(n)
    _threads = max(1, min(wanted, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(_threads)
    _governors.clear()
    return _threads


# A decode step is a few hundred parallel regions microseconds apart: when another process holds
# a core, a region waits for the descheduled worker, and two threads can be slower than one
# (measured on this project's 2-core VM beside another job, 2026-12-05: the Llama-3.2-1B shape
# 78-82 ms a token on 2 threads, sleeping or spinning workers, against 26 on one; SmolLM2 3.3-10
# ms on 2 against 5.0-5.4 on one). The load changes while a model runs, so the choice is timed.
class Governor:
    """The thread count of one kind of step, by timing: the configured count and one thread
    alternate for TRIES steps each, the faster (median) is kept for `keep` steps, then both are
    tried again. When the choice stands, `keep` doubles up to KEEP_MAX (a quiet machine pays for
    the slower trials less and less often)."""

    TRIES, KEEP, KEEP_MAX = 3, 32, 1024

    def __init__(self, most: int) -> None:
        self.counts = (most, 1) if most > 1 else (most,)
        self.best, self.keep, self.left = most, self.KEEP // 2, 0  # the first choice keeps KEEP
        self.samples: dict[int, list[float]] = {n: [] for n in self.counts}

    def choose(self) -> int:
        if len(self.counts) == 1 or self.left > 0:
            return self.best
        # a trial round: the count with fewer samples, so the two alternate
        return min(self.counts, key=lambda n: len(self.samples[n]))

    def record(self, n: int, seconds: float) -> None:
        if len(self.counts) == 1:
            return
        if self.left > 0:
            self.left -= 1
            return
        self.samples[n].append(seconds)
        if all(len(v) >= self.TRIES for v in self.samples.values()):
            best = min(self.counts, key=lambda c: sorted(self.samples[c])[self.TRIES // 2])
            self.keep = min(2 * self.keep, self.KEEP_MAX) if best == self.best else self.KEEP
            self.keep = max(self.keep, self.KEEP)
            self.best, self.left = best, self.keep
            for v in self.samples.values():
                v.clear()


_governors: dict[int, Governor] = {}
GOVERNED_TOKENS = 8  # steps of up to this many tokens are governed (decode, a few slots)


def governor(n_tokens: int) -> Governor | None:
    """The governor of steps of `n_tokens` tokens, or None where the count is fixed (-t given,
    or a prompt: long parallel regions, where a straggler costs little)."""
    if not _auto or n_tokens > GOVERNED_TOKENS:
        return None
    found = _governors.get(n_tokens)
    if found is None:
        found = _governors[n_tokens] = Governor(_threads)
    return found


def threads() -> int:
    """The thread count the kernels run on."""
    return _threads


def apply_threads(n: int | None = None) -> None:
    """Make the calling thread's kernels use `n` threads (None: the chosen count): numba keeps
    the setting per thread, and a server runs its steps on worker threads, not the one that set
    it."""
    n = _threads if n is None else n
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)


set_threads()
