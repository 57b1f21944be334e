//! Identifiers: validated string newtypes.
//!
//! Every id is 1..=64 characters of `[A-Za-z0-9._-]`. The alphabet is what etcd keys,
//! URLs, log lines and gRPC metadata all carry without escaping, so an id can be put in a
//! key path (`/meetings/<id>/...`) as is; the length bound keeps keys and join tokens
//! small. Validation runs on construction *and* on deserialisation, so a value of these
//! types is valid wherever it is found.
//!
//! Fresh ids are 16 random bytes (128 bits, from aws-lc-rs's system RNG) in unpadded
//! base64url: 22 characters, inside the alphabet, unguessable. Meeting ids are therefore
//! also capabilities of a sort, but nothing relies on that: joining still needs the
//! passcode when one is set.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::error::DomainError;

/// The longest id accepted, in bytes (all accepted characters are one byte).
pub const MAX_ID_LEN: usize = 64;

/// Checks the id rules; `what` names the id in the error ("meeting id").
fn validate(what: &'static str, s: &str) -> Result<(), DomainError> {
    let reason = if s.is_empty() {
        "is empty"
    } else if s.len() > MAX_ID_LEN {
        "is longer than 64 characters"
    } else if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        "has a character outside [A-Za-z0-9._-]"
    } else {
        return Ok(());
    };
    Err(DomainError::InvalidId { what, reason })
}

/// 128 random bits as 22 base64url characters.
fn random_id() -> Result<String, DomainError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| DomainError::Random)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps `s`.
            pub fn new(s: impl Into<String>) -> Result<Self, DomainError> {
                let s = s.into();
                validate($what, &s)?;
                Ok(Self(s))
            }

            /// A fresh random id (128 bits). Fails only if the system RNG does.
            pub fn random() -> Result<Self, DomainError> {
                // A base64url string of 16 bytes is 22 characters of the id alphabet, so
                // it passes validation; going through `new` keeps that checked anyway.
                Self::new(random_id()?)
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = DomainError;
            fn try_from(s: String) -> Result<Self, DomainError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = DomainError;
            fn from_str(s: &str) -> Result<Self, DomainError> {
                Self::new(s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A meeting (or webinar): the room everything else hangs off.
    MeetingId,
    "meeting id"
);
id_type!(
    /// One join of one person: a fresh id per join, so a rejoin is a new participant.
    ParticipantId,
    "participant id"
);
id_type!(
    /// A breakout room inside a meeting.
    BreakoutId,
    "breakout id"
);
id_type!(
    /// A forwarder (one SFU process) registered with the control plane.
    ForwarderId,
    "forwarder id"
);
id_type!(
    /// One recording of a meeting, from StartRecording to StopRecording: the key of its
    /// chunks and file in object storage (docs/recording.md).
    RecordingId,
    "recording id"
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::error::ErrorKind;
    use proptest::prelude::*;

    #[test]
    fn accepts_the_alphabet_up_to_64() {
        for ok in ["a", "A-b_c.9", &"x".repeat(64), "0", "..", "-_-"] {
            assert_eq!(
                MeetingId::new(ok).map(|m| m.as_str().to_owned()),
                Ok(ok.to_owned())
            );
        }
    }

    #[test]
    fn rejects_empty_long_and_foreign_characters() {
        for bad in ["", &"x".repeat(65), "a b", "a/b", "é", "a\0", "a:b", "a\n"] {
            let err = ParticipantId::new(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn random_ids_are_valid_and_distinct() {
        let a = BreakoutId::random().unwrap();
        let b = BreakoutId::random().unwrap();
        assert_eq!(a.as_str().len(), 22);
        assert_ne!(a, b);
        assert!(ForwarderId::new(a.as_str()).is_ok());
    }

    #[test]
    fn serde_validates_on_the_way_in() {
        let id = MeetingId::new("m-1").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"m-1\"");
        assert_eq!(serde_json::from_str::<MeetingId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<MeetingId>("\"a b\"").is_err());
        assert!(serde_json::from_str::<MeetingId>("\"\"").is_err());
    }

    proptest! {
        #[test]
        fn validation_never_panics_and_matches_the_rule(s in any::<String>()) {
            let expected = !s.is_empty()
                && s.len() <= MAX_ID_LEN
                && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            prop_assert_eq!(MeetingId::new(s.clone()).is_ok(), expected);
            prop_assert_eq!(s.parse::<ForwarderId>().is_ok(), expected);
        }

        #[test]
        fn valid_ids_round_trip(s in "[A-Za-z0-9._-]{1,64}") {
            let id = ParticipantId::new(s.clone()).unwrap();
            prop_assert_eq!(id.as_str(), s.as_str());
            let back: ParticipantId = serde_json::from_str(&serde_json::to_string(&id).unwrap()).unwrap();
            prop_assert_eq!(back, id);
        }
    }
}
