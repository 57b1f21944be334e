//! What a run measured, aggregated: the JSON report CI pipelines read, the human report
//! a terminal shows, the live progress line, and the `--fail-if` thresholds.
//!
//! The engine hands over [`RunResults`]: one [`ParticipantResult`] per participant (the
//! fixed-size [`ReceiverStats`] and [`PublisherStats`] counters), the one-way latency
//! histogram merged from its threads, and one [`FailureResult`] per injected failure.
//! [`Report::from_results`] reduces them to a [`Report`] whose JSON keys are stable
//! (`version` changes when a key changes meaning or goes away; new keys may be added).
//!
//! Conventions: times in milliseconds (`*_ms`), losses as fractions (0.01 = 1%),
//! percentiles by nearest rank; a statistic over an empty set is 0 (the counts next to
//! it say the set was empty).

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::str::FromStr;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::forwarder_metrics::ForwarderSnapshot;
use crate::recording::RecordingReport;
use crate::scenario::Role;
use crate::stats::{PublisherStats, ReceiverStats, CAMERA_ENCODING_SLOTS};
use crate::Micros;

/// Version of the JSON report's schema.
pub const REPORT_VERSION: u32 = 1;

/// `processes` of a report written before the key existed.
fn one() -> usize {
    1
}

/// How many distinct join errors the report lists.
const MAX_JOIN_ERRORS: usize = 10;

/// A histogram for one-way latencies in microseconds: 1 µs to 60 s at 3 significant
/// digits (0.1% resolution), growing beyond if a value exceeds it. Engine threads each
/// keep one and [`Histogram::add`] them together at the end.
pub fn latency_histogram() -> Histogram<u64> {
    // Bounds and precision are constants within hdrhistogram's limits (low >= 1,
    // high >= 2 * low, sigfig <= 5): construction cannot fail.
    let mut h = Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
    h.auto(true);
    h
}

/// Everything a run produced, as the engine collected it.
#[derive(Debug, Clone)]
pub struct RunResults {
    /// The scenario's name.
    pub scenario: String,
    /// When media started, in Unix seconds.
    pub started_at: u64,
    /// How long media flowed.
    pub duration_us: Micros,
    pub participants: Vec<ParticipantResult>,
    pub failures: Vec<FailureResult>,
    /// One-way latency of every media packet received, in microseconds (see
    /// [`latency_histogram`]).
    pub latency: Histogram<u64>,
    /// Forwarders and control-plane instances of the deployment (0 if unknown).
    pub forwarders: usize,
    pub controls: usize,
    /// What each forwarder of a local deployment counted, read at the end of the run.
    pub deployment: Vec<ForwarderSnapshot>,
    /// The run's recordings, when the scenario records.
    pub recording: Option<RecordingReport>,
    /// Load-generator processes that played the participants (`run --processes`).
    pub processes: usize,
}

/// One participant's outcome (also written, one JSON object per line, by
/// `run --participants FILE`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParticipantResult {
    pub name: String,
    /// Meeting id.
    pub meeting: String,
    pub region: String,
    pub role: Role,
    /// How long the first `JoinMeeting` took; `None` if the participant never joined.
    pub join_ms: Option<f64>,
    /// Why the join failed (the last error, if it never joined).
    pub join_error: Option<String>,
    /// The forwarder that served it last (a webinar viewer: the one running its relay).
    pub forwarder: Option<String>,
    /// The bandwidth estimate it announced (REMB), if any.
    pub remb_kbps: Option<u32>,
    /// Somebody else in the meeting publishes: the participant should receive media.
    /// (A lone publisher, or a meeting where nobody else publishes, expects none.)
    pub expects_media: bool,
    pub receiver: ReceiverStats,
    /// What it sent, if it publishes.
    pub publisher: Option<PublisherStats>,
    /// Times it left and joined again (churn, failover).
    pub rejoins: u32,
    /// Times the control plane moved it to another forwarder (FORWARDER_CHANGED).
    pub moves: u32,
    /// How long it was connected: the denominator of bitrates and freezes per minute.
    pub media_time_us: Micros,
    /// Which of the run's load-generator processes played it (`run --processes`; 0 in a
    /// single-process run).
    #[serde(default)]
    pub part: usize,
}

/// What an injected failure did.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureResult {
    /// Seconds after media started.
    pub at_s: f64,
    /// What was killed, e.g. `kill forwarder fwd-2`.
    pub what: String,
    /// Participants whose media stopped.
    pub affected: usize,
    /// Affected participants whose media came back before the end of the run.
    pub recovered: usize,
    /// Per recovered participant: from the kill to the first media after the gap.
    pub recovery_ms: Vec<f64>,
    /// Per affected participant: the media gap.
    pub gap_ms: Vec<f64>,
}

/// p50, p99 and max of a set of samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Spread {
    fn of(samples: &[f64]) -> Spread {
        let sorted = sorted(samples);
        Spread {
            p50: round3(percentile(&sorted, 0.50)),
            p99: round3(percentile(&sorted, 0.99)),
            max: round3(sorted.last().copied().unwrap_or(0.0)),
        }
    }
}

/// One-way latency percentiles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyMs {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl LatencyMs {
    /// The percentiles of a histogram of microseconds (all 0 when it is empty).
    pub fn of(h: &Histogram<u64>) -> LatencyMs {
        if h.is_empty() {
            return LatencyMs::default();
        }
        let at = |q: f64| round3(h.value_at_quantile(q) as f64 / 1000.0);
        LatencyMs {
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            max: round3(h.max() as f64 / 1000.0),
            mean: round3(h.mean() / 1000.0),
        }
    }
}

/// Received bitrate per subscriber (those expecting media and connected for some time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct BitrateKbps {
    pub mean: f64,
    pub p50: f64,
    pub min: f64,
}

/// What publishers sent, all together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PublisherTotals {
    /// Participants that published.
    pub count: usize,
    pub packets: u64,
    pub bytes: u64,
    pub retransmissions: u64,
    pub keyframes_requested: u64,
}

/// A join error and how many participants got it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCount {
    pub error: String,
    pub count: usize,
}

/// Quality per region of the participants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionReport {
    pub region: String,
    pub participants: usize,
    pub join_failures: usize,
    pub participants_without_media: usize,
    pub packets_received: u64,
    pub loss_before_rtx: f64,
    pub loss_after_rtx: f64,
    pub jitter_ms_p99: f64,
    pub freezes_per_min: f64,
}

