//! STUN messages (RFC 8489) as an ICE-lite agent needs them (RFC 8445 §2.5 and §7.3):
//! parse a Binding request, check its MESSAGE-INTEGRITY (short-term credentials) and
//! FINGERPRINT, and write the Binding success response with XOR-MAPPED-ADDRESS,
//! MESSAGE-INTEGRITY and FINGERPRINT, or an error response.
//!
//! In place and without allocation: parsing borrows the datagram and keeps offsets, and the
//! integrity key is prepared once per set of credentials ([`IntegrityKey`]), so a flood of
//! requests with a bad MESSAGE-INTEGRITY costs one HMAC each and nothing else.
//!
//! Attributes this module does not know are skipped. Unknown comprehension-required ones
//! (type below 0x8000) are reported in [`Message::unknown_required`], so the agent can
//! answer 420 (Unknown Attribute) as RFC 8489 §6.3.1 asks. Comprehension-optional ones
//! (such as Chrome's GOOG-NETWORK-INFO) are ignored.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use aws_lc_rs::{constant_time, hmac};

/// The fixed value of the header's second word (RFC 8489 §5).
pub const MAGIC_COOKIE: u32 = 0x2112_a442;
pub const HEADER_LEN: usize = 20;
/// The Binding method, the only one ICE uses.
pub const METHOD_BINDING: u16 = 0x0001;
/// XORed into the CRC-32 of FINGERPRINT (RFC 8489 §14.7): "STUN".
const FINGERPRINT_XOR: u32 = 0x5354_554e;
const INTEGRITY_LEN: usize = 20;

/// Attribute types (RFC 8489 §18.3, RFC 8445 §16.1).
pub mod attribute {
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000a;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001c;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const PRIORITY: u16 = 0x0024;
    pub const USE_CANDIDATE: u16 = 0x0025;
    pub const SOFTWARE: u16 = 0x8022;
    pub const FINGERPRINT: u16 = 0x8028;
    pub const ICE_CONTROLLED: u16 = 0x8029;
    pub const ICE_CONTROLLING: u16 = 0x802a;
}

/// The class of a message (RFC 8489 §5: two bits spread over the type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    SuccessResponse,
    ErrorResponse,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0x0000,
            Class::Indication => 0x0010,
            Class::SuccessResponse => 0x0100,
            Class::ErrorResponse => 0x0110,
        }
    }

    fn from_type(message_type: u16) -> Class {
        match message_type & 0x0110 {
            0x0000 => Class::Request,
            0x0010 => Class::Indication,
            0x0100 => Class::SuccessResponse,
            _ => Class::ErrorResponse,
        }
    }
}

fn message_type(class: Class, method: u16) -> u16 {
    // The method's 12 bits around the class bits: M0-M3, C0, M4-M6, C1, M7-M11.
    (method & 0x000f) | ((method & 0x0070) << 1) | ((method & 0x0f80) << 2) | class.bits()
}

fn method_of(message_type: u16) -> u16 {
    (message_type & 0x000f) | ((message_type >> 1) & 0x0070) | ((message_type >> 2) & 0x0f80)
}

/// Why a datagram is not a STUN message this module accepts. Each is counted by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("shorter than a STUN header")]
    TooShort,
    #[error("the first two bits are not zero")]
    NotStun,
    #[error("no magic cookie (an RFC 3489 message)")]
    NoMagicCookie,
    #[error("the length field disagrees with the datagram or is not a multiple of 4")]
    BadLength,
    #[error("an attribute runs past the message")]
    TruncatedAttribute,
    #[error("a known attribute has the wrong length or value")]
    BadAttribute,
    #[error("an attribute other than FINGERPRINT follows FINGERPRINT")]
    AfterFingerprint,
}

