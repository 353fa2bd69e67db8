#!/usr/bin/env bash
# perf_analyzer against a running `vae serve`. The perf-analyzer wheels are built for glibc >= 2.38
# (manylinux_2_38) and this Debian has 2.36, so the binary runs in a Debian trixie root file system
# made with mmdebstrap (chroot shares the host's network, so 127.0.0.1 reaches the server).
#
#   scripts/perf_analyzer.sh prepare                 # .perf-analyzer/{root,wheel}: needs root, apt, pip
#   scripts/perf_analyzer.sh run URL MODEL [ARGS...] # e.g. run 127.0.0.1:50051 digits-decoder -b 4
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=.perf-analyzer
ROOTFS=$DIR/root
PA_VERSION=2.60.0

prepare() {
  if ! command -v mmdebstrap >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap
  fi
  mkdir -p "$DIR"
  [ -x "$ROOTFS/bin/sh" ] || mmdebstrap --variant=minbase trixie "$ROOTFS"
  if [ ! -x "$ROOTFS/pa/perf_analyzer/bin/perf_analyzer" ]; then
    rm -rf "$DIR/wheel" && mkdir -p "$DIR/wheel"
    python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_38_x86_64 \
      -d "$DIR/wheel" "perf-analyzer==$PA_VERSION"
    mkdir -p "$ROOTFS/pa"
    python3 -m zipfile -e "$DIR"/wheel/perf_analyzer-*.whl "$ROOTFS/pa"
    chmod +x "$ROOTFS/pa/perf_analyzer/bin/perf_analyzer"
  fi
  chroot "$ROOTFS" /pa/perf_analyzer/bin/perf_analyzer --version
}

case "${1:-}" in
  prepare) prepare ;;
  run)
    shift
    url=$1 model=$2
    shift 2
    # Zero inputs: perf_analyzer's random bytes are no valid pixels (outside [0, 1]) or latents.
    exec chroot "$ROOTFS" /pa/perf_analyzer/bin/perf_analyzer -m "$model" -u "$url" -i grpc \
      --input-data zero "$@" ;;
  *) echo "usage: $0 prepare | run URL MODEL [perf_analyzer args...]" >&2; exit 2 ;;
esac