/// One failure's effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureReport {
    pub at_s: f64,
    pub what: String,
    pub affected: usize,
    pub recovered: usize,
    /// Kill to first media after the gap, over recovered participants.
    pub recovery_ms: RecoveryMs,
    /// Media gap, over affected participants.
    pub gap_ms: Spread,
}

/// p50 and max recovery time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RecoveryMs {
    pub p50: f64,
    pub max: f64,
}

/// A run's results, reduced. Serialized as the JSON report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`REPORT_VERSION`].
    pub version: u32,
    pub scenario: String,
    /// Unix seconds when media started.
    pub started_at: u64,
    pub duration_s: f64,
    /// Participants planned.
    pub participants: usize,
    pub forwarders: usize,
    pub controls: usize,
    /// Load-generator processes that played the participants.
    #[serde(default = "one")]
    pub processes: usize,
    /// Participants that joined, and those that never did.
    pub joined: usize,
    pub join_failures: usize,
    /// The most frequent join errors, most frequent first.
    pub join_errors: Vec<ErrorCount>,
    pub rejoins: u64,
    /// `JoinMeeting` round trip, over participants that joined.
    pub join_ms: Spread,
    /// One-way latency of every media packet, publisher to subscriber.
    pub latency_ms: LatencyMs,
    /// Packets in the latency histogram.
    pub latency_samples: u64,
    pub packets_received: u64,
    pub bytes_received: u64,
    pub bitrate_received_kbps: BitrateKbps,
    /// Video and screen-share loss before and after retransmission, as fractions of
    /// the packets expected.
    pub loss_before_rtx: f64,
    pub loss_after_rtx: f64,
    /// Audio loss (audio is not retransmitted).
    pub audio_loss: f64,
    /// p99 over participants of their largest stream jitter (RFC 3550).
    pub jitter_ms_p99: f64,
    /// Video freezes, and freezes per minute of video received (over participants that
    /// rendered video frames).
    pub freezes: u64,
    pub freezes_per_min: f64,
    /// Share of that video time spent frozen.
    pub frozen_fraction: f64,
    /// Median jitter-buffer playout delay at the end.
    pub playout_delay_ms_p50: f64,
    /// Participants that joined, expected media and received none.
    pub participants_without_media: usize,
    pub nacks_sent: u64,
    pub nacked_packets: u64,
    pub plis_sent: u64,
    pub repaired: u64,
    pub duplicates: u64,
    /// Datagrams receivers dropped: failed authentication, replays, malformed packets.
    pub invalid: u64,
    pub publishers: PublisherTotals,
    /// Receivers of camera video by the simulcast encoding they got most of, lowest
    /// first: the layer mix the forwarders chose.
    pub camera_layers: Vec<usize>,
    pub regions: Vec<RegionReport>,
    pub failures: Vec<FailureReport>,
    /// What each forwarder of a local deployment counted at the end (empty otherwise).
    pub deployment: Vec<ForwarderSnapshot>,
    /// The recordings the run started and, with `--local`, what the forwarders' taps
    /// and the recorders counted of them (`null` when the scenario records nothing).
    #[serde(default)]
    pub recording: Option<RecordingReport>,
}

/// The JSON report's top-level keys, for consumers that check the schema.
pub const REPORT_KEYS: &[&str] = &[
    "version",
    "scenario",
    "started_at",
    "duration_s",
    "participants",
    "forwarders",
    "controls",
    "processes",
    "joined",
    "join_failures",
    "join_errors",
    "rejoins",
    "join_ms",
    "latency_ms",
    "latency_samples",
    "packets_received",
    "bytes_received",
    "bitrate_received_kbps",
    "loss_before_rtx",
    "loss_after_rtx",
    "audio_loss",
    "jitter_ms_p99",
    "freezes",
    "freezes_per_min",
    "frozen_fraction",
    "playout_delay_ms_p50",
    "participants_without_media",
    "nacks_sent",
    "nacked_packets",
    "plis_sent",
    "repaired",
    "duplicates",
    "invalid",
    "publishers",
    "camera_layers",
    "regions",
    "failures",
    "deployment",
    "recording",
];

/// Counters summed over a set of participants (the whole run, or one region).
#[derive(Default)]
struct Sums {
    participants: usize,
    join_failures: usize,
    without_media: usize,
    packets: u64,
    expected: u64,
    lost_before: u64,
    lost_after: u64,
    jitter_us: Vec<f64>,
    freezes: u64,
    frozen_us: u64,
    video_time_us: u64,
}

impl Sums {
    fn add(&mut self, p: &ParticipantResult) {
        let r = &p.receiver;
        self.participants += 1;
        if p.join_ms.is_none() {
            self.join_failures += 1;
        } else if p.expects_media && r.packets == 0 {
            self.without_media += 1;
        }
        self.packets += r.packets;
        self.expected += r.expected;
        self.lost_before += r.lost_before_rtx;
        self.lost_after += r.lost_after_rtx;
        if r.packets > 0 {
            self.jitter_us.push(r.jitter_max_us as f64);
        }
        if r.frames_rendered > 0 {
            self.freezes += r.freezes;
            self.frozen_us += r.frozen_us;
            self.video_time_us += p.media_time_us;
        }
    }

    fn jitter_ms_p99(&self) -> f64 {
        round3(percentile(&sorted(&self.jitter_us), 0.99) / 1000.0)
    }

    fn freezes_per_min(&self) -> f64 {
        round3(ratio(self.freezes as f64, self.video_time_us as f64 / 60e6))
    }
}

