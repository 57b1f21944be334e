//! Shared by the stitching tests: real FFmpeg senders, capture over UDP sockets with
//! arrival times, loss and reordering injection, an independent frame oracle, and
//! ffprobe helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fanout_recorder::stitch::{Codec, RecordedPacket, StreamKey, TrackKind};

/// Whether ffmpeg and ffprobe are installed; tests that need them say loudly that they
/// skip when not.
pub fn have_ffmpeg() -> bool {
    let ok = |tool: &str| {
        Command::new(tool)
            .arg("-version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let present = ok("ffmpeg") && ok("ffprobe");
    if !present {
        eprintln!("SKIPPED: ffmpeg/ffprobe not installed (apt-get install ffmpeg)");
    }
    present
}

pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// A fresh directory for one test's files.
pub fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fanout-stitch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One captured datagram.
#[derive(Debug, Clone)]
pub struct Captured {
    pub arrival_micros: u64,
    pub bytes: Vec<u8>,
}

/// UDP receivers, one per RTP stream, each with a socket for the RTCP FFmpeg sends to
/// another port (so no ICMP errors come back to it). Each socket is read on its own
/// thread, which stamps arrival times.
pub struct CaptureSession {
    pub ports: Vec<u16>,
    pub rtcp_ports: Vec<u16>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Captured>>>,
    _rtcp: Vec<UdpSocket>,
}

impl CaptureSession {
    pub fn start(streams: usize) -> CaptureSession {
        let stop = Arc::new(AtomicBool::new(false));
        let mut ports = Vec::new();
        let mut rtcp_ports = Vec::new();
        let mut rtcp = Vec::new();
        let mut threads = Vec::new();
        for _ in 0..streams {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
            // Capture faster than real time: a burst of a key frame must not overflow.
            let _ = socket.set_recv_buffer_size(4 << 20);
            socket
                .bind(
                    &"127.0.0.1:0"
                        .parse::<std::net::SocketAddr>()
                        .unwrap()
                        .into(),
                )
                .unwrap();
            let socket: UdpSocket = socket.into();
            socket
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            enable_kernel_timestamps(&socket);
            ports.push(socket.local_addr().unwrap().port());
            let control = UdpSocket::bind("127.0.0.1:0").unwrap();
            rtcp_ports.push(control.local_addr().unwrap().port());
            rtcp.push(control);
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                let mut captured = Vec::new();
                let mut buffer = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Some((n, arrival_micros)) = receive_stamped(&socket, &mut buffer) {
                        captured.push(Captured {
                            arrival_micros,
                            bytes: buffer[..n].to_vec(),
                        });
                    }
                }
                // Whatever is still queued.
                socket.set_nonblocking(true).unwrap();
                while let Some((n, arrival_micros)) = receive_stamped(&socket, &mut buffer) {
                    captured.push(Captured {
                        arrival_micros,
                        bytes: buffer[..n].to_vec(),
                    });
                }
                captured
            }));
        }
        CaptureSession {
            ports,
            rtcp_ports,
            stop,
            threads,
            _rtcp: rtcp,
        }
    }

    /// The RTP URL FFmpeg sends stream `i` to.
    pub fn url(&self, i: usize) -> String {
        format!(
            "rtp://127.0.0.1:{}?pkt_size=1200&rtcpport={}",
            self.ports[i], self.rtcp_ports[i]
        )
    }

    /// Stops reading; the datagrams of each stream in arrival order.
    pub fn finish(self) -> Vec<Vec<Captured>> {
        std::thread::sleep(Duration::from_millis(200));
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect()
    }
}

/// Asks the kernel to stamp each datagram with its receive time (SO_TIMESTAMPNS): the
/// machine running the tests is shared and a starved reader thread would otherwise stamp
/// packets seconds late, which a forwarder's receive path would not.
fn enable_kernel_timestamps(socket: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a c_int option value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_TIMESTAMPNS: {}", std::io::Error::last_os_error());
}

/// Receives one datagram with its kernel receive time (unix µs); falls back to now if
/// the kernel gave none.
fn receive_stamped(socket: &UdpSocket, buffer: &mut [u8]) -> Option<(usize, u64)> {
    use std::os::fd::AsRawFd;
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: buffer.len(),
    };
    // SAFETY: zeroed msghdr is a valid "empty" header; the pointers set below outlive
    // the call.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.as_mut_ptr().cast();
    header.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: the descriptor is valid and `header` points at live buffers of the sizes
    // given.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut header, 0) };
    if n < 0 {
        return None;
    }
    let mut stamp = None;
    // SAFETY: CMSG_* walk the control buffer the kernel filled, within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let time = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>());
                stamp = Some(time.tv_sec as u64 * 1_000_000 + time.tv_nsec as u64 / 1000);
            }
            cmsg = libc::CMSG_NXTHDR(&header, cmsg);
        }
    }
    Some((n as usize, stamp.unwrap_or_else(unix_micros)))
}

pub fn spawn_ffmpeg(args: &[String]) -> Child {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-v", "error"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ffmpeg starts")
}

