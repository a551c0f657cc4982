#!/bin/bash
# The real models (SmolLM2-135M and Gemma 3 270M, 335 MiB) on the GPU machine, whose calls carry
# at most 64 MiB: they travel in parts over back-to-back calls on one warm machine. Here, once:
#   mkdir -p .gpumodels && cat SMOLLM2 GEMMA | split -b 58M -d -a 1 - .gpumodels/part.
#   (cd MODELS && stat -c "%n %s" SMOLLM2 GEMMA; sha256sum SMOLLM2 GEMMA) > .gpumodels/manifest
# (.gpumodels is ignored.) Then one call per part, each carrying its part (and the manifest):
#   bash benchmarks/device_models.sh keep         # parts 0 .. n-2: set aside in /tmp/parts
#   bash benchmarks/device_models.sh check        # the last part: join, check, then greedy and
#                                                 # logits tests on cuda:0 and vulkan:0, benches
set -u
OUT=${OUT:-/tmp/out}; mkdir -p $OUT /tmp/parts
cp .gpumodels/part.* /tmp/parts/ 2>/dev/null
ls /tmp/parts
[ "${1:-keep}" = keep ] && exit 0

models=$PWD/.gpumodels/cache/models; mkdir -p $models
cat /tmp/parts/part.* > /tmp/joined
offset=0
while read -r name size; do
  tail -c +$((offset + 1)) /tmp/joined | head -c "$size" > "$models/$name"
  offset=$((offset + size))
done < <(head -2 .gpumodels/manifest)
(cd $models && tail -2 $OLDPWD/.gpumodels/manifest | sha256sum -c) || exit 1

for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .cudarun/whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site \
  .whl/vulkan-*.whl .whl/cffi-*.whl .whl/pycparser-*.whl
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site LLMRT_REFS=$PWD/.cudarun/refs LLMRT_CACHE=$PWD/.gpumodels/cache
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "install failed"
for dev in cuda:0 vulkan:0; do
  echo "== greedy and logits on $dev"
  LLMRT_TEST_DEVICE=$dev timeout 240 python3 -m pytest tests/models/test_greedy.py tests/models/test_logits.py \
    -q --tb=short -p no:cacheprovider 2>&1 | tee $OUT/models-${dev%:0}.log | tail -8
done
echo "== greedy with -ngl 14 on cuda:0 (Gemma: 4 of 18 layers on the host; SmolLM2 was checked at -ngl 10)"
LLMRT_TEST_DEVICE=cuda:0 LLMRT_TEST_NGL=14 timeout 150 python3 -m pytest tests/models/test_greedy.py -k gemma \
  -q --tb=short -p no:cacheprovider 2>&1 | tee $OUT/models-ngl14.log | tail -5
for m in $models/*.gguf; do
  for dev in cuda:0 vulkan:0; do
    timeout 60 llmrt bench -m $m -p 512 -n 128 -r 3 --device $dev 2>&1 | grep -v "^| model\|^| ---" | tee -a $OUT/bench.log
  done
done
