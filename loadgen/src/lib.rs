//! Fanout's load generator: thousands of simulated SRTP publishers and subscribers played
//! against a deployment, measuring join time, one-way latency, loss, jitter and freezes.
//!
//! # Architecture
//!
//! * [`scenario`] reads what to play (TOML file or flags) and validates it.
//! * [`media`] is the **sans-IO** participant: [`media::Publisher`] paces synthetic RTP
//!   that looks like a real client's (VP8 simulcast with temporal layers and keyframes,
//!   Opus-sized audio with audio levels, screen-share bursts), each packet stamped with a
//!   [`media::probe`] (send time, sequence); [`media::Receiver`] verifies every packet,
//!   measures latency, loss before and after retransmission, RFC 3550 jitter, runs a
//!   jitter-buffer model that counts freezes, and writes the RTCP a client would (receiver
//!   reports, NACK, PLI, REMB). Time is an input ([`Micros`] since the run's epoch).
//! * [`impair`] emulates a network path in user space: loss, delay, jitter, reordering.
//! * [`engine`] runs participants on real UDP sockets, many per thread.
//! * [`report`] aggregates per-participant results (hdrhistogram), prints the human report,
//!   writes the JSON, and checks `--fail-if` thresholds; [`plan`] turns a calibration into
//!   forwarders and relays for an event.
//! * [`control`] joins through the control plane's gRPC API; [`local`] starts a whole
//!   deployment on this machine (control plane on the memory store, forwarder processes),
//!   with each region in its own network namespace if asked ([`netns`]), and a recorder
//!   beside each forwarder when the scenario records ([`recording`]);
//!   [`forwarder_metrics`] reads what its forwarders and recorders counted.
//! * [`compare`] plays one scenario under two variants on fresh deployments and reports
//!   the candidate's latency and CPU as ratios to the baseline's (`fanout-loadgen
//!   compare`).

pub mod calibrate;
pub mod compare;
pub mod control;
pub mod engine;
pub mod forwarder_metrics;
pub mod impair;
pub mod local;
pub mod media;
pub mod metrics;
pub mod netns;
pub mod plan;
pub mod recording;
pub mod report;
pub mod run;
pub mod scenario;
pub mod selftest;
pub mod stats;

/// Microseconds since the run's epoch: every time input and every probe timestamp.
pub type Micros = u64;
