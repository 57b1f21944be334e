//! Interop with GStreamer (`srtpenc`/`srtpdec`, libsrtp2) over the AEAD profiles
//! AEAD_AES_128_GCM and AEAD_AES_256_GCM (RFC 7714), through the standalone
//! `fanout-forwarder` binary.
//!
//! What this proves, for each profile: a GStreamer publisher's live VP8 video
//! (videotestsrc, 10 s at 30 fps: 300 frames) and Opus audio (audiotestsrc, 20 ms
//! frames), each stream from its own socket, are authenticated and decrypted by the
//! forwarder and re-encrypted per receiver with GCM: two GStreamer receivers (`udpsrc`
//! with SRTP caps carrying SSRC, key and ciphers `! srtpdec ! rtpjitterbuffer ! depay !
//! webmmux`), each with its own keys per medium and started before the publisher, decode
//! exactly the frames the publisher encoded and sent (the publisher tees its encoded
//! streams into a WebM file; frames are counted with `ffprobe -count_frames` on both
//! sides). The forwarder's metrics agree: RTP arrived on both publisher legs, every
//! receiver leg was sent exactly as many RTP packets as the matching publisher leg
//! received, nothing was dropped (no authentication failure), and the forwarder exits 0
//! on SIGTERM.

use anyhow::Result;
use fanout_forwarder::srtp::SrtpProfile;
use fanout_tests::gstreamer::Gstreamer;
use fanout_tests::meeting::{self, RunOptions, VIDEO_FPS};

fn every_frame_reaches_every_receiver(profile: SrtpProfile) -> Result<()> {
    let seconds = 10;
    let report = meeting::run(
        &Gstreamer,
        &RunOptions {
            profile,
            seconds,
            wrong_keys: vec![false, false],
            progress: true,
        },
    )?;
    eprintln!("{report}");
    assert_eq!(
        report.sent.video,
        u64::from(seconds * VIDEO_FPS),
        "the publisher encoded a different number of video frames than it captured"
    );
    report.assert_success();
    Ok(())
}

#[test]
fn every_frame_reaches_every_receiver_aes_128_gcm() -> Result<()> {
    every_frame_reaches_every_receiver(SrtpProfile::AeadAes128Gcm)
}

#[test]
fn every_frame_reaches_every_receiver_aes_256_gcm() -> Result<()> {
    every_frame_reaches_every_receiver(SrtpProfile::AeadAes256Gcm)
}
