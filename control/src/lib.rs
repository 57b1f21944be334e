//! Fanout's control plane: a gRPC API (tonic) whose state lives in etcd.
//!
//! * [`store`]: where state lives, behind the [`store::Store`] trait: etcd in production
//!   (leases, transactions, watches), memory as the embedded default for one machine.
//! * [`domain`]: meetings, participants, roles, the waiting room, breakout rooms, join
//!   tokens and passcodes, as plain Rust with no I/O.

pub mod domain;
pub mod store;
