//! SRTP and SRTCP (RFC 3711), with the AES-GCM AEAD profiles (RFC 7714) and the AES-256
//! key derivation (RFC 6188), on aws-lc-rs.
//!
//! # Model
//!
//! An [`SrtpContext`] is **one direction of one SRTP session**: every RTP and RTCP packet
//! sent (or received) under one [`MasterKey`]. A forwarder leg therefore holds two contexts,
//! one built from the remote peer's key (to unprotect what it sends us) and one from our key
//! (to protect what we send it). Within a context each SSRC is a separate *stream* with its
//! own rollover counter and replay window (RFC 3711 §3.2.3); the session keys are shared.
//!
//! - **Keys are derived once**, when the context is built (RFC 3711 §4.3 with
//!   key_derivation_rate 0, the only rate WebRTC, DTLS-SRTP and SDES in practice use), and
//!   held as ready aws-lc-rs key schedules. Derived key bytes are zeroized as soon as the
//!   schedules exist; master keys are zeroized on drop; no `Debug` impl prints key material.
//! - **The per-packet path works in place and does not allocate.** `protect_*` writes the
//!   trailer (auth tag, SRTCP index) after the packet in the caller's buffer, `unprotect_*`
//!   verifies, decrypts in place and returns the shorter length. The only allocation is the
//!   stream table growing on the first packet of a new SSRC, bounded by
//!   [`ContextOptions::max_ssrcs`]. `forwarder/tests/srtp_no_alloc.rs` checks this with a
//!   counting allocator.
//! - **Receive order**: parse → estimate the packet index (RFC 3711 §3.3.1, Appendix A) →
//!   reject replays cheaply → authenticate (constant time) → decrypt → only then update the
//!   rollover counter and the replay window, so a forged or damaged packet changes nothing.
//!   A new SSRC is only admitted to the stream table after its first packet authenticated,
//!   so a flood of forged SSRCs cannot fill the table.
//! - **Errors are for counting, not propagating**: every [`SrtpError`] on unprotect means
//!   "drop this packet". Nothing here panics on network input.
//!
//! # Sending and retransmissions
//!
//! `protect_rtp` tracks the rollover counter of each SSRC from the sequence numbers it is
//! given, exactly like a receiver does: a forward wrap increments it, and an older sequence
//! number (a retransmission) is protected with the index estimated for it. Protecting two
//! *different* packets with the same SSRC, sequence number and rollover counter reuses a
//! keystream (and, for GCM, a nonce): the caller must rewrite sequence numbers so that only
//! genuine retransmissions of the same bytes repeat them.
//!
//! # SRTCP
//!
//! SRTCP always encrypts when sending (E=1) and accepts both E=1 and E=0 (authenticated
//! only, RFC 3711 §3.4, RFC 7714 §17) when receiving. The SRTCP index is per sender SSRC
//! (bytes 4..8 of the compound packet) and starts at 0.
//!
//! Not supported: MKI (rejected when parsing key parameters), key derivation rates other
//! than 0, the NULL cipher, AES-256-CM profiles, and re-keying (a context refuses to protect
//! past the end of the index space with [`SrtpError::IndexExhausted`]).

mod cipher;
mod context;
mod kdf;
mod key;
mod profile;
mod replay;

pub use context::{ContextOptions, SrtpContext};
pub use key::MasterKey;
pub use profile::SrtpProfile;

/// Why a packet could not be protected or unprotected, or a key not built.
///
/// On the receive path every variant means "drop the packet and count it".
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    /// Not an RTP/RTCP packet, or too short to hold the SRTP trailer.
    #[error("malformed packet")]
    Malformed,
    /// The authentication tag does not match (tampered, wrong key, or wrong ROC guess).
    #[error("authentication failed")]
    AuthenticationFailed,
    /// The packet index was already received (within the replay window).
    #[error("replayed packet")]
    Replayed,
    /// The packet index is left of (older than) the replay window.
    #[error("packet too old for the replay window")]
    TooOld,
    /// The buffer has no room for the SRTP trailer, or `len` exceeds the buffer.
    #[error("buffer too small for the SRTP trailer")]
    BufferTooSmall,
    /// The context already tracks `max_ssrcs` streams.
    #[error("too many SSRCs in one SRTP context")]
    TooManySsrcs,
    /// The master key||salt has the wrong length for the profile.
    #[error("invalid key length: expected {expected} bytes, got {actual}")]
    InvalidKeyLength {
        /// key + salt length of the profile
        expected: usize,
        /// length supplied
        actual: usize,
    },
    /// The key parameters are not valid base64 / RFC 4568 key-params.
    #[error("invalid key encoding")]
    InvalidKeyEncoding,
    /// The key parameters carry an MKI (RFC 4568 §6.1), which is not supported.
    #[error("MKI is not supported")]
    MkiUnsupported,
    /// Unknown crypto-suite name.
    #[error("unknown SRTP profile")]
    UnknownProfile,
    /// The SRTP (2^48) or SRTCP (2^31) index space of a stream is used up: re-key.
    #[error("SRTP index space exhausted, re-key required")]
    IndexExhausted,
    /// The crypto library refused an operation (does not happen with valid keys).
    #[error("crypto library error")]
    Crypto,
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod oracle_tests;
