//! [`SrtpContext`]: one direction of one SRTP session, with its per-SSRC stream state.

use super::cipher::{SessionCipher, RTCP_CLEAR_LEN};
use super::replay::{estimate_roc, packet_index, ReplayWindow};
use super::{MasterKey, SrtpError, SrtpProfile};
use crate::rtp::RtpHeader;
use std::fmt;

/// Tunables of an [`SrtpContext`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextOptions {
    /// Reject replayed and too-old packets on unprotect (RFC 3711 §3.3.2). Default on;
    /// turning it off is only for tests and for receiving a deliberate replay.
    pub replay_protection: bool,
    /// Most SSRCs (streams) tracked per direction and per RTP/RTCP; a packet of one more
    /// SSRC fails with [`SrtpError::TooManySsrcs`]. Bounds the memory a peer can make us use.
    pub max_ssrcs: usize,
}

impl Default for ContextOptions {
    fn default() -> Self {
        ContextOptions {
            replay_protection: true,
            max_ssrcs: 64,
        }
    }
}

/// State of one SRTP stream (one SSRC, one direction).
#[derive(Clone, Copy, Debug)]
struct RtpStream {
    /// Rollover counter of the highest index seen (RFC 3711 §3.3.1).
    roc: u32,
    /// Highest sequence number seen (s_l).
    s_l: u16,
    /// Receive side only.
    window: ReplayWindow,
}

impl RtpStream {
    fn starting_at(seq: u16) -> Self {
        RtpStream {
            roc: 0,
            s_l: seq,
            window: ReplayWindow::starting_at(u64::from(seq)),
        }
    }

    /// Moves s_l/ROC forward if `(roc, seq)` is the new highest index (RFC 3711 §3.3.1).
    fn advance(&mut self, roc: u32, seq: u16) {
        if packet_index(roc, seq) > packet_index(self.roc, self.s_l) {
            self.roc = roc;
            self.s_l = seq;
        }
    }
}

/// A small map SSRC -> state: a Vec sorted by SSRC, searched by bisection. Sized for the
/// handful of SSRCs a leg carries; growing it is the only allocation of the packet path.
#[derive(Debug)]
struct Streams<T> {
    entries: Vec<(u32, T)>,
}

impl<T> Streams<T> {
    fn new() -> Self {
        Streams {
            entries: Vec::new(),
        }
    }

    fn get_mut(&mut self, ssrc: u32) -> Option<&mut T> {
        match self.entries.binary_search_by_key(&ssrc, |e| e.0) {
            Ok(i) => self.entries.get_mut(i).map(|e| &mut e.1),
            Err(_) => None,
        }
    }

    fn has_room(&self, max: usize) -> bool {
        self.entries.len() < max
    }

    /// Inserts a new stream; the caller checked it is absent and that there is room.
    fn insert(&mut self, ssrc: u32, state: T) {
        if let Err(i) = self.entries.binary_search_by_key(&ssrc, |e| e.0) {
            self.entries.insert(i, (ssrc, state));
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// One direction of one SRTP session: every SSRC sent under one master key.
///
/// Use one context per direction: its send and receive stream tables are separate, so
/// using the same context for both only makes sense in tests.
pub struct SrtpContext {
    profile: SrtpProfile,
    options: ContextOptions,
    rtp: SessionCipher,
    rtcp: SessionCipher,
    tx_rtp: Streams<RtpStream>,
    rx_rtp: Streams<RtpStream>,
    /// Next SRTCP index to send, per sender SSRC.
    tx_rtcp: Streams<u32>,
    rx_rtcp: Streams<ReplayWindow>,
}

impl fmt::Debug for SrtpContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrtpContext")
            .field("profile", &self.profile)
            .field("options", &self.options)
            .field("tx_rtp_streams", &self.tx_rtp.len())
            .field("rx_rtp_streams", &self.rx_rtp.len())
            .field("tx_rtcp_streams", &self.tx_rtcp.len())
            .field("rx_rtcp_streams", &self.rx_rtcp.len())
            .finish_non_exhaustive()
    }
}

impl SrtpContext {
    /// A context with the default options (replay protection on, 64 SSRCs).
    pub fn new(key: &MasterKey) -> Self {
        Self::with_options(key, ContextOptions::default())
    }

