"""vulkan backend (probe only so far)."""
