//! The forwarder as a member of a control plane (`fanout-forwarder --control URL`).
//!
//! # Model
//!
//! In control mode the forwarder binds one UDP socket per port of its range at start
//! (RTP and RTCP muxed, RFC 5761) and gives port `p` to shard `(p - start) % shards`. The
//! control plane places each meeting on a port of the range (`MeetingPlan.listen_address`),
//! and so on a shard: the kernel steers the meeting's packets to that shard's socket, as
//! in standalone mode (docs/architecture.md, "Shards").
//!
//! The client runs on its own thread with a tokio runtime; the shard threads stay
//! synchronous and never wait for it. It:
//!
//! 1. calls `Register` with the enrolment credential, and gets a session token, a lease
//!    TTL and a heartbeat interval;
//! 2. sends a `Heartbeat` every interval with the load: legs held by the cores, packets
//!    in and out per second (from the drivers' counters), CPU of the process and of the
//!    busiest shard (from `/proc`);
//! 3. follows `WatchDesiredState`: the first message is a snapshot that replaces
//!    everything, then batches of changes. [`reconcile::Reconciler`] turns each into
//!    per-meeting batches of configuration calls, which are run on the shard that owns
//!    the meeting's port with [`DriverHandle::send`];
//! 4. reports each meeting's dominant speaker with `ReportActiveSpeaker`. The shards hand
//!    their `DominantSpeaker` events to an [`EventSink`](crate::driver::EventSink) (a
//!    bounded queue they never wait on); the client drains it every
//!    [`SpeakerReports::POLL`], keeps only the latest speaker of each meeting, and calls at
//!    most once per [`SpeakerReports::MIN_INTERVAL`] per meeting, one call per meeting at
//!    a time (so reports of a meeting cannot overtake each other).
//!
//! On any error of the stream or the connection, or a heartbeat the control plane
//! rejects (FAILED_PRECONDITION or UNAUTHENTICATED: the session is gone), the client
//! backs off (100 ms, doubling up to 5 s), registers again and watches again from a
//! snapshot. The cores keep forwarding meanwhile: the next snapshot is compared with what
//! they hold, so legs that did not change are not disturbed.
//!
//! The enrolment and session tokens and the SRTP keys never appear in logs or Debug
//! output.

pub mod reconcile;

/// Generated client types of `fanout.control.v1`: kept inside this module, converted at
/// the edge (the reconciler never sees them).
#[allow(clippy::all, missing_debug_implementations, unreachable_pub, dead_code)]
mod pb {
    tonic::include_proto!("fanout.control.v1");
}

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};
use tracing::{debug, error, info, warn};
use zeroize::Zeroizing;

use crate::codec::Codec;
use crate::driver::{DriverHandle, TrafficCounters};
use crate::ice::Credentials;
use crate::ids::{MeetingId, ParticipantId, Ssrc};
use crate::sfu::RelayDirection;
use crate::sfu::{Event, RtxPayloadType, StreamExtensions, StreamIds, MAX_ENCODINGS};
use crate::srtp::{MasterKey, SrtpProfile};
use pb::forwarders_client::ForwardersClient;
use reconcile::{
    Batch, Change, DesiredConnection, DesiredLeg, DesiredLink, DesiredMeeting, DesiredState,
    DesiredTrack, DesiredTransport, DesiredWebrtc, PublishedKind, Reconciler,
};

/// A range of UDP ports, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub const DEFAULT: PortRange = PortRange {
        start: 40100,
        end: 40199,
    };

    pub fn len(&self) -> usize {
        usize::from(self.end - self.start) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }

    pub fn ports(&self) -> impl Iterator<Item = u16> {
        self.start..=self.end
    }

    /// The shard that owns `port` (in the range) when there are `shards` shards.
    pub fn shard_of(&self, port: u16, shards: usize) -> usize {
        usize::from(port.wrapping_sub(self.start)) % shards.max(1)
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("`{s}`: expected START-END, such as 40100-40199"))?;
        let parse = |v: &str| {
            v.trim()
                .parse::<u16>()
                .map_err(|_| format!("`{v}` is not a port"))
        };
        let (start, end) = (parse(a)?, parse(b)?);
        if start == 0 || start > end {
            return Err(format!("`{s}`: need 0 < START <= END"));
        }
        Ok(PortRange { start, end })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// A credential: redacted from Debug, zeroed when dropped.
#[derive(Clone)]
pub struct Token(Arc<Zeroizing<String>>);

impl Token {
    pub fn new(text: String) -> Token {
        Token(Arc::new(Zeroizing::new(text)))
    }

    /// `authorization: Bearer ...`, marked sensitive so tonic's and hyper's own logging
    /// leave it out.
    fn bearer(&self) -> Result<MetadataValue<tonic::metadata::Ascii>, Status> {
        let mut value = MetadataValue::try_from(format!("Bearer {}", self.0.as_str()))
            .map_err(|_| Status::invalid_argument("the token is not printable ASCII"))?;
        value.set_sensitive(true);
        Ok(value)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// How this forwarder joins the control plane.
#[derive(Debug, Clone)]
pub struct ControlSettings {
    /// `http://host:port` or `https://host:port`.
    pub url: String,
    /// PEM CA certificate(s) to trust for `https` (no system roots are built in).
    pub ca_file: Option<PathBuf>,
    pub forwarder_id: String,
    pub region: String,
    /// What participants send to.
    pub media_ip: IpAddr,
    /// What the sockets are bound to (legs send from `bind_ip:port`).
    pub bind_ip: IpAddr,
    pub ports: PortRange,
    pub enrolment_token: Token,
    pub max_legs: u32,
    /// The fingerprint of the certificate browsers' DTLS handshakes meet (RFC 8122 form).
    pub dtls_fingerprint: String,
}

/// What the client needs of each shard: its command handle, its driver's counters, and
/// its thread's id once it runs (for its CPU time in `/proc/self/task/TID/stat`).
#[derive(Debug, Clone)]
pub struct ShardLink {
    pub handle: DriverHandle,
    pub traffic: Arc<TrafficCounters>,
    /// 0 until the shard thread starts.
    pub tid: Arc<AtomicI32>,
}

/// Counters of the client's transitions, for logs (and tests).
#[derive(Debug, Default)]
pub struct ControlStats {
    pub registrations: AtomicU64,
    pub sessions_lost: AtomicU64,
    pub snapshots: AtomicU64,
    pub change_batches: AtomicU64,
    pub heartbeats: AtomicU64,
    pub heartbeats_failed: AtomicU64,
    pub commands_refused: AtomicU64,
    /// `ReportActiveSpeaker` calls answered OK, and those that failed or were refused.
    pub speaker_reports: AtomicU64,
    pub speaker_reports_failed: AtomicU64,
}

/// Start the client on its own thread. It runs until the process exits. `events` is the
/// receiving end of the [`EventSink`](crate::driver::EventSink) the shards' drivers hand
/// their dominant-speaker events to.
pub fn spawn(
    settings: ControlSettings,
    shards: Vec<ShardLink>,
    events: Receiver<Event>,
) -> std::io::Result<(std::thread::JoinHandle<()>, Arc<ControlStats>)> {
    let stats = Arc::new(ControlStats::default());
    let thread_stats = stats.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let thread = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            runtime.block_on(run(settings, shards, events, thread_stats));
        })?;
    Ok((thread, stats))
}

