//! Join tokens: what a participant presents on every call after joining.
//!
//! A token binds a meeting, a participant, the role at issue time and an expiry, and is
//! authenticated with HMAC-SHA256 under a [`TokenKey`] only the control plane holds.
//!
//! # Wire form
//!
//! `base64url(payload) "." base64url(tag)`, unpadded, at most [`MAX_TOKEN_LEN`] characters
//! (about 230 with 64-character ids), sent as `authorization: Bearer <token>`.
//!
//! The payload is a small binary record, big-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | format version, `1` |
//! | 8 | `expires_at`, unix milliseconds |
//! | 1 | role: 1 host, 2 panelist, 3 attendee |
//! | 1 + n | meeting id: length, then its bytes |
//! | 1 + n | participant id: length, then its bytes |
//!
//! The tag is HMAC-SHA256 over a fixed context string followed by the payload; the
//! context keeps a tag from ever verifying as some other HMAC the same key might make.
//! Verification checks the tag first (with aws-lc-rs's constant-time `hmac::verify`) and
//! only then parses, so nothing an attacker wrote is interpreted before it is authenticated.
//!
//! # The role in the token
//!
//! The role is the one held when the token was issued. The meeting's stored role is the
//! authority for every permission check ([`super::meeting::Meeting::authenticate`] returns
//! the stored participant); the claim is there for parties that do not read the meeting
//! (a forwarder admitting a leg) and is refreshed by issuing a new token on a role change.

use std::time::Duration;

use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use zeroize::Zeroizing;

use super::error::DomainError;
use super::ids::{MeetingId, ParticipantId};
use super::meeting::Role;
use super::time::UnixMillis;

/// How long a token is valid when the caller has no better idea: long enough for a
/// full-day event, short enough that a leaked token dies by tomorrow.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest token string accepted; longer input is refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 256;

/// Key length generated, and the minimum accepted (the HMAC-SHA256 output size, RFC 2104's
/// recommended minimum for the key).
pub const TOKEN_KEY_LEN: usize = 32;
/// Maximum key length accepted: one SHA-256 block; longer keys are hashed down by HMAC and
/// add nothing.
pub const MAX_TOKEN_KEY_LEN: usize = 64;

const FORMAT_V1: u8 = 1;
const MAC_CONTEXT: &[u8] = b"fanout.control.v1 join token\0";
const TAG_LEN: usize = 32;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinClaims {
    /// The meeting joined.
    pub meeting: MeetingId,
    /// The participant this token speaks for.
    pub participant: ParticipantId,
    /// The role when issued (see the module docs for why it is not authoritative).
    pub role: Role,
    /// The first instant at which the token is no longer accepted.
    pub expires_at: UnixMillis,
}

impl JoinClaims {
    /// Claims valid from `now` for `ttl`.
    pub fn new(
        meeting: MeetingId,
        participant: ParticipantId,
        role: Role,
        now: UnixMillis,
        ttl: Duration,
    ) -> Self {
        JoinClaims {
            meeting,
            participant,
            role,
            expires_at: now.saturating_add(ttl),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let m = self.meeting.as_str().as_bytes();
        let p = self.participant.as_str().as_bytes();
        let mut out = Vec::with_capacity(1 + 8 + 1 + 1 + m.len() + 1 + p.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&self.expires_at.0.to_be_bytes());
        out.push(role_byte(self.role));
        // Ids are at most 64 bytes (validated on construction), so the length fits a u8.
        out.push(m.len() as u8);
        out.extend_from_slice(m);
        out.push(p.len() as u8);
        out.extend_from_slice(p);
        out
    }

    fn decode(mut b: &[u8]) -> Result<Self, DomainError> {
        let version = take(&mut b, 1)?[0];
        if version != FORMAT_V1 {
            return Err(DomainError::TokenMalformed);
        }
        let mut exp = [0u8; 8];
        exp.copy_from_slice(take(&mut b, 8)?);
        let role = byte_role(take(&mut b, 1)?[0])?;
        let meeting = take_id(&mut b)?;
        let participant = take_id(&mut b)?;
        if !b.is_empty() {
            return Err(DomainError::TokenMalformed);
        }
        Ok(JoinClaims {
            meeting: MeetingId::new(meeting).map_err(|_| DomainError::TokenMalformed)?,
            participant: ParticipantId::new(participant)
                .map_err(|_| DomainError::TokenMalformed)?,
            role,
            expires_at: UnixMillis(u64::from_be_bytes(exp)),
        })
    }
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], DomainError> {
    if b.len() < n {
        return Err(DomainError::TokenMalformed);
    }
    let (head, tail) = b.split_at(n);
    *b = tail;
    Ok(head)
}

fn take_id(b: &mut &[u8]) -> Result<String, DomainError> {
    let len = usize::from(take(b, 1)?[0]);
    let bytes = take(b, len)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| DomainError::TokenMalformed)
}

