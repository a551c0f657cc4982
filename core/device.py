"""Backends and devices: the interfaces a backend plugin implements, and the registry of devices.

The split mirrors ggml-backend: a ``Backend`` (ggml's "reg", one per library) probes the machine
and enumerates ``Device`` objects; a device answers capability questions (``info()``,
``supports_op``) and later makes buffers and runs compiled graphs. Core never names a built-in
backend: they all arrive through the ``register_backends`` hook.

``--device`` takes ``auto``, a backend name (``cuda`` = ``cuda:0``) or ``name:index``. ``auto``
picks the first available device in this order: device type (discrete GPU, integrated GPU,
accelerator, CPU), then the backend's ``priority`` (higher first), then the index. So a GPU always
beats a CPU, and the native CPU backend beats a CPU that another API emulates (lavapipe, PoCL).
"""

from __future__ import annotations

import enum
import functools
import importlib
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from llmrt.errors import DeviceNotFound, OutOfDeviceMemory, UnsupportedOp
from llmrt.gguf.constants import GGMLType
from llmrt.plugins import get_plugins, on_reset

if TYPE_CHECKING:
    from llmrt.gguf.reader import TensorInfo
    from llmrt.ir.graph import Graph, Tensor

API_VERSION = 1
_NAME = re.compile(r"[a-z][a-z0-9_]*")


class DeviceType(enum.Enum):
    GPU = "gpu"  # discrete GPU
    IGPU = "igpu"  # integrated GPU sharing host memory
    ACCEL = "accel"  # other accelerators
    CPU = "cpu"  # the host processor, or an API emulating a device on it

    @property
    def rank(self) -> int:
        return list(DeviceType).index(self)


@dataclass(frozen=True)
class Probe:
    """Whether a backend can run on this machine; ``probe()`` returns it and never raises.

    When ``available`` is false, ``reason`` says why in a short sentence and ``fix`` how to make it
    work (``pip install 'llmrt[cuda]'``, install a driver, an ICD…). ``details`` holds versions
    of the library and driver, JSON-serializable.
    """

    available: bool
    reason: str = ""
    fix: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeviceInfo:
    """What a device is. ``properties`` is backend-specific and JSON-serializable; ``summary`` is
    the few of them worth a column in ``llmrt devices`` ("CC 9.0, 132 SMs, CUDA 13.0")."""

    name: str
    type: DeviceType
    memory_total: int | None = None
    memory_free: int | None = None
    properties: Mapping[str, Any] = field(default_factory=dict)
    summary: str = ""


class Backend(ABC):
    """One backend library (cpu, cuda, vulkan…): a plugin registers an instance of a subclass.

    Subclasses set ``name`` (the ``--device`` prefix) and ``priority`` (breaks ties between
    devices of the same type for ``--device auto``; the built-ins use cuda 100, vulkan 50,
    opencl 30, and cpu 1000 so that on the host processor the native kernels win). A backend that
    runs natively on the host processor sets ``is_host``: the host device holds inputs and takes
    what other devices decline.
    """

    name: str = ""
    priority: int = 0
    api_version: int = API_VERSION
    is_host: bool = False  # runs on the host processor natively (the cpu backend)
    # environment variables that change how the backend runs, each with its default value: at
    # most one debugging or safe-mode switch (docs/gpu-switches.md); reported where set otherwise
    switches: Mapping[str, str] = {}

    def switches_set(self) -> dict[str, str]:
        """The switches whose environment value is not their default."""
        return {
            name: os.environ[name]
            for name, default in self.switches.items()
            if os.environ.get(name, default) != default
        }

    @abstractmethod
    def probe(self) -> Probe:
        """Say whether this backend can run here. Called once per process, before ``devices()``.

        Import the heavy library here, not at module import. Must not raise: catch what the
        library raises and return ``Probe(False, reason, fix)``.
        """

    @staticmethod
    def import_package(
        module: str, fix: str, library: str = "", library_fix: str = "", what: str = ""
    ) -> Any:
        """For ``probe()``: import the backend's package, returning the module, or the unavailable
        ``Probe`` that says why: the package is not installed, ``library`` (a shared library it
        opens at import, such as the Vulkan loader) cannot be loaded, or a broken install raised.
        ``what`` names the package in those reasons (default: the module's name)."""
        what = what or module
        try:
            return importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                return Probe(False, f"{what} is not installed", fix)
            error: Exception = exc
        except OSError as exc:
            if library:
                return Probe(False, f"{library} cannot be loaded: {exc}", library_fix or fix)
            error = exc
        except Exception as exc:  # a broken install raises all sorts at import
            error = exc
        reason = f"{what} cannot be imported: {type(error).__name__}: {error}"
        return Probe(False, reason, f"reinstall it: {fix}")

    @abstractmethod
    def devices(self) -> Sequence[Device]:
        """The devices of this backend, index 0 first. Called only when ``probe()`` is available."""

    def set_threads(self, n: int | None = None) -> int | None:
        """``-t/--threads``: how many host threads this backend's kernels may use (None or below
        1: its default). A backend that runs no kernels on host threads ignores it (the default);
        returns the count set, or None."""
        return None


