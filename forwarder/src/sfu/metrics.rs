//! Prometheus text exposition (format 0.0.4) of the core's counters.
//!
//! Rendered on demand by the thread that owns the core, so counters stay plain integers.
//! Per-leg series carry `meeting`, `participant` and `leg` labels; per-meeting series are
//! sums over the meeting's legs; drops not attributable to a leg are forwarder-wide.

use std::collections::BTreeMap;
use std::fmt::{Display, Write};

use super::audience::{AudienceSummary, LOSS_BUCKET_LE};
use super::stats::{DropReason, LegStats};
use super::track::Track;
use super::Forwarder;
use crate::ids::TrackId;

/// Escape a label value (backslash, double quote, newline).
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Appends metric families to a string. Writing to a `String` cannot fail, so the
/// `fmt::Result`s are discarded.
struct Exposition<'a>(&'a mut String);

impl Exposition<'_> {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl Display) {
        let _ = if labels.is_empty() {
            writeln!(self.0, "{name} {value}")
        } else {
            writeln!(self.0, "{name}{{{labels}}} {value}")
        };
    }
}

type Pick = fn(&LegStats) -> u64;

/// Traffic families: name suffix, help, and the RTP and RTCP counters.
const TRAFFIC: [(&str, &str, Pick, Pick); 4] = [
    (
        "packets_received_total",
        "Authenticated SRTP/SRTCP packets received",
        |s| s.rtp_in.packets,
        |s| s.rtcp_in.packets,
    ),
    (
        "bytes_received_total",
        "Authenticated SRTP/SRTCP bytes received",
        |s| s.rtp_in.bytes,
        |s| s.rtcp_in.bytes,
    ),
    (
        "packets_sent_total",
        "SRTP/SRTCP packets sent",
        |s| s.rtp_out.packets,
        |s| s.rtcp_out.packets,
    ),
    (
        "bytes_sent_total",
        "SRTP/SRTCP bytes sent",
        |s| s.rtp_out.bytes,
        |s| s.rtcp_out.bytes,
    ),
];

/// Feedback counters of a leg: name suffix, help, value.
const FEEDBACK: [(&str, &str, Pick); 15] = [
    (
        "dtls_handshakes_total",
        "WebRTC: DTLS-SRTP handshakes completed (keys installed)",
        |s| s.dtls_connected,
    ),
    (
        "dtls_failures_total",
        "WebRTC: DTLS-SRTP handshakes failed (wrong certificate, no common profile, timeout, ...)",
        |s| s.dtls_failed,
    ),
    (
        "ice_checks_answered_total",
        "WebRTC: ICE connectivity checks answered (RFC 8445)",
        |s| s.stun_answered,
    ),
    (
        "ice_consent_lost_total",
        "WebRTC: times the nominated address's consent lapsed and media to it stopped (RFC 7675)",
        |s| s.consent_lost,
    ),
    (
        "rtx_received_total",
        "WebRTC: retransmissions received on RTX streams (RFC 4588), unwrapped into their originals",
        |s| s.rtx_received,
    ),
    (
        "padding_received_total",
        "Padding-only packets received (bandwidth probes): counted, never forwarded",
        |s| s.padding_received,
    ),
    (
        "transport_cc_feedback_sent_total",
        "WebRTC: transport-wide congestion control feedback packets sent to the (publishing) browser",
        |s| s.transport_cc_feedback_sent,
    ),
    (
        "transport_cc_packets_reported_total",
        "WebRTC: packet arrivals that feedback reported (a late packet reported again counts again)",
        |s| s.transport_cc_packets_reported,
    ),
    (
        "transport_cc_packets_ignored_total",
        "WebRTC: transport-wide sequence numbers not recorded: duplicates, or older than the arrival window",
        |s| s.transport_cc_packets_ignored,
    ),
    (
        "transport_cc_packets_unreported_total",
        "WebRTC: recorded arrivals never reported: pushed out of the window by a jump ahead, or no address to send feedback to",
        |s| s.transport_cc_packets_unreported,
    ),
    (
        "nack_requests_received_total",
        "Sequence numbers the peer NACKed (RFC 4585)",
        |s| s.nacks_received,
    ),
    (
        "retransmitted_packets_total",
        "Packets resent to the peer from the retransmission cache",
        |s| s.retransmitted,
    ),
    (
        "nack_requests_sent_total",
        "Sequence numbers the forwarder NACKed towards the (publishing) peer",
        |s| s.nacks_sent,
    ),
    (
        "keyframe_requests_received_total",
        "PLI and FIR received from the peer",
        |s| s.keyframe_requests_received,
    ),
    (
        "keyframe_requests_sent_total",
        "PLI sent to the (publishing) peer, after coalescing",
        |s| s.keyframe_requests_sent,
    ),
];

