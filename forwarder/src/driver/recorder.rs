//! The driver's side of the recording tap: tap messages drained from the core
//! ([`Forwarder::poll_tap`]) go to the `fanout-recorder` process over its Unix datagram
//! socket, without ever waiting (docs/recording.md).
//!
//! The socket is non-blocking. When the recorder's receive queue is full, the message
//! that did not fit is kept and sent first at the next drain, and the messages behind it
//! stay in the core's tap queue (bounded, about a second of media) meanwhile: the kernel
//! queues only `net.unix.max_dgram_qlen` datagrams (10 by default) for a receiver that is
//! not connected back, whatever its SO_RCVBUF (unix(7)), so a key frame's burst that
//! meets a recorder thread that is not running at that moment would otherwise lose
//! packets. Only when the core's queue is full does the recording lose packets (counted
//! there, `fanout_recording_dropped_packets_total`); live media never waits. When the
//! recorder is not there (not started yet, restarting after a crash) messages are dropped
//! and counted, and the socket is connected again at most once a second.

use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{info, warn};

use crate::recording::MAX_MESSAGE_LEN;
use crate::sfu::Forwarder;

use super::common::DriverStats;

/// How long after a failed connection the next attempt waits.
const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

/// A connection to the recorder's socket, one per shard.
#[derive(Debug)]
pub struct RecorderTap {
    path: PathBuf,
    socket: Option<UnixDatagram>,
    next_attempt: Option<Instant>,
    buf: Box<[u8]>,
    /// The length of the message in `buf` that the recorder's full queue refused: sent
    /// before any other.
    pending: Option<usize>,
    /// The core's tap clock is set (on the first drain, from this thread's clock).
    clock_set: bool,
    /// Whether the last message was lost, to log the start and end of a loss once.
    losing: bool,
}

