//! Audience summaries of relay links (the APP "FORS" packets a child relay node sends its
//! parent): `sfu::audience::parse_summaries` on raw bytes and on every APP sub-packet of a
//! compound; what it accepts must write back and parse to the same entries, and merge
//! without panicking.
#![no_main]

use fanout_forwarder::ids::Ssrc;
use fanout_forwarder::rtcp::{self, RtcpPacket};
use fanout_forwarder::sfu::audience::{self, AudienceSummary, ENTRY_LEN};
use libfuzzer_sys::fuzz_target;

fn check(body: &[u8]) {
    let Some(entries) = audience::parse_summaries(body) else {
        return;
    };
    assert!(audience::is_summary(body));
    let entries: Vec<(Ssrc, AudienceSummary)> = entries.collect();
    let mut total = AudienceSummary::default();
    for (_, s) in &entries {
        total.merge(s);
        std::hint::black_box(s.mean_fraction_lost());
    }
    assert!(
        total.receivers()
            >= entries
                .iter()
                .map(|(_, s)| s.receivers())
                .max()
                .unwrap_or(0)
    );
    let mut buf = vec![0u8; 16 + ENTRY_LEN * entries.len()];
    let len = audience::write_summaries(&mut buf, Ssrc(1), &entries).expect("fits");
    let again: Vec<_> = audience::parse_summaries(&buf[4..len])
        .expect("what was accepted is accepted again")
        .collect();
    assert_eq!(again, entries);
}

fuzz_target!(|data: &[u8]| {
    check(data);
    for packet in rtcp::iter_compound(data).flatten() {
        if let RtcpPacket::App(body) = packet {
            check(body);
        }
    }
});
