"""The OpenCL backend through pyopencl. Importing this module does not import pyopencl."""

from llmrt import hookimpl


@hookimpl
def register_backends(register):
    from llmrt_opencl.backend import OpenCLBackend

    register(OpenCLBackend())
