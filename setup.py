"""Maps the source folders onto import names: core/ is `llmrt`, plugins/<x>/ is `llmrt_<x>`.

Everything else about the distribution is in pyproject.toml; setuptools cannot express this
folder-to-package mapping for subpackages there without listing each one by hand.
"""

from setuptools import find_packages, setup

ROOTS = {
    "llmrt": "core",
    "llmrt_cpu": "plugins/cpu",
    "llmrt_cuda": "plugins/cuda",
    "llmrt_vulkan": "plugins/vulkan",
    "llmrt_opencl": "plugins/opencl",
}

packages: list[str] = []
package_dir: dict[str, str] = {}
for name, path in ROOTS.items():
    packages.append(name)
    package_dir[name] = path
    for sub in find_packages(path):
        packages.append(f"{name}.{sub}")
        package_dir[f"{name}.{sub}"] = f"{path}/{sub.replace('.', '/')}"

setup(
    packages=packages,
    package_dir=package_dir,
    # files read at run time; kernels/ is no package of its own, so its files are named from the
    # backend's folder
    package_data={
        "": ["*.spv", "*.comp", "*.glsl", "*.json", "static/*"],
        **dict.fromkeys(
            ("llmrt_cuda", "llmrt_opencl"),
            ["kernels/*.cu", "kernels/*.cuh", "kernels/*.cl", "kernels/*.h"],
        ),
    },
)
