#!/usr/bin/env bash
# Install what Fanout needs on a Debian 12 machine and is missing. Idempotent: it only
# calls apt when a package is absent, so it is cheap to run before every build.
#
#   ffmpeg, gstreamer1.0-*   real SRTP peers for the interop tests and the demo
#                            (FFmpeg: AES_CM_128_HMAC_SHA1_80/32; GStreamer's srtpenc/
#                            srtpdec on libsrtp2: also AEAD_AES_128/256_GCM)
#   etcd-server              the control plane's production store; its tests start one
#   protobuf-compiler,       protoc and the well-known .proto files (google/protobuf/*),
#   libprotobuf-dev          for the gRPC code generation (tonic/prost) and
#                            etcd-client's build script
#   iproute2                 `ip`: network namespaces and veth pairs (benchmarks, tests)
#   openssl                  test certificates for the control plane's TLS
#   clang, libbpf-dev        the forwarder's XDP port guard (ebpf/), compiled for the BPF
#                            target by the forwarder's build script (bpf_helpers.h)
#   chromium                 a real browser for the end-to-end tests (headless, in a
#                            network namespace, driven over the DevTools protocol)
#   libssl-dev, pkg-config   OpenSSL 3 headers and libraries for the forwarder's DTLS-SRTP
#                            (src/dtls/, the `openssl` crate); pkg-config lets openssl-sys
#                            find them
#   nftables                 `nft`: the browser tests lose a share of packets at random
#                            (numgen) to exercise NACK and RTX; this kernel has no netem
#
# The Rust toolchain itself (rustup, cargo) is expected to be present.
set -euo pipefail

packages=(
  ffmpeg
  gstreamer1.0-tools
  gstreamer1.0-plugins-base
  gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad
  etcd-server
  protobuf-compiler
  libprotobuf-dev
  iproute2
  openssl
  clang
  libbpf-dev
  chromium
  libssl-dev
  pkg-config
  nftables
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}" >&2
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "install-deps: all system packages present" >&2
fi

if ! command -v cargo >/dev/null; then
  echo "install-deps: cargo not found: install the Rust toolchain (https://rustup.rs), then rerun" >&2
  exit 1
fi
