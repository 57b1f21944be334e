//! SRTP/SRTCP unprotect (RFC 3711, RFC 7714) of arbitrary bytes under every profile.
//!
//! With a fixed key almost nothing authenticates, so this exercises the framing that runs
//! before and around authentication: trailer and index parsing, RTP header parsing to find
//! the encrypted portion, length arithmetic. A fresh context per input keeps runs
//! deterministic (no replay-window or rollover state carried from one input to the next), so
//! a crash reproduces from its artifact alone.
#![no_main]

use fanout_forwarder::srtp::{MasterKey, SrtpContext, SrtpProfile};
use libfuzzer_sys::fuzz_target;

/// Enough key||salt bytes for the largest profile (AEAD_AES_256_GCM: 32 + 12).
const KEY_AND_SALT: [u8; 44] = [
    0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10,
    0x0f, 0x1e, 0x2d, 0x3c, 0x4b, 0x5a, 0x69, 0x78, 0x87, 0x96, 0xa5, 0xb4, 0xc3, 0xd2, 0xe1, 0xf0,
    0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc,
];

fuzz_target!(|data: &[u8]| {
    for profile in SrtpProfile::ALL {
        let len = profile.master_key_len() + profile.master_salt_len();
        // The slice has exactly the profile's key + salt length, which MasterKey::new accepts.
        let key = MasterKey::new(profile, &KEY_AND_SALT[..len]).unwrap();
        let mut context = SrtpContext::new(&key);

        let mut rtp = data.to_vec();
        if let Ok(plain_len) = context.unprotect_rtp(&mut rtp) {
            assert!(plain_len <= data.len());
        }
        let mut rtcp = data.to_vec();
        if let Ok(plain_len) = context.unprotect_rtcp(&mut rtcp) {
            assert!(plain_len <= data.len());
        }
    }
});
