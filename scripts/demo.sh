#!/usr/bin/env bash
# Fanout's main job on one machine: the control plane on its in-memory store, three
# forwarder processes, and simulated participants joined through the control plane's gRPC
# API (two meetings and a webinar whose viewers are served through relay forwarders),
# playing real SRTP through user-space loss and delay; ends with the load generator's
# report (latency, loss before and after retransmission, jitter, freezes).
#
#   scripts/demo.sh [SCENARIO] [fanout-loadgen run flags...]
#
# Default scenario: loadgen/scenarios/demo.toml. Installs what is missing first
# (scripts/install-deps.sh). The real-peer demo (FFmpeg through the standalone forwarder)
# is scripts/ffmpeg-demo.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --quiet -p fanout-loadgen -p fanout-control -p fanout-forwarder --bins
scenario=loadgen/scenarios/demo.toml
if [[ $# -gt 0 && $1 != -* ]]; then
    scenario=$1
    shift
fi
exec "${CARGO_TARGET_DIR:-target}/release/fanout-loadgen" run "$scenario" --local "$@"
