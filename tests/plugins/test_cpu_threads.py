"""The CPU backend's thread count: -t fixes it; without -t, decode steps are timed against one
thread (`llmrt_cpu.jit.Governor`), which the results must not depend on."""

from __future__ import annotations

import numpy as np

from llmrt import engine
from llmrt_cpu import jit
from llmrt_cpu.jit import Governor


def run(governor: Governor, seconds: dict[int, float], steps: int) -> list[int]:
    """Drive a governor with a fixed time per step for each thread count; the counts it chose."""
    chosen = []
    for _ in range(steps):
        n = governor.choose()
        chosen.append(n)
        governor.record(n, seconds[n])
    return chosen


def test_the_faster_count_is_kept_and_tried_again_less_and_less_often():
    g = Governor(2)
    chosen = run(g, {2: 1.0, 1: 3.0}, 6)
    assert sorted(chosen) == [1, 1, 1, 2, 2, 2] and chosen[:2] in ([2, 1], [1, 2])  # alternating
    assert g.best == 2 and g.left == Governor.KEEP
    run(g, {2: 1.0, 1: 3.0}, Governor.KEEP)
    assert run(g, {2: 1.0, 1: 3.0}, 6).count(1) == 3  # a new trial round
    assert g.keep == 2 * Governor.KEEP  # the same choice: kept twice as long
    for _ in range(10):
        run(g, {2: 1.0, 1: 3.0}, g.left + 6)
    assert g.keep == Governor.KEEP_MAX


def test_a_busy_machine_turns_to_one_thread_and_back():
    g = Governor(2)
    run(g, {2: 1.0, 1: 3.0}, 6 + Governor.KEEP)
    run(g, {2: 5.0, 1: 3.0}, 6)  # another process took a core: one thread is faster now
    assert g.best == 1 and g.keep == Governor.KEEP
    assert set(run(g, {2: 5.0, 1: 3.0}, Governor.KEEP)) == {1}
    run(g, {2: 1.0, 1: 3.0}, 6)  # quiet again
    assert g.best == 2


def test_one_thread_configured_is_never_timed():
    g = Governor(1)
    assert set(run(g, {1: 1.0}, 20)) == {1} and g.samples == {1: []}


def test_governed_only_without_t_and_for_short_steps():
    try:
        jit.set_threads(None)
        assert jit.governor(1) is not None and jit.governor(1) is jit.governor(1)
        assert jit.governor(jit.GOVERNED_TOKENS + 1) is None  # prompts keep the count
        jit.set_threads(2)
        assert jit.governor(1) is None  # -t given: exactly that
    finally:
        jit.set_threads(None)


def test_decode_steps_give_the_same_logits_on_any_thread_count(tiny_gguf_with_vocab):
    out = []
    for threads in (1, 2, None):
        ctx = engine.load(tiny_gguf_with_vocab, device="cpu", threads=threads).context(n_ctx=64)
        rows = [ctx.eval([1, 5, 9, 13], all_logits=True)]
        rows += [ctx.eval([t])[None] for t in (3, 7, 11, 2, 8, 4, 6, 10)]
        out.append(np.concatenate(rows))
    assert np.array_equal(out[0], out[1]) and np.array_equal(out[0], out[2])
