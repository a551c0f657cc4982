"""What every backend shares between the graph IR and its kernels (ggml's ggml_can_fuse and
ggml_gallocr, in Python): views over planned storage, the liveness arena planner, and the fusion
rewrites a backend opts into through its device's ``supports_op``.

A backend's compile is then: ``fuse`` the graph for its device, walk the nodes turning each into
kernel launches over ``View`` records (views, reshapes and permutes cost nothing), and place the
activation storages in one arena with ``plan_arena`` (or an ``Arena`` used while lowering).
steps.py does that walk for backends whose kernels follow ggml's op families (a step a kernel
family: CUDA, OpenCL, Vulkan), passes.py holds the small-batch rewrites of its step lists, and
prologue.py those for a mat-vec that quantizes, ropes and stores rows itself (Vulkan's).
"""

from llmrt.lower.arena import ALIGN, Arena, plan_arena
from llmrt.lower.fuse import fuse, readers
from llmrt.lower.view import Storage, View, alias, bound

__all__ = ["ALIGN", "Arena", "Storage", "View", "alias", "bound", "fuse", "plan_arena", "readers"]