    /// A context with explicit options.
    pub fn with_options(key: &MasterKey, options: ContextOptions) -> Self {
        // Key derivation only fails if aws-lc rejects a key of the right length for its
        // algorithm, which MasterKey's length check rules out; a failure here is a bug in
        // this module, not a condition callers could handle.
        #[allow(clippy::expect_used)]
        Self::try_with_options(key, options).expect("SRTP key derivation failed")
    }

    /// Like [`SrtpContext::with_options`], returning a crypto library failure instead of
    /// panicking.
    pub fn try_with_options(key: &MasterKey, options: ContextOptions) -> Result<Self, SrtpError> {
        Ok(SrtpContext {
            profile: key.profile(),
            options,
            rtp: SessionCipher::new(key, false)?,
            rtcp: SessionCipher::new(key, true)?,
            tx_rtp: Streams::new(),
            rx_rtp: Streams::new(),
            tx_rtcp: Streams::new(),
            rx_rtcp: Streams::new(),
        })
    }

    /// The profile of the key this context was built from.
    pub fn profile(&self) -> SrtpProfile {
        self.profile
    }

    /// Encrypt+authenticate the RTP packet in buf[..len] in place; buf must have room for the trailer. Returns the SRTP length.
    ///
    /// The rollover counter follows the sequence numbers given (RFC 3711 §3.3.1): a forward
    /// wrap increments it, an older sequence number (a retransmission) gets the index
    /// estimated for it (Appendix A).
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let packet = buf.get(..len).ok_or(SrtpError::BufferTooSmall)?;
        let header = RtpHeader::parse(packet).map_err(|_| SrtpError::Malformed)?;
        if buf.len() < len + self.profile.rtp_trailer_len() {
            return Err(SrtpError::BufferTooSmall);
        }
        let ssrc = header.ssrc.0;
        let seq = header.sequence.0;
        let roc = match self.tx_rtp.get_mut(ssrc) {
            Some(stream) => {
                estimate_roc(stream.roc, stream.s_l, seq).ok_or(SrtpError::IndexExhausted)?
            }
            None => {
                if !self.tx_rtp.has_room(self.options.max_ssrcs) {
                    return Err(SrtpError::TooManySsrcs);
                }
                self.tx_rtp.insert(ssrc, RtpStream::starting_at(seq));
                0
            }
        };
        let out = self
            .rtp
            .protect_rtp(buf, len, header.header_len, ssrc, roc, seq)?;
        if let Some(stream) = self.tx_rtp.get_mut(ssrc) {
            stream.advance(roc, seq);
        }
        Ok(out)
    }

    /// Authenticate, check replay, decrypt in place. Returns the plaintext RTP length (trailer removed).
    ///
    /// On error the packet must be dropped; its bytes may have been changed. The stream's
    /// rollover counter and replay window only move after the packet authenticated.
    pub fn unprotect_rtp(&mut self, packet: &mut [u8]) -> Result<usize, SrtpError> {
        let auth_len = packet
            .len()
            .checked_sub(self.profile.rtp_trailer_len())
            .ok_or(SrtpError::Malformed)?;
        let header = RtpHeader::parse(&packet[..auth_len]).map_err(|_| SrtpError::Malformed)?;
        let ssrc = header.ssrc.0;
        let seq = header.sequence.0;
        let replay_protection = self.options.replay_protection;
        let known = match self.rx_rtp.get_mut(ssrc) {
            Some(stream) => {
                // A packet whose ROC would be -1 predates the stream: too old by definition.
                let roc = estimate_roc(stream.roc, stream.s_l, seq).ok_or(SrtpError::TooOld)?;
                if replay_protection {
                    stream.window.check(packet_index(roc, seq))?;
                }
                Some(roc)
            }
            None => {
                if !self.rx_rtp.has_room(self.options.max_ssrcs) {
                    return Err(SrtpError::TooManySsrcs);
                }
                None
            }
        };
        // RFC 3711 §3.3.1: a new stream starts with ROC 0.
        let roc = known.unwrap_or(0);
        self.rtp
            .unprotect_rtp(packet, auth_len, header.header_len, ssrc, roc, seq)?;
        match self.rx_rtp.get_mut(ssrc) {
            Some(stream) => {
                stream.window.accept(packet_index(roc, seq));
                stream.advance(roc, seq);
            }
            None => self.rx_rtp.insert(ssrc, RtpStream::starting_at(seq)),
        }
        Ok(auth_len)
    }

