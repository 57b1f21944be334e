//! A recording's stored record and its state machine, as plain data: every transition is
//! a method that takes the time as an input and either changes the record or says why it
//! may not. The service around it reads, decides here, and writes with compare-and-swap.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::{MeetingId, RecordingId, UnixMillis};
use crate::service::ServiceError;

/// Format version of the records this module writes.
pub(super) const RECORD_VERSION: u32 = 1;

/// Longest error text kept from a failed attempt: workers may pass FFmpeg's last lines,
/// and a record must stay small (etcd values are read whole on every claim).
pub const MAX_ERROR_BYTES: usize = 2048;

/// Where a recording is in its life (the proto's `RecordingState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingState {
    /// Media is being recorded.
    Recording,
    /// Stopped: waiting for its last chunks to settle (`due_at`), then for a worker.
    Pending,
    /// A worker holds a claim and is stitching it.
    Stitching,
    /// The file is in object storage.
    Ready,
    /// Every attempt failed.
    Failed,
}

impl RecordingState {
    pub const ALL: [RecordingState; 5] = [
        RecordingState::Recording,
        RecordingState::Pending,
        RecordingState::Stitching,
        RecordingState::Ready,
        RecordingState::Failed,
    ];

    /// The proto's name without its prefix (`READY`), for messages and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            RecordingState::Recording => "RECORDING",
            RecordingState::Pending => "PENDING",
            RecordingState::Stitching => "STITCHING",
            RecordingState::Ready => "READY",
            RecordingState::Failed => "FAILED",
        }
    }
}

/// The claim a worker holds on a STITCHING recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// 128 random bits: a worker proves it holds the claim by quoting it.
    pub id: String,
    pub worker: String,
    /// Past this, another worker may take the job over.
    pub lease_expires_at: UnixMillis,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "end", rename_all = "snake_case")]
pub enum AttemptEnd {
    /// The worker reported success: the recording became READY.
    Succeeded { at: UnixMillis },
    /// The worker reported a failure; `then` is the state that answer led to (PENDING for
    /// a retry, FAILED when no attempt was left), which a repeated report gets again.
    Failed {
        at: UnixMillis,
        error: String,
        then: RecordingState,
    },
    /// The worker stopped renewing its lease and the job was claimed again (or given up).
    Expired { at: UnixMillis },
}

/// One stitching attempt: one claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub claim: String,
    pub worker: String,
    pub claimed_at: UnixMillis,
    /// `None` while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<AttemptEnd>,
}

/// What a successful attempt produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// The object-store key of the file.
    pub key: String,
    pub bytes: u64,
    pub duration_ms: u64,
}

/// `keys::recording`: one recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordingRecord {
    pub(super) version: u32,
    pub id: RecordingId,
    pub meeting: MeetingId,
    pub state: RecordingState,
    /// `None` only for a recording started by a control plane that kept no records (its
    /// stop created the record).
    pub started_at: Option<UnixMillis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<UnixMillis>,
    /// PENDING: a worker may claim it from then on (after the settle delay that lets the
    /// recorders upload the chunks that were open, or after a retry's backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<UnixMillis>,
    /// The meeting's placement epoch when the recording started (0: not placed yet); `None`
    /// in records written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement_epoch: Option<u64>,
    /// Set at the stop: one forwarder held the meeting from the start to the stop (its
    /// placement did not move), so its recorder's seal is all the first stitching attempt
    /// waits for; it may be due before `due_at` ([`RecordingRecord::may_seal_early`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sealable: bool,
    /// STITCHING: the claim in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<Claim>,
    /// Of the attempt under way (or the last), 0.0 to 1.0.
    #[serde(default)]
    pub progress: f64,
    /// Every attempt, oldest first; never more than the configured maximum.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    /// Why the last failed attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// READY: the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Output>,
}

/// `keys::stitch_job`: a job not yet done, and when it may next be claimed (PENDING: its
/// `due_at`; STITCHING: its lease's expiry), or earlier once its recording is sealed
/// (`sealable`: [`RecordingRecord::may_seal_early`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct JobEntry {
    pub(super) version: u32,
    pub(super) claimable_at: UnixMillis,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) sealable: bool,
}

/// `keys::meeting_recording`: the entry of a recording in its meeting's index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct IndexEntry {
    pub(super) version: u32,
}

