//! The vp9 depacketizer (RFC 9628) on arbitrary payloads, checked as `video.rs` says.
#![no_main]

use fanout_recorder::stitch::depacketize::vp9::Vp9Depacketizer;
use libfuzzer_sys::fuzz_target;

#[path = "video.rs"]
mod video;

fuzz_target!(|data: &[u8]| video::check(Vp9Depacketizer, data));
