#!/bin/bash
# Issues 17 and 22 on the GPU machine, one call (not run yet: no GPU was lent in the session that
# wrote it; the next one with a GPU runs it and records what it prints in BENCHMARKS.md).
#  - OpenCL through NVIDIA's driver (the ICD recipe of ../shared/BACKENDS-SETUP.md): llmrt devices,
#    the conformance suite on opencl:0, the tiny model on opencl:0 against the cpu backend.
#  - A model split over two backends of one GPU (--device cuda:0,vulkan:0): its greedy tokens and
#    logits against cuda:0 alone on the synthetic 135M and 1B shapes, and its tg beside each alone.
#  - llmrt bench of DESIGN.md's synthetic rows on opencl:0, cuda:0 and vulkan:0, interleaved.
# llama.cpp's Vulkan numbers for the same rows come from ../shared/tools/peer in the same call
# (pass "peer" as $1 and carry its build folder) for the ratios the issues ask for.
# Carry: .gl (Vulkan loader debs), .devrun (whl: platformdirs, vulkan, cffi, pycparser,
# pyopencl, pytools, siphash24; synth_gguf.py).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .devrun/whl/*.whl
mkdir -p /tmp/ocl && echo libnvidia-opencl.so.1 > /tmp/ocl/nvidia.icd
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site OCL_ICD_VENDORS=/tmp/ocl
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "install failed"
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader
llmrt devices 2>&1 | tee $OUT/devices.log | head -14

synth() { [ -e /tmp/synth-$1-$2.gguf ] || python3 .devrun/synth_gguf.py $1 $2 /tmp/synth-$1-$2.gguf >/dev/null; }
ROWS="smollm2-135m:q4_0 smollm2-135m:q8_0 llama32-1b:q4_0 llama3-8b:q4_0"
( for r in $ROWS; do synth ${r%:*} ${r#*:}; done ) &

echo "== conformance on opencl:0 (NVIDIA)"
timeout 300 python3 -m pytest tests/conformance tests/plugins/test_opencl_backend.py -q -k opencl \
  --tb=line -p no:cacheprovider 2>&1 | tee $OUT/opencl-conformance.log | grep -v PASSED | tail -8
wait

echo "== split over cuda:0,vulkan:0 against cuda:0 alone: greedy tokens and logits"
for m in smollm2-135m-q4_0 llama32-1b-q4_0; do
  timeout 120 python3 benchmarks/logits_snapshot.py /tmp/synth-$m.gguf cuda:0 /tmp/one.npz
  timeout 120 python3 benchmarks/logits_snapshot.py /tmp/synth-$m.gguf cuda:0,vulkan:0 /tmp/split.npz
  python3 -c "import numpy as n; a=n.load('/tmp/one.npz')['logits']; b=n.load('/tmp/split.npz')['logits']; \
same=(a.argmax(-1)==b.argmax(-1)); print('$m split vs one: argmax equal on', int(same.sum()), 'of', len(same), \
'rows (greedy steps:', bool(same[-9:].all()), ') max |diff|', float(abs(a-b).max()))" \
    | tee -a $OUT/split.log
done

bench() {  # bench DEVICE SHAPE QTYPE
  timeout 200 llmrt bench -m /tmp/synth-$2-$3.gguf -p 512 -n 128 -ngl 99 -r 3 --device $1 2>&1 \
    | grep -v "^| model\|^| ---" | tee -a $OUT/bench.log
}
for r in $ROWS; do
  echo "== ${r}" | tee -a $OUT/bench.log
  for dev in opencl:0 cuda:0 vulkan:0 cuda:0,vulkan:0; do bench $dev ${r%:*} ${r#*:}; done
done
if [ "${1:-}" = peer ]; then
  for r in $ROWS; do
    echo "== llama.cpp Vulkan ${r}" | tee -a $OUT/bench.log
    timeout 200 .peer/build-vulkan/bin/llama-bench -m /tmp/synth-${r%:*}-${r#*:}.gguf -p 512 -n 128 \
      -ngl 99 -fa 0,1 -r 3 2>&1 | grep "^|" | tee -a $OUT/bench.log
  done
fi
