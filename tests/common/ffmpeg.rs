//! FFmpeg as the real SRTP peers (AES_CM_128_HMAC_SHA1_80/32 only; one port per stream,
//! RTCP on the next port, no rtcp-mux: see PLATFORM.md).
//!
//! * Publisher: one `ffmpeg` encoding `testsrc` to VP8 and `sine` to Opus, live (`-re`),
//!   through the `tee` muxer into two SRTP RTP outputs (one per stream, both to the
//!   forwarder's port) and a Matroska file: the file holds exactly the encoded frames
//!   that were sent.
//! * Receiver: one `ffmpeg` per receiver, reading an SDP with two m-lines, each with its
//!   own `a=crypto` key, copying both streams into a WebM file. It exits by itself
//!   ("Connection timed out") once no packet has arrived for 10 s (libavformat/rtsp.c's
//!   fixed read timeout in FFmpeg 5.1, not the 2 s PLATFORM.md mentions): the clean end
//!   of a complete file, at the cost of 10 s per run.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fanout_forwarder::srtp::SrtpProfile;

use crate::forwarder::SrtpKey;
use crate::meeting::{MeetingPlan, PeerKit, ReceiverPlan, MEDIA, VIDEO, VIDEO_FPS};
use crate::process::{tail, Proc};

/// How long a receiver may take to notice the end of the media and exit.
const RECEIVER_EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// The FFmpeg kit.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ffmpeg;

/// The SDP header of a receiver at `address` (where the forwarder sends its media).
fn sdp_header(address: IpAddr) -> String {
    let family = if address.is_ipv4() { "IP4" } else { "IP6" };
    format!(
        "v=0\r\no=- 0 0 IN {family} {address}\r\ns=fanout receiver\r\nc=IN {family} {address}\r\n\
         t=0 0\r\n"
    )
}

/// The SDP (RFC 4566) of a receiver at `address`, with one `a=crypto` line (RFC 4568) per
/// m-line.
pub fn receiver_sdp(receiver: &ReceiverPlan, profile: SrtpProfile, address: IpAddr) -> String {
    let mut sdp = sdp_header(address);
    for (i, m) in MEDIA.iter().enumerate() {
        let rtpmap = if *m == VIDEO {
            "VP8/90000"
        } else {
            "opus/48000/2"
        };
        let _ = write!(
            sdp,
            "m={kind} {port} RTP/AVP {pt}\r\na=rtpmap:{pt} {rtpmap}\r\n\
             a=crypto:1 {suite} {key}\r\n",
            kind = m.kind,
            port = receiver.ports[i],
            pt = m.payload_type,
            suite = profile.name(),
            key = receiver.keys[i].inline(),
        );
    }
    sdp
}

/// The `tee` muxer's output list: one SRTP RTP output per stream, and the sent file.
fn tee_outputs(plan: &MeetingPlan) -> String {
    let mut outputs = Vec::new();
    for (i, m) in MEDIA.iter().enumerate() {
        let select = if *m == VIDEO { "v" } else { "a" };
        // Base64 has no ':', '|', '[' or ']', the tee option syntax's special characters.
        outputs.push(format!(
            "[select={select}:f=rtp:payload_type={pt}:ssrc={ssrc}:srtp_out_suite={suite}:\
             srtp_out_params={key}]srtp://{listen}?pkt_size=1200",
            pt = m.payload_type,
            ssrc = m.ssrc,
            suite = plan.profile.name(),
            key = plan.publisher.keys[i].base64(),
            listen = plan.listen,
        ));
    }
    outputs.push(format!("[f=matroska]{}", plan.sent_file.display()));
    outputs.join("|")
}