/// The tuning the transitions depend on.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rules {
    pub(super) lease: Duration,
    pub(super) max_attempts: u32,
    pub(super) retry_backoff: Duration,
}

/// What a claim decided about one recording.
#[derive(Debug, PartialEq)]
pub(super) enum ClaimOutcome {
    /// Claimed: the record is STITCHING under the new claim.
    Claimed,
    /// Its last worker's lease expired with no attempt left: the record is FAILED.
    GaveUp,
    /// Not claimable now (not due, a live claim, or over).
    NotDue,
}

/// What a completion answers.
#[derive(Debug, PartialEq)]
pub(super) enum Completion {
    /// The record changed to this state.
    Changed(RecordingState),
    /// A repeat of a completion already recorded: nothing changes, same answer.
    Repeated(RecordingState),
}

impl RecordingRecord {
    /// A recording that started at `now`.
    pub fn started(id: RecordingId, meeting: MeetingId, now: UnixMillis) -> Self {
        RecordingRecord {
            version: RECORD_VERSION,
            id,
            meeting,
            state: RecordingState::Recording,
            started_at: Some(now),
            stopped_at: None,
            due_at: None,
            placement_epoch: None,
            sealable: false,
            claim: None,
            progress: 0.0,
            attempts: Vec::new(),
            error: None,
            output: None,
        }
    }

    /// A recording that stopped at `now` without a record: started before records were
    /// kept. Its chunks are in object storage all the same, so it gets a job.
    pub fn stopped_without_record(
        id: RecordingId,
        meeting: MeetingId,
        now: UnixMillis,
        settle: Duration,
    ) -> Self {
        let mut record = Self::started(id, meeting, now);
        record.started_at = None;
        // Where it was recorded is unknown: no early start on seals.
        record.stop(now, settle, 0);
        record
    }

    /// RECORDING → PENDING, due once the chunks that were open have had `settle` to
    /// upload, or earlier when sealed if the meeting's placement is still at the epoch it
    /// had at the start (`placement_epoch`: now; 0 if not placed). `false` (and no change)
    /// in any other state.
    pub fn stop(&mut self, now: UnixMillis, settle: Duration, placement_epoch: u64) -> bool {
        if self.state != RecordingState::Recording {
            return false;
        }
        self.state = RecordingState::Pending;
        self.stopped_at = Some(now);
        self.due_at = Some(now.saturating_add(settle));
        // Placed once during the recording (0 then 1), or not moved since the start. A
        // move (failover) means a second forwarder and recorder, and the first may hold
        // chunks that no listing shows yet and that it will never seal.
        self.sealable = self
            .placement_epoch
            .is_some_and(|start| placement_epoch == start || (start == 0 && placement_epoch == 1));
        true
    }

    /// Whether the job may be due before `due_at`, once every recorder sealed it: only
    /// the first attempt after a stop that [`stop`](Self::stop) found sealable (a retry
    /// waits out its backoff).
    pub fn may_seal_early(&self) -> bool {
        self.state == RecordingState::Pending && self.sealable && self.attempts.is_empty()
    }

    /// When a worker may next claim it; `None` once it is READY or FAILED (no job).
    pub fn claimable_at(&self) -> Option<UnixMillis> {
        match self.state {
            RecordingState::Pending => self.due_at,
            RecordingState::Stitching => self.claim.as_ref().map(|c| c.lease_expires_at),
            RecordingState::Recording | RecordingState::Ready | RecordingState::Failed => None,
        }
    }

    /// Attempts started so far.
    pub fn attempt_count(&self) -> u32 {
        u32::try_from(self.attempts.len()).unwrap_or(u32::MAX)
    }

