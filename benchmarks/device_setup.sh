#!/bin/bash
# Run once in a new checkout, on the dev machine: the ignored folders that benchmarks/gpu_session.sh
# carries to the GPU machine (they are never committed, so a new checkout has none of them).
#   .gl       the Vulkan loader and GL dispatch debs (Debian 12)
#   .devrun   whl/ (Python 3.12 wheels the GPU machine lacks), old/ (OLDREV's core and plugins as
#             importable packages), base/ (BASEREV's, default HEAD), synth_gguf.py, kld_ref.py and
#             device_bench.sh from ../shared/tools
#   .peer     llama.cpp's sources and the Debian 13 Vulkan build packages (../shared/tools/peer)
#     bash benchmarks/device_setup.sh [BASEREV]
set -eu
cd "$(git rev-parse --show-toplevel)"
SHARED=${SHARED:-../shared}
OLDREV=$(sed -n 's/^OLDREV=\([0-9a-f]*\).*/\1/p' benchmarks/gpu_session.sh)
BASEREV=${1:-HEAD}
for d in /.whl/ /.gl/ /.peer/ /.devrun/ /.gpumodels/ /.clean/; do
  grep -qxF $d .git/info/exclude 2>/dev/null || echo $d >> .git/info/exclude
done

# a tree's core and plugins as the packages they install as (llmrt, llmrt_cpu, ...), for PYTHONPATH
tree() {
  rm -rf "$2" && mkdir -p "$2" && git archive "$1" core plugins | tar x -C "$2"
  mv "$2/core" "$2/llmrt"
  for p in "$2"/plugins/*/; do mv "$p" "$2/llmrt_$(basename "$p")"; done
  rmdir "$2/plugins" && git rev-parse --short "$1" > "$2/REV"
}
tree "$OLDREV" .devrun/old
tree "$BASEREV" .devrun/base
cp "$SHARED/tools/synth_gguf.py" "$SHARED/tools/kld_ref.py" "$SHARED/tools/peer/device_bench.sh" .devrun/

mkdir -p .gl /tmp/amd64/partial
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
apt-get $o update -qq
(cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)

python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .devrun/whl \
  vulkan==1.3.275.1 cffi==2.1.1 pycparser==3.12 pyopencl==2026.1.4 pytools==2026.1.1 siphash24==1.9 \
  platformdirs==4.14.8 llguidance gguf

bash "$SHARED/tools/peer/pack.sh" > /dev/null
du -sh .gl .devrun .peer
