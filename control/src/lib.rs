//! Fanout's control plane: a gRPC API (tonic) whose state lives in etcd
//! (docs/control-plane.md).
//!
//! * [`domain`]: meetings, participants, roles, the waiting room, breakout rooms, join
//!   tokens and passcodes, as plain Rust with no I/O.
//! * [`store`]: where state lives, behind the [`store::Store`] trait: etcd in production
//!   (leases, transactions, watches), memory as the embedded default for one machine.
//! * [`api`]: the gRPC services (`fanout.control.v1`), health and reflection.
//! * [`service`]: the use cases: domain decisions written to the store with
//!   compare-and-swap; forwarder registry and placement.

pub mod api;
pub mod domain;
pub mod service;
pub mod store;
/// Test support: a throwaway real etcd server ([`testing::EtcdServer`]) for store tests.
pub mod testing;
pub mod webrtc;
