#!/bin/bash
# One GPU session's calls on the device machine, back to back on one warm machine (issues 15, 17,
# 22): each stage is one call of at most 600 s, and the model files travel in parts beside them
# (benchmarks/device_models.sh's layout: .gpumodels/part.N and .gpumodels/manifest).
#   check [peer] setup; with "peer", llama.cpp's builds started (../shared/tools/peer, carried
#                as .peer, for the bench stage's llama.cpp rows); llmrt devices; CUDA/Vulkan/OpenCL plugin tests and the conformance suite on
#                cuda:0, vulkan:0 and opencl:0 (NVIDIA's OpenCL); logits of this tree against the
#                tree in .devrun/old (OLDREV below) on cuda:0 and vulkan:0; opencl:0 and the
#                splits over cuda:0,vulkan:0 etc. against cuda:0 alone; OpenCL launch costs
#   bench ROWS   per row, interleaved: llmrt cuda (this tree, OLDREV), llama.cpp CUDA, llmrt vulkan
#                (this tree, OLDREV), llama.cpp Vulkan, llmrt opencl:0 (command buffer, and kernel by
#                kernel with LLMRT_OPENCL_SAFE=1), llmrt cuda:0,vulkan:0
#   keep [peer]  sets the carried model part aside; with "peer", llama.cpp's builds started too
#   models       joins the parts; greedy and logits tests on opencl:0, cuda:0, vulkan:0; KL
#                divergence against llama.cpp on each, through the prompt path and the decode path
#                (kld_decode.py); benches of the real models
#   profile      an OpenCL decode step kernel by kernel on a profiling queue (opencl_profile.py):
#                GPU busy time against the gaps between kernels, 135M and 1B shapes
#   opencl       OpenCL on the GPU: its tests and conformance, the prompt products alone (float
#                gemm against gemmq's tiles: opencl_gemm.py), the decode profile at a 512-token
#                depth, and llmrt bench of opencl:0 beside the tree
#                in .devrun/base (a git archive of core and plugins of an earlier commit: its REV file), interleaved
#   verify       decode logits deep in a context against OLDREV's, and the depth benches
#   attn         attention deep in a context after a kernel change: the CUDA and Vulkan plugin tests
#                and conformance; logits of the 135M and 1B shapes (a prompt, then decode steps) and
#                of the 1B's decode at depths 4096 and 16384, this tree against OLDREV, on cuda:0
#                and vulkan:0
#   cuda-attn    after a CUDA attention change: conformance on cuda:0, the 1B's logits against
#                OLDREV's (a prompt; decode at depths 4096 and 16384), then the depth benches of the
#                1B and 8B shapes on cuda:0 beside OLDREV and llama-bench (-fa 1), and the split
#                attention's blocks a multiprocessor swept (benchmarks/cuda_attn_splits.py)
#   coopmat      Vulkan prompt matmuls on cooperative matrices (matmul_coop): its tests and the
#                mul_mat conformance cases on vulkan:0, prompt logits against OLDREV's, and pp512 of
#                the four rows with each matmul shader (benchmarks/prompt_paths.py) beside
#                llama-bench's Vulkan pp512 when the peer was built
#   ratios ROWS  per row, interleaved: llmrt bench on cuda:0 then llama.cpp CUDA, vulkan:0 then
#                llama.cpp Vulkan, opencl:0 (this tree only; the peer's builds finished), then
#                opencl:0 under each of OPENCL_VARIANTS (llmrt_opencl constants, as mmvq's)
#   enqueue ROWS OpenCL's host time a step (one short call on a fresh machine): the arguments',
#                the down and output projections' tests on the GPU; tg128 of ROWS, this tree,
#                .devrun/base and each of VARIANTS (llmrt_opencl constants; default: the down
#                projection, the output projection, both) interleaved twice, the 135M's
#                logits of this tree and base compared, opencl_step_split.py (enqueue, wait,
#                rest) of the 135M on each, then opencl_launch_cost.py (SVM rows too)
#   ab-quick     OpenCL launch VARIANTS in little device time: the lanes test, CHECKED
#                variants' 1B logits, then tg128 of the 1B and 135M rows per variant, interleaved
#   ratios-vk ROWS  issue 17's ratios in one call on a fresh machine: llama.cpp's Vulkan build
#                alone, then per row interleaved llmrt opencl:0, llama.cpp Vulkan, llmrt vulkan:0,
#                then opencl:0 under each of OPENCL_VARIANTS
#   cuda-pp      after a CUDA prompt change: the attention conformance cases on cuda:0, pp512 of the
#                1B and 8B shapes beside OLDREV's, and the 1B's prompt step by step (cuda_profile.py)
#   pp-quick     cuda-pp in less device time: the conformance cases and a prompt forced onto gemmq
#                against the cpu, the 1B's 200-token logits against OLDREV's, pp512 of the 1B and 8B
#                on gemmq and on cuBLAS (prompt_paths.py) (gemmq is the default from sm_80)
#   pp-profile   pp512 of the 1B and 8B shapes step by step on cuda:0 (cuda_profile.py N_PROMPT;
#                GEMMQ=1 puts it on gemmq) and of the 1B by shader on vulkan:0 (vulkan_profile.py)
#   opencl-pp    after an OpenCL prompt-product change: opencl_gemm.py and llmrt bench of opencl:0,
#                this tree beside .devrun/base; then the OpenCL tests and conformance, and CUDA's
#                attention cases and forced-gemmq test, on the GPU
#   wrap         a short last call: CUDA's mul_mat conformance and pp512 on gemmq by default,
#                OpenCL's gemmq as chosen (opencl_gemm.py) and its tests, an OpenCL prompt and
#                decode attention profiled (opencl_profile.py)
#   opencl-attn  OpenCL attention: fattn_prompt's tests on the GPU, the one-token fattn alone
#                against the cache's length (opencl_attn_probe.py), pp512 of the 135M and 1B rows
#                with fattn and with fattn_prompt (prompt_paths.py), fattn_prompt profiled
#   attn-probe   the prompt attention (flash_attn_coop) in other workgroup shapes: checked, then
#                pp512 of the 135M, 1B and 8B rows (benchmarks/vulkan_attn_probe.py)
#   pipeline-stats  what NVIDIA's compiler made of the cooperative-matrix shaders and of the
#                PROBES (vulkan_pipeline_stats.py): registers, shared memory, spills
#   cm2-probe    the prompt matmul on NVIDIA's cooperative matrix 2 (benchmarks/vulkan_cm2, not
#                shipped) in place of matmul_coop, in other tiles and k-steps (vulkan_cm2_probe.py):
#                checked, then pp512 of the 1B and 8B rows
#   coop-probe   Vulkan's prompt matmul (matmul_coop) rebuilt without one part at a time, and its
#                correct variants (benchmarks/vulkan_coop_probe.py): pp512 of the 1B and 8B rows
#   ab ROWS      a refactor's A/B (issue 15): logits of this tree and of .devrun/base on cuda:0 and
#                vulkan:0, then llmrt bench of both per row, interleaved
#   glu          OpenCL decode launches: the GPU tests of the last-work-group epilogues, tg128 beside
#                .devrun/base, the 135M's and 1B's decode steps profiled kernel by kernel
#   mmvq         OpenCL's integer mat-vecs under launch variants (VARIANTS): the product cases on the
#                GPU, the 8B's decode step by product size, tg128 of the 135M and 8B rows; PIN=1
#                the 135M's tg128 pinned to one core and not; CHECKED variants: the 1B's logits
#                under each against default's
#   opencl-decode  an OpenCL decode change: attention tests on the GPU, then this tree beside
#                .devrun/base: opencl_attn_probe.py, tg128 at depths 0 and 512 (135M, 1B, 8B rows)
#   vec          fattn_vec (a GPU's one-token attention, a stream of work-items a key): the peer's
#                builds started; opencl_attn_probe.py of fattn_vec and fattn; its GPU tests; tg128
#                at depths 0 and 512 of the 135M, 1B and 8B rows under VARIANTS, base interleaved
#   mma          gemmq on tensor cores: opencl_gemm.py (the tile against the dp4a tiles, outputs
#                compared), the legacy mul_mat conformance cases on opencl:0, pp512 of the 1B
#                and 8B rows beside .devrun/base (one short call on a fresh machine)
#   depth        llmrt bench -p 0 -n 64 -d 4096,16384 of the 1B and 8B shapes on cuda:0 and
#                vulkan:0, each beside llama-bench's (fa on) when the peer was built; Vulkan
#                and CUDA attention split for more or fewer blocks (benchmarks/*_attn_splits.py)
# Carry: .gl (Vulkan loader debs), .devrun (whl, old, base, synth_gguf.py, kld_ref.py), .peer (all
# three made in a new checkout by `bash benchmarks/device_setup.sh [BASEREV]`), and a
# clean export of the tree (git archive HEAD into the ignored .clean, the command run inside it
# with these folders linked in) when uncommitted work must not travel. An ignored folder that a
# call does not carry was gone at the next call (2026-12-05): the first call carries .gl, .devrun
# and .peer, which are kept in /tmp/keep.* for later calls on the warm machine; those carry a model
# part instead (.gpumodels/part.N and .gpumodels/manifest: a call carries at most 64 MiB).
set -u
stage=${1:-check}
OUT=${OUT:-/tmp/out}; mkdir -p $OUT /tmp/parts
# a folder carried once is kept on the warm machine; a later call that does not carry it (to leave
# room for a model part) finds it linked back from there
# (a call that did not carry .devrun found a .devrun without its files, 2026-12-06: a folder with
# no file but under __pycache__, which Python writes, counts as not carried)
for d in .gl .devrun .peer; do
  if [ -d $d ] && [ ! -L $d ] && [ -n "$(find $d -type f ! -path '*__pycache__*' -print -quit)" ]; then
    rm -rf /tmp/keep$d && cp -r $d /tmp/keep$d
  elif [ -d /tmp/keep$d ]; then rm -rf $d && ln -s /tmp/keep$d $d; fi
