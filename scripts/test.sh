#!/usr/bin/env bash
# The whole test suite: what CI runs (.ci/run calls exactly this script).
# Installs missing system packages first (FFmpeg and GStreamer are real test peers),
# then checks formatting and lints and runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
# The interop tests run the real forwarder binary, which picks io_uring where the kernel
# has it (`--io auto`); run them once more on the portable driver, so both drivers pass
# the suite with real peers.
FANOUT_IO=mio cargo test --locked -p fanout-tests
# The forwarder's interop tests with the forwarder in a network namespace of its own behind
# a veth pair (tests/common/topology.rs), so its packets cross a real interface: on the
# portable driver, and on the AF_XDP driver (behind the XDP port guard), which only sees
# such packets.
interop=(--test interop_ffmpeg --test interop_gstreamer --test interop_simulcast)
FANOUT_TOPOLOGY=veth FANOUT_IO=mio cargo test --locked -p fanout-tests "${interop[@]}"
FANOUT_TOPOLOGY=veth FANOUT_IO=afxdp cargo test --locked -p fanout-tests "${interop[@]}"
# The fuzz targets are their own workspace (libFuzzer needs nightly to run them); make sure
# they still compile against the forwarder's API.
cargo check --locked --manifest-path forwarder/fuzz/Cargo.toml --bins --target-dir target/fuzz-check
cargo check --locked --manifest-path control/fuzz/Cargo.toml --bins --target-dir target/fuzz-check
cargo check --locked --manifest-path recorder/fuzz/Cargo.toml --bins --target-dir target/fuzz-check
