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
#   python3-venv             a virtualenv for moto, below
#
# Besides apt, one PyPI package, in a virtualenv of its own at /opt/fanout/moto (override
# with FANOUT_MOTO_VENV):
#
#   moto (server, S3)        a real S3-compatible HTTP server for the recorder's store tests
#                            (recorder/tests/: they start `moto_server` on a free port and
#                            talk to it with the recorder's own S3 client). Debian 12 has no
#                            python3-moto; pip installs the pinned versions below in about
#                            30 s, most of it download. Chosen over s3s-fs from crates.io,
#                            whose newest release needs rustc 1.96 and whose build takes
#                            minutes of the 2 cores (docs/recording.md). Only `moto[s3]` and
#                            Flask: the `server` extra would pull every AWS service's
#                            dependencies (300 MB).
#
# `install-deps.sh s3-server` installs only moto (what the recorder's tests call when it is
# missing).
set -euo pipefail

moto_venv="${FANOUT_MOTO_VENV:-/opt/fanout/moto}"
moto_packages=("moto[s3]==5.2.5" "flask==3.1.3" "flask-cors==6.0.2")

as_root() {
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install-deps: need root or sudo for: $*" >&2; exit 1; }
    sudo "$@"
  else
    "$@"
  fi
}

# moto in its own virtualenv, with Debian's python3 (python3-venv gives it ensurepip).
# Idempotent: a marker holding the pinned versions says it is done.
install_moto() {
  local marker="$moto_venv/.fanout-installed"
  if [ -x "$moto_venv/bin/moto_server" ] && [ "$(cat "$marker" 2>/dev/null)" = "${moto_packages[*]}" ]; then
    echo "install-deps: moto present in $moto_venv" >&2
    return 0
  fi
  if ! dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -q "install ok installed"; then
    echo "install-deps: installing python3-venv" >&2
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  fi
  if [ -e "$moto_venv" ] && [ ! -f "$moto_venv/pyvenv.cfg" ]; then
    echo "install-deps: $moto_venv exists and is not a virtualenv; move it or set FANOUT_MOTO_VENV" >&2
    exit 1
  fi
  echo "install-deps: installing ${moto_packages[*]} into $moto_venv" >&2
  as_root /usr/bin/python3 -m venv --clear "$moto_venv"
  as_root "$moto_venv/bin/pip" install --quiet --disable-pip-version-check --no-input \
    "${moto_packages[@]}" </dev/null
  echo "${moto_packages[*]}" | as_root tee "$marker" >/dev/null
}

if [ "${1:-}" = "s3-server" ]; then
  install_moto
  exit 0
fi

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
  python3-venv
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

install_moto

if ! command -v cargo >/dev/null; then
  echo "install-deps: cargo not found: install the Rust toolchain (https://rustup.rs), then rerun" >&2
  exit 1
fi