    /// Encrypt (E=1) and authenticate the RTCP compound packet in buf[..len] in place; buf
    /// must have room for the trailer ([`SrtpProfile::rtcp_trailer_len`]). Returns the
    /// SRTCP length. The SRTCP index counts per sender SSRC (bytes 4..8) from 0.
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let packet = buf.get(..len).ok_or(SrtpError::BufferTooSmall)?;
        let ssrc = rtcp_ssrc(packet)?;
        if buf.len() < len + self.profile.rtcp_trailer_len() {
            return Err(SrtpError::BufferTooSmall);
        }
        let index = match self.tx_rtcp.get_mut(ssrc) {
            Some(next) => *next,
            None => {
                if !self.tx_rtcp.has_room(self.options.max_ssrcs) {
                    return Err(SrtpError::TooManySsrcs);
                }
                self.tx_rtcp.insert(ssrc, 0);
                0
            }
        };
        // RFC 3711 §3.4: the index is 31 bits and must not wrap under one key.
        if index > 0x7fff_ffff {
            return Err(SrtpError::IndexExhausted);
        }
        let out = self.rtcp.protect_rtcp(buf, len, ssrc, index)?;
        if let Some(next) = self.tx_rtcp.get_mut(ssrc) {
            *next = index + 1;
        }
        Ok(out)
    }

    /// Authenticate, check replay and decrypt (if E is set) an SRTCP packet in place.
    /// Returns the RTCP length (trailer removed). Unencrypted SRTCP (E=0) is accepted.
    pub fn unprotect_rtcp(&mut self, packet: &mut [u8]) -> Result<usize, SrtpError> {
        let (encrypted, index) = self.rtcp.rtcp_e_index(packet).ok_or(SrtpError::Malformed)?;
        let ssrc = rtcp_ssrc(packet)?;
        let replay_protection = self.options.replay_protection;
        match self.rx_rtcp.get_mut(ssrc) {
            Some(window) => {
                if replay_protection {
                    window.check(u64::from(index))?;
                }
            }
            None => {
                if !self.rx_rtcp.has_room(self.options.max_ssrcs) {
                    return Err(SrtpError::TooManySsrcs);
                }
            }
        }
        let len = self.rtcp.unprotect_rtcp(packet, ssrc, encrypted, index)?;
        match self.rx_rtcp.get_mut(ssrc) {
            Some(window) => window.accept(u64::from(index)),
            None => self
                .rx_rtcp
                .insert(ssrc, ReplayWindow::starting_at(u64::from(index))),
        }
        Ok(len)
    }

    /// Test hook: replaces the session ciphers (RFC 7714 vectors give session keys).
    #[cfg(test)]
    pub(crate) fn with_session_ciphers(
        profile: SrtpProfile,
        rtp: SessionCipher,
        rtcp: SessionCipher,
    ) -> Self {
        SrtpContext {
            profile,
            options: ContextOptions::default(),
            rtp,
            rtcp,
            tx_rtp: Streams::new(),
            rx_rtp: Streams::new(),
            tx_rtcp: Streams::new(),
            rx_rtcp: Streams::new(),
        }
    }

    /// Test hook: makes the next SRTCP index sent for `ssrc` be `index`.
    #[cfg(test)]
    pub(crate) fn set_tx_rtcp_index(&mut self, ssrc: u32, index: u32) {
        match self.tx_rtcp.get_mut(ssrc) {
            Some(next) => *next = index,
            None => self.tx_rtcp.insert(ssrc, index),
        }
    }

    /// Test hook: the (ROC, s_l) of a received stream.
    #[cfg(test)]
    pub(crate) fn rx_roc(&mut self, ssrc: u32) -> Option<(u32, u16)> {
        self.rx_rtp.get_mut(ssrc).map(|s| (s.roc, s.s_l))
    }
}

/// The sender SSRC of an RTCP compound packet (bytes 4..8), after checking the version of
/// its first header (RFC 3550 §6.4.1: V=2, and the clear 8 octets SRTCP requires).
fn rtcp_ssrc(packet: &[u8]) -> Result<u32, SrtpError> {
    let head: &[u8; RTCP_CLEAR_LEN] = packet
        .get(..RTCP_CLEAR_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(SrtpError::Malformed)?;
    if head[0] >> 6 != 2 {
        return Err(SrtpError::Malformed);
    }
    Ok(u32::from_be_bytes([head[4], head[5], head[6], head[7]]))
}