impl Forwarder {
    /// Append every metric in Prometheus text format to `out`.
    pub fn write_metrics(&self, out: &mut String) {
        let mut x = Exposition(out);

        let mut legs: Vec<(String, &LegStats)> = self
            .legs
            .iter()
            .map(|(_, leg)| {
                let labels = format!(
                    "meeting=\"{}\",participant=\"{}\",leg=\"{}\"",
                    escape(&self.meetings[leg.meeting.0 as usize].id.0),
                    escape(&leg.participant.0),
                    escape(&leg.name)
                );
                (labels, &leg.stats)
            })
            .collect();
        legs.sort_by(|a, b| a.0.cmp(&b.0));

        let mut meetings: BTreeMap<String, LegStats> = self
            .meetings
            .iter()
            .map(|(_, m)| {
                (
                    format!("meeting=\"{}\"", escape(&m.id.0)),
                    LegStats::default(),
                )
            })
            .collect();
        for (_, leg) in &self.legs {
            let key = format!(
                "meeting=\"{}\"",
                escape(&self.meetings[leg.meeting.0 as usize].id.0)
            );
            meetings.entry(key).or_default().merge(&leg.stats);
        }
        let meetings: Vec<(String, &LegStats)> =
            meetings.iter().map(|(k, v)| (k.clone(), v)).collect();

        for (scope, rows) in [("leg", &legs), ("meeting", &meetings)] {
            for (suffix, help, rtp, rtcp) in TRAFFIC {
                let name = format!("fanout_{scope}_{suffix}");
                x.family(&name, "counter", help);
                for (labels, stats) in rows.iter() {
                    x.sample(&name, &format!("{labels},kind=\"rtp\""), rtp(stats));
                    x.sample(&name, &format!("{labels},kind=\"rtcp\""), rtcp(stats));
                }
            }
            let name = format!("fanout_{scope}_dropped_packets_total");
            x.family(&name, "counter", "Packets dropped, by reason");
            for (labels, stats) in rows.iter() {
                for (reason, n) in stats.drops.iter() {
                    x.sample(
                        &name,
                        &format!("{labels},reason=\"{}\"", reason.as_str()),
                        n,
                    );
                }
            }
        }

        for (suffix, help, value) in FEEDBACK {
            let name = format!("fanout_leg_{suffix}");
            x.family(&name, "counter", help);
            for (labels, stats) in &legs {
                x.sample(&name, labels, value(stats));
            }
        }
        let name = "fanout_leg_estimated_bitrate_bps";
        x.family(
            name,
            "gauge",
            "The peer's receive bandwidth estimate (REMB), 0 if none",
        );
        for (labels, stats) in &legs {
            x.sample(name, labels, stats.estimated_bitrate_bps);
        }

        let name = "fanout_dropped_packets_total";
        x.family(
            name,
            "counter",
            "Packets dropped before any leg was identified, by reason",
        );
        for reason in DropReason::ALL {
            x.sample(
                name,
                &format!("reason=\"{}\"", reason.as_str()),
                self.drops.get(reason),
            );
        }

        let name = "fanout_leg_reported_fraction_lost";
        x.family(
            name,
            "gauge",
            "Fraction of our packets the peer last reported lost (RTCP report block)",
        );
        for (labels, stats) in &legs {
            x.sample(
                name,
                labels,
                f64::from(stats.reported_fraction_lost) / 256.0,
            );
        }
        let name = "fanout_leg_round_trip_seconds";
        x.family(
            name,
            "gauge",
            "Round-trip time to the peer from its RTCP report blocks (RFC 3550 6.4.1)",
        );
        for (labels, stats) in &legs {
            x.sample(name, labels, stats.round_trip_seconds);
        }
        let name = "fanout_leg_reported_jitter_seconds";
        x.family(
            name,
            "gauge",
            "Interarrival jitter the peer last reported (RTCP report block)",
        );
        for (labels, stats) in &legs {
            x.sample(name, labels, stats.reported_jitter_seconds);
        }

        let mut tracks: Vec<_> = self
            .tracks
            .iter()
            .map(|(i, t)| {
                let labels = format!(
                    "meeting=\"{}\",participant=\"{}\",track=\"{}\",kind=\"{}\"",
                    escape(&self.meetings[t.meeting.0 as usize].id.0),
                    escape(&t.participant.0),
                    escape(&t.name),
                    t.kind.as_str()
                );
                (labels, t, TrackId(i as u32))
            })
            .collect();
        tracks.sort_by(|a, b| a.0.cmp(&b.0));
        type TrackValue = fn(&Track) -> f64;
        let families: [(&str, &str, &str, TrackValue); 4] = [
            (
                "fanout_track_packets_received_total",
                "counter",
                "Packets of the published stream received (RFC 3550 A.3)",
                |t| {
                    t.encodings
                        .iter()
                        .map(|e| e.receive.received())
                        .sum::<u64>() as f64
                },
            ),
            (
                "fanout_track_packets_lost",
                "gauge",
                "Cumulative packets lost on the publisher's leg (RFC 3550 A.3)",
                |t| {
                    t.encodings
                        .iter()
                        .map(|e| e.receive.cumulative_lost())
                        .sum::<i64>() as f64
                },
            ),
            (
                "fanout_track_jitter_seconds",
                "gauge",
                "Interarrival jitter of the published stream (RFC 3550 A.8)",
                |t| {
                    t.encodings
                        .iter()
                        .map(|e| e.receive.jitter_seconds())
                        .fold(0.0, f64::max)
                },
            ),
            (
                "fanout_track_subscriptions",
                "gauge",
                "Subscriptions forwarding this track",
                |t| t.subscribers.len() as f64,
            ),
        ];
        for (name, kind, help, value) in families {
            x.family(name, kind, help);
            for (labels, t, _) in &tracks {
                x.sample(name, labels, value(t));
            }
        }
        self.write_audience_metrics(&mut x, &tracks);

        for (name, help, value) in [
            (
                "fanout_meetings",
                "Meetings configured",
                self.meetings.len(),
            ),
            ("fanout_legs", "Legs configured", self.legs.len()),
            ("fanout_tracks", "Tracks published", self.tracks.len()),
            (
                "fanout_subscriptions",
                "Subscriptions",
                self.subscriptions.len(),
            ),
        ] {
            x.family(name, "gauge", help);
            x.sample(name, "", value);
        }
        self.write_relay_metrics(&mut x);

        let name = "fanout_events_dropped_total";
        x.family(name, "counter", "Events dropped because nobody polled them");
        x.sample(name, "", self.events_dropped);

        let tap = self.tap_stats();
        let recording: [(&str, &str, u64); 4] = [
            (
                "fanout_recording_packets_total",
                "Media packets of recorded meetings handed to the recorder's queue",
                tap.packets,
            ),
            (
                "fanout_recording_dropped_packets_total",
                "Media packets of recorded meetings not recorded: the recorder fell behind (live media is unaffected)",
                tap.dropped,
            ),
            (
                "fanout_recording_unencodable_packets_total",
                "Media packets of recorded meetings that the tap format cannot carry (ids longer than 64 bytes)",
                tap.unencodable,
            ),
            (
                "fanout_recorded_meetings",
                "Meetings being recorded",
                self.meetings
                    .iter()
                    .filter(|(_, m)| m.recording.is_some())
                    .count() as u64,
            ),
        ];
        for (name, help, value) in recording {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            x.family(name, kind, help);
            x.sample(name, "", value);
        }
    }
}

