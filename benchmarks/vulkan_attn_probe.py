"""flash_attn_coop.comp in other shapes of its workgroup: query rows (BR), keys a block (BC) and
subgroups (NSG), each built with glslc and made the runtime's prompt attention, then a prompt's
pp (as prompt_paths.py), or with --check its attention against numpy's (causal and masked
prompts, heads of 64 and 128, split and not). A shape whose shared memory exceeds the device's
for a head size leaves that attention on flash_attn.comp (launch._attn_coop), as shipped.
Needs a glslc of 2024 or newer.

    LLMRT_GLSLC=glslc python benchmarks/vulkan_attn_probe.py MODEL.gguf vulkan:0 [N_PROMPT] [R]
    LLMRT_GLSLC=glslc python benchmarks/vulkan_attn_probe.py --check vulkan:0
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from prompt_paths import time_paths

# label -> the macros that differ from the runtime's variant; (BR / CM) x (BC / CM) == NSG: one
# block of scores a subgroup
SHAPES: dict[str, dict[str, int]] = {
    "as shipped": {},
    "64 keys a block, twice the subgroups": {"BC": 64, "NSG": 8},
    "64 rows, twice the subgroups": {"BR": 64, "NSG": 8},
}
LAVAPIPE = {  # the same for its 8 x 8 variant (BR 16, NSG 8)
    "as shipped": {},
    "64 keys a block, twice the subgroups": {"BC": 64, "NSG": 16},
    "32 rows, twice the subgroups": {"BR": 32, "NSG": 16},
}


def attn_paths(dev) -> Iterator[str]:
    """Each shape of the device's flash_attn_coop variant, built and made the runtime's choice."""
    from llmrt_vulkan import shaders

    variant = dev.runtime.coopmat_attn
    if variant is None:
        raise SystemExit(f"{dev.id} has no cooperative matrix variant")
    source, macros = shaders.VARIANTS[variant]
    built: dict[str, bytes] = {}
    shapes = LAVAPIPE if variant.endswith("8") else SHAPES
    with tempfile.TemporaryDirectory() as tmp:
        for i, changed in enumerate(shapes.values()):
            name = f"{variant}_shape{i}"  # the runtime gives *_coop* their subgroup size
            kept = tuple(m for m in macros if m.split("=")[0] not in changed)
            shaders.VARIANTS[name] = (source, (*kept, *(f"{k}={v}" for k, v in changed.items())))
            out = Path(tmp, f"{name}.spv")
            glslc = os.environ.get("LLMRT_GLSLC", "glslc")  # NEWER_GLSLC lacks these names
            subprocess.run([glslc, *shaders.glslc_command(name, out)[1:]], check=True)
            built[name] = out.read_bytes()
    shipped = shaders.spirv
    shaders.spirv = lambda name: built[name] if name in built else shipped(name)
    for label, name in zip(shapes, built, strict=True):
        dev.runtime.coopmat_attn = name  # read when a graph's dispatches are made
        yield f"{variant} {label}"
    dev.runtime.coopmat_attn, shaders.spirv = variant, shipped
    for name in built:
        del shaders.VARIANTS[name]


def check(device: str) -> None:
    """Each shape's prompt attention against numpy's: causal with a cached past and random masks
    with whole blocks masked, heads of 64 and 128 (split over the KV length in the third)."""
    import numpy as np

    from llmrt import reference
    from llmrt.device import get_device
    from llmrt.gguf import GGMLType
    from llmrt.ir import Graph
    from llmrt.testing.conformance import nmse

    dev = get_device(device)
    rng = np.random.default_rng(5)
    cases = []
    for t, past, hq, hkv, d, causal in ((100, 30, 4, 2, 64, True), (300, 40, 32, 8, 128, True),
                                        (16, 684, 8, 2, 128, False)):  # fmt: skip
        s = past + t
        feeds = {
            "q": rng.normal(size=(t, hq, d)).astype(np.float32),
            "k": rng.normal(size=(s, hkv, d)).astype(np.float16),
            "v": rng.normal(size=(s, hkv, d)).astype(np.float16),
        }
        if causal:
            mask = np.where(np.arange(s) > past + np.arange(t)[:, None], -np.inf, 0)
        else:
            mask = np.where(rng.uniform(size=(t, s)) < 0.3, -np.inf, 0)
            mask[:, 64:160] = -np.inf
        feeds["mask"] = mask.astype(np.float32)
        g = Graph("attn")
        q = g.input("q", (t, hq, d))
        k, v = g.input("k", (s, hkv, d), GGMLType.F16), g.input("v", (s, hkv, d), GGMLType.F16)
        att = g.flash_attn_ext(q, k, v, g.input("mask", (t, s)), scale=0.125)
        g.output("out", att)
        want = reference.flash_attn_ext(att, feeds["q"], feeds["k"], feeds["v"], feeds["mask"])
        cases.append((g, feeds, want))
    for label in attn_paths(dev):
        results = []
        for g, feeds, want in cases:
            program = dev.compile(g, {})
            shader = program.dispatches[0].shader
            results.append(f"{nmse(want, program.run(feeds)['out']):.3g} ({shader})")
        print(f"{label}: nmse " + " / ".join(results), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "--check":  # --check DEVICE
        check(sys.argv[2])
    else:
        time_paths(attn_paths, sys.argv[1:])
