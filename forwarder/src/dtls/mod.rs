//! DTLS-SRTP for one WebRTC leg (RFC 6347, RFC 5764, RFC 8122), sans-IO, in the server
//! role: the browser is the DTLS client (`a=setup:active`), the forwarder answers.
//!
//! # Model
//!
//! A [`DtlsServer`] is one DTLS association. It owns no socket and reads no clock of its own
//! for its decisions: datagrams come in with [`DtlsServer::handle_datagram`], time with
//! [`DtlsServer::handle_timeout`]; datagrams to send come out of
//! [`DtlsServer::poll_transmit`], the outcome out of [`DtlsServer::poll_event`] and the next
//! deadline out of [`DtlsServer::poll_timeout`]. After every input, drain `poll_transmit` and
//! `poll_event` until they return `None`, then wait for the next datagram or the timeout.
//!
//! The handshake itself is OpenSSL's (Debian's OpenSSL 3, DTLS 1.2), driven over an
//! in-memory "socket" (`Shim`): every `write` OpenSSL makes is one datagram, every
//! `read` hands it one received datagram or `WouldBlock`. Why OpenSSL and what is not
//! supported: `docs/dtls.md`.
//!
//! - **Mutual authentication by fingerprint** (RFC 8122, RFC 8827 §6.5): the client must send
//!   a certificate; it may be self-signed, but the digest of the leaf must equal the
//!   `a=fingerprint` of the browser's SDP. A mismatch fails the handshake inside OpenSSL
//!   (bad_certificate alert) and is checked again after it, before any key is exported.
//! - **SRTP keys** (RFC 5764 §4.2): the profile OpenSSL selected from `use_srtp` (ours in
//!   [`SRTP_PROFILES`] order, the server's preference winning) and the exporter's
//!   `client_write_key || server_write_key || client_write_salt || server_write_salt`,
//!   delivered once as [`DtlsEvent::Connected`].
//! - **Bad input is dropped and counted**: each datagram's records are checked by
//!   [`record::check_datagram`] before OpenSSL sees them. Nothing here panics on network
//!   input.
//! - **Time**: the handshake must complete within [`DtlsConfig::handshake_timeout`] of the
//!   first ClientHello, and within [`DtlsConfig::max_handshake_bytes`] received. OpenSSL's
//!   own retransmission timer (1 s, doubling up to 60 s) reads the system clock; this module
//!   mirrors it on the `now` it is given and asks OpenSSL to retransmit when the mirror
//!   fires (a no-op if OpenSSL's clock says it is early; the mirror then re-polls shortly).
//!   On a virtual clock, retransmissions therefore happen no sooner than in real time; the
//!   handshake deadline is purely virtual.
//! - **State is freed** on failure: the OpenSSL session is dropped as soon as the
//!   association fails; only an alert already written may still be polled out.

pub mod record;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::srtp::SrtpProfileId;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslMethod, SslOptions, SslSessionCacheMode,
    SslStream, SslVerifyMode, SslVersion,
};
use openssl::x509::{X509NameBuilder, X509Ref, X509};
use zeroize::Zeroizing;

use crate::srtp::{MasterKey, SrtpProfile};

/// Default: the handshake must complete within 10 s of the first ClientHello.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest datagram we send: 1200 bytes of DTLS (UDP payload), so that a flight with the
/// certificate is fragmented (RFC 6347 §4.1.1.1) and fits any path WebRTC runs on.
pub const DEFAULT_MTU: usize = 1200;
/// Default cap on what a peer may send before the handshake completes. A browser's
/// handshake is 2-4 KB; this leaves room for retransmissions and long chains.
pub const DEFAULT_MAX_HANDSHAKE_BYTES: usize = 64 * 1024;
/// Validity of the generated certificate.
pub const CERTIFICATE_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// RFC 5764 §4.2 exporter label.
pub const SRTP_EXPORTER_LABEL: &str = "EXTRACTOR-dtls_srtp";
/// The SRTP profiles offered in `use_srtp`, most preferred first (RFC 5764 §4.1.2,
/// RFC 7714 §14.2): GCM is ~4x cheaper than CM+HMAC (shared/PLATFORM.md), and every
/// browser still supports CM-80.
pub const SRTP_PROFILES: [SrtpProfile; 3] = [
    SrtpProfile::AeadAes256Gcm,
    SrtpProfile::AeadAes128Gcm,
    SrtpProfile::AesCm128HmacSha1_80,
];
/// OpenSSL's spelling of [`SRTP_PROFILES`].
const SRTP_PROFILE_LIST: &str =
    "SRTP_AEAD_AES_256_GCM:SRTP_AEAD_AES_128_GCM:SRTP_AES128_CM_SHA1_80";
