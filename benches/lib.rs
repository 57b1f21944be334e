//! Fanout's benchmarks. The criterion micro-benchmarks are the `[[bench]]` targets of
//! this crate (`cargo bench -p fanout-benches`); results and the commands that reproduce
//! them are recorded in `docs/benchmarks.md`. The macro benchmark harness (a forwarder
//! under a paced SRTP load, compared with a raw UDP sender) arrives with the io_uring issue.
