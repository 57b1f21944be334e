//! The ICE-lite agent of one leg (RFC 8445 §2.5), sans-IO: it answers the peer's
//! connectivity checks, learns the nominated address (USE-CANDIDATE, §7.3.1.5), keeps
//! consent fresh (RFC 7675) and switches credentials on an ICE restart (§9).
//!
//! A lite agent is always controlled and never sends checks of its own: everything it
//! does is an answer to a Binding request. [`IceLite::handle`] takes a parsed request and
//! writes the answer into the caller's buffer; nothing allocates per request. Requests
//! that are not for these credentials, or fail MESSAGE-INTEGRITY or FINGERPRINT, get no
//! answer at all (an answer would let a spoofer reflect traffic at a victim), only a count.
//!
//! The core (`sfu::webrtc`) keeps one per WebRTC leg, finds it by the ufrag of a check's
//! USERNAME, and sends its answers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::stun::{self, Class, IntegrityKey, Message, METHOD_BINDING};

/// RFC 7675 §5.1: consent expires 30 s after the last authenticated check.
pub const CONSENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The leg's own ICE credentials (SDP `a=ice-ufrag` and `a=ice-pwd`, assigned by the
/// control plane), and the peer's ufrag when known.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub local_ufrag: String,
    pub local_pwd: String,
    pub remote_ufrag: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("local_ufrag", &self.local_ufrag)
            .field("remote_ufrag", &self.remote_ufrag)
            .finish_non_exhaustive()
    }
}

/// What became of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The first `len` bytes of the buffer are the answer, to go back to the request's
    /// source from the address it was sent to. `nominated`: the peer nominated this
    /// address (a new one, or the first): media goes there from now on.
    Answer {
        len: usize,
        nominated: Option<SocketAddr>,
    },
    /// No answer; the reason is counted.
    Dropped(Unanswered),
}

/// Why a request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unanswered {
    /// Not a Binding request (responses and indications need nothing from a lite agent).
    NotARequest,
    /// USERNAME missing, or not these credentials (`local:remote`).
    UnknownUser,
    /// MESSAGE-INTEGRITY missing or wrong.
    BadIntegrity,
    /// FINGERPRINT present and wrong.
    BadFingerprint,
    /// The answer did not fit the buffer given.
    NoRoom,
}

/// Counters, per leg.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IceStats {
    pub answered: u64,
    pub nominations: u64,
    pub role_conflicts: u64,
    pub unknown_attributes: u64,
    pub dropped: u64,
    pub consent_lost: u64,
}

/// One leg's ICE-lite agent.
#[derive(Debug)]
pub struct IceLite {
    credentials: Credentials,
    key: IntegrityKey,
    nominated: Option<SocketAddr>,
    last_consent: Option<Instant>,
    stats: IceStats,
}

impl IceLite {
    pub fn new(credentials: Credentials) -> IceLite {
        IceLite {
            key: IntegrityKey::new(credentials.local_pwd.as_bytes()),
            credentials,
            nominated: None,
            last_consent: None,
            stats: IceStats::default(),
        }
    }