/// ECDHE with ECDSA (our certificate is P-256): AEAD first, CBC last for older clients.
const CIPHER_LIST: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:\
ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA";
const GROUPS: &str = "X25519:P-256:P-384";
/// OpenSSL's DTLS timer (d1_lib.c): 1 s, doubled on each timeout, at most 60 s.
const INITIAL_RTO: Duration = Duration::from_secs(1);
const MAX_RTO: Duration = Duration::from_secs(60);
/// When the mirror of OpenSSL's timer fired but OpenSSL's clock had not: look again soon.
const RTO_RECHECK: Duration = Duration::from_millis(100);
/// A flight is a handful of datagrams; more queued means nobody polls: drop the excess.
const MAX_QUEUED_TRANSMITS: usize = 64;

/// Why an identity or a server could not be built.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum DtlsError {
    /// OpenSSL refused a setting or failed to generate a key (out of memory, broken RNG).
    #[error("openssl: {0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
    /// An `a=fingerprint` value that does not parse.
    #[error("invalid fingerprint: {0}")]
    InvalidFingerprint(&'static str),
}

/// A hash function of RFC 8122 §5 (`a=fingerprint`). MD2 and MD5 are not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashFunction {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl HashFunction {
    /// The SDP name (RFC 8122 §5, from the IANA "Hash Function Textual Names" registry).
    pub fn name(self) -> &'static str {
        match self {
            HashFunction::Sha1 => "sha-1",
            HashFunction::Sha224 => "sha-224",
            HashFunction::Sha256 => "sha-256",
            HashFunction::Sha384 => "sha-384",
            HashFunction::Sha512 => "sha-512",
        }
    }

    /// Case-insensitive (RFC 8122 §5: "hash-func" names are compared case-insensitively).
    pub fn from_name(name: &str) -> Option<Self> {
        [
            HashFunction::Sha1,
            HashFunction::Sha224,
            HashFunction::Sha256,
            HashFunction::Sha384,
            HashFunction::Sha512,
        ]
        .into_iter()
        .find(|h| h.name().eq_ignore_ascii_case(name))
    }

    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            HashFunction::Sha1 => 20,
            HashFunction::Sha224 => 28,
            HashFunction::Sha256 => 32,
            HashFunction::Sha384 => 48,
            HashFunction::Sha512 => 64,
        }
    }

    fn message_digest(self) -> MessageDigest {
        match self {
            HashFunction::Sha1 => MessageDigest::sha1(),
            HashFunction::Sha224 => MessageDigest::sha224(),
            HashFunction::Sha256 => MessageDigest::sha256(),
            HashFunction::Sha384 => MessageDigest::sha384(),
            HashFunction::Sha512 => MessageDigest::sha512(),
        }
    }
}

const MAX_DIGEST_LEN: usize = 64;

/// An RFC 8122 `a=fingerprint` value: a hash function and the digest of a DER certificate.
/// Parses from and displays as `sha-256 AB:CD:...` (uppercase hex, colon separated).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    hash: HashFunction,
    digest: [u8; MAX_DIGEST_LEN],
}

impl Fingerprint {
    /// From a hash function and a digest of its length.
    pub fn new(hash: HashFunction, digest: &[u8]) -> Result<Self, DtlsError> {
        if digest.len() != hash.digest_len() {
            return Err(DtlsError::InvalidFingerprint(
                "digest length does not match the hash function",
            ));
        }
        let mut d = [0u8; MAX_DIGEST_LEN];
        d[..digest.len()].copy_from_slice(digest);
        Ok(Fingerprint { hash, digest: d })
    }

