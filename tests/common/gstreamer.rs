//! GStreamer as the real SRTP peers: `srtpenc`/`srtpdec` (libsrtp2), which also speak
//! AEAD_AES_128_GCM and AEAD_AES_256_GCM (RFC 7714).
//!
//! * Publisher: one `gst-launch-1.0` with two live chains, `videotestsrc ! vp8enc` and
//!   `audiotestsrc ! opusenc`, each teed into `rtp*pay ! srtpenc ! udpsink` (one socket per
//!   stream, to the forwarder's port) and into one `webmmux` writing the sent file.
//!   `num-buffers` bounds the media, so the pipeline ends (EOS) by itself.
//! * Receiver: one `gst-launch-1.0 -e -m` per receiver, two `udpsrc` with SRTP caps (SSRC,
//!   key, ciphers, ROC) `! srtpdec ! rtpjitterbuffer mode=none ! depay` into one
//!   `webmmux`. `udpsrc timeout=` posts `GstUDPSrcTimeout` after a second without data
//!   (printed by `-m`): once both sources have done so after the media ended, SIGINT
//!   makes `-e` send EOS, which finalises the file.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};
use fanout_forwarder::srtp::SrtpProfile;

use crate::meeting::{MeetingPlan, PeerKit, ReceiverPlan, AUDIO_FRAME_MS, MEDIA, VIDEO, VIDEO_FPS};
use crate::process::{tail, Proc};

/// How long after the media ends a receiver may take to report both sources idle.
const IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a receiver may take to finalise its file and exit after SIGINT.
const EOS_TIMEOUT: Duration = Duration::from_secs(20);
/// `udpsrc timeout`, in nanoseconds: one second without data.
const UDPSRC_IDLE_NS: u64 = 1_000_000_000;

/// The GStreamer kit.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gstreamer;

/// libsrtp cipher and authentication names of a profile, for SRTP and SRTCP
/// (AES_CM_128_HMAC_SHA1_32 keeps the 80-bit tag on SRTCP, RFC 4568 §6.2.1).
fn ciphers(profile: SrtpProfile) -> [&'static str; 4] {
    match profile {
        SrtpProfile::AeadAes128Gcm => ["aes-128-gcm", "null", "aes-128-gcm", "null"],
        SrtpProfile::AeadAes256Gcm => ["aes-256-gcm", "null", "aes-256-gcm", "null"],
        SrtpProfile::AesCm128HmacSha1_32 => {
            ["aes-128-icm", "hmac-sha1-32", "aes-128-icm", "hmac-sha1-80"]
        }
        _ => ["aes-128-icm", "hmac-sha1-80", "aes-128-icm", "hmac-sha1-80"],
    }
}

/// Source element names of a receiver, per medium.
const SOURCES: [&str; 2] = ["vsrc", "asrc"];

