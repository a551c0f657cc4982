#!/bin/bash
# Check that llmrt's CPU backend (llmrt_cpu: numba kernels, some with hand-written LLVM IR in
# plugins/cpu/simd.py) compiles and computes correctly on aarch64, on an x86-64 Debian 12 host,
# with qemu user-mode emulation. Nothing in the repository is modified: everything lives in
# /tmp/arm64 (override with ARM64_DIR), the repository is only read.
#
# What it does, from scratch (each step is skipped when its result is already there; FRESH=1
# redoes everything):
#   1. qemu-user-static from Debian; an arm64 "sysroot" made by `dpkg -x` of the arm64 .debs of
#      Debian's python3.11 and its shared-library dependencies (no chroot, no binfmt_misc
#      needed: qemu-aarch64-static -L <root> runs the aarch64 python directly).
#   2. aarch64 wheels (cp311, manylinux aarch64) of numba / llvmlite / numpy (the host's
#      versions), llmrt's pure-Python runtime deps and pytest, unpacked into $A/site by the host
#      pip (--target, with the aarch64 platform flags).
#   3. $A/pkgs on PYTHONPATH: `llmrt` -> a symlink to $REPO/core; `llmrt_cpu` -> a COPY of
#      $REPO/plugins/cpu without its __pycache__ (llmrt_cpu.jit puts its own in-tree cache locator
#      ahead of numba's, so NUMBA_CACHE_DIR does not apply to the CPU kernels: a symlink would
#      write aarch64 cache entries into the x86 host's plugins/cpu/__pycache__); an llmrt.egg-info
#      whose entry points name only the `models` and `cpu` plugins (the GPU plugins are not
#      importable here). Core's own numba functions (llmrt.gguf.quants) are cached in
#      NUMBA_CACHE_DIR=$A/numba-cache. PYTHONDONTWRITEBYTECODE=1 so no .pyc lands in the repo.
#   4. (WAIT_GO=1) waits for $A/GO before anything CPU-heavy; emulated runs are `nice -n 19`.
#   5. Under emulation: records versions, LLVM's host CPU name/features, simd.X8_VARIANT and
#      simd.NATIVE_F16; then runs subsets of tests/plugins/test_cpu_kernels.py and
#      tests/plugins/test_cpu_tape.py from $REPO, one pytest per group, each with its own log.
#
#   6. (asm) compiles tiny wrappers of simd.dot_q4 / dot_i8 / widen_f16, checks their results and
#      lists the aarch64 instructions LLVM chose (generic: smull/smull2 + addv; neoverse-n1: sdot).
#
# Logs: $A/logs/*.log; summary: $A/logs/summary.txt.
# Cost measured on the 2-core x86 host (2026-12-05), all groups with a cold kernel cache: about
# 24 min per CPU choice (products 13 min and the tape 7-8 min of it: compiling under qemu).
# Usage: .ci/aarch64_qemu.sh [setup|probe|tests|asm|all]   (default: all; WAIT_GO=1 to wait)
#   TEST_GROUPS="q8 products ..." limits the test groups (see run_tests below).
#   CPU_NAME=neoverse-n1 (or neoverse-v1, ...) makes numba compile for that core (NUMBA_CPU_NAME)
#   instead of what LLVM detects: under qemu 7.2 user mode /proc/cpuinfo is the x86 host's, so
#   LLVM's host detection says "generic" with no extra features (baseline NEON only: no dotprod
#   `sdot`, no fp16 arithmetic, no SVE). qemu's default "max" CPU executes all of those, so a
#   named core exercises the code LLVM would emit on a real Graviton2 (n1) / Graviton3 (v1).
#   Cached kernels are keyed by the CPU name, so each choice compiles (and caches) its own.
#   Logs of such a run are suffixed with -$CPU_NAME.

set -uo pipefail
A=${ARM64_DIR:-/tmp/arm64}
REPO=${REPO:-$(cd "$(dirname "$0")/.." && pwd)}
LOGS=$A/logs
STAGE=${1:-all}
mkdir -p "$A" "$LOGS"

log() { echo "[$(date '+%F %T')] $*" | tee -a "$LOGS/summary.txt"; }

# The host's versions (numba 0.68.1 has a cp311 manylinux_2_28 aarch64 wheel).
NUMBA_V=0.68.1 LLVMLITE_V=0.50.0 NUMPY_V=2.4.6
PURE_DEPS="pluggy==1.6.0 typer==0.29.2 rich==15.0.0 jinja2==3.1.6 platformdirs==4.14.9 regex==2026.5.9 pytest==9.0.3"
PIP_PLAT=(--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none
          --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64
          --platform manylinux_2_24_aarch64 --platform manylinux_2_27_aarch64
          --platform manylinux_2_28_aarch64 --platform linux_aarch64 --platform any)