    /// The fingerprint of a DER-encoded certificate.
    pub fn of_der(hash: HashFunction, der: &[u8]) -> Result<Self, DtlsError> {
        let digest = openssl::hash::hash(hash.message_digest(), der)?;
        Fingerprint::new(hash, &digest)
    }

    fn of_certificate(hash: HashFunction, cert: &X509Ref) -> Result<Self, DtlsError> {
        let digest = cert.digest(hash.message_digest())?;
        Fingerprint::new(hash, &digest)
    }

    /// Parses `hash-func SP hex:hex:...` (RFC 8122 §5). The algorithm name is
    /// case-insensitive; hex digits may be either case (RFC 8122 asks for uppercase, some
    /// peers send lowercase); every byte is exactly two digits.
    pub fn parse(s: &str) -> Result<Self, DtlsError> {
        let s = s.trim();
        let (name, hex) = s.split_once(|c: char| c.is_ascii_whitespace()).ok_or(
            DtlsError::InvalidFingerprint("expected \"hash-func digest\""),
        )?;
        let hash = HashFunction::from_name(name)
            .ok_or(DtlsError::InvalidFingerprint("unsupported hash function"))?;
        let hex = hex.trim_start();
        let mut digest = [0u8; MAX_DIGEST_LEN];
        let mut len = 0;
        for pair in hex.split(':') {
            let &[hi, lo] = pair.as_bytes() else {
                return Err(DtlsError::InvalidFingerprint(
                    "each byte must be two hex digits",
                ));
            };
            let (Some(hi), Some(lo)) = (hex_value(hi), hex_value(lo)) else {
                return Err(DtlsError::InvalidFingerprint("not a hex digit"));
            };
            if len == hash.digest_len() {
                return Err(DtlsError::InvalidFingerprint(
                    "digest too long for the hash function",
                ));
            }
            digest[len] = hi << 4 | lo;
            len += 1;
        }
        Fingerprint::new(hash, &digest[..len])
    }

    pub fn hash_function(&self) -> HashFunction {
        self.hash
    }

    pub fn digest(&self) -> &[u8] {
        &self.digest[..self.hash.digest_len()]
    }

    /// Whether `cert` hashes (with this fingerprint's function) to this digest.
    fn matches(&self, cert: &X509Ref) -> bool {
        Fingerprint::of_certificate(self.hash, cert).is_ok_and(|f| f == *self)
    }
}

fn hex_value(c: u8) -> Option<u8> {
    (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hash.name())?;
        for (i, b) in self.digest().iter().enumerate() {
            let sep = if i == 0 { ' ' } else { ':' };
            write!(f, "{sep}{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = DtlsError;

    fn from_str(s: &str) -> Result<Self, DtlsError> {
        Fingerprint::parse(s)
    }
}

/// The forwarder's certificate and key, and the OpenSSL context built on them: generated
/// once per process, shared by every leg and shard (cloning is a reference count).
#[derive(Clone)]
pub struct DtlsIdentity {
    inner: Arc<IdentityInner>,
}

struct IdentityInner {
    context: SslContext,
    certificate: X509,
    fingerprint: Fingerprint,
}

impl fmt::Debug for DtlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DtlsIdentity")
            .field("fingerprint", &self.inner.fingerprint)
            .finish_non_exhaustive()
    }
}

impl DtlsIdentity {
    /// A fresh ECDSA P-256 key and a self-signed certificate (CN fanout, valid from a day
    /// ago, for [`CERTIFICATE_VALIDITY`]), with its SHA-256 fingerprint.
    pub fn generate() -> Result<Self, DtlsError> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
        let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
        let certificate = self_signed(&key)?;
        let fingerprint = Fingerprint::of_certificate(HashFunction::Sha256, &certificate)?;
        let context = server_context(&certificate, &key)?;
        Ok(DtlsIdentity {
            inner: Arc::new(IdentityInner {
                context,
                certificate,
                fingerprint,
            }),
        })
    }

    /// SHA-256 of the DER certificate: the forwarder's `a=fingerprint`.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.inner.fingerprint
    }

    /// The certificate, DER-encoded.
    pub fn certificate_der(&self) -> Result<Vec<u8>, DtlsError> {
        Ok(self.inner.certificate.to_der()?)
    }
}

