"""GGUF files: reading (mmap, lazy, validated), writing, and the ggml block types."""

from llmrt.errors import GGUFError
from llmrt.gguf.constants import GGMLType, GGUFValueType, Keys
from llmrt.gguf.quants import dequantize, quantize
from llmrt.gguf.reader import GGUFReader, TensorInfo
from llmrt.gguf.writer import GGUFWriter, atomic_output

__all__ = [
    "GGMLType",
    "GGUFError",
    "GGUFReader",
    "GGUFValueType",
    "GGUFWriter",
    "atomic_output",
    "Keys",
    "TensorInfo",
    "dequantize",
    "quantize",
]
