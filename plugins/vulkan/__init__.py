"""The Vulkan backend: devices found through the Vulkan loader (the ``vulkan`` PyPI package).

Importing this module must stay cheap and safe: the ``vulkan`` package dlopens libvulkan at
import, so it is imported inside ``VulkanBackend.probe()``.
"""

from llmrt import hookimpl


@hookimpl
def register_backends(register):
    from llmrt_vulkan.backend import VulkanBackend

    register(VulkanBackend())