class Buffer(ABC):
    """A tensor's bytes in one device's memory (ggml-backend's buffer with its tensor's get, set
    and cpy): what ``Device.allocate`` and ``new_state`` return, and where a compiled graph takes
    an input or leaves an output (``Executable.input_buffer`` / ``output_buffer``).

    ``shape`` and ``dtype`` (a ``GGMLType``: F32, F16 or I32) describe a contiguous tensor.
    """

    def __init__(self, device: Device, shape: tuple[int, ...], dtype: GGMLType) -> None:
        self.device, self.shape, self.dtype = device, tuple(shape), GGMLType(dtype)

    @property
    def host_dtype(self) -> np.dtype:
        """The numpy type of the tensor's elements on the host."""
        return np.dtype(HOST_TYPES[self.dtype])

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.host_dtype.itemsize

    def as_host(self, data: Any) -> np.ndarray:
        """``data`` as a contiguous host array of the tensor's shape and type (for ``write``)."""
        return np.ascontiguousarray(data, self.host_dtype).reshape(self.shape)

    @abstractmethod
    def write(self, data: Any) -> None:
        """Overwrite the whole tensor from a host array of its shape (converted to its dtype).
        Done when it returns: ``data`` may change afterwards."""

    @abstractmethod
    def read(self) -> np.ndarray:
        """A host copy of the tensor, of its shape and dtype, once the device's pending work on
        it is done."""

    def copy_from(self, src: Buffer) -> bool:
        """Copy ``src`` (same shape and dtype, any device) in without a host round trip where this
        backend can (same device, peer access, memory both devices map) and return True; return
        False, having done nothing, where it cannot: ``copy`` then stages through the host."""
        return False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.device.id} {list(self.shape)} {self.dtype.name}>"


# the host dtype of each tensor type a buffer may hold
HOST_TYPES = {GGMLType.F32: np.float32, GGMLType.F16: np.float16, GGMLType.I32: np.int32}


class HostBuffer(Buffer):
    """A buffer in host memory: a numpy array (the host device's, and a backend's that shares
    host memory)."""

    def __init__(self, device: Device, array: np.ndarray) -> None:
        super().__init__(device, array.shape, _ggml_type(array.dtype))
        self.array = array

    def write(self, data: Any) -> None:
        np.copyto(self.array, np.asarray(data).reshape(self.shape), casting="unsafe")

    def read(self) -> np.ndarray:
        return self.array.copy()

    def copy_from(self, src: Buffer) -> bool:
        if not isinstance(src, HostBuffer):
            return False
        np.copyto(self.array, src.array)
        return True


def _ggml_type(dtype: np.dtype) -> GGMLType:
    for ggml_type, host in HOST_TYPES.items():
        if np.dtype(host) == dtype:
            return ggml_type
    raise UnsupportedOp(f"buffers hold f32, f16 or i32 tensors, not {dtype}")


def out_of_memory(device_id: str, what: str, nbytes: int, detail: str) -> OutOfDeviceMemory:
    """The error for an allocation of ``nbytes`` (for ``what``: "weight blk.0.attn_q.weight")
    that ``device_id`` refused, ``detail`` (", 12.0 MiB free") saying what the driver told."""
    need = f"{what} needs {nbytes / 2**20:.1f} MiB"
    return OutOfDeviceMemory(f"out of memory on {device_id}: {need}{detail}")


def copy(dst: Buffer, src: Buffer) -> bool:
    """Copy ``src`` into ``dst``: device to device where ``dst``'s backend can, else through a
    host array (ggml_backend_tensor_copy). Returns whether the host was skipped."""
    if dst.shape != src.shape or dst.dtype != src.dtype:
        raise ValueError(f"cannot copy {src!r} into {dst!r}: shape and type must match")
    if dst.copy_from(src):
        return True
    dst.write(src.read())
    return False