setup() {
    if [ "${FRESH:-0}" = 1 ]; then rm -rf "$A/root" "$A/debs" "$A/wheels" "$A/site" "$A/pkgs" "$A/numba-cache"; fi

    # -- 1. qemu and the arm64 sysroot ------------------------------------------------------------
    if ! command -v qemu-aarch64-static >/dev/null; then
        log "apt: qemu-user-static"
        apt-get update >"$LOGS/apt-update.log" 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get install -y qemu-user-static >"$LOGS/apt-qemu.log" 2>&1 || { log "qemu install failed"; exit 1; }
    fi
    if [ ! -x "$A/root/usr/bin/python3.11" ]; then
        log "sysroot: arm64 .debs of python3.11 and its libraries -> $A/root"
        if ! dpkg --print-foreign-architectures | grep -qx arm64; then dpkg --add-architecture arm64; fi
        apt-get update >"$LOGS/apt-update-arm64.log" 2>&1
        mkdir -p "$A/debs" "$A/root"
        # python3.11's dependency closure (arm64 packages only), plus libgomp1 (numba's omp
        # threading layer: omppool.so needs libgomp.so.1.0.0) and libstdc++6 (llvmlite).
        local pkgs
        pkgs="$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
                  --no-replaces --no-enhances --no-pre-depends python3.11:arm64 libgomp1:arm64 libstdc++6:arm64 \
                  2>/dev/null | grep -v '^ ' | grep ':arm64$' | grep -v -e '^dpkg' -e '^tar' -e '^install-info' -e '^<' | sort -u)"
        pkgs="$pkgs libgdbm6:arm64 libgdbm-compat4:arm64 media-types"
        (cd "$A/debs" && apt-get download $pkgs) >"$LOGS/apt-download-arm64.log" 2>&1 || { log "apt-get download failed"; exit 1; }
        for d in "$A"/debs/*.deb; do dpkg -x "$d" "$A/root"; done
    fi

    # -- 2. aarch64 wheels --------------------------------------------------------------------------
    if [ ! -d "$A/site/numba" ]; then
        log "wheels: numba==$NUMBA_V llvmlite==$LLVMLITE_V numpy==$NUMPY_V + deps (aarch64, cp311)"
        mkdir -p "$A/wheels"
        pip download "${PIP_PLAT[@]}" -d "$A/wheels" numba==$NUMBA_V llvmlite==$LLVMLITE_V numpy==$NUMPY_V \
            $PURE_DEPS >"$LOGS/pip-download.log" 2>&1 || { log "pip download failed"; exit 1; }
        pip install --no-deps --no-compile "${PIP_PLAT[@]}" --target "$A/site" "$A"/wheels/*.whl \
            >"$LOGS/pip-install.log" 2>&1 || { log "pip install --target failed"; exit 1; }
    fi

    # -- 3. llmrt and llmrt_cpu on PYTHONPATH ---------------------------------------------------------
    # Refreshed on every run: the copy must be the repository's current plugins/cpu.
    mkdir -p "$A/pkgs"
    ln -sfn "$REPO/core" "$A/pkgs/llmrt"
    rm -rf "$A/pkgs/llmrt_cpu.new" && mkdir "$A/pkgs/llmrt_cpu.new"
    (cd "$REPO/plugins/cpu" && tar cf - --exclude=__pycache__ .) | tar xf - -C "$A/pkgs/llmrt_cpu.new"
    if [ -d "$A/pkgs/llmrt_cpu" ] && diff -rq --exclude=__pycache__ "$A/pkgs/llmrt_cpu" "$A/pkgs/llmrt_cpu.new" >/dev/null; then
        rm -rf "$A/pkgs/llmrt_cpu.new"       # unchanged: keep the copy and its aarch64 kernel cache
    else
        rm -rf "$A/pkgs/llmrt_cpu" && mv "$A/pkgs/llmrt_cpu.new" "$A/pkgs/llmrt_cpu"
    fi
    rm -rf "$A/pkgs/llmrt.egg-info" && cp -r "$REPO/llmrt.egg-info" "$A/pkgs/"
    printf '[console_scripts]\nllmrt = llmrt.cli:main\n\n[llmrt]\ncpu = llmrt_cpu\nmodels = llmrt.models\n' \
        >"$A/pkgs/llmrt.egg-info/entry_points.txt"
    (cd "$REPO" && git rev-parse HEAD && git status --short plugins/cpu core tests/plugins) >"$LOGS/repo-state.txt" 2>&1
    log "repo HEAD $(head -1 "$LOGS/repo-state.txt"); llmrt_cpu copy sha256 $(cd "$A/pkgs/llmrt_cpu" && cat $(ls *.py | sort) | sha256sum | cut -c1-16)"

    # The emulated interpreter, as a command.
    cat >"$A/py" <<EOF
#!/bin/bash
# The emulated aarch64 Python 3.11 (Debian bookworm's, from $A/root) with the aarch64 wheels in
# $A/site and llmrt / llmrt_cpu from $A/pkgs. Usage: $A/py ARGS...
export QEMU_LD_PREFIX=$A/root            # as qemu -L: the dynamic loader and the libraries come from here
export PYTHONPATH=$A/pkgs:$A/site
export PYTHONNOUSERSITE=1
export PYTHONDONTWRITEBYTECODE=1         # never write .pyc into the repository (core is a symlink)
export NUMBA_CACHE_DIR=$A/numba-cache    # core's kernels; llmrt_cpu's are cached in-tree, i.e. in the copy
export OMP_WAIT_POLICY=\${OMP_WAIT_POLICY:-PASSIVE}  # sleeping OpenMP workers: a quiet neighbour to benchmarks
unset PYTHONHOME
exec qemu-aarch64-static -L $A/root $A/root/usr/bin/python3.11 "\$@"
EOF
    chmod +x "$A/py"
    "$A/py" -c 'import sys, platform; print(sys.version.split()[0], platform.machine())' >"$LOGS/python.log" 2>&1 \
        && log "setup ok: emulated python $(cat "$LOGS/python.log")" || { log "emulated python failed: $(cat "$LOGS/python.log")"; exit 1; }
}

wait_go() {
    [ "${WAIT_GO:-0}" = 1 ] || return 0
    log "waiting for $A/GO (up to 100 minutes)"
    for _ in $(seq 200); do [ -e "$A/GO" ] && { log "GO found"; return 0; }; sleep 30; done
    log "no GO after 100 minutes"; exit 1
}

probe() {
    log "probe: versions, LLVM host CPU, simd settings"
    (cd /tmp && time nice -n 19 "$A/py" - <<'EOF') >"$LOGS/probe.log" 2>&1
import platform, sys
import llvmlite, llvmlite.binding as llvm, numba, numpy
print("python", sys.version.split()[0], platform.machine())
print("numpy", numpy.__version__, "numba", numba.__version__, "llvmlite", llvmlite.__version__,
      "LLVM", ".".join(map(str, llvm.llvm_version_info)))
print("llvm host cpu:", llvm.get_host_cpu_name(), "triple:", llvm.get_process_triple())
features = llvm.get_host_cpu_features()
print("llvm host features (on):", " ".join(sorted(k for k, v in features.items() if v)))
from llmrt_cpu import simd, jit
print("simd.X8_VARIANT", simd.X8_VARIANT, "simd.NATIVE_F16", simd.NATIVE_F16)
print("threading layer config:", numba.config.THREADING_LAYER, "threads:", jit.threads())
from numba.core.registry import cpu_target
print("numba codegen target (triple, cpu, features):", cpu_target.target_context.codegen().magic_tuple())
print("llmrt_cpu from", simd.__file__)
EOF
    cat "$LOGS/probe.log" | tee -a "$LOGS/summary.txt"
}

# One pytest run under emulation, from the repository, logged to $LOGS/pytest-<name>.log.
run_group() {
    local name=$1${CPU_NAME:+-$CPU_NAME}; shift
    log "pytest group '$name': $*"
    local t0=$(date +%s)
    (cd "$REPO" && ${CPU_NAME:+env NUMBA_CPU_NAME=$CPU_NAME} nice -n 19 "$A/py" -m pytest -q -rA -p no:cacheprovider --basetemp="$A/pytest-tmp/$name" \
        --durations=10 "$@") >"$LOGS/pytest-$name.log" 2>&1
    local rc=$? t1=$(date +%s)
    log "group '$name': rc=$rc, $((t1 - t0)) s; $(grep -E '^(=+ )?[0-9]+ (passed|failed|error|skipped|deselected)' "$LOGS/pytest-$name.log" | tail -1)"
}

run_tests() {
    local K=tests/plugins/test_cpu_kernels.py TAPE=tests/plugins/test_cpu_tape.py
    local groups=${TEST_GROUPS:-"one q8 products norms_rope attention tape"}
    for g in $groups; do
        case $g in
        one)        run_group one "$K::test_q8_0_and_q8_1_round_as_the_reference[1-32]" ;;
        q8)         run_group q8 "$K" -k "q8_0_and_q8_1 or q8_k_rounds" ;;
        products)   run_group products "$K" -k "test_mul_mat_matches_reference and (Q4_0 or Q4_1 or Q8_0 or Q4_K or Q6_K)" ;;
        norms_rope) run_group norms_rope "$K" -k "rms_norm or rope_matches or silu_and_swiglu or gelu_and_geglu" ;;
        attention)  run_group attention "$K" -k "test_attention_matches_the_reference and (F16-1-9-3-256-64 or F32-5-2-2-16-32 or F16-3-6-2-129-60 or F16-1-1-1-1-8) and (True-30.0 or False-0.0)" ;;
        tape)       run_group tape "$TAPE" -k "every_instruction and 1-" ;;
        more)       run_group more "$K" -k "f16_to_f32 or rounding_to_f16 or probabilities_round or (get_rows and (Q4_0 or Q8_0 or Q6_K or BF16)) or kv_cache or norm_times_weight or eight_rows or each_instruction_set" ;;
        *)          log "unknown group $g" ;;
        esac
    done
}

# Which instructions LLVM picks for simd.py's hand-written IR (tiny uncached wrappers, results
# checked exactly): generic aarch64 vs. the named core(s) in ASM_CPUS.
asm_check() {
    cat >"$A/asm_check.py" <<'PYEOF'
"""Which aarch64 instructions LLVM picks for llmrt_cpu.simd's hand-written IR (run under qemu,
optionally with NUMBA_CPU_NAME): compiles tiny wrappers (no cache) and greps their assembly."""
import re
import sys

import numba
import numpy as np
from numba.core.registry import cpu_target

from llmrt_cpu import simd

print("codegen target:", cpu_target.target_context.codegen().magic_tuple())


@numba.njit(cache=False)
def q4(w, x):
    return simd.dot_q4(w, 2, 8, x, 0)


@numba.njit(cache=False)
def i8(w, x):
    return simd.dot_i8(w, 0, x, 0, 32)


@numba.njit(cache=False)
def f16(dst, src):
    simd.widen_f16(dst, 0, src, 0)


rng = np.random.default_rng(0)
w = rng.integers(0, 256, 18, dtype=np.uint8)
x = rng.integers(-128, 128, 32, dtype=np.int8)
levels = np.concatenate([w[2:] & 15, w[2:] >> 4]).astype(np.int32) - 8
assert q4(w, x) == int((levels * x).sum()), "dot_q4"
wi = rng.integers(-128, 128, 32, dtype=np.int8).view(np.uint8)
assert i8(wi, x) == int((wi.view(np.int8).astype(np.int32) * x).sum()), "dot_i8"
src = rng.uniform(-4, 4, 16).astype(np.float16)
dst = np.zeros(16, np.float32)
f16(dst, src.view(np.uint16))
assert (dst == src.astype(np.float32)).all(), "widen_f16"
print("results exact")
for name, fn in (("dot_q4", q4), ("dot_i8", i8), ("widen_f16", f16)):
    asm = next(iter(fn.inspect_asm().values()))
    ops = sorted({m for m in re.findall(r"^\s+([a-z][a-z0-9.]*)\s", asm, re.M)
                  if re.match(r"(sdot|udot|usdot|smull|smull2|umull|sadalp|saddlp|addv|smlal|smlal2|fcvtl|fcvtl2|sxtl|sxtl2|ushr|and|mul|mla)", m)})
    print(f"{name}: {' '.join(ops)}")
PYEOF
    for cpu in "" ${ASM_CPUS:-neoverse-n1}; do
        echo "== NUMBA_CPU_NAME=${cpu:-<unset>}"
        (cd /tmp && env ${cpu:+NUMBA_CPU_NAME=$cpu} nice -n 19 "$A/py" "$A/asm_check.py") 2>&1
    done >"$LOGS/asm-check.log"
    log "asm check:"; tee -a "$LOGS/summary.txt" <"$LOGS/asm-check.log"
}

case $STAGE in
setup) setup ;;
probe) setup; wait_go; probe ;;
asm)   setup; wait_go; asm_check ;;
tests) setup; wait_go; run_tests ;;
all)   setup; wait_go; probe; T0=$(date +%s); run_tests; asm_check; log "emulated: $(( $(date +%s) - T0 )) s in all" ;;
*)     echo "usage: $0 [setup|probe|tests|asm|all]"; exit 2 ;;
esac
