//! The DTLS record layer (RFC 6347 §4.1) and the handshake message header (§4.2.2), parsed
//! in place without allocating.
//!
//! Used to check a datagram before it reaches OpenSSL (a datagram with one malformed or
//! overrunning record is dropped whole and counted), and to name what arrived in logs and
//! metrics. Nothing here decrypts: records of epoch > 0 are opaque.

use std::fmt;

/// Record header: type (1), version (2), epoch (2), sequence number (6), length (2).
pub const RECORD_HEADER_LEN: usize = 13;
/// Handshake header: msg_type (1), length (3), message_seq (2), fragment_offset (3),
/// fragment_length (3).
pub const HANDSHAKE_HEADER_LEN: usize = 12;
/// Largest record fragment a peer may send (RFC 6347 §4.1 via RFC 5246 §6.2.3:
/// DTLSCiphertext is at most 2^14 + 2048 bytes).
pub const MAX_RECORD_LEN: usize = (1 << 14) + 2048;
/// DTLS versions carry major 254 (the ones' complement of 1): 1.0 is 254.255, 1.2 is
/// 254.253 (RFC 6347 §4.1).
const DTLS_MAJOR: u8 = 254;

/// Record content types (RFC 5246 §6.2.1, RFC 6520, RFC 9146).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentType {
    ChangeCipherSpec,
    Alert,
    Handshake,
    ApplicationData,
    Heartbeat,
    /// RFC 9146 connection ID records (not negotiated by us; OpenSSL drops them).
    Tls12Cid,
}

impl ContentType {
    /// The wire value (20..=25).
    pub fn value(self) -> u8 {
        match self {
            ContentType::ChangeCipherSpec => 20,
            ContentType::Alert => 21,
            ContentType::Handshake => 22,
            ContentType::ApplicationData => 23,
            ContentType::Heartbeat => 24,
            ContentType::Tls12Cid => 25,
        }
    }

    fn from_value(v: u8) -> Option<Self> {
        Some(match v {
            20 => ContentType::ChangeCipherSpec,
            21 => ContentType::Alert,
            22 => ContentType::Handshake,
            23 => ContentType::ApplicationData,
            24 => ContentType::Heartbeat,
            25 => ContentType::Tls12Cid,
            _ => return None,
        })
    }
}

/// Why a datagram's records do not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordError {
    /// Empty datagram.
    Empty,
    /// Fewer than 13 bytes left for a record header.
    TruncatedHeader,
    /// Content type outside 20..=25.
    UnknownContentType(u8),
    /// Version major byte is not 254.
    NotDtls,
    /// The length field runs past the end of the datagram, or past the largest record.
    LengthOverrun,
    /// A plaintext (epoch 0) handshake record whose message fragments do not add up.
    BadHandshake,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Empty => f.write_str("empty datagram"),
            RecordError::TruncatedHeader => f.write_str("truncated record header"),
            RecordError::UnknownContentType(t) => write!(f, "unknown content type {t}"),
            RecordError::NotDtls => f.write_str("not a DTLS version"),
            RecordError::LengthOverrun => f.write_str("record length overruns the datagram"),
            RecordError::BadHandshake => f.write_str("malformed handshake fragment"),
        }
    }
}

impl std::error::Error for RecordError {}

/// One record of a datagram, borrowing its fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub content_type: ContentType,
    /// Wire version, e.g. 0xFEFD for DTLS 1.2, 0xFEFF for DTLS 1.0 (a ClientHello may use
    /// either).
    pub version: u16,
    pub epoch: u16,
    /// 48-bit sequence number.
    pub sequence_number: u64,
    /// The record's payload: `length` bytes after the header.
    pub fragment: &'a [u8],
}

