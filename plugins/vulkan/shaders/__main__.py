"""Recompile the shipped SPIR-V: python -m llmrt_vulkan.shaders"""

from llmrt_vulkan.shaders import compile_all

for path in compile_all():
    print(path.name)
