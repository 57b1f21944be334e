//! VP9 payload descriptor and scalability structure (RFC 9628 §4.2, §4.2.1):
//! `codec::inspect`, then the in-place rewriters and the `PictureIdMunger` on what it
//! accepted; checks that written values read back.
#![no_main]

use fanout_forwarder::codec::{self, Codec, PictureIdMunger};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&control, payload)) = data.split_first() else {
        return;
    };
    let marker = control & 1 != 0;
    let Ok(info) = codec::inspect(Codec::Vp9, payload, marker) else {
        return;
    };
    assert!(info.descriptor_len <= payload.len());
    // VP9 ends a layer frame with its own E bit, not the RTP marker.
    assert_eq!(info.end_of_frame, payload[0] & 0x04 != 0);
    let mut copy = payload.to_vec();
    let id = u16::from_le_bytes([control, control.rotate_left(3)]);
    if codec::set_vp9_picture_id(&mut copy, &info, id) {
        let mask = if info.picture_id_bits == 7 {
            0x7f
        } else {
            0x7fff
        };
        let again = codec::inspect(Codec::Vp9, &copy, marker).expect("still parses");
        assert_eq!(again.picture_id, Some(id & mask));
    }
    if codec::set_vp9_tl0_pic_idx(&mut copy, &info, control) {
        let again = codec::inspect(Codec::Vp9, &copy, marker).expect("still parses");
        assert_eq!(again.tl0_pic_idx, Some(control));
    }
    let mut munger = PictureIdMunger::new();
    munger.rewrite(Codec::Vp9, &mut copy, &info, control & 2 != 0);
    munger.rewrite(Codec::Vp9, &mut copy, &info, false);
    let _ = munger.rewrite_retransmission(Codec::Vp9, &mut copy, &info);
    assert_eq!(copy.len(), payload.len());
});