class Executable(ABC):
    """A graph compiled for one device, replayed with new inputs; the hot path of a decode step.

    A program that stages its inputs in host memory of its own (pinned or mapped memory that its
    launches copy or read from: CUDA's, Vulkan's) lists them in ``host_inputs``, an array of each
    input's shape and type: ``write_inputs`` fills them for ``run``, and ``input_buffer`` hands
    them out as ``HostBuffer``s of ``device``.
    """

    device: Device | None = None
    host_inputs: Mapping[str, np.ndarray] = {}

    @abstractmethod
    def run(
        self, inputs: Mapping[str, Any], outputs: Collection[str] | None = None
    ) -> dict[str, Any]:
        """Run once. ``inputs`` maps input keys to host arrays, but for the keys written into
        ``input_buffer``s before the call, which may be left out. Returns the graph's outputs
        named in ``outputs`` (None: all of them) as host numpy arrays; it may return more.
        Every output, returned or not, is in its ``output_buffer`` until the next run."""

    def write_inputs(self, inputs: Mapping[str, Any]) -> None:
        """For ``run``: copy each input given into its array in ``host_inputs`` (converted to its
        type); one left out was written into its ``input_buffer``."""
        for key, host in self.host_inputs.items():
            if key in inputs:
                np.copyto(host, np.asarray(inputs[key]).reshape(host.shape), casting="unsafe")

    def input_buffer(self, key: str) -> Buffer | None:
        """The buffer that input ``key`` is read from, to write or ``copy`` into before ``run``
        (None: this program takes the input only as a host array). By default its array in
        ``host_inputs``, where the program has one and a device."""
        host = self.host_inputs.get(key)
        return None if host is None or self.device is None else HostBuffer(self.device, host)

    def output_buffer(self, name: str) -> Buffer | None:
        """The buffer holding output ``name`` after a run, read or copied from before the next
        (None: it is only returned by ``run``)."""
        return None


class Device(ABC):
    """One device of a backend, addressed as ``backend.name:index``."""

    def __init__(self, backend: Backend, index: int) -> None:
        self.backend = backend
        self.index = index

    @property
    def id(self) -> str:
        return f"{self.backend.name}:{self.index}"

    @abstractmethod
    def info(self) -> DeviceInfo:
        """Name, type, memory and backend-specific properties. Called on demand; may query the
        driver each time (free memory changes)."""

    def supports_op(self, node: Tensor) -> bool:
        """Whether this device can run graph node ``node``: the one source of truth for placement
        and for skipping conformance cases. The default declines everything."""
        return False

    def upload(self, tensor: TensorInfo) -> Any:
        """Copy one weight (an ``llmrt.gguf.TensorInfo``, in its ggml blocks) to the device and
        return the handle that ``compile`` binds it by. Called once per weight at model load."""
        raise UnsupportedOp(f"{self.id} cannot hold weights")

    def allocate(self, shape: tuple[int, ...], dtype: GGMLType) -> Buffer:
        """A zeroed buffer for a contiguous tensor of ``shape`` and ``dtype`` (F32, F16 or I32).
        Raises ``OutOfDeviceMemory`` with a one-line message when the device cannot hold it."""
        raise UnsupportedOp(f"{self.id} cannot hold buffers")

    def buffer_dtype(self, dtype: GGMLType) -> np.dtype:
        """The host dtype of a buffer of ``dtype`` (for ``allocate``); UnsupportedOp for a type
        that buffers do not hold."""
        if dtype not in HOST_TYPES:
            raise UnsupportedOp(f"{self.id} holds f32, f16 or i32 tensors, not {dtype.name}")
        return np.dtype(HOST_TYPES[dtype])

    def new_state(self, shape: tuple[int, ...], dtype: GGMLType) -> Buffer:
        """A zeroed persistent tensor (a KV cache), bound by key in ``compile``: by default a
        buffer from ``allocate``."""
        return self.allocate(shape, dtype)

    def write_state(self, state: Buffer, data: Any) -> None:
        """Overwrite a state tensor from a host array of its shape (``state.write``)."""
        state.write(data)

    def compile(self, graph: Graph, bindings: Mapping[str, Any]) -> Executable:
        """Lower ``graph`` once: resolve a kernel per node and plan buffers. ``bindings`` maps
        each weight and state leaf's key to a handle from ``upload``/``new_state``."""
        raise UnsupportedOp(f"{self.id} cannot run graphs")

    @functools.cached_property
    def smoke(self) -> str:
        """'' when this device runs a small graph as the reference does, else why not (checked
        once a process, by ``--device auto`` before taking it and by ``llmrt devices``)."""
        from llmrt.smoke import smoke_test

        return smoke_test(self)

    def __repr__(self) -> str:
        return f"<Device {self.id}>"


