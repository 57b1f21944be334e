//! RTCP compound parsing (RFC 3550 §6, A.2; RFC 4585; RFC 5104; RFC 5506): `validate`, every
//! sub-packet with its byte range, every helper iterator, and the in-place rewriters on the
//! ranges the iterator reported.
#![no_main]

use fanout_forwarder::ids::Ssrc;
use fanout_forwarder::rtcp::packet_type::{APP, PSFB, RR, RTPFB, SR, XR};
use fanout_forwarder::rtcp::{self, RtcpPacket};
use libfuzzer_sys::fuzz_target;

fn walk(packet: &RtcpPacket<'_>) {
    match packet {
        RtcpPacket::SenderReport(sr) => {
            std::hint::black_box(sr.compact_ntp());
            sr.report_blocks().for_each(|b| {
                std::hint::black_box(b);
            });
        }
        RtcpPacket::ReceiverReport(rr) => rr.report_blocks().for_each(|b| {
            std::hint::black_box(b);
        }),
        RtcpPacket::Bye(bye) => {
            bye.ssrcs().for_each(|s| {
                std::hint::black_box(s);
            });
            std::hint::black_box(bye.reason());
        }
        RtcpPacket::TransportFeedback(fb) | RtcpPacket::PayloadFeedback(fb) => {
            // Every interpretation, whatever the FMT says: none may panic.
            fb.nack_pairs().for_each(|p| {
                std::hint::black_box(p);
            });
            let lost = fb.lost_sequence_numbers().count();
            assert!(lost <= fb.fci.len() / 4 * 17);
            fb.fir_entries().for_each(|e| {
                std::hint::black_box(e);
            });
            if let Some(remb) = fb.remb() {
                std::hint::black_box(remb.bitrate_bps);
                remb.ssrcs().for_each(|s| {
                    std::hint::black_box(s);
                });
            }
        }
        RtcpPacket::Sdes(body) | RtcpPacket::App(body) | RtcpPacket::ExtendedReport(body) => {
            std::hint::black_box(body);
        }
        RtcpPacket::Unknown { body, .. } => {
            std::hint::black_box(body);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let valid = rtcp::validate(data);

    let mut count = 0;
    let mut iter = rtcp::iter_compound(data);
    let mut ranges = Vec::new();
    while let Some(item) = iter.next_with_range() {
        match item {
            Ok((range, packet)) => {
                assert!(range.start < range.end && range.end <= data.len());
                assert_eq!(data[range.start + 1], packet.packet_type());
                walk(&packet);
                ranges.push((range, packet.packet_type()));
                count += 1;
            }
            Err(e) => {
                assert_eq!(valid, Err(e), "validate and the iterator disagree");
                break;
            }
        }
    }
    if let Ok(n) = valid {
        assert_eq!(n, count);
    }

    // Rewriting fields in place keeps the framing intact, on the packet types whose parser
    // guarantees the field lies in the body (and so never overlaps a padding count).
    let mut copy = data.to_vec();
    for (range, pt) in &ranges {
        let sub = &mut copy[range.clone()];
        match *pt {
            PSFB | RTPFB => {
                rtcp::set_sender_ssrc(sub, Ssrc(0x1234_5678));
                rtcp::set_media_ssrc(sub, Ssrc(0x9abc_def0));
            }
            SR | RR | APP | XR => {
                rtcp::set_sender_ssrc(sub, Ssrc(0x1234_5678));
                rtcp::set_report_block_ssrc(sub, 0, Ssrc(1));
            }
            _ => {}
        }
    }
    if valid.is_ok() {
        assert_eq!(rtcp::validate(&copy), valid);
    }
});
