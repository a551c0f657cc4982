"""The OpenCL backend through pyopencl. Importing this module does not import pyopencl."""

from llmrt import hookimpl


@hookimpl
def register_backends(register):
    from llmrt_opencl.backend import OpenCLBackend

    register(OpenCLBackend())


@hookimpl
def register_conformance_cases(register):
    from llmrt_opencl.cases import decode_fusion_cases

    for case in decode_fusion_cases():
        register(case)