    /// An ICE restart (RFC 8445 §9): new credentials from now on. Media keeps flowing to
    /// the nominated address until the peer nominates again with the new credentials, and
    /// the leg's subscriptions are not this module's business: they stay.
    pub fn restart(&mut self, credentials: Credentials) {
        self.key = IntegrityKey::new(credentials.local_pwd.as_bytes());
        self.credentials = credentials;
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    pub fn local_ufrag(&self) -> &str {
        &self.credentials.local_ufrag
    }

    /// Whether a request's USERNAME is for these credentials: `local:remote` (RFC 8445
    /// §7.2.2, the receiver's ufrag first), the remote part checked when known.
    pub fn is_for(&self, username: &[u8]) -> bool {
        let local = self.credentials.local_ufrag.as_bytes();
        let Some(rest) = username
            .strip_prefix(local)
            .and_then(|r| r.strip_prefix(b":"))
        else {
            return false;
        };
        match &self.credentials.remote_ufrag {
            Some(remote) => rest == remote.as_bytes(),
            None => !rest.is_empty(),
        }
    }

    /// The address the peer nominated, if any.
    pub fn nominated(&self) -> Option<SocketAddr> {
        self.nominated
    }

    pub fn stats(&self) -> IceStats {
        self.stats
    }

    /// Answer `request`, which arrived from `source`, into `out`.
    pub fn handle(
        &mut self,
        now: Instant,
        request: &Message<'_>,
        source: SocketAddr,
        out: &mut [u8],
    ) -> Outcome {
        let outcome = self.answer(now, request, source, out);
        match outcome {
            Outcome::Answer { .. } => self.stats.answered += 1,
            Outcome::Dropped(_) => self.stats.dropped += 1,
        }
        outcome
    }

    fn answer(
        &mut self,
        now: Instant,
        request: &Message<'_>,
        source: SocketAddr,
        out: &mut [u8],
    ) -> Outcome {
        if request.class != Class::Request || request.method != METHOD_BINDING {
            return Outcome::Dropped(Unanswered::NotARequest);
        }
        if !request.username.is_some_and(|u| self.is_for(u)) {
            return Outcome::Dropped(Unanswered::UnknownUser);
        }
        if !request.check_integrity(&self.key) {
            return Outcome::Dropped(Unanswered::BadIntegrity);
        }
        if request.has_fingerprint() && !request.check_fingerprint() {
            return Outcome::Dropped(Unanswered::BadFingerprint);
        }
        let written = if let Some(unknown) = request.unknown_required {
            self.stats.unknown_attributes += 1;
            stun::write_error(
                out,
                request,
                420,
                "Unknown Attribute",
                &[unknown],
                Some(&self.key),
            )
        } else if request.ice_controlled.is_some() {
            // A lite agent is always controlled (RFC 8445 §6.1.1): a peer that thinks it
            // is controlled too must switch, which 487 tells it.
            self.stats.role_conflicts += 1;
            stun::write_error(out, request, 487, "Role Conflict", &[], Some(&self.key))
        } else {
            stun::write_binding_success(out, request, source, &self.key)
        };
        let Ok(len) = written else {
            return Outcome::Dropped(Unanswered::NoRoom);
        };
        let mut nominated = None;
        if request.unknown_required.is_none() && request.ice_controlled.is_none() {
            if request.use_candidate && self.nominated != Some(source) {
                self.nominated = Some(source);
                self.stats.nominations += 1;
                nominated = Some(source);
            }
            // Consent is per pair (RFC 7675): checks on another pair do not keep the
            // nominated one alive.
            if self.nominated == Some(source) {
                self.last_consent = Some(now);
            }
        }
        Outcome::Answer { len, nominated }
    }

    /// When consent expires, if a pair is nominated.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.nominated
            .and(self.last_consent)
            .map(|t| t + CONSENT_TIMEOUT)
    }

    /// Expire consent if it is due: returns the address that lost it (media must stop
    /// going there, RFC 7675 §5.1), once.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<SocketAddr> {
        let due = self.poll_timeout()?;
        if now < due {
            return None;
        }
        self.stats.consent_lost += 1;
        self.last_consent = None;
        self.nominated.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{attribute, parse, HEADER_LEN};

    const LOCAL_PWD: &str = "fanout-local-password-0";

    fn agent(remote: Option<&str>) -> IceLite {
        IceLite::new(Credentials {
            local_ufrag: "fnt1".into(),
            local_pwd: LOCAL_PWD.into(),
            remote_ufrag: remote.map(str::to_owned),
        })
    }

