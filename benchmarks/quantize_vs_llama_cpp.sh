#!/usr/bin/env bash
# llmrt quantize against llama-quantize, built from the llama.cpp that llama-cpp-python 0.3.36
# vendors (0c1e570), on the same F16 input: byte-identical output for each type, and the time of
# each side. Too long for CI (the build takes ~15 minutes on two cores); its results go to
# BENCHMARKS.md. Usage: benchmarks/quantize_vs_llama_cpp.sh INPUT-F16.gguf [TYPE ...]
set -euo pipefail
input=$1; shift
types=${*:-Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K}
work=${LLAMA_CPP_WORK:-/tmp/llama-cpp-0.3.36}
src=$work/llama_cpp_python-0.3.36/vendor/llama.cpp
if [ ! -x "$src/build/bin/llama-quantize" ]; then
  mkdir -p "$work"
  python3 -m pip download -q --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d "$work"
  tar xzf "$work"/llama_cpp_python-0.3.36.tar.gz -C "$work" llama_cpp_python-0.3.36/vendor/llama.cpp
  cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
  cmake --build "$src/build" --target llama-quantize -j"$(nproc)" >/dev/null
fi
out=$(mktemp -d)
echo "| type | llama-quantize s | llmrt quantize s | identical |"
echo "| --- | ---: | ---: | --- |"
seconds() { local t0; t0=$(date +%s.%N); "$@" >/dev/null 2>&1 || { echo failed; return; }
            echo "$(date +%s.%N) - $t0" | bc | xargs printf "%.1f"; }
for t in $types; do
  a=$(seconds "$src/build/bin/llama-quantize" "$input" "$out/theirs.gguf" "$t" "$(nproc)")
  b=$(seconds llmrt quantize "$input" "$out/ours.gguf" "$t")
  same=$(cmp -s "$out/theirs.gguf" "$out/ours.gguf" && echo yes || echo "no: $(cmp "$out/theirs.gguf" "$out/ours.gguf" 2>&1 | head -1)")
  echo "| $t | $a | $b | $same |"
done
rm -rf "$out"
