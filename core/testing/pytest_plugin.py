"""llmrt.testing as a pytest plugin: the backend suite on any device, from any project.

Installed with llmrt (the ``pytest11`` entry point ``llmrt``), so a backend's author runs:

    pytest --llmrt-device mycpu:0                   # the whole suite on one device
    pytest --llmrt-device mycpu:0 -k "mul_mat and q4_0"
    pytest --pyargs llmrt.testing                   # the suite on every available device

``--llmrt-device`` (repeat it, or separate devices with commas) adds the suite
(``llmrt.testing.test_backend``: every conformance case, the cases plugins register through
``register_conformance_cases``, the smoke test, and greedy runs of a tiny random model and of a
real one against the numpy reference) to whatever else the command collects. ``--llmrt-model``
names the real model (a GGUF path or a known name; ``none`` skips that test, with the reason).

A test anywhere takes the device under test as the ``llmrt_device`` argument: it is parametrized
over the devices named, or over every available device when none is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

SUITE = Path(__file__).with_name("test_backend.py")
_DEVICES = pytest.StashKey[list]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmrt", "llmrt backend suite (llmrt.testing)")
    group.addoption(
        "--llmrt-device", action="append", default=[], metavar="DEVICE",
        help="run llmrt's backend suite on DEVICE (name:index, as --device takes it); repeat, or "
        "separate with commas, for several. Without it the suite, where collected, runs on "
        "every available device.",
    )  # fmt: skip
    group.addoption(
        "--llmrt-model", default="smollm2-135m", metavar="MODEL",
        help="the real model the suite's greedy check runs: a GGUF path or a known model name "
        "(llmrt pull --list); 'none' skips that check. Default: smollm2-135m.",
    )  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "llmrt_model: runs a whole model on the device under test")
    if not config.getoption("llmrt_device"):
        return
    named = {str(SUITE), "llmrt.testing", "llmrt.testing.test_backend"}
    if not any(str(arg).split("::")[0] in named for arg in config.args):
        config.args.append(str(SUITE))
    devices(config)  # a device that is not there is a usage error, before collecting anything


def devices(config: pytest.Config) -> list[Any]:
    """The devices under test: those --llmrt-device names, else every available one."""
    if _DEVICES not in config.stash:
        from llmrt.device import registry
        from llmrt.errors import DeviceNotFound

        specs = [s.strip() for opt in config.getoption("llmrt_device") for s in opt.split(",")]
        specs = [s for s in specs if s]
        try:
            found = [registry().select(s) for s in specs] if specs else registry().devices
        except DeviceNotFound as exc:
            raise pytest.UsageError(f"--llmrt-device: {exc}") from None
        config.stash[_DEVICES] = found
    return config.stash[_DEVICES]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "llmrt_device" in metafunc.fixturenames:
        found = devices(metafunc.config)
        metafunc.parametrize("llmrt_device", found, ids=[d.id for d in found], scope="module")


def pytest_report_header(config: pytest.Config) -> str | None:
    if not config.getoption("llmrt_device"):
        return None
    return "llmrt devices under test: " + ", ".join(_describe(d) for d in devices(config))


def _describe(device: Any) -> str:
    try:
        return f"{device.id} ({device.info().name})"
    except Exception as exc:  # the header never hides the tests that will say what is wrong
        return f"{device.id} (info() raised {type(exc).__name__}: {exc})"


@pytest.fixture(scope="session")
def llmrt_model(request: pytest.FixtureRequest) -> Path:
    """The real model's GGUF file (--llmrt-model), pulled once into the cache if named."""
    name = request.config.getoption("llmrt_model")
    if name.strip().lower() == "none":
        pytest.skip("no real model: --llmrt-model none")
    from llmrt import pull

    return pull.resolve(name)
