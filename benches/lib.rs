//! Fanout's benchmarks. The criterion micro-benchmarks are the `[[bench]]` targets of
//! this crate (`cargo bench -p fanout-benches`); the macro benchmark harness is the binary
//! `fanout-macro-bench` (benches/macro/: the release forwarder under a paced SRTP load
//! over loopback, compared with a raw UDP sender measured in the same run). Results and
//! the commands that reproduce them are recorded in `docs/benchmarks.md`.
