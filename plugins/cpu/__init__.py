"""The CPU backend: numba kernels on the host processor, the device every machine has.

`llmrt_cpu.set_threads(n)` sets the threads the kernels run on (what `-t` means).
"""

from llmrt import hookimpl


@hookimpl
def register_backends(register):
    from llmrt_cpu.backend import CPUBackend

    register(CPUBackend())


def set_threads(n: int | None = None) -> int:
    """Run the CPU kernels on `n` threads (None or < 1: the usable physical
    cores); returns the count."""
    from llmrt_cpu.jit import set_threads as set_kernel_threads

    return set_kernel_threads(n)