/// Exponential back-off between attempts: 100 ms doubling to 5 s, reset after a session
/// got as far as applying a snapshot.
#[derive(Debug)]
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Backoff(Self::FIRST)
    }

    fn next(&mut self) -> Duration {
        let delay = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        delay
    }

    fn reset(&mut self) {
        self.0 = Self::FIRST;
    }
}

/// Register, heartbeat and watch, again and again.
async fn run(
    settings: ControlSettings,
    shards: Vec<ShardLink>,
    events: Receiver<Event>,
    stats: Arc<ControlStats>,
) {
    let mut reconciler = Reconciler::new();
    let mut backoff = Backoff::new();
    let applied = Arc::new(AtomicU64::new(0));
    // Collected across sessions, so that the shards' queue never fills while the client
    // reconnects and the latest speaker of each meeting is reported once it is back.
    let speakers = Arc::new(Mutex::new(SpeakerReports::default()));
    tokio::spawn(collect_speakers(events, speakers.clone()));
    info!(url = %settings.url, forwarder = %settings.forwarder_id, "control plane: connecting");
    loop {
        let result = session(
            &settings,
            &shards,
            &stats,
            &mut reconciler,
            &mut backoff,
            &applied,
            &speakers,
        )
        .await;
        stats.sessions_lost.fetch_add(1, Ordering::Relaxed);
        let delay = backoff.next();
        match result {
            Err(e) => warn!(
                error = %chain(&e),
                retry_in_ms = delay.as_millis() as u64,
                "control plane: session lost; registering again"
            ),
            Ok(()) => info!(
                retry_in_ms = delay.as_millis() as u64,
                "control plane: the desired-state stream ended; registering again"
            ),
        }
        tokio::time::sleep(delay).await;
    }
}

/// An error with its sources, `a: b: c` (tonic's transport errors say little alone).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("{0}")]
    Rpc(#[from] Status),
    #[error("the desired-state stream did not start with a snapshot")]
    NoSnapshot,
    #[error("heartbeat rejected: {0}")]
    HeartbeatRejected(Status),
    #[error("no heartbeat accepted for {0:?}, longer than the lease")]
    LeaseLost(Duration),
    #[error("{0}")]
    Setup(String),
}

async fn connect(settings: &ControlSettings) -> Result<Channel, SessionError> {
    let mut endpoint = Endpoint::from_shared(settings.url.clone())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    if settings.url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(path) = &settings.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                SessionError::Setup(format!("cannot read CA file {}: {e}", path.display()))
            })?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(endpoint.connect().await?)
}

fn with_token<T>(message: T, token: &Token) -> Result<Request<T>, Status> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", token.bearer()?);
    Ok(request)
}

