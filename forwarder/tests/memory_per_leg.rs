//! Resident memory per subscriber leg stays within 16 KiB beyond the shared per-track
//! state, measured with 10,000 legs that have each carried traffic (so every lazily
//! created SRTP stream state exists).
//!
//! Alone in its own test binary so no other test's allocations share the process.

mod common;

use common::Scenario;
use fanout_forwarder::srtp::SrtpProfile;

const LEGS: usize = 10_000;
const BUDGET_PER_LEG: usize = 16 * 1024;

/// Resident set size of this process, from /proc/self/statm (pages).
fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let resident: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("statm format");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    resident * page
}

#[test]
fn ten_thousand_subscriber_legs_fit_the_budget() {
    for profile in [SrtpProfile::AeadAes128Gcm, SrtpProfile::AesCm128HmacSha1_80] {
        let mut s = Scenario::new(profile, 0);
        // Warm the shared paths (fan-out queue, first stream state) before measuring.
        s.add_subscriber(profile, 0);
        s.publish(1, 0, &[0u8; 1000]);
        let before = rss_bytes();
        for i in 1..LEGS {
            s.add_subscriber(profile, i);
        }
        let delivered = s.publish(2, 3000, &[0u8; 1000]);
        assert_eq!(delivered.len(), LEGS);
        let after = rss_bytes();
        // The scenario also keeps each subscriber's simulated peer (two SRTP contexts)
        // and an address map entry; subtract an identical measure of those.
        let per_leg_with_peers = (after.saturating_sub(before)) / (LEGS - 1);
        let peers = {
            let before = rss_bytes();
            let keep: Vec<_> = (0..LEGS)
                .map(|_| {
                    let key = fanout_forwarder::srtp::MasterKey::generate(profile);
                    (
                        fanout_forwarder::srtp::SrtpContext::new(&key),
                        fanout_forwarder::srtp::SrtpContext::new(&key),
                    )
                })
                .collect();
            let after = rss_bytes();
            drop(keep);
            after.saturating_sub(before) / LEGS
        };
        let per_leg = per_leg_with_peers.saturating_sub(peers);
        println!(
            "{}: {} bytes resident per subscriber leg ({} with the simulated peers, {} per peer)",
            profile.name(),
            per_leg,
            per_leg_with_peers,
            peers
        );
        assert!(
            per_leg <= BUDGET_PER_LEG,
            "{}: {per_leg} bytes per leg exceeds {BUDGET_PER_LEG}",
            profile.name()
        );
    }
}
