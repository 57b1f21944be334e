//! Meeting passcodes and host keys: argon2id hashes, never stored or printed in the clear.
//!
//! A [`Passcode`] is a secret a person types; it lives in memory only as long as a request
//! and is zeroized on drop. What is stored is a [`PasscodeHash`]: an argon2id PHC string
//! (`$argon2id$v=19$m=..,t=..,p=..$salt$hash`) with a fresh 128-bit salt per hash, so the
//! stored form carries its own cost parameters and old hashes keep verifying after the
//! default cost is raised.
//!
//! Verification recomputes the hash with the stored parameters and compares the outputs
//! with the `password-hash` crate's constant-time equality: nothing about how much of the
//! guess matched leaks through timing. The cost of argon2 is the point (it is what makes a
//! leaked store expensive to brute-force), so callers should verify once per request and
//! off the async executor (`spawn_blocking`); see [`super::meeting::Meeting::authorize_join`].
//!
//! Neither type prints its secret: `Debug` on a passcode is `Passcode(<redacted>)` and on
//! a hash shows only the algorithm and cost.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::error::DomainError;

/// Shortest passcode accepted, in characters.
pub const MIN_PASSCODE_CHARS: usize = 4;
/// Longest passcode accepted, in characters. Argon2 takes any length; the bound keeps a
/// request from making us hash megabytes.
pub const MAX_PASSCODE_CHARS: usize = 64;

/// Upper bounds on cost parameters accepted from a stored hash. A hash is ours, but a
/// tampered or corrupted record must not turn one join into a gigabyte allocation.
const MAX_M_COST_KIB: u32 = 256 * 1024;
const MAX_T_COST: u32 = 16;
const MAX_P_COST: u32 = 8;

/// A passcode (or host key) as typed by a person. Zeroized on drop, redacted in `Debug`.
#[derive(Clone)]
pub struct Passcode(Zeroizing<String>);

impl Passcode {
    /// Validates a passcode: 4..=64 characters, no control characters. Surrounding
    /// whitespace is kept (it is part of what was typed) but a passcode of only whitespace
    /// is refused.
    pub fn new(s: impl Into<String>) -> Result<Self, DomainError> {
        let s = Zeroizing::new(s.into());
        let chars = s.chars().count();
        if chars < MIN_PASSCODE_CHARS {
            return Err(DomainError::InvalidPasscode("is shorter than 4 characters"));
        }
        if chars > MAX_PASSCODE_CHARS {
            return Err(DomainError::InvalidPasscode("is longer than 64 characters"));
        }
        if s.chars().any(char::is_control) {
            return Err(DomainError::InvalidPasscode("has a control character"));
        }
        if s.trim().is_empty() {
            return Err(DomainError::InvalidPasscode("is only whitespace"));
        }
        Ok(Passcode(s))
    }

    fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Passcode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passcode(<redacted>)")
    }
}

/// Argon2id cost parameters for new hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasscodeCost {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes over memory.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl PasscodeCost {
    /// The OWASP password storage recommendation for argon2id (19 MiB, 2 passes, 1 lane),
    /// which is also argon2's default: about 20 ms of one core per hash in release builds.
    pub const RECOMMENDED: PasscodeCost = PasscodeCost {
        m_kib: Params::DEFAULT_M_COST,
        t: Params::DEFAULT_T_COST,
        p: Params::DEFAULT_P_COST,
    };

    /// The cheapest parameters argon2 allows (8 KiB, 1 pass). For tests only: a debug
    /// build takes seconds per hash at the recommended cost. Verification reads the cost
    /// from the hash, so test hashes verify just as cheaply.
    pub const INSECURE_FOR_TESTS: PasscodeCost = PasscodeCost {
        m_kib: 8,
        t: 1,
        p: 1,
    };
}

impl Default for PasscodeCost {
    fn default() -> Self {
        Self::RECOMMENDED
    }
}

/// An argon2id hash of a passcode, as a PHC string. Stored in JSON as that string.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PasscodeHash(String);

impl PasscodeHash {
    /// Hashes `passcode` with a fresh random salt at `cost`.
    pub fn hash(passcode: &Passcode, cost: PasscodeCost) -> Result<Self, DomainError> {
        check_cost(cost.m_kib, cost.t, cost.p)?;
        let params = Params::new(cost.m_kib, cost.t, cost.p, None)
            .map_err(|_| DomainError::InvalidPasscode("cost parameters rejected by argon2"))?;
        let mut salt = [0u8; 16];
        aws_lc_rs::rand::fill(&mut salt).map_err(|_| DomainError::Random)?;
        let salt = SaltString::encode_b64(&salt)
            .map_err(|_| DomainError::Crypto("salt encoding failed"))?;
        let phc = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(passcode.as_bytes(), &salt)
            .map_err(|_| DomainError::Crypto("argon2 hashing failed"))?
            .to_string();
        Ok(PasscodeHash(phc))
    }

    /// Wraps a stored PHC string after checking it is argon2id with sane parameters.
    pub fn from_phc(phc: impl Into<String>) -> Result<Self, DomainError> {
        let phc = phc.into();
        let parsed = PasswordHash::new(&phc)
            .map_err(|_| DomainError::InvalidPasscode("hash is not a PHC string"))?;
        if parsed.algorithm != argon2::ARGON2ID_IDENT {
            return Err(DomainError::InvalidPasscode("hash is not argon2id"));
        }
        if parsed.salt.is_none() || parsed.hash.is_none() {
            return Err(DomainError::InvalidPasscode(
                "hash lacks a salt or an output",
            ));
        }
        let params = Params::try_from(&parsed)
            .map_err(|_| DomainError::InvalidPasscode("hash has invalid argon2 parameters"))?;
        check_cost(params.m_cost(), params.t_cost(), params.p_cost())?;
        Ok(PasscodeHash(phc))
    }