fn self_signed(key: &PKey<Private>) -> Result<X509, DtlsError> {
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, "fanout")?;
    let name = name.build();
    let mut serial = BigNum::new()?;
    serial.rand(64, MsbOption::MAYBE_ZERO, false)?;
    let mut builder = X509::builder()?;
    builder.set_version(2)?;
    let serial = serial.to_asn1_integer()?;
    builder.set_serial_number(&serial)?;
    builder.set_subject_name(&name)?;
    builder.set_issuer_name(&name)?;
    builder.set_pubkey(key)?;
    // A day of slack for peers whose clock is behind.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let not_before = i64::try_from(now.saturating_sub(86_400)).unwrap_or(0);
    let not_after =
        i64::try_from(now.saturating_add(CERTIFICATE_VALIDITY.as_secs())).unwrap_or(i64::MAX);
    let not_before = Asn1Time::from_unix(not_before)?;
    let not_after = Asn1Time::from_unix(not_after)?;
    builder.set_not_before(&not_before)?;
    builder.set_not_after(&not_after)?;
    builder.sign(key, MessageDigest::sha256())?;
    Ok(builder.build())
}

fn server_context(certificate: &X509, key: &PKey<Private>) -> Result<SslContext, DtlsError> {
    let mut b = SslContextBuilder::new(SslMethod::dtls())?;
    // OpenSSL 3.0 has no DTLS 1.3; 1.0 is obsolete (RFC 8996) and no browser needs it.
    b.set_min_proto_version(Some(SslVersion::DTLS1_2))?;
    b.set_max_proto_version(Some(SslVersion::DTLS1_2))?;
    b.set_certificate(certificate)?;
    b.set_private_key(key)?;
    b.check_private_key()?;
    b.set_cipher_list(CIPHER_LIST)?;
    b.set_groups_list(GROUPS)?;
    b.set_tlsext_use_srtp(SRTP_PROFILE_LIST)?;
    // No resumption (each leg is a fresh handshake), no renegotiation, our MTU not the
    // BIO's, server preference for ciphers (OpenSSL already prefers ours for use_srtp).
    b.set_options(
        SslOptions::NO_TICKET
            | SslOptions::NO_RENEGOTIATION
            | SslOptions::NO_QUERY_MTU
            | SslOptions::CIPHER_SERVER_PREFERENCE,
    );
    b.set_session_cache_mode(SslSessionCacheMode::OFF);
    b.set_session_id_context(b"fanout-dtls")?;
    // Per connection, DtlsServer::new replaces this with the fingerprint check.
    b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    Ok(b.build())
}

/// Settings of one association.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtlsConfig {
    /// From the first ClientHello to the end of the handshake.
    pub handshake_timeout: Duration,
    /// Largest datagram sent (UDP payload).
    pub mtu: usize,
    /// Most bytes accepted from the peer before the handshake completes.
    pub max_handshake_bytes: usize,
}

impl Default for DtlsConfig {
    fn default() -> Self {
        DtlsConfig {
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            mtu: DEFAULT_MTU,
            max_handshake_bytes: DEFAULT_MAX_HANDSHAKE_BYTES,
        }
    }
}

/// What became of the association. `Connected` or `Failed` comes once; `Closed` may
/// follow `Connected`.
#[derive(Debug)]
pub enum DtlsEvent {
    /// The handshake completed and the peer is who its fingerprint says.
    Connected {
        profile: SrtpProfile,
        /// client_write key||salt: what the browser protects its SRTP with; unprotect with
        /// it.
        receive: MasterKey,
        /// server_write key||salt: protect what we send the browser with it.
        send: MasterKey,
    },
    /// The handshake failed; no key was or will be exported.
    Failed(DtlsFailure),
    /// After `Connected`: the peer closed the association (close_notify or a fatal alert).
    /// SRTP may go on with the exported keys; the leg's owner decides.
    Closed,
}