/// A parsed message, borrowing the datagram.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    bytes: &'a [u8],
    pub class: Class,
    pub method: u16,
    pub transaction_id: [u8; 12],
    pub username: Option<&'a [u8]>,
    pub priority: Option<u32>,
    pub use_candidate: bool,
    pub ice_controlling: Option<u64>,
    pub ice_controlled: Option<u64>,
    pub xor_mapped_address: Option<SocketAddr>,
    /// The first comprehension-required attribute this module does not know.
    pub unknown_required: Option<u16>,
    /// Where the MESSAGE-INTEGRITY attribute starts.
    integrity_at: Option<usize>,
    /// Where the FINGERPRINT attribute starts.
    fingerprint_at: Option<usize>,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

/// Parse `bytes` (one whole datagram) as a STUN message.
pub fn parse(bytes: &[u8]) -> Result<Message<'_>, ParseError> {
    if bytes.len() < HEADER_LEN {
        return Err(ParseError::TooShort);
    }
    let kind = be16(bytes, 0);
    if kind & 0xc000 != 0 {
        return Err(ParseError::NotStun);
    }
    if be32(bytes, 4) != MAGIC_COOKIE {
        return Err(ParseError::NoMagicCookie);
    }
    let length = usize::from(be16(bytes, 2));
    if length % 4 != 0 || HEADER_LEN + length != bytes.len() {
        return Err(ParseError::BadLength);
    }
    let mut transaction_id = [0u8; 12];
    transaction_id.copy_from_slice(&bytes[8..20]);
    let mut message = Message {
        bytes,
        class: Class::from_type(kind),
        method: method_of(kind),
        transaction_id,
        username: None,
        priority: None,
        use_candidate: false,
        ice_controlling: None,
        ice_controlled: None,
        xor_mapped_address: None,
        unknown_required: None,
        integrity_at: None,
        fingerprint_at: None,
    };
    let mut at = HEADER_LEN;
    while at < bytes.len() {
        if at + 4 > bytes.len() {
            return Err(ParseError::TruncatedAttribute);
        }
        let (kind, len) = (be16(bytes, at), usize::from(be16(bytes, at + 2)));
        let value_at = at + 4;
        let padded = len.div_ceil(4) * 4;
        if value_at + padded > bytes.len() {
            return Err(ParseError::TruncatedAttribute);
        }
        let value = &bytes[value_at..value_at + len];
        if message.fingerprint_at.is_some() {
            return Err(ParseError::AfterFingerprint);
        }
        // After MESSAGE-INTEGRITY only FINGERPRINT counts (RFC 8489 §14.5); the rest is
        // skipped, not trusted.
        let counted = message.integrity_at.is_none() || kind == attribute::FINGERPRINT;
        if counted {
            message.read_attribute(kind, value, at)?;
        }
        at = value_at + padded;
    }
    Ok(message)
}

impl<'a> Message<'a> {
    fn read_attribute(&mut self, kind: u16, value: &'a [u8], at: usize) -> Result<(), ParseError> {
        let exactly = |n: usize| {
            if value.len() == n {
                Ok(())
            } else {
                Err(ParseError::BadAttribute)
            }
        };
        match kind {
            attribute::USERNAME => {
                if value.len() > 512 {
                    return Err(ParseError::BadAttribute);
                }
                self.username = Some(value);
            }
            attribute::MESSAGE_INTEGRITY => {
                exactly(INTEGRITY_LEN)?;
                self.integrity_at = Some(at);
            }
            attribute::FINGERPRINT => {
                exactly(4)?;
                self.fingerprint_at = Some(at);
            }
            attribute::PRIORITY => {
                exactly(4)?;
                self.priority = Some(be32(value, 0));
            }
            attribute::USE_CANDIDATE => {
                exactly(0)?;
                self.use_candidate = true;
            }
            attribute::ICE_CONTROLLING => {
                exactly(8)?;
                self.ice_controlling = Some(be64(value, 0));
            }
            attribute::ICE_CONTROLLED => {
                exactly(8)?;
                self.ice_controlled = Some(be64(value, 0));
            }
            attribute::XOR_MAPPED_ADDRESS => {
                self.xor_mapped_address = Some(
                    read_xor_address(value, &self.transaction_id)
                        .ok_or(ParseError::BadAttribute)?,
                );
            }
            attribute::SOFTWARE | attribute::ERROR_CODE | attribute::UNKNOWN_ATTRIBUTES => {}
            // Understood, not used: an ICE-lite agent with short-term credentials checks
            // MESSAGE-INTEGRITY; browsers send it.
            attribute::MESSAGE_INTEGRITY_SHA256 => {}
            unknown if unknown < 0x8000 => {
                self.unknown_required.get_or_insert(unknown);
            }
            _ => {}
        }
        Ok(())
    }