impl<'a> Record<'a> {
    /// Parses the record at the start of `buf`; returns it and the bytes after it.
    pub fn parse(buf: &'a [u8]) -> Result<(Record<'a>, &'a [u8]), RecordError> {
        let Some((header, rest)) = buf.split_first_chunk::<RECORD_HEADER_LEN>() else {
            return Err(RecordError::TruncatedHeader);
        };
        let content_type =
            ContentType::from_value(header[0]).ok_or(RecordError::UnknownContentType(header[0]))?;
        if header[1] != DTLS_MAJOR {
            return Err(RecordError::NotDtls);
        }
        let version = u16::from_be_bytes([header[1], header[2]]);
        let epoch = u16::from_be_bytes([header[3], header[4]]);
        let sequence_number = u64::from_be_bytes([
            0, 0, header[5], header[6], header[7], header[8], header[9], header[10],
        ]);
        let len = usize::from(u16::from_be_bytes([header[11], header[12]]));
        if len > MAX_RECORD_LEN || len > rest.len() {
            return Err(RecordError::LengthOverrun);
        }
        let (fragment, rest) = rest.split_at(len);
        Ok((
            Record {
                content_type,
                version,
                epoch,
                sequence_number,
                fragment,
            },
            rest,
        ))
    }

    /// The handshake fragments of a plaintext handshake record (content type 22, epoch 0);
    /// `None` for any other record, whose payload is encrypted or not handshake.
    pub fn handshake_fragments(&self) -> Option<HandshakeFragments<'a>> {
        (self.content_type == ContentType::Handshake && self.epoch == 0).then_some(
            HandshakeFragments {
                rest: self.fragment,
            },
        )
    }
}

/// The records of one datagram, in order. Yields an error once and stops there.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    rest: &'a [u8],
    failed: bool,
}

