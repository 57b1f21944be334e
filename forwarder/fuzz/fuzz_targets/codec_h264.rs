//! H.264 RTP payloads (RFC 6184 §5): single NAL unit, STAP-A and FU-A through
//! `codec::inspect`; the munger must leave H.264 untouched.
#![no_main]

use fanout_forwarder::codec::{self, Codec, PictureIdMunger};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&control, payload)) = data.split_first() else {
        return;
    };
    let marker = control & 1 != 0;
    let Ok(info) = codec::inspect(Codec::H264, payload, marker) else {
        return;
    };
    assert_eq!(info.end_of_frame, marker);
    assert_eq!(info.keyframe, info.layer_keyframe);
    assert!(info.picture_id.is_none() && info.tl0_pic_idx.is_none());
    let mut copy = payload.to_vec();
    let mut munger = PictureIdMunger::new();
    munger.rewrite(Codec::H264, &mut copy, &info, control & 2 != 0);
    assert!(munger.rewrite_retransmission(Codec::H264, &mut copy, &info));
    assert_eq!(copy, payload);
});