impl Report {
    /// Reduce a run's results.
    pub fn from_results(results: &RunResults) -> Report {
        let mut all = Sums::default();
        let mut by_region: BTreeMap<&str, Sums> = BTreeMap::new();
        let mut join_ms = Vec::new();
        let mut errors: HashMap<&str, usize> = HashMap::new();
        let mut rejoins = 0u64;
        let mut bitrates = Vec::new();
        let mut playout_ms = Vec::new();
        let mut rx = ReceiverStats::default();
        let mut publishers = PublisherTotals::default();
        let mut camera_layers = vec![0; CAMERA_ENCODING_SLOTS];
        for p in &results.participants {
            all.add(p);
            by_region.entry(&p.region).or_default().add(p);
            match p.join_ms {
                Some(ms) => join_ms.push(ms),
                None => {
                    let error = p.join_error.as_deref().unwrap_or("unknown error");
                    *errors.entry(error).or_default() += 1;
                }
            }
            rejoins += u64::from(p.rejoins);
            let r = &p.receiver;
            rx.packets += r.packets;
            rx.bytes += r.bytes;
            rx.audio_expected += r.audio_expected;
            rx.audio_lost += r.audio_lost;
            rx.repaired += r.repaired;
            rx.duplicates += r.duplicates;
            rx.invalid += r.invalid;
            rx.nacks_sent += r.nacks_sent;
            rx.nacked_packets += r.nacked_packets;
            rx.plis_sent += r.plis_sent;
            if let Some(encoding) = r.main_camera_encoding() {
                camera_layers[encoding] += 1;
            }
            if p.expects_media && p.join_ms.is_some() && p.media_time_us > 0 {
                bitrates.push(r.bytes as f64 * 8.0 / (p.media_time_us as f64 / 1e6) / 1000.0);
            }
            if r.packets > 0 {
                playout_ms.push(r.playout_delay_us as f64 / 1000.0);
            }
            if let Some(s) = &p.publisher {
                publishers.count += 1;
                publishers.packets += s.packets;
                publishers.bytes += s.bytes;
                publishers.retransmissions += s.retransmissions;
                publishers.keyframes_requested += s.keyframes_requested;
            }
        }

        let mut join_errors: Vec<ErrorCount> = errors
            .into_iter()
            .map(|(error, count)| ErrorCount {
                error: error.to_owned(),
                count,
            })
            .collect();
        join_errors.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.error.cmp(&b.error)));
        join_errors.truncate(MAX_JOIN_ERRORS);

        let latency_ms = LatencyMs::of(&results.latency);
        let h = &results.latency;

        let sorted_bitrates = sorted(&bitrates);
        let bitrate_received_kbps = BitrateKbps {
            mean: round3(ratio(bitrates.iter().sum(), bitrates.len() as f64)),
            p50: round3(percentile(&sorted_bitrates, 0.5)),
            min: round3(sorted_bitrates.first().copied().unwrap_or(0.0)),
        };

        let regions = by_region
            .iter()
            .map(|(region, s)| RegionReport {
                region: (*region).to_owned(),
                participants: s.participants,
                join_failures: s.join_failures,
                participants_without_media: s.without_media,
                packets_received: s.packets,
                loss_before_rtx: fraction(s.lost_before, s.expected),
                loss_after_rtx: fraction(s.lost_after, s.expected),
                jitter_ms_p99: s.jitter_ms_p99(),
                freezes_per_min: s.freezes_per_min(),
            })
            .collect();

        let failures = results
            .failures
            .iter()
            .map(|f| {
                let recovery = sorted(&f.recovery_ms);
                FailureReport {
                    at_s: f.at_s,
                    what: f.what.clone(),
                    affected: f.affected,
                    recovered: f.recovered,
                    recovery_ms: RecoveryMs {
                        p50: round3(percentile(&recovery, 0.5)),
                        max: round3(recovery.last().copied().unwrap_or(0.0)),
                    },
                    gap_ms: Spread::of(&f.gap_ms),
                }
            })
            .collect();

        Report {
            version: REPORT_VERSION,
            scenario: results.scenario.clone(),
            started_at: results.started_at,
            duration_s: round3(results.duration_us as f64 / 1e6),
            participants: results.participants.len(),
            forwarders: results.forwarders,
            controls: results.controls,
            joined: join_ms.len(),
            join_failures: all.join_failures,
            join_errors,
            rejoins,
            join_ms: Spread::of(&join_ms),
            latency_ms,
            latency_samples: h.len(),
            packets_received: rx.packets,
            bytes_received: rx.bytes,
            bitrate_received_kbps,
            loss_before_rtx: fraction(all.lost_before, all.expected),
            loss_after_rtx: fraction(all.lost_after, all.expected),
            audio_loss: fraction(rx.audio_lost, rx.audio_expected),
            jitter_ms_p99: all.jitter_ms_p99(),
            freezes: all.freezes,
            freezes_per_min: all.freezes_per_min(),
            frozen_fraction: round_fraction(ratio(all.frozen_us as f64, all.video_time_us as f64)),
            playout_delay_ms_p50: round3(percentile(&sorted(&playout_ms), 0.5)),
            participants_without_media: all.without_media,
            nacks_sent: rx.nacks_sent,
            nacked_packets: rx.nacked_packets,
            plis_sent: rx.plis_sent,
            repaired: rx.repaired,
            duplicates: rx.duplicates,
            invalid: rx.invalid,
            publishers,
            camera_layers,
            regions,
            failures,
            deployment: results.deployment.clone(),
            recording: results.recording.clone(),
            processes: results.processes.max(1),
        }
    }

    /// The JSON report, pretty-printed.
    pub fn to_json(&self) -> String {
        // A struct of numbers, strings and vectors of them: serialization cannot fail.
        serde_json::to_string_pretty(self).expect("a report serializes")
    }

    /// A report for people: sections of aligned label/value lines.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, label: &str, value: String| {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "  {label:<26}{value}");
        };
        let _ = writeln!(
            out,
            "Fanout load test: {}\n  started {} UTC, media for {:.1} s, {} participants, {} forwarder(s), {} control instance(s)",
            self.scenario,
            utc(self.started_at),
            self.duration_s,
            count(self.participants as u64),
            self.forwarders,
            self.controls,
        );
        if self.processes > 1 {
            let _ = writeln!(
                out,
                "  played by {} load-generator processes",
                self.processes
            );
        }

        out.push_str("\nJoins\n");
        line(
            &mut out,
            "joined",
            format!(
                "{} of {} ({} failed, {} rejoins)",
                count(self.joined as u64),
                count(self.participants as u64),
                count(self.join_failures as u64),
                count(self.rejoins)
            ),
        );
        line(&mut out, "join time (ms)", spread(&self.join_ms));
        for e in &self.join_errors {
            line(
                &mut out,
                "join error",
                format!("{} x {}", count(e.count as u64), e.error),
            );
        }

        out.push_str("\nLatency, publisher to subscriber (ms)\n");
        line(
            &mut out,
            "p50 / p99 / p99.9 / max",
            format!(
                "{} / {} / {} / {}",
                ms(self.latency_ms.p50),
                ms(self.latency_ms.p99),
                ms(self.latency_ms.p999),
                ms(self.latency_ms.max)
            ),
        );
        line(
            &mut out,
            "mean",
            format!(
                "{} over {} packets",
                ms(self.latency_ms.mean),
                count(self.latency_samples)
            ),
        );

        out.push_str("\nMedia received\n");
        line(
            &mut out,
            "packets",
            format!(
                "{} ({} MB)",
                count(self.packets_received),
                fixed(self.bytes_received as f64 / 1e6, 1)
            ),
        );
        line(
            &mut out,
            "bitrate per subscriber",
            format!(
                "mean {} kbit/s, p50 {}, min {}",
                fixed(self.bitrate_received_kbps.mean, 1),
                fixed(self.bitrate_received_kbps.p50, 1),
                fixed(self.bitrate_received_kbps.min, 1)
            ),
        );
        line(
            &mut out,
            "without media",
            format!(
                "{} participant(s) that expected media",
                count(self.participants_without_media as u64)
            ),
        );

        out.push_str("\nLoss and repair\n");
        line(
            &mut out,
            "video loss before rtx",
            percent(self.loss_before_rtx),
        );
        line(
            &mut out,
            "video loss after rtx",
            percent(self.loss_after_rtx),
        );
        line(&mut out, "audio loss", percent(self.audio_loss));
        line(
            &mut out,
            "NACKs sent",
            format!(
                "{} asking for {} packets; {} repaired",
                count(self.nacks_sent),
                count(self.nacked_packets),
                count(self.repaired)
            ),
        );
        line(&mut out, "PLIs sent", count(self.plis_sent));
        line(
            &mut out,
            "duplicates / invalid",
            format!("{} / {}", count(self.duplicates), count(self.invalid)),
        );

        out.push_str("\nQuality\n");
        line(&mut out, "jitter p99 (ms)", ms(self.jitter_ms_p99));
        line(
            &mut out,
            "freezes",
            format!(
                "{} ({} per minute, {} of the time frozen)",
                count(self.freezes),
                fixed(self.freezes_per_min, 3),
                percent(self.frozen_fraction)
            ),
        );
        line(
            &mut out,
            "playout delay p50 (ms)",
            ms(self.playout_delay_ms_p50),
        );

        out.push_str("\nPublishers\n");
        line(
            &mut out,
            "sent",
            format!(
                "{} packets by {} publisher(s) ({} MB)",
                count(self.publishers.packets),
                count(self.publishers.count as u64),
                fixed(self.publishers.bytes as f64 / 1e6, 1)
            ),
        );
        line(
            &mut out,
            "retransmissions",
            count(self.publishers.retransmissions),
        );
        line(
            &mut out,
            "keyframes on request",
            count(self.publishers.keyframes_requested),
        );
        if self.camera_layers.iter().any(|&n| n > 0) {
            let layers: Vec<String> = self
                .camera_layers
                .iter()
                .enumerate()
                .map(|(encoding, n)| format!("{encoding}: {}", count(*n as u64)))
                .collect();
            line(&mut out, "receivers by camera layer", layers.join("  "));
        }

        if self.regions.len() > 1 {
            out.push_str("\nRegions\n");
            let _ = writeln!(
                out,
                "  {:<14}{:>12}{:>9}{:>10}{:>12}{:>12}{:>12}{:>10}",
                "region",
                "participants",
                "failed",
                "no media",
                "loss",
                "loss (rtx)",
                "jitter p99",
                "freezes"
            );
            for r in &self.regions {
                let _ = writeln!(
                    out,
                    "  {:<14}{:>12}{:>9}{:>10}{:>12}{:>12}{:>12}{:>10}",
                    r.region,
                    count(r.participants as u64),
                    count(r.join_failures as u64),
                    count(r.participants_without_media as u64),
                    percent(r.loss_before_rtx),
                    percent(r.loss_after_rtx),
                    format!("{} ms", ms(r.jitter_ms_p99)),
                    fixed(r.freezes_per_min, 2),
                );
            }
        }

        if !self.deployment.is_empty() {
            self.write_deployment(&mut out);
        }
        if let Some(recording) = &self.recording {
            write_recording(recording, &mut out);
        }

        if !self.failures.is_empty() {
            out.push_str("\nFailures\n");
            for f in &self.failures {
                let _ = writeln!(out, "  at {:.1} s: {}", f.at_s, f.what);
                line(
                    &mut out,
                    "  recovered",
                    format!(
                        "{} of {} affected",
                        count(f.recovered as u64),
                        count(f.affected as u64)
                    ),
                );
                line(
                    &mut out,
                    "  recovery (ms)",
                    format!(
                        "p50 {}  max {}",
                        ms(f.recovery_ms.p50),
                        ms(f.recovery_ms.max)
                    ),
                );
                line(&mut out, "  media gap (ms)", spread(&f.gap_ms));
            }
        }
        out
    }
}

