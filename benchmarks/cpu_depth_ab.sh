#!/bin/bash
# Decode deep in a context on the CPU backend, this checkout's cpu plugin against another
# commit's (its plugins/cpu exported as llmrt_cpu into a folder reached through PYTHONPATH),
# interleaved: llmrt bench -p 0 -n 32 -d 0,4096 with -t 2 (a fixed count: the governor off).
#   git archive REV plugins/cpu | tar -x -C /tmp/before && mv /tmp/before/plugins/cpu /tmp/before/llmrt_cpu
#   bash benchmarks/cpu_depth_ab.sh MODEL /tmp/before [ROUNDS]
set -u
model=$1 before=$2 rounds=${3:-2}
for r in $(seq $rounds); do
  for tree in this before; do
    if [ $tree = before ]; then export PYTHONPATH=$before; else unset PYTHONPATH; fi
    llmrt bench -m $model -p 0 -n 32 -d 0,4096 -r 2 -t 2 --device cpu 2>&1 | grep "tg32" \
      | sed "s/^/round $r $tree /"
  done
done
