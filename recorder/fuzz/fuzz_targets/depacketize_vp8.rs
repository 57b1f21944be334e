//! The vp8 depacketizer (RFC 7741) on arbitrary payloads, checked as `video.rs` says.
#![no_main]

use fanout_recorder::stitch::depacketize::vp8::Vp8Depacketizer;
use libfuzzer_sys::fuzz_target;

#[path = "video.rs"]
mod video;

fuzz_target!(|data: &[u8]| video::check(Vp8Depacketizer, data));
