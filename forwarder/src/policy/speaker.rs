//! Dominant speaker detection from the client-to-mixer audio level header extension
//! (RFC 6464, carried as an RFC 8285 element).
//!
//! Every audio packet of a WebRTC sender carries the level of its frame in -dBov (0 is the
//! loudest, 127 digital silence). The forwarder reads it with [`audio_level`] without
//! touching the (encrypted or not) payload, and feeds it to one [`SpeakerDetector`] per
//! meeting, which decides on a fixed tick who the dominant speaker is (the one whose
//! video a layout shows large, whose layers get bandwidth first).
//!
//! # The score
//!
//! A simplification of Volfin & Cohen, "Dominant speaker identification for multipoint
//! videoconferencing" (IEEE 2012), the algorithm behind Jitsi's
//! `DominantSpeakerIdentification`: like theirs, it thresholds levels into binary
//! activity against each speaker's own noise floor, and compares speakers over more than
//! one time scale so that a long talk spurt beats a short one.
//!
//! 1. **Frame activity.** A frame is active if its level is at most
//!    [`MAX_SPEECH_LEVEL`] and at least [`NOISE_MARGIN_DB`] louder than the speaker's
//!    noise floor: the quietest level the speaker sent over the last [`FLOOR_WINDOW_TICKS`]
//!    ticks. The floor makes a participant with a fan or street noise at a constant
//!    -45 dBov count as silent, while their speech, 10+ dB above it, still counts.
//! 2. **Tick activity.** Every [`TICK`], each speaker's share of active frames in the
//!    tick, in thousandths; no packets (DTX, muted) is 0.
//! 3. **Medium-term score.** The mean tick activity over the last [`MEDIUM_TICKS`] ticks
//!    (1.2 s): long enough that a word or a cough does not count, short enough to follow
//!    turn-taking.
//! 4. **Decision with hysteresis.** The challenger (highest score other than the dominant
//!    speaker) replaces the dominant speaker only if its score is at least
//!    [`MIN_ACTIVITY`] and beats the dominant's by [`SWITCH_MARGIN`] on
//!    [`HOLD_TICKS`] consecutive ticks (≥ 1 s). Silence beats nobody, so the last dominant
//!    speaker stays until someone else really talks.
//!
//! An interjection (a few hundred ms) or backchannel ("mm-hm") while the dominant speaker
//! continues never reaches the margin; a speaker who takes over is picked about 1.5–2 s
//! after starting (score ramp plus hold), which is what meeting UIs expect.
//!
//! **Known limit.** The noise floor follows a rise in background noise only after
//! [`FLOOR_WINDOW_TICKS`] (3 s): a participant who unmutes into a loud room counts as
//! talking for up to 3 s and can take over a meeting in which nobody else talks.

use std::time::{Duration, Instant};

use crate::rtp::{extension_elements, RtpHeader};

/// Evaluation period. Jitsi and mediasoup's `ActiveSpeakerObserver` both decide every
/// 300 ms: faster does not help because decisions need a second of evidence anyway, and
/// each change is an event sent to every participant.
pub const TICK: Duration = Duration::from_millis(300);

/// RFC 6464 §3: the level is -dBov, 0..=127, 127 meaning digital silence.
pub const SILENCE_LEVEL: u8 = 127;

/// Quietest level (in -dBov) that can count as speech. Conversational speech captured by
/// a headset or laptop microphone with automatic gain control sits around -20 to -40 dBov;
/// below -70 dBov it is not intelligible enough to matter for "who is talking".
pub const MAX_SPEECH_LEVEL: u8 = 70;

/// How much louder than the speaker's own noise floor a frame must be to count as speech.
/// Stationary noise varies by a few dB from frame to frame; the energy of speech rises
/// 10–30 dB above the pauses between syllables, so 10 dB separates them.
pub const NOISE_MARGIN_DB: u8 = 10;

/// Ticks over which the noise floor is the quietest level (10 × 300 ms = 3 s). Natural
/// speech pauses (between phrases, to breathe) more often than that, so the floor does
/// not creep up to the level of continuous speech; and a change in background noise is
/// learnt within 3 s.
pub const FLOOR_WINDOW_TICKS: usize = 10;

/// Ticks of the medium-term score (4 × 300 ms = 1.2 s).
pub const MEDIUM_TICKS: usize = 4;

/// Score (thousandths) a challenger needs at least: speech in 40% of the last 1.2 s. Talk
/// spurts are voiced 50–80% of the time, short noises and single words are far below.
pub const MIN_ACTIVITY: u16 = 400;