fn role_byte(r: Role) -> u8 {
    match r {
        Role::Host => 1,
        Role::Panelist => 2,
        Role::Attendee => 3,
    }
}

fn byte_role(b: u8) -> Result<Role, DomainError> {
    match b {
        1 => Ok(Role::Host),
        2 => Ok(Role::Panelist),
        3 => Ok(Role::Attendee),
        _ => Err(DomainError::TokenMalformed),
    }
}

/// The HMAC key that signs and verifies join tokens. Redacted in `Debug`; the key schedule
/// inside aws-lc-rs is cleansed when dropped, and the raw bytes this type generates are
/// zeroized as soon as the key is built.
pub struct TokenKey {
    key: hmac::Key,
}

impl TokenKey {
    /// A fresh random 32-byte key. Every control-plane replica must share one key, so this
    /// is for single-node setups and tests; clusters load theirs with [`TokenKey::from_bytes`].
    pub fn generate() -> Result<Self, DomainError> {
        let mut bytes = Zeroizing::new([0u8; TOKEN_KEY_LEN]);
        aws_lc_rs::rand::fill(bytes.as_mut()).map_err(|_| DomainError::Random)?;
        Ok(TokenKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes.as_ref()),
        })
    }

    /// A key from 32..=64 bytes of secret material. The caller owns (and should zeroize)
    /// its copy.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DomainError> {
        if !(TOKEN_KEY_LEN..=MAX_TOKEN_KEY_LEN).contains(&bytes.len()) {
            return Err(DomainError::Crypto("token key must be 32 to 64 bytes"));
        }
        Ok(TokenKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        })
    }

    /// Signs `claims` into the compact wire form.
    pub fn issue(&self, claims: &JoinClaims) -> String {
        let payload = claims.encode();
        let tag = hmac::sign(&self.key, &mac_input(&payload));
        let mut out = URL_SAFE_NO_PAD.encode(&payload);
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(tag.as_ref()));
        out
    }

    /// Checks a token's form, tag and expiry at `now`, and returns its claims.
    ///
    /// Expired means `now >= expires_at`. Every failure is `Unauthenticated`.
    pub fn verify(&self, token: &str, now: UnixMillis) -> Result<JoinClaims, DomainError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(DomainError::TokenMalformed);
        }
        let (payload_b64, tag_b64) = token.split_once('.').ok_or(DomainError::TokenMalformed)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| DomainError::TokenMalformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag_b64)
            .map_err(|_| DomainError::TokenMalformed)?;
        if tag.len() != TAG_LEN {
            return Err(DomainError::TokenMalformed);
        }
        hmac::verify(&self.key, &mac_input(&payload), &tag)
            .map_err(|_| DomainError::TokenForged)?;
        let claims = JoinClaims::decode(&payload)?;
        if now >= claims.expires_at {
            return Err(DomainError::TokenExpired);
        }
        Ok(claims)
    }
}

