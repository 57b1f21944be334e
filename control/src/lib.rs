//! Fanout's control plane: a gRPC API (tonic) whose state lives in etcd.
//!
//! **Stub.** This crate only reserves its place in the workspace. The control-plane issue
//! fills it: meetings, participants, placement of meetings on forwarders, relay trees for
//! webinars, forwarder liveness by etcd leases and failover. Until then the forwarder runs
//! standalone from a TOML file (`fanout-forwarder --config FILE`).
