//! Fanout's load generator: thousands of simulated SRTP publishers and subscribers played
//! against a deployment, measuring join time, one-way latency, loss, jitter and freezes.
//!
//! **Stub.** This crate only reserves its place in the workspace; the load-generator issue
//! fills it.
