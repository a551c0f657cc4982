#!/bin/bash
# Issue 15's check on the GPU machine: this tree beside the tree before the lowering refactor
# (a86e09b, carried in .devrun/old as importable packages: llmrt, llmrt_cuda, llmrt_vulkan...),
# in the same call. Stage "cuda": CUDA and Vulkan tests and conformance, logits of both trees on
# both backends (must match bit for bit), then llmrt bench of every DESIGN.md row on cuda:0, this
# tree and the old one interleaved. Stage "vulkan": the same rows on vulkan:0.
# Carry: .gl (Vulkan loader debs), .devrun (whl: platformdirs, vulkan, cffi, pycparser; old;
# synth_gguf.py).
stage=${1:-cuda}
set -u
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .devrun/whl/*.whl
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "install failed"
python3 -c "import numba, numpy, cupy; print('numba', numba.__version__, 'numpy', numpy.__version__, 'cupy', cupy.__version__)"
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader
old() { PYTHONPATH=$PWD/.devrun/old:/tmp/site "$@"; }
synth() { [ -e /tmp/synth-$1-$2.gguf ] || python3 .devrun/synth_gguf.py $1 $2 /tmp/synth-$1-$2.gguf >/dev/null; }
bench() {  # bench DEVICE SHAPE QTYPE
  timeout 150 llmrt bench -m /tmp/synth-$2-$3.gguf -p 512 -n 128 -ngl 99 -r 3 --device $1 2>&1 \
    | grep -v "^| model\|^| ---" | tee -a $OUT/bench.log
}
ROWS="smollm2-135m:q4_0 smollm2-135m:q8_0 llama32-1b:q4_0 llama3-8b:q4_0"
# "quick": conformance on both backends, the logits check, and the 135M and 1B rows on both
[ "$stage" = quick ] && ROWS="smollm2-135m:q4_0 llama32-1b:q4_0"
( for r in $ROWS; do synth ${r%:*} ${r#*:}; done ) &
if [ "$stage" = cuda ] || [ "$stage" = quick ]; then
  llmrt devices 2>&1 | head -12
  [ "$stage" = cuda ] && timeout 200 python3 -m pytest tests/plugins/test_cuda_backend.py \
    tests/plugins/test_vulkan_backend.py -q --tb=short -p no:cacheprovider 2>&1 | tee $OUT/tests.log | tail -6
  timeout 200 python3 -m pytest tests/conformance -q -k "cuda or vulkan" --tb=line -p no:cacheprovider \
    2>&1 | tee $OUT/conformance.log | grep -v PASSED | tail -6
  wait
  for dev in cuda:0 vulkan:0; do
    for m in smollm2-135m-q4_0 llama32-1b-q4_0; do
      timeout 90 python3 benchmarks/logits_snapshot.py /tmp/synth-$m.gguf $dev /tmp/new.npz
      old timeout 90 python3 benchmarks/logits_snapshot.py /tmp/synth-$m.gguf $dev /tmp/old.npz
      python3 -c "import numpy as n; a=n.load('/tmp/new.npz')['logits']; b=n.load('/tmp/old.npz')['logits']; \
print('$dev $m logits', a.shape, 'identical' if n.array_equal(a, b) else f'DIFFER max {abs(a-b).max()}')" \
        | tee -a $OUT/logits.log
    done
  done
fi
wait
devs=cuda:0; [ "$stage" = vulkan ] && devs=vulkan:0; [ "$stage" = quick ] && devs="cuda:0 vulkan:0"
for dev in $devs; do
  for r in $ROWS; do
    echo "== $dev $r: this tree, then before (a86e09b)" | tee -a $OUT/bench.log
    bench $dev ${r%:*} ${r#*:}
    old bench $dev ${r%:*} ${r#*:}
  done
done
