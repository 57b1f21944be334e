//! The arrival window against the webrtc-rs transport-cc parser: what a sender's estimator
//! would read back from the feedback is what arrived, and when.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::rtcp::oracle::{self, Decoded};

const SENDER: Ssrc = Ssrc(0xFA40_0001);
const MEDIA: Ssrc = Ssrc(0x1234_5678);

/// Feeds a window and collects the feedback it writes, decoded by the oracle.
struct Receiver {
    window: ArrivalWindow,
    t0: Instant,
    /// Every packet's first arrival, by unwrapped sequence number: µs after `t0`, and how
    /// many distinct packets had arrived before it.
    arrived: BTreeMap<i64, (i64, usize)>,
    /// Unwrapped sequence numbers by their 16-bit form, for reading feedback back.
    unwrapped: HashMap<u16, i64>,
    /// When the first packet arrived, µs after `t0`: time zero of the feedback.
    epoch_us: Option<i64>,
    feedback: Vec<Decoded>,
    /// For each feedback, the arrivals recorded before it was written.
    arrived_before: Vec<usize>,
    statuses: Vec<Option<i16>>,
}

impl Receiver {
    fn new() -> Receiver {
        Receiver {
            window: ArrivalWindow::new(),
            t0: Instant::now(),
            arrived: BTreeMap::new(),
            unwrapped: HashMap::new(),
            epoch_us: None,
            feedback: Vec::new(),
            arrived_before: Vec::new(),
            statuses: vec![None; ARRIVAL_WINDOW],
        }
    }

    /// A packet numbered `sequence` (unwrapped, as the sender counts) arrives `at_us`
    /// after the start.
    fn arrive(&mut self, sequence: i64, at_us: i64) -> Arrival {
        let now = self.t0 + Duration::from_micros(at_us as u64);
        self.epoch_us.get_or_insert(at_us);
        let outcome = self.window.record(SeqNo(sequence as u16), now, Some(MEDIA));
        if let Arrival::New { .. } = outcome {
            let rank = self.arrived.len();
            self.arrived.entry(sequence).or_insert((at_us, rank));
        }
        self.unwrapped.insert(sequence as u16, sequence);
        outcome
    }

    /// Write every feedback packet waiting, each at most `limit` bytes.
    fn flush(&mut self, limit: usize) {
        let mut buf = vec![0u8; limit];
        while let Some(written) =
            self.window
                .write_feedback(&mut buf, SENDER, Ssrc(0), &mut self.statuses)
        {
            assert!(written.len <= limit);
            let decoded = oracle::decode(&buf[..written.len]).expect("the oracle reads it");
            assert_eq!(
                decoded.statuses.iter().filter(|s| s.is_some()).count(),
                written.received
            );
            assert!(
                decoded.statuses.last().is_some_and(|s| s.is_some()),
                "a feedback ends with a received packet: {decoded:?}"
            );
            self.feedback.push(decoded);
            self.arrived_before.push(self.arrived.len());
        }
        assert_eq!(self.window.pending(), 0, "flushed");
    }

    /// What the feedback reported, per unwrapped sequence number: the arrival in µs after
    /// `t0` for received ones, and the index of the feedback.
    fn reported(&self) -> Vec<(i64, Option<i64>, usize)> {
        let epoch = self.epoch_us.unwrap_or(0);
        let mut out = Vec::new();
        for (i, fb) in self.feedback.iter().enumerate() {
            for (sequence, at) in fb.arrivals() {
                let unwrapped = self.unwrapped.get(&sequence).copied().unwrap_or(-1);
                out.push((unwrapped, at.map(|at| at + epoch), i));
            }
        }
        out
    }
}

