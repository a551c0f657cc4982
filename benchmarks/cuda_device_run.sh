#!/bin/bash
# One batch of CUDA work on the GPU machine (the `device` tool): install, tests, benchmarks.
# Logs go to $OUT. Stage "check": CUDA tests + conformance + synthetic benches; stage "models":
# greedy/logits tests on SmolLM2 (its file arrives in two carried parts, .cudarun/part1 and
# .cudarun/part2.bin); "bench": synthetic benches only.
stage=${1:-check}
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site LLMRT_REFS=$PWD/.cudarun/refs LLMRT_CACHE=$PWD/.cudarun/cache
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
if [ ! -e /tmp/site/platformdirs ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .cudarun/whl/*.whl
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "install failed"
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv,noheader
bench() {  # bench SHAPE QTYPE [extra llmrt bench args]
  f=/tmp/synth-$1-$2.gguf
  [ -e $f ] || python3 .cudarun/synth_gguf.py $1 $2 $f >/dev/null
  shift 2
  timeout 150 llmrt bench -m $f -p 512 -n 128 -ngl 99 -r 3 --device cuda:0 "$@" 2>&1 | grep -v "^| model\|^| ---" | tee -a $OUT/bench.log
}
if [ "$stage" = check ]; then
  timeout 120 python3 -m pytest tests/plugins/test_cuda_backend.py tests/plugins/test_cuda_plan.py -q --tb=short -p no:cacheprovider 2>&1 | tee $OUT/cuda_tests.log | tail -25
  timeout 240 python3 -m pytest tests/conformance -q -k cuda --tb=line -p no:cacheprovider 2>&1 | tee $OUT/conformance.log | grep -v "^tests/conformance.*PASSED" | tail -40
  [ -e .cudarun/part1 ] && cp .cudarun/part1 /tmp/part1  # kept for the next call while warm
  bench smollm2-135m q4_0
  bench smollm2-135m q8_0
  bench llama32-1b q4_0
  bench llama3-8b q4_0
fi
if [ "$stage" = profile ]; then
  [ -e .cudarun/part1 ] && cp .cudarun/part1 /tmp/part1  # kept for the next call while warm
  for s in "smollm2-135m q4_0" "llama32-1b q4_0"; do
    set -- $s; f=/tmp/synth-$1-$2.gguf
    [ -e $f ] || python3 .cudarun/synth_gguf.py $1 $2 $f >/dev/null
    timeout 100 python3 benchmarks/cuda_profile.py $f 2>&1 | tee -a $OUT/profile.log
  done
  bench llama3-8b q4_0
fi
if [ "$stage" = models ]; then
  mkdir -p .cudarun/cache/models
  cat /tmp/part1 .cudarun/part2.bin > .cudarun/cache/models/smollm2-135m-instruct-q4_1.gguf
  LLMRT_TEST_DEVICE=cuda:0 timeout 200 python3 -m pytest tests/models/test_greedy.py tests/models/test_logits.py -q -k smollm2 --tb=short -p no:cacheprovider 2>&1 | tee $OUT/greedy.log | tail -12
  echo "-ngl 10:"; LLMRT_TEST_DEVICE=cuda:0 LLMRT_TEST_NGL=10 timeout 200 python3 -m pytest tests/models/test_greedy.py -q -k smollm2 --tb=short -p no:cacheprovider 2>&1 | tee $OUT/greedy_ngl10.log | tail -12
  timeout 60 llmrt run -m .cudarun/cache/models/smollm2-135m-instruct-q4_1.gguf -p "The capital of France is" -n 24 --temp 0 --device cuda:0 2>&1 | tail -8
  timeout 60 llmrt bench -m .cudarun/cache/models/smollm2-135m-instruct-q4_1.gguf -p 512 -n 128 -r 3 --device cuda:0 2>&1 | tee -a $OUT/bench.log
fi
if [ "$stage" = all ]; then  # one dense call: tests, conformance, decode profile, every row
  timeout 150 python3 -m pytest tests/plugins/test_cuda_backend.py tests/plugins/test_cuda_plan.py -q --tb=short -p no:cacheprovider 2>&1 | tee $OUT/cuda_tests.log | tail -15
  timeout 300 python3 -m pytest tests/conformance -q -k cuda --tb=line -p no:cacheprovider 2>&1 | tee $OUT/conformance.log | grep -v "^tests/conformance.*PASSED" | tail -30
  [ -e .cudarun/part1 ] && cp .cudarun/part1 /tmp/part1  # kept for the next call while warm
  f=/tmp/synth-smollm2-135m-q4_0.gguf; python3 .cudarun/synth_gguf.py smollm2-135m q4_0 $f >/dev/null
  timeout 90 python3 benchmarks/cuda_profile.py $f 768 2>&1 | tee -a $OUT/profile.log
  bench smollm2-135m q4_0
  bench smollm2-135m q8_0
  bench llama32-1b q4_0
  bench llama3-8b q4_0
fi
# Two back-to-back calls on one warm machine: "perf" (carries part1; tests, conformance, every row
# with this tree and, tg only, with the committed code carried in .cudarun/old for the before
# column) then "diag" (carries part2; per-layer CPU-vs-CUDA comparison, greedy, A/B switches).
old() { PYTHONPATH=$PWD/.cudarun/old:/tmp/site "$@"; }
if [ "$stage" = perf ]; then
  [ -e .cudarun/part1 ] && cp .cudarun/part1 /tmp/part1
  timeout 100 python3 -m pytest tests/plugins/test_cuda_backend.py tests/plugins/test_cuda_plan.py -q --tb=short -p no:cacheprovider 2>&1 | tee $OUT/cuda_tests.log | tail -6
  timeout 200 python3 -m pytest tests/conformance -q -k cuda --tb=line -p no:cacheprovider -x 2>&1 | tee $OUT/conformance.log | grep -v "^tests/conformance.*PASSED" | tail -8
  for s in "smollm2-135m q4_0" "smollm2-135m q8_0" "llama32-1b q4_0" "llama3-8b q4_0"; do
    bench $s
    echo "before (committed code):" | tee -a $OUT/bench.log; old bench $s -p 0
  done
  echo "135m q4_0 again (spread):" | tee -a $OUT/bench.log
  bench smollm2-135m q4_0 -p 0
fi
if [ "$stage" = diag ]; then
  m=/tmp/smollm2.gguf; [ -e $m ] || cat /tmp/part1 .cudarun/part2.bin > $m
  r=.cudarun/refs/smollm2-135m/greedy.json
  echo "== prompt 2, this tree"; timeout 90 python3 benchmarks/cuda_diag.py $m $r 2 --save /tmp/cpu2.npz
  echo "== prompt 2, committed code"; old timeout 60 python3 benchmarks/cuda_diag.py $m $r 2 --cpu /tmp/cpu2.npz
  echo "== prompt 1, this tree"; timeout 60 python3 benchmarks/cuda_diag.py $m $r 1 --nocpu
  mkdir -p .cudarun/cache/models && ln -sf $m .cudarun/cache/models/smollm2-135m-instruct-q4_1.gguf
  LLMRT_TEST_DEVICE=cuda:0 timeout 150 python3 -m pytest tests/models/test_greedy.py tests/models/test_logits.py -q -k smollm2 --tb=line -p no:cacheprovider 2>&1 | tee $OUT/greedy.log | tail -12
  timeout 40 llmrt run -m $m -p "The capital of France is" -n 16 --temp 0 --device cuda:0 -ngl 10 2>&1 | tail -3
  timeout 40 llmrt bench -m $m -p 512 -n 128 -r 3 --device cuda:0 2>&1 | grep -v "^| model\|^| ---" | tee -a $OUT/bench.log
fi
# "ab": tests and conformance, then every row with this tree and (tg only) with each setting of
# $AB (e.g. AB="LLMRT_CUDA_SAFE=1"), then 135M and 8B decode profiles. (A/B runs of switches since
# removed, MMV_ROWS, MMVQ_R, MMVQ_XF_K, NORM_FOLD, NORM_F64, FATTN_CHUNK, ROPE_QKV: this script's
# history; their results are in BENCHMARKS.md.)
if [ "$stage" = ab ]; then
  [ -e .cudarun/part1 ] && cp .cudarun/part1 /tmp/part1
  ( for s in "smollm2-135m q4_0" "smollm2-135m q8_0" "llama32-1b q4_0" "llama3-8b q4_0"; do
      set -- $s; python3 .cudarun/synth_gguf.py $1 $2 /tmp/synth-$1-$2.gguf >/dev/null; done ) &
  timeout 120 python3 -m pytest tests/plugins/test_cuda_backend.py tests/plugins/test_cuda_plan.py -q --tb=short -p no:cacheprovider 2>&1 | tee $OUT/cuda_tests.log | tail -6
  timeout 200 python3 -m pytest tests/conformance -q -k cuda --tb=line -p no:cacheprovider -x 2>&1 | tee $OUT/conformance.log | grep -v "^tests/conformance.*PASSED" | tail -8
  wait
  for s in "smollm2-135m q4_0" "smollm2-135m q8_0" "llama32-1b q4_0" "llama3-8b q4_0"; do
    bench $s
    for ab in $AB; do echo "with $ab:" | tee -a $OUT/bench.log; ( export $ab; bench $s -p 0 ); done
  done
  PROFILE_HOST=1 timeout 90 python3 benchmarks/cuda_profile.py /tmp/synth-smollm2-135m-q4_0.gguf 2>&1 | tee -a $OUT/profile.log
  timeout 90 python3 benchmarks/cuda_profile.py /tmp/synth-llama32-1b-q4_0.gguf 2>&1 | tee -a $OUT/profile.log
  timeout 90 python3 benchmarks/cuda_profile.py /tmp/synth-llama3-8b-q4_0.gguf 2>&1 | tee -a $OUT/profile.log
fi
if [ "$stage" = bench ]; then
  bench smollm2-135m q4_0
  bench llama32-1b q4_0
  bench llama3-8b q4_0
fi