impl Report {
    /// The forwarders' own counters: where NACKs were answered and keyframe requests
    /// coalesced (relay trees), how many legs and links each held.
    fn write_deployment(&self, out: &mut String) {
        out.push_str("\nForwarders (their own counters)\n");
        let _ = writeln!(
            out,
            "  {:<18}{:<10}{:>7}{:>9}{:>11}{:>11}{:>11}{:>11}{:>11}{:>8}",
            "forwarder",
            "region",
            "legs",
            "links",
            "nack in",
            "rtx out",
            "kf req in",
            "kf req out",
            "nack up",
            "cpu"
        );
        for f in &self.deployment {
            if f.killed {
                let _ = writeln!(out, "  {:<18}{:<10}killed during the run", f.id, f.region);
                continue;
            }
            let links = format!(
                "{}/{}",
                f.relay_links("upstream"),
                f.relay_links("downstream")
            );
            let n = |key: &str| count(f.get(key) as u64);
            let _ = writeln!(
                out,
                "  {:<18}{:<10}{:>7}{:>9}{:>11}{:>11}{:>11}{:>11}{:>11}{:>8}",
                f.id,
                f.region,
                n("fanout_legs"),
                links,
                n("fanout_leg_nack_requests_received_total"),
                n("fanout_leg_retransmitted_packets_total"),
                n("fanout_leg_keyframe_requests_received_total"),
                n("fanout_leg_keyframe_requests_sent_total"),
                n("fanout_relay_link_nack_requests_sent_total{direction=\"upstream\"}"),
                f.cpu_cores
                    .map_or_else(|| "-".to_owned(), |c| format!("{:.0}%", c * 100.0)),
            );
        }
        let _ = writeln!(
            out,
            "  links: fed by a parent / feeding children; over every leg (viewers, publishers \
             and relay links): nack in: sequence numbers NACKed; rtx out: retransmissions \
             sent; kf req: PLI/FIR received, and sent to publishers or parents after \
             coalescing; nack up: sequence numbers asked of the parent; cpu: of one core, \
             over the measured part of the run"
        );
    }
}