#[test]
fn in_order_arrivals_are_reported_with_their_times() {
    let mut rx = Receiver::new();
    // 100 ms in, so the reference time is not zero; 1.3 ms apart.
    for i in 0..20 {
        assert_eq!(
            rx.arrive(1000 + i, 100_000 + 1300 * i),
            Arrival::New { pushed_out: 0 }
        );
    }
    rx.flush(MAX_FEEDBACK_LEN);
    assert_eq!(rx.feedback.len(), 1);
    let fb = &rx.feedback[0];
    assert_eq!(fb.sender_ssrc, SENDER.0);
    assert_eq!(fb.media_ssrc, MEDIA.0);
    assert_eq!(fb.base_sequence, 1000);
    assert_eq!(fb.statuses.len(), 20);
    assert_eq!(fb.feedback_count, 0);
    // Ticks count from the first arrival: the reference time is 0 and the arrivals read
    // back 1.3 ms apart, to the 250 µs tick.
    let arrivals = fb.arrivals();
    for (i, (sequence, at)) in arrivals.iter().enumerate() {
        assert_eq!(*sequence, 1000 + i as u16);
        let expected = 1300 * i as i64;
        let at = at.expect("received");
        assert!(
            at <= expected && expected - at < 250,
            "{i}: {at} vs {expected}"
        );
    }
    // Nothing new: nothing more to say.
    rx.flush(MAX_FEEDBACK_LEN);
    assert_eq!(rx.feedback.len(), 1);
}

#[test]
fn a_loss_is_reported_then_reported_received_when_it_comes_late() {
    let mut rx = Receiver::new();
    for (sequence, at) in [(1, 0), (2, 1000), (4, 3000), (5, 4000)] {
        rx.arrive(sequence, at);
    }
    rx.flush(MAX_FEEDBACK_LEN);
    let statuses: Vec<bool> = rx.feedback[0]
        .statuses
        .iter()
        .map(Option::is_some)
        .collect();
    assert_eq!(statuses, [true, true, false, true, true]);
    // 3 arrives after all, 40 ms late and behind 4 and 5: a negative delta.
    rx.arrive(3, 44_000);
    rx.arrive(6, 5000);
    rx.flush(MAX_FEEDBACK_LEN);
    let late = &rx.feedback[1];
    assert_eq!(late.base_sequence, 3, "starts again at the late packet");
    assert_eq!(late.feedback_count, 1);
    let arrivals = late.arrivals();
    let times: Vec<i64> = arrivals.iter().map(|(_, at)| at.unwrap()).collect();
    assert_eq!(times, [44_000, 3000, 4000, 5000]);
    assert!(
        late.statuses[1].unwrap().1,
        "4 came 41 ms before 3: a large delta"
    );
    // A duplicate changes nothing.
    assert_eq!(rx.arrive(4, 50_000), Arrival::Duplicate);
    assert_eq!(rx.window.pending(), 0);
}

#[test]
fn sequence_numbers_wrap() {
    let mut rx = Receiver::new();
    for (i, sequence) in (65_530..65_536 + 6).enumerate() {
        rx.arrive(sequence, 2000 * i as i64);
    }
    rx.flush(MAX_FEEDBACK_LEN);
    let fb = &rx.feedback[0];
    assert_eq!(fb.base_sequence, 65_530);
    assert_eq!(fb.statuses.len(), 12);
    assert!(fb.statuses.iter().all(Option::is_some));
}

#[test]
fn a_gap_too_long_for_one_delta_starts_a_new_feedback() {
    let mut rx = Receiver::new();
    rx.arrive(10, 0);
    rx.arrive(11, 1000);
    // 9 s later: more than a two-byte delta (8.19 s) can say.
    rx.arrive(12, 9_001_000);
    rx.arrive(14, 9_002_000);
    rx.flush(MAX_FEEDBACK_LEN);
    assert_eq!(rx.feedback.len(), 2);
    assert_eq!(rx.feedback[0].base_sequence, 10);
    assert_eq!(rx.feedback[0].statuses.len(), 2);
    assert_eq!(rx.feedback[1].base_sequence, 12);
    assert_eq!(rx.feedback[1].feedback_count, 1);
    let arrivals = rx.feedback[1].arrivals();
    assert_eq!(arrivals[0], (12, Some(9_001_000)));
    assert_eq!(arrivals[1], (13, None));
    assert_eq!(arrivals[2], (14, Some(9_002_000)));
}

