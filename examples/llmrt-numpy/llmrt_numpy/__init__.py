"""An example llmrt backend: the host processor, every op written with numpy.

Registered through the ``llmrt`` entry point ``example`` (pyproject.toml); ``--device example:0``.
It also adds a conformance case of its own, which runs with the built-in ones.
"""

from llmrt import hookimpl


@hookimpl
def register_backends(register):
    from llmrt_numpy.backend import NumpyBackend  # imports stay cheap until a device is needed

    register(NumpyBackend())


@hookimpl
def register_conformance_cases(register):
    from llmrt.gguf import GGMLType
    from llmrt.testing import OpCase

    # a Q4_0 product of 40 token rows: above the 32 rows that go one by one (numerics.md)
    leaves = {
        "a": ("weight", (48, 64), GGMLType.Q4_0, "uniform"),
        "b": ("input", (40, 64), GGMLType.F32, "uniform"),
    }
    register(
        OpCase(
            "example:mul_mat(type_a=q4_0,m=48,k=64,t=40)",
            leaves,
            lambda g, x: g.mul_mat(x["a"], x["b"]),
            max_nmse=5e-4,
        )
    )
