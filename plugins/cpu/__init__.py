"""The CPU backend: numpy reference kernels, the device every machine has."""

from llmrt import hookimpl


@hookimpl
def register_backends(register):
    from llmrt_cpu.backend import CPUBackend

    register(CPUBackend())
