#!/usr/bin/env bash
# Fanout's demo: the standalone forwarder with one FFmpeg publisher (VP8 + Opus over SRTP)
# and N FFmpeg receivers, each with its own keys; prints frames decoded vs sent and the
# forwarder's counters, and exits 0 only if every receiver decoded every frame.
#
#   scripts/ffmpeg-demo.sh [--receivers N] [--seconds S] [--profile AES_CM_128_HMAC_SHA1_80]
#
# Installs what is missing first (scripts/install-deps.sh: FFmpeg, GStreamer).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# The demo finds the forwarder binary next to itself: build both with the same profile.
cargo build --quiet -p fanout-forwarder --bin fanout-forwarder
cargo build --quiet -p fanout-tests --bin fanout-demo
exec "${CARGO_TARGET_DIR:-target}/debug/fanout-demo" "$@"
