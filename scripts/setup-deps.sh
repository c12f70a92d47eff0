#!/usr/bin/env bash
# Installs PAC's build and run dependencies from Debian 12's archive.
# Idempotent: a second run installs nothing and takes a second or two.
set -euo pipefail

pkgs=(
  build-essential cmake ninja-build ccache pkg-config git python3
  libtorch-dev libopenblas0-pthread libgloo-dev   # LibTorch 1.13 CPU; OpenBLAS: fp32 matmul ~30x faster
  libboost-dev                                    # Asio, Graph (header-only parts)
  nlohmann-json3-dev libcli11-dev libspdlog-dev libssl-dev libsentencepiece-dev
  libprotobuf-dev                                 # LibTorch's protobuf (see the SentencePiece shim in CMakeLists.txt)
  libgtest-dev libgmock-dev libbenchmark-dev
  iproute2 iptables                               # emulated edge testbed (netns, veth, tc)
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup-deps: all ${#pkgs[@]} packages present"
  exit 0
fi
echo "setup-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