pub fn wait_ffmpeg(child: Child) {
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "ffmpeg sender failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// FFmpeg arguments of a VP8 output to RTP, with the flags of shared/PLATFORM.md:
/// keyframe every 30 frames, error resilient, no alt-ref.
pub fn vp8_output(map: &str, ssrc: u32, bitrate: &str, url: &str) -> Vec<String> {
    let ssrc = ssrc.to_string();
    strings(&[
        "-map",
        map,
        "-c:v",
        "libvpx",
        "-deadline",
        "realtime",
        "-cpu-used",
        "8",
        "-b:v",
        bitrate,
        "-g",
        "30",
        "-keyint_min",
        "30",
        "-auto-alt-ref",
        "0",
        "-error-resilient",
        "1",
        "-payload_type",
        "96",
        "-ssrc",
        &ssrc,
        "-f",
        "rtp",
        url,
    ])
}

pub fn opus_output(map: &str, ssrc: u32, url: &str) -> Vec<String> {
    let ssrc = ssrc.to_string();
    strings(&[
        "-map",
        map,
        "-c:a",
        "libopus",
        "-b:a",
        "64k",
        "-payload_type",
        "111",
        "-ssrc",
        &ssrc,
        "-f",
        "rtp",
        url,
    ])
}

pub fn key(participant: &str, kind: TrackKind, encoding: u8) -> StreamKey {
    StreamKey {
        participant: participant.to_string(),
        kind,
        encoding,
    }
}

pub fn recorded(stream: &StreamKey, codec: Codec, captured: &[Captured]) -> Vec<RecordedPacket> {
    let clock_rate = if codec == Codec::Opus { 48_000 } else { 90_000 };
    captured
        .iter()
        .map(|c| RecordedPacket {
            stream: stream.clone(),
            codec,
            clock_rate,
            arrival_micros: c.arrival_micros,
            rtp: c.bytes.clone(),
        })
        .collect()
}

/// A small deterministic generator (xorshift64*), so a failing run can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// The RTP fields the oracle needs, read here independently of the stitcher.
#[derive(Debug, Clone, Copy)]
pub struct RtpFields {
    pub sequence: u16,
    pub timestamp: u32,
    pub marker: bool,
    pub payload_offset: usize,
}

pub fn rtp_fields(packet: &[u8]) -> RtpFields {
    let csrcs = usize::from(packet[0] & 0x0f);
    let mut offset = 12 + 4 * csrcs;
    if packet[0] & 0x10 != 0 {
        offset += 4 + 4 * usize::from(u16::from_be_bytes([packet[offset + 2], packet[offset + 3]]));
    }
    RtpFields {
        sequence: u16::from_be_bytes([packet[2], packet[3]]),
        timestamp: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
        marker: packet[1] & 0x80 != 0,
        payload_offset: offset,
    }
}

/// Whether a VP8 RTP packet starts a key frame (RFC 7741 §4.2-4.3: skip the descriptor,
/// then bit 0 of the frame tag is 0 on key frames).
pub fn vp8_keyframe_start(packet: &[u8]) -> bool {
    let p = &packet[rtp_fields(packet).payload_offset..];
    let mut at = 1;
    if p[0] & 0x80 != 0 {
        let x = p[1];
        at = 2;
        if x & 0x80 != 0 {
            at += if p[at] & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            at += 1;
        }
        if x & 0x30 != 0 {
            at += 1;
        }
    }
    p[0] & 0x10 != 0 && p[0] & 0x07 == 0 && p[at] & 0x01 == 0
}

/// What a correct stitcher must write for one video stream, from the packets the sender
/// sent (as captured, in sequence order) and the set of sequence numbers dropped:
/// frames are runs of packets with one timestamp; a frame is complete when none of its
/// packets was dropped; complete frames are written from the first keyframe on, and
/// after an incomplete frame only from the next keyframe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameExpectation {
    pub frames: u64,
    pub complete: u64,
    pub written: u64,
}

pub fn expected_frames(
    sent: &[Captured],
    dropped: &std::collections::HashSet<u16>,
    keyframe_start: fn(&[u8]) -> bool,
) -> FrameExpectation {
    let mut by_sequence: BTreeMap<u64, &Captured> = BTreeMap::new();
    // Extend sequence numbers (the capture is in order, the test's streams are short).
    let mut last: Option<(u16, u64)> = None;
    for c in sent {
        let seq = rtp_fields(&c.bytes).sequence;
        let extended = match last {
            None => u64::from(seq) + (1 << 16),
            Some((raw, ext)) => (ext as i64 + i64::from(seq.wrapping_sub(raw) as i16)) as u64,
        };
        last = Some((seq, extended));
        by_sequence.insert(extended, c);
    }
    let sequences: Vec<u64> = by_sequence.keys().copied().collect();
    assert!(
        sequences.windows(2).all(|w| w[1] == w[0] + 1),
        "the capture itself lost packets: the oracle needs every sent packet"
    );
    let mut expectation = FrameExpectation::default();
    let mut waiting = true;
    let mut current: Option<(u32, bool, bool)> = None; // (timestamp, complete, keyframe)
    let close = |frame: (u32, bool, bool), waiting: &mut bool, e: &mut FrameExpectation| {
        e.frames += 1;
        let (_, complete, keyframe) = frame;
        if !complete {
            *waiting = true;
            return;
        }
        e.complete += 1;
        if *waiting && !keyframe {
            return;
        }
        *waiting = false;
        e.written += 1;
    };
    for c in by_sequence.values() {
        let fields = rtp_fields(&c.bytes);
        let lost = dropped.contains(&fields.sequence);
        match &mut current {
            Some(frame) if frame.0 == fields.timestamp => frame.1 &= !lost,
            _ => {
                if let Some(frame) = current.take() {
                    close(frame, &mut waiting, &mut expectation);
                }
                current = Some((fields.timestamp, !lost, keyframe_start(&c.bytes)));
            }
        }
        if fields.marker {
            if let Some(frame) = current.take() {
                close(frame, &mut waiting, &mut expectation);
            }
        }
    }
    if let Some(frame) = current.take() {
        // No marker: the stitcher cannot know the frame ended.
        close((frame.0, false, frame.2), &mut waiting, &mut expectation);
    }
    expectation
}

