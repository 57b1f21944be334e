//! Fanout's forwarder: a Selective Forwarding Unit for video meetings and webinars.
//!
//! Each publisher's SRTP arrives once; the forwarder authenticates and decrypts it once,
//! then sends one copy per subscriber, rewritten (SSRC, sequence number, timestamp) and
//! re-encrypted with that subscriber's keys.
//!
//! # Architecture
//!
//! * The protocol modules parse and protect packets, in place and without allocating:
//!   [`rtp`] (RFC 3550 headers), [`rtcp`] (RFC 3550, 4585, 5104, 5506), [`demux`]
//!   (RFC 7983 first-byte classes), [`srtp`] (RFC 3711, 6188, 7714), [`stun`] (RFC 8489),
//!   [`receive_stats`] (RFC 3550 loss and jitter) and [`codec`] (VP8, VP9 and H.264
//!   payload descriptors: keyframes, layers, picture ids).
//! * [`ice`] is the ICE-lite agent of one leg (RFC 8445, consent per RFC 7675) and
//!   [`dtls`] its DTLS-SRTP server (RFC 6347, 5764), both sans-IO: a browser's WebRTC leg
//!   in the core (`sfu::webrtc`, docs/webrtc.md).
//! * [`policy`] holds the sans-IO state machines of SFU behaviour: retransmission cache,
//!   NACK generation, keyframe request throttling, dominant speaker, layer selection.
//! * [`sfu`] is the **sans-IO core**, [`sfu::Forwarder`]: meetings, participants, legs,
//!   tracks and subscriptions. It owns no socket, thread or clock; time and datagrams are
//!   inputs, transmits, events and the next timeout are outputs. The contract, for every
//!   driver: after each input (`handle_datagram`, `handle_timeout`), drain
//!   `poll_transmit` and `poll_event` until they return `None`, then wait for the next
//!   datagram or `poll_timeout`.
//! * [`driver`] holds the thin I/O drivers that run the core against kernel sockets: the
//!   io_uring driver (multishot receive over provided buffer rings, one submission per
//!   fan-out batch), the portable mio driver (`recvmmsg`/`sendmmsg`), chosen at start
//!   by a kernel probe, and the AF_XDP driver (`--io afxdp`), which builds its own frames.
//! * [`edge`] loads the XDP port guard (ebpf/) with aya and owns its maps. `unsafe` code
//!   lives in the drivers and there.
//! * [`config`] reads the standalone TOML file into a configured core; [`control`] joins a
//!   control plane instead (register, heartbeat, reconcile the desired state into the
//!   cores); [`exporter`] serves Prometheus metrics.
//! * [`recording`] is the wire format of the recording tap: decrypted RTP packets of
//!   recorded meetings, one Unix datagram each, to `fanout-recorder`.
//!
//! See `docs/architecture.md` in the repository for the longer story.

pub mod codec;
pub mod config;
pub mod control;
pub mod demux;
pub mod driver;
pub mod dtls;
pub mod edge;
pub mod exporter;
pub mod ice;
pub mod ids;
pub mod policy;
pub mod receive_stats;
pub mod recording;
pub mod rtcp;
pub mod rtp;
pub mod sfu;
pub mod srtp;
pub mod stun;

/// The counting global allocator of the no-allocation tests (`tests/common/`), for unit
/// tests that need the core's private setup (a WebRTC leg keyed without a handshake). It
/// counts only on a thread inside `allocations_in`, so other tests run as before.
#[cfg(test)]
#[path = "../tests/common/counting_alloc.rs"]
mod counting_alloc;