    /// The whole message.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn has_integrity(&self) -> bool {
        self.integrity_at.is_some()
    }

    pub fn has_fingerprint(&self) -> bool {
        self.fingerprint_at.is_some()
    }

    /// Whether MESSAGE-INTEGRITY is present and right for `key` (RFC 8489 §14.5): an
    /// HMAC-SHA1 of the message up to the attribute, with the header's length as if the
    /// message ended with it. Compared in constant time.
    pub fn check_integrity(&self, key: &IntegrityKey) -> bool {
        let Some(at) = self.integrity_at else {
            return false;
        };
        let mut context = hmac::Context::with_key(&key.0);
        context.update(&header_with_length(self.bytes, at + 4 + INTEGRITY_LEN));
        context.update(&self.bytes[HEADER_LEN..at]);
        let tag = context.sign();
        let sent = &self.bytes[at + 4..at + 4 + INTEGRITY_LEN];
        constant_time::verify_slices_are_equal(tag.as_ref(), sent).is_ok()
    }

    /// Whether FINGERPRINT is present and right (RFC 8489 §14.7).
    pub fn check_fingerprint(&self) -> bool {
        let Some(at) = self.fingerprint_at else {
            return false;
        };
        fingerprint(self.bytes, at) == be32(self.bytes, at + 4)
    }
}

/// The header of `bytes` with its length field set for a message ending at `end`.
fn header_with_length(bytes: &[u8], end: usize) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(&bytes[..HEADER_LEN]);
    let length = u16::try_from(end - HEADER_LEN).unwrap_or(u16::MAX);
    header[2..4].copy_from_slice(&length.to_be_bytes());
    header
}

/// FINGERPRINT's value for a FINGERPRINT attribute at `at`: CRC-32 of what precedes it,
/// the length field counting the attribute, XOR "STUN".
fn fingerprint(bytes: &[u8], at: usize) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header_with_length(bytes, at + 8));
    crc.update(&bytes[HEADER_LEN..at]);
    crc.finalize() ^ FINGERPRINT_XOR
}