/// Why a handshake failed.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DtlsFailure {
    /// The client's certificate does not hash to the `a=fingerprint` of its SDP.
    #[error("peer certificate does not match its fingerprint")]
    FingerprintMismatch,
    /// The client sent no certificate.
    #[error("peer sent no certificate")]
    NoCertificate,
    /// `use_srtp` missing, or no profile in common.
    #[error("no common SRTP protection profile")]
    NoSrtpProfile,
    /// Not completed within the handshake timeout.
    #[error("handshake timed out")]
    Timeout,
    /// The peer sent more than the handshake budget.
    #[error("too many bytes before the handshake completed")]
    TooManyBytes,
    /// The peer sent a fatal alert (OpenSSL's description).
    #[error("peer alert: {0}")]
    Alert(&'static str),
    /// OpenSSL failed the handshake (its reason).
    #[error("handshake failed: {0}")]
    Handshake(&'static str),
    /// Exporting the keys failed (should not happen after a completed handshake).
    #[error("key export failed")]
    Export,
}

/// Counters, per association.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DtlsStats {
    /// Datagrams given to `handle_datagram`.
    pub datagrams_received: u64,
    pub bytes_received: u64,
    /// Dropped before OpenSSL: a record did not parse (see [`record::RecordError`]).
    pub malformed_dropped: u64,
    /// Dropped because the association had failed or closed.
    pub closed_dropped: u64,
    /// Application data records after the handshake (data channels are not supported).
    pub application_data_dropped: u64,
    pub datagrams_sent: u64,
    /// Flights resent on the retransmission timer.
    pub retransmissions: u64,
    /// Datagrams lost because the transmit queue was full or the buffer too small.
    pub transmit_dropped: u64,
}

/// The in-memory datagram "socket" OpenSSL runs over: one `read` is one received datagram
/// (or `WouldBlock`), one `write` is one datagram to send. OpenSSL's handshake write buffer
/// coalesces the records of a flight up to the MTU before writing, so writes are datagrams.
#[derive(Debug, Default)]
struct Shim {
    incoming: Vec<u8>,
    has_incoming: bool,
    outgoing: VecDeque<Vec<u8>>,
    dropped: u64,
}

impl Read for Shim {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.has_incoming {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.has_incoming = false;
        // OpenSSL reads DTLS with a buffer larger than any record; a datagram that does
        // not fit is truncated like a real datagram socket would.
        let n = self.incoming.len().min(buf.len());
        buf[..n].copy_from_slice(&self.incoming[..n]);
        Ok(n)
    }
}

impl Write for Shim {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.outgoing.len() >= MAX_QUEUED_TRANSMITS {
            self.dropped += 1;
        } else {
            self.outgoing.push_back(buf.to_vec());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum State {
    Handshaking(Box<SslStream<Shim>>),
    Connected(Box<SslStream<Shim>>),
    /// Failed or closed: the OpenSSL session is gone.
    Done,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Handshaking(_) => "handshaking",
            State::Connected(_) => "connected",
            State::Done => "done",
        }
    }
}

/// One DTLS association in the server role. See the module docs for the run loop.
pub struct DtlsServer {
    state: State,
    remote: Fingerprint,
    config: DtlsConfig,
    /// Set by the verify callback when the leaf certificate did not match `remote`.
    mismatch: Arc<AtomicBool>,
    /// The handshake deadline, from the first ClientHello.
    deadline: Option<Instant>,
    /// Mirror of OpenSSL's retransmission timer.
    retransmit_at: Option<Instant>,
    rto: Duration,
    handshake_bytes: usize,
    was_connected: bool,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<DtlsEvent>,
    stats: DtlsStats,
}

