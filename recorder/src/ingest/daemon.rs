//! The ingest driver: the tap socket, the receive loop, chunk files, and the hand-off to
//! the uploader. It carries out what [`IngestCore`] decides and nothing more.
//!
//! The loop waits on the socket with mio (a [`mio::Waker`] wakes it to stop), reads
//! datagrams into one reused buffer until the socket is empty (at most
//! [`BATCH`] per turn, so deadlines are looked at under load too), decodes each in place,
//! appends packets to their chunk's buffered writer, hands what was written to the
//! kernel once the socket is empty, then runs the core's timers. Per packet: no
//! allocation, one hash lookup, a few `memcpy`s.

use std::fs;
use std::io::{self, ErrorKind};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};
use tracing::{debug, error, info, trace, warn};

use fanout_forwarder::recording::{self, TapMessage, TapPacket, MAX_MESSAGE_LEN};

use super::metrics::IngestMetrics;
use super::spool::{Spool, SpoolWriter, SpooledChunk};
use super::upload::{UploadSettings, Uploader};
use super::{ChunkPolicy, CloseReason, IngestAction, IngestCore, Now};
use crate::chunk;
use crate::store::{ChunkKey, RecordingStore};

/// Datagrams read per turn of the loop before timers run.
pub const BATCH: usize = 1024;
const SOCKET: Token = Token(0);
const WAKE: Token = Token(1);

/// What `fanout-recorder run` was told.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The Unix datagram socket forwarders send to.
    pub socket: PathBuf,
    /// Where chunks are written before upload.
    pub spool: PathBuf,
    /// This recorder's name in chunk keys.
    pub instance: String,
    pub policy: ChunkPolicy,
    /// SO_RCVBUF asked for (forced as root, beyond `net.core.rmem_max`).
    pub socket_buffer_bytes: usize,
    pub upload: UploadSettings,
    /// How long a stop waits for pending uploads.
    pub shutdown_timeout: Duration,
    /// Seconds between progress lines; `None` for none.
    pub progress_interval: Option<Duration>,
}