@dataclass
class BackendEntry:
    """A registered backend; its probe runs on first use (probing loads drivers, and a driver
    such as lavapipe's LLVM costs memory in every process that probes it)."""

    backend: Backend
    plugin: str
    _probed: tuple[Probe, list[Device]] | None = None

    @property
    def probe(self) -> Probe:
        return self._result()[0]

    @property
    def devices(self) -> list[Device]:
        return self._result()[1]

    def _result(self) -> tuple[Probe, list[Device]]:
        if self._probed is None:
            self._probed = _probe(self.backend)
        return self._probed


class Registry:
    """Every registered backend with its probe result, and device selection."""

    def __init__(self, entries: list[BackendEntry]) -> None:
        self.entries = entries

    @property
    def devices(self) -> list[Device]:
        """Available devices, best first (the order ``--device auto`` uses)."""
        found = [(i, d) for i, e in enumerate(self.entries) for d in e.devices]
        found.sort(key=lambda p: (_rank(p[1]), -p[1].backend.priority, p[0], p[1].index))
        return [d for _, d in found]

    def entry(self, name: str) -> BackendEntry | None:
        return next((e for e in self.entries if e.backend.name == name), None)

    def host(self) -> Device:
        """The host processor's device, from a backend that declares `is_host`: where inputs
        live and what partial offload falls back to."""
        for entry in sorted(self.entries, key=lambda e: -e.backend.priority):
            if entry.backend.is_host and entry.devices:
                return entry.devices[0]
        raise DeviceNotFound(f"no host (CPU) backend is available; {self._summary()}")

    def best(self) -> Device:
        """The first available device that computes (the host's own backend is trusted: it is
        what everything else falls back to)."""
        devices = self.devices
        if not devices:
            raise DeviceNotFound(f"no device is available; {self._summary()}")
        for device in devices:
            if device.backend.is_host or not device.smoke:
                return device
        return devices[0]

    def select(self, spec: str) -> Device:
        """The device that ``--device spec`` names; raises DeviceNotFound listing what exists."""
        spec = spec.strip().lower()
        if spec in ("", "auto"):
            return self.best()
        name, _, index_text = spec.partition(":")
        if not index_text:
            index_text = "0"
        if not _NAME.fullmatch(name) or not index_text.isdigit():
            raise DeviceNotFound(
                f"bad device '{spec}': expected auto, NAME or NAME:INDEX; {self._summary()}"
            )
        entry = self.entry(name)
        if entry is None:
            broken = next((f for f in get_plugins().failures if f.plugin == name), None)
            if broken is not None:
                raise DeviceNotFound(
                    f"device '{spec}' is unavailable: plugin {name} is broken ({broken.stage}): "
                    f"{broken.error}; {self._summary()}"
                )
            raise DeviceNotFound(f"unknown device '{spec}': no backend '{name}'; {self._summary()}")
        if not entry.probe.available:
            why = entry.probe.reason + (f" ({entry.probe.fix})" if entry.probe.fix else "")
            raise DeviceNotFound(f"device '{spec}' is unavailable: {why}; {self._summary()}")
        index = int(index_text)
        if index >= len(entry.devices):
            have = ", ".join(d.id for d in entry.devices) or "none"
            raise DeviceNotFound(
                f"no device '{name}:{index}': {name} has {len(entry.devices)} ({have}); "
                f"{self._summary()}"
            )
        return entry.devices[index]

    def _summary(self) -> str:
        available = ", ".join(d.id for d in self.devices) or "none"
        text = f"available devices: {available}"
        down = [e.backend.name for e in self.entries if not e.probe.available]
        if down:
            text += f" (unavailable: {', '.join(down)}; see `llmrt devices`)"
        return text


def _rank(device: Device) -> int:
    try:
        return device.info().type.rank
    except Exception:
        return len(DeviceType)


