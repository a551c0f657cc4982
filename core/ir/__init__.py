"""The graph IR: ops, tensors, graphs."""

from llmrt.ir.graph import ROPE_NEOX, ROPE_NORMAL, Graph, IRError, Op, Tensor

__all__ = ["ROPE_NEOX", "ROPE_NORMAL", "Graph", "IRError", "Op", "Tensor"]