#[test]
fn a_long_report_is_split_across_packets() {
    let mut rx = Receiver::new();
    // Every other packet lost, large deltas: two bits per status, two bytes per delta.
    for i in 0..500 {
        rx.arrive(2 * i, 70_000 * i);
    }
    rx.flush(200);
    assert!(rx.feedback.len() > 5, "{}", rx.feedback.len());
    let mut next = 0u16;
    for (i, fb) in rx.feedback.iter().enumerate() {
        assert_eq!(
            fb.base_sequence, next,
            "feedback {i} goes on where the last ended"
        );
        assert_eq!(fb.feedback_count, i as u8);
        next = fb.base_sequence.wrapping_add(fb.statuses.len() as u16);
    }
    assert_eq!(next, 999);
    check_reported_times(&rx);
}

#[test]
fn a_forged_flood_stays_in_the_window() {
    let mut rx = Receiver::new();
    let mut ignored = 0;
    let mut pushed_out = 0;
    let mut state = 0x1234_5678u32;
    // 100 000 packets of random sequence numbers: any 16-bit value, so jumps of up to
    // half the number space each way.
    for i in 0..100_000u32 {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let now = rx.t0 + Duration::from_micros(u64::from(i) * 10);
        match rx.window.record(SeqNo(state as u16), now, None) {
            Arrival::New { pushed_out: n } => pushed_out += n,
            Arrival::Duplicate | Arrival::TooOld => ignored += 1,
        }
        assert!(rx.window.pending() <= ARRIVAL_WINDOW as i64);
        if i % 1000 == 0 {
            rx.flush(MAX_FEEDBACK_LEN);
        }
    }
    rx.flush(MAX_FEEDBACK_LEN);
    assert!(ignored > 10_000, "most are too old: {ignored}");
    assert!(
        pushed_out > 1000,
        "jumps push unreported packets out: {pushed_out}"
    );
    for fb in &rx.feedback {
        assert!(fb.statuses.len() <= ARRIVAL_WINDOW);
    }
    assert_eq!(rx.window.arrivals.len(), ARRIVAL_WINDOW, "nothing grew");
    assert_eq!(rx.window.received.len(), ARRIVAL_WINDOW / 64);
}

#[test]
fn a_sender_that_renumbers_far_behind_is_followed() {
    let mut rx = Receiver::new();
    for i in 0..100 {
        rx.arrive(30_000 + i, 1000 * i);
    }
    rx.flush(MAX_FEEDBACK_LEN);
    // Numbering starts again 20 000 lower: more than the window behind.
    let mut outcomes = Vec::new();
    for i in 0..40 {
        outcomes.push(rx.arrive(10_000 + i, 200_000 + 1000 * i));
    }
    let too_old = outcomes.iter().filter(|&&o| o == Arrival::TooOld).count();
    assert_eq!(too_old, RESTART_AFTER_TOO_OLD as usize - 1);
    rx.flush(MAX_FEEDBACK_LEN);
    let last = rx.feedback.last().unwrap();
    assert_eq!(
        last.base_sequence,
        10_000 + RESTART_AFTER_TOO_OLD as u16 - 1
    );
    assert!(last.statuses.iter().all(Option::is_some));
}

#[test]
fn feedback_is_due_after_the_delay_or_at_once_when_much_waits() {
    let mut window = ArrivalWindow::new();
    let t0 = Instant::now();
    assert!(!window.schedule(t0), "one packet waits for the timer");
    window.record(SeqNo(1), t0, None);
    assert!(!window.schedule(t0));
    assert!(!window.poll_due(t0 + FEEDBACK_DELAY - Duration::from_millis(1)));
    assert!(window.poll_due(t0 + FEEDBACK_DELAY));
    assert!(!window.poll_due(t0 + FEEDBACK_DELAY), "due once");
    let mut buf = [0u8; MAX_FEEDBACK_LEN];
    let mut statuses = vec![None; ARRIVAL_WINDOW];
    assert!(window
        .write_feedback(&mut buf, SENDER, MEDIA, &mut statuses)
        .is_some());
    assert!(
        !window.poll_due(t0 + Duration::from_secs(1)),
        "idle once written"
    );
    assert_eq!(
        window.write_feedback(&mut buf, SENDER, MEDIA, &mut statuses),
        None
    );

    let mut early = false;
    for i in 2..2 + EARLY_FEEDBACK_PENDING {
        window.record(SeqNo(i as u16), t0, None);
        early = window.schedule(t0);
    }
    assert!(early, "{EARLY_FEEDBACK_PENDING} waiting: due at once");
}