/// Score (thousandths) by which a challenger must beat the dominant speaker: a quarter of
/// the window. Two people talking over each other at similar rates do not flip the
/// decision back and forth.
pub const SWITCH_MARGIN: u16 = 250;

/// Consecutive ticks the challenger must keep winning (4 × 300 ms = 1.2 s ≥ 1 s). An
/// interjection of up to about 600 ms cannot win four windows in a row.
pub const HOLD_TICKS: u8 = 4;

/// Fewest frames a tick's activity is divided by. At the usual 20 ms packetization a tick
/// has 15 frames; 5 is a tick at 60 ms packetization. Dividing by at least 5 keeps a
/// stray packet or two (DTX comfort noise, a tick edge) from scoring 100%.
pub const MIN_FRAMES_PER_TICK: u16 = 5;

/// Reads the RFC 6464 audio level element with extension id `ext_id` (as negotiated with
/// `urn:ietf:params:rtp-hdrext:ssrc-audio-level`) from an RTP packet's RFC 8285 header
/// extension. Returns `(voice_activity, level)`: the V flag and the level in -dBov
/// (0..=127). `None` if the packet has no such element or it is empty.
///
/// The V flag is only meaningful when the sender negotiated `vad=on`; the detector ignores
/// it. A caller that trusts it can pass [`SILENCE_LEVEL`] for frames with V = 0.
pub fn audio_level(packet: &[u8], header: &RtpHeader, ext_id: u8) -> Option<(bool, u8)> {
    if ext_id == 0 {
        return None;
    }
    let (_, data) = extension_elements(packet, header).find(|&(id, _)| id == ext_id)?;
    let byte = *data.first()?;
    Some((byte & 0x80 != 0, byte & 0x7f))
}

/// A change of dominant speaker, reported by [`SpeakerDetector::poll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DominantSpeakerChange {
    /// The previous dominant speaker, if any.
    pub previous: Option<usize>,
    /// The new one; `None` when the dominant speaker was removed and nobody replaces them.
    pub current: Option<usize>,
}

/// Marks an empty entry of the floor window.
const NO_LEVEL: u8 = u8::MAX;

#[derive(Debug, Clone, Copy)]
struct Speaker {
    present: bool,
    /// Frames and active frames in the current tick.
    frames: u16,
    active: u16,
    /// Quietest level of the current tick (largest -dBov), `NO_LEVEL` if no frame yet.
    quietest: u8,
    /// Quietest level of each of the last ticks.
    floor_window: [u8; FLOOR_WINDOW_TICKS],
    /// Quietest level over `floor_window`, `NO_LEVEL` if it is empty.
    floor: u8,
    /// Tick activity in thousandths for the last ticks.
    activity: [u16; MEDIUM_TICKS],
    /// Mean of `activity`.
    score: u16,
}

impl Speaker {
    const EMPTY: Speaker = Speaker {
        present: false,
        frames: 0,
        active: 0,
        quietest: NO_LEVEL,
        floor_window: [NO_LEVEL; FLOOR_WINDOW_TICKS],
        floor: NO_LEVEL,
        activity: [0; MEDIUM_TICKS],
        score: 0,
    };

    fn on_level(&mut self, level: u8) {
        self.present = true;
        self.frames = self.frames.saturating_add(1);
        self.quietest = if self.quietest == NO_LEVEL {
            level
        } else {
            self.quietest.max(level)
        };
        let floor = if self.floor == NO_LEVEL {
            self.quietest
        } else {
            self.floor.max(self.quietest)
        };
        if level <= MAX_SPEECH_LEVEL && level.saturating_add(NOISE_MARGIN_DB) <= floor {
            self.active = self.active.saturating_add(1);
        }
    }

    fn end_tick(&mut self, slot: usize) {
        let activity = (u32::from(self.active) * 1000
            / u32::from(self.frames.max(MIN_FRAMES_PER_TICK)))
        .min(1000) as u16;
        if let Some(a) = self.activity.get_mut(slot % MEDIUM_TICKS) {
            *a = activity;
        }
        let sum: u32 = self.activity.iter().map(|&a| u32::from(a)).sum();
        self.score = (sum / MEDIUM_TICKS as u32) as u16;
        if let Some(f) = self.floor_window.get_mut(slot % FLOOR_WINDOW_TICKS) {
            *f = self.quietest;
        }
        self.floor = self
            .floor_window
            .iter()
            .copied()
            .filter(|&l| l != NO_LEVEL)
            .max()
            .unwrap_or(NO_LEVEL);
        self.frames = 0;
        self.active = 0;
        self.quietest = NO_LEVEL;
    }
}

