"""The backend suite: run by the pytest plugin (``pytest --llmrt-device mycpu:0``, or
``pytest --pyargs llmrt.testing``) on each device under test, the ``llmrt_device`` argument.

Every conformance case, built-in or registered by a plugin (``register_conformance_cases``); a
case with a node the device declines in ``supports_op`` is skipped, with the reason. Then the
smoke test that ``--device auto`` runs, and greedy runs of whole models against the numpy
reference: a tiny random llama (two weight types) and a real model (``--llmrt-model``).
"""

from __future__ import annotations

import numpy as np
import pytest

from llmrt.gguf import GGMLType
from llmrt.testing.conformance import cases, check_case
from llmrt.testing.models import TINY_MAX_NMSE, check_greedy
from llmrt.testing.tiny import N_VOCAB, write_tiny_llama

CASES = cases()
PROMPT = "The capital of France is"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_op(llmrt_device, case):
    if check_case(llmrt_device, case) == "unsupported":
        pytest.skip(f"{llmrt_device.id} declines a node of this case")


def test_smoke(llmrt_device):
    assert llmrt_device.smoke == "", f"{llmrt_device.id}: {llmrt_device.smoke}"


@pytest.mark.llmrt_model
@pytest.mark.parametrize("weight_type", [GGMLType.Q8_0, GGMLType.Q4_0], ids=lambda t: t.name)
def test_tiny_model_greedy(llmrt_device, weight_type, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / f"tiny-{weight_type.name}.gguf"
    write_tiny_llama(path, weight_type, seed=1)
    prompt = np.random.default_rng(7).integers(0, N_VOCAB, 12).tolist()
    check_greedy(llmrt_device, path, prompt, n_new=16, max_nmse=TINY_MAX_NMSE)


@pytest.mark.llmrt_model
def test_real_model_greedy(llmrt_device, llmrt_model):
    check_greedy(llmrt_device, llmrt_model, PROMPT, n_new=8)