impl fmt::Debug for DtlsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DtlsServer")
            .field("state", &self.state.name())
            .field("remote", &self.remote)
            .field("deadline", &self.deadline)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl DtlsServer {
    /// A server for one leg with the default [`DtlsConfig`]. `remote` is the browser's
    /// `a=fingerprint`.
    pub fn new(
        identity: &DtlsIdentity,
        remote: Fingerprint,
        now: Instant,
    ) -> Result<Self, DtlsError> {
        Self::with_config(identity, remote, DtlsConfig::default(), now)
    }

    pub fn with_config(
        identity: &DtlsIdentity,
        remote: Fingerprint,
        config: DtlsConfig,
        _now: Instant,
    ) -> Result<Self, DtlsError> {
        let mut ssl = Ssl::new(&identity.inner.context)?;
        ssl.set_accept_state();
        ssl.set_mtu(u32::try_from(config.mtu).unwrap_or(u32::MAX))?;
        let mismatch = Arc::new(AtomicBool::new(false));
        let expected = remote.clone();
        let flag = Arc::clone(&mismatch);
        // The chain is not verified: WebRTC certificates are self-signed, and RFC 8122
        // pins the leaf instead. Errors above the leaf are ignored; the leaf must match.
        ssl.set_verify_callback(
            SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
            move |_preverified, ctx| {
                if ctx.error_depth() > 0 {
                    return true;
                }
                let ok = ctx.current_cert().is_some_and(|c| expected.matches(c));
                if !ok {
                    flag.store(true, Ordering::Relaxed);
                }
                ok
            },
        );
        let stream = SslStream::new(ssl, Shim::default())?;
        Ok(DtlsServer {
            state: State::Handshaking(Box::new(stream)),
            remote,
            config,
            mismatch,
            deadline: None,
            retransmit_at: None,
            rto: INITIAL_RTO,
            handshake_bytes: 0,
            was_connected: false,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: DtlsStats::default(),
        })
    }

    /// The browser's fingerprint this association checks against.
    pub fn remote_fingerprint(&self) -> &Fingerprint {
        &self.remote
    }

    pub fn stats(&self) -> DtlsStats {
        self.stats
    }

    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Connected(_))
    }

    /// True once the association failed or closed: it will never do anything again.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// One UDP datagram whose first byte is in 20..=63 (RFC 7983): may hold several
    /// records. Malformed datagrams are dropped and counted.
    pub fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) {
        self.stats.datagrams_received += 1;
        self.stats.bytes_received += datagram.len() as u64;
        if matches!(self.state, State::Done) {
            self.stats.closed_dropped += 1;
            return;
        }
        let summary = match record::check_datagram(datagram) {
            Ok(summary) => summary,
            Err(e) => {
                self.stats.malformed_dropped += 1;
                tracing::trace!(error = %e, len = datagram.len(), "dtls: malformed datagram dropped");
                return;
            }
        };
        tracing::trace!(?summary, state = self.state.name(), "dtls: datagram");
        if let State::Handshaking(_) = self.state {
            // A driver may hand us a datagram before the expired timer.
            if self.deadline.is_some_and(|d| now >= d) {
                self.stats.closed_dropped += 1;
                self.fail(DtlsFailure::Timeout);
                return;
            }
            if summary.client_hello && self.deadline.is_none() {
                self.deadline = Some(now + self.config.handshake_timeout);
            }
            self.handshake_bytes = self.handshake_bytes.saturating_add(datagram.len());
            if self.handshake_bytes > self.config.max_handshake_bytes {
                self.fail(DtlsFailure::TooManyBytes);
                return;
            }
        }
        let shim = match &mut self.state {
            State::Handshaking(s) | State::Connected(s) => s.get_mut(),
            State::Done => return,
        };
        shim.incoming.clear();
        shim.incoming.extend_from_slice(datagram);
        shim.has_incoming = true;
        let sent = self.drive();
        if sent > 0 && matches!(self.state, State::Handshaking(_)) {
            // A new flight: OpenSSL restarted its timer at its initial value.
            self.rto = INITIAL_RTO;
            self.retransmit_at = Some(now + self.rto);
        }
    }

    /// The next datagram to send, written into `buf` (give it at least the MTU); its
    /// length. A datagram larger than `buf` is dropped and counted.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<usize> {
        loop {
            let datagram = self.transmits.pop_front()?;
            if datagram.len() > buf.len() {
                self.stats.transmit_dropped += 1;
                continue;
            }
            buf[..datagram.len()].copy_from_slice(&datagram);
            self.stats.datagrams_sent += 1;
            return Some(datagram.len());
        }
    }

    /// The next retransmission or the handshake deadline, whichever is first; `None` once
    /// connected or failed (no timer left).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Handshaking(_) => match (self.deadline, self.retransmit_at) {
                (Some(d), Some(r)) => Some(d.min(r)),
                (d, r) => d.or(r),
            },
            _ => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if !matches!(self.state, State::Handshaking(_)) {
            return;
        }
        if self.deadline.is_some_and(|d| now >= d) {
            self.fail(DtlsFailure::Timeout);
            return;
        }
        if self.retransmit_at.is_some_and(|r| now >= r) {
            // OpenSSL retransmits from within a handshake step when its timer expired.
            let sent = self.drive();
            if sent > 0 {
                self.stats.retransmissions += 1;
                self.rto = (self.rto * 2).min(MAX_RTO);
                self.retransmit_at = Some(now + self.rto);
            } else {
                self.retransmit_at = Some(now + RTO_RECHECK);
            }
        }
    }

    /// `Connected` or `Failed`, once; `Closed` after `Connected` if the peer closes.
    pub fn poll_event(&mut self) -> Option<DtlsEvent> {
        self.events.pop_front()
    }

    /// Runs OpenSSL on what the shim holds; returns how many datagrams it wrote.
    fn drive(&mut self) -> usize {
        let outcome = match &mut self.state {
            State::Handshaking(stream) => match stream.do_handshake() {
                Ok(()) => Step::HandshakeDone,
                Err(e) if e.code() == ErrorCode::WANT_READ => Step::Pending,
                Err(e) => Step::Failed(classify(&self.mismatch, &e)),
            },
            State::Connected(stream) => {
                let mut scratch = [0u8; 2048];
                loop {
                    match stream.ssl_read(&mut scratch) {
                        Ok(_) => self.stats.application_data_dropped += 1,
                        Err(e) if e.code() == ErrorCode::WANT_READ => break Step::Pending,
                        Err(e) => {
                            tracing::debug!(error = %e, "dtls: association closed by the peer");
                            break Step::Closed;
                        }
                    }
                }
            }
            State::Done => return 0,
        };
        let sent = self.collect_transmits();
        match outcome {
            Step::Pending => {}
            Step::HandshakeDone => self.on_handshake_done(),
            Step::Failed(failure) => self.fail(failure),
            Step::Closed => self.close(),
        }
        sent
    }

    fn collect_transmits(&mut self) -> usize {
        let shim = match &mut self.state {
            State::Handshaking(s) | State::Connected(s) => s.get_mut(),
            State::Done => return 0,
        };
        self.stats.transmit_dropped += std::mem::take(&mut shim.dropped);
        let n = shim.outgoing.len();
        for d in shim.outgoing.drain(..) {
            if self.transmits.len() >= MAX_QUEUED_TRANSMITS {
                self.stats.transmit_dropped += 1;
            } else {
                self.transmits.push_back(d);
            }
        }
        n
    }

    fn on_handshake_done(&mut self) {
        let State::Handshaking(stream) = &self.state else {
            return;
        };
        match accept_peer(stream.ssl(), &self.remote) {
            Ok((profile, receive, send)) => {
                if let State::Handshaking(stream) = std::mem::replace(&mut self.state, State::Done)
                {
                    self.state = State::Connected(stream);
                }
                self.deadline = None;
                self.retransmit_at = None;
                self.was_connected = true;
                tracing::debug!(%profile, remote = %self.remote, "dtls: connected");
                self.events.push_back(DtlsEvent::Connected {
                    profile,
                    receive,
                    send,
                });
            }
            Err(failure) => self.fail_after_handshake(failure),
        }
    }

    /// The handshake completed but the association is unacceptable: say close_notify so
    /// the peer does not wait, then fail.
    fn fail_after_handshake(&mut self, failure: DtlsFailure) {
        if let State::Handshaking(stream) = &mut self.state {
            let _ = stream.shutdown();
        }
        self.collect_transmits();
        self.fail(failure);
    }

    fn fail(&mut self, failure: DtlsFailure) {
        self.collect_transmits();
        self.state = State::Done;
        self.deadline = None;
        self.retransmit_at = None;
        if !self.was_connected {
            tracing::debug!(%failure, remote = %self.remote, "dtls: handshake failed");
            self.events.push_back(DtlsEvent::Failed(failure));
        }
    }

    fn close(&mut self) {
        self.collect_transmits();
        self.state = State::Done;
        self.events.push_back(DtlsEvent::Closed);
    }
}