    /// A browser's check: USERNAME, PRIORITY, ICE-CONTROLLING (or -CONTROLLED), maybe
    /// USE-CANDIDATE and an extra attribute, MESSAGE-INTEGRITY with `pwd`, FINGERPRINT.
    struct Check<'a> {
        username: &'a str,
        pwd: &'a str,
        use_candidate: bool,
        controlled: bool,
        extra: Option<u16>,
        transaction: u8,
    }

    impl Default for Check<'_> {
        fn default() -> Self {
            Check {
                username: "fnt1:brws",
                pwd: LOCAL_PWD,
                use_candidate: false,
                controlled: false,
                extra: None,
                transaction: 1,
            }
        }
    }

    impl Check<'_> {
        fn bytes(&self) -> Vec<u8> {
            // Built with a raw writer: the public writers only answer requests.
            let mut b = vec![0u8; HEADER_LEN];
            b[0..2].copy_from_slice(&1u16.to_be_bytes());
            b[4..8].copy_from_slice(&stun::MAGIC_COOKIE.to_be_bytes());
            b[8..20].fill(self.transaction);
            let push = |b: &mut Vec<u8>, kind: u16, value: &[u8]| {
                b.extend_from_slice(&kind.to_be_bytes());
                b.extend_from_slice(&(value.len() as u16).to_be_bytes());
                b.extend_from_slice(value);
                while !b.len().is_multiple_of(4) {
                    b.push(0);
                }
                let length = (b.len() - HEADER_LEN) as u16;
                b[2..4].copy_from_slice(&length.to_be_bytes());
            };
            push(&mut b, attribute::USERNAME, self.username.as_bytes());
            push(&mut b, attribute::PRIORITY, &0x6e00_01ffu32.to_be_bytes());
            let role = if self.controlled {
                attribute::ICE_CONTROLLED
            } else {
                attribute::ICE_CONTROLLING
            };
            push(&mut b, role, &7u64.to_be_bytes());
            if self.use_candidate {
                push(&mut b, attribute::USE_CANDIDATE, &[]);
            }
            if let Some(kind) = self.extra {
                push(&mut b, kind, &[1, 2, 3, 4]);
            }
            // MESSAGE-INTEGRITY over the message with the length counting it.
            let at = b.len();
            let length = (at + 24 - HEADER_LEN) as u16;
            b[2..4].copy_from_slice(&length.to_be_bytes());
            let key = aws_lc_rs::hmac::Key::new(
                aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
                self.pwd.as_bytes(),
            );
            let tag = aws_lc_rs::hmac::sign(&key, &b);
            push(&mut b, attribute::MESSAGE_INTEGRITY, tag.as_ref());
            // FINGERPRINT.
            let length = (b.len() + 8 - HEADER_LEN) as u16;
            b[2..4].copy_from_slice(&length.to_be_bytes());
            let crc = crc32fast::hash(&b) ^ 0x5354_554e;
            push(&mut b, attribute::FINGERPRINT, &crc.to_be_bytes());
            b
        }
    }

    fn run(
        agent: &mut IceLite,
        now: Instant,
        check: &Check<'_>,
        source: &str,
    ) -> (Outcome, Vec<u8>) {
        let bytes = check.bytes();
        let request = parse(&bytes).expect("a well-formed check");
        let mut out = [0u8; 256];
        let outcome = agent.handle(now, &request, source.parse().unwrap(), &mut out);
        let len = match outcome {
            Outcome::Answer { len, .. } => len,
            Outcome::Dropped(_) => 0,
        };
        (outcome, out[..len].to_vec())
    }

    #[test]
    fn a_check_is_answered_with_the_source_and_integrity() {
        let mut ice = agent(Some("brws"));
        let now = Instant::now();
        let (outcome, answer) = run(&mut ice, now, &Check::default(), "198.51.100.7:50000");
        assert_eq!(
            outcome,
            Outcome::Answer {
                len: answer.len(),
                nominated: None
            }
        );
        let response = parse(&answer).unwrap();
        assert_eq!(response.class, Class::SuccessResponse);
        assert_eq!(response.transaction_id, [1; 12]);
        assert_eq!(
            response.xor_mapped_address,
            Some("198.51.100.7:50000".parse().unwrap())
        );
        assert!(response.check_integrity(&IntegrityKey::new(LOCAL_PWD.as_bytes())));
        assert!(response.check_fingerprint());
        assert_eq!(ice.nominated(), None, "not nominated without USE-CANDIDATE");
        assert_eq!(ice.poll_timeout(), None);
    }

    #[test]
    fn use_candidate_nominates_and_a_new_address_moves_the_leg() {
        let mut ice = agent(None);
        let now = Instant::now();
        let nominate = Check {
            use_candidate: true,
            ..Check::default()
        };
        let (outcome, _) = run(&mut ice, now, &nominate, "198.51.100.7:50000");
        let first: SocketAddr = "198.51.100.7:50000".parse().unwrap();
        assert!(matches!(outcome, Outcome::Answer { nominated: Some(a), .. } if a == first));
        // Nominating the same pair again is no news.
        let (outcome, _) = run(&mut ice, now, &nominate, "198.51.100.7:50000");
        assert!(matches!(
            outcome,
            Outcome::Answer {
                nominated: None,
                ..
            }
        ));
        // A new network (the peer's Wi-Fi to LTE): the new pair wins.
        let (outcome, _) = run(&mut ice, now, &nominate, "203.0.113.9:41000");
        let second: SocketAddr = "203.0.113.9:41000".parse().unwrap();
        assert!(matches!(outcome, Outcome::Answer { nominated: Some(a), .. } if a == second));
        assert_eq!(ice.nominated(), Some(second));
        assert_eq!(ice.stats().nominations, 2);
    }

    #[test]
    fn consent_lapses_thirty_seconds_after_the_last_check_on_the_nominated_pair() {
        let mut ice = agent(None);
        let t0 = Instant::now();
        let nominate = Check {
            use_candidate: true,
            ..Check::default()
        };
        run(&mut ice, t0, &nominate, "198.51.100.7:50000");
        // Checks on the nominated pair refresh consent; checks elsewhere do not.
        run(
            &mut ice,
            t0 + Duration::from_secs(20),
            &Check::default(),
            "198.51.100.7:50000",
        );
        run(
            &mut ice,
            t0 + Duration::from_secs(45),
            &Check::default(),
            "192.0.2.200:1",
        );
        assert_eq!(ice.poll_timeout(), Some(t0 + Duration::from_secs(50)));
        assert_eq!(ice.handle_timeout(t0 + Duration::from_secs(49)), None);
        assert_eq!(
            ice.handle_timeout(t0 + Duration::from_secs(50)),
            Some("198.51.100.7:50000".parse().unwrap())
        );
        assert_eq!(ice.nominated(), None);
        assert_eq!(
            ice.handle_timeout(t0 + Duration::from_secs(90)),
            None,
            "reported once"
        );
        assert_eq!(ice.stats().consent_lost, 1);
    }

    #[test]
    fn checks_for_others_or_with_bad_integrity_get_no_answer() {
        let mut ice = agent(Some("brws"));
        let now = Instant::now();
        for (check, reason) in [
            (
                Check {
                    pwd: "wrong-password-of-22-c",
                    ..Check::default()
                },
                Unanswered::BadIntegrity,
            ),
            (
                Check {
                    username: "fnt2:brws",
                    ..Check::default()
                },
                Unanswered::UnknownUser,
            ),
            (
                Check {
                    username: "fnt1:othr",
                    ..Check::default()
                },
                Unanswered::UnknownUser,
            ),
            (
                Check {
                    username: "fnt1",
                    ..Check::default()
                },
                Unanswered::UnknownUser,
            ),
            (
                Check {
                    username: "fnt1x:brws",
                    ..Check::default()
                },
                Unanswered::UnknownUser,
            ),
        ] {
            let (outcome, answer) = run(&mut ice, now, &check, "198.51.100.7:50000");
            assert_eq!(outcome, Outcome::Dropped(reason), "{}", check.username);
            assert!(answer.is_empty());
        }
        assert_eq!(ice.nominated(), None);
        assert_eq!(ice.stats().dropped, 5);
        assert_eq!(ice.stats().answered, 0);
    }

    #[test]
    fn role_conflicts_and_unknown_attributes_are_answered_with_errors() {
        let mut ice = agent(None);
        let now = Instant::now();
        let (_, answer) = run(
            &mut ice,
            now,
            &Check {
                controlled: true,
                use_candidate: true,
                ..Check::default()
            },
            "198.51.100.7:50000",
        );
        let response = parse(&answer).unwrap();
        assert_eq!(response.class, Class::ErrorResponse);
        assert_eq!(&answer[26..28], &[4, 87]);
        assert_eq!(
            ice.nominated(),
            None,
            "no nomination from a conflicting check"
        );
        let (_, answer) = run(
            &mut ice,
            now,
            &Check {
                extra: Some(0x0030),
                ..Check::default()
            },
            "198.51.100.7:50000",
        );
        assert_eq!(&answer[26..28], &[4, 20]);
        // Optional attributes it does not know (GOOG-NETWORK-INFO) change nothing.
        let (outcome, _) = run(
            &mut ice,
            now,
            &Check {
                extra: Some(0xc057),
                use_candidate: true,
                ..Check::default()
            },
            "198.51.100.7:50000",
        );
        assert!(matches!(
            outcome,
            Outcome::Answer {
                nominated: Some(_),
                ..
            }
        ));
        assert_eq!(ice.stats().role_conflicts, 1);
        assert_eq!(ice.stats().unknown_attributes, 1);
    }

    #[test]
    fn an_ice_restart_takes_new_credentials_and_keeps_the_pair_until_renominated() {
        let mut ice = agent(Some("brws"));
        let now = Instant::now();
        let first: SocketAddr = "198.51.100.7:50000".parse().unwrap();
        run(
            &mut ice,
            now,
            &Check {
                use_candidate: true,
                ..Check::default()
            },
            "198.51.100.7:50000",
        );
        ice.restart(Credentials {
            local_ufrag: "fnt9".into(),
            local_pwd: "restarted-password-22c".into(),
            remote_ufrag: Some("brw2".into()),
        });
        assert_eq!(
            ice.nominated(),
            Some(first),
            "media keeps flowing meanwhile"
        );
        let old = Check {
            use_candidate: true,
            ..Check::default()
        };
        let (outcome, _) = run(&mut ice, now, &old, "203.0.113.9:41000");
        assert_eq!(
            outcome,
            Outcome::Dropped(Unanswered::UnknownUser),
            "old credentials are gone"
        );
        let new = Check {
            username: "fnt9:brw2",
            pwd: "restarted-password-22c",
            use_candidate: true,
            ..Check::default()
        };
        let (outcome, _) = run(&mut ice, now, &new, "203.0.113.9:41000");
        assert!(matches!(
            outcome,
            Outcome::Answer {
                nominated: Some(_),
                ..
            }
        ));
        assert_eq!(ice.nominated(), Some("203.0.113.9:41000".parse().unwrap()));
    }

    #[test]
    fn responses_and_small_buffers_are_not_answered() {
        let mut ice = agent(None);
        let bytes = Check::default().bytes();
        let request = parse(&bytes).unwrap();
        let mut small = [0u8; 40];
        assert_eq!(
            ice.handle(
                Instant::now(),
                &request,
                "198.51.100.7:50000".parse().unwrap(),
                &mut small
            ),
            Outcome::Dropped(Unanswered::NoRoom)
        );
        let mut out = [0u8; 256];
        let len = stun::write_binding_success(
            &mut out,
            &request,
            "198.51.100.7:50000".parse().unwrap(),
            &IntegrityKey::new(LOCAL_PWD.as_bytes()),
        )
        .unwrap();
        let response = parse(&out[..len]).unwrap();
        let mut answer = [0u8; 256];
        assert_eq!(
            ice.handle(
                Instant::now(),
                &response,
                "198.51.100.7:50000".parse().unwrap(),
                &mut answer
            ),
            Outcome::Dropped(Unanswered::NotARequest)
        );
    }
}