def _probe(backend: Backend) -> tuple[Probe, list[Device]]:
    try:
        probe = backend.probe()
    except Exception as exc:  # the contract says probe() never raises; hold plugins to it gently
        return Probe(False, f"probe raised {type(exc).__name__}: {exc}"), []
    if not probe.available:
        return probe, []
    try:
        return probe, list(backend.devices())
    except Exception as exc:
        return Probe(False, f"listing devices raised {type(exc).__name__}: {exc}"), []


@functools.cache
def registry() -> Registry:
    """Register, validate and probe every backend once per process."""
    plugins = get_plugins()
    registered: list[tuple[str, Backend]] = []

    def register(backend: Backend) -> None:
        registered.append((plugins.current_plugin, backend))

    plugins.call("register_backends", register=register)
    entries: list[BackendEntry] = []
    taken: dict[str, BackendEntry] = {}
    for plugin, backend in registered:
        problem = _check(backend)
        if problem:
            plugins.fail(plugin, "register_backends", problem)
            continue
        first = taken.get(backend.name)
        if first is None:
            taken[backend.name] = entry = BackendEntry(backend, plugin)
            entries.append(entry)
        elif first.plugin == plugin:  # one plugin registering a name twice: its first stands
            plugins.fail(plugin, "register_backends",
                         f"a backend named '{backend.name}' is already registered")  # fmt: skip
        else:
            _collide(plugins, entries, taken, first, BackendEntry(backend, plugin))
    return Registry(entries)


def _collide(plugins: Any, entries: list[BackendEntry], taken: dict[str, BackendEntry],
             first: BackendEntry, second: BackendEntry) -> None:  # fmt: skip
    """Two plugins registering one backend name: llmrt's own keeps it, whichever came first;
    between two others neither is used. Both are reported, naming both distributions."""
    name = first.backend.name
    both = f"{plugins.origin(first.plugin)} and {plugins.origin(second.plugin)}"
    why = f"backend name '{name}' is registered by both {both}"
    builtin = next((e for e in (first, second) if _is_builtin(e.backend)), None)
    if first in entries:
        entries.remove(first)
    if builtin is not None:
        taken[name] = builtin
        entries.append(builtin)
    verdict = "the built-in one is used" if builtin is not None else "neither is used"
    for entry in (first, second):
        if entry is not builtin:
            plugins.fail(entry.plugin, "register_backends", f"{why}; {verdict} (uninstall one)")


def _is_builtin(backend: Backend) -> bool:
    """A backend that ships with llmrt (its class lives in llmrt or an llmrt_* plugin package)."""
    return type(backend).__module__.split(".")[0] in _BUILTIN_PACKAGES


_BUILTIN_PACKAGES = {"llmrt", "llmrt_cpu", "llmrt_cuda", "llmrt_vulkan", "llmrt_opencl"}


on_reset(registry.cache_clear)


def _check(backend: Any) -> str:
    if not isinstance(backend, Backend):
        return f"register() expects an llmrt.device.Backend, got {type(backend).__name__}"
    if not _NAME.fullmatch(backend.name or ""):
        return f"backend name {backend.name!r} is not a lowercase word"
    if backend.api_version != API_VERSION:
        return (
            f"backend '{backend.name}' targets plugin API {backend.api_version}, "
            f"this llmrt speaks {API_VERSION}"
        )
    return ""


def switches_set() -> dict[str, str]:
    """Every registered backend's switches not at their default (printed by ``llmrt devices``,
    ``run --verbose`` and ``bench --json``, so that a number is never read without them)."""
    return {k: v for e in registry().entries for k, v in e.backend.switches_set().items()}


def get_device(spec: str = "auto") -> Device:
    """The device ``--device spec`` names (``auto``, ``cpu``, ``cuda:0``, ``vulkan:1``…)."""
    return registry().select(spec)


def get_devices(spec: str | Device | Sequence[str | Device] = "auto") -> list[Device]:
    """The devices a model is split over: ``--device cuda:0,cuda:1`` (any backends, each once),
    a list of names or devices, or one of them."""
    if isinstance(spec, Device):
        return [spec]
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    if isinstance(spec, str) and len(parts) > 1 and any(p.strip() in ("", "auto") for p in parts):
        raise DeviceNotFound(f"bad device list '{spec}': name each device (auto goes alone)")
    found = [p if isinstance(p, Device) else get_device(p) for p in parts]
    repeated = {d.id for d in found if found.count(d) > 1}
    if repeated:
        raise DeviceNotFound(f"device {', '.join(sorted(repeated))} is listed twice in '{spec}'")
    if not found:
        raise DeviceNotFound("no device given")
    return found
