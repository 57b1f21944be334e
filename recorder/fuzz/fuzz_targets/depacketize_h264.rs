//! The h264 depacketizer (RFC 6184) on arbitrary payloads, checked as `video.rs` says.
#![no_main]

use fanout_recorder::stitch::depacketize::h264::H264Depacketizer;
use libfuzzer_sys::fuzz_target;

#[path = "video.rs"]
mod video;

fuzz_target!(|data: &[u8]| video::check(H264Depacketizer::default(), data));