impl PeerKit for Ffmpeg {
    fn name(&self) -> &'static str {
        "FFmpeg"
    }

    fn tools(&self) -> &'static [&'static str] {
        &["ffmpeg"]
    }

    fn extension(&self) -> &'static str {
        "webm"
    }

    fn start_receiver(&self, plan: &MeetingPlan, receiver: &ReceiverPlan) -> Result<Proc> {
        let sdp = plan.dir.join(format!("{}.sdp", receiver.id));
        std::fs::write(&sdp, receiver_sdp(receiver, plan.profile, plan.peer_ip))
            .with_context(|| format!("cannot write {}", sdp.display()))?;
        let mut command = Command::new("ffmpeg");
        command
            .args(["-nostdin", "-hide_banner", "-nostats"])
            .args(["-protocol_whitelist", "file,udp,rtp,srtp"])
            .args(["-reorder_queue_size", "500"])
            .arg("-i")
            .arg(&sdp)
            .args(["-map", "0", "-c", "copy", "-y"])
            .arg(&receiver.output);
        Proc::spawn(format!("ffmpeg {}", receiver.id), command)
    }

    fn receiver_ports(&self, receiver: &ReceiverPlan) -> Vec<u16> {
        // RTP and RTCP of both m-lines.
        receiver.ports.iter().flat_map(|&p| [p, p + 1]).collect()
    }

    fn start_publisher(&self, plan: &MeetingPlan) -> Result<Proc> {
        let seconds = plan.seconds;
        let mut command = Command::new("ffmpeg");
        command
            .args(["-nostdin", "-hide_banner", "-nostats", "-re"])
            .args(["-f", "lavfi", "-i"])
            .arg(format!(
                "testsrc=size=640x360:rate={VIDEO_FPS}:duration={seconds}"
            ))
            .args(["-f", "lavfi", "-i"])
            .arg(format!(
                "sine=frequency=440:sample_rate=48000:duration={seconds}"
            ))
            .args(["-map", "0:v", "-map", "1:a"])
            // One encoder thread: libvpx's VP8 worker threads busy-wait on each other,
            // which on a loaded 2-core machine slows encoding below real time.
            .args(["-c:v", "libvpx", "-threads", "1"])
            .args(["-deadline", "realtime", "-cpu-used", "8"])
            .args(["-b:v", "1M", "-g", "30", "-auto-alt-ref", "0"])
            .args(["-error-resilient", "1"])
            .args(["-c:a", "libopus", "-b:a", "64k"])
            .args(["-f", "tee"])
            .arg(tee_outputs(plan));
        Proc::spawn("ffmpeg publisher", command)
    }

    fn finish_receiver(&self, proc: &mut Proc, receiver: &ReceiverPlan) -> Result<String> {
        let status = proc.wait_timeout(RECEIVER_EXIT_TIMEOUT)?;
        let stderr = proc.stderr();
        // FFmpeg's SDP input ends on a read timeout once the media stops; depending on
        // timing it reports that as exit 255 or as a clean end.
        let timed_out = stderr.contains("Connection timed out");
        if status.success() || (status.code() == Some(255) && timed_out) || receiver.wrong_key {
            Ok(format!(
                "{status}{}",
                if timed_out {
                    " after the media stopped"
                } else {
                    ""
                }
            ))
        } else {
            bail!(
                "ffmpeg {} failed ({status}); stderr:\n{}",
                receiver.id,
                tail(&stderr)
            )
        }
    }

    fn auth_failure_marker(&self) -> Option<&'static str> {
        // libavformat/srtp.c logs this for every packet whose tag does not verify.
        Some("HMAC mismatch")
    }

    fn receivers_end(&self) -> &'static str {
        // libavformat/rtsp.c: the SDP input gives up after 10 s without a packet.
        "FFmpeg's SDP input exits 10 s after the last packet"
    }
}

/// One simulcast encoding of [`simulcast_publisher`]: its own libvpx encoder instance and
/// its own RTP output (its own source port), all on one SRTP leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimulcastEncoding {
    pub width: u32,
    pub height: u32,
    pub ssrc: u32,
    pub bitrate_kbps: u32,
}

