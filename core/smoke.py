"""Whether a device really computes: a small graph run on it and on the reference.

``--device auto`` takes a device only if it passes (a backend that can list devices but not run
graphs, or whose driver miscomputes, is never chosen), and ``llmrt devices`` shows the verdict.
"""

from __future__ import annotations

import numpy as np

from llmrt.gguf import GGMLType, quantize
from llmrt.ir import Graph

K, M, T = 64, 48, 3


def smoke_test(device) -> str:
    """'' when `device` computes the reference's result for a norm, a Q8_0 product and an
    argmax, else one line saying why not. Never raises."""
    from llmrt.reference import ReferenceProgram, host_weight
    from llmrt.testing.conformance import WeightData, nmse

    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, (T, K)).astype(np.float32)
    raw = quantize(rng.uniform(-1, 1, (M, K)).astype(np.float32), GGMLType.Q8_0).reshape(M, -1)
    weight = WeightData("w", GGMLType.Q8_0, (M, K), raw)
    g = Graph("smoke test")
    y = g.mul_mat(g.weight("w", (M, K), GGMLType.Q8_0), g.rms_norm(g.input("x", (T, K)), 1e-6))
    g.output("y", y)
    g.output("top", g.argmax(y))
    if not all(device.supports_op(node) for node in g.nodes):
        return "declines the ops of a small graph"
    try:
        got = device.compile(g, {"w": device.upload(weight)}).run({"x": x})
    except Exception as exc:  # a driver that fails here fails the same way on a model
        return f"cannot run a small graph: {type(exc).__name__}: {exc}".splitlines()[0]
    want = ReferenceProgram(g, {"w": host_weight(weight)}).run({"x": x})
    err = nmse(want["y"], np.asarray(got["y"], np.float32))
    if not err < 1e-4:
        return f"computes a small graph wrong (nmse {err:.2g} against the reference)"
    return ""
