#!/bin/sh
# Mesa's software Vulkan driver (lavapipe) from Debian bookworm-backports, for the WebGPU tests:
# Dawn (npm `webgpu`) needs Mesa >= 24; bookworm's own 22.3 gives no adapter
# ("shaderUniform*ArrayDynamicIndexing required"). The backports entry uses the same mirror as
# the machine's existing Debian sources. Root or passwordless sudo, like the chromium stamp.
set -eu
have() { v=$(dpkg-query -W -f '${Version}' mesa-vulkan-drivers 2>/dev/null) && dpkg --compare-versions "$v" ge 24; }
if have && ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
  echo "lavapipe present: mesa-vulkan-drivers $(dpkg-query -W -f '${Version}' mesa-vulkan-drivers)"; exit 0
fi
[ "$(id -u)" = 0 ] && SUDO= || SUDO="sudo -n"
# The mirror the machine already uses for bookworm (deb822 or one-line sources), else deb.debian.org.
mirror=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | grep -i debian | head -n1 || true)
[ -n "$mirror" ] || mirror=$(sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]*\)[[:space:]]\+bookworm[[:space:]].*/\2/p' /etc/apt/sources.list 2>/dev/null | head -n1 || true)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian
printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$mirror" \
  | $SUDO tee /etc/apt/sources.list.d/ailo-bookworm-backports.sources >/dev/null
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -t bookworm-backports mesa-vulkan-drivers libvulkan1
have || { echo "mesa-vulkan-drivers >= 24 did not install" >&2; exit 1; }
