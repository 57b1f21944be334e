//! The sans-IO media participant: a [`Publisher`] that sends what a WebRTC client sends,
//! and a [`Receiver`] that verifies and measures what arrives. Both take time as an input
//! ([`Micros`](crate::Micros) since the run's epoch), own no socket and read no clock; the
//! engine encrypts and decrypts around their plain RTP/RTCP.
//!
//! * [`probe`]: the stamp at the start of every payload (who, which packet, when) and the
//!   fill that lets the receiver check every byte.
//! * [`publisher`]: audio, simulcast VP8 camera and screen share, pacing, retransmission
//!   from a compact history, sender reports.
//! * [`receiver`]: loss before and after retransmission, NACK/PLI, RFC 3550 jitter and
//!   receiver reports, latency per packet.
//! * [`playout`]: the jitter-buffer model that counts rendered frames and freezes.
//! * [`vp8`]: the RFC 7741 framing the publisher writes.
//!
//! # Memory
//!
//! Measured by the tests (`memory_bytes`): a publisher of Opus audio and three-layer
//! simulcast (150 kb/s, 500 kb/s, 1.5 Mb/s) holds 6.4 KiB, mostly its retransmission
//! history (12 bytes a packet, about a second per SSRC: 64 + 128 + 256 packets). A
//! receiver holds 320 bytes, plus 736 bytes per stream, plus 1.5 KiB for each video
//! stream's jitter buffer, plus up to 1.5 KiB per stream of NACK state while packets are
//! missing: 7.7 KiB for audio and three video streams. Nothing is allocated per packet once
//! a stream is set up.

pub mod playout;
pub mod probe;
pub mod publisher;
pub mod receiver;
pub mod vp8;

pub use probe::{Probe, ProbeError};
pub use publisher::{
    AudioConfig, CameraConfig, Encoding, Publisher, PublisherConfig, ScreenConfig, Transmit,
};
pub use receiver::{Receiver, ReceiverConfig};

#[cfg(test)]
mod tests {
    //! A publisher wired straight to a receiver through an impaired path each way, on a
    //! virtual clock: the receiver's NACKs and PLIs go back to the publisher, its sender
    //! reports forward to the receiver. No forwarder in between, so every simulcast
    //! encoding arrives as its own stream.

    use super::*;
    use crate::impair::{Impairment, ImpairmentSpec};
    use crate::stats::{MediaKind, PublisherStats, ReceiverStats};
    use crate::Micros;

    struct Outcome {
        receiver: ReceiverStats,
        publisher: PublisherStats,
        latencies: Vec<(Micros, bool, MediaKind)>,
        receiver_bytes: usize,
        publisher_bytes: usize,
    }

    fn config() -> PublisherConfig {
        let mut config = PublisherConfig::new(9, 1234);
        config.audio = Some(AudioConfig::opus(100));
        config.camera = Some(CameraConfig::simulcast([200, 201, 202]));
        config
    }