type AudienceValue = fn(&AudienceSummary) -> f64;

/// Audience gauges of a track: name, help, value.
const AUDIENCE: [(&str, &str, AudienceValue); 5] = [
    (
        "fanout_audience_mean_fraction_lost",
        "Mean fraction lost the track's receivers in this subtree last reported",
        |a| a.mean_fraction_lost(),
    ),
    (
        "fanout_audience_worst_fraction_lost",
        "Largest fraction lost a receiver of the track in this subtree last reported",
        |a| f64::from(a.worst_fraction_lost) / 256.0,
    ),
    (
        "fanout_audience_packets_lost",
        "Sum of the cumulative packet losses the track's receivers in this subtree reported",
        |a| f64::from(a.cumulative_lost_sum),
    ),
    (
        "fanout_audience_max_jitter_seconds",
        "Largest interarrival jitter a receiver of the track in this subtree reported",
        |a| f64::from(a.max_jitter_us) / 1e6,
    ),
    (
        "fanout_audience_max_round_trip_seconds",
        "Largest round trip between a node of this subtree and one of its own receivers",
        |a| f64::from(a.max_round_trip_us) / 1e6,
    ),
];

impl Forwarder {
    /// The `fanout_audience_*` families: per track, the reception of every receiver in
    /// this forwarder's subtree (its subscribers and, through relay links, every node
    /// below; see [`super::audience`]).
    fn write_audience_metrics(&self, x: &mut Exposition<'_>, tracks: &[(String, &Track, TrackId)]) {
        let rows: Vec<(&String, AudienceSummary)> = tracks
            .iter()
            .map(|(labels, _, id)| (labels, self.audience_of(*id, self.now)))
            .collect();
        let name = "fanout_audience_receivers";
        x.family(
            name,
            "gauge",
            "Receivers of the track in this subtree with a report in the last 10 s",
        );
        for (labels, a) in &rows {
            x.sample(name, labels, a.receivers());
        }
        let name = "fanout_audience_receivers_by_loss";
        x.family(
            name,
            "gauge",
            "Of those, receivers whose last reported fraction lost is at most le",
        );
        for (labels, a) in &rows {
            for (bucket, le) in LOSS_BUCKET_LE.iter().enumerate() {
                x.sample(
                    name,
                    &format!("{labels},le=\"{le}\""),
                    a.receivers_at_most(bucket),
                );
            }
        }
        for (name, help, value) in AUDIENCE {
            x.family(name, "gauge", help);
            for (labels, a) in &rows {
                x.sample(name, labels, value(a));
            }
        }
    }
}