impl RecorderTap {
    /// Messages go to the recorder's socket at `path` (`fanout-recorder run --socket`).
    pub fn new(path: impl Into<PathBuf>) -> RecorderTap {
        RecorderTap {
            path: path.into(),
            socket: None,
            next_attempt: None,
            buf: vec![0; MAX_MESSAGE_LEN].into_boxed_slice(),
            pending: None,
            clock_set: false,
            losing: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn connect(&mut self, now: Instant) {
        if self.next_attempt.is_some_and(|at| now < at) {
            return;
        }
        let connected = UnixDatagram::unbound().and_then(|socket| {
            socket.connect(&self.path)?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        });
        match connected {
            Ok(socket) => {
                info!(socket = %self.path.display(), "connected to the recorder");
                self.socket = Some(socket);
                self.next_attempt = None;
            }
            Err(e) => {
                if self.next_attempt.is_none() {
                    warn!(socket = %self.path.display(), error = %e, "the recorder is unreachable: recorded media is dropped until it is back");
                }
                self.next_attempt = Some(now + RECONNECT_INTERVAL);
            }
        }
    }

    /// Hand the core's tap messages to the recorder, until its queue is full.
    pub(crate) fn drain(&mut self, core: &mut Forwarder, stats: &mut DriverStats) {
        if !self.clock_set {
            let unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            core.set_unix_clock(Instant::now(), unix);
            self.clock_set = true;
        }
        if self.pending.is_none() && !core.has_tap_messages() {
            return;
        }
        let now = Instant::now();
        loop {
            let len = match self.pending.take() {
                Some(len) => len,
                None => match core.poll_tap(&mut self.buf) {
                    Some(len) => len,
                    None => break,
                },
            };
            if self.socket.is_none() {
                self.connect(now);
            }
            let Some(socket) = &self.socket else {
                stats.tap_dropped += 1;
                continue;
            };
            match socket.send(&self.buf[..len]) {
                Ok(_) => {
                    stats.tap_sent += 1;
                    if self.losing {
                        self.losing = false;
                        info!("the recorder keeps up again");
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    // The recorder's queue is full: this message goes first next time,
                    // the others wait in the core's queue (which drops, counted, only
                    // when it is full itself).
                    self.pending = Some(len);
                    break;
                }
                Err(e) => {
                    stats.tap_dropped += 1;
                    // Gone (ECONNREFUSED: restarting) or worse: connect again later.
                    if !self.losing {
                        self.losing = true;
                        warn!(error = %e, "lost the recorder: recorded media is dropped (live media is not)");
                    }
                    self.socket = None;
                    self.next_attempt = Some(now + RECONNECT_INTERVAL);
                }
            }
        }
    }

    /// Whether a message waits for room in the recorder's queue.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::os::unix::net::UnixDatagram;
    use std::time::Duration;

    use super::*;
    use crate::codec::Codec;
    use crate::ids::{MeetingId, ParticipantId, Ssrc};
    use crate::recording::{self, TapMessage};
    use crate::sfu::{ForwarderConfig, LegConfig, LegSecurity, TrackConfig, TrackKind};
    use crate::srtp::{MasterKey, SrtpContext, SrtpProfile};

    const PROFILE: SrtpProfile = SrtpProfile::AeadAes128Gcm;
    const LOCAL: ([u8; 4], u16) = ([192, 0, 2, 1], 40100);
    const PUBLISHER: ([u8; 4], u16) = ([198, 51, 100, 1], 5000);

    /// A core recording meeting `m`, in which `pub` publishes audio on SSRC 1 with `key`.
    fn recorded_core(now: Instant, key: &MasterKey) -> Forwarder {
        let mut core = Forwarder::new(ForwarderConfig::default(), now);
        let meeting = MeetingId::from("m");
        let participant = ParticipantId::from("pub");
        core.add_meeting(meeting.clone()).unwrap();
        core.add_participant(&meeting, participant.clone()).unwrap();
        let leg = core
            .add_leg(
                &meeting,
                &participant,
                LegConfig {
                    name: "srtp".into(),
                    security: LegSecurity::Sdes {
                        receive_key: key.clone(),
                        send_key: MasterKey::generate(PROFILE),
                    },
                    remote: Some(SocketAddr::from(PUBLISHER)),
                    remote_rtcp: None,
                    rtcp_mux: true,
                    local: Some(SocketAddr::from(LOCAL)),
                    local_rtcp: None,
                },
            )
            .unwrap();
        core.add_track(
            &meeting,
            &participant,
            TrackConfig {
                name: "audio".into(),
                kind: TrackKind::Audio,
                encodings: vec![Ssrc(1)],
                leg,
                clock_rate: None,
                codec: Codec::Opaque,
                audio_level_extension: None,
                stream_ids: None,
            },
        )
        .unwrap();
        core.set_recording(&meeting, Some("rec-1")).unwrap();
        core
    }

    #[test]
    fn a_full_recorder_queue_holds_messages_back_instead_of_dropping_them() {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "fanout-recorder-tap-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tap.sock");
        // A recorder that does not read for a while (descheduled on a busy machine).
        let recorder = UnixDatagram::bind(&path).unwrap();
        recorder.set_nonblocking(true).unwrap();
        let mut tap = RecorderTap::new(&path);
        let mut stats = DriverStats::default();
        let key = MasterKey::generate(PROFILE);
        let mut now = Instant::now();
        let mut core = recorded_core(now, &key);
        let mut sender = SrtpContext::new(&key);
        // More than the kernel queues for a receiver that does not read (10 datagrams by
        // default, net.unix.max_dgram_qlen, and at most the sender's SO_SNDBUF), fewer
        // than the core's tap queue holds.
        let count: u16 = 600;
        for seq in 0..count {
            let mut p = vec![0u8; 12 + 1000 + 16];
            p[0] = 0x80;
            p[1] = 111;
            p[2..4].copy_from_slice(&seq.to_be_bytes());
            p[8..12].copy_from_slice(&1u32.to_be_bytes());
            let len = sender.protect_rtp(&mut p, 12 + 1000).unwrap();
            now += Duration::from_millis(1);
            core.handle_datagram(
                now,
                SocketAddr::from(LOCAL),
                SocketAddr::from(PUBLISHER),
                &mut p[..len],
            );
            tap.drain(&mut core, &mut stats);
        }
        assert!(tap.has_pending(), "the recorder's queue filled up");
        assert!(stats.tap_sent < u64::from(count));
        assert_eq!(stats.tap_dropped, 0, "nothing was dropped for it");
        assert_eq!(core.tap_stats().dropped, 0);

        // The recorder reads again: every message arrives, in order.
        let mut received: Vec<u16> = Vec::new();
        let mut buf = vec![0u8; MAX_MESSAGE_LEN];
        let deadline = Instant::now() + Duration::from_secs(10);
        while received.len() < usize::from(count) && Instant::now() < deadline {
            while let Ok(len) = recorder.recv(&mut buf) {
                match recording::decode(&buf[..len]).unwrap() {
                    TapMessage::Packet(p) => {
                        received.push(u16::from_be_bytes([p.rtp[2], p.rtp[3]]))
                    }
                    other => panic!("{other:?}"),
                }
            }
            tap.drain(&mut core, &mut stats);
        }
        assert_eq!(received, (0..count).collect::<Vec<_>>());
        assert_eq!((stats.tap_sent, stats.tap_dropped), (u64::from(count), 0));
        assert!(!tap.has_pending());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