/// Picks the dominant speaker among up to `capacity` participants of a meeting, indexed
/// densely `0..capacity` by the caller (see the module docs for the algorithm).
pub struct SpeakerDetector {
    speakers: Box<[Speaker]>,
    dominant: Option<usize>,
    /// A dominant speaker removed since the last tick, to report.
    removed: Option<usize>,
    /// The challenger winning the last ticks, and for how many.
    challenger: Option<(usize, u8)>,
    next_tick: Option<Instant>,
    ticks: usize,
}

impl std::fmt::Debug for SpeakerDetector {
    // Not derived: one entry per participant slot.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpeakerDetector")
            .field("capacity", &self.speakers.len())
            .field("dominant", &self.dominant)
            .field("challenger", &self.challenger)
            .field("next_tick", &self.next_tick)
            .finish_non_exhaustive()
    }
}

impl SpeakerDetector {
    /// A detector for participants `0..capacity` (state allocated now, 28 bytes each).
    pub fn new(capacity: usize) -> Self {
        SpeakerDetector {
            speakers: vec![Speaker::EMPTY; capacity].into_boxed_slice(),
            dominant: None,
            removed: None,
            challenger: None,
            next_tick: None,
            ticks: 0,
        }
    }

    /// One audio frame's level (RFC 6464 -dBov, 0..=127; larger values count as 127) from
    /// participant `index`, at `now`. Indexes beyond the capacity are ignored.
    pub fn on_audio_level(&mut self, index: usize, level: u8, now: Instant) {
        self.next_tick.get_or_insert(now + TICK);
        if let Some(s) = self.speakers.get_mut(index) {
            s.on_level(level.min(SILENCE_LEVEL));
        }
    }

    /// Forgets participant `index` (it left). If it was the dominant speaker, the next
    /// tick reports the change.
    pub fn remove(&mut self, index: usize) {
        if let Some(s) = self.speakers.get_mut(index) {
            *s = Speaker::EMPTY;
        }
        if self.dominant == Some(index) {
            self.dominant = None;
            self.removed = Some(index);
        }
        if self.challenger.is_some_and(|(c, _)| c == index) {
            self.challenger = None;
        }
    }

    /// The current dominant speaker.
    pub fn dominant(&self) -> Option<usize> {
        self.dominant
    }

    /// When the next tick is due (`None` until the first level or poll).
    pub fn next_timeout(&self) -> Option<Instant> {
        self.next_tick
    }

    /// Evaluates one tick if one is due at `now`, and returns the change of dominant
    /// speaker it decided, if any: at most one per tick.
    pub fn poll(&mut self, now: Instant) -> Option<DominantSpeakerChange> {
        let due = *self.next_tick.get_or_insert(now + TICK);
        if now < due {
            return None;
        }
        // A late poll evaluates one tick, not the ticks it missed: the levels since the
        // last tick are all there is to evaluate.
        let next = due + TICK;
        self.next_tick = Some(if next <= now { now + TICK } else { next });
        let slot = self.ticks;
        self.ticks = self.ticks.wrapping_add(1);
        for s in self.speakers.iter_mut().filter(|s| s.present) {
            s.end_tick(slot);
        }
        self.decide()
    }