/// One session: register, then heartbeat and apply the desired state until something
/// fails.
async fn session(
    settings: &ControlSettings,
    shards: &[ShardLink],
    stats: &Arc<ControlStats>,
    reconciler: &mut Reconciler,
    backoff: &mut Backoff,
    applied: &Arc<AtomicU64>,
    speakers: &Arc<Mutex<SpeakerReports>>,
) -> Result<(), SessionError> {
    let channel = connect(settings).await?;
    let mut client = ForwardersClient::new(channel);
    let register = pb::RegisterRequest {
        forwarder_id: settings.forwarder_id.clone(),
        media_ip: settings.media_ip.to_string(),
        port_range_start: u32::from(settings.ports.start),
        port_range_end: u32::from(settings.ports.end),
        relay_address: String::new(),
        region: settings.region.clone(),
        zone: String::new(),
        max_legs: settings.max_legs,
        cores: shards.len() as u32,
        srtp_profiles: SrtpProfile::ALL
            .iter()
            .map(|&p| profile_to_pb(p) as i32)
            .collect(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        dtls_fingerprint: settings.dtls_fingerprint.clone(),
    };
    let registered = client
        .register(with_token(register, &settings.enrolment_token)?)
        .await?
        .into_inner();
    stats.registrations.fetch_add(1, Ordering::Relaxed);
    let session_token = Token::new(registered.session_token);
    let lease = Duration::from_millis(registered.lease_ttl_ms.max(1));
    let interval = Duration::from_millis(registered.heartbeat_interval_ms.max(100));
    info!(
        forwarder = %settings.forwarder_id,
        lease_ttl_ms = registered.lease_ttl_ms,
        heartbeat_interval_ms = registered.heartbeat_interval_ms,
        "control plane: registered"
    );

    // Heartbeats run beside the stream; the first fatal one ends the session.
    let (fatal_tx, mut fatal) = oneshot::channel();
    let heartbeats = tokio::spawn(heartbeat_loop(
        client.clone(),
        settings.forwarder_id.clone(),
        session_token.clone(),
        interval,
        lease,
        shards.to_vec(),
        stats.clone(),
        applied.clone(),
        fatal_tx,
    ));
    // Whatever ends the session also ends its heartbeats.
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _heartbeats = AbortOnDrop(heartbeats);
    let _speakers = AbortOnDrop(tokio::spawn(report_speakers(
        client.clone(),
        settings.forwarder_id.clone(),
        session_token.clone(),
        speakers.clone(),
        stats.clone(),
    )));

    let watch = pb::WatchDesiredStateRequest {
        forwarder_id: settings.forwarder_id.clone(),
        after_revision: None,
    };
    let mut stream = client
        .watch_desired_state(with_token(watch, &session_token)?)
        .await?
        .into_inner();
    info!("control plane: watching the desired state");
    let mut first = true;
    loop {
        let update = tokio::select! {
            message = stream.message() => message?,
            error = &mut fatal => {
                return Err(error.unwrap_or_else(|_| {
                    SessionError::Setup("the heartbeat task stopped".into())
                }));
            }
        };
        let Some(update) = update else {
            return Ok(());
        };
        let revision = update.revision;
        let batches = match update.update {
            Some(pb::desired_state_update::Update::Snapshot(snapshot)) => {
                let state = convert_snapshot(settings, snapshot);
                stats.snapshots.fetch_add(1, Ordering::Relaxed);
                info!(
                    revision,
                    meetings = state.meetings.len(),
                    legs = state.meetings.values().map(|m| m.legs.len()).sum::<usize>(),
                    "control plane: snapshot"
                );
                reconciler.snapshot(state)
            }
            Some(pb::desired_state_update::Update::Changes(changes)) if !first => {
                let changes = convert_changes(settings, changes);
                stats.change_batches.fetch_add(1, Ordering::Relaxed);
                debug!(revision, changes = changes.len(), "control plane: changes");
                reconciler.changes(changes)
            }
            _ => return Err(SessionError::NoSnapshot),
        };
        let ops: usize = batches.iter().map(|b| b.ops.len()).sum();
        dispatch(settings, shards, stats, batches).await;
        applied.store(revision, Ordering::Relaxed);
        if first {
            first = false;
            backoff.reset();
        }
        for (meeting, legs) in reconciler.state().legs_per_meeting() {
            debug!(%meeting, legs, "control plane: meeting held");
        }
        info!(
            revision,
            operations = ops,
            meetings = reconciler.state().legs_per_meeting().count(),
            "control plane: desired state applied"
        );
    }
}

/// Run each batch on the shard that owns its port: one command per shard, in order.
async fn dispatch(
    settings: &ControlSettings,
    shards: &[ShardLink],
    stats: &ControlStats,
    batches: Vec<Batch>,
) {
    let mut per_shard: Vec<Vec<Batch>> = (0..shards.len()).map(|_| Vec::new()).collect();
    for batch in batches {
        let shard = settings.ports.shard_of(batch.listen.port(), shards.len());
        per_shard[shard].push(batch);
    }
    for (index, batches) in per_shard.into_iter().enumerate() {
        if batches.is_empty() {
            continue;
        }
        // Held outside the command so a refused send can be tried again.
        let work = Arc::new(Mutex::new(Some(batches)));
        let mut delay = Duration::from_millis(1);
        loop {
            let mine = work.clone();
            let command = Box::new(move |core: &mut crate::sfu::Forwarder| {
                let batches = mine
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take()
                    .unwrap_or_default();
                for batch in batches {
                    let meeting = batch.meeting.clone();
                    let applied = reconcile::apply(core, batch);
                    debug!(%meeting, ok = applied.ok, failed = applied.failed.len(), "meeting reconciled");
                }
            });
            match shards[index].handle.send(command) {
                Ok(()) => break,
                Err(e) => {
                    // The shard is busy or stuck: wait rather than lose the changes.
                    stats.commands_refused.fetch_add(1, Ordering::Relaxed);
                    warn!(shard = index, error = %e, "control plane: shard refused changes; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(500));
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn heartbeat_loop(
    mut client: ForwardersClient<Channel>,
    forwarder_id: String,
    token: Token,
    interval: Duration,
    lease: Duration,
    shards: Vec<ShardLink>,
    stats: Arc<ControlStats>,
    applied: Arc<AtomicU64>,
    fatal: oneshot::Sender<SessionError>,
) {
    let mut sampler = LoadSampler::new(&shards);
    let mut last_ok = Instant::now();
    let mut draining = false;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let load = sampler.sample(&shards).await;
        let request = pb::HeartbeatRequest {
            forwarder_id: forwarder_id.clone(),
            load: Some(load),
            applied_revision: applied.load(Ordering::Relaxed),
        };
        let request = match with_token(request, &token) {
            Ok(r) => r,
            Err(status) => {
                let _ = fatal.send(SessionError::Rpc(status));
                return;
            }
        };
        match tokio::time::timeout(
            interval.max(Duration::from_secs(1)),
            client.heartbeat(request),
        )
        .await
        {
            Ok(Ok(response)) => {
                stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                last_ok = Instant::now();
                let drain = response.into_inner().drain;
                if drain != draining {
                    draining = drain;
                    info!(drain, "control plane: drain changed");
                }
            }
            Ok(Err(status))
                if matches!(
                    status.code(),
                    Code::FailedPrecondition | Code::Unauthenticated | Code::NotFound
                ) =>
            {
                stats.heartbeats_failed.fetch_add(1, Ordering::Relaxed);
                // The receiver may already be gone if the stream failed first.
                let _ = fatal.send(SessionError::HeartbeatRejected(status));
                return;
            }
            Ok(Err(status)) => {
                stats.heartbeats_failed.fetch_add(1, Ordering::Relaxed);
                warn!(code = ?status.code(), message = status.message(), "control plane: heartbeat failed");
            }
            Err(_) => {
                stats.heartbeats_failed.fetch_add(1, Ordering::Relaxed);
                warn!("control plane: heartbeat timed out");
            }
        }
        let silent = last_ok.elapsed();
        if silent > lease {
            let _ = fatal.send(SessionError::LeaseLost(silent));
            return;
        }
    }
}

// ----- active speaker reports -------------------------------------------------------

/// Move the shards' dominant-speaker events into `speakers`, every [`SpeakerReports::POLL`]
/// (the shards never wake this thread: a speaker change may wait that long).
async fn collect_speakers(events: Receiver<Event>, speakers: Arc<Mutex<SpeakerReports>>) {
    let mut ticker = tokio::time::interval(SpeakerReports::POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let mut reports = speakers.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            match events.try_recv() {
                Ok(Event::DominantSpeaker {
                    meeting,
                    participant,
                }) => reports.push(meeting, participant),
                Ok(_) => {}
                Err(TryRecvError::Empty) => break,
                // Every shard is gone: the process is stopping.
                Err(TryRecvError::Disconnected) => return,
            }
        }
    }
}

/// Send the due reports of `speakers`, for as long as the session lasts. The calls of one
/// round run together (one per meeting); the next round starts when they are answered, so
/// the reports of a meeting cannot overtake each other.
async fn report_speakers(
    client: ForwardersClient<Channel>,
    forwarder_id: String,
    token: Token,
    speakers: Arc<Mutex<SpeakerReports>>,
    stats: Arc<ControlStats>,
) {
    let mut ticker = tokio::time::interval(SpeakerReports::POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let due = speakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take_due(Instant::now());
        if due.is_empty() {
            continue;
        }
        let mut calls = tokio::task::JoinSet::new();
        for (meeting, speaker) in due {
            let mut client = client.clone();
            let request = pb::ReportActiveSpeakerRequest {
                forwarder_id: forwarder_id.clone(),
                meeting_id: meeting.0.clone(),
                participant_id: speaker.as_ref().map(|p| p.0.clone()).unwrap_or_default(),
            };
            let request = with_token(request, &token);
            calls.spawn(async move {
                let result = match request {
                    Ok(request) => match tokio::time::timeout(
                        Duration::from_secs(2),
                        client.report_active_speaker(request),
                    )
                    .await
                    {
                        Ok(result) => result.map(|_| ()),
                        Err(_) => Err(Status::deadline_exceeded("no answer within 2 s")),
                    },
                    Err(status) => Err(status),
                };
                (meeting, speaker, result)
            });
        }
        while let Some(joined) = calls.join_next().await {
            // A call task does not panic, and none is cancelled while the set is alive; were
            // one lost, its report would stay pending and go out in a later round.
            let Ok((meeting, speaker, result)) = joined else {
                continue;
            };
            let outcome = match result {
                Ok(()) => {
                    stats.speaker_reports.fetch_add(1, Ordering::Relaxed);
                    Delivery::Delivered
                }
                Err(status) => {
                    stats.speaker_reports_failed.fetch_add(1, Ordering::Relaxed);
                    let outcome = Delivery::after(status.code());
                    debug!(
                        %meeting,
                        speaker = ?speaker.as_ref().map(|p| &p.0),
                        code = ?status.code(),
                        message = status.message(),
                        ?outcome,
                        "control plane: active speaker not reported"
                    );
                    outcome
                }
            };
            speakers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .finished(&meeting, &speaker, outcome);
        }
    }
}

/// How a `ReportActiveSpeaker` call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Delivered,
    /// The control plane will not take it (the meeting moved away, the speaker is muted or
    /// left, ...): trying again would get the same answer.
    Refused,
    /// It may take it later (unreachable, overloaded, timed out): tried again.
    Failed,
}

impl Delivery {
    fn after(code: Code) -> Delivery {
        match code {
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::Internal
            | Code::Unknown
            | Code::Cancelled
            // The session is gone: the next one sends it.
            | Code::Unauthenticated => Delivery::Failed,
            _ => Delivery::Refused,
        }
    }
}

/// The latest dominant speaker of each meeting not yet told to the control plane, and
/// when each meeting was last reported: a meeting whose speaker flips many times a second
/// costs at most one call per [`Self::MIN_INTERVAL`], and only its last speaker is sent.
/// Pure (the clock is an argument), so it is tested without a network.
#[derive(Debug, Default)]
struct SpeakerReports {
    meetings: HashMap<MeetingId, SpeakerSlot>,
}

#[derive(Debug, Default)]
struct SpeakerSlot {
    /// The latest speaker not known to be delivered (`Some(None)`: nobody speaks).
    pending: Option<Option<ParticipantId>>,
    /// What the control plane last accepted, so that a return to it is not sent again.
    told: Option<Option<ParticipantId>>,
    /// When the last call for this meeting started.
    last_call: Option<Instant>,
}

impl SpeakerReports {
    /// At most one call per meeting this often (about 4 a second).
    const MIN_INTERVAL: Duration = Duration::from_millis(250);
    /// How often the queue is drained and due reports are sent.
    const POLL: Duration = Duration::from_millis(50);
    /// A meeting with nothing pending is forgotten this long after its last call.
    const FORGET_AFTER: Duration = Duration::from_secs(60);

    /// The core says `speaker` is now the dominant speaker of `meeting`.
    fn push(&mut self, meeting: MeetingId, speaker: Option<ParticipantId>) {
        self.meetings.entry(meeting).or_default().pending = Some(speaker);
    }

    /// The reports to send now, one per meeting; each stays pending until
    /// [`Self::finished`] says it was delivered or refused. The caller finishes every call
    /// of a round before taking the next, so a meeting has one call in flight at most.
    fn take_due(&mut self, now: Instant) -> Vec<(MeetingId, Option<ParticipantId>)> {
        let mut due = Vec::new();
        self.meetings.retain(|meeting, slot| {
            if slot.pending.is_some() && slot.pending == slot.told {
                // Flipped back to what the control plane already has.
                slot.pending = None;
            }
            let rested = slot
                .last_call
                .is_none_or(|at| now.saturating_duration_since(at) >= Self::MIN_INTERVAL);
            match &slot.pending {
                Some(speaker) if rested => {
                    due.push((meeting.clone(), speaker.clone()));
                    slot.last_call = Some(now);
                    true
                }
                Some(_) => true,
                None => slot
                    .last_call
                    .is_some_and(|at| now.saturating_duration_since(at) < Self::FORGET_AFTER),
            }
        });
        due
    }

    /// The call reporting `speaker` for `meeting` ended with `outcome`.
    fn finished(
        &mut self,
        meeting: &MeetingId,
        speaker: &Option<ParticipantId>,
        outcome: Delivery,
    ) {
        let Some(slot) = self.meetings.get_mut(meeting) else {
            return;
        };
        let sent = Some(speaker.clone());
        match outcome {
            Delivery::Delivered => {
                if slot.pending == sent {
                    slot.pending = None;
                }
                slot.told = sent;
            }
            Delivery::Refused => {
                if slot.pending == sent {
                    slot.pending = None;
                }
            }
            // Still pending (or superseded): sent again once rested.
            Delivery::Failed => {}
        }
    }
}

/// Turns cumulative counters into rates over the last heartbeat interval.
#[derive(Debug)]
struct LoadSampler {
    at: Instant,
    packets: (u64, u64),
    process_ticks: u64,
    shard_ticks: Vec<u64>,
    ticks_per_second: f64,
}

impl LoadSampler {
    fn new(shards: &[ShardLink]) -> Self {
        // SAFETY: sysconf has no memory arguments.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        LoadSampler {
            at: Instant::now(),
            packets: total_packets(shards),
            process_ticks: cpu_ticks("/proc/self/stat").unwrap_or(0),
            shard_ticks: shard_ticks(shards),
            ticks_per_second: if hz > 0 { hz as f64 } else { 100.0 },
        }
    }

    async fn sample(&mut self, shards: &[ShardLink]) -> pb::ForwarderLoad {
        let now = Instant::now();
        let seconds = now.duration_since(self.at).as_secs_f64().max(1e-3);
        let packets = total_packets(shards);
        let process = cpu_ticks("/proc/self/stat").unwrap_or(self.process_ticks);
        let per_shard = shard_ticks(shards);
        let busiest = per_shard
            .iter()
            .zip(&self.shard_ticks)
            .map(|(now, before)| now.saturating_sub(*before))
            .max()
            .unwrap_or(0);
        let cpu = |ticks: u64| (ticks as f64 / self.ticks_per_second / seconds) as f32;
        let (legs, relay_links) = leg_count(shards).await;
        let load = pb::ForwarderLoad {
            legs,
            relay_links,
            packets_in_per_sec: (packets.0.saturating_sub(self.packets.0) as f64 / seconds) as u64,
            packets_out_per_sec: (packets.1.saturating_sub(self.packets.1) as f64 / seconds) as u64,
            // The drivers count datagrams, not bytes.
            bits_out_per_sec: 0,
            cpu_busiest_shard: cpu(busiest).min(1.0),
            cpu_total: (cpu(process.saturating_sub(self.process_ticks))
                / shards.len().max(1) as f32)
                .min(1.0),
        };
        debug!(?load, "control plane: load");
        self.at = now;
        self.packets = packets;
        self.process_ticks = process;
        self.shard_ticks = per_shard;
        load
    }
}

fn total_packets(shards: &[ShardLink]) -> (u64, u64) {
    shards.iter().fold((0, 0), |(r, s), shard| {
        let (r2, s2) = shard.traffic.get();
        (r + r2, s + s2)
    })
}

fn shard_ticks(shards: &[ShardLink]) -> Vec<u64> {
    shards
        .iter()
        .map(|s| match s.tid.load(Ordering::Relaxed) {
            0 => 0,
            tid => cpu_ticks(&format!("/proc/self/task/{tid}/stat")).unwrap_or(0),
        })
        .collect()
}

/// utime + stime of a `/proc/.../stat` file, in clock ticks (proc(5): fields 14 and 15,
/// counted after the parenthesised command name, which may hold spaces).
fn cpu_ticks(path: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_cpu_ticks(&text)
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // After the name: state is field 3, so utime (14) is the 12th from here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Legs held by the cores, asked of each shard (a shard that does not answer within a
/// second counts as none).
/// Legs (relay link ends included: each is a leg of the core) and relay link ends held by
/// the cores.
async fn leg_count(shards: &[ShardLink]) -> (u32, u32) {
    let (mut legs, mut links) = (0, 0);
    for shard in shards {
        let (tx, rx) = oneshot::channel();
        let sent = shard.handle.send(Box::new(move |core| {
            let _ = tx.send((core.leg_count(), core.relay_link_count()));
        }));
        if sent.is_ok() {
            if let Ok(Ok((n, l))) = tokio::time::timeout(Duration::from_secs(1), rx).await {
                legs += n;
                links += l;
            }
        }
    }
    let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    (clamp(legs), clamp(links))
}

// ----- conversion from the wire -----------------------------------------------------

fn profile_to_pb(profile: SrtpProfile) -> pb::SrtpProfile {
    match profile {
        SrtpProfile::AesCm128HmacSha1_80 => pb::SrtpProfile::AesCm128HmacSha180,
        SrtpProfile::AesCm128HmacSha1_32 => pb::SrtpProfile::AesCm128HmacSha132,
        SrtpProfile::AeadAes128Gcm => pb::SrtpProfile::AeadAes128Gcm,
        SrtpProfile::AeadAes256Gcm => pb::SrtpProfile::AeadAes256Gcm,
    }
}

fn profile_from_pb(value: i32) -> Result<SrtpProfile, String> {
    match pb::SrtpProfile::try_from(value) {
        Ok(pb::SrtpProfile::AesCm128HmacSha180) => Ok(SrtpProfile::AesCm128HmacSha1_80),
        Ok(pb::SrtpProfile::AesCm128HmacSha132) => Ok(SrtpProfile::AesCm128HmacSha1_32),
        Ok(pb::SrtpProfile::AeadAes128Gcm) => Ok(SrtpProfile::AeadAes128Gcm),
        Ok(pb::SrtpProfile::AeadAes256Gcm) => Ok(SrtpProfile::AeadAes256Gcm),
        _ => Err(format!("unknown SRTP profile {value}")),
    }
}

fn key_from_pb(profile: SrtpProfile, key: Option<&pb::SrtpKey>) -> Result<MasterKey, String> {
    let key = key.ok_or("missing key")?;
    let mut material = Zeroizing::new(Vec::with_capacity(
        key.master_key.len() + key.master_salt.len(),
    ));
    material.extend_from_slice(&key.master_key);
    material.extend_from_slice(&key.master_salt);
    MasterKey::new(profile, &material).map_err(|e| e.to_string())
}

/// The address a meeting's legs send from here: the plan's port on the bound IP. The port
/// must be in the range, or no shard has its socket.
fn listen_from_pb(
    settings: &ControlSettings,
    plan: &pb::MeetingPlan,
) -> Result<SocketAddr, String> {
    let address = &plan.listen_address;
    let port = match address.parse::<SocketAddr>() {
        Ok(a) => a.port(),
        Err(_) => address
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .ok_or_else(|| format!("listen address `{address}` is not host:port"))?,
    };
    if !settings.ports.contains(port) {
        return Err(format!(
            "listen address `{address}`: port {port} is outside this forwarder's range {}",
            settings.ports
        ));
    }
    Ok(SocketAddr::new(settings.bind_ip, port))
}

/// The recording a meeting's media is tapped for; empty: none.
fn recording_from_pb(plan: &pb::MeetingPlan) -> Option<String> {
    (!plan.recording_id.is_empty()).then(|| plan.recording_id.clone())
}

fn track_kind_from_pb(kind: i32) -> Result<PublishedKind, String> {
    match pb::TrackKind::try_from(kind) {
        Ok(pb::TrackKind::Audio) => Ok(PublishedKind::Audio),
        Ok(pb::TrackKind::Camera) => Ok(PublishedKind::Camera),
        Ok(pb::TrackKind::Screen) => Ok(PublishedKind::Screen),
        _ => Err(format!("unknown track kind {kind}")),
    }
}

fn track_from_pb(track: &pb::TrackAssignment) -> Result<DesiredTrack, String> {
    let kind = track_kind_from_pb(track.kind)?;
    if track.ssrcs.is_empty() || track.ssrcs.len() > MAX_ENCODINGS {
        return Err(format!(
            "a track has 1 to {MAX_ENCODINGS} SSRCs, not {}",
            track.ssrcs.len()
        ));
    }
    Ok(DesiredTrack {
        kind,
        ssrcs: track.ssrcs.iter().map(|&s| Ssrc(s)).collect(),
        codec: track.codec.clone(),
        clock_rate: track.clock_rate,
        // RFC 8285 one-byte ids are 1-14 (two-byte: up to 255); 0 is "none".
        audio_level_extension: u8::try_from(track.audio_level_extension_id)
            .ok()
            .filter(|&id| id != 0),
        stream_ids: stream_ids_from_pb(track)?,
        // Set from the leg's `paused_tracks`.
        paused: false,
    })
}

/// A browser's track is named by its MID, and each simulcast encoding by its RID.
fn stream_ids_from_pb(track: &pb::TrackAssignment) -> Result<Option<StreamIds>, String> {
    if track.mid.is_empty() {
        if !track.rids.is_empty() {
            return Err("RIDs without a MID".into());
        }
        return Ok(None);
    }
    if !track.rids.is_empty() && track.rids.len() != track.ssrcs.len() {
        return Err(format!(
            "{} RIDs for {} SSRCs: one per encoding",
            track.rids.len(),
            track.ssrcs.len()
        ));
    }
    let payload_type = |pt: u32| u8::try_from(pt).ok().filter(|&pt| pt != 0 && pt < 128);
    let rtx = match (track.rtx_payload_type, track.rtx_repaired_payload_type) {
        (0, 0) => None,
        (rtx, repairs) => Some(RtxPayloadType {
            payload_type: payload_type(rtx).ok_or("an RTX payload type outside 1-127")?,
            repairs: payload_type(repairs)
                .ok_or("an RTX payload type without the payload type it repairs")?,
        }),
    };
    Ok(Some(StreamIds {
        mid: track.mid.clone(),
        rids: track.rids.clone(),
        rtx,
    }))
}

/// One of a browser's connections.
fn connection_from_pb(
    connection: Option<&pb::WebrtcConnection>,
) -> Result<DesiredConnection, String> {
    let c = connection.ok_or("missing connection")?;
    if c.ice_ufrag.is_empty() || c.ice_pwd.is_empty() {
        return Err("missing ICE credentials".into());
    }
    let extension = |id: u32| u8::try_from(id).ok().filter(|&id| id != 0);
    Ok(DesiredConnection {
        credentials: Credentials {
            local_ufrag: c.ice_ufrag.clone(),
            local_pwd: c.ice_pwd.clone(),
            remote_ufrag: (!c.remote_ice_ufrag.is_empty()).then(|| c.remote_ice_ufrag.clone()),
        },
        extensions: StreamExtensions {
            mid: extension(c.mid_extension_id),
            rid: extension(c.rid_extension_id),
            repaired_rid: extension(c.repaired_rid_extension_id),
            transport_cc: extension(c.transport_cc_extension_id),
            audio_level: extension(c.audio_level_extension_id),
        },
        payload_types: c
            .payload_types
            .iter()
            .filter_map(|p| {
                let pt = u8::try_from(p.payload_type).ok().filter(|&pt| pt < 128)?;
                Some((Codec::from_encoding_name(&p.codec), pt))
            })
            .collect(),
    })
}

fn transport_from_pb(leg: &pb::Leg) -> Result<DesiredTransport, String> {
    if let Some(w) = &leg.webrtc {
        if w.remote_fingerprint.is_empty() {
            return Err("WebRTC leg without the browser's fingerprint".into());
        }
        return Ok(DesiredTransport::Webrtc(DesiredWebrtc {
            remote_fingerprint: w.remote_fingerprint.clone(),
            publish: connection_from_pb(w.publish.as_ref())
                .map_err(|e| format!("publish connection: {e}"))?,
            subscribe: connection_from_pb(w.subscribe.as_ref())
                .map_err(|e| format!("subscribe connection: {e}"))?,
        }));
    }
    let profile = profile_from_pb(leg.srtp_profile)?;
    let inbound_key =
        key_from_pb(profile, leg.inbound_key.as_ref()).map_err(|e| format!("inbound key: {e}"))?;
    let outbound_key = key_from_pb(profile, leg.outbound_key.as_ref())
        .map_err(|e| format!("outbound key: {e}"))?;
    Ok(DesiredTransport::Sdes {
        inbound_key,
        outbound_key,
    })
}

fn leg_from_pb(leg: &pb::Leg) -> Result<DesiredLeg, String> {
    let transport = transport_from_pb(leg)?;
    let mut tracks = Vec::with_capacity(leg.tracks.len());
    for track in &leg.tracks {
        match track_from_pb(track) {
            Ok(t) => tracks.push(t),
            // One unusable track should not keep the participant out.
            Err(e) => warn!(
                meeting = %leg.meeting_id,
                participant = %leg.participant_id,
                "control plane: track ignored: {e}"
            ),
        }
    }
    // An unknown kind paused is ignored: a newer control plane's kind names no track here.
    let paused: Vec<PublishedKind> = leg
        .paused_tracks
        .iter()
        .filter_map(|&kind| track_kind_from_pb(kind).ok())
        .collect();
    for track in &mut tracks {
        track.paused = paused.contains(&track.kind);
    }
    Ok(DesiredLeg {
        transport,
        can_publish: leg.can_publish,
        breakout: (!leg.breakout_id.is_empty()).then(|| leg.breakout_id.clone()),
        tracks,
    })
}

/// A snapshot as the reconciler's model. Meetings and legs that cannot be served are
/// logged and left out (so anything held for them is removed).
fn convert_snapshot(settings: &ControlSettings, snapshot: pb::DesiredState) -> DesiredState {
    let mut state = DesiredState::default();
    for plan in &snapshot.meetings {
        match listen_from_pb(settings, plan) {
            Ok(listen) => {
                let meeting = state
                    .meetings
                    .entry(MeetingId(plan.meeting_id.clone()))
                    .or_insert_with(DesiredMeeting::default);
                meeting.listen = Some(listen);
                meeting.recording = recording_from_pb(plan);
            }
            Err(e) => error!(meeting = %plan.meeting_id, "control plane: meeting not served: {e}"),
        }
    }
    for leg in &snapshot.legs {
        match leg_from_pb(leg) {
            Ok(desired) => {
                state
                    .meetings
                    .entry(MeetingId(leg.meeting_id.clone()))
                    .or_default()
                    .legs
                    .insert(ParticipantId(leg.participant_id.clone()), desired);
            }
            Err(e) => error!(
                meeting = %leg.meeting_id,
                participant = %leg.participant_id,
                "control plane: leg not served: {e}"
            ),
        }
    }
    for link in &snapshot.relay_links {
        match link_from_pb(link) {
            Ok((meeting, id, desired)) => {
                state
                    .meetings
                    .entry(meeting)
                    .or_default()
                    .links
                    .insert(id, desired);
            }
            Err(e) => error!(link = %link.relay_id, "control plane: relay link not served: {e}"),
        }
    }
    if !snapshot.subscriptions.is_empty() {
        warn!(
            subscriptions = snapshot.subscriptions.len(),
            "control plane: explicit subscriptions are not supported yet; the default rule \
             applies"
        );
    }
    state
}

/// A relay link end: the meeting it belongs to here, its id, and what it should be.
fn link_from_pb(link: &pb::RelayLink) -> Result<(MeetingId, String, DesiredLink), String> {
    let direction = match pb::relay_link::Direction::try_from(link.direction) {
        Ok(pb::relay_link::Direction::Upstream) => RelayDirection::Upstream,
        Ok(pb::relay_link::Direction::Downstream) => RelayDirection::Downstream,
        _ => return Err(format!("unknown direction {}", link.direction)),
    };
    // A control plane that does not name the local meeting yet: the node is the link's
    // id without its `/up`; a downstream end is taken to be the origin's.
    let local = if !link.local_meeting_id.is_empty() {
        link.local_meeting_id.clone()
    } else {
        match direction {
            RelayDirection::Upstream => link
                .relay_id
                .strip_suffix("/up")
                .ok_or("no local meeting")?
                .to_owned(),
            RelayDirection::Downstream => link.meeting_id.clone(),
        }
    };
    let peer: SocketAddr = link
        .peer_address
        .parse()
        .map_err(|_| format!("peer address `{}` is not ip:port", link.peer_address))?;
    let profile = profile_from_pb(link.srtp_profile)?;
    let send_key =
        key_from_pb(profile, link.send_key.as_ref()).map_err(|e| format!("send key: {e}"))?;
    let receive_key =
        key_from_pb(profile, link.receive_key.as_ref()).map_err(|e| format!("receive key: {e}"))?;
    Ok((
        MeetingId(local),
        link.relay_id.clone(),
        DesiredLink {
            direction,
            peer,
            send_key,
            receive_key,
        },
    ))
}

/// A batch of changes as the reconciler's changes. An upsert that cannot be served
/// becomes a removal: what was held for the old version no longer matches the intent.
fn convert_changes(settings: &ControlSettings, changes: pb::DesiredStateChanges) -> Vec<Change> {
    use pb::desired_state_change::Change as C;
    let mut out = Vec::with_capacity(changes.changes.len());
    for change in changes.changes {
        match change.change {
            Some(C::MeetingUpserted(plan)) => {
                let meeting = MeetingId(plan.meeting_id.clone());
                match listen_from_pb(settings, &plan) {
                    Ok(listen) => out.push(Change::MeetingUpserted {
                        meeting,
                        listen,
                        recording: recording_from_pb(&plan),
                    }),
                    Err(e) => {
                        error!(%meeting, "control plane: meeting not served: {e}");
                        out.push(Change::MeetingRemoved(meeting));
                    }
                }
            }
            Some(C::MeetingRemoved(id)) => out.push(Change::MeetingRemoved(MeetingId(id))),
            Some(C::LegUpserted(leg)) => {
                let meeting = MeetingId(leg.meeting_id.clone());
                let participant = ParticipantId(leg.participant_id.clone());
                match leg_from_pb(&leg) {
                    Ok(leg) => out.push(Change::LegUpserted {
                        meeting,
                        participant,
                        leg,
                    }),
                    Err(e) => {
                        error!(%meeting, %participant, "control plane: leg not served: {e}");
                        out.push(Change::LegRemoved {
                            meeting,
                            participant,
                        });
                    }
                }
            }
            Some(C::LegRemoved(r)) => out.push(Change::LegRemoved {
                meeting: MeetingId(r.meeting_id),
                participant: ParticipantId(r.participant_id),
            }),
            Some(C::RelayLinkUpserted(link)) => match link_from_pb(&link) {
                Ok((meeting, id, link)) => out.push(Change::LinkUpserted { meeting, id, link }),
                Err(e) => {
                    error!(link = %link.relay_id, "control plane: relay link not served: {e}");
                    out.push(Change::LinkRemoved(link.relay_id));
                }
            },
            Some(C::RelayLinkRemoved(id)) => out.push(Change::LinkRemoved(id)),
            Some(other) => {
                debug!(change = ?std::mem::discriminant(&other), "control plane: explicit subscriptions are not supported yet; ignored");
            }
            None => {}
        }
    }
    out
}

/// This machine's host name, as the default forwarder id.
pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is live and its length is passed; gethostname NUL-terminates
    // within it when the name fits (and we read only up to the first NUL).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    (!name.is_empty()).then_some(name)
}

/// The local IP the kernel would use to reach the outside, found by connecting a UDP
/// socket (no packet is sent): the default media IP when listening on every interface.
pub fn primary_ip() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_browser_track_names_its_streams_and_its_rtx() {
        let mut track = pb::TrackAssignment {
            kind: pb::TrackKind::Camera.into(),
            ssrcs: vec![1, 2],
            codec: "VP8".into(),
            clock_rate: 90_000,
            mid: "1".into(),
            rids: vec!["q".into(), "f".into()],
            rtx_payload_type: 97,
            rtx_repaired_payload_type: 96,
            ..Default::default()
        };
        let ids = stream_ids_from_pb(&track).unwrap().unwrap();
        assert_eq!(ids.rids, ["q", "f"]);
        assert_eq!(
            ids.rtx,
            Some(RtxPayloadType {
                payload_type: 97,
                repairs: 96
            })
        );
        track.rtx_repaired_payload_type = 0;
        assert!(stream_ids_from_pb(&track).is_err(), "RTX repairing nothing");
        track.rtx_payload_type = 0;
        assert_eq!(stream_ids_from_pb(&track).unwrap().unwrap().rtx, None);
        track.rtx_payload_type = 200;
        track.rtx_repaired_payload_type = 96;
        assert!(stream_ids_from_pb(&track).is_err(), "not a payload type");
        track.rids.pop();
        track.rtx_payload_type = 0;
        assert!(stream_ids_from_pb(&track).is_err(), "one RID per SSRC");
    }

    #[test]
    fn port_ranges_parse_and_map_to_shards() {
        let r: PortRange = "40100-40199".parse().unwrap();
        assert_eq!(r, PortRange::DEFAULT);
        assert_eq!(r.len(), 100);
        assert_eq!(r.shard_of(40100, 2), 0);
        assert_eq!(r.shard_of(40101, 2), 1);
        assert_eq!(r.shard_of(40199, 3), 99 % 3);
        assert!("40199-40100".parse::<PortRange>().is_err());
        assert!("0-10".parse::<PortRange>().is_err());
        assert!("40100".parse::<PortRange>().is_err());
    }

    #[test]
    fn cpu_ticks_come_after_the_command_name() {
        let stat = "1234 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert!(cpu_ticks("/proc/self/stat").is_some());
    }

    #[test]
    fn backoff_doubles_to_five_seconds_and_resets() {
        let mut b = Backoff::new();
        let delays: Vec<u64> = (0..8).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next(), Duration::from_millis(100));
    }

    /// The due reports as `meeting=speaker` (`-`: nobody), sorted.
    fn due_at(reports: &mut SpeakerReports, now: Instant) -> Vec<String> {
        let mut due: Vec<_> = reports
            .take_due(now)
            .into_iter()
            .map(|(m, p)| format!("{}={}", m.0, p.map_or("-".to_owned(), |p| p.0)))
            .collect();
        due.sort();
        due
    }

    fn deliver(reports: &mut SpeakerReports, meeting: &str, who: Option<&str>, outcome: Delivery) {
        reports.finished(
            &MeetingId(meeting.into()),
            &who.map(|p| ParticipantId(p.into())),
            outcome,
        );
    }

    fn push(reports: &mut SpeakerReports, meeting: &str, who: Option<&str>) {
        reports.push(
            MeetingId(meeting.into()),
            who.map(|p| ParticipantId(p.into())),
        );
    }

    #[test]
    fn speaker_reports_keep_the_latest_per_meeting_at_most_four_a_second() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut r = SpeakerReports::default();

        // Only the last of a burst is sent, one call per meeting.
        for who in ["a", "b", "c"] {
            push(&mut r, "m1", Some(who));
        }
        push(&mut r, "m2", Some("x"));
        assert_eq!(due_at(&mut r, ms(0)), ["m1=c", "m2=x"]);
        // Pending until answered, but not sent twice in a round's interval.
        assert!(due_at(&mut r, ms(10)).is_empty());
        deliver(&mut r, "m1", Some("c"), Delivery::Delivered);
        deliver(&mut r, "m2", Some("x"), Delivery::Delivered);

        // A change within 250 ms of the last call waits for it.
        push(&mut r, "m1", Some("d"));
        push(&mut r, "m1", Some("e"));
        assert!(due_at(&mut r, ms(100)).is_empty());
        assert!(due_at(&mut r, ms(249)).is_empty());
        assert_eq!(due_at(&mut r, ms(250)), ["m1=e"]);
        deliver(&mut r, "m1", Some("e"), Delivery::Delivered);

        // Flipping away and back to what the control plane has costs nothing.
        push(&mut r, "m1", Some("f"));
        push(&mut r, "m1", Some("e"));
        assert!(due_at(&mut r, ms(600)).is_empty());

        // A failed call is tried again once rested; a refused one is not.
        push(&mut r, "m1", Some("g"));
        assert_eq!(due_at(&mut r, ms(700)), ["m1=g"]);
        deliver(&mut r, "m1", Some("g"), Delivery::Failed);
        assert!(due_at(&mut r, ms(800)).is_empty());
        assert_eq!(due_at(&mut r, ms(950)), ["m1=g"]);
        deliver(&mut r, "m1", Some("g"), Delivery::Refused);
        assert!(due_at(&mut r, ms(1300)).is_empty());

        // A newer speaker that arrived during the call is not cleared by its answer.
        push(&mut r, "m1", Some("h"));
        assert_eq!(due_at(&mut r, ms(1300)), ["m1=h"]);
        push(&mut r, "m1", None);
        deliver(&mut r, "m1", Some("h"), Delivery::Delivered);
        assert_eq!(due_at(&mut r, ms(1550)), ["m1=-"]);
        deliver(&mut r, "m1", None, Delivery::Delivered);

        // Meetings with nothing to say are forgotten after a minute.
        assert!(due_at(&mut r, ms(1550 + 60_000)).is_empty());
        assert!(r.meetings.is_empty(), "{:?}", r.meetings);
    }

    #[test]
    fn a_chattering_meeting_costs_at_most_four_calls_a_second() {
        let t0 = Instant::now();
        let mut r = SpeakerReports::default();
        let mut calls = 0;
        let mut last = None;
        for tick in 0..1000u64 {
            let now = t0 + Duration::from_millis(tick);
            let who = format!("p{}", tick % 7);
            r.push(MeetingId("m".into()), Some(ParticipantId(who.clone())));
            last = Some(who);
            if tick % 50 == 0 {
                for (meeting, speaker) in r.take_due(now) {
                    calls += 1;
                    r.finished(&meeting, &speaker, Delivery::Delivered);
                }
            }
        }
        assert_eq!(calls, 4, "at 0, 250, 500 and 750 ms");
        // The last speaker goes out once the meeting has rested.
        let due = r.take_due(t0 + Duration::from_millis(1000));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1.as_ref().map(|p| &p.0), last.as_ref());
    }

    #[test]
    fn transient_failures_are_retried_and_refusals_are_not() {
        assert_eq!(Delivery::after(Code::Unavailable), Delivery::Failed);
        assert_eq!(Delivery::after(Code::DeadlineExceeded), Delivery::Failed);
        assert_eq!(Delivery::after(Code::Unauthenticated), Delivery::Failed);
        assert_eq!(Delivery::after(Code::PermissionDenied), Delivery::Refused);
        assert_eq!(Delivery::after(Code::FailedPrecondition), Delivery::Refused);
        assert_eq!(Delivery::after(Code::NotFound), Delivery::Refused);
    }

    /// A plain SRTP leg `p` of meeting `m` that may publish, with keys and no tracks.
    fn plain_leg() -> pb::Leg {
        pb::Leg {
            meeting_id: "m".into(),
            participant_id: "p".into(),
            srtp_profile: pb::SrtpProfile::AeadAes128Gcm as i32,
            inbound_key: Some(pb::SrtpKey {
                master_key: vec![0xAB; 16],
                master_salt: vec![0xCD; 12],
            }),
            outbound_key: Some(pb::SrtpKey {
                master_key: vec![0xEF; 16],
                master_salt: vec![0x12; 12],
            }),
            can_publish: true,
            ..Default::default()
        }
    }

    #[test]
    fn paused_kinds_are_read_and_unknown_ones_ignored() {
        let leg = pb::Leg {
            tracks: [
                pb::TrackKind::Audio,
                pb::TrackKind::Camera,
                pb::TrackKind::Screen,
            ]
            .into_iter()
            .zip(1..)
            .map(|(kind, ssrc)| pb::TrackAssignment {
                kind: kind.into(),
                ssrcs: vec![ssrc],
                codec: "opus".into(),
                ..Default::default()
            })
            .collect(),
            paused_tracks: vec![
                pb::TrackKind::Screen as i32,
                99,
                pb::TrackKind::Audio as i32,
            ],
            ..plain_leg()
        };
        let desired = leg_from_pb(&leg).unwrap();
        let paused: Vec<_> = desired.tracks.iter().map(|t| (t.kind, t.paused)).collect();
        assert_eq!(
            paused,
            [
                (PublishedKind::Audio, true),
                (PublishedKind::Camera, false),
                (PublishedKind::Screen, true)
            ]
        );
    }

    #[test]
    fn tokens_and_keys_stay_out_of_debug_output() {
        let token = Token::new("s3cret-token".into());
        assert!(!format!("{token:?}").contains("s3cret"));
        let leg = plain_leg();
        let desired = leg_from_pb(&leg).unwrap();
        let browser = pb::Leg {
            webrtc: Some(pb::WebrtcTransport {
                remote_fingerprint: "sha-256 AB".into(),
                publish: Some(pb::WebrtcConnection {
                    ice_ufrag: "ufrg".into(),
                    ice_pwd: "s3cret-ice-password".into(),
                    ..Default::default()
                }),
                subscribe: Some(pb::WebrtcConnection {
                    ice_ufrag: "ufr2".into(),
                    ice_pwd: "s3cret-ice-password".into(),
                    ..Default::default()
                }),
            }),
            ..leg.clone()
        };
        let debug = format!("{:?}", leg_from_pb(&browser).unwrap());
        assert!(
            debug.contains("ufrg") && !debug.contains("s3cret"),
            "{debug}"
        );
        let debug = format!("{desired:?}").to_lowercase();
        for needle in ["abab", "171", "cdcd", "efef"] {
            assert!(!debug.contains(needle), "{debug}");
        }
        let bad = pb::Leg {
            inbound_key: Some(pb::SrtpKey {
                master_key: vec![0; 16],
                master_salt: vec![0; 14],
            }),
            ..leg
        };
        assert!(leg_from_pb(&bad).unwrap_err().contains("inbound key"));
    }

    #[test]
    fn a_browsers_extension_ids_reach_its_connections() {
        let connection = |ufrag: &str, transport_cc| pb::WebrtcConnection {
            ice_ufrag: ufrag.into(),
            ice_pwd: "an-ice-password-of-24-ch".into(),
            mid_extension_id: 4,
            rid_extension_id: 10,
            repaired_rid_extension_id: 11,
            transport_cc_extension_id: transport_cc,
            ..Default::default()
        };
        let leg = pb::Leg {
            meeting_id: "m".into(),
            participant_id: "p".into(),
            can_publish: true,
            webrtc: Some(pb::WebrtcTransport {
                remote_fingerprint: "sha-256 AB".into(),
                publish: Some(connection("ufrg", 3)),
                // Not an RFC 8285 id: as if not negotiated.
                subscribe: Some(connection("ufr2", 300)),
            }),
            ..Default::default()
        };
        let desired = leg_from_pb(&leg).unwrap();
        let DesiredTransport::Webrtc(web) = &desired.transport else {
            panic!("a WebRTC leg: {desired:?}");
        };
        assert_eq!(web.publish.extensions.transport_cc, Some(3));
        assert_eq!(web.publish.extensions.repaired_rid, Some(11));
        assert_eq!(web.subscribe.extensions.transport_cc, None);
    }
}