/// Counters of a relay link end: name suffix, help, value.
const RELAY: [(&str, &str, Pick); 7] = [
    (
        "nack_requests_sent_total",
        "Sequence numbers NACKed towards the parent over an upstream link",
        |s| s.nacks_sent,
    ),
    (
        "nack_requests_forwarded_total",
        "Of those, misses a viewer or child link asked for that were passed up",
        |s| s.nacks_forwarded,
    ),
    (
        "nack_requests_received_total",
        "Sequence numbers a child relay NACKed over a downstream link",
        |s| s.nacks_received,
    ),
    (
        "retransmitted_packets_total",
        "Packets resent to a child relay from the cache",
        |s| s.retransmitted,
    ),
    (
        "keyframe_requests_sent_total",
        "PLI sent to the parent over an upstream link",
        |s| s.keyframe_requests_sent,
    ),
    (
        "keyframe_requests_coalesced_total",
        "Keyframe requests for relayed streams absorbed into one already sent or pending",
        |s| s.keyframe_requests_coalesced,
    ),
    (
        "keyframe_requests_received_total",
        "PLI and FIR a child relay sent over a downstream link",
        |s| s.keyframe_requests_received,
    ),
];

impl Forwarder {
    /// The `fanout_relay_link_*` families: one series per link end.
    fn write_relay_metrics(&self, x: &mut Exposition<'_>) {
        let links = self.relay_links();
        let rows: Vec<(String, &super::RelayLinkInfo)> = links
            .iter()
            .map(|l| {
                (
                    format!(
                        "meeting=\"{}\",link=\"{}\",direction=\"{}\"",
                        escape(&l.meeting.0),
                        escape(&l.id),
                        l.direction.as_str()
                    ),
                    l,
                )
            })
            .collect();
        for (suffix, help, rtp, rtcp) in TRAFFIC {
            let name = format!("fanout_relay_link_{suffix}");
            x.family(&name, "counter", help);
            for (labels, l) in &rows {
                x.sample(&name, &format!("{labels},kind=\"rtp\""), rtp(&l.stats));
                x.sample(&name, &format!("{labels},kind=\"rtcp\""), rtcp(&l.stats));
            }
        }
        let name = "fanout_relay_link_dropped_packets_total";
        x.family(name, "counter", "Packets of a link dropped, by reason");
        for (labels, l) in &rows {
            for (reason, n) in l.stats.drops.iter() {
                x.sample(name, &format!("{labels},reason=\"{}\"", reason.as_str()), n);
            }
        }
        let name = "fanout_relay_link_tracks";
        x.family(name, "gauge", "Tracks relayed over the link");
        for (labels, l) in &rows {
            x.sample(name, labels, l.tracks);
        }
        for (suffix, help, value) in RELAY {
            let name = format!("fanout_relay_link_{suffix}");
            x.family(&name, "counter", help);
            for (labels, l) in &rows {
                x.sample(&name, labels, value(&l.stats));
            }
        }
        let name = "fanout_relay_links";
        x.family(name, "gauge", "Relay link ends held");
        x.sample(name, "", links.len());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::ids::{MeetingId, ParticipantId, Ssrc};
    use crate::sfu::{ForwarderConfig, LegConfig, LegSecurity, TrackConfig, TrackKind};
    use crate::srtp::{MasterKey, SrtpProfile};

    #[test]
    fn exposition_is_well_formed_and_escapes_labels() {
        let mut f = Forwarder::new(ForwarderConfig::default(), Instant::now());
        let meeting = MeetingId::from("say \"hi\"\\now");
        f.add_meeting(meeting.clone()).unwrap();
        let p = ParticipantId::from("alice");
        f.add_participant(&meeting, p.clone()).unwrap();
        let profile = SrtpProfile::AeadAes128Gcm;
        let leg = f
            .add_leg(
                &meeting,
                &p,
                LegConfig {
                    name: "main".into(),
                    security: LegSecurity::Sdes {
                        receive_key: MasterKey::generate(profile),
                        send_key: MasterKey::generate(profile),
                    },
                    remote: None,
                    remote_rtcp: None,
                    rtcp_mux: true,
                    local: None,
                    local_rtcp: None,
                },
            )
            .unwrap();
        f.add_track(
            &meeting,
            &p,
            TrackConfig {
                name: "mic".into(),
                kind: TrackKind::Audio,
                encodings: vec![Ssrc(1)],
                leg,
                clock_rate: None,
                codec: Default::default(),
                audio_level_extension: None,
                stream_ids: None,
            },
        )
        .unwrap();

        let mut out = String::new();
        f.write_metrics(&mut out);
        let mut typed = std::collections::HashSet::new();
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(
                    typed.insert(name.to_owned()),
                    "family {name} declared twice"
                );
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(typed.contains(name), "sample before its TYPE: {line}");
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad value in {line}");
        }
        assert!(out
            .contains(r#"meeting="say \"hi\"\\now",participant="alice",leg="main",kind="rtp"} 0"#));
        assert!(out.contains("fanout_legs 1"));
        assert!(out.contains(r#"track="mic",kind="audio"} 0"#));
    }
}