enum Step {
    Pending,
    HandshakeDone,
    Failed(DtlsFailure),
    Closed,
}

fn classify(mismatch: &AtomicBool, e: &openssl::ssl::Error) -> DtlsFailure {
    if mismatch.load(Ordering::Relaxed) {
        return DtlsFailure::FingerprintMismatch;
    }
    let reason = e
        .ssl_error()
        .and_then(|stack| stack.errors().iter().find_map(|err| err.reason()))
        .unwrap_or("unknown");
    if reason.contains("alert") {
        DtlsFailure::Alert(reason)
    } else if reason.contains("peer did not return a certificate") {
        DtlsFailure::NoCertificate
    } else {
        DtlsFailure::Handshake(reason)
    }
}

/// After a completed handshake: checked again after OpenSSL's verify callback, so that no
/// key leaves unless the leaf certificate is the one the signaling channel vouched for.
fn accept_peer(
    ssl: &openssl::ssl::SslRef,
    remote: &Fingerprint,
) -> Result<(SrtpProfile, MasterKey, MasterKey), DtlsFailure> {
    let cert = ssl.peer_certificate().ok_or(DtlsFailure::NoCertificate)?;
    if !remote.matches(&cert) {
        return Err(DtlsFailure::FingerprintMismatch);
    }
    let profile = ssl
        .selected_srtp_profile()
        .and_then(|p| srtp_profile(p.id()))
        .ok_or(DtlsFailure::NoSrtpProfile)?;
    let (receive, send) = export_keys(ssl, profile).ok_or(DtlsFailure::Export)?;
    Ok((profile, receive, send))
}

