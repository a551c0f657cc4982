"""Prompt processing with a device's prompt products on each path llmrt has for them, in one
process, as `llmrt bench`'s pp test (best of R):
- cuda:N: gemmq (int8 tensor cores on q8 activations, the legacy quants) and cuBLAS on f16
  copies (every type before sm_80);
- vulkan:N: matmul.comp (f32 products on the shader cores), matmul_coop (cooperative
  matrices) and its _wide tiles, where the device has them, and then the attention on
  flash_attn_coop (flash_attn.comp on every other path);
- opencl:N: the prompt's attention on fattn (a key a work-item) and on fattn_prompt (a query row
  a work-item, heads of at most 64).

    python benchmarks/prompt_paths.py MODEL.gguf DEVICE [N_PROMPT] [R]
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

from llmrt.cli.bench import _run_test
from llmrt.device import get_device
from llmrt.engine import load


def cuda_paths(dev) -> Iterator[str]:
    import llmrt_cuda.executable as executable

    lower = executable.lower
    for label, int8_mma in (("gemmq", True), ("cuBLAS f16", False)):
        # read when a graph is compiled: the product path, and nothing else, changes
        executable.lower = lambda graph, int8_mma=int8_mma, **_: lower(graph, int8_mma=int8_mma)
        yield label
    executable.lower = lower


def vulkan_paths(dev) -> Iterator[str]:
    rt = dev.runtime
    kept = variant, wide, attn = rt.coopmat, rt.coopmat_wide, rt.coopmat_attn
    paths = [("matmul.comp", None, None, None)]
    if variant:  # the _wide variant from shaders.WIDE_FROM tokens (a prompt of 256 or more)
        paths += [(variant, variant, None, None)] + ([(wide, variant, wide, None)] if wide else [])
    if attn:  # the prompt's attention on the matrix units too
        paths += [(f"{wide or variant} + {attn}", variant, wide, attn)]
    for label, *path in paths:
        rt.coopmat, rt.coopmat_wide, rt.coopmat_attn = path  # read when a graph is lowered
        yield label
    rt.coopmat, rt.coopmat_wide, rt.coopmat_attn = kept


def opencl_paths(dev) -> Iterator[str]:
    import llmrt_opencl.launch_attention as launch_attention

    max_d = launch_attention.PROMPT_MAX_D
    for label, d in (("fattn", 0), ("fattn_prompt", 64)):
        launch_attention.PROMPT_MAX_D = d  # read when a graph's launches are built
        yield label
    launch_attention.PROMPT_MAX_D = max_d


PATHS: dict[str, Callable[..., Iterator[str]]] = {
    "cuda": cuda_paths, "vulkan": vulkan_paths, "opencl": opencl_paths,
}  # fmt: skip


def time_paths(paths: Callable[..., Iterator[str]], argv: list[str]) -> None:
    """pp of MODEL on DEVICE ([N_PROMPT] [R]: argv) on each path that `paths(device)` sets up
    and names, best of R, a line each."""
    path, device = argv[:2]
    n_prompt = int(argv[2]) if len(argv) > 2 else 512
    repeats = int(argv[3]) if len(argv) > 3 else 3
    dev = get_device(device)
    model = load(path, device=dev, n_gpu_layers=-1)
    for label in paths(dev):
        ctx = model.context(n_ctx=n_prompt + 16)
        _run_test(ctx, model.hp.n_vocab, n_prompt, 0, 0)  # compiles the prompt graph
        best = min(_run_test(ctx, model.hp.n_vocab, n_prompt, 0, 0) for _ in range(repeats))
        print(f"{device} {label}: pp{n_prompt} {n_prompt / best:.1f} t/s")
        del ctx


def main() -> None:
    time_paths(PATHS[sys.argv[2].split(":")[0]], sys.argv[1:])


if __name__ == "__main__":
    main()