/// The recordings: their ids, and whether the recorders kept up.
fn write_recording(r: &RecordingReport, out: &mut String) {
    let line = |out: &mut String, label: &str, value: String| {
        let _ = writeln!(out, "  {label:<26}{value}");
    };
    out.push_str("\nRecording\n");
    for started in &r.recordings {
        let stored = match (started.stored_chunks, started.stored_bytes) {
            (Some(chunks), Some(bytes)) => format!(
                " ({} chunks, {} MB stored)",
                count(chunks),
                fixed(bytes as f64 / 1e6, 2)
            ),
            _ => String::new(),
        };
        line(
            out,
            "recording",
            format!("{} of {}{stored}", started.recording_id, started.meeting),
        );
    }
    if r.forwarders.is_empty() && r.recorders.is_empty() {
        // Against a deployment this run did not start: its recorders are the operator's.
        return;
    }
    line(
        out,
        "tapped by the forwarders",
        format!(
            "{} packets ({} dropped in the queue, {} at the recorder's socket)",
            count(r.tapped_packets),
            count(r.forwarders.iter().map(|f| f.queue_dropped).sum()),
            count(r.forwarders.iter().map(|f| f.socket_dropped).sum())
        ),
    );
    line(
        out,
        "recorded",
        format!(
            "{} packets, {} MB received; {} chunks uploaded ({} MB)",
            count(r.recorded_packets),
            fixed(
                r.recorders.iter().map(|x| x.received_bytes).sum::<u64>() as f64 / 1e6,
                2
            ),
            count(r.chunks_uploaded),
            fixed(r.uploaded_bytes as f64 / 1e6, 2)
        ),
    );
    line(
        out,
        "lost",
        format!("{} packets ({})", count(r.lost_packets), percent(r.loss)),
    );
    let unsettled: u64 = r
        .recorders
        .iter()
        .map(|x| x.open_recordings + x.spool_backlog + x.chunks_failed)
        .sum();
    if unsettled > 0 {
        line(
            out,
            "not stored",
            format!(
                "{} chunks still open, waiting or failed at the end",
                count(unsettled)
            ),
        );
    }
    let cpu: Vec<String> = r
        .recorders
        .iter()
        .filter_map(|x| Some(format!("{} {:.1}%", x.forwarder, x.cpu_cores? * 100.0)))
        .collect();
    if !cpu.is_empty() {
        line(out, "recorder cpu", cpu.join(", "));
    }
    if let (Some(store), Some(first)) = (&r.store, r.recordings.first()) {
        line(out, "store", store.clone());
        line(
            out,
            "to play one",
            format!(
                "fanout-recorder stitch --store {store} --recording {} --output out.webm",
                first.recording_id
            ),
        );
    }
}

/// A live status: what the engine knows at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Progress {
    /// Seconds since the run started.
    pub elapsed_s: f64,
    /// Participants joined so far, of `target`.
    pub joined: usize,
    pub target: usize,
    /// Packets sent and received so far.
    pub packets_out: u64,
    pub packets_in: u64,
    /// p99 one-way latency over the last window.
    pub latency_p99_ms: f64,
    /// Video loss before retransmission so far, as a fraction.
    pub loss: f64,
    /// Datagrams receivers dropped so far (failed authentication, replays, malformed):
    /// anything but 0 deserves a look.
    pub rejected: u64,
}

impl Progress {
    /// One line for a terminal, fixed width for its fields.
    pub fn line(&self) -> String {
        format!(
            "[{:>7.1} s] joined {:>7}/{:<7} out {:>8} pkt  in {:>8} pkt  p99 {:>8} ms  loss {:>7}  rejected {}",
            self.elapsed_s,
            count(self.joined as u64),
            count(self.target as u64),
            si(self.packets_out),
            si(self.packets_in),
            ms(self.latency_p99_ms),
            percent(self.loss),
            si(self.rejected),
        )
    }
}

/// A metric a [`Threshold`] can test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Metric {
    P50LatencyMs,
    P99LatencyMs,
    P999LatencyMs,
    MaxLatencyMs,
    P99JoinMs,
    LossBeforeRtx,
    LossAfterRtx,
    JitterMsP99,
    FreezesPerMin,
    ParticipantsWithoutMedia,
    JoinFailures,
    RecordingLoss,
}

impl Metric {
    pub const ALL: [Metric; 12] = [
        Metric::P50LatencyMs,
        Metric::P99LatencyMs,
        Metric::P999LatencyMs,
        Metric::MaxLatencyMs,
        Metric::P99JoinMs,
        Metric::LossBeforeRtx,
        Metric::LossAfterRtx,
        Metric::JitterMsP99,
        Metric::FreezesPerMin,
        Metric::ParticipantsWithoutMedia,
        Metric::JoinFailures,
        Metric::RecordingLoss,
    ];

    /// The name thresholds use.
    pub fn name(self) -> &'static str {
        match self {
            Metric::P50LatencyMs => "p50_latency_ms",
            Metric::P99LatencyMs => "p99_latency_ms",
            Metric::P999LatencyMs => "p999_latency_ms",
            Metric::MaxLatencyMs => "max_latency_ms",
            Metric::P99JoinMs => "p99_join_ms",
            Metric::LossBeforeRtx => "loss_before_rtx",
            Metric::LossAfterRtx => "loss_after_rtx",
            Metric::JitterMsP99 => "jitter_ms_p99",
            Metric::FreezesPerMin => "freezes_per_min",
            Metric::ParticipantsWithoutMedia => "participants_without_media",
            Metric::JoinFailures => "join_failures",
            Metric::RecordingLoss => "recording_loss",
        }
    }

    /// The metric's value in a report.
    pub fn value(self, r: &Report) -> f64 {
        match self {
            Metric::P50LatencyMs => r.latency_ms.p50,
            Metric::P99LatencyMs => r.latency_ms.p99,
            Metric::P999LatencyMs => r.latency_ms.p999,
            Metric::MaxLatencyMs => r.latency_ms.max,
            Metric::P99JoinMs => r.join_ms.p99,
            Metric::LossBeforeRtx => r.loss_before_rtx,
            Metric::LossAfterRtx => r.loss_after_rtx,
            Metric::JitterMsP99 => r.jitter_ms_p99,
            Metric::FreezesPerMin => r.freezes_per_min,
            Metric::ParticipantsWithoutMedia => r.participants_without_media as f64,
            Metric::JoinFailures => r.join_failures as f64,
            // Nothing recorded, nothing lost.
            Metric::RecordingLoss => r.recording.as_ref().map_or(0.0, |x| x.loss),
        }
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl Op {
    fn symbol(self) -> &'static str {
        match self {
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }

    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Op::Gt => a > b,
            Op::Ge => a >= b,
            Op::Lt => a < b,
            Op::Le => a <= b,
            Op::Eq => a == b,
            Op::Ne => a != b,
        }
    }
}