    fn decide(&mut self) -> Option<DominantSpeakerChange> {
        let dominant_score = self
            .dominant
            .and_then(|d| self.speakers.get(d))
            .map_or(0, |s| s.score);
        // Highest score other than the dominant; ties go to the lowest index.
        let best = self
            .speakers
            .iter()
            .enumerate()
            .filter(|&(i, s)| s.present && Some(i) != self.dominant)
            .fold(None::<(usize, u16)>, |best, (i, s)| match best {
                Some((_, score)) if score >= s.score => best,
                _ => Some((i, s.score)),
            });
        let winning = best.filter(|&(_, score)| {
            score >= MIN_ACTIVITY && score >= dominant_score.saturating_add(SWITCH_MARGIN)
        });
        let mut change = self.removed.take().map(|previous| DominantSpeakerChange {
            previous: Some(previous),
            current: None,
        });
        match winning {
            Some((index, _)) => {
                let held = match self.challenger {
                    Some((c, n)) if c == index => n.saturating_add(1),
                    _ => 1,
                };
                self.challenger = Some((index, held));
                if held >= HOLD_TICKS {
                    let previous = change.map_or(self.dominant, |c| c.previous);
                    self.dominant = Some(index);
                    self.challenger = None;
                    change = Some(DominantSpeakerChange {
                        previous,
                        current: Some(index),
                    });
                }
            }
            None => self.challenger = None,
        }
        change
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    const FRAME: Duration = Duration::from_millis(20);

    fn packet_with_level(ext_id: u8, byte: u8, two_byte: bool) -> Vec<u8> {
        let mut p = vec![0x90, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        if two_byte {
            p.extend_from_slice(&[0x10, 0x00, 0, 1, ext_id, 1, byte, 0]);
        } else {
            // A 2-byte element with id 2 first, then the audio level (len field 0 = 1 byte).
            p.extend_from_slice(&[
                0xBE,
                0xDE,
                0,
                2,
                0x21,
                0xaa,
                0xbb,
                ext_id << 4,
                byte,
                0,
                0,
                0,
            ]);
        }
        p.extend_from_slice(&[0xf8, 0xff]);
        p
    }

    #[test]
    fn reads_the_audio_level_element() {
        let p = packet_with_level(1, 0x80 | 42, false);
        let h = RtpHeader::parse(&p).unwrap();
        assert_eq!(audio_level(&p, &h, 1), Some((true, 42)));
        assert_eq!(audio_level(&p, &h, 3), None);
        assert_eq!(audio_level(&p, &h, 0), None);
        let p = packet_with_level(5, 127, true);
        let h = RtpHeader::parse(&p).unwrap();
        assert_eq!(audio_level(&p, &h, 5), Some((false, 127)));
        let no_ext = [0x80, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xf8];
        let h = RtpHeader::parse(&no_ext).unwrap();
        assert_eq!(audio_level(&no_ext, &h, 1), None);
    }

    /// What one participant does during a stretch of the script.
    #[derive(Clone, Copy, PartialEq)]
    enum Act {
        /// Room background at about -85 dBov.
        Quiet,
        /// Talking: 200 ms syllables at -25..-33 dBov, 60 ms dips, a 300 ms pause every
        /// ~2.5 s.
        Talk,
        /// A fan: -45 dBov ± 4 dB, all the time.
        Noise,
        /// Muted: digital silence.
        Muted,
    }

    fn level(act: Act, frame: u64, rng: &mut StdRng) -> u8 {
        match act {
            Act::Quiet => 82 + rng.gen_range(0..10),
            Act::Noise => 41 + rng.gen_range(0..9),
            Act::Muted => 127,
            Act::Talk => {
                let in_phrase = frame % 125;
                let in_syllable = frame % 13;
                if in_phrase >= 110 {
                    82 + rng.gen_range(0..10)
                } else if in_syllable >= 10 {
                    60 + rng.gen_range(0..10)
                } else {
                    25 + rng.gen_range(0..9)
                }
            }
        }
    }

    /// Runs a script of (start ms, end ms, participant, act) overrides on top of each
    /// participant's default act, and returns the changes with their times.
    fn run(
        defaults: &[Act],
        script: &[(u64, u64, usize, Act)],
        total_ms: u64,
        seed: u64,
    ) -> Vec<(u64, DominantSpeakerChange)> {
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut d = SpeakerDetector::new(8);
        let mut changes = vec![];
        let frames = total_ms / 20;
        for f in 0..frames {
            let now = t0 + FRAME * f as u32;
            let ms = f * 20;
            for (p, &default) in defaults.iter().enumerate() {
                let act = script
                    .iter()
                    .rev()
                    .find(|&&(s, e, who, _)| who == p && (s..e).contains(&ms))
                    .map_or(default, |&(_, _, _, a)| a);
                let l = level(act, f, &mut rng);
                d.on_audio_level(p, l, now);
            }
            if let Some(c) = d.poll(now) {
                changes.push((ms, c));
            }
        }
        changes
    }

    const A: usize = 0;
    const B: usize = 1;
    const C: usize = 2;
    const D: usize = 3;

    #[test]
    fn scripted_conversation_changes_once_per_real_change() {
        use Act::*;
        let mut defaults = [Quiet; 4];
        defaults[C] = Noise;
        defaults[D] = Muted;
        let mut script = vec![
            // A talks 1-6 s.
            (1_000, 6_000, A, Talk),
            // B talks 6-16 s; A interjects 200 ms at 11 s.
            (6_000, 16_000, B, Talk),
            (11_000, 11_200, A, Talk),
            // Crosstalk 16-19 s: B continues, A backchannels 300 ms every second, D
            // (muted) unmutes for a 100 ms door slam.
            (16_000, 19_000, B, Talk),
            (16_500, 16_800, A, Talk),
            (17_500, 17_800, A, Talk),
            (18_500, 18_800, A, Talk),
            (17_000, 17_100, D, Talk),
            // A takes over 19-26 s; then everybody is quiet until 30 s.
            (19_000, 26_000, A, Talk),
        ];
        for seed in 0..20 {
            let changes = run(&defaults, &script, 30_000, seed);
            let who: Vec<_> = changes
                .iter()
                .map(|(_, c)| (c.previous, c.current))
                .collect();
            assert_eq!(
                who,
                vec![(None, Some(A)), (Some(A), Some(B)), (Some(B), Some(A))],
                "seed {seed}: {changes:?}"
            );
            for ((at, _), started) in changes.iter().zip([1_000u64, 6_000, 19_000]) {
                assert!(
                    (started + 1_000..=started + 2_500).contains(at),
                    "seed {seed}: change at {at} ms for a turn starting at {started} ms"
                );
            }
        }
        // Noise alone never becomes dominant, even with nobody else talking.
        script.clear();
        assert!(run(&defaults, &script, 10_000, 1).is_empty());
    }

    #[test]
    fn two_people_talking_at_once_do_not_flap() {
        use Act::*;
        let defaults = [Quiet, Quiet, Quiet, Quiet];
        let script = [(0, 20_000, A, Talk), (3_000, 20_000, B, Talk)];
        let changes = run(&defaults, &script, 20_000, 7);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].1.current, Some(A));
    }