/// An FFmpeg publisher of simulcast VP8: `testsrc` at the first encoding's size, split and
/// scaled to every encoding's size (so every encoding shows the same frames at the same
/// instants), each encoded by its own libvpx with a keyframe every `VIDEO_FPS` frames, and
/// sent as SRTP from its own socket to `listen`, all with one key (one leg) and SSRCs
/// of their own. Runs live (`-re`) for `seconds`.
pub fn simulcast_publisher(
    encodings: &[SimulcastEncoding],
    payload_type: u8,
    key: &SrtpKey,
    listen: SocketAddr,
    seconds: u32,
) -> Result<Proc> {
    let Some(first) = encodings.first() else {
        bail!("a simulcast publisher needs at least one encoding");
    };
    let mut graph = format!("[0:v]split={}", encodings.len());
    for i in 0..encodings.len() {
        let _ = write!(graph, "[s{i}]");
    }
    for (i, e) in encodings.iter().enumerate() {
        let _ = write!(graph, ";[s{i}]scale={}:{}[e{i}]", e.width, e.height);
    }
    let mut command = Command::new("ffmpeg");
    command
        .args(["-nostdin", "-hide_banner", "-nostats", "-re"])
        .args(["-f", "lavfi", "-i"])
        .arg(format!(
            "testsrc=size={}x{}:rate={VIDEO_FPS}:duration={seconds}",
            first.width, first.height
        ))
        .arg("-filter_complex")
        .arg(graph);
    for (i, e) in encodings.iter().enumerate() {
        command
            .args(["-map", &format!("[e{i}]")])
            // One encoder thread: libvpx's VP8 worker threads busy-wait on each other,
            // which on a loaded 2-core machine slows encoding below real time.
            .args(["-c:v", "libvpx", "-threads", "1"])
            .args(["-deadline", "realtime", "-cpu-used", "8"])
            .args(["-b:v", &format!("{}k", e.bitrate_kbps)])
            .args(["-g", &VIDEO_FPS.to_string(), "-auto-alt-ref", "0"])
            .args(["-error-resilient", "1"])
            .args(["-payload_type", &payload_type.to_string()])
            .args(["-ssrc", &e.ssrc.to_string()])
            .args(["-f", "rtp", "-srtp_out_suite", key.profile().name()])
            .args(["-srtp_out_params", &key.base64()])
            .arg(format!("srtp://{listen}?pkt_size=1200"));
    }
    Proc::spawn("ffmpeg simulcast publisher", command)
}

/// The SDP (RFC 4566) of a receiver at `address` with one VP8 m-line on `port` and its
/// `a=crypto` key (RFC 4568).
pub fn vp8_receiver_sdp(address: IpAddr, port: u16, payload_type: u8, key: &SrtpKey) -> String {
    format!(
        "{header}m=video {port} RTP/AVP {payload_type}\r\na=rtpmap:{payload_type} VP8/90000\r\n\
         a=crypto:1 {suite} {key}\r\n",
        header = sdp_header(address),
        suite = key.profile().name(),
        key = key.inline(),
    )
}

/// An FFmpeg receiver of the SDP at `sdp`, copying what it receives into `output`. It
/// exits by itself 10 s after the last packet (see the module docs); wait for it with
/// [`finish_sdp_receiver`].
pub fn sdp_receiver(sdp: &Path, output: &Path) -> Result<Proc> {
    let mut command = Command::new("ffmpeg");
    command
        .args(["-nostdin", "-hide_banner", "-nostats"])
        .args(["-protocol_whitelist", "file,udp,rtp,srtp"])
        .args(["-reorder_queue_size", "500"])
        .arg("-i")
        .arg(sdp)
        .args(["-map", "0", "-c", "copy", "-y"])
        .arg(output);
    Proc::spawn("ffmpeg receiver", command)
}

/// Waits for a receiver of [`sdp_receiver`] to notice the end of the media and exit; a
/// failure carries its stderr.
pub fn finish_sdp_receiver(proc: &mut Proc) -> Result<()> {
    let status = proc.wait_timeout(RECEIVER_EXIT_TIMEOUT)?;
    let stderr = proc.stderr();
    if status.success() || (status.code() == Some(255) && stderr.contains("Connection timed out")) {
        Ok(())
    } else {
        bail!(
            "{} failed ({status}); stderr:\n{}",
            proc.name(),
            tail(&stderr)
        )
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn sdp_names_the_receivers_address() {
        let key = SrtpKey::generate(SrtpProfile::AesCm128HmacSha1_80);
        let loopback = vp8_receiver_sdp(Ipv4Addr::LOCALHOST.into(), 5004, 96, &key);
        // On loopback, exactly the SDP the tests always gave FFmpeg.
        assert!(loopback.starts_with(
            "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=fanout receiver\r\nc=IN IP4 127.0.0.1\r\n\
             t=0 0\r\nm=video 5004 RTP/AVP 96\r\n"
        ));
        let veth = vp8_receiver_sdp(Ipv4Addr::new(10, 214, 0, 1).into(), 5004, 96, &key);
        assert!(veth.contains("\r\nc=IN IP4 10.214.0.1\r\n"), "{veth}");
    }
}
