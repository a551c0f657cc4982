"""The plugin loader and the device registry, with plugins registered in-process."""

from __future__ import annotations

import subprocess
import sys

import pytest

import llmrt
from llmrt import hookimpl
from llmrt.device import API_VERSION, Backend, Device, DeviceInfo, DeviceType, Probe, registry
from llmrt.errors import DeviceNotFound
from llmrt.plugins import get_plugins, reset_plugins


class FakeDevice(Device):
    smoke = ""  # said to compute: these tests are about order

    def __init__(self, backend: Backend, index: int, kind: DeviceType) -> None:
        super().__init__(backend, index)
        self.kind = kind

    def info(self) -> DeviceInfo:
        return DeviceInfo(f"fake {self.kind.value} {self.index}", self.kind, 1 << 30, 1 << 29)


class FakeBackend(Backend):
    def __init__(self, name: str, kinds: list[DeviceType], priority: int = 0, **probe) -> None:
        self.name, self.kinds, self.priority = name, kinds, priority
        self._probe = Probe(**({"available": True} | probe))

    def probe(self) -> Probe:
        return self._probe

    def devices(self) -> list[Device]:
        return [FakeDevice(self, i, k) for i, k in enumerate(self.kinds)]


class Registers:
    """A plugin object whose register_backends registers the given backends."""

    def __init__(self, *backends: object) -> None:
        self.backends = backends

    @hookimpl
    def register_backends(self, register):
        for backend in self.backends:
            register(backend)


class Raises:
    @hookimpl
    def register_backends(self, register):
        raise RuntimeError("driver exploded")


@pytest.fixture
def plugins(monkeypatch):
    """Only the in-process plugins a test registers: no entry points."""
    monkeypatch.setenv("LLMRT_PLUGINS", "")
    reset_plugins()
    yield get_plugins()
    reset_plugins()


def test_auto_prefers_gpu_then_priority(plugins):
    plugins.manager.register(Registers(FakeBackend("slowcpu", [DeviceType.CPU], 5)), "a")
    plugins.manager.register(
        Registers(FakeBackend("gfx", [DeviceType.IGPU, DeviceType.GPU], 50)), "b"
    )
    plugins.manager.register(Registers(FakeBackend("fastgpu", [DeviceType.GPU], 100)), "c")
    reg = registry()
    assert [d.id for d in reg.devices] == ["fastgpu:0", "gfx:1", "gfx:0", "slowcpu:0"]
    assert llmrt.get_device("auto").id == "fastgpu:0"
    assert llmrt.get_device("gfx").id == "gfx:0"
    assert llmrt.get_device("GFX:1").id == "gfx:1"


class ListsOnly(FakeDevice):
    """A device whose backend lists it but cannot run graphs (the Device defaults)."""

    smoke = Device.smoke


def test_auto_skips_a_device_that_cannot_compute(plugins):
    class ListingBackend(FakeBackend):
        def devices(self) -> list[Device]:
            return [ListsOnly(self, 0, DeviceType.GPU)]

    plugins.manager.register(Registers(ListingBackend("listonly", [DeviceType.GPU], 100)), "a")
    plugins.manager.register(Registers(FakeBackend("slowcpu", [DeviceType.CPU], 5)), "b")
    reg = registry()
    assert [d.id for d in reg.devices] == ["listonly:0", "slowcpu:0"]
    assert "small graph" in reg.devices[0].smoke  # its supports_op declines everything
    assert llmrt.get_device("auto").id == "slowcpu:0"
    assert llmrt.get_device("listonly").id == "listonly:0"  # named, it is still selectable


def test_select_errors_name_what_exists(plugins):
    plugins.manager.register(Registers(FakeBackend("gfx", [DeviceType.GPU])), "a")
    plugins.manager.register(
        Registers(FakeBackend("nodrv", [], available=False, reason="no driver", fix="install")),
        "b",
    )
    with pytest.raises(DeviceNotFound, match=r"unknown device 'foo:3'.*available devices: gfx:0"):
        registry().select("foo:3")
    with pytest.raises(DeviceNotFound, match=r"no device 'gfx:7': gfx has 1 \(gfx:0\)"):
        registry().select("gfx:7")
    with pytest.raises(DeviceNotFound, match=r"'nodrv:0' is unavailable: no driver \(install\)"):
        registry().select("nodrv:0")
    with pytest.raises(DeviceNotFound, match="bad device"):
        registry().select("gfx:x")
    assert DeviceNotFound.exit_code == 2


def test_broken_hook_is_recorded_and_others_keep_working(plugins):
    plugins.manager.register(Raises(), "exploding")
    plugins.manager.register(Registers(FakeBackend("gfx", [DeviceType.GPU])), "good")
    assert [d.id for d in registry().devices] == ["gfx:0"]
    (failure,) = plugins.failures
    assert (failure.plugin, failure.stage) == ("exploding", "register_backends")
    assert "RuntimeError: driver exploded" in failure.error


def test_contract_violations_are_rejected(plugins):
    stale = FakeBackend("stale", [DeviceType.GPU])
    stale.api_version = API_VERSION + 1
    plugins.manager.register(
        Registers(
            FakeBackend("gfx", [DeviceType.GPU]),
            FakeBackend("gfx", [DeviceType.CPU]),
            FakeBackend("Bad Name", [DeviceType.CPU]),
            stale,
            "not a backend",
        ),
        "sloppy",
    )
    assert [d.id for d in registry().devices] == ["gfx:0"]
    errors = [f.error for f in plugins.failures]
    assert any("already registered" in e for e in errors)
    assert any("not a lowercase word" in e for e in errors)
    assert any(f"targets plugin API {API_VERSION + 1}" in e for e in errors)
    assert any("expects an llmrt.device.Backend, got str" in e for e in errors)