/// Iterates the records of `datagram` (RFC 6347 §4.1.1: a datagram may hold several).
pub fn records(datagram: &[u8]) -> Records<'_> {
    Records {
        rest: datagram,
        failed: false,
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        match Record::parse(self.rest) {
            Ok((record, rest)) => {
                self.rest = rest;
                Some(Ok(record))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Handshake message types (RFC 5246 §7.4, RFC 6347 §4.3.2).
pub mod handshake_type {
    pub const HELLO_REQUEST: u8 = 0;
    pub const CLIENT_HELLO: u8 = 1;
    pub const SERVER_HELLO: u8 = 2;
    pub const HELLO_VERIFY_REQUEST: u8 = 3;
    pub const CERTIFICATE: u8 = 11;
    pub const SERVER_KEY_EXCHANGE: u8 = 12;
    pub const CERTIFICATE_REQUEST: u8 = 13;
    pub const SERVER_HELLO_DONE: u8 = 14;
    pub const CERTIFICATE_VERIFY: u8 = 15;
    pub const CLIENT_KEY_EXCHANGE: u8 = 16;
    pub const FINISHED: u8 = 20;
}

/// The header of one handshake message fragment (RFC 6347 §4.2.2), with its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeFragment<'a> {
    pub msg_type: u8,
    /// Length of the whole message (24 bits).
    pub length: u32,
    pub message_seq: u16,
    /// Where this fragment starts in the message (24 bits).
    pub fragment_offset: u32,
    /// Length of this fragment (24 bits); equals `body.len()`.
    pub fragment_length: u32,
    pub body: &'a [u8],
}

impl HandshakeFragment<'_> {
    /// True if this fragment is the whole message.
    pub fn is_complete(&self) -> bool {
        self.fragment_offset == 0 && self.fragment_length == self.length
    }
}

fn u24(b: [u8; 3]) -> u32 {
    u32::from_be_bytes([0, b[0], b[1], b[2]])
}

/// The handshake fragments of one plaintext handshake record, in order.
#[derive(Debug, Clone)]
pub struct HandshakeFragments<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for HandshakeFragments<'a> {
    type Item = Result<HandshakeFragment<'a>, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let parsed = parse_handshake_fragment(self.rest);
        match parsed {
            Ok((fragment, rest)) => {
                self.rest = rest;
                Some(Ok(fragment))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

fn parse_handshake_fragment(buf: &[u8]) -> Result<(HandshakeFragment<'_>, &[u8]), RecordError> {
    let Some((h, rest)) = buf.split_first_chunk::<HANDSHAKE_HEADER_LEN>() else {
        return Err(RecordError::BadHandshake);
    };
    let length = u24([h[1], h[2], h[3]]);
    let message_seq = u16::from_be_bytes([h[4], h[5]]);
    let fragment_offset = u24([h[6], h[7], h[8]]);
    let fragment_length = u24([h[9], h[10], h[11]]);
    // u24 values: the sum cannot overflow u32.
    if fragment_offset + fragment_length > length {
        return Err(RecordError::BadHandshake);
    }
    let body_len = fragment_length as usize;
    if body_len > rest.len() {
        return Err(RecordError::BadHandshake);
    }
    let (body, rest) = rest.split_at(body_len);
    Ok((
        HandshakeFragment {
            msg_type: h[0],
            length,
            message_seq,
            fragment_offset,
            fragment_length,
            body,
        },
        rest,
    ))
}

/// What a well-formed datagram holds: enough for a log line or a metric.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DatagramSummary {
    pub records: usize,
    /// Plaintext handshake fragments (epoch 0).
    pub handshake_fragments: usize,
    /// A plaintext ClientHello fragment is present.
    pub client_hello: bool,
    /// An alert record is present (plaintext or encrypted).
    pub alert: bool,
    /// Records of epoch > 0 (encrypted).
    pub encrypted_records: usize,
}

/// Checks every record of `datagram` (and the handshake fragments of plaintext handshake
/// records). `Err` means: drop the whole datagram.
pub fn check_datagram(datagram: &[u8]) -> Result<DatagramSummary, RecordError> {
    if datagram.is_empty() {
        return Err(RecordError::Empty);
    }
    let mut summary = DatagramSummary::default();
    for record in records(datagram) {
        let record = record?;
        summary.records += 1;
        summary.alert |= record.content_type == ContentType::Alert;
        if record.epoch > 0 {
            summary.encrypted_records += 1;
        }
        if let Some(fragments) = record.handshake_fragments() {
            for fragment in fragments {
                let fragment = fragment?;
                summary.handshake_fragments += 1;
                summary.client_hello |= fragment.msg_type == handshake_type::CLIENT_HELLO;
            }
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A record header and payload as bytes.
    pub(crate) fn record(content_type: u8, epoch: u16, seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![content_type, 0xFE, 0xFD];
        out.extend_from_slice(&epoch.to_be_bytes());
        out.extend_from_slice(&seq.to_be_bytes()[2..]);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn handshake(msg_type: u8, length: u32, seq: u16, offset: u32, body: &[u8]) -> Vec<u8> {
        let mut out = vec![msg_type];
        out.extend_from_slice(&length.to_be_bytes()[1..]);
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&offset.to_be_bytes()[1..]);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn parses_two_records_and_a_fragmented_client_hello() {
        let hs = handshake(1, 300, 0, 100, &[7u8; 50]);
        let mut dgram = record(22, 0, 5, &hs);
        dgram.extend(record(21, 1, 0x0000_1234_5678_9abc, &[1, 2, 3]));
        let mut it = records(&dgram);
        let r = it.next().unwrap().unwrap();
        assert_eq!(r.content_type, ContentType::Handshake);
        assert_eq!((r.version, r.epoch, r.sequence_number), (0xFEFD, 0, 5));
        let f = r.handshake_fragments().unwrap().next().unwrap().unwrap();
        assert_eq!(
            (
                f.msg_type,
                f.length,
                f.message_seq,
                f.fragment_offset,
                f.fragment_length
            ),
            (1, 300, 0, 100, 50)
        );
        assert!(!f.is_complete());
        let r = it.next().unwrap().unwrap();
        assert_eq!(r.content_type, ContentType::Alert);
        assert_eq!(r.sequence_number, 0x1234_5678_9abc);
        assert!(r.handshake_fragments().is_none());
        assert!(it.next().is_none());
        let s = check_datagram(&dgram).unwrap();
        assert_eq!(s.records, 2);
        assert!(s.client_hello && s.alert);
        assert_eq!(s.encrypted_records, 1);
    }

    #[test]
    fn rejects_overruns_and_strangers() {
        let mut r = record(22, 0, 0, &handshake(1, 10, 0, 0, &[0; 10]));
        assert!(check_datagram(&r).is_ok());
        r.pop();
        assert_eq!(check_datagram(&r), Err(RecordError::LengthOverrun));
        assert_eq!(check_datagram(&[]), Err(RecordError::Empty));
        assert_eq!(
            check_datagram(&[22, 0xFE, 0xFD, 0]),
            Err(RecordError::TruncatedHeader)
        );
        assert_eq!(
            check_datagram(&record(30, 0, 0, &[])),
            Err(RecordError::UnknownContentType(30))
        );
        let mut tls = record(23, 1, 0, &[1]);
        tls[1] = 3;
        assert_eq!(check_datagram(&tls), Err(RecordError::NotDtls));
        // fragment_offset + fragment_length > length
        assert_eq!(
            check_datagram(&record(22, 0, 0, &handshake(1, 10, 0, 5, &[0; 6]))),
            Err(RecordError::BadHandshake)
        );
        // fragment_length beyond the record
        let mut hs = handshake(1, 10, 0, 0, &[0; 10]);
        hs.truncate(15);
        assert_eq!(
            check_datagram(&record(22, 0, 0, &hs)),
            Err(RecordError::BadHandshake)
        );
        // An encrypted handshake record (Finished, epoch 1) is opaque.
        assert!(check_datagram(&record(22, 1, 0, &[0xAB; 40])).is_ok());
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = check_datagram(&data);
            for r in records(&data) {
                let Ok(r) = r else { break };
                prop_assert!(r.fragment.len() <= MAX_RECORD_LEN);
                if let Some(fs) = r.handshake_fragments() {
                    for f in fs.flatten() {
                        prop_assert_eq!(f.body.len() as u32, f.fragment_length);
                    }
                }
            }
        }

        #[test]
        fn round_trips(
            recs in proptest::collection::vec(
                (20u8..=25, any::<u16>(), 0u64..(1 << 48), proptest::collection::vec(any::<u8>(), 0..300)),
                1..6,
            )
        ) {
            let mut dgram = Vec::new();
            for (t, e, s, p) in &recs {
                dgram.extend(record(*t, *e, *s, p));
            }
            let parsed: Vec<_> = records(&dgram).collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(parsed.len(), recs.len());
            for (r, (t, e, s, p)) in parsed.iter().zip(&recs) {
                prop_assert_eq!(r.content_type.value(), *t);
                prop_assert_eq!(r.epoch, *e);
                prop_assert_eq!(r.sequence_number, *s);
                prop_assert_eq!(r.fragment, &p[..]);
            }
        }

        #[test]
        fn handshake_fragments_round_trip(
            frags in proptest::collection::vec(
                (any::<u8>(), any::<u16>(), 0u32..1000, proptest::collection::vec(any::<u8>(), 0..200), 0u32..1000),
                1..5,
            )
        ) {
            let mut payload = Vec::new();
            for (t, seq, offset, body, extra) in &frags {
                payload.extend(handshake(*t, offset + body.len() as u32 + extra, *seq, *offset, body));
            }
            let dgram = record(22, 0, 1, &payload);
            let s = check_datagram(&dgram).unwrap();
            prop_assert_eq!(s.handshake_fragments, frags.len());
            let r = records(&dgram).next().unwrap().unwrap();
            for (f, (t, seq, offset, body, extra)) in r.handshake_fragments().unwrap().zip(&frags) {
                let f = f.unwrap();
                prop_assert_eq!(f.msg_type, *t);
                prop_assert_eq!(f.message_seq, *seq);
                prop_assert_eq!(f.fragment_offset, *offset);
                prop_assert_eq!(f.length, offset + body.len() as u32 + extra);
                prop_assert_eq!(f.body, &body[..]);
            }
        }
    }
}