/// Why a threshold expression is not understood.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ThresholdError {
    #[error("{0:?} is not `METRIC OP NUMBER` (OP is one of > >= < <= == !=), e.g. \"p99_latency_ms > 150\"")]
    Syntax(String),
    #[error("unknown metric {metric:?}; valid metrics: {valid}")]
    UnknownMetric { metric: String, valid: String },
    #[error("{0:?} is not a number")]
    BadNumber(String),
}

/// A failure condition on a report (`--fail-if "p99_latency_ms > 150"`): the run fails
/// when the comparison holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    pub metric: Metric,
    pub op: Op,
    pub value: f64,
}

impl Threshold {
    /// Parse `METRIC OP NUMBER`; spaces around the operator are optional.
    pub fn parse(text: &str) -> Result<Threshold, ThresholdError> {
        let syntax = || ThresholdError::Syntax(text.to_owned());
        let at = text.find(['<', '>', '=', '!']).ok_or_else(syntax)?;
        let (name, rest) = (text[..at].trim(), &text[at..]);
        let (op, number) = [
            (">=", Op::Ge),
            ("<=", Op::Le),
            ("==", Op::Eq),
            ("!=", Op::Ne),
            (">", Op::Gt),
            ("<", Op::Lt),
        ]
        .into_iter()
        .find_map(|(sym, op)| rest.strip_prefix(sym).map(|n| (op, n.trim())))
        .ok_or_else(syntax)?;
        if name.is_empty() || number.is_empty() {
            return Err(syntax());
        }
        let metric = Metric::ALL
            .into_iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| ThresholdError::UnknownMetric {
                metric: name.to_owned(),
                valid: Metric::ALL.map(Metric::name).join(", "),
            })?;
        let value: f64 = number
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .ok_or_else(|| ThresholdError::BadNumber(number.to_owned()))?;
        Ok(Threshold { metric, op, value })
    }

    /// The violation, if the report meets the failure condition.
    pub fn check(&self, report: &Report) -> Option<String> {
        let actual = self.metric.value(report);
        self.op
            .holds(actual, self.value)
            .then(|| format!("{} is {} (fail if {self})", self.metric.name(), num(actual)))
    }
}

impl FromStr for Threshold {
    type Err = ThresholdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Threshold::parse(s)
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.metric.name(),
            self.op.symbol(),
            num(self.value)
        )
    }
}

fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Nearest-rank percentile of sorted samples; 0 when there are none.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