    /// A claim by `worker` at `now` with the fresh id `claim`: a due PENDING recording
    /// (or one not yet due that every recorder `sealed`, if it
    /// [may be due early](Self::may_seal_early)), or a STITCHING one whose lease expired
    /// (that attempt ends as expired). With no attempt left, an expired one is given up
    /// instead (FAILED).
    pub(super) fn claim(
        &mut self,
        worker: &str,
        claim: String,
        now: UnixMillis,
        sealed: bool,
        rules: &Rules,
    ) -> ClaimOutcome {
        match self.state {
            RecordingState::Pending if self.due_at.is_some_and(|due| due <= now) => {}
            RecordingState::Pending if sealed && self.may_seal_early() => {}
            RecordingState::Stitching
                if self
                    .claim
                    .as_ref()
                    .is_some_and(|c| c.lease_expires_at <= now) =>
            {
                let worker = self.claim.take().map(|c| c.worker).unwrap_or_default();
                if let Some(last) = self.attempts.last_mut() {
                    last.end = Some(AttemptEnd::Expired { at: now });
                }
                if self.attempt_count() >= rules.max_attempts {
                    self.fail(format!(
                        "attempt {} by {worker}: the worker stopped renewing its claim, and \
                         no attempt is left",
                        self.attempts.len()
                    ));
                    return ClaimOutcome::GaveUp;
                }
            }
            _ => return ClaimOutcome::NotDue,
        }
        // A PENDING record has attempts left by construction, unless the limit was lowered
        // since it was written.
        if self.attempt_count() >= rules.max_attempts {
            self.fail(format!(
                "no attempt left ({} made, at most {})",
                self.attempts.len(),
                rules.max_attempts
            ));
            return ClaimOutcome::GaveUp;
        }
        self.state = RecordingState::Stitching;
        self.due_at = None;
        self.progress = 0.0;
        self.claim = Some(Claim {
            id: claim.clone(),
            worker: worker.to_owned(),
            lease_expires_at: now.saturating_add(rules.lease),
        });
        self.attempts.push(Attempt {
            claim,
            worker: worker.to_owned(),
            claimed_at: now,
            end: None,
        });
        ClaimOutcome::Claimed
    }

    /// Progress of the attempt under `claim`; renews its lease. A claim expired but not
    /// yet taken over still holds: the worker is slow, not gone.
    pub(super) fn report(
        &mut self,
        claim: &str,
        progress: f64,
        now: UnixMillis,
        rules: &Rules,
    ) -> Result<(), ServiceError> {
        let current = self.current_claim(claim)?;
        current.lease_expires_at = now.saturating_add(rules.lease);
        self.progress = progress;
        Ok(())
    }

    /// The end of the attempt under `claim`: `Ok(output)` makes it READY; `Err(error)`
    /// makes it PENDING again after a backoff (doubling with each failed attempt) while
    /// attempts remain, else FAILED. A repeat of a completion already recorded answers
    /// what the first did and changes nothing.
    pub(super) fn complete(
        &mut self,
        claim: &str,
        result: Result<Output, String>,
        now: UnixMillis,
        rules: &Rules,
    ) -> Result<Completion, ServiceError> {
        if self.current_claim(claim).is_err() {
            return match self.attempts.iter().find(|a| a.claim == claim) {
                Some(Attempt {
                    end: Some(AttemptEnd::Succeeded { .. }),
                    ..
                }) => Ok(Completion::Repeated(RecordingState::Ready)),
                Some(Attempt {
                    end: Some(AttemptEnd::Failed { then, .. }),
                    ..
                }) => Ok(Completion::Repeated(*then)),
                _ => Err(ServiceError::ClaimLost(self.id.clone())),
            };
        }
        self.claim = None;
        let end = match result {
            Ok(output) => {
                self.state = RecordingState::Ready;
                self.progress = 1.0;
                self.output = Some(output);
                AttemptEnd::Succeeded { at: now }
            }
            Err(error) => {
                let error = truncate(error, MAX_ERROR_BYTES);
                let made = self.attempt_count();
                if made >= rules.max_attempts {
                    self.fail(format!("attempt {made} of {made}: {error}"));
                } else {
                    // 1x, 2x, 4x ... the backoff: a store or FFmpeg hiccup gets a quick
                    // retry, a persistent fault does not spin the workers.
                    let factor = 1u32 << made.saturating_sub(1).min(16);
                    self.state = RecordingState::Pending;
                    self.due_at = Some(now.saturating_add(rules.retry_backoff * factor));
                    self.error = Some(error.clone());
                }
                AttemptEnd::Failed {
                    at: now,
                    error,
                    then: self.state,
                }
            }
        };
        if let Some(last) = self.attempts.last_mut() {
            last.end = Some(end);
        }
        Ok(Completion::Changed(self.state))
    }

    /// The claim in force if it is `claim`, else the claim was lost.
    fn current_claim(&mut self, claim: &str) -> Result<&mut Claim, ServiceError> {
        match (&self.state, &mut self.claim) {
            (RecordingState::Stitching, Some(current)) if current.id == claim => Ok(current),
            _ => Err(ServiceError::ClaimLost(self.id.clone())),
        }
    }

