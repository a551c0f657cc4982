"""llmrt: run large language models stored as GGUF files, on any hardware through backend plugins.

Importing llmrt loads no backend library: cupy, vulkan and pyopencl are imported by their plugins
only when a backend is probed.
"""

from llmrt.device import Backend, Device, DeviceInfo, DeviceType, Probe, get_device, registry
from llmrt.errors import LlmrtError
from llmrt.hookspecs import hookimpl

__version__ = "0.1.0"

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
    "registry",
]