fn fraction(part: u64, whole: u64) -> f64 {
    round_fraction(ratio(part as f64, whole as f64))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Fractions keep 7 decimals: 0.1 ppm, finer than any run measures.
fn round_fraction(x: f64) -> f64 {
    (x * 1e7).round() / 1e7
}

/// A number without needless decimals: 150, 0.02, 12.345.
fn num(x: f64) -> String {
    let s = format!("{:.6}", x);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_owned()
}

fn fixed(x: f64, decimals: usize) -> String {
    format!("{x:.decimals$}")
}

fn ms(x: f64) -> String {
    if x >= 100.0 {
        fixed(x, 0)
    } else if x >= 10.0 {
        fixed(x, 1)
    } else {
        fixed(x, 2)
    }
}

fn percent(f: f64) -> String {
    format!("{:.3}%", f * 100.0)
}

fn spread(s: &Spread) -> String {
    format!("p50 {}  p99 {}  max {}", ms(s.p50), ms(s.p99), ms(s.max))
}

/// 1234567 → "1,234,567".
pub(crate) fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// 1234567 → "1.23M".
fn si(n: u64) -> String {
    let x = n as f64;
    if x >= 1e9 {
        format!("{:.2}G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.1}k", x / 1e3)
    } else {
        n.to_string()
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS` (UTC).
fn utc(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn participant(name: &str, region: &str) -> ParticipantResult {
        ParticipantResult {
            name: name.to_owned(),
            meeting: "m-0001".to_owned(),
            region: region.to_owned(),
            role: Role::Attendee,
            join_ms: Some(10.0),
            join_error: None,
            forwarder: Some("fwd-0".to_owned()),
            remb_kbps: None,
            expects_media: true,
            receiver: ReceiverStats::default(),
            publisher: None,
            rejoins: 0,
            moves: 0,
            media_time_us: 60_000_000,
            part: 0,
        }
    }

    /// 100 participants with join times 1..=100 ms and known counters.
    fn results() -> RunResults {
        let mut latency = latency_histogram();
        for us in 1..=1000u64 {
            latency.record(us * 100).unwrap(); // 0.1 ms .. 100 ms
        }
        let mut participants = Vec::new();
        for i in 1..=100u64 {
            let mut p = participant(&format!("p{i}"), if i <= 50 { "eu" } else { "us" });
            p.join_ms = Some(i as f64);
            p.receiver = ReceiverStats {
                packets: 1000,
                bytes: 750_000, // 6 Mbit over 60 s = 100 kbit/s
                expected: 1000,
                lost_before_rtx: 20,
                lost_after_rtx: 1,
                audio_expected: 500,
                audio_lost: 5,
                repaired: 19,
                nacks_sent: 3,
                nacked_packets: 20,
                plis_sent: 1,
                jitter_max_us: i * 1000,
                frames_rendered: 1800,
                freezes: if i % 10 == 0 { 1 } else { 0 },
                frozen_us: if i % 10 == 0 { 600_000 } else { 0 },
                playout_delay_us: 40_000,
                ..ReceiverStats::default()
            };
            p.publisher = (i <= 2).then_some(PublisherStats {
                packets: 5000,
                bytes: 5_000_000,
                retransmissions: 40,
                keyframes_requested: 2,
            });
            participants.push(p);
        }
        // One failed join and one lone publisher (expects nothing, gets nothing).
        let mut failed = participant("failed", "eu");
        failed.join_ms = None;
        failed.join_error = Some("JoinMeeting m-0001: Unavailable: no forwarder".into());
        failed.media_time_us = 0;
        participants.push(failed);
        let mut lone = participant("lone", "eu");
        lone.expects_media = false;
        participants.push(lone);
        // And one that expected media and got none.
        participants.push(participant("starved", "us"));
        RunResults {
            scenario: "unit".into(),
            started_at: 1_795_000_000,
            duration_us: 60_000_000,
            participants,
            failures: vec![FailureResult {
                at_s: 10.0,
                what: "kill forwarder fwd-1".into(),
                affected: 4,
                recovered: 3,
                recovery_ms: vec![900.0, 1200.0, 1500.0],
                gap_ms: vec![800.0, 1100.0, 1400.0, 50_000.0],
            }],
            latency,
            forwarders: 2,
            controls: 1,
            deployment: Vec::new(),
            recording: None,
            processes: 1,
        }
    }

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = sorted(&v);
        assert_eq!(percentile(&s, 0.5), 50.0);
        assert_eq!(percentile(&s, 0.99), 99.0);
        assert_eq!(percentile(&s, 1.0), 100.0);
        assert_eq!(percentile(&s, 0.0), 1.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(percentile(&sorted(&[3.0, 1.0, 2.0]), 0.5), 2.0);
        let s = Spread::of(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!((s.p50, s.p99, s.max), (3.0, 5.0, 5.0));
    }

    #[test]
    fn aggregates() {
        let r = Report::from_results(&results());
        assert_eq!(r.participants, 103);
        assert_eq!(r.joined, 102);
        assert_eq!(r.join_failures, 1);
        assert_eq!(r.join_errors.len(), 1);
        assert_eq!(r.join_errors[0].count, 1);
        // Joined: 1..=100 and two more at 10 ms: the 51st of 102 is 49, the 101st 99.
        assert_eq!(r.join_ms.p50, 49.0);
        assert_eq!(r.join_ms.p99, 99.0);
        assert_eq!(r.join_ms.max, 100.0);
        // Histogram of 0.1..100 ms in 0.1 ms steps (0.1% precision).
        assert!((r.latency_ms.p50 - 50.0).abs() < 0.1, "{:?}", r.latency_ms);
        assert!((r.latency_ms.p99 - 99.0).abs() < 0.1, "{:?}", r.latency_ms);
        assert!((r.latency_ms.p999 - 99.9).abs() < 0.1, "{:?}", r.latency_ms);
        assert!((r.latency_ms.max - 100.0).abs() < 0.1, "{:?}", r.latency_ms);
        assert_eq!(r.latency_samples, 1000);
        assert_eq!(r.packets_received, 100_000);
        assert_eq!(r.loss_before_rtx, 0.02);
        assert_eq!(r.loss_after_rtx, 0.001);
        assert_eq!(r.audio_loss, 0.01);
        // Jitter max per participant 1..=100 ms; p99 over the 100 that received.
        assert_eq!(r.jitter_ms_p99, 99.0);
        // 10 freezes over 100 minutes of video.
        assert_eq!(r.freezes, 10);
        assert_eq!(r.freezes_per_min, 0.1);
        assert_eq!(r.frozen_fraction, 0.001);
        assert_eq!(r.playout_delay_ms_p50, 40.0);
        // The starved one only: not the failed joiner, not the lone publisher.
        assert_eq!(r.participants_without_media, 1);
        // 100 at 100 kbit/s, plus the starved and the failed? No: the failed never
        // joined; the starved counts at 0.
        assert_eq!(r.bitrate_received_kbps.p50, 100.0);
        assert_eq!(r.bitrate_received_kbps.min, 0.0);
        assert!((r.bitrate_received_kbps.mean - 100.0 * 100.0 / 101.0).abs() < 0.01);
        assert_eq!(r.nacks_sent, 300);
        assert_eq!(r.repaired, 1900);
        assert_eq!(r.publishers.count, 2);
        assert_eq!(r.publishers.packets, 10_000);
        assert_eq!(r.publishers.retransmissions, 80);
        assert_eq!(r.regions.len(), 2);
        assert_eq!(r.regions[0].region, "eu");
        assert_eq!(r.regions[0].participants, 52);
        assert_eq!(r.regions[0].join_failures, 1);
        assert_eq!(r.regions[1].participants_without_media, 1);
        let f = &r.failures[0];
        assert_eq!((f.affected, f.recovered), (4, 3));
        assert_eq!(f.recovery_ms.p50, 1200.0);
        assert_eq!(f.recovery_ms.max, 1500.0);
        assert_eq!(f.gap_ms.p50, 1100.0);
        assert_eq!(f.gap_ms.max, 50_000.0);
    }

    #[test]
    fn empty_run_reports_zeros() {
        let r = Report::from_results(&RunResults {
            scenario: "empty".into(),
            started_at: 0,
            duration_us: 0,
            participants: Vec::new(),
            failures: Vec::new(),
            latency: latency_histogram(),
            forwarders: 0,
            controls: 0,
            deployment: Vec::new(),
            recording: None,
            processes: 1,
        });
        assert_eq!(r.latency_ms, LatencyMs::default());
        assert_eq!(r.loss_after_rtx, 0.0);
        assert!(r.human().contains("empty"));
    }

    #[test]
    fn json_has_the_stable_keys() {
        let r = Report::from_results(&results());
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        let obj = v.as_object().unwrap();
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        for k in REPORT_KEYS {
            assert!(obj.contains_key(*k), "missing key {k}");
        }
        assert_eq!(keys.len(), REPORT_KEYS.len(), "keys: {keys:?}");
        for k in ["p50", "p99", "max"] {
            assert!(v["join_ms"][k].is_number(), "join_ms.{k}");
        }
        for k in ["p50", "p99", "p999", "max"] {
            assert!(v["latency_ms"][k].is_number(), "latency_ms.{k}");
        }
        for k in ["packets", "retransmissions", "keyframes_requested"] {
            assert!(v["publishers"][k].is_number(), "publishers.{k}");
        }
        assert!(v["bitrate_received_kbps"]["mean"].is_number());
        let f = &v["failures"][0];
        for k in [
            "at_s",
            "what",
            "affected",
            "recovered",
            "recovery_ms",
            "gap_ms",
        ] {
            assert!(!f[k].is_null(), "failures[0].{k}");
        }
        // Round trip.
        let back: Report = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn human_report_shows_key_numbers() {
        let r = Report::from_results(&results());
        let text = r.human();
        for needle in [
            "Fanout load test: unit",
            "2026-11-18",
            "102 of 103 (1 failed",
            "p50 49.0  p99 99.0  max 100",
            "2.000%",
            "0.100%",
            "1 participant(s) that expected media",
            "Unavailable: no forwarder",
            "kill forwarder fwd-1",
            "3 of 4 affected",
            "100,000",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        // Labels align: every "  label   value" line has its value at column 28.
        for l in text
            .lines()
            .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        {
            if l.len() > 28 && !l.starts_with("  at ") && !l.starts_with("  region") {
                let bytes = l.as_bytes();
                assert!(bytes[27] != b' ' || bytes[26] == b' ', "misaligned: {l:?}");
            }
        }
    }

    #[test]
    fn progress_line() {
        let p = Progress {
            elapsed_s: 12.0,
            joined: 950,
            target: 1000,
            packets_out: 1_234_567,
            packets_in: 10_300_000,
            latency_p99_ms: 23.4,
            loss: 0.0012,
            rejected: 3,
        };
        let line = p.line();
        assert!(line.contains("12.0 s"), "{line}");
        assert!(line.contains("950/1,000"), "{line}");
        assert!(line.contains("1.23M"), "{line}");
        assert!(line.contains("10.30M"), "{line}");
        assert!(line.contains("23.4 ms"), "{line}");
        assert!(line.contains("0.120%"), "{line}");
        assert!(line.ends_with("rejected 3"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn thresholds_parse() {
        let t = Threshold::parse("p99_latency_ms > 150").unwrap();
        assert_eq!(
            t,
            Threshold {
                metric: Metric::P99LatencyMs,
                op: Op::Gt,
                value: 150.0
            }
        );
        assert_eq!(t.to_string(), "p99_latency_ms > 150");
        let t: Threshold = "loss_after_rtx>=0.001".parse().unwrap();
        assert_eq!(
            (t.metric, t.op, t.value),
            (Metric::LossAfterRtx, Op::Ge, 0.001)
        );
        for (text, op) in [
            ("join_failures != 0", Op::Ne),
            ("join_failures == 0", Op::Eq),
            ("p50_latency_ms < 1", Op::Lt),
            ("p50_latency_ms <= 1", Op::Le),
        ] {
            assert_eq!(Threshold::parse(text).unwrap().op, op, "{text}");
        }
        let err = Threshold::parse("p98_latency_ms > 1").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("p98_latency_ms"), "{msg}");
        for m in Metric::ALL {
            assert!(msg.contains(m.name()), "{msg}");
        }
        assert!(matches!(
            Threshold::parse("p99_latency_ms 150"),
            Err(ThresholdError::Syntax(_))
        ));
        assert!(matches!(
            Threshold::parse("p99_latency_ms > fast"),
            Err(ThresholdError::BadNumber(_))
        ));
        assert!(matches!(
            Threshold::parse("> 5"),
            Err(ThresholdError::Syntax(_))
        ));
        assert!(matches!(
            Threshold::parse("p99_latency_ms =< 5"),
            Err(ThresholdError::Syntax(_))
        ));
    }

    #[test]
    fn thresholds_evaluate() {
        let r = Report::from_results(&results());
        let fails = |t: &str| Threshold::parse(t).unwrap().check(&r);
        let v = fails("p99_latency_ms > 50").unwrap();
        assert!(v.starts_with("p99_latency_ms is 99"), "{v}");
        assert!(v.ends_with("(fail if p99_latency_ms > 50)"), "{v}");
        assert_eq!(fails("p99_latency_ms > 150"), None);
        assert!(fails("join_failures > 0").is_some());
        assert!(fails("participants_without_media >= 1").is_some());
        assert_eq!(fails("loss_after_rtx > 0.01"), None);
        assert!(fails("loss_before_rtx > 0.01").is_some());
        assert_eq!(fails("freezes_per_min > 0.5"), None);
        assert!(fails("jitter_ms_p99 >= 99").is_some());
        assert!(fails("p99_join_ms > 90").is_some());
        for m in Metric::ALL {
            // Every metric reads something from the report.
            let _ = m.value(&r);
        }
    }

    #[test]
    fn recordings_are_named_and_their_loss_is_tested() {
        use crate::recording::{ForwarderTap, RecorderFigures, StartedRecording};
        // Nothing recorded: no section, nothing lost.
        let r = Report::from_results(&results());
        assert!(!r.human().contains("\nRecording\n"));
        assert_eq!(
            Threshold::parse("recording_loss > 0").unwrap().check(&r),
            None
        );

        let mut with = results();
        with.recording = Some(RecordingReport::new(
            vec![StartedRecording {
                meeting: "unit-m-0001".into(),
                recording_id: "rec-abc".into(),
                stored_chunks: Some(3),
                stored_bytes: Some(3000),
            }],
            Some("/tmp/store".into()),
            vec![ForwarderTap {
                forwarder: "fwd-0".into(),
                packets: 990,
                queue_dropped: 10,
                sent: 991,
                ..ForwarderTap::default()
            }],
            vec![RecorderFigures {
                forwarder: "fwd-0".into(),
                packets: 990,
                chunks_uploaded: 3,
                uploaded_bytes: 3000,
                cpu_cores: Some(0.004),
                ..RecorderFigures::default()
            }],
        ));
        let r = Report::from_results(&with);
        let text = r.human();
        for needle in [
            "\nRecording\n",
            "rec-abc of unit-m-0001 (3 chunks, 0.00 MB stored)",
            "1,000 packets (10 dropped in the queue, 0 at the recorder's socket)",
            "lost                      10 packets (1.000%)",
            "fwd-0 0.4%",
            "fanout-recorder stitch --store /tmp/store --recording rec-abc",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        let v = Threshold::parse("recording_loss > 0")
            .unwrap()
            .check(&r)
            .unwrap();
        assert!(v.starts_with("recording_loss is 0.01"), "{v}");
        let back: Report = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc(1_795_000_000), "2026-11-18 11:06:40");
        assert_eq!(count(0), "0");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(num(150.0), "150");
        assert_eq!(num(0.001), "0.001");
    }
}