    #[test]
    fn removing_the_dominant_speaker_is_reported() {
        use Act::*;
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(3);
        let mut d = SpeakerDetector::new(2);
        let mut now = t0;
        for f in 0..200 {
            now = t0 + FRAME * f;
            d.on_audio_level(
                A,
                level(if f < 50 { Quiet } else { Talk }, f.into(), &mut rng),
                now,
            );
            d.poll(now);
        }
        assert_eq!(d.dominant(), Some(A));
        d.remove(A);
        assert_eq!(d.dominant(), None);
        let due = d.next_timeout().unwrap();
        assert!(due > now);
        assert_eq!(
            d.poll(due),
            Some(DominantSpeakerChange {
                previous: Some(A),
                current: None
            })
        );
        assert_eq!(d.poll(due + TICK), None);
    }

    #[test]
    fn state_is_small() {
        assert_eq!(std::mem::size_of::<Speaker>(), 28);
    }

    #[test]
    fn out_of_range_indexes_are_ignored() {
        let t0 = Instant::now();
        let mut d = SpeakerDetector::new(0);
        d.on_audio_level(5, 20, t0);
        d.remove(5);
        assert_eq!(d.poll(t0 + TICK), None);
    }

    proptest! {
        /// Random levels from random participants at random times, polls at random times:
        /// no panic, at most one change per tick, changes are consistent with
        /// `dominant()`, and nobody replaces themselves.
        #[test]
        fn at_most_one_change_per_tick(
            events in proptest::collection::vec((0usize..10, any::<u8>(), 0u64..50, any::<bool>(), any::<bool>()), 1..600),
        ) {
            let t0 = Instant::now();
            let mut d = SpeakerDetector::new(8);
            let mut now = t0;
            let mut last_change_at: Option<Instant> = None;
            for (who, lvl, step, poll, remove) in events {
                now += Duration::from_millis(step);
                if remove && lvl < 8 {
                    d.remove(who);
                }
                d.on_audio_level(who, lvl, now);
                if poll {
                    let before = d.dominant();
                    if let Some(c) = d.poll(now) {
                        if let Some(prev) = last_change_at {
                            prop_assert!(now.duration_since(prev) >= TICK);
                        }
                        last_change_at = Some(now);
                        prop_assert_ne!(c.previous, c.current);
                        prop_assert_eq!(c.current, d.dominant());
                        prop_assert!(c.current.is_none_or(|i| i < 8));
                        prop_assert!(before.is_none() || c.previous == before);
                    } else {
                        prop_assert_eq!(before, d.dominant());
                    }
                    prop_assert_eq!(d.poll(now), None);
                }
            }
        }
    }
}
