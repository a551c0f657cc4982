"""llmrt: run large language models stored as GGUF files, on any hardware through backend plugins.

Importing llmrt loads no backend library: cupy, vulkan and pyopencl are imported by their plugins
only when a backend is probed.
"""

from llmrt.device import Backend, Device, DeviceInfo, DeviceType, Probe, get_device, registry
from llmrt.errors import LlmrtError
from llmrt.hookspecs import hookimpl

__version__ = "0.1.0"


def load(model=None, device="auto"):
    """Load a GGUF file or a known model name onto a device; see `llmrt.engine.load`."""
    from llmrt.engine import load as _load

    return _load(model, device)


def __getattr__(name: str):
    # Heavier parts load on first use, so that `import llmrt` stays cheap.
    if name == "Tokenizer":
        from llmrt.tokenizer import Tokenizer

        return Tokenizer
    raise AttributeError(f"module 'llmrt' has no attribute {name!r}")


__all__ = [
    "Backend",
    "Device",
    "DeviceInfo",
    "DeviceType",
    "LlmrtError",
    "Probe",
    "__version__",
    "get_device",
    "hookimpl",
    "load",
    "registry",
]