fn read_xor_address(value: &[u8], transaction_id: &[u8; 12]) -> Option<SocketAddr> {
    if value.len() < 4 {
        return None;
    }
    let port = be16(value, 2) ^ (MAGIC_COOKIE >> 16) as u16;
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    mask[4..].copy_from_slice(transaction_id);
    let ip = match (value[1], value.len()) {
        (0x01, 8) => {
            let mut octets = [0u8; 4];
            for (i, o) in octets.iter_mut().enumerate() {
                *o = value[4 + i] ^ mask[i];
            }
            IpAddr::V4(Ipv4Addr::from(octets))
        }
        (0x02, 20) => {
            let mut octets = [0u8; 16];
            for (i, o) in octets.iter_mut().enumerate() {
                *o = value[4 + i] ^ mask[i];
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The HMAC key of short-term credentials (RFC 8489 §9.1.1: the password), prepared once
/// per credentials so that checking a request allocates nothing.
pub struct IntegrityKey(hmac::Key);

impl IntegrityKey {
    /// `password` as the ICE agent was given it (SDP `a=ice-pwd`).
    pub fn new(password: &[u8]) -> IntegrityKey {
        IntegrityKey(hmac::Key::new(
            hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            password,
        ))
    }
}

impl std::fmt::Debug for IntegrityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IntegrityKey(..)")
    }
}

/// Why a message could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("the buffer is too small for the message")]
    BufferTooSmall,
}

/// Writes a message attribute by attribute into a caller's buffer.
struct Writer<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl<'b> Writer<'b> {
    fn new(
        buf: &'b mut [u8],
        class: Class,
        method: u16,
        transaction_id: &[u8; 12],
    ) -> Result<Self, WriteError> {
        if buf.len() < HEADER_LEN {
            return Err(WriteError::BufferTooSmall);
        }
        buf[0..2].copy_from_slice(&message_type(class, method).to_be_bytes());
        buf[2..4].fill(0);
        buf[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf[8..20].copy_from_slice(transaction_id);
        Ok(Writer {
            buf,
            len: HEADER_LEN,
        })
    }

    /// Append an attribute header and room for `len` value bytes (zero padding included);
    /// returns where the value starts. Updates the header's length field.
    fn attribute(&mut self, kind: u16, len: usize) -> Result<usize, WriteError> {
        let padded = len.div_ceil(4) * 4;
        let end = self.len + 4 + padded;
        if end > self.buf.len() || end - HEADER_LEN > usize::from(u16::MAX) {
            return Err(WriteError::BufferTooSmall);
        }
        let at = self.len;
        self.buf[at..at + 2].copy_from_slice(&kind.to_be_bytes());
        self.buf[at + 2..at + 4].copy_from_slice(&(len as u16).to_be_bytes());
        self.buf[at + 4..end].fill(0);
        self.len = end;
        let length = (end - HEADER_LEN) as u16;
        self.buf[2..4].copy_from_slice(&length.to_be_bytes());
        Ok(at + 4)
    }

    fn xor_address(&mut self, address: SocketAddr) -> Result<(), WriteError> {
        let mut mask = [0u8; 16];
        mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        mask[4..].copy_from_slice(&self.buf[8..20]);
        let mut octets = [0u8; 16];
        // A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d: answer in IPv4.
        let (family, n) = match address.ip().to_canonical() {
            IpAddr::V4(v4) => {
                octets[..4].copy_from_slice(&v4.octets());
                (0x01, 4)
            }
            IpAddr::V6(v6) => {
                octets.copy_from_slice(&v6.octets());
                (0x02, 16)
            }
        };
        let value = self.attribute(attribute::XOR_MAPPED_ADDRESS, 4 + n)?;
        self.buf[value + 1] = family;
        let port = address.port() ^ (MAGIC_COOKIE >> 16) as u16;
        self.buf[value + 2..value + 4].copy_from_slice(&port.to_be_bytes());
        for i in 0..n {
            self.buf[value + 4 + i] = octets[i] ^ mask[i];
        }
        Ok(())
    }

    fn integrity(&mut self, key: &IntegrityKey) -> Result<(), WriteError> {
        let value = self.attribute(attribute::MESSAGE_INTEGRITY, INTEGRITY_LEN)?;
        let mut context = hmac::Context::with_key(&key.0);
        context.update(&self.buf[..value - 4]);
        let tag = context.sign();
        self.buf[value..value + INTEGRITY_LEN].copy_from_slice(tag.as_ref());
        Ok(())
    }

    fn fingerprint(mut self) -> Result<usize, WriteError> {
        let value = self.attribute(attribute::FINGERPRINT, 4)?;
        let crc = fingerprint(self.buf, value - 4);
        self.buf[value..value + 4].copy_from_slice(&crc.to_be_bytes());
        Ok(self.len)
    }
}

/// The Binding success response to `request` (RFC 8445 §7.3.1.1, RFC 8489 §6.3.1):
/// XOR-MAPPED-ADDRESS of `source` (where the request came from), MESSAGE-INTEGRITY with
/// the same credentials, FINGERPRINT. Returns its length in `buf`.
pub fn write_binding_success(
    buf: &mut [u8],
    request: &Message<'_>,
    source: SocketAddr,
    key: &IntegrityKey,
) -> Result<usize, WriteError> {
    let mut w = Writer::new(
        buf,
        Class::SuccessResponse,
        request.method,
        &request.transaction_id,
    )?;
    w.xor_address(source)?;
    w.integrity(key)?;
    w.fingerprint()
}

/// What a controlling ICE agent puts in a connectivity check.
#[derive(Debug, Clone, Copy)]
pub struct BindingRequest<'a> {
    pub transaction_id: [u8; 12],
    /// `remote_ufrag:local_ufrag` (RFC 8445 §7.2.2: the receiver's first).
    pub username: &'a str,
    pub priority: u32,
    /// ICE-CONTROLLING's tie-breaker.
    pub tie_breaker: u64,
    pub use_candidate: bool,
}

/// A Binding request as a controlling agent (a browser, the load generator) sends it:
/// USERNAME, PRIORITY, ICE-CONTROLLING, USE-CANDIDATE if nominating, MESSAGE-INTEGRITY
/// with the receiver's password, FINGERPRINT. Returns its length in `buf`.
pub fn write_binding_request(
    buf: &mut [u8],
    request: &BindingRequest<'_>,
    key: &IntegrityKey,
) -> Result<usize, WriteError> {
    let mut w = Writer::new(buf, Class::Request, METHOD_BINDING, &request.transaction_id)?;
    let username = request.username.as_bytes();
    let value = w.attribute(attribute::USERNAME, username.len())?;
    w.buf[value..value + username.len()].copy_from_slice(username);
    let value = w.attribute(attribute::PRIORITY, 4)?;
    w.buf[value..value + 4].copy_from_slice(&request.priority.to_be_bytes());
    let value = w.attribute(attribute::ICE_CONTROLLING, 8)?;
    w.buf[value..value + 8].copy_from_slice(&request.tie_breaker.to_be_bytes());
    if request.use_candidate {
        w.attribute(attribute::USE_CANDIDATE, 0)?;
    }
    w.integrity(key)?;
    w.fingerprint()
}

/// An error response to `request` with ERROR-CODE `code` and `reason` (RFC 8489 §14.8),
/// UNKNOWN-ATTRIBUTES when `unknown` is not empty (420), MESSAGE-INTEGRITY when `key` is
/// given (not for 400 and 401, RFC 8489 §6.3.4), and FINGERPRINT.
pub fn write_error(
    buf: &mut [u8],
    request: &Message<'_>,
    code: u16,
    reason: &str,
    unknown: &[u16],
    key: Option<&IntegrityKey>,
) -> Result<usize, WriteError> {
    let mut w = Writer::new(
        buf,
        Class::ErrorResponse,
        request.method,
        &request.transaction_id,
    )?;
    // The reason phrase is at most 127 characters (RFC 8489 §14.8); cut at a char boundary.
    let mut end = reason.len().min(127);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let value = w.attribute(attribute::ERROR_CODE, 4 + reason.len())?;
    w.buf[value + 2] = (code / 100 % 8) as u8;
    w.buf[value + 3] = (code % 100) as u8;
    w.buf[value + 4..value + 4 + reason.len()].copy_from_slice(reason);
    if !unknown.is_empty() {
        let value = w.attribute(attribute::UNKNOWN_ATTRIBUTES, 2 * unknown.len())?;
        for (i, kind) in unknown.iter().enumerate() {
            w.buf[value + 2 * i..value + 2 * i + 2].copy_from_slice(&kind.to_be_bytes());
        }
    }
    if let Some(key) = key {
        w.integrity(key)?;
    }
    w.fingerprint()
}

#[cfg(test)]
mod tests;
