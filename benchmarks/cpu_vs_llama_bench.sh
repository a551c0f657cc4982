#!/usr/bin/env bash
# llmrt bench on the CPU beside llama.cpp's own llama-bench (0c1e570, built from the
# llama-cpp-python 0.3.36 sdist by benchmarks/quantize_vs_llama_cpp.sh's recipe, target
# llama-bench), interleaved on one machine, same threads, with each process's peak RSS.
# Usage: benchmarks/cpu_vs_llama_bench.sh MODEL.gguf [rounds] [threads]
# Measure on a quiet machine: OpenMP-threaded llama.cpp collapses when another job shares cores.
set -euo pipefail
model=$1; rounds=${2:-2}; threads=${3:-2}
bench=${LLAMA_BENCH:-/tmp/llama-cpp-0.3.36/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin/llama-bench}
llmrt bench -m "$model" -p 8 -n 2 -r 1 --device cpu -t "$threads" >/dev/null  # compile once
for r in $(seq "$rounds"); do
  echo "round $r: llama.cpp"
  /usr/bin/time -f "peak RSS %M KB" "$bench" -m "$model" -p 512 -n 128 -t "$threads" -r 3 -o md 2>&1 \
    | grep -E "^\| [a-z]|peak"
  echo "round $r: llmrt"
  /usr/bin/time -f "peak RSS %M KB" llmrt bench -m "$model" -p 512 -n 128 -r 3 --device cpu \
    -t "$threads" 2>&1 | grep -E "^\| [a-z]|peak" | grep -v "^| model"
done