fn srtp_profile(id: SrtpProfileId) -> Option<SrtpProfile> {
    if id == SrtpProfileId::SRTP_AEAD_AES_256_GCM {
        Some(SrtpProfile::AeadAes256Gcm)
    } else if id == SrtpProfileId::SRTP_AEAD_AES_128_GCM {
        Some(SrtpProfile::AeadAes128Gcm)
    } else if id == SrtpProfileId::SRTP_AES128_CM_SHA1_80 {
        Some(SrtpProfile::AesCm128HmacSha1_80)
    } else {
        None
    }
}

/// RFC 5764 §4.2: the exporter's output is client_write_SRTP_master_key ||
/// server_write_SRTP_master_key || client_write_SRTP_master_salt ||
/// server_write_SRTP_master_salt. Returns (client key||salt, server key||salt).
fn export_keys(ssl: &openssl::ssl::SslRef, profile: SrtpProfile) -> Option<(MasterKey, MasterKey)> {
    let k = profile.master_key_len();
    let s = profile.master_salt_len();
    let mut material = Zeroizing::new([0u8; 2 * 44]);
    let material = &mut material[..2 * (k + s)];
    ssl.export_keying_material(material, SRTP_EXPORTER_LABEL, None)
        .ok()?;
    let mut client = Zeroizing::new([0u8; 44]);
    let mut server = Zeroizing::new([0u8; 44]);
    client[..k].copy_from_slice(&material[..k]);
    server[..k].copy_from_slice(&material[k..2 * k]);
    client[k..k + s].copy_from_slice(&material[2 * k..2 * k + s]);
    server[k..k + s].copy_from_slice(&material[2 * k + s..2 * (k + s)]);
    let receive = MasterKey::new(profile, &client[..k + s]).ok()?;
    let send = MasterKey::new(profile, &server[..k + s]).ok()?;
    Some((receive, send))
}