done
cp .gpumodels/part.* /tmp/parts/ 2>/dev/null
# SmolLM2 alone is part.0 and the first 56,362,432 bytes of part.1 (head -c of it, 56 MB)
[ -e .gpumodels/smol.1 ] && cp .gpumodels/smol.1 /tmp/parts/part.1
if [ "$stage" = keep ]; then
  [ "${2:-}" = peer ] && bash .peer/device_bench.sh build
  ls /tmp/parts; exit 0
fi

# a later call on the warm machine finds the loader and the wheels installed: it need not carry them
[ -d .gl ] && { for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; }
[ -d .devrun/whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --upgrade \
  --target /tmp/site .devrun/whl/*.whl
PEER=.devrun/device_bench.sh  # ../shared/tools/peer/device_bench.sh; .peer (its build) is carried once
mkdir -p /tmp/ocl && echo libnvidia-opencl.so.1 > /tmp/ocl/nvidia.icd
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site OCL_ICD_VENDORS=/tmp/ocl
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "install failed"
old() { PYTHONPATH=$PWD/.devrun/old:/tmp/site "$@"; }
# /tmp/new.npz (this tree) against /tmp/old.npz (OLDREV, or the tree named $3): identical, or how
# far apart; into $OUT/$2
against_old() { python3 -c "import numpy as n; a=n.load('/tmp/new.npz')['logits']; b=n.load('/tmp/old.npz')['logits']; \
print('$1 this tree vs ${3:-$OLDREV}:', 'identical' if n.array_equal(a, b) else f'argmax equal on \
{int((a.argmax(-1)==b.argmax(-1)).sum())} of {len(a)} rows, max |diff| {float(abs(a-b).max()):.4g}, spread {float(a.std()):.3g}')" \
    | tee -a $OUT/$2; }
# glslc 2025 (GL_KHR_cooperative_matrix) from the carried .peer's debs, as /tmp/glslc
newer_glslc() {
  mkdir -p /tmp/vk && for f in .peer/vkdeb/glslc*.deb .peer/vkdeb/libshaderc1*.deb; do dpkg -x $f /tmp/vk; done
  printf '#!/bin/sh\nLD_LIBRARY_PATH=/tmp/vk/usr/lib/x86_64-linux-gnu exec /tmp/vk/usr/bin/glslc "$@"\n' \
    > /tmp/glslc && chmod +x /tmp/glslc
}
synth() { [ -e /tmp/synth-$1-$2.gguf ] || python3 .devrun/synth_gguf.py $1 $2 /tmp/synth-$1-$2.gguf >/dev/null; }
# a variant ("default", "base", or constants comma-separated) as with_constants.py's arguments,
# each prefixed with $2
sets() { [ $1 = default ] || [ $1 = base ] || echo "$1" | tr , '\n' | sed "s/^/${2:-}/"; }
# mmvq's lanes in the GPU's kernels (a test), then the 1B's logits (a prompt, then
# decode steps) under each CHECKED variant (llmrt_opencl constants) against default's; into $OUT/$1
check_variants() {
  echo "== mmvq's lanes on the GPU" | tee -a $OUT/$1
  timeout 120 python3 -m pytest tests/plugins/test_opencl_backend.py -k takes_any_lanes -q \
    --tb=short -p no:cacheprovider 2>&1 | tail -n 3 | tee -a $OUT/$1
  for v in ${CHECKED:+default $CHECKED}; do
    f=/tmp/new.npz; [ $v = default ] && f=/tmp/old.npz
    timeout 60 python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from with_constants import \
set_constants; set_constants(sys.argv[3:]); import logits_snapshot; sys.argv[1:] = \
['/tmp/synth-llama32-1b-q4_0.gguf', 'opencl:0', sys.argv[1], sys.argv[2]]; logits_snapshot.main()" \
      $f 40 $(sets $v llmrt_opencl.) 2>&1 | grep -v "Warning\|lambda"
    [ $v = default ] || against_old "$v, 1B logits on opencl:0:" $1 default
  done
}
OLDREV=1064bbf  # the tree in .devrun/old (git archive of core and plugins, as installed packages)
ROWS="smollm2-135m:q4_0 smollm2-135m:q8_0 llama32-1b:q4_0 llama3-8b:q4_0"

case $stage in
check)
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  [ "${2:-}" = peer ] && bash .peer/device_bench.sh build  # 16 cores for ~8 min: slows the tests
  ( synth smollm2-135m q4_0; synth llama32-1b q4_0 ) &
  synth=$!
  ( synth smollm2-135m q8_0; synth llama3-8b q4_0 ) &
  synth_big=$!
  llmrt devices 2>&1 | tee $OUT/devices.log
  python3 benchmarks/opencl_launch_cost.py 2>&1 | tee $OUT/launch-cost.log
  # the tests in the background, beside the logits checks (correctness only: nothing is timed)
  ( timeout 240 python3 -m pytest tests/plugins/test_cuda_backend.py tests/plugins/test_cuda_launch.py \
      tests/plugins/test_vulkan_backend.py tests/plugins/test_opencl_backend.py tests/core/test_buffers.py \
      -q --tb=short -p no:cacheprovider > $OUT/plugin-tests.log 2>&1
    timeout 240 python3 -m pytest tests/conformance -q -k "cuda or vulkan or opencl" --tb=line \
      -p no:cacheprovider > $OUT/conformance.log 2>&1 ) &
  tests=$!
  wait $synth
  for m in smollm2-135m-q4_0 llama32-1b-q4_0; do
    for dev in cuda:0 vulkan:0; do
      timeout 60 python3 benchmarks/logits_snapshot.py /tmp/synth-$m.gguf $dev /tmp/new.npz
      old timeout 60 python3 benchmarks/logits_snapshot.py /tmp/synth-$m.gguf $dev /tmp/old.npz
      against_old "$dev $m" logits.log
    done
    cp /tmp/new.npz /tmp/vulkan.npz
    timeout 60 python3 benchmarks/logits_snapshot.py /tmp/synth-$m.gguf cuda:0 /tmp/one.npz
    for dev in opencl:0 cuda:0,vulkan:0 vulkan:0,cuda:0 cuda:0,opencl:0; do
      timeout 90 python3 benchmarks/logits_snapshot.py /tmp/synth-$m.gguf $dev /tmp/split.npz
      python3 -c "import numpy as n; a=n.load('/tmp/one.npz')['logits']; b=n.load('/tmp/split.npz')['logits']; \
s=(a.argmax(-1)==b.argmax(-1)); print('$m $dev vs cuda:0: argmax equal on', int(s.sum()), 'of', len(s), \
'rows, the 9 greedy steps', bool(s[-9:].all()), 'max |diff|', float(abs(a-b).max()))" | tee -a $OUT/split.log
    done
  done
  wait $tests $synth_big  # a file still being written when the call returns would be cut short
  grep -v "PASSED" $OUT/plugin-tests.log | tail -25
  tail -12 $OUT/conformance.log
  ;;
bench)
  [ $# -gt 1 ] && ROWS="${*:2}"
  ( for r in $ROWS; do synth ${r%:*} ${r#*:}; done )
  [ -e /tmp/peer-cuda.log ] && { WAIT_S=120 bash $PEER wait cuda; WAIT_S=60 bash $PEER wait vulkan; }
  b() { timeout 120 llmrt bench -m $3 -p 512 -n 128 -ngl 99 -r 3 --device $2 2>&1 \
      | grep -v "^| model\|^| ---" | sed "s/^/$1 $2 /" | tee -a $OUT/bench.log; }
  for r in $ROWS; do
    m=/tmp/synth-${r%:*}-${r#*:}.gguf
    echo "== $r" | tee -a $OUT/bench.log
    b llmrt cuda:0 $m; old b $OLDREV cuda:0 $m
    bash $PEER bench cuda $m | sed 's/^/llama.cpp-cuda /' | tee -a $OUT/bench.log
    b llmrt vulkan:0 $m; old b $OLDREV vulkan:0 $m
    bash $PEER bench vulkan $m | sed 's/^/llama.cpp-vulkan /' | tee -a $OUT/bench.log
    b llmrt opencl:0 $m; LLMRT_OPENCL_SAFE=1 b llmrt-opencl-safe opencl:0 $m; b llmrt cuda:0,vulkan:0 $m
  done
  ;;
models)
  models=$PWD/.gpumodels/cache/models; mkdir -p $models
  cat /tmp/parts/part.* > /tmp/joined
  offset=0 total=$(stat -c %s /tmp/joined)
  while read -r name size; do  # the models whose bytes all came (SmolLM2 alone: part.0 + smol.1)
    [ $((offset + size)) -le $total ] || break
    tail -c +$((offset + 1)) /tmp/joined | head -c "$size" > "$models/$name"
    offset=$((offset + size))
  done < <(head -2 .gpumodels/manifest)
  (cd $models && tail -2 $OLDPWD/.gpumodels/manifest | while read -r sum name; do
    [ -e "$name" ] && echo "$sum  $name"; done | sha256sum -c) || exit 1
  export LLMRT_CACHE=$PWD/.gpumodels/cache
  [ -e $models/gemma-3-270m-q4_k_m.gguf ] && only="" || only="not gemma3"  # no hub to pull from
  for dev in opencl:0 cuda:0 vulkan:0; do
    echo "== KL divergence against llama.cpp (fa0), SmolLM2, $dev"
    timeout 120 python3 .devrun/kld_ref.py score $models/smollm2-135m-instruct-q4_1.gguf tests/fixtures/refs/smollm2-135m/kld/text.txt \
      tests/fixtures/refs/smollm2-135m/kld/llama_cpp_fa0.npz $dev 2>&1 | tail -6 | tee -a $OUT/kld.log
    echo "== the same through the decode path (benchmarks/kld_decode.py), $dev"
    timeout 120 python3 benchmarks/kld_decode.py .devrun/kld_ref.py $models/smollm2-135m-instruct-q4_1.gguf \
      tests/fixtures/refs/smollm2-135m/kld/text.txt tests/fixtures/refs/smollm2-135m/kld/llama_cpp_fa0.npz \
      $dev 2>&1 | tail -2 | tee -a $OUT/kld.log
  done
  # OpenCL's decode cases on the GPU in the background (correctness only)
  ( timeout 240 python3 -m pytest tests/conformance tests/plugins/test_opencl_backend.py \
      -k "(opencl and decode_ and not pocl) or one_token_attention" -q --tb=short \
      -p no:cacheprovider > $OUT/models-opencl-decode.log 2>&1 ) &
  decode_cases=$!
  gemma=$models/gemma-3-270m-q4_k_m.gguf
  for dev in opencl:0 cuda:0 vulkan:0; do
    [ -e $gemma ] || break
    echo "== Gemma 3 perplexity on $dev (llama-perplexity: 8.5198, tests/fixtures/refs/gemma3-270m)"
    timeout 150 llmrt perplexity -m $gemma -f tests/fixtures/refs/smollm2-135m/kld/text.txt -c 256 \
      --device $dev 2>&1 | grep "Final estimate" | python3 -c "import re,sys; t=sys.stdin.read(); \
m=re.search(r'PPL = ([\d.]+)', t); print(t.strip(), '| ratio to llama.cpp', round(float(m.group(1))/8.5198, 5) if m else None)" \
      | tee -a $OUT/kld.log
  done
  for dev in opencl:0 cuda:0 vulkan:0; do
    echo "== greedy and logits on $dev"
    LLMRT_TEST_DEVICE=$dev timeout 150 python3 -m pytest tests/models/test_greedy.py \
      tests/models/test_logits.py -k "$only" -q --tb=short -p no:cacheprovider 2>&1 | tee $OUT/models-${dev%:0}.log | tail -4
  done
  wait $decode_cases; tail -n 3 $OUT/models-opencl-decode.log
  # the real models' benches, unless llama.cpp is being built beside them (NO_BENCH=1)
  [ "${NO_BENCH:-0}" = 1 ] || for m in $models/*.gguf; do
    for dev in opencl:0 cuda:0 vulkan:0; do
      timeout 60 llmrt bench -m $m -p 512 -n 128 -r 3 --device $dev 2>&1 | grep -v "^| model\|^| ---" \
        | sed "s/^/$dev /" | tee -a $OUT/bench-models.log
    done
    for peer in cuda vulkan; do
      bash $PEER bench $peer $m | sed "s/^/llama.cpp-$peer /" | tee -a $OUT/bench-models.log
    done
  done
  ;;
profile)
  for m in smollm2-135m:q4_0 llama32-1b:q4_0; do
    synth ${m%:*} ${m#*:}
    LLMRT_OPENCL_SAFE=1 timeout 150 python3 benchmarks/opencl_profile.py /tmp/synth-${m%:*}-${m#*:}.gguf \
      opencl:0 16 2>&1 | tail -14 | sed "s/^/$m /" | tee -a $OUT/profile.log
  done
  ;;
opencl)
  synth smollm2-135m q4_0; synth llama32-1b q4_0
  ( synth llama3-8b q4_0 ) &
  synth_big=$!
  timeout 300 python3 -m pytest tests/plugins/test_opencl_q8.py tests/plugins/test_opencl_backend.py tests/plugins/test_opencl_gemmq.py \
    tests/conformance -k "opencl" -q --tb=short -p no:cacheprovider > $OUT/opencl-tests.log 2>&1
  tail -4 $OUT/opencl-tests.log
  timeout 150 python3 benchmarks/opencl_gemm.py --t 512 --tile 16,16,8,4,4 --tile 16,16,4,4,4 \
    --tile 16,8,4,4,4 --tile 8,8,4,4,2 2>&1 | tee -a $OUT/opencl-gemm.log
  for m in smollm2-135m-q4_0 llama32-1b-q4_0; do
    LLMRT_OPENCL_SAFE=1 timeout 60 python3 benchmarks/opencl_profile.py /tmp/synth-$m.gguf opencl:0 8 512 \
      2>&1 | grep -v "^step\|Warning\|lambda" | head -4 | sed "s/^/$m /" | tee -a $OUT/profile.log
  done
  wait $synth_big
  for r in 1 2; do
    for m in smollm2-135m-q4_0 llama32-1b-q4_0 llama3-8b-q4_0; do
      b() { timeout 90 llmrt bench -m /tmp/synth-$m.gguf -p 512 -n 128 -r 3 --device opencl:0 2>&1 \
        | grep "| pp\|| tg" | sed "s/^/$1 $m /" | tee -a $OUT/bench.log; }
      b this; PYTHONPATH=$PWD/.devrun/base:/tmp/site b base
    done
  done
  ;;
opencl-pp)  # an OpenCL prompt-product change: gemmq alone and llmrt bench beside .devrun/base, then
  # correctness on the GPU (OpenCL tests and conformance; CUDA's attention and forced-gemmq cases)
  synth llama32-1b q4_0; synth smollm2-135m q4_0; synth smollm2-135m q8_0; ( synth llama3-8b q4_0 ) &
  synth_big=$!
  base() { PYTHONPATH=$PWD/.devrun/base:/tmp/site "$@"; }
  for tree in this base; do
    [ $tree = this ] && run="" || run=base
    $run timeout 120 python3 benchmarks/opencl_gemm.py --t 512 --types q4_0,q4_1,q8_0 --reps 5 \
      --tile 16,16,8,8,4 2>&1 | grep -v "^#" | sed "s/^/$tree /" | tee -a $OUT/opencl-gemm.log
  done
  for q in q4_0 q8_0; do
    timeout 45 python3 benchmarks/prompt_paths.py /tmp/synth-smollm2-135m-$q.gguf cuda:0 512 3 2>&1 \
      | tail -2 | sed "s/^/135M $q /" | tee -a $OUT/cuda-paths.log
  done
  wait $synth_big
  for m in llama32-1b-q4_0 llama3-8b-q4_0; do
    for tree in this base; do
      [ $tree = this ] && run="" || run=base
      $run timeout 90 llmrt bench -m /tmp/synth-$m.gguf -p 512 -n 128 -r 3 --device opencl:0 2>&1 \
        | grep "| pp\|| tg" | sed "s/^/$tree $m /" | tee -a $OUT/opencl-bench.log
    done
  done
  for m in smollm2-135m-q4_0 llama32-1b-q4_0; do  # a decode step's kernels, 64 tokens deep
    LLMRT_OPENCL_SAFE=1 timeout 60 python3 benchmarks/opencl_profile.py /tmp/synth-$m.gguf opencl:0 8 64 \
      2>&1 | grep -v "^step\|Warning\|lambda" | head -16 | sed "s/^/$m /" | tee -a $OUT/opencl-profile.log
  done
  ( timeout 200 python3 -m pytest tests/plugins/test_opencl_q8.py tests/plugins/test_opencl_backend.py \
      tests/plugins/test_opencl_gemmq.py tests/conformance -k opencl -q --tb=short -p no:cacheprovider \
      > $OUT/opencl-tests.log 2>&1 ) &
  ocl=$!
  timeout 200 python3 -m pytest tests/conformance tests/plugins/test_cuda_backend.py -q --tb=short \
    -k "cuda and flash_attn or int8_tensor_cores" -p no:cacheprovider > $OUT/cuda-tests.log 2>&1
  wait $ocl
  for f in opencl-tests cuda-tests; do tail -n 3 $OUT/$f.log; done
  ;;
wrap)  # a short last call: CUDA prompts on gemmq by default (mul_mat conformance, pp512), OpenCL's
  # gemmq tiles as chosen and their tests, where OpenCL's 1B prompt and 135M decode attention go
  synth llama32-1b q4_0; synth smollm2-135m q4_0
  ( timeout 170 python3 -m pytest tests/plugins/test_opencl_q8.py tests/plugins/test_opencl_gemmq.py \
      tests/conformance -k "opencl and (mul_mat or gemmq or q8 or mmvq)" -q --tb=short -p no:cacheprovider \
      > $OUT/opencl-tests.log 2>&1
    timeout 170 python3 -m pytest tests/conformance -k "cuda and mul_mat" -q --tb=short \
      -p no:cacheprovider > $OUT/cuda-tests.log 2>&1 ) &
  tests=$!
  timeout 60 python3 benchmarks/opencl_gemm.py --t 512 --types q4_0,q8_0 --reps 5 2>&1 \
    | grep -v "^#\|Warning\|lambda" | tee -a $OUT/opencl-gemm.log
  timeout 40 llmrt bench -m /tmp/synth-llama32-1b-q4_0.gguf -p 512 -n 0 -r 3 --device cuda:0 2>&1 \
    | grep pp512 | tee -a $OUT/cuda-pp.log
  PROFILE_PROMPT=1 LLMRT_OPENCL_SAFE=1 timeout 60 python3 benchmarks/opencl_profile.py \
    /tmp/synth-llama32-1b-q4_0.gguf opencl:0 2 512 2>&1 | grep -v "Warning\|lambda" | head -14 \
    | tee -a $OUT/opencl-profile.log
  for o in launch_attention.MAX_SPLITS=64 launch_attention.MAX_SPLITS=1 launch_attention.NT=64; do
    LLMRT_OPENCL_SAFE=1 timeout 40 python3 benchmarks/opencl_profile.py /tmp/synth-smollm2-135m-q4_0.gguf \
      opencl:0 8 64 $o 2>&1 | grep "fattn\|step:" | tail -n 3 | sed "s/^/135M $o /" | tee -a $OUT/opencl-profile.log
  done
  wait $tests
  for f in opencl-tests cuda-tests; do tail -n 3 $OUT/$f.log; done
  ;;
opencl-attn)  # OpenCL prompt attention: fattn against fattn_prompt (off by default until measured)
  synth llama32-1b q4_0; synth smollm2-135m q4_0
  timeout 150 python3 -m pytest tests/plugins/test_opencl_backend.py -k "query_row_a_work_item or \
    (gpu_kernels_conform and (flash_attn or decode_attention))" -q --tb=short -p no:cacheprovider \
    2>&1 | tail -n 3 | tee -a $OUT/opencl-attn.log
  # one-token attention alone: event time against the cache's length, beside an empty kernel's
  timeout 60 python3 benchmarks/opencl_attn_probe.py 2>&1 | grep -v "Warning\|lambda" | tee -a $OUT/opencl-attn.log
  for m in smollm2-135m-q4_0 llama32-1b-q4_0; do
    timeout 90 python3 benchmarks/prompt_paths.py /tmp/synth-$m.gguf opencl:0 512 3 2>&1 | grep pp512 \
      | sed "s/^/$m /" | tee -a $OUT/opencl-attn.log
    PROFILE_PROMPT=1 LLMRT_OPENCL_SAFE=1 timeout 60 python3 benchmarks/opencl_profile.py /tmp/synth-$m.gguf \
      opencl:0 2 512 launch_attention.PROMPT_MAX_D=64 2>&1 | grep "fattn\|step:" | tail -n 2 \
      | sed "s/^/$m fattn_prompt /" | tee -a $OUT/opencl-attn.log
  done
  ;;
attn)
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  synth smollm2-135m q4_0; synth llama32-1b q4_0
  ( synth llama3-8b q4_0 ) &
  synth_big=$!
  ( timeout 300 python3 -m pytest tests/plugins/test_cuda_backend.py tests/plugins/test_cuda_launch.py \
      tests/plugins/test_vulkan_backend.py -q --tb=short -p no:cacheprovider > $OUT/plugin-tests.log 2>&1
    timeout 200 python3 -m pytest tests/conformance -q -k "cuda or vulkan" --tb=line \
      -p no:cacheprovider > $OUT/conformance.log 2>&1 ) &
  tests=$!
  for m in smollm2-135m-q4_0 llama32-1b-q4_0; do
    for dev in cuda:0 vulkan:0; do
      timeout 60 python3 benchmarks/logits_snapshot.py /tmp/synth-$m.gguf $dev /tmp/new.npz
      old timeout 60 python3 benchmarks/logits_snapshot.py /tmp/synth-$m.gguf $dev /tmp/old.npz
      against_old "$dev $m" logits.log
    done
  done
  for dev in cuda:0 vulkan:0; do
    for d in 4096 16384; do
      timeout 60 python3 benchmarks/logits_at_depth.py /tmp/synth-llama32-1b-q4_0.gguf $dev $d /tmp/new.npz
      old timeout 60 python3 benchmarks/logits_at_depth.py /tmp/synth-llama32-1b-q4_0.gguf $dev $d /tmp/old.npz
      against_old "$dev llama32-1b d$d" logits.log
    done
  done
  wait $tests $synth_big
  grep -v "PASSED" $OUT/plugin-tests.log | tail -15
  tail -8 $OUT/conformance.log
  ;;
cuda-attn)  # after a CUDA attention change: correctness, then the depth benches beside llama.cpp
  synth llama32-1b q4_0
  ( synth llama3-8b q4_0 ) &
  synth_big=$!
  timeout 150 python3 -m pytest tests/conformance -q -k "cuda" --tb=line -p no:cacheprovider 2>&1 | tail -3
  for d in 0 4096 16384; do
    if [ $d = 0 ]; then snap() { timeout 60 python3 benchmarks/logits_snapshot.py /tmp/synth-llama32-1b-q4_0.gguf cuda:0 $1; }
    else snap() { timeout 60 python3 benchmarks/logits_at_depth.py /tmp/synth-llama32-1b-q4_0.gguf cuda:0 $d $1; }; fi
    snap /tmp/new.npz; old snap /tmp/old.npz
    against_old "cuda:0 1B d$d" logits.log
  done
  wait $synth_big
  WAIT_S=240 bash $PEER wait cuda
  for m in llama32-1b-q4_0 llama3-8b-q4_0; do
    for tree in this $OLDREV; do
      [ $tree = this ] && run="" || run=old
      $run timeout 100 llmrt bench -m /tmp/synth-$m.gguf -p 0 -n 64 -d 4096,16384 -r 2 --device cuda:0 \
        2>&1 | grep "tg64" | sed "s/^/$tree cuda:0 /" | tee -a $OUT/depth.log
    done
    ARGS="-p 0 -n 64 -d 4096,16384 -fa 1 -r 2" bash $PEER bench cuda /tmp/synth-$m.gguf \
      | sed "s/^/llama.cpp-cuda /" | tee -a $OUT/depth.log
    timeout 90 python3 benchmarks/cuda_attn_splits.py /tmp/synth-$m.gguf 4096,16384 2,3,4 2>&1 \
      | sed "s/^/$m /" | tee -a $OUT/depth.log
  done
  ;;
coopmat)  # Vulkan prompt matmuls on cooperative matrices: correctness, then pp beside llama.cpp
  synth smollm2-135m q4_0; synth smollm2-135m q8_0; synth llama32-1b q4_0
  ( synth llama3-8b q4_0 ) &
  synth_big=$!
  llmrt devices 2>&1 | grep -i vulkan | tee -a $OUT/coopmat.log
  timeout 240 python3 -m pytest tests/plugins/test_vulkan_backend.py tests/plugins/test_vulkan_plan.py \
    tests/conformance -k "vulkan and (cooperative or mul_mat or plan or attn or attention)" -q --tb=short -p no:cacheprovider \
    2>&1 | tail -5 | tee -a $OUT/coopmat.log
  for m in smollm2-135m-q4_0 llama32-1b-q4_0; do  # prompt logits: f16 products against f32 ones
    timeout 60 python3 benchmarks/logits_snapshot.py /tmp/synth-$m.gguf vulkan:0 /tmp/new.npz
    old timeout 60 python3 benchmarks/logits_snapshot.py /tmp/synth-$m.gguf vulkan:0 /tmp/old.npz
    against_old "vulkan:0 $m" coopmat.log
  done
  wait $synth_big
  [ -e /tmp/peer-vulkan.log ] && WAIT_S=300 bash $PEER wait vulkan  # a build begun by `keep peer`
  # llama-bench's first runs after its build ran at a quarter speed (2026-12-07): one run unread
  [ -e /tmp/peer-vulkan/bin/llama-bench ] && ARGS="-p 512 -n 0 -ngl 99 -r 1" bash $PEER bench vulkan \
    /tmp/synth-llama32-1b-q4_0.gguf > /dev/null
  for m in smollm2-135m-q4_0 smollm2-135m-q8_0 llama32-1b-q4_0 llama3-8b-q4_0; do
    timeout 120 python3 benchmarks/prompt_paths.py /tmp/synth-$m.gguf vulkan:0 512 3 2>&1 \
      | grep pp512 | sed "s/^/$m /" | tee -a $OUT/coopmat.log
    [ -e /tmp/peer-vulkan/bin/llama-bench ] && ARGS="-p 512 -n 0 -ngl 99 -fa 0,1 -r 3" bash $PEER \
      bench vulkan /tmp/synth-$m.gguf | sed "s/^/llama.cpp-vulkan $m /" | tee -a $OUT/coopmat.log
  done
  ;;
attn-probe)  # flash_attn_coop in other workgroup shapes (vulkan_attn_probe.py): checked against
  # numpy, then pp512 of the 135M, 1B and 8B rows; carry .gl, .devrun and .peer (its glslc 2025)
  newer_glslc
  synth smollm2-135m q4_0; synth llama32-1b q4_0; ( synth llama3-8b q4_0 ) &
  synth_big=$!
  ( cd benchmarks && LLMRT_GLSLC=/tmp/glslc timeout 100 python3 vulkan_attn_probe.py --check vulkan:0 ) \
    2>&1 | grep nmse | tee -a $OUT/attn-probe.log
  wait $synth_big
  for m in smollm2-135m-q4_0 llama32-1b-q4_0 llama3-8b-q4_0; do
    ( cd benchmarks && LLMRT_GLSLC=/tmp/glslc timeout 120 python3 vulkan_attn_probe.py \
      /tmp/synth-$m.gguf vulkan:0 512 3 ) 2>&1 | grep pp512 | sed "s/^/$m /" | tee -a $OUT/attn-probe.log
  done
  ;;
pipeline-stats)  # registers, shared memory and spills of the cooperative-matrix shaders and probes
  newer_glslc
  LLMRT_GLSLC=/tmp/glslc timeout 120 python3 benchmarks/vulkan_pipeline_stats.py vulkan:0 2>&1 \
    | tee -a $OUT/pipeline-stats.log
  ;;
cm2-probe)  # matmul_cm2 in other shapes (vulkan_cm2_probe.py): checked against numpy, then pp512
  # of the 1B and 8B rows; carry .gl, .devrun and .peer (its glslc 2025 builds the probes)
  newer_glslc
  synth llama32-1b q4_0; ( synth llama3-8b q4_0 ) &
  synth_big=$!
  ( cd benchmarks && LLMRT_GLSLC=/tmp/glslc timeout 100 python3 vulkan_cm2_probe.py --check vulkan:0 ) \
    2>&1 | grep -E 'nmse|Error|error' | tee -a $OUT/cm2-probe.log
  ( cd benchmarks && LLMRT_GLSLC=/tmp/glslc timeout 150 python3 vulkan_cm2_probe.py \
    /tmp/synth-llama32-1b-q4_0.gguf vulkan:0 512 3 ) 2>&1 | grep pp512 | sed "s/^/1B /" | tee -a $OUT/cm2-probe.log
  wait $synth_big
  ( cd benchmarks && LLMRT_GLSLC=/tmp/glslc timeout 150 python3 vulkan_cm2_probe.py \
    /tmp/synth-llama3-8b-q4_0.gguf vulkan:0 512 2 ) 2>&1 | grep pp512 | sed "s/^/8B /" | tee -a $OUT/cm2-probe.log
  ;;
coop-probe)  # where matmul_coop's time goes: vulkan_coop_probe.py on the 1B and 8B rows (carry .gl,
  # .devrun and .peer, whose glslc 2025 builds the probes)
  newer_glslc
  synth llama32-1b q4_0; ( synth llama3-8b q4_0 ) &
  synth_big=$!
  # which probes compute correctly here (NVIDIA's compiler), then their times
  LLMRT_GLSLC=/tmp/glslc timeout 100 python3 benchmarks/vulkan_coop_probe.py --check vulkan:0 2>&1 \
    | grep nmse | tee -a $OUT/probe.log
  LLMRT_GLSLC=/tmp/glslc timeout 150 python3 benchmarks/vulkan_coop_probe.py \
    /tmp/synth-llama32-1b-q4_0.gguf vulkan:0 512 3 2>&1 | grep pp512 | sed "s/^/1B /" | tee -a $OUT/probe.log
  wait $synth_big
  LLMRT_GLSLC=/tmp/glslc timeout 150 python3 benchmarks/vulkan_coop_probe.py \
    /tmp/synth-llama3-8b-q4_0.gguf vulkan:0 512 2 2>&1 | grep pp512 | sed "s/^/8B /" | tee -a $OUT/probe.log
  # and the 8B's prompt shader by shader, as shipped
  timeout 120 python3 benchmarks/vulkan_profile.py /tmp/synth-llama3-8b-q4_0.gguf 3 vulkan:0 512 2>&1 \
    | tail -30 | tee -a $OUT/vk-profile.log
  ;;
ab)  # a refactor's A/B (issue 15): the CUDA and Vulkan conformance cases and plan tests beside
  # logits of this tree and of .devrun/base (BASEREV) on the 135M and 1B shapes (a 200-token prompt,
  # then decode steps), then per row interleaved llmrt bench on cuda:0 and vulkan:0 (this, base)
  [ $# -gt 1 ] && ROWS="${*:2}"
  BASE=$(cat .devrun/base/REV)
  base() { PYTHONPATH=$PWD/.devrun/base:/tmp/site "$@"; }
  synth smollm2-135m q4_0; synth llama32-1b q4_0
  ( for r in $ROWS; do synth ${r%:*} ${r#*:}; done ) &
  synth_rest=$!
  ( timeout 200 python3 -m pytest tests/conformance tests/plugins/test_cuda_plan.py \
      tests/plugins/test_vulkan_plan.py tests/plugins/test_cuda_backend.py -q --tb=line \
      -k "cuda or vulkan or plan" -p no:cacheprovider > $OUT/ab-tests.log 2>&1 ) &
  tests=$!
  for m in smollm2-135m-q4_0 llama32-1b-q4_0; do
    for dev in cuda:0 vulkan:0; do
      timeout 60 python3 benchmarks/logits_snapshot.py /tmp/synth-$m.gguf $dev /tmp/new.npz 200
      base timeout 60 python3 benchmarks/logits_snapshot.py /tmp/synth-$m.gguf $dev /tmp/old.npz 200
      against_old "$dev $m prompt 200" ab-logits.log $BASE
    done
  done
  wait $tests $synth_rest
  tail -n 4 $OUT/ab-tests.log
  for r in $ROWS; do
    m=/tmp/synth-${r%:*}-${r#*:}.gguf
    for dev in cuda:0 vulkan:0; do
      for tree in this base; do
        [ $tree = this ] && run="" || run=base
        $run timeout 120 llmrt bench -m $m -p 512 -n 128 -ngl 99 -r 3 --device $dev 2>&1 \
          | grep "| pp\\|| tg" | sed "s/^/$tree $r $dev /" | tee -a $OUT/ab.log
      done
    done
  done
  ;;
opencl-decode)  # an OpenCL decode change: its attention tests on the GPU, then this tree beside
  # .devrun/base: the one-token attention alone (opencl_attn_probe.py) and tg128 at depths 0 and
  # 512 of the 135M, 1B and 8B rows, interleaved
  base() { PYTHONPATH=$PWD/.devrun/base:/tmp/site "$@"; }
  synth smollm2-135m q4_0; synth llama32-1b q4_0
  # NVIDIA's compiler builds each case's programs: 150 s ran only part of these (2026-12-06)
  timeout 300 python3 -m pytest tests/plugins/test_opencl_backend.py tests/conformance -k "opencl and \
    (flash_attn or attention or tiny_model)" -q --tb=short -p no:cacheprovider 2>&1 | tail -n 3 \
    | tee -a $OUT/opencl-decode.log
  probe() {  # TREE [probe options]
    local tree=$1 run=""; shift
    [ $tree = base ] && run=base
    $run timeout 60 python3 benchmarks/opencl_attn_probe.py "$@" 2>&1 | grep -v "Warning\|lambda" \
      | sed "s/^/$tree $*: /" | tee -a $OUT/opencl-decode.log
  }
  probe this; probe base
  for m in smollm2-135m-q4_0 llama32-1b-q4_0 llama3-8b-q4_0; do
    [ -e /tmp/synth-$m.gguf ] || continue
    for tree in this base this base; do
      [ $tree = this ] && run="" || run=base
      $run timeout 90 llmrt bench -m /tmp/synth-$m.gguf -p 0 -n 128 -d 0,512 -r 3 --device opencl:0 \
        2>&1 | grep "| tg" | sed "s/^/$tree $m /" | tee -a $OUT/opencl-decode.log
    done
  done
  ;;
glu)  # OpenCL decode launches (issue 17): the GLU's q8 blocks and the attention's split merge in
  # their kernels' last work-groups; their tests on the GPU, tg128 at depths 0 and 512 of the
  # 135M, 1B and 8B rows beside .devrun/base (interleaved, twice), then a decode step kernel by
  # kernel on the profiling queue (busy time against the gaps between kernels) of the 135M and 1B
  base() { PYTHONPATH=$PWD/.devrun/base:/tmp/site "$@"; }
  synth smollm2-135m q4_0; synth llama32-1b q4_0
  ( synth llama3-8b q4_0 ) &
  big=$!
  # CUDA_TESTS=1: CUDA's backend and launch tests beside them (nothing timed)
  [ "${CUDA_TESTS:-0}" = 1 ] && ( timeout ${TESTS_S:-300} python3 -m pytest tests/plugins/test_cuda_backend.py \
    tests/plugins/test_cuda_launch.py -q --tb=short -p no:cacheprovider > $OUT/cuda-tests.log 2>&1 ) &
  cuda=$!
  timeout ${TESTS_S:-300} python3 -m pytest tests/plugins/test_opencl_backend.py tests/conformance -k "glu_writes \
    or one_token_attention or (opencl and (decode_ or tiny_model) and not pocl)" -q --tb=short \
    -p no:cacheprovider 2>&1 | tail -n 3 | tee -a $OUT/glu.log
  wait $big $cuda
  tail -n 3 $OUT/cuda-tests.log 2>/dev/null
  # the SM clock and power state through the benches (the 135M's tg128 is bimodal on an H100)
  nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,pstate,power.draw,utilization.gpu \
    --format=csv,noheader -lms 250 >> $OUT/clocks.log 2>&1 &
  smi=$!
  for m in smollm2-135m-q4_0 llama32-1b-q4_0 llama3-8b-q4_0; do
    for tree in ${ROUNDS:-this base this base}; do
      [ $tree = this ] && run="" || run=base
      echo "$(date +%H:%M:%S.%N | cut -c1-12) $tree $m" >> $OUT/clocks.log
      $run timeout 90 llmrt bench -m /tmp/synth-$m.gguf -p 0 -n 128 -d 0,512 -r 3 --device opencl:0 \
        2>&1 | grep "| tg" | sed "s/^/$tree $m /" | tee -a $OUT/glu.log
    done
  done
  kill $smi
  for m in ${PROFILE_ROWS:-llama32-1b-q4_0 smollm2-135m-q4_0}; do
    LLMRT_OPENCL_SAFE=1 timeout 60 python3 benchmarks/opencl_profile.py /tmp/synth-$m.gguf opencl:0 8 \
      2>&1 | grep -v "Warning\|lambda" | tail -n 20 | sed "s/^/$m /" | tee -a $OUT/glu.log
  done
  ;;
mmvq)  # OpenCL's decode kernels (issue 17): the product and decode cases on the GPU under two
  # variants, then per variant, interleaved: the 8B's (or PROFILE_ROW's) decode step by kernel and
  # global size (opencl_profile.py BY_SIZE=1) and tg128 of the 135M, 1B and 8B rows. A variant is "default"
  # or llmrt_opencl constants, comma-separated (backend.NV_SHFL=0: local-memory trees, as before),
  # or "base": the tree in .devrun/base (benches only)
  VARIANTS=${VARIANTS:-"base default lower.GPU_EPILOGUE_MAX_COLS=2048 default"}
  TESTED=${TESTED:-"default lower.GPU_EPILOGUE_MAX_COLS=2048"}
  synth smollm2-135m q4_0; synth llama32-1b q4_0
  ( synth llama3-8b q4_0 ) &
  big=$!
  for v in $TESTED; do
    echo "== tests, $v" | tee -a $OUT/mmvq.log
    timeout 150 python3 benchmarks/with_constants.py $(sets $v llmrt_opencl.) -- pytest tests/conformance \
      tests/plugins/test_opencl_q8.py -k "opencl and (mul_mat or decode_ or add or rms or norm) or test_quant_q8 or test_norm_rows_q8" \
      -q --tb=short -p no:cacheprovider 2>&1 | tail -n 3 | tee -a $OUT/mmvq.log
  done
  check_variants mmvq.log
  wait $big
  for v in $VARIANTS; do
    echo "== $v" | tee -a $OUT/mmvq.log
    [ $v = base ] || BY_SIZE=1 LLMRT_OPENCL_SAFE=1 timeout 60 python3 benchmarks/opencl_profile.py /tmp/synth-${PROFILE_ROW:-llama3-8b-q4_0}.gguf \
      opencl:0 4 64 $(sets $v) 2>&1 | grep -v "Warning\|lambda" | tail -n 13 | tee -a $OUT/mmvq.log
    for m in smollm2-135m-q4_0 llama32-1b-q4_0 llama3-8b-q4_0; do
      [ $v = base ] && tree=$PWD/.devrun/base: || tree=""
      PYTHONPATH=$tree/tmp/site timeout 60 python3 benchmarks/with_constants.py $(sets $v llmrt_opencl.) -- \
        bench -m /tmp/synth-$m.gguf -p 0 -n 128 -r 3 --device opencl:0 2>&1 | grep "| tg" | sed "s/^/$v $m /" \
        | tee -a $OUT/mmvq.log
    done
  done
  # PIN=1: the 135M's tg128 with the process on one core and not, interleaved, twice (its runs
  # land about 400 or about 550 t/s on an H100 whatever the setting, the SM clock steady)
  for i in $([ "${PIN:-0}" = 1 ] && echo 1 2); do
    for pin in "" "taskset -c 5"; do
      $pin timeout 40 llmrt bench -m /tmp/synth-smollm2-135m-q4_0.gguf -p 0 -n 128 -r 3 --device opencl:0 \
        2>&1 | grep "| tg" | sed "s/^/pinned [$pin] /" | tee -a $OUT/mmvq.log
    done
  done
  ;;
vec)  # fattn_vec, the one-token attention on a stream of work-items a key (issue 17): llama.cpp's
  # builds started for a later ratios call; the one-token attention alone, fattn_vec against
  # fattn (opencl_attn_probe.py, the 135M's and the 8B's heads); its tests on the GPU; then per
  # row, interleaved, tg128 at depths 0 and 512 under each of VARIANTS ("base": .devrun/base)
  VARIANTS=${VARIANTS:-"base default launch_attention.VEC_WG=128 launch_attention.VEC_SPLIT_KEYS=128"}
  bash .peer/device_bench.sh build
  synth smollm2-135m q4_0; synth llama32-1b q4_0
  ( synth llama3-8b q4_0 ) &
  big=$!
  for heads in "--hq 9 --hkv 3 --d 64" "--hq 32 --hkv 8 --d 128"; do
    for k in "fattn --nt 64" "fattn_vec --nt 64" "fattn_vec --nt 128" "fattn_vec --nt 256"; do
      timeout 40 python3 benchmarks/opencl_attn_probe.py $heads --kernel $k --s 64,128,512,2048 \
        2>&1 | grep -v "Warning\|lambda" | sed "s/^/$heads $k: /" | tee -a $OUT/vec.log
    done
  done
  timeout 150 python3 -m pytest tests/plugins/test_opencl_backend.py tests/conformance -k "one_token_attention \
    or (opencl and (decode_ or flash_attn_ext) and not gpu_kernels and not cpu_kernels)" -q --tb=short \
    -p no:cacheprovider 2>&1 | tail -n 4 | tee -a $OUT/vec.log
  wait $big
  for m in smollm2-135m-q4_0 llama32-1b-q4_0 llama3-8b-q4_0; do
    for v in $VARIANTS; do
      [ $v = base ] && tree=$PWD/.devrun/base: || tree=""
      PYTHONPATH=$tree/tmp/site timeout 60 python3 benchmarks/with_constants.py $(sets $v llmrt_opencl.) -- \
        bench -m /tmp/synth-$m.gguf -p 0 -n 128 -d 0,512 -r 3 --device opencl:0 2>&1 | grep "| tg" \
        | sed "s/^/$v $m /" | tee -a $OUT/vec.log
    done
  done
  ;;
mma)  # gemmq on tensor cores (GQ_MMA, issue 17), one short call on a fresh machine (.devrun
  # carried): the products alone on the tensor-core tile against the dp4a tiles (opencl_gemm.py:
  # times, and each tile's output against the first's), the legacy types' mul_mat conformance
  # cases on opencl:0, then pp512 of the 1B and 8B rows beside .devrun/base
  # SHAPES (opencl_gemm.py's) and BIG=0 (no 8B row) shorten it
  synth llama32-1b q4_0; ( [ "${BIG:-1}" = 0 ] || synth llama3-8b q4_0 ) &
  big=$!
  timeout 60 python3 benchmarks/opencl_gemm.py --t 512 --types q4_0,q4_1 --reps 3 \
    --shapes ${SHAPES:-2048x2048,8192x2048,4096x4096,14336x4096} \
    --tile 16,16,8,4,4 --tile 16,16,4,4,4 2>&1 | grep -v "^#\|Warning\|lambda" | tee -a $OUT/mma.log
  timeout 70 python3 -m pytest tests/conformance -k "opencl and mul_mat and (q4_0 or q4_1 or q5_0 \
    or q5_1 or q8_0)" -q --tb=short -p no:cacheprovider 2>&1 | tail -n 3 | tee -a $OUT/mma.log
  wait $big
  for m in llama32-1b-q4_0 llama3-8b-q4_0; do
    [ -e /tmp/synth-$m.gguf ] || continue
    for tree in this base; do
      [ $tree = this ] && tree_path="" || tree_path=$PWD/.devrun/base:
      PYTHONPATH=$tree_path/tmp/site timeout 40 llmrt bench -m /tmp/synth-$m.gguf -p 512 -n 0 -r 3 \
        --device opencl:0 2>&1 | grep "| pp\|| tg" | sed "s/^/$tree $m /" | tee -a $OUT/mma.log
    done
  done
  ;;
ratios)  # this tree beside llama.cpp only, per row interleaved: CUDA, Vulkan, OpenCL (issues 17, 20)
  [ $# -gt 1 ] && ROWS="${*:2}"
  ( for r in $ROWS; do synth ${r%:*} ${r#*:}; done )
  WAIT_S=240 bash $PEER wait cuda; WAIT_S=120 bash $PEER wait vulkan
  for r in $ROWS; do
    m=/tmp/synth-${r%:*}-${r#*:}.gguf
    echo "== $r" | tee -a $OUT/ratios.log
    for dev in cuda:0 vulkan:0 opencl:0; do
      timeout 120 llmrt bench -m $m -p 512 -n 128 -ngl 99 -r 3 --device $dev 2>&1 \
        | grep "| pp\|| tg" | sed "s/^/llmrt $dev /" | tee -a $OUT/ratios.log
      [ $dev = opencl:0 ] || bash $PEER bench ${dev%:0} $m | sed "s/^/llama.cpp-${dev%:0} /" \
        | tee -a $OUT/ratios.log
    done
    # OpenCL under other launch choices (llmrt_opencl constants, comma-separated), same row
    for v in ${OPENCL_VARIANTS:-}; do
      timeout 120 python3 benchmarks/with_constants.py $(sets $v llmrt_opencl.) \
        -- bench -m $m -p 512 -n 128 -ngl 99 -r 3 --device opencl:0 2>&1 | grep "| pp\|| tg" \
        | sed "s/^/llmrt opencl:0 $v /" | tee -a $OUT/ratios.log
    done
  done
  ;;
enqueue)  # OpenCL's host time a step: tg128 this tree beside .devrun/base and the variants
  [ $# -gt 1 ] && ROWS="${*:2}" || ROWS="smollm2-135m:q4_0 llama32-1b:q4_0"
  VARIANTS=${VARIANTS:-lower.FFN_DOWN_MAX_ROWS=4096 lower.ATTN_O_MAX_ROWS=4096 lower.FFN_DOWN_MAX_ROWS=4096,lower.ATTN_O_MAX_ROWS=4096}
  base() { PYTHONPATH=$PWD/.devrun/base:/tmp/site "$@"; }
  for r in $ROWS; do synth ${r%:*} ${r#*:}; done
  # the GPU's kernels: the arguments' test, the one-token attention (its splits' merge now a
  # flag, not a return), the down projection in the gate/up launch, the output projection in the
  # attention's
  timeout 300 python3 -m pytest tests/plugins/test_opencl_backend.py -q --tb=short \
    -p no:cacheprovider -k "few_arguments or key_across or _projection" \
    2>&1 | tail -n 3 | tee -a $OUT/enqueue.log
  for r in $ROWS; do
    m=/tmp/synth-${r%:*}-${r#*:}.gguf
    for round in 1 2; do
      for v in this base $VARIANTS; do
        case $v in
          this) run="" ;;
          base) run=base ;;
          *) run="python3 benchmarks/with_constants.py $(sets $v llmrt_opencl.) --" ;;
        esac
        [ $v = this ] || [ $v = base ] && cmd="llmrt bench" || cmd=bench
        $run timeout 60 $cmd -m $m -p 0 -n 128 -r 3 --device opencl:0 2>&1 | grep "| tg" \
          | sed "s/^/$v $r /" | tee -a $OUT/enqueue.log
      done
    done
  done
  m=/tmp/synth-smollm2-135m-q4_0.gguf; synth smollm2-135m q4_0
  timeout 60 python3 benchmarks/logits_snapshot.py $m opencl:0 /tmp/new.npz > /dev/null 2>&1
  base timeout 60 python3 benchmarks/logits_snapshot.py $m opencl:0 /tmp/old.npz > /dev/null 2>&1
  against_old "opencl:0 135M" enqueue.log "$(cat .devrun/base/REV)"
  for tree in this base; do
    [ $tree = this ] && run="" || run=base
    echo "== $tree" | tee -a $OUT/enqueue.log
    $run timeout 60 python3 benchmarks/opencl_step_split.py $m opencl:0 6 128 2>&1 \
      | grep "round\|Threads" | tee -a $OUT/enqueue.log
  done
  timeout 60 python3 benchmarks/opencl_launch_cost.py 575 10 2>&1 | tee -a $OUT/enqueue.log
  ;;
ab-quick)  # OpenCL launch variants in little device time: check_variants (CHECKED), then ROUNDS
  # rounds of tg128 of the 1B and 135M rows under default and each of VARIANTS, interleaved
  synth llama32-1b q4_0; synth smollm2-135m q4_0
  check_variants ab.log
  for i in $(seq ${ROUNDS:-2}); do
    for m in llama32-1b-q4_0 smollm2-135m-q4_0; do
      for v in default $VARIANTS; do
        timeout 60 python3 benchmarks/with_constants.py $(sets $v llmrt_opencl.) -- bench \
          -m /tmp/synth-$m.gguf -p 0 -n 128 -r 3 --device opencl:0 2>&1 | grep "| tg" \
          | sed "s/^/$v $m /" | tee -a $OUT/ab.log
      done
    done
  done
  ;;
ratios-vk)  # issue 17's ratios in one call on a fresh machine (carry .gl, .devrun, .peer, ~30 MiB):
  # llama.cpp's Vulkan build alone (its CUDA configure fails at once on CUDACXX=/bin/false, then
  # the script goes on to Vulkan: ~3 min on 16 cores), the rows synthesized meanwhile; then per row
  # interleaved, the build finished: llmrt on opencl:0, llama.cpp's Vulkan, llmrt on vulkan:0
  [ $# -gt 1 ] && ROWS="${*:2}"
  CUDACXX=/bin/false bash $PEER build
  ( for r in $ROWS; do synth ${r%:*} ${r#*:}; done )
  synth llama32-1b q4_0
  check_variants ratios.log  # correctness only, beside the build
  WAIT_S=360 bash $PEER wait vulkan
  for r in $ROWS; do
    m=/tmp/synth-${r%:*}-${r#*:}.gguf
    echo "== $r" | tee -a $OUT/ratios.log
    timeout 90 llmrt bench -m $m -p 512 -n 128 -ngl 99 -r 3 --device opencl:0 2>&1 \
      | grep "| pp\|| tg" | sed "s/^/llmrt opencl:0 /" | tee -a $OUT/ratios.log
    bash $PEER bench vulkan $m | sed "s/^/llama.cpp-vulkan /" | tee -a $OUT/ratios.log
    timeout 90 llmrt bench -m $m -p 512 -n 128 -ngl 99 -r 3 --device vulkan:0 2>&1 \
      | grep "| pp\|| tg" | sed "s/^/llmrt vulkan:0 /" | tee -a $OUT/ratios.log
    for v in ${OPENCL_VARIANTS:-}; do  # as ratios' (llmrt_opencl constants), after the peer
      timeout 90 python3 benchmarks/with_constants.py $(sets $v llmrt_opencl.) \
        -- bench -m $m -p 512 -n 128 -ngl 99 -r 3 --device opencl:0 2>&1 | grep "| pp\|| tg" \
        | sed "s/^/llmrt opencl:0 $v /" | tee -a $OUT/ratios.log
    done
  done
  ;;
cuda-pp)  # after a CUDA prompt change: attention conformance, pp512 beside OLDREV, a step profile
  synth llama32-1b q4_0; synth llama3-8b q4_0
  timeout 200 python3 -m pytest tests/conformance -k "cuda and (flash_attn or mul_mat)" -q --tb=short \
    -p no:cacheprovider > $OUT/cuda-pp-conformance.log 2>&1
  tail -3 $OUT/cuda-pp-conformance.log | tee -a $OUT/cuda-pp.log
  for n in 40 200; do  # prompt logits: 40 tokens take mmvq and fattn_mma, 200 gemmq too
    timeout 60 python3 benchmarks/logits_snapshot.py /tmp/synth-llama32-1b-q4_0.gguf cuda:0 /tmp/new.npz $n
    old timeout 60 python3 benchmarks/logits_snapshot.py /tmp/synth-llama32-1b-q4_0.gguf cuda:0 /tmp/old.npz $n
    against_old "cuda:0 1B prompt $n" cuda-pp.log
  done
  for m in llama32-1b-q4_0 llama3-8b-q4_0; do
    for tree in this $OLDREV; do
      [ $tree = this ] && run="" || run=old
      $run timeout 60 llmrt bench -m /tmp/synth-$m.gguf -p 512 -n 0 -r 3 --device cuda:0 2>&1 \
        | grep "pp512" | sed "s/^/$tree $m /" | tee -a $OUT/cuda-pp.log
    done
  done
  timeout 100 python3 benchmarks/cuda_profile.py /tmp/synth-llama32-1b-q4_0.gguf 1024 512 2>&1 | tail -27 \
    | sed "s/^/1B /" | tee -a $OUT/pp-profile.log
  ;;
pp-quick)  # a CUDA prompt change in little device time: conformance, 200-token logits, the two paths
  synth llama32-1b q4_0; ( synth llama3-8b q4_0 ) &
  synth_big=$!
  # the int8 test forces gemmq on whatever the compute capability
  timeout 120 python3 -m pytest tests/conformance tests/plugins/test_cuda_backend.py -q --tb=short \
    -k "cuda and (flash_attn or mul_mat) or int8_tensor_cores" -p no:cacheprovider \
    > $OUT/cuda-pp-conformance.log 2>&1
  tail -3 $OUT/cuda-pp-conformance.log | tee -a $OUT/cuda-pp.log
  timeout 40 python3 benchmarks/logits_snapshot.py /tmp/synth-llama32-1b-q4_0.gguf cuda:0 /tmp/new.npz 200
  old timeout 40 python3 benchmarks/logits_snapshot.py /tmp/synth-llama32-1b-q4_0.gguf cuda:0 /tmp/old.npz 200
  against_old "cuda:0 1B prompt 200 (fattn_mma)" cuda-pp.log
  wait $synth_big
  for m in llama32-1b-q4_0 llama3-8b-q4_0; do
    timeout 45 python3 benchmarks/prompt_paths.py /tmp/synth-$m.gguf cuda:0 512 3 2>&1 | tail -2 \
      | sed "s/^/$m /" | tee -a $OUT/cuda-pp.log
  done
  ;;
pp-profile)  # where a prompt of 512 tokens goes, step by step: cuda:0 (GEMMQ=1: on gemmq), vulkan:0
  for m in llama32-1b-q4_0 llama3-8b-q4_0; do
    synth ${m%-*} ${m##*-}
    timeout 150 python3 benchmarks/cuda_profile.py /tmp/synth-$m.gguf 1024 512 2>&1 | tail -27 \
      | sed "s/^/$m /" | tee -a $OUT/pp-profile.log
  done
  timeout 120 python3 benchmarks/vulkan_profile.py /tmp/synth-llama32-1b-q4_0.gguf 3 vulkan:0 512 2>&1 \
    | tail -30 | tee -a $OUT/vk-profile.log
  ;;
verify)  # attention deep in a context: this tree against .devrun/old, then the depth benches
  synth llama32-1b q4_0
  timeout 200 python3 -m pytest tests/plugins/test_cuda_backend.py tests/conformance -k "cuda or vulkan" \
    -q --tb=short -p no:cacheprovider 2>&1 | tail -3
  for dev in cuda:0 vulkan:0; do
    for d in 4096 16384; do
      timeout 60 python3 benchmarks/logits_at_depth.py /tmp/synth-llama32-1b-q4_0.gguf $dev $d /tmp/new.npz
      old timeout 60 python3 benchmarks/logits_at_depth.py /tmp/synth-llama32-1b-q4_0.gguf $dev $d /tmp/old.npz
      against_old "$dev d$d" verify.log
    done
    timeout 60 llmrt bench -m /tmp/synth-llama32-1b-q4_0.gguf -p 0 -n 64 -d 4096,16384 -r 2 --device $dev \
      2>&1 | grep "tg64" | sed "s/^/$dev /" | tee -a $OUT/verify.log
  done
  ;;
depth)
  for m in llama32-1b-q4_0 llama3-8b-q4_0; do
    [ -e /tmp/synth-$m.gguf ] || continue
    for dev in cuda:0 vulkan:0; do
      for tree in this $OLDREV; do
        [ $tree = this ] && run="" || run=old
        $run timeout 100 llmrt bench -m /tmp/synth-$m.gguf -p 0 -n 64 -d 4096,16384 -r 2 \
          --device $dev 2>&1 | grep "tg64" | sed "s/^/$tree $dev /" | tee -a $OUT/depth.log
      done
      [ $dev = cuda:0 ] && peer=cuda || peer=vulkan
      [ -e /tmp/peer-$peer/bin/llama-bench ] && ARGS="-p 0 -n 64 -d 4096,16384 -fa 1 -r 2" bash $PEER \
        bench $peer /tmp/synth-$m.gguf | sed "s/^/llama.cpp-$peer /" | tee -a $OUT/depth.log
    done
  done
  timeout 120 python3 benchmarks/vulkan_attn_splits.py /tmp/synth-llama32-1b-q4_0.gguf vulkan:0 \
    4096,16384 512,1024,2048,4096 2>&1 | tee -a $OUT/depth.log
  timeout 120 python3 benchmarks/cuda_attn_splits.py /tmp/synth-llama32-1b-q4_0.gguf 4096,16384 2,3,4 \
    2>&1 | tee -a $OUT/depth.log
  ;;
esac