fn mac_input(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(MAC_CONTEXT.len() + payload.len());
    v.extend_from_slice(MAC_CONTEXT);
    v.extend_from_slice(payload);
    v
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

/// Extracts the token from an `authorization` header value of the form `Bearer <token>`.
/// The scheme is matched case-insensitively (RFC 7235 §2.1); surrounding spaces around the
/// token are ignored.
pub fn bearer_token(header_value: &str) -> Result<&str, DomainError> {
    let (scheme, rest) = header_value
        .trim_start()
        .split_once(' ')
        .ok_or(DomainError::TokenMalformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(DomainError::TokenMalformed);
    }
    let token = rest.trim();
    if token.is_empty() {
        return Err(DomainError::TokenMalformed);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::error::ErrorKind;
    use proptest::prelude::*;

    fn claims(exp: u64) -> JoinClaims {
        JoinClaims {
            meeting: MeetingId::new("m-1").unwrap(),
            participant: ParticipantId::new("p.2_x").unwrap(),
            role: Role::Panelist,
            expires_at: UnixMillis(exp),
        }
    }

    #[test]
    fn round_trip_before_expiry() {
        let key = TokenKey::generate().unwrap();
        let c = claims(1_000);
        let t = key.issue(&c);
        assert_eq!(key.verify(&t, UnixMillis(999)).unwrap(), c);
        assert!(t.len() <= MAX_TOKEN_LEN);
    }

    #[test]
    fn expiry_is_exclusive() {
        let key = TokenKey::generate().unwrap();
        let t = key.issue(&claims(1_000));
        assert_eq!(
            key.verify(&t, UnixMillis(1_000)),
            Err(DomainError::TokenExpired)
        );
        assert_eq!(
            key.verify(&t, UnixMillis(5_000)),
            Err(DomainError::TokenExpired)
        );
    }

    #[test]
    fn new_claims_saturate_ttl() {
        let c = JoinClaims::new(
            MeetingId::new("m").unwrap(),
            ParticipantId::new("p").unwrap(),
            Role::Host,
            UnixMillis(u64::MAX - 5),
            DEFAULT_TOKEN_TTL,
        );
        assert_eq!(c.expires_at, UnixMillis(u64::MAX));
    }

    #[test]
    fn other_key_is_forged() {
        let a = TokenKey::generate().unwrap();
        let b = TokenKey::generate().unwrap();
        let t = a.issue(&claims(1_000));
        assert_eq!(b.verify(&t, UnixMillis(0)), Err(DomainError::TokenForged));
    }

    #[test]
    fn from_bytes_is_deterministic_and_bounded() {
        let a = TokenKey::from_bytes(&[7u8; 32]).unwrap();
        let b = TokenKey::from_bytes(&[7u8; 32]).unwrap();
        let t = a.issue(&claims(1_000));
        assert_eq!(t, b.issue(&claims(1_000)));
        assert!(b.verify(&t, UnixMillis(0)).is_ok());
        assert!(TokenKey::from_bytes(&[7u8; 31]).is_err());
        assert!(TokenKey::from_bytes(&[7u8; 65]).is_err());
        assert!(TokenKey::from_bytes(&[7u8; 64]).is_ok());
    }

    #[test]
    fn malformed_inputs_are_unauthenticated() {
        let key = TokenKey::generate().unwrap();
        let good = key.issue(&claims(1_000));
        let (p, t) = good.split_once('.').unwrap();
        for bad in [
            String::new(),
            "nodot".to_owned(),
            ".".to_owned(),
            format!("{p}."),
            format!(".{t}"),
            format!("{p}.{t}.x"),
            format!("{p}={t}"),
            format!("{p}.{}", &t[..t.len() - 2]),
            "x".repeat(MAX_TOKEN_LEN + 1),
        ] {
            let err = key.verify(&bad, UnixMillis(0)).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{bad:?}");
        }
    }

    #[test]
    fn validly_signed_garbage_is_malformed_not_accepted() {
        // A payload signed with our key but not a valid record (as if a future format):
        // the tag passes, the parser must still refuse it.
        let key = TokenKey::from_bytes(&[1u8; 32]).unwrap();
        for payload in [vec![2u8; 20], vec![1u8], claims(5).encode()[..12].to_vec()] {
            let tag = hmac::sign(&key.key, &mac_input(&payload));
            let t = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(&payload),
                URL_SAFE_NO_PAD.encode(tag.as_ref())
            );
            assert_eq!(
                key.verify(&t, UnixMillis(0)),
                Err(DomainError::TokenMalformed)
            );
        }
    }

    #[test]
    fn debug_redacts_the_key() {
        let key = TokenKey::from_bytes(&[0xAB; 32]).unwrap();
        let dbg = format!("{key:?}");
        assert_eq!(dbg, "TokenKey(<redacted>)");
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer_token("Bearer abc.def"), Ok("abc.def"));
        assert_eq!(bearer_token("bearer   abc "), Ok("abc"));
        assert!(bearer_token("Basic abc").is_err());
        assert!(bearer_token("Bearer").is_err());
        assert!(bearer_token("Bearer   ").is_err());
        assert!(bearer_token("").is_err());
    }

    fn arb_role() -> impl Strategy<Value = Role> {
        prop_oneof![Just(Role::Host), Just(Role::Panelist), Just(Role::Attendee)]
    }

    fn arb_claims() -> impl Strategy<Value = JoinClaims> {
        (
            "[A-Za-z0-9._-]{1,64}",
            "[A-Za-z0-9._-]{1,64}",
            arb_role(),
            1u64..,
        )
            .prop_map(|(m, p, role, exp)| JoinClaims {
                meeting: MeetingId::new(m).unwrap(),
                participant: ParticipantId::new(p).unwrap(),
                role,
                expires_at: UnixMillis(exp),
            })
    }

    proptest! {
        #[test]
        fn any_claims_round_trip(c in arb_claims(), key in proptest::array::uniform32(any::<u8>())) {
            let key = TokenKey::from_bytes(&key).unwrap();
            let t = key.issue(&c);
            prop_assert!(t.len() <= MAX_TOKEN_LEN);
            prop_assert_eq!(key.verify(&t, UnixMillis(c.expires_at.0 - 1)), Ok(c.clone()));
            prop_assert_eq!(key.verify(&t, c.expires_at), Err(DomainError::TokenExpired));
        }

        #[test]
        fn any_single_byte_tamper_of_the_text_is_rejected(
            c in arb_claims(),
            pos in any::<prop::sample::Index>(),
            flip in 1u8..,
        ) {
            let key = TokenKey::from_bytes(&[9u8; 32]).unwrap();
            let mut bytes = key.issue(&c).into_bytes();
            let i = pos.index(bytes.len());
            bytes[i] ^= flip;
            // A tamper that makes invalid UTF-8 never reaches `verify` as a &str; the
            // transport would refuse it first. Everything else must be refused here.
            if let Ok(s) = String::from_utf8(bytes) {
                let err = key.verify(&s, UnixMillis(0)).unwrap_err();
                prop_assert_eq!(err.kind(), ErrorKind::Unauthenticated);
            }
        }

        #[test]
        fn any_single_byte_tamper_of_the_binary_is_rejected(
            c in arb_claims(),
            pos in any::<prop::sample::Index>(),
            flip in 1u8..,
        ) {
            let key = TokenKey::from_bytes(&[9u8; 32]).unwrap();
            let t = key.issue(&c);
            let (p, g) = t.split_once('.').unwrap();
            let mut payload = URL_SAFE_NO_PAD.decode(p).unwrap();
            let mut tag = URL_SAFE_NO_PAD.decode(g).unwrap();
            let i = pos.index(payload.len() + tag.len());
            if i < payload.len() { payload[i] ^= flip } else { tag[i - payload.len()] ^= flip }
            let forged = format!("{}.{}", URL_SAFE_NO_PAD.encode(&payload), URL_SAFE_NO_PAD.encode(&tag));
            prop_assert_eq!(key.verify(&forged, UnixMillis(0)), Err(DomainError::TokenForged));
        }

        #[test]
        fn verify_never_panics_on_any_input(s in any::<String>()) {
            let key = TokenKey::from_bytes(&[3u8; 32]).unwrap();
            prop_assert!(key.verify(&s, UnixMillis(0)).is_err());
        }
    }
}