impl PeerKit for Gstreamer {
    fn name(&self) -> &'static str {
        "GStreamer"
    }

    fn tools(&self) -> &'static [&'static str] {
        &["gst-launch-1.0"]
    }

    fn extension(&self) -> &'static str {
        "webm"
    }

    fn start_receiver(&self, plan: &MeetingPlan, receiver: &ReceiverPlan) -> Result<Proc> {
        let [cipher, auth, rtcp_cipher, rtcp_auth] = ciphers(plan.profile);
        let mut args: Vec<String> = vec!["-e".into(), "-m".into()];
        for (i, m) in MEDIA.iter().enumerate() {
            let (media, clock_rate, encoding, depay) = if *m == VIDEO {
                ("video", 90000, "VP8", vec!["rtpvp8depay"])
            } else {
                // rtpopusdepay's caps lack the rate webmmux wants; opusparse adds it.
                (
                    "audio",
                    48000,
                    "OPUS",
                    vec!["rtpopusdepay", "!", "opusparse"],
                )
            };
            args.push("udpsrc".into());
            args.push(format!("name={}", SOURCES[i]));
            args.push(format!("address={}", plan.peer_ip));
            args.push(format!("port={}", receiver.ports[i]));
            args.push(format!("timeout={UDPSRC_IDLE_NS}"));
            args.push(format!(
                "caps=application/x-srtp,media=(string){media},clock-rate=(int){clock_rate},\
                 encoding-name=(string){encoding},payload=(int){pt},ssrc=(uint){ssrc},\
                 srtp-key=(buffer){key},srtp-cipher=(string){cipher},srtp-auth=(string){auth},\
                 srtcp-cipher=(string){rtcp_cipher},srtcp-auth=(string){rtcp_auth},roc=(uint)0",
                pt = m.payload_type,
                ssrc = m.ssrc,
                key = receiver.keys[i].hex(),
            ));
            args.extend(
                ["!", "srtpdec", "!", "rtpjitterbuffer", "mode=none", "!"].map(String::from),
            );
            args.extend(depay.into_iter().map(String::from));
            args.extend(["!", "queue", "!", "mux."].map(String::from));
        }
        args.extend(["webmmux", "name=mux", "!", "filesink"].map(String::from));
        args.push(format!("location={}", receiver.output.display()));
        let mut command = Command::new("gst-launch-1.0");
        command.args(args);
        Proc::spawn(format!("gst-launch {}", receiver.id), command)
    }

    fn receiver_ports(&self, receiver: &ReceiverPlan) -> Vec<u16> {
        receiver.ports.to_vec()
    }

    fn start_publisher(&self, plan: &MeetingPlan) -> Result<Proc> {
        let [cipher, auth, rtcp_cipher, rtcp_auth] = ciphers(plan.profile);
        let srtpenc = |i: usize| {
            format!(
                "srtpenc key={} rtp-cipher={cipher} rtp-auth={auth} rtcp-cipher={rtcp_cipher} \
                 rtcp-auth={rtcp_auth} ! udpsink host={} port={}",
                plan.publisher.keys[i].hex(),
                plan.listen.ip(),
                plan.listen.port()
            )
        };
        let video_frames = plan.seconds * VIDEO_FPS;
        let audio_frames = plan.seconds * 1000 / AUDIO_FRAME_MS;
        let samples_per_frame = 48 * AUDIO_FRAME_MS;
        let pipeline = format!(
            "videotestsrc is-live=true num-buffers={video_frames} \
             ! video/x-raw,width=640,height=360,framerate={VIDEO_FPS}/1 \
             ! vp8enc deadline=1 cpu-used=8 target-bitrate=1000000 keyframe-max-dist=30 \
               error-resilient=default ! tee name=vt \
             vt. ! queue ! rtpvp8pay pt={vpt} ssrc={vssrc} mtu=1200 ! {venc} \
             vt. ! queue ! mux. \
             audiotestsrc is-live=true num-buffers={audio_frames} \
               samplesperbuffer={samples_per_frame} freq=440 \
             ! audio/x-raw,rate=48000,channels=1 \
             ! opusenc frame-size={AUDIO_FRAME_MS} bitrate=64000 ! tee name=at \
             at. ! queue ! rtpopuspay pt={apt} ssrc={assrc} mtu=1200 ! {aenc} \
             at. ! queue ! mux. \
             webmmux name=mux ! filesink location={sent}",
            vpt = MEDIA[0].payload_type,
            vssrc = MEDIA[0].ssrc,
            venc = srtpenc(0),
            apt = MEDIA[1].payload_type,
            assrc = MEDIA[1].ssrc,
            aenc = srtpenc(1),
            sent = plan.sent_file.display(),
        );
        let mut command = Command::new("gst-launch-1.0");
        command.arg("-e").args(pipeline.split_whitespace());
        Proc::spawn("gst-launch publisher", command)
    }

    fn finish_receiver(&self, proc: &mut Proc, receiver: &ReceiverPlan) -> Result<String> {
        // Only timeouts posted after this point say the media is over: the sources were
        // idle before the publisher started too.
        let mark = proc.stdout_mark();
        proc.wait_stdout_after(mark, IDLE_TIMEOUT, "both sources idle", |text| {
            SOURCES.iter().all(|s| {
                text.lines().any(|l| {
                    l.contains(&format!("from element \"{s}\"")) && l.contains("GstUDPSrcTimeout")
                })
            })
        })?;
        let status = proc.stop(libc::SIGINT, EOS_TIMEOUT)?;
        if !status.success() {
            bail!(
                "gst-launch {} did not end cleanly on SIGINT ({status}); stderr:\n{}",
                receiver.id,
                tail(&proc.stderr())
            );
        }
        Ok(format!("{status} after SIGINT (EOS)"))
    }

    fn auth_failure_marker(&self) -> Option<&'static str> {
        // srtpdec only reports failures in debug logs; not checked.
        None
    }

    fn receivers_end(&self) -> &'static str {
        "each udpsrc reports 1 s without data, then SIGINT sends EOS"
    }
}
