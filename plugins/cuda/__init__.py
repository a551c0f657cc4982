"""The CUDA backend through cupy. Importing this module does not import cupy."""

from llmrt import hookimpl


@hookimpl
def register_backends(register):
    from llmrt_cuda.backend import CUDABackend

    register(CUDABackend())