    /// Whether `passcode` is the one hashed. Constant time in the comparison of outputs;
    /// the argon2 work itself depends only on the stored parameters, not on the guess.
    pub fn verify(&self, passcode: &Passcode) -> bool {
        match PasswordHash::new(&self.0) {
            // The parameters in the hash are used, not `Argon2::default()`'s.
            Ok(parsed) => Argon2::default()
                .verify_password(passcode.as_bytes(), &parsed)
                .is_ok(),
            // Unreachable for values built by `hash` or `from_phc`; refusing is the safe
            // answer anyway.
            Err(_) => false,
        }
    }

    /// The cost the hash was made with, for re-hashing policies and `Debug`.
    pub fn cost(&self) -> Option<PasscodeCost> {
        let parsed = PasswordHash::new(&self.0).ok()?;
        let params = Params::try_from(&parsed).ok()?;
        Some(PasscodeCost {
            m_kib: params.m_cost(),
            t: params.t_cost(),
            p: params.p_cost(),
        })
    }
}

fn check_cost(m_kib: u32, t: u32, p: u32) -> Result<(), DomainError> {
    if m_kib > MAX_M_COST_KIB || t > MAX_T_COST || p > MAX_P_COST || t == 0 || p == 0 {
        return Err(DomainError::InvalidPasscode(
            "hash cost parameters out of bounds",
        ));
    }
    Ok(())
}

impl TryFrom<String> for PasscodeHash {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, DomainError> {
        Self::from_phc(s)
    }
}

impl From<PasscodeHash> for String {
    fn from(h: PasscodeHash) -> String {
        h.0
    }
}

impl std::fmt::Debug for PasscodeHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The salt and output are not secret in the way a passcode is, but they are what
        // an offline guesser needs; keep them out of logs.
        let mut d = f.debug_struct("PasscodeHash");
        d.field("algorithm", &"argon2id");
        if let Some(c) = self.cost() {
            d.field("m_kib", &c.m_kib).field("t", &c.t).field("p", &c.p);
        }
        d.finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::error::ErrorKind;

    fn cheap(p: &str) -> PasscodeHash {
        PasscodeHash::hash(&Passcode::new(p).unwrap(), PasscodeCost::INSECURE_FOR_TESTS).unwrap()
    }

    #[test]
    fn hash_verifies_the_right_passcode_only() {
        let h = cheap("1234");
        assert!(h.verify(&Passcode::new("1234").unwrap()));
        assert!(!h.verify(&Passcode::new("1235").unwrap()));
        assert!(!h.verify(&Passcode::new("12345").unwrap()));
    }

    #[test]
    fn salts_differ_between_hashes_of_one_passcode() {
        assert_ne!(cheap("same"), cheap("same"));
    }

    #[test]
    fn recommended_cost_is_what_new_hashes_record() {
        // Hashing at the real cost is slow in debug builds; check the parameters instead.
        assert_eq!(
            PasscodeCost::default(),
            PasscodeCost {
                m_kib: 19 * 1024,
                t: 2,
                p: 1
            }
        );
        let h = cheap("abcd");
        assert_eq!(h.cost(), Some(PasscodeCost::INSECURE_FOR_TESTS));
        assert!(String::from(h).starts_with("$argon2id$v=19$m=8,t=1,p=1$"));
    }

    #[test]
    fn passcode_rules() {
        for bad in ["", "abc", "    ", "ab\ncd", &"x".repeat(65)] {
            assert_eq!(
                Passcode::new(bad).unwrap_err().kind(),
                ErrorKind::InvalidArgument,
                "{bad:?}"
            );
        }
        for ok in ["abcd", "pass word", "ñandú", &"x".repeat(64)] {
            assert!(Passcode::new(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn debug_never_shows_secrets() {
        let p = Passcode::new("hunter22").unwrap();
        assert_eq!(format!("{p:?}"), "Passcode(<redacted>)");
        let h = PasscodeHash::hash(&p, PasscodeCost::INSECURE_FOR_TESTS).unwrap();
        let phc = String::from(h.clone());
        let salt_and_hash: Vec<&str> = phc.rsplitn(3, '$').take(2).collect();
        let dbg = format!("{h:?}");
        for part in salt_and_hash {
            assert!(!dbg.contains(part), "{dbg}");
        }
        assert!(!dbg.contains("hunter22"));
        assert!(dbg.contains("argon2id"));
    }

    #[test]
    fn serde_round_trip_and_validation() {
        let h = cheap("abcd");
        let json = serde_json::to_string(&h).unwrap();
        let back: PasscodeHash = serde_json::from_str(&json).unwrap();
        assert_eq!(back, h);
        assert!(back.verify(&Passcode::new("abcd").unwrap()));
        for bad in [
            "\"plain\"",
            "\"$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\"",
            "\"$argon2id$v=19$m=99999999,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\"",
            "\"$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ\"",
        ] {
            assert!(serde_json::from_str::<PasscodeHash>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn out_of_bounds_cost_is_refused() {
        let p = Passcode::new("abcd").unwrap();
        let huge = PasscodeCost {
            m_kib: MAX_M_COST_KIB + 1,
            t: 1,
            p: 1,
        };
        assert_eq!(
            PasscodeHash::hash(&p, huge).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }
}
