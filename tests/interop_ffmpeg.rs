//! Interop with FFmpeg over SRTP AES_CM_128_HMAC_SHA1_80 (RFC 3711, keys by RFC 4568
//! `inline:` key-params), through the standalone `fanout-forwarder` binary.
//!
//! What this proves:
//! * `every_frame_reaches_every_receiver`: an FFmpeg publisher's live VP8 video (testsrc,
//!   10 s at 30 fps: 300 frames) and Opus audio (sine), each stream from its own socket
//!   with non-muxed RTCP to the forwarder's port + 1, are authenticated and decrypted by
//!   the forwarder and re-encrypted per receiver: two FFmpeg receivers, each with its own
//!   keys per medium (an SDP with two m-lines and their own `a=crypto`), started before
//!   the publisher, decode exactly the frames the publisher encoded and sent (the
//!   publisher writes what it sends to a file through FFmpeg's `tee` muxer; frames are
//!   counted with `ffprobe -count_frames` on both sides). The forwarder's metrics agree:
//!   RTP arrived on both publisher legs, every receiver leg was sent exactly as many RTP
//!   packets as the matching publisher leg received, nothing was dropped (in particular
//!   no authentication failure), and the forwarder exits 0 on SIGTERM.
//! * `a_receiver_with_the_wrong_key_decodes_nothing`: the copies really are encrypted
//!   per receiver: next to a receiver with the right keys (which decodes every frame), a
//!   receiver given keys of its own that the forwarder does not use decodes nothing and
//!   reports HMAC mismatches, while the forwarder sends it every packet and counts no
//!   drop on its side.

use anyhow::Result;
use fanout_forwarder::srtp::SrtpProfile;
use fanout_tests::ffmpeg::Ffmpeg;
use fanout_tests::meeting::{self, RunOptions, VIDEO_FPS};

#[test]
fn every_frame_reaches_every_receiver() -> Result<()> {
    let seconds = 10;
    let report = meeting::run(
        &Ffmpeg,
        &RunOptions {
            profile: SrtpProfile::AesCm128HmacSha1_80,
            seconds,
            wrong_keys: vec![false, false],
            progress: true,
        },
    )?;
    eprintln!("{report}");
    assert_eq!(
        report.sent.video,
        u64::from(seconds * VIDEO_FPS),
        "the publisher encoded a different number of video frames than testsrc made"
    );
    report.assert_success();
    Ok(())
}

#[test]
fn a_receiver_with_the_wrong_key_decodes_nothing() -> Result<()> {
    let report = meeting::run(
        &Ffmpeg,
        &RunOptions {
            profile: SrtpProfile::AesCm128HmacSha1_80,
            seconds: 4,
            wrong_keys: vec![false, true],
            progress: true,
        },
    )?;
    eprintln!("{report}");
    let wrong = &report.receivers[1];
    assert!(wrong.wrong_key);
    assert_eq!(wrong.decoded, Default::default(), "{report}");
    assert_eq!(wrong.saw_auth_failures, Some(true), "{}", wrong.log_tail);
    assert_eq!(report.total_drops, 0, "{report}");
    report.assert_success();
    Ok(())
}