def test_probe_that_raises_is_reported_as_unavailable(plugins):
    class Flaky(FakeBackend):
        def probe(self) -> Probe:
            raise OSError("libfoo.so: cannot open shared object file")

    plugins.manager.register(Registers(Flaky("flaky", [DeviceType.GPU])), "a")
    entry = registry().entry("flaky")
    assert entry is not None and not entry.probe.available
    assert "OSError: libfoo.so" in entry.probe.reason


def test_allow_list_limits_entry_points_but_keeps_the_built_in_architectures(monkeypatch, tmp_path):
    from llmrt.engine import load
    from llmrt.models import architectures
    from llmrt.testing import write_tiny_llama

    monkeypatch.setenv("LLMRT_PLUGINS", "cpu")
    reset_plugins()
    try:
        assert list(get_plugins().loaded) == ["cpu", "models"]  # models: llmrt's own
        assert [e.backend.name for e in registry().entries] == ["cpu"]
        assert {"llama", "gemma3"} <= set(architectures())
        model = load(write_tiny_llama(tmp_path / "tiny.gguf"), device="cpu")
        assert model.context(n_ctx=16).eval([1, 2, 3]).shape == (320,)
    finally:
        reset_plugins()


def test_import_and_plugin_loading_do_not_import_backend_libraries():
    code = (
        "import sys, llmrt; from llmrt.plugins import get_plugins; p = get_plugins();"
        "assert {'cpu','cuda','vulkan','opencl'} <= set(p.loaded), p.loaded;"
        "heavy = {'cupy', 'vulkan', 'pyopencl'} & set(sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_hooks_run_in_pluggy_order_with_tryfirst_and_wrappers(plugins):
    """pluggy's order: wrappers around everything, tryfirst first, then the last registered."""
    ran: list[str] = []

    class Plain:
        def __init__(self, name: str) -> None:
            self.name = name

        @hookimpl
        def register_backends(self, register):
            ran.append(self.name)

    class First:
        @hookimpl(tryfirst=True)
        def register_backends(self):  # a subset of the hook's arguments
            ran.append("tryfirst")

    class Wrapper:
        @hookimpl(wrapper=True)
        def register_backends(self, register):
            ran.append("wrapper before")
            result = yield
            ran.append("wrapper after")
            return result

    plugins.manager.register(Plain("a"), "a")
    plugins.manager.register(First(), "first")
    plugins.manager.register(Plain("b"), "b")
    plugins.manager.register(Wrapper(), "wrapper")
    registry()
    assert ran == ["wrapper before", "tryfirst", "b", "a", "wrapper after"]


def test_a_raising_implementation_is_skipped_and_the_rest_still_run(plugins):
    plugins.manager.register(Registers(FakeBackend("gfx", [DeviceType.GPU])), "good")
    plugins.manager.register(Raises(), "exploding")  # runs first: the last registered
    assert [d.id for d in registry().devices] == ["gfx:0"]
    (failure,) = plugins.failures
    assert (failure.plugin, failure.stage) == ("exploding", "register_backends")


def test_a_raising_wrapper_is_recorded(plugins):
    class BadWrapper:
        @hookimpl(wrapper=True)
        def register_backends(self):
            raise RuntimeError("wrapper exploded")
            yield  # pragma: no cover

    plugins.manager.register(BadWrapper(), "badwrap")
    assert registry().devices == []
    (failure,) = plugins.failures
    assert failure.plugin == "badwrap" and "RuntimeError: wrapper exploded" in failure.error


def test_a_misspelled_hook_rejects_that_plugin_only(monkeypatch):
    class Typo:
        @hookimpl
        def register_backend(self, register):  # not a hook
            pass

    monkeypatch.setenv("LLMRT_PLUGINS", "cpu")
    reset_plugins()
    try:
        plugins = get_plugins()
        plugins.manager.register(Typo(), "typo")
        plugins.check_pending()
        (failure,) = plugins.failures
        assert failure.plugin == "typo" and "register_backend" in failure.error
        assert plugins.manager.get_plugin("typo") is None
        assert [e.backend.name for e in registry().entries] == ["cpu"]
    finally:
        reset_plugins()


def test_built_in_backends_register_in_entry_point_name_order(monkeypatch):
    monkeypatch.setenv("LLMRT_PLUGINS", "vulkan,cpu,opencl,cuda,models")
    reset_plugins()
    try:
        assert list(get_plugins().loaded) == ["cpu", "cuda", "models", "opencl", "vulkan"]
        assert [e.backend.name for e in registry().entries] == ["cpu", "cuda", "opencl", "vulkan"]
    finally:
        reset_plugins()


def test_origin_names_the_distribution_and_entry_point(monkeypatch):
    monkeypatch.setenv("LLMRT_PLUGINS", "cpu")
    reset_plugins()
    try:
        plugins = get_plugins()
        plugins.manager.register(Registers(), "inproc")
        assert plugins.origin("cpu") == f"llmrt {llmrt.__version__}, entry point cpu"
        assert plugins.origin("inproc") == "plugin inproc"
    finally:
        reset_plugins()