/// Every time reported for a packet is its first arrival, to the 250 µs tick below it.
fn check_reported_times(rx: &Receiver) {
    for (sequence, at, i) in rx.reported() {
        if let Some(at) = at {
            let (arrived, _) = rx.arrived[&sequence];
            assert!(
                at <= arrived && arrived - at < 250,
                "{sequence} reported at {at} µs in feedback {i}, arrived at {arrived}"
            );
        }
    }
}

/// One packet the sender sends: how it fares on the way.
#[derive(Debug, Clone)]
struct Send {
    lost: bool,
    duplicated: bool,
    /// Held back behind this many later packets.
    reorder: usize,
    /// Time since the previous arrival, µs.
    gap_us: i64,
}

fn arb_send() -> impl Strategy<Value = Send> {
    (
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.05),
        prop_oneof![8 => Just(0usize), 2 => 1usize..20],
        prop_oneof![
            10 => 0i64..3000,
            2 => 3000i64..100_000,
            1 => Just(0i64),
            1 => 8_000_000i64..20_000_000,
        ],
    )
        .prop_map(|(lost, duplicated, reorder, gap_us)| Send {
            lost,
            duplicated,
            reorder,
            gap_us,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Loss, reordering, duplicates, gaps in time of up to 20 s, and the 16-bit wrap
    /// (starting near it): whatever the feedback says arrived did, at that time; whatever
    /// arrived is reported received; nothing is reported lost after it arrived.
    #[test]
    fn feedback_tells_what_arrived_and_when(
        start in prop_oneof![Just(65_000i64), 0i64..65_536],
        sends in proptest::collection::vec(arb_send(), 1..700),
        flush_every in 1usize..80,
        limit in prop_oneof![Just(MAX_FEEDBACK_LEN), 64usize..300],
    ) {
        // The order packets arrive in: each held back behind `reorder` later ones.
        let mut order: Vec<(usize, i64)> = Vec::new();
        for (i, send) in sends.iter().enumerate() {
            if send.lost {
                continue;
            }
            let at = (i + send.reorder).min(sends.len());
            order.push((at, i as i64));
            if send.duplicated {
                order.push((at + 1, i as i64));
            }
        }
        order.sort_by_key(|&(at, _)| at);
        let mut rx = Receiver::new();
        let mut clock = 0i64;
        for (n, &(_, i)) in order.iter().enumerate() {
            clock += sends[i as usize].gap_us;
            let outcome = rx.arrive(start + i, clock);
            prop_assert_ne!(outcome, Arrival::TooOld, "reordering stays within the window");
            if let Arrival::New { pushed_out } = outcome {
                prop_assert_eq!(pushed_out, 0);
            }
            if n % flush_every == 0 {
                rx.flush(limit);
            }
        }
        rx.flush(limit);

        check_reported_times(&rx);
        let mut received = std::collections::BTreeSet::new();
        for (sequence, at, i) in rx.reported() {
            match at {
                Some(_) => {
                    received.insert(sequence);
                }
                // Reported lost: it had not arrived when that feedback was written.
                None => prop_assert!(
                    rx.arrived
                        .get(&sequence)
                        .is_none_or(|&(_, rank)| rank >= rx.arrived_before[i]),
                    "{} reported lost in feedback {} after it arrived", sequence, i
                ),
            }
        }
        let arrived: std::collections::BTreeSet<i64> = rx.arrived.keys().copied().collect();
        prop_assert_eq!(received, arrived, "every arrival reported received");
        for (i, fb) in rx.feedback.iter().enumerate() {
            prop_assert_eq!(fb.feedback_count, i as u8);
        }
    }
}
