"""Whole models on a device, checked against the numpy reference run through the same engine.

`ReferenceDevice` is `core/reference.py` as a device (not registered anywhere): every op, numpy
kernels, weights as the reference holds them. `check_greedy` runs a greedy generation on a device
and on it and requires the same tokens up to the first step whose top-1/top-2 logit gap the
reference puts below `NEAR_TIE` (there any exact implementation may pick either token), and the
logits of every step before the texts part within `max_nmse` (`MAX_NMSE` for a real model,
`TINY_MAX_NMSE` for the tiny random one).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmrt.device import Backend, Device, DeviceInfo, DeviceType, Executable, HostBuffer, Probe
from llmrt.gguf.constants import GGMLType
from llmrt.ir import Graph, Op, Tensor

# tests/models/test_greedy.py measured it: llama.cpp itself moves tokens whose gap is up to 0.31
NEAR_TIE = 0.35
# A step's logits against the reference's, measured rather than guessed (rope pairing the wrong
# dimensions stands in for a broken kernel): on SmolLM2 Q4_1 the cpu backend is up to 6.5e-3 off
# the reference over its first greedy steps after "The capital of France is", a broken rope 0.25
# with the same tokens; on the tiny random models (write_tiny_llama, attention close to uniform)
# the cpu backend is 1e-14 off, a broken rope 0.01.
MAX_NMSE = 2e-2
TINY_MAX_NMSE = 1e-4


class ReferenceBackend(Backend):
    name = "reference"

    def probe(self) -> Probe:
        return Probe(True, details={"kernels": "llmrt.reference (numpy)"})

    def devices(self) -> Sequence[Device]:
        return [ReferenceDevice(self, 0)]


class _ReferenceExecutable(Executable):
    def __init__(self, graph: Graph, bindings: Mapping[str, Any]) -> None:
        from llmrt.reference import ReferenceProgram

        self.program = ReferenceProgram(graph, bindings)

    def run(
        self, inputs: Mapping[str, Any], outputs: Collection[str] | None = None
    ) -> dict[str, Any]:
        return self.program.run(inputs, outputs)


class ReferenceDevice(Device):
    """The numpy reference as a device: the oracle for whole-model checks."""

    def __init__(self, backend: Backend | None = None, index: int = 0) -> None:
        super().__init__(backend if backend is not None else ReferenceBackend(), index)

    def info(self) -> DeviceInfo:
        return DeviceInfo("llmrt numpy reference", DeviceType.CPU)

    def supports_op(self, node: Tensor) -> bool:
        from llmrt.reference import KERNELS

        return node.op in KERNELS or node.op in (Op.WEIGHT, Op.INPUT, Op.STATE)

    def upload(self, tensor: Any) -> Any:
        from llmrt.reference import host_weight

        return host_weight(tensor)

    def allocate(self, shape: tuple[int, ...], dtype: GGMLType) -> HostBuffer:
        from llmrt.reference import NUMPY_TYPES

        return HostBuffer(self, np.zeros(shape, NUMPY_TYPES[GGMLType(dtype)]))

    def compile(self, graph: Graph, bindings: Mapping[str, Any]) -> Executable:
        return _ReferenceExecutable(graph, bindings)


@dataclass
class Generation:
    tokens: list[int]
    logits: list[np.ndarray]  # the logits each token was chosen from


def greedy(model: Any, prompt: Sequence[int], n_new: int, n_ctx: int = 256) -> Generation:
    """`n_new` tokens after `prompt`, each the argmax of its logits (the first on ties)."""
    ctx = model.context(n_ctx=n_ctx)
    logits = np.asarray(ctx.eval(list(prompt)), np.float32)
    out = Generation([], [])
    for step in range(n_new):
        out.logits.append(logits)
        out.tokens.append(int(np.argmax(logits)))
        if step + 1 < n_new:
            logits = np.asarray(ctx.eval([out.tokens[-1]]), np.float32)
    return out


def top2_gap(logits: np.ndarray) -> float:
    a, b = np.partition(logits, -2)[-2:]
    return float(abs(b - a))


def check_greedy(
    device: Device, path: str | os.PathLike[str], prompt: str | Sequence[int], n_new: int = 16,
    reference: Device | None = None, max_nmse: float = MAX_NMSE,
) -> Generation:  # fmt: skip
    """Greedy on `device` against greedy on `reference` (default: a `ReferenceDevice`) after
    `prompt` (text, tokenized with the model's tokenizer, or token ids); raises AssertionError
    naming the step that differs. Returns the device's generation."""
    from llmrt.engine import load
    from llmrt.testing.conformance import nmse

    oracle = load(path, device=reference or ReferenceDevice())
    ids = oracle.tokenize(prompt, parse_special=True) if isinstance(prompt, str) else prompt
    want = greedy(oracle, ids, n_new)
    got = greedy(load(path, device=device), ids, n_new)
    for step, (a, b) in enumerate(zip(want.tokens, got.tokens, strict=True)):
        err = nmse(want.logits[step], got.logits[step])
        assert err <= max_nmse, (
            f"{device.id}: step {step}'s logits are off the reference's by nmse {err:.3g} "
            f"> {max_nmse:g}"
        )
        if a != b:
            gap = top2_gap(want.logits[step])
            assert gap < NEAR_TIE, (
                f"{device.id}: greedy token {step} is {b}, the reference's {a}, where the "
                f"reference's top-2 gap is {gap:.3f} (>= {NEAR_TIE}: not a near tie)"
            )
            break  # the texts differ from here on
    return got