    fn fail(&mut self, error: String) {
        self.state = RecordingState::Failed;
        self.due_at = None;
        self.claim = None;
        self.error = Some(error);
    }
}

/// `text` cut to at most `max` bytes at a character boundary.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: UnixMillis = UnixMillis(1_700_000_000_000);
    const SETTLE: Duration = Duration::from_secs(10);
    const RULES: Rules = Rules {
        lease: Duration::from_secs(30),
        max_attempts: 3,
        retry_backoff: Duration::from_secs(5),
    };

    fn at(ms: u64) -> UnixMillis {
        UnixMillis(T0.0 + ms)
    }

    fn stopped() -> RecordingRecord {
        let mut r = RecordingRecord::started(
            RecordingId::new("rec").unwrap(),
            MeetingId::new("m").unwrap(),
            T0,
        );
        assert!(r.stop(at(1_000), SETTLE, 0));
        r
    }

    fn output() -> Output {
        Output {
            key: "recordings/rec/output.webm".into(),
            bytes: 10,
            duration_ms: 1_000,
        }
    }

    #[test]
    fn stop_only_from_recording_and_due_after_the_settle_delay() {
        let mut r = stopped();
        assert_eq!(r.state, RecordingState::Pending);
        assert_eq!(r.stopped_at, Some(at(1_000)));
        assert_eq!(r.due_at, Some(at(11_000)));
        let before = r.clone();
        assert!(!r.stop(at(2_000), SETTLE, 0));
        assert_eq!(r, before);
    }

    #[test]
    fn sealed_early_only_for_a_first_attempt_on_one_forwarder() {
        let sealable = |start: Option<u64>, stop: u64| {
            let mut r = RecordingRecord::started(
                RecordingId::new("rec").unwrap(),
                MeetingId::new("m").unwrap(),
                T0,
            );
            r.placement_epoch = start;
            assert!(r.stop(at(1_000), SETTLE, stop));
            r.may_seal_early()
        };
        assert!(sealable(Some(1), 1), "not moved");
        assert!(sealable(Some(4), 4), "moved before the start only");
        assert!(sealable(Some(0), 1), "placed during the recording");
        assert!(sealable(Some(0), 0), "never placed");
        assert!(!sealable(Some(1), 2), "failed over while recorded");
        assert!(!sealable(Some(0), 2), "placed, then failed over");
        assert!(!sealable(None, 1), "a record from before epochs were kept");

        let mut r = stopped();
        r.placement_epoch = Some(1);
        r.state = RecordingState::Recording;
        assert!(r.stop(at(1_000), SETTLE, 1));
        // Sealed: claimable before its due time; not sealed: not.
        assert_eq!(
            r.claim("w", "c0".into(), at(2_000), false, &RULES),
            ClaimOutcome::NotDue
        );
        assert_eq!(
            r.claim("w", "c1".into(), at(2_000), true, &RULES),
            ClaimOutcome::Claimed
        );
        // A retry waits out its backoff, seals or not.
        r.complete("c1", Err("ffmpeg died".into()), at(3_000), &RULES)
            .unwrap();
        assert!(!r.may_seal_early());
        assert_eq!(
            r.claim("w", "c2".into(), at(4_000), true, &RULES),
            ClaimOutcome::NotDue
        );
        assert_eq!(
            r.claim("w", "c2".into(), at(8_000), false, &RULES),
            ClaimOutcome::Claimed
        );
    }

    #[test]
    fn claim_waits_for_due_and_for_an_expired_lease() {
        let mut r = stopped();
        assert_eq!(
            r.claim("w1", "c1".into(), at(10_999), false, &RULES),
            ClaimOutcome::NotDue
        );
        assert_eq!(
            r.claim("w1", "c1".into(), at(11_000), false, &RULES),
            ClaimOutcome::Claimed
        );
        assert_eq!(r.claimable_at(), Some(at(41_000)));
        assert_eq!(
            r.claim("w2", "c2".into(), at(40_999), false, &RULES),
            ClaimOutcome::NotDue
        );
        assert_eq!(
            r.claim("w2", "c2".into(), at(41_000), false, &RULES),
            ClaimOutcome::Claimed
        );
        assert_eq!(r.attempts.len(), 2);
        assert_eq!(
            r.attempts[0].end,
            Some(AttemptEnd::Expired { at: at(41_000) })
        );
        assert!(matches!(
            r.report("c1", 0.5, at(41_001), &RULES),
            Err(ServiceError::ClaimLost(_))
        ));
        assert!(matches!(
            r.complete("c1", Ok(output()), at(41_001), &RULES),
            Err(ServiceError::ClaimLost(_))
        ));
    }

    #[test]
    fn failures_back_off_doubling_then_fail() {
        let mut r = stopped();
        let mut now = at(11_000);
        for (attempt, backoff) in [(1, 5_000), (2, 10_000)] {
            let claim = format!("c{attempt}");
            assert_eq!(
                r.claim("w", claim.clone(), now, false, &RULES),
                ClaimOutcome::Claimed
            );
            assert_eq!(
                r.complete(&claim, Err("ffmpeg died".into()), now, &RULES)
                    .unwrap(),
                Completion::Changed(RecordingState::Pending)
            );
            assert_eq!(r.due_at, Some(UnixMillis(now.0 + backoff)));
            assert_eq!(r.error.as_deref(), Some("ffmpeg died"));
            now = UnixMillis(now.0 + backoff);
        }
        assert_eq!(
            r.claim("w", "c3".into(), now, false, &RULES),
            ClaimOutcome::Claimed
        );
        assert_eq!(
            r.complete("c3", Err("again".into()), now, &RULES).unwrap(),
            Completion::Changed(RecordingState::Failed)
        );
        assert_eq!(r.claimable_at(), None);
        assert!(r.error.as_deref().unwrap().contains("again"));
        // Repeats answer what the first completion of each claim answered.
        assert_eq!(
            r.complete("c1", Ok(output()), now, &RULES).unwrap(),
            Completion::Repeated(RecordingState::Pending)
        );
        assert_eq!(
            r.complete("c3", Err("x".into()), now, &RULES).unwrap(),
            Completion::Repeated(RecordingState::Failed)
        );
        assert_eq!(
            r.claim("w", "c4".into(), UnixMillis(u64::MAX), false, &RULES),
            ClaimOutcome::NotDue
        );
    }

    #[test]
    fn an_expired_last_attempt_gives_up() {
        let mut r = stopped();
        let rules = Rules {
            max_attempts: 1,
            ..RULES
        };
        assert_eq!(
            r.claim("w1", "c1".into(), at(11_000), false, &rules),
            ClaimOutcome::Claimed
        );
        assert_eq!(
            r.claim("w2", "c2".into(), at(41_000), false, &rules),
            ClaimOutcome::GaveUp
        );
        assert_eq!(r.state, RecordingState::Failed);
        assert_eq!(r.attempts.len(), 1);
        assert!(r.error.as_deref().unwrap().contains("w1"));
    }

    #[test]
    fn success_is_ready_and_repeats_answer_ready() {
        let mut r = stopped();
        r.claim("w", "c1".into(), at(11_000), false, &RULES);
        r.report("c1", 0.25, at(20_000), &RULES).unwrap();
        assert_eq!(r.claimable_at(), Some(at(50_000)), "the lease is renewed");
        assert_eq!(
            r.complete("c1", Ok(output()), at(21_000), &RULES).unwrap(),
            Completion::Changed(RecordingState::Ready)
        );
        let ready = r.clone();
        assert_eq!(
            r.complete("c1", Ok(output()), at(22_000), &RULES).unwrap(),
            Completion::Repeated(RecordingState::Ready)
        );
        assert_eq!(r, ready);
        assert!(matches!(
            r.report("c1", 0.5, at(22_000), &RULES),
            Err(ServiceError::ClaimLost(_))
        ));
        assert!(matches!(
            r.complete("never", Ok(output()), at(22_000), &RULES),
            Err(ServiceError::ClaimLost(_))
        ));
    }

    #[test]
    fn long_errors_are_cut_at_a_character_boundary() {
        let text = "é".repeat(MAX_ERROR_BYTES);
        let cut = truncate(text, MAX_ERROR_BYTES);
        assert_eq!(cut.len(), MAX_ERROR_BYTES);
        assert_eq!(truncate("é".into(), 1), "");
        assert_eq!(truncate("abc".into(), 5), "abc");
    }
}