/// Why the daemon could not start or run.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("socket {path}: {source}")]
    Socket { path: PathBuf, source: io::Error },
    #[error("spool {path}: {source}")]
    Spool { path: PathBuf, source: io::Error },
    #[error("invalid instance name {0:?}: letters, digits, '.', '_', '-', at most 64, not starting with '.'")]
    Instance(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Stops a running daemon from another thread (a signal handler's).
#[derive(Debug, Clone)]
pub struct StopHandle {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl StopHandle {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Err(e) = self.waker.wake() {
            warn!(error = %e, "cannot wake the receive loop");
        }
    }
}

/// An open chunk file and what it will be stored as.
#[derive(Debug)]
struct OpenFile {
    writer: SpoolWriter,
    path: PathBuf,
    key: ChunkKey,
    /// Written since the last flush.
    dirty: bool,
}

/// The ingest daemon, bound and recovered, ready to [`run`](Self::run).
#[derive(Debug)]
pub struct Daemon {
    config: DaemonConfig,
    socket: mio::net::UnixDatagram,
    poll: Poll,
    stop: StopHandle,
    spool: Spool,
    /// Held for the daemon's life: see [`Spool::lock`].
    _spool_lock: fs::File,
    core: IngestCore,
    files: Vec<Option<OpenFile>>,
    runtime: tokio::runtime::Runtime,
    uploader: Uploader,
    metrics: Arc<IngestMetrics>,
}

impl Daemon {
    /// Bind the socket, read the spool and queue what a previous run left for upload.
    pub fn start(
        config: DaemonConfig,
        store: RecordingStore,
        metrics: Arc<IngestMetrics>,
    ) -> Result<Daemon, DaemonError> {
        if !recording::is_valid_recording_id(&config.instance) {
            return Err(DaemonError::Instance(config.instance.clone()));
        }
        let spool_error = |source| DaemonError::Spool {
            path: config.spool.clone(),
            source,
        };
        // Exclusive use of the spool and the socket before anything in the spool is
        // touched: a second recorder must not upload (and delete) a live one's chunks.
        let spool = Spool::open(&config.spool).map_err(spool_error)?;
        let spool_lock = spool.lock().map_err(spool_error)?;
        let socket = bind_socket(&config.socket, config.socket_buffer_bytes).map_err(|source| {
            DaemonError::Socket {
                path: config.socket.clone(),
                source,
            }
        })?;
        let recovery = spool.recover().map_err(spool_error)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("upload")
            .enable_all()
            .build()?;
        let uploader = Uploader::start(&runtime, store.clone(), config.upload, metrics.clone());
        let recovered = recovery.chunks.len();
        // Queued before the first datagram is read: a previous run's chunks go first.
        for chunk in recovery.chunks {
            metrics.chunks_recovered.fetch_add(1, Ordering::Relaxed);
            info!(
                key = %chunk.key, records = chunk.records, bytes = chunk.len, tail = ?chunk.tail,
                "uploading a chunk left by a previous run"
            );
            uploader.submit(chunk);
        }
        let mut socket = mio::net::UnixDatagram::from_std(socket);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut socket, SOCKET, Interest::READABLE)?;
        let stop = StopHandle {
            stop: Arc::default(),
            waker: Arc::new(Waker::new(poll.registry(), WAKE)?),
        };
        info!(
            socket = %config.socket.display(),
            spool = %config.spool.display(),
            %store,
            instance = %config.instance,
            chunk_seconds = config.policy.duration.as_secs_f64(),
            recovered,
            removed = recovery.removed,
            quarantined = recovery.quarantined,
            first_seq = recovery.seq_floor,
            "recorder ready"
        );
        Ok(Daemon {
            core: IngestCore::new(&config.instance, config.policy, recovery.seq_floor),
            config,
            socket,
            poll,
            stop,
            spool,
            _spool_lock: spool_lock,
            files: Vec::new(),
            runtime,
            uploader,
            metrics,
        })
    }

    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Receive until stopped; then take what is still queued on the socket, close every
    /// chunk and wait (up to the shutdown timeout) for the uploads.
    pub fn run(mut self) -> Result<(), DaemonError> {
        let mut events = Events::with_capacity(8);
        // One byte more than the longest message: a longer datagram is cut to this by the
        // kernel, and its length tells that it was too long.
        let mut buffer = vec![0u8; MAX_MESSAGE_LEN + 1];
        let mut more = true;
        let mut next_progress = self.config.progress_interval.map(|i| Instant::now() + i);
        while !self.stop.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            let wake_at = [self.core.poll_timeout(), next_progress]
                .into_iter()
                .flatten()
                .min();
            let timeout = if more {
                Some(Duration::ZERO)
            } else {
                wake_at.map(|at| at.saturating_duration_since(now))
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
            if events.iter().any(|e| e.token() == SOCKET) {
                more = true;
            }
            if more {
                more = self.receive(&mut buffer, BATCH)?;
            }
            let now = Instant::now();
            self.core.handle_timeout(now);
            self.apply_actions();
            if let (Some(at), Some(interval)) = (next_progress, self.config.progress_interval) {
                if now >= at {
                    self.log_progress();
                    next_progress = Some(now + interval);
                }
            }
        }
        info!("stopping: taking what is queued on the socket, closing chunks");
        // Unlinked first, so forwarders see the recorder gone; what they sent before is
        // still queued on the socket and read here.
        if let Err(e) = fs::remove_file(&self.config.socket) {
            debug!(error = %e, "cannot remove the socket file");
        }
        while self.receive(&mut buffer, usize::MAX)? {}
        self.core.close_all();
        self.apply_actions();
        self.log_progress();
        let Daemon {
            runtime,
            uploader,
            config,
            metrics,
            ..
        } = self;
        let left = uploader.finish(&runtime, config.shutdown_timeout);
        runtime.shutdown_timeout(Duration::from_secs(1));
        info!(
            uploaded = metrics.chunks_uploaded.load(Ordering::Relaxed),
            left_in_spool = left,
            "recorder stopped"
        );
        Ok(())
    }

    /// Read up to `limit` datagrams; true if the socket may hold more.
    fn receive(&mut self, buffer: &mut [u8], limit: usize) -> Result<bool, DaemonError> {
        let mut now = None;
        let mut read = 0;
        let more = loop {
            if read == limit {
                break true;
            }
            let len = match self.socket.recv(buffer) {
                Ok(len) => len,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            read += 1;
            // Both clocks once per batch: chunk deadlines and start times need no more.
            let now = *now.get_or_insert_with(Now::read);
            self.handle_datagram(now, &buffer[..len]);
        };
        self.flush();
        Ok(more)
    }

    fn handle_datagram(&mut self, now: Now, datagram: &[u8]) {
        self.metrics.datagrams.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .bytes
            .fetch_add(datagram.len() as u64, Ordering::Relaxed);
        if datagram.len() > MAX_MESSAGE_LEN {
            self.metrics.count_malformed("too_large");
            trace!(len = datagram.len(), "tap datagram too large; dropped");
            return;
        }
        match recording::decode(datagram) {
            Ok(TapMessage::Packet(packet)) => {
                self.metrics.packets.fetch_add(1, Ordering::Relaxed);
                self.write_packet(now, &packet);
            }
            Ok(TapMessage::End { recording_id }) => {
                self.metrics.ends.fetch_add(1, Ordering::Relaxed);
                debug!(recording_id, "recording ended");
                self.core.handle_end(now, recording_id);
                self.apply_actions();
            }
            Err(e) => {
                self.metrics.count_malformed(e.reason());
                trace!(error = %e, len = datagram.len(), "malformed tap datagram; dropped");
            }
        }
    }

    fn write_packet(&mut self, now: Now, packet: &TapPacket<'_>) {
        let slot = self
            .core
            .handle_packet(now, packet.recording_id, chunk::record_len(packet));
        self.apply_actions();
        let Some(file) = self.files.get_mut(slot).and_then(Option::as_mut) else {
            // Its file could not be created (logged when it happened).
            self.metrics.unwritten.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match file.writer.append(packet) {
            Ok(()) => file.dirty = true,
            Err(e) => {
                self.metrics.unwritten.fetch_add(1, Ordering::Relaxed);
                error!(file = %file.path.display(), error = %e, "cannot write a chunk; closing it");
                self.core.handle_write_error(slot);
                self.apply_actions();
            }
        }
    }

    /// Carry out the core's decisions, in order.
    fn apply_actions(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                IngestAction::Open { slot, header } => {
                    if self.files.len() <= slot {
                        self.files.resize_with(slot + 1, || None);
                    }
                    self.metrics.chunks_opened.fetch_add(1, Ordering::Relaxed);
                    match self.spool.create(&header) {
                        Ok((path, writer)) => {
                            debug!(file = %path.display(), "chunk opened");
                            self.files[slot] = Some(OpenFile {
                                writer,
                                path,
                                key: ChunkKey {
                                    recording_id: header.recording_id,
                                    instance: header.instance,
                                    seq: header.seq,
                                },
                                dirty: false,
                            });
                        }
                        Err(e) => {
                            // Its packets are counted as unwritten; the chunk's deadline
                            // closes it and the next packet tries a new file.
                            error!(recording_id = %header.recording_id, error = %e, "cannot create a chunk file");
                            self.files[slot] = None;
                        }
                    }
                }
                IngestAction::Close { slot, reason } => {
                    self.metrics.count_closed(reason);
                    if let Some(file) = self.files.get_mut(slot).and_then(Option::take) {
                        self.close_file(file, reason);
                    }
                }
                // After the Close of the recording's chunk, which queued it for upload:
                // the seal waits for it.
                IngestAction::Seal { key } => self.uploader.seal(key),
            }
        }
        self.metrics
            .open_recordings
            .store(self.core.open_chunks() as u64, Ordering::Relaxed);
    }

    fn close_file(&mut self, file: OpenFile, reason: CloseReason) {
        let records = file.writer.records();
        let clean_len = file.writer.bytes() + chunk::RECORD_PREFIX_LEN as u64;
        let len = match file.writer.close() {
            Ok(_) => Some(clean_len),
            Err(e) => {
                error!(file = %file.path.display(), error = %e, "cannot close a chunk; uploading its whole records");
                None
            }
        };
        // After a write error the file's tail is unknown: read what is whole, as
        // recovery does.
        let len = match (len, reason) {
            (Some(len), r) if r != CloseReason::WriteError => len,
            _ => match super::spool::scan(&file.path) {
                Ok(scanned) => scanned.len,
                Err(e) => {
                    error!(file = %file.path.display(), error = %e, "unreadable chunk left in the spool");
                    self.metrics.chunks_failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
        };
        debug!(key = %file.key, records, bytes = len, reason = reason.label(), "chunk closed");
        self.uploader.submit(SpooledChunk {
            path: file.path,
            key: file.key,
            len,
            records,
            tail: chunk::ChunkTail::Closed,
        });
    }

    /// Hand buffered records to the kernel: a crash of this process then loses nothing
    /// that was read.
    fn flush(&mut self) {
        let mut failed = Vec::new();
        for (slot, file) in self.files.iter_mut().enumerate() {
            let Some(file) = file.as_mut().filter(|f| f.dirty) else {
                continue;
            };
            file.dirty = false;
            if let Err(e) = file.writer.flush() {
                error!(file = %file.path.display(), error = %e, "cannot write a chunk; closing it");
                failed.push(slot);
            }
        }
        for slot in failed {
            self.core.handle_write_error(slot);
        }
        self.apply_actions();
    }

    fn log_progress(&self) {
        let m = &self.metrics;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        info!(
            packets = load(&m.packets),
            bytes = load(&m.bytes),
            malformed = m.malformed_total(),
            unwritten = load(&m.unwritten),
            open_recordings = self.core.open_chunks(),
            chunks_closed = m.chunks_closed_total(),
            chunks_uploaded = load(&m.chunks_uploaded),
            upload_retries = load(&m.upload_retries),
            spool_backlog = load(&m.spool_backlog),
            "progress"
        );
    }
}

/// Bind the tap socket at `path`: a file left by a recorder that is gone is removed; one
/// that a live recorder answers on is not.
fn bind_socket(path: &Path, buffer_bytes: usize) -> io::Result<UnixDatagram> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            let probe = UnixDatagram::unbound()?;
            match probe.connect(path) {
                Ok(()) => {
                    return Err(io::Error::new(
                        ErrorKind::AddrInUse,
                        "another process receives on this socket",
                    ))
                }
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    info!(socket = %path.display(), "removing a stale socket file");
                    fs::remove_file(path)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(_) => {
            return Err(io::Error::new(
                ErrorKind::AlreadyExists,
                "exists and is not a socket",
            ))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    let socket = UnixDatagram::bind(path)?;
    socket.set_nonblocking(true)?;
    set_receive_buffer(&socket, buffer_bytes);
    Ok(socket)
}

/// Ask for a large receive buffer, so bursts wait in the kernel while a chunk file is
/// created: SO_RCVBUFFORCE (root may pass `net.core.rmem_max`), else SO_RCVBUF. The size
/// obtained is logged.
fn set_receive_buffer(socket: &UnixDatagram, bytes: usize) {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let fd = socket.as_raw_fd();
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: `fd` is a socket owned by `socket`, open for the whole call; the value
        // points at a live c_int and the length passed is its size.
        let result = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if result == 0 {
            break;
        }
    }
    let got = socket2::SockRef::from(socket).recv_buffer_size();
    match got {
        // The kernel reports twice what it was asked (its bookkeeping, socket(7)).
        Ok(got) if got / 2 < bytes => {
            warn!(asked = bytes, got, "smaller socket receive buffer than asked (net.core.rmem_max; run as root to force)")
        }
        Ok(got) => debug!(got, "socket receive buffer"),
        Err(e) => warn!(error = %e, "cannot read the socket receive buffer size"),
    }
}