/// Drops `loss_percent` of the packets (by sequence number), swaps some neighbours and
/// duplicates a few; returns the impaired list and the dropped sequence numbers.
pub fn impair(
    sent: &[Captured],
    rng: &mut Rng,
    loss_percent: u64,
) -> (Vec<Captured>, std::collections::HashSet<u16>) {
    let mut dropped = std::collections::HashSet::new();
    let mut kept = Vec::new();
    for c in sent {
        if rng.chance(loss_percent) {
            dropped.insert(rtp_fields(&c.bytes).sequence);
        } else {
            kept.push(c.clone());
            if rng.chance(1) {
                kept.push(c.clone()); // a retransmission that was not needed
            }
        }
    }
    // Reordering: swap a packet with the one two places later; arrival times stay in
    // place (the later-sent packet arrived first).
    let mut i = 0;
    while i + 2 < kept.len() {
        if rng.chance(3) {
            let (first, second) = (kept[i].arrival_micros, kept[i + 2].arrival_micros);
            kept.swap(i, i + 2);
            kept[i].arrival_micros = first;
            kept[i + 2].arrival_micros = second;
            i += 3;
        } else {
            i += 1;
        }
    }
    (kept, dropped)
}

/// `ffprobe` output of the given entries (compact, no headers).
pub fn ffprobe(path: &Path, args: &[&str]) -> String {
    let output = Command::new("ffprobe")
        .args(["-v", "error"])
        .args(args)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Decodes the whole file; returns FFmpeg's error output (empty when clean). Frames keep
/// the file's own time base: a tile's frames are as far apart as their RTP timestamps and
/// the sender's clock say, not on a 30 fps grid, and rounding them onto one would report
/// two frames at one time.
pub fn decode_errors(path: &Path) -> String {
    let output = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(["-enc_time_base:v", "-1", "-f", "null", "-"])
        .output()
        .unwrap();
    let mut errors = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        errors.push_str(&format!(" (exit {})", output.status));
    }
    errors
}

pub fn duration_seconds(path: &Path) -> f64 {
    ffprobe(
        path,
        &["-show_entries", "format=duration", "-of", "csv=p=0"],
    )
    .trim()
    .parse()
    .unwrap()
}

pub fn count_frames(path: &Path) -> u64 {
    ffprobe(
        path,
        &[
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "csv=p=0",
        ],
    )
    .trim()
    .parse()
    .unwrap()
}

/// Asserts that packet timestamps (dts) increase in every stream of the file.
pub fn assert_monotonic_packets(path: &Path) {
    let listing = ffprobe(
        path,
        &[
            "-show_entries",
            "packet=stream_index,dts_time",
            "-of",
            "csv=p=0",
        ],
    );
    let mut last: BTreeMap<String, f64> = BTreeMap::new();
    let mut packets = 0;
    for line in listing.lines() {
        let mut fields = line.split(',');
        let (Some(stream), Some(dts)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Ok(dts) = dts.parse::<f64>() else {
            continue;
        };
        if let Some(&previous) = last.get(stream) {
            assert!(
                dts > previous,
                "stream {stream}: dts {dts} after {previous}"
            );
        }
        last.insert(stream.to_string(), dts);
        packets += 1;
    }
    assert!(packets > 0, "no packets in {}", path.display());
}

/// Mean luma of a region of the frame shown at `at_seconds`.
pub fn mean_luma(path: &Path, at_seconds: f64, (x, y, w, h): (u32, u32, u32, u32)) -> f64 {
    let output = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-nostdin",
            "-v",
            "error",
            "-ss",
            &format!("{at_seconds}"),
            "-i",
        ])
        .arg(path)
        .args([
            "-frames:v",
            "1",
            "-vf",
            &format!("crop={w}:{h}:{x}:{y},format=gray"),
            "-f",
            "rawvideo",
            "-",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success() && !output.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout.iter().map(|&b| f64::from(b)).sum::<f64>() / output.stdout.len() as f64
}