    /// Runs for `duration` µs. `cut` drops every packet of the top camera encoding sent
    /// in that time window (an outage NACK cannot repair without `nack`).
    fn run(
        publisher: PublisherConfig,
        receiver: ReceiverConfig,
        path: ImpairmentSpec,
        duration: Micros,
        cut: Option<(Micros, Micros)>,
    ) -> Outcome {
        let mut publisher = Publisher::new(publisher);
        let mut receiver = Receiver::new(receiver);
        let mut up: Impairment<(Vec<u8>, bool)> = Impairment::new(path, 1);
        let mut down: Impairment<Vec<u8>> = Impairment::new(path, 2);
        let mut latencies = Vec::new();
        let mut buf = [0u8; 1600];
        let mut now = 0;
        while now <= duration {
            while let Some((bytes, is_rtcp)) = up.pop_ready(now) {
                if is_rtcp {
                    receiver.handle_rtcp(now, &bytes);
                } else if let Some(d) = receiver.handle_rtp(now, &bytes) {
                    latencies.push((d.latency_us, d.repaired, d.kind));
                }
            }
            while let Some(bytes) = down.pop_ready(now) {
                publisher.handle_rtcp(now, &bytes);
            }
            receiver.handle_timeout(now);
            while let Some(len) = receiver.poll_rtcp(now, &mut buf) {
                down.push(now, buf[..len].to_vec());
            }
            while let Some(t) = publisher.poll_transmit(now, &mut buf) {
                let packet = buf[..t.len].to_vec();
                let in_cut = cut.is_some_and(|(from, to)| (from..to).contains(&now));
                if in_cut && !t.is_rtcp && packet[8..12] == 202u32.to_be_bytes() {
                    continue;
                }
                up.push(now, (packet, t.is_rtcp));
            }
            let next = [
                publisher.poll_timeout(),
                receiver.poll_timeout(),
                up.poll_timeout(),
                down.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min();
            match next {
                Some(next) => now = next.max(now + 1),
                None => break,
            }
        }
        Outcome {
            receiver_bytes: receiver.memory_bytes(),
            publisher_bytes: publisher.memory_bytes(),
            receiver: receiver.finish(now),
            publisher: publisher.stats(),
            latencies,
        }
    }

    #[test]
    fn lossy_path_is_repaired_and_measured() {
        let path = ImpairmentSpec {
            loss: 0.02,
            delay_us: 20_000,
            ..Default::default()
        };
        let duration = 10_000_000;
        let o = run(config(), ReceiverConfig::new(5), path, duration, None);
        let r = o.receiver;
        assert_eq!(r.invalid, 0);
        assert_eq!(r.duplicates, 0);
        // Every packet sent arrived or is counted lost, but for those still in flight at
        // the end: what was sent in the last delay or so.
        let accounted = r.packets + r.lost_after_rtx + r.audio_lost;
        let in_flight = o.publisher.packets * 2 * path.delay_us / duration + 1;
        assert!(
            o.publisher.packets - accounted < in_flight,
            "{} vs {accounted}",
            o.publisher.packets
        );
        // About 2% lost on the way, nearly all repaired.
        let before = r.lost_before_rtx as f64 / r.expected as f64;
        assert!((0.01..0.03).contains(&before), "{before}");
        let after = r.lost_after_rtx as f64 / r.expected as f64;
        assert!(after < 0.001, "{after} ({r:?})");
        assert!(
            r.repaired + 2 >= r.lost_before_rtx && r.repaired <= r.lost_before_rtx,
            "{r:?}"
        );
        // Every NACKed packet was retransmitted, bar NACKs lost on the way back.
        assert!(o.publisher.retransmissions as f64 >= r.nacked_packets as f64 * 0.9);
        // Audio is not repaired: its loss is the path's.
        let audio = r.audio_lost as f64 / r.audio_expected as f64;
        assert!((0.005..0.04).contains(&audio), "{audio}");
        assert!(r.audio_expected >= 499);
        // Latency is the path delay, plus a round trip for repaired packets.
        for &(latency, repaired, kind) in &o.latencies {
            if repaired {
                assert!(latency >= 60_000, "{latency}");
                assert_ne!(kind, MediaKind::Audio);
            } else {
                assert_eq!(latency, 20_000);
            }
        }
        assert!(r.frames_rendered > 800, "{}", r.frames_rendered);
        assert!(r.longest_gap_us < 100_000);
        eprintln!("lossy path: {r:?}");
    }

    #[test]
    fn clean_path_has_no_freezes() {
        let path = ImpairmentSpec {
            delay_us: 20_000,
            jitter_us: 5_000,
            ..Default::default()
        };
        let o = run(config(), ReceiverConfig::new(5), path, 5_000_000, None);
        let r = o.receiver;
        assert_eq!(
            (r.invalid, r.lost_before_rtx, r.lost_after_rtx, r.audio_lost),
            (0, 0, 0, 0)
        );
        assert_eq!(
            (r.freezes, r.frozen_us, r.plis_sent, r.nacks_sent),
            (0, 0, 0, 0)
        );
        // Three encodings at 30 fps, less what is still buffered at the end.
        assert!(r.frames_rendered >= 3 * 148, "{}", r.frames_rendered);
        // Path jitter plus the pacer's spread of a frame's packets (RFC 3550 jitter
        // compares arrival with the frame's timestamp).
        assert!(
            r.jitter_max_us > 0 && r.jitter_max_us < 20_000,
            "{}",
            r.jitter_max_us
        );
        assert!(
            r.playout_delay_us >= 10_000 && r.playout_delay_us <= 15_000,
            "{}",
            r.playout_delay_us
        );
        assert_eq!(o.publisher.keyframes_requested, 0);
        // The memory budget: under 16 KiB for the whole participant.
        assert!(
            o.publisher_bytes + o.receiver_bytes < 16 * 1024,
            "{} + {}",
            o.publisher_bytes,
            o.receiver_bytes
        );
        eprintln!(
            "memory: publisher {} B, receiver {} B (4 streams)",
            o.publisher_bytes, o.receiver_bytes
        );
    }

    #[test]
    fn unrepairable_outage_asks_for_a_keyframe_and_recovers() {
        let path = ImpairmentSpec {
            delay_us: 20_000,
            ..Default::default()
        };
        let receiver = ReceiverConfig {
            nack: false,
            ..ReceiverConfig::new(5)
        };
        let o = run(
            config(),
            receiver,
            path,
            4_000_000,
            Some((1_000_000, 1_100_000)),
        );
        let r = o.receiver;
        assert!(r.plis_sent >= 1);
        assert!(o.publisher.keyframes_requested >= 1);
        assert!(r.lost_after_rtx > 0 && r.lost_after_rtx == r.lost_before_rtx);
        // The top encoding froze from the cut until the key frame, then played on: about
        // 3 × 120 frames rendered, minus what the outage and the wait cost.
        assert_eq!(r.freezes, 1, "{r:?}");
        assert!(r.frames_rendered > 3 * 115 - 30, "{}", r.frames_rendered);
        assert!(
            r.frozen_us > 100_000 && r.frozen_us < 1_200_000,
            "{}",
            r.frozen_us
        );
    }
}
