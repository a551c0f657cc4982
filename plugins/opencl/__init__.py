"""opencl backend (probe only so far)."""
