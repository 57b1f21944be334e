//! The driver's side of the recording tap: tap messages drained from the core
//! ([`Forwarder::poll_tap`]) go to the `fanout-recorder` process over its Unix datagram
//! socket, without ever waiting (docs/recording.md).
//!
//! The socket is non-blocking. When the recorder's receive queue is full the message is
//! dropped and counted (the recording degrades, live media does not); when the recorder
//! is not there (not started yet, restarting after a crash) messages are dropped and the
//! socket is connected again at most once a second.

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

    /// Hand every pending tap message of `core` to the recorder.
    pub(crate) fn drain(&mut self, core: &mut Forwarder, stats: &mut DriverStats) {
        if !self.clock_set {
            let unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            core.set_unix_clock(Instant::now(), unix);
            self.clock_set = true;
        }
        if !core.has_tap_messages() {
            return;
        }
        let now = Instant::now();
        while let Some(len) = core.poll_tap(&mut self.buf) {
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
                Err(e) => {
                    stats.tap_dropped += 1;
                    if e.kind() == ErrorKind::WouldBlock {
                        if !self.losing {
                            self.losing = true;
                            warn!("the recorder is behind: recorded media is dropped (live media is not)");
                        }
                    } else {
                        // Gone (ECONNREFUSED: restarting) or worse: connect again later.
                        warn!(error = %e, "lost the recorder");
                        self.socket = None;
                        self.next_attempt = Some(now + RECONNECT_INTERVAL);
                    }
                }
            }
        }
    }
}
