#!/usr/bin/env bash
# Mesa 26's lavapipe, which has VK_KHR_cooperative_matrix (Debian 12's Mesa 22 has not), with the
# glibc and libraries it needs, unpacked into DEST from Debian 13 and its backports. The test
# suite runs the cooperative-matrix shaders under it in a child process
# (tests/plugins/test_vulkan_matrix_units.py, through $LLMRT_MESA26=DEST).
#   bash .ci/mesa26.sh DEST
set -euo pipefail
dest=$(realpath -m "$1")
apt_dir=$(mktemp -d)
mkdir -p "$apt_dir/sources" "$apt_dir/lists/partial" "$apt_dir/debs" "$dest"
for suite in trixie trixie-backports; do
  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$suite" > "$apt_dir/sources/$suite.sources"
done
apt=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt_dir/sources"
     -o "Dir::State::Lists=$apt_dir/lists" -o Dir::State::Status=/dev/null -o APT::Sandbox::User=root -q)
apt-get "${apt[@]}" update > /dev/null
# the driver, then what it links (and what those link) that Debian 12's versions are too old for
cd "$apt_dir/debs"
apt-get "${apt[@]}" download mesa-vulkan-drivers/trixie-backports libc6 libstdc++6 libgcc-s1 \
  libvulkan1 libdisplay-info2 libdrm-amdgpu1 libdrm2 libelf1t64 libexpat1 libllvm19 \
  libpng16-16t64 libwayland-client0 libx11-xcb1 libxcb-dri3-0 libxcb-present0 libxcb-randr0 \
  libxcb-shm0 libxcb-sync1 libxcb-xfixes0 libxcb1 libxshmfence1 libzstd1 zlib1g libx11-6 libxau6 \
  libxdmcp6 libffi8 libedit2 libxml2 libtinfo6 libbsd0 libmd0 libicu76 liblzma5 libz3-4 \
  2> /dev/null > /dev/null
for deb in *.deb; do dpkg -x "$deb" "$dest"; done
lib="$dest/usr/lib/x86_64-linux-gnu"
printf '{"file_format_version": "1.0.0", "ICD": {"library_path": "%s/libvulkan_lvp.so", "api_version": "1.4.0"}}\n' \
  "$lib" > "$dest/lvp_icd.json"
rm -rf "$apt_dir"
echo "Mesa 26 lavapipe in $dest: $(ls "$lib"/libvulkan_lvp.so)"
