"""The scheduler on null devices (placement, causes, splitting, binding), and the acceptance test
of issue 15: a device that declines any one op of the model still runs it, falling back to the
host, with the host's results bit for bit."""

from __future__ import annotations

import re
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from llmrt.errors import LlmrtError, UnsupportedOp
from llmrt.gguf.constants import GGMLType
from llmrt.ir import Graph, Op
from llmrt.ir.sched import SplitProgram, layer_devices, place, split
from llmrt.models import HParams, Shape, llama
from llmrt.testing import DecliningDevice, NullBackend, NullDevice
from llmrt.testing.null import NullProgram

F32 = GGMLType.F32
N_LAYER = 3
HP = HParams(arch="llama", n_vocab=32, n_ctx_train=64, n_embd=16, n_layer=N_LAYER, n_head=2,
             n_head_kv=1, head_dim=8, n_ff=24, norm_eps=1e-5, rope_base=10000.0,
             rope_dims=8)  # fmt: skip
LEAVES = (Op.WEIGHT, Op.INPUT, Op.STATE)


def weights(rope_freqs: bool = False) -> dict[str, tuple[tuple[int, ...], GGMLType]]:
    e, ff, kv = HP.n_embd, HP.n_ff, HP.n_head_kv * HP.head_dim
    meta = {"token_embd.weight": ((HP.n_vocab, e), F32), "output_norm.weight": ((e,), F32)}
    for il in range(N_LAYER):
        for name, shape in (("attn_norm", (e,)), ("ffn_norm", (e,)), ("attn_q", (e, e)),
                            ("attn_k", (kv, e)), ("attn_v", (kv, e)), ("attn_output", (e, e)),
                            ("ffn_gate", (ff, e)), ("ffn_up", (ff, e)),
                            ("ffn_down", (e, ff))):  # fmt: skip
            meta[f"blk.{il}.{name}.weight"] = (shape, F32)
    if rope_freqs:
        meta["rope_freqs.weight"] = ((HP.head_dim // 2,), F32)
    return meta


def graph(n_tokens: int = 1, rope_freqs: bool = False) -> Graph:
    """The llama builder's graph of a 3-layer model: a decode step by default."""
    return llama.build(HP, Shape(n_tokens, 16, 1, 16), weights(rope_freqs))


@pytest.fixture()
def host() -> NullDevice:
    return NullDevice(NullBackend("host"))


def placed_on(gpu, host, ngl=-1, states=None, **kw):
    g = graph(**kw)
    return g, place(g, layer_devices(N_LAYER, ngl, gpu, host), host, states)


def of(g: Graph, op: Op) -> list:
    return [n for n in g.nodes if n.op is op]


def bindings(placed, meta) -> dict:
    """What a model and a context would bind: each leaf on each device that reads it."""
    held: dict = {}
    for key, devices in placed.leaf_devices().items():
        for dev in devices:
            if key in meta:
                shape, type_ = meta[key]
                held.setdefault(dev, {})[key] = dev.upload(SimpleNamespace(name=key, shape=shape,
                                                                           type=type_))  # fmt: skip
            else:
                held.setdefault(dev, {})[key] = dev.new_state((16, 1, 8), GGMLType.F16)
    return held


def run_split(g, placed, meta):
    exe = SplitProgram(g, placed, bindings(placed, meta))
    inputs = {t.key: np.zeros(t.shape, np.int32 if t.dtype == GGMLType.I32 else np.float32)
              for t in g.leaves if t.op is Op.INPUT}  # fmt: skip
    return exe, exe.run(inputs)


# --- placement ---


def test_a_device_that_takes_everything_gets_one_segment_and_says_why(host):
    gpu = NullDevice()
    g, placed = placed_on(gpu, host)
    assert placed.segments() == [gpu]
    assert placed.declines() == {}
    cause = placed.cause
    lookup, select = of(g, Op.GET_ROWS)
    assert cause[id(lookup)] == "before layer 0, with it on null:0"
    assert cause[id(select)] == "output on null:0 (-ngl)"
    for node in of(g, Op.MUL_MAT)[:-1]:
        assert cause[id(node)] == f"layer {node.layer} on null:0 (-ngl)"
    assert all(cause[id(n)] == "input, on the host" for n in of(g, Op.INPUT))
    assert all(id(n) not in placed for n in of(g, Op.INPUT))  # inputs live on the host
    assert {cause[id(n)] for n in of(g, Op.STATE)} == {f"layer {il} on null:0 (-ngl)"
                                                       for il in range(N_LAYER)}  # fmt: skip
    assert {cause[id(n)] for n in of(g, Op.SET_ROWS) + of(g, Op.VIEW)} == {"with its cache"}
    assert {cause[id(n)] for n in of(g, Op.RESHAPE)} == {"view follows its source"}
    assert {cause[id(n)] for n in of(g, Op.WEIGHT)} == {"bound where its reader runs"}


def test_partial_offload_splits_where_the_device_changes(host):
    gpu = NullDevice()
    meta = weights()
    g, placed = placed_on(gpu, host, ngl=2)
    assert placed.segments() == [host, gpu, host]
    assert placed.declines() == {}
    segments = split(g, placed)
    assert [s.device for s in segments] == [host, gpu, host]
    first, middle, last = segments
    # one value crosses each cut: the residual stream
    assert first.imports == [] and len(first.exports) == 1
    assert middle.imports == list(first.exports) and len(middle.exports) == 1
    assert last.imports == list(middle.exports) and list(last.exports) == ["logits"]
    # leaves bound where their readers run, the tied embedding on both host segments
    keys = [sorted({t.key for t in s.leaves}) for s in segments]
    assert keys[0] == sorted(["token_embd.weight", "cache_k.0", "cache_v.0"]
                             + [k for k in meta if k.startswith("blk.0.")])  # fmt: skip
    assert {k.split(".")[1] for k in keys[1] if k.startswith("blk.")} == {"1", "2"}
    assert {"cache_k.1", "cache_v.2"} <= set(keys[1])
    assert keys[2] == ["output_norm.weight", "token_embd.weight"]
    devices = placed.leaf_devices()
    assert devices["token_embd.weight"] == {host} and devices["cache_k.2"] == {gpu}
    # the inputs each segment reads arrive as inputs, from the host
    assert {"pos", "kv_cells", "mask"} <= {t.key for t in middle.graph.leaves if t.op is Op.INPUT}
    exe, out = run_split(g, placed, meta)
    assert out["logits"].shape == (1, HP.n_vocab)
    assert len(host.compiled) == 2 and len(gpu.compiled) == 1
    assert all(isinstance(p, NullProgram) and len(p.runs) == 1 for p in exe.programs)


def test_a_declined_op_without_weights_falls_back_to_the_host(host):
    gpu = NullDevice(declines={Op.ROPE})
    g, placed = placed_on(gpu, host)
    for node in of(g, Op.ROPE):
        assert placed[id(node)] is host and placed.declined_by[id(node)] is gpu
        assert placed.cause[id(node)] == "declined by null:0: host"
        assert placed[id(node.srcs[0])] is gpu  # the reshape stays with its product
    assert placed.declines() == {gpu: Counter({("rope", "declined by null:0: host"): 6})}
    # the two ropes of a layer are adjacent: one host segment per layer
    assert placed.segments() == [gpu, host] * N_LAYER + [gpu]
    run_split(g, placed, weights())
    assert not any(of(c, Op.ROPE) for c in gpu.compiled)
    assert all(of(c, Op.ROPE) for c in host.compiled)


def test_a_declined_op_with_weights_binds_them_on_the_host(host):
    gpu = NullDevice(declines={Op.MUL_MAT})
    g, placed = placed_on(gpu, host)
    devices = placed.leaf_devices()
    assert devices["blk.1.attn_q.weight"] == {host} and devices["blk.1.attn_norm.weight"] == {gpu}
    # the reshape of a product made on the host follows it there
    for node in of(g, Op.RESHAPE)[:3]:
        assert placed[id(node)] is host and placed.cause[id(node)] == "view follows its source"
    run_split(g, placed, weights())
    assert not any(of(c, Op.MUL_MAT) for c in gpu.compiled)


def test_a_declined_view_of_a_computed_value_runs_on_the_host(host):
    gpu = NullDevice(declines={Op.RESHAPE})
    g, placed = placed_on(gpu, host)
    for node in of(g, Op.RESHAPE):
        assert placed[id(node)] is host and placed.declined_by[id(node)] is gpu
    # the cache is not a reshape's concern: it stays on the device
    assert all(placed[id(n)] is gpu for n in of(g, Op.STATE) + of(g, Op.SET_ROWS))
    run_split(g, placed, weights())


@pytest.mark.parametrize("declined", [Op.SET_ROWS, Op.VIEW])
def test_a_cache_lives_with_its_writes_and_views(host, declined):
    gpu = NullDevice(declines={declined})
    g, placed = placed_on(gpu, host)
    on_cache = of(g, Op.STATE) + of(g, Op.SET_ROWS) + of(g, Op.VIEW)
    assert all(placed[id(n)] is host for n in on_cache)
    for node in of(g, Op.STATE):
        assert placed.cause[id(node)] == f"null:0 declines {declined.value} on it: host"
    for node in of(g, Op.SET_ROWS) + of(g, Op.VIEW):
        if node.op is declined:
            assert placed.cause[id(node)] == "declined by null:0: host, with its cache"
        else:  # accepted, but bound to the cache's storage
            assert placed.cause[id(node)] == "with its cache" and id(node) not in placed.declined_by
    assert all(placed[id(n)] is gpu for n in of(g, Op.FLASH_ATTN_EXT))
    assert {k for k, d in placed.leaf_devices().items() if k.startswith("cache")} == {
        f"cache_{kind}.{il}" for il in range(N_LAYER) for kind in "kv"
    }
    assert all(d == {host} for k, d in placed.leaf_devices().items() if k.startswith("cache"))
    segments = split(g, placed)
    attention = [s for s in segments if s.device is gpu and of(s.graph, Op.FLASH_ATTN_EXT)]
    assert all(len(s.imports) >= 2 for s in attention)  # the views of k and v, from the host
    run_split(g, placed, weights())
    assert not any(of(c, declined) for c in gpu.compiled)
    assert not any(of(c, Op.STATE) for c in gpu.compiled)


def test_a_pinned_state_keeps_its_device(host):
    gpu = NullDevice()
    g, placed = placed_on(gpu, host, states={"cache_k.1": host})
    state = next(n for n in of(g, Op.STATE) if n.key == "cache_k.1")
    assert placed[id(state)] is host and placed.cause[id(state)] == "kept on host:0 by its owner"
    writes = [n for n in of(g, Op.SET_ROWS) if n.srcs[0] is state]
    assert placed[id(writes[0])] is host
    # layer 1 writes k on the host and v on the device, views them in the same order, attends
    assert placed.segments() == [gpu, host, gpu, host, gpu]
    declines = NullDevice(declines={Op.SET_ROWS})
    with pytest.raises(UnsupportedOp, match="cache_k.0 lives on null:0, which declines set_rows"):
        placed_on(declines, host, states={"cache_k.0": declines})


def test_an_op_no_device_takes_is_an_error():
    host = NullDevice(NullBackend("host"), declines={Op.ROPE})
    with pytest.raises(UnsupportedOp, match="no device takes rope .*null:0 declines it, and so"):
        placed_on(NullDevice(declines={Op.ROPE}), host)
    with pytest.raises(UnsupportedOp, match="no device takes rope"):
        placed_on(host, host, ngl=0)


def test_a_weight_read_on_two_devices_is_bound_on_both(host):
    gpu = NullDevice()
    g, placed = placed_on(gpu, host, ngl=1, rope_freqs=True)
    assert placed.leaf_devices()["rope_freqs.weight"] == {host, gpu}
    run_split(g, placed, weights(rope_freqs=True))  # each segment finds it bound


def test_prompts_place_like_decode_steps(host):
    gpu = NullDevice(declines={Op.SET_ROWS})
    _, decode = placed_on(gpu, host)
    _, prompt = placed_on(gpu, host, n_tokens=7)
    assert decode.leaf_devices() == prompt.leaf_devices()
    assert len(decode.segments()) == len(prompt.segments())


# --- the null device ---


def test_null_devices_refuse_what_they_decline_and_what_they_do_not_hold(host):
    gpu = NullDevice(declines={Op.ROPE})
    g, placed = placed_on(gpu, host)
    held = bindings(placed, weights())
    with pytest.raises(UnsupportedOp, match="null:0 was asked to compile rope, which it declines"):
        gpu.compile(g, held[gpu])
    some = NullDevice(accepts={Op.GET_ROWS, Op.MUL_MAT})
    assert not some.supports_op(of(g, Op.ROPE)[0])
    assert some.supports_op(of(g, Op.MUL_MAT)[0]) and some.supports_op(g.nodes[0])
    other = NullDevice(accepts=lambda node: node.op is not Op.ROPE)
    assert not other.supports_op(of(g, Op.ROPE)[0]) and other.supports_op(of(g, Op.ADD)[0])
    with pytest.raises(LlmrtError, match="null:1 was given token_embd.weight, which null:0 hol"):
        NullDevice(index=1).compile(g, held[gpu])
    with pytest.raises(LlmrtError, match="needs 'token_embd.weight', not bound"):
        NullDevice().compile(g, {})


# --- the engine ---


def test_the_engine_compiles_a_graph_its_device_takes_whole(tiny_gguf_with_vocab):
    from llmrt.engine import load

    gpu = NullDevice()
    model = load(tiny_gguf_with_vocab, device=gpu, n_gpu_layers=-1)
    ctx = model.context(n_ctx=64)
    assert not model.split and model.decode_segments == [gpu]
    np.testing.assert_array_equal(ctx.eval([1, 2, 3]), 0)  # nothing is computed
    ctx.eval([4])
    assert all(isinstance(exe, NullProgram) for exe in ctx.graphs.values())
    assert len(gpu.compiled) == 2 and len(gpu.states) == 2 * N_LAYER


def test_the_engine_splits_where_its_device_declines(tiny_gguf_with_vocab):
    from llmrt.engine import load

    gpu = NullDevice(declines={Op.ROPE})
    model = load(tiny_gguf_with_vocab, device=gpu, n_gpu_layers=-1)
    ctx = model.context(n_ctx=64)
    ctx.eval([1, 2, 3])
    ctx.eval([4])
    assert model.split and len(model.decode_segments) == 2 * N_LAYER + 1
    assert all(isinstance(exe, SplitProgram) for exe in ctx.graphs.values())
    assert len(gpu.compiled) == 2 * (N_LAYER + 1)
    assert not any(of(c, Op.ROPE) for c in gpu.compiled)


# --- acceptance: every op declined in turn ---

# the ops of the tiny model's graphs (test_the_list_is_the_model_s checks it)
MODEL_OPS = [Op.ADD, Op.FLASH_ATTN_EXT, Op.GET_ROWS, Op.MUL, Op.MUL_MAT, Op.RESHAPE, Op.RMS_NORM,
             Op.ROPE, Op.SET_ROWS, Op.SWIGLU, Op.VIEW]  # fmt: skip
PROMPT = [5, 17, 200, 3, 99, 42, 7, 311, 64]
N_STEPS = 4


def greedy(model) -> tuple[np.ndarray, list[int], list[np.ndarray]]:
    """Logits of every prompt row, then N_STEPS greedy tokens with the logits they came from."""
    ctx = model.context(n_ctx=64)
    rows = ctx.eval(PROMPT, all_logits=True)
    logits, tokens, steps = rows[-1], [], []
    for _ in range(N_STEPS):
        tokens.append(int(np.argmax(logits)))
        logits = ctx.eval([tokens[-1]])
        steps.append(logits)
    return rows, tokens, steps


@pytest.fixture(scope="module")
def on_the_host(tiny_gguf_with_vocab):
    from llmrt.engine import load

    return greedy(load(tiny_gguf_with_vocab, device="cpu"))


def test_the_list_is_the_model_s(tiny_gguf_with_vocab):
    from llmrt.engine import load

    model = load(tiny_gguf_with_vocab, device="cpu")
    ops = set()
    for n_tokens in (1, len(PROMPT)):
        g = model.arch.build(model.hp, Shape(n_tokens, 256, n_tokens, 256), model.weight_meta)
        ops |= {n.op for n in g.nodes if n.op not in LEAVES}
    assert ops == set(MODEL_OPS)


@pytest.mark.parametrize("op", MODEL_OPS, ids=lambda op: op.value)
def test_a_device_declining_any_one_op_still_runs_the_model(tiny_gguf_with_vocab, on_the_host, op):
    from llmrt.engine import load

    device = DecliningDevice({op})
    model = load(tiny_gguf_with_vocab, device=device, n_gpu_layers=-1)
    rows, tokens, steps = greedy(model)
    # the same cpu kernels compute every node, split or not: the same bits
    expected_rows, expected_tokens, expected_steps = on_the_host
    assert tokens == expected_tokens
    np.testing.assert_array_equal(rows, expected_rows)
    for got, want in zip(steps, expected_steps, strict=True):
        np.testing.assert_array_equal(got, want)
    assert model.split and set(model.placement.declines()) == {device}
    assert {op.value} == {name for name, _ in model.placement.declines()[device]}
    assert device.compiled and not any(of(g, op) for g in device.compiled)


def test_verbose_run_prints_the_graph_splits_and_what_was_declined(smollm2_path, monkeypatch,
                                                                   capsys):  # fmt: skip
    import llmrt.engine
    from llmrt.cli import main

    monkeypatch.setattr(llmrt.engine, "get_devices", lambda spec: [DecliningDevice({Op.ROPE})])
    try:
        main(["run", "-m", str(smollm2_path), "-p", "hi", "-n", "2", "-c", "64", "--temp", "0",
              "--verbose"])  # fmt: skip
    except SystemExit as exc:
        assert not exc.code
    err = capsys.readouterr().err
    assert "llmrt: layers 0-29 and the output on declining:0;" in err
    assert "llmrt: graph splits = 61 (the decode graph: 31 on declining:0, 30 on cpu:0)\n" in err
    assert "llmrt: declining:0 declines rope x60 -> host\n" in err
    assert re.search(r"eval time =.*/\s+1 runs", err)


def test_layers_split_over_devices_in_contiguous_ranges_as_llama_cpp_does(host):
    a, b = NullDevice(NullBackend("a")), NullDevice(NullBackend("b"))

    def spread(ngl, shares=None, n_layer=30):
        layers = layer_devices(n_layer, ngl, [a, b], host, shares)
        return "".join({id(host): "h", id(a): "a", id(b): "b"}[id(d)] for d in layers)

    # every layer and the output (-1, or more than the layers): 3:1 by the layer and output index
    assert spread(-1, [3, 1]) == "a" * 24 + "b" * 7
    assert spread(99, [3, 1]) == spread(-1, [3, 1])
    assert spread(-1) == "a" * 16 + "b" * 15  # equal shares by default
    # -ngl 5: the last five layers over the devices, the output on the host
    assert spread(5, [3, 1]) == "h" * 25 + "aaaa" + "b" + "h"
    assert spread(0, [3, 1]) == "h" * 31
    assert spread(-1, [0, 1]) == "b" * 31  # a device given no share gets no layer
    # one device: the list of old
    assert layer_devices(3, -1, a, host) == [a] * 4
    assert layer_devices(3, 2, a, host) == [host, a, a, host]
    for bad in ([1], [1, -1], [0, 0]):
        with pytest.raises(LlmrtError, match="--tensor-split takes 2 proportions"):
            layer_devices(3, -1, [a, b], host, bad)


def test_device_lists_name_each_device_once():
    from llmrt.device import get_devices
    from llmrt.errors import DeviceNotFound

    cpu = get_devices("cpu")
    assert [d.id for d in cpu] == ["cpu:0"]
    assert get_devices(cpu[0]) == cpu and get_devices(["cpu"]) == cpu
    bad = {"cpu,cpu:0": "listed twice", "auto,cpu": "auto goes alone", "cpu,": "auto goes alone",
           "cpu,nosuch:0": "no backend 'nosuch'"}  # fmt: skip
    for spec, why in bad.items():
        with pytest.raises(DeviceNotFound, match=why):
            get_devices(spec)
