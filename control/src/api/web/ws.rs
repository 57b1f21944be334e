//! `GET /v1/meetings/{id}/ws`: one participant's WebSocket (docs/webrtc.md, "Signaling").
//!
//! # Protocol
//!
//! JSON text messages with a `type`. Any client message may carry an `id` (any JSON
//! value): the answer to it (`ok`, `error`, `publish_answer`) echoes it, so a client can
//! match answers to requests; `ok` is sent only to messages that carry an `id`.
//!
//! 1. The first message is `join` (`display_name`, `passcode?`, `host_key?`,
//!    `audio_muted?`, `video_muted?`) or `join` with `join_token` (resume). A failed join
//!    answers `error` and the socket waits for another `join` (a mistyped passcode).
//!    Success answers `joined` (`participant_id`, `join_token`,
//!    `join_token_expires_at_unix_ms`, `role`, `presence`, `meeting`, `forwarder_id`,
//!    `forwarder_address`, `resumed`), where `meeting` is the meeting as of the start of
//!    the event feed: every later change arrives as an `event`.
//! 2. Then: `event` (`sequence`, `event`: a `MeetingEvent` as JSON, its `type` one of
//!    USER_JOINED, USER_LEFT, MUTE_CHANGED, ...), `subscribe_offer`, and, rarely,
//!    `snapshot` (`sequence`, `meeting`: the event history was compacted away, the client
//!    replaces its state with this).
//! 3. Client requests: `publish_offer {sdp}` → `publish_answer {sdp}`;
//!    `subscribe_answer {sdp, revision}`; `ice_restart {connection}`;
//!    `set_mute {audio_muted?, video_muted?}` (self); `mute_participant {participant_id,
//!    audio_muted?, video_muted?}` (a host; muting only, as in `SetMute`);
//!    `screenshare {active, participant_id?}` (start for self, or stop for self or, as a
//!    host, another); `admit`/`deny {participant_id}`; `create_breakouts {names}` (its `ok`
//!    carries `breakout_ids`); `move_to_breakout {participant_id, breakout_id?}` (absent:
//!    the main room); `close_breakouts`; `set_recording {active}` (a host); `ping` →
//!    `pong`; `leave`.
//!
//! A malformed, unknown or refused message answers `error {code, message, request?, id?}`
//! (code: the gRPC code name); the socket stays open and nothing changed. A message above
//! [`WebConfig::max_message_bytes`](super::WebConfig) is refused the same way; four times
//! that closes the socket (a protocol error: the participant then leaves after the grace).
//!
//! # Lifetime
//!
//! `leave` leaves and closes. A socket that closes otherwise (a reload, a dropped network,
//! a ping unanswered for two intervals, a browser too slow to read its messages) leaves
//! after [`WebConfig::resume_grace`](super::WebConfig) unless a `join` with the
//! participant's `join_token` arrives first, on this control instance: pending leaves are
//! kept in memory. The meeting ending, the participant being denied, or leaving through
//! another face close the socket with nothing left to do. When the process stops, sockets
//! close with 1012 and their participants leave at once (no instance would be left to
//! finish the grace period).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::stream::{BoxStream, SplitStream};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use super::rest::{meeting_id, now};
use super::{code_name, ApiError, WebApi};
use crate::domain::{
    BreakoutId, MeetingEvent, MeetingId, MeetingKind, MuteChange, Participant, ParticipantId,
    Passcode, Presence, Role,
};
use crate::service::meetings::{JoinInput, MeetingUpdate, MeetingView};
use crate::service::webrtc::{Connection, NegotiationError, SubscribeOffer, WebrtcPeer};
use crate::service::{Code, ServiceError};

/// Close codes (RFC 6455 §7.4.1, IANA registry).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_ERROR: u16 = 1011;
const CLOSE_RESTART: u16 = 1012;
/// Private use (4000-4999): the participant resumed on another socket.
const CLOSE_RESUMED: u16 = 4000;

/// A client message, once its `type` is known. Unknown fields are refused.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    Join {
        #[serde(default)]
        display_name: Option<String>,
        #[serde(default)]
        passcode: Option<String>,
        #[serde(default)]
        host_key: Option<String>,
        #[serde(default)]
        join_token: Option<String>,
        #[serde(default)]
        audio_muted: bool,
        #[serde(default)]
        video_muted: bool,
    },
    PublishOffer {
        sdp: String,
    },
    SubscribeAnswer {
        sdp: String,
        revision: u64,
    },
    IceRestart {
        connection: Connection,
    },
    SetMute {
        #[serde(default)]
        audio_muted: Option<bool>,
        #[serde(default)]
        video_muted: Option<bool>,
    },
    MuteParticipant {
        participant_id: String,
        #[serde(default)]
        audio_muted: Option<bool>,
        #[serde(default)]
        video_muted: Option<bool>,
    },
    Screenshare {
        active: bool,
        #[serde(default)]
        participant_id: Option<String>,
    },
    Admit {
        participant_id: String,
    },
    Deny {
        participant_id: String,
    },
    CreateBreakouts {
        names: Vec<String>,
    },
    MoveToBreakout {
        participant_id: String,
        #[serde(default)]
        breakout_id: Option<String>,
    },
    CloseBreakouts {},
    SetRecording {
        active: bool,
    },
    Ping {},
    Leave {},
}

/// Message types a client may send: metric labels come from here, never from the client.
const REQUEST_TYPES: &[&str] = &[
    "join",
    "publish_offer",
    "subscribe_answer",
    "ice_restart",
    "set_mute",
    "mute_participant",
    "screenshare",
    "admit",
    "deny",
    "create_breakouts",
    "move_to_breakout",
    "close_breakouts",
    "set_recording",
    "ping",
    "leave",
];

/// A participant as a page sees it (the stored record has nothing secret).
#[derive(Debug, Serialize)]
struct MeetingJson<'a> {
    meeting_id: &'a MeetingId,
    title: &'a str,
    kind: MeetingKind,
    state: &'static str,
    waiting_room: bool,
    recording: bool,
    /// Everyone present (waiting or admitted) on the stage, and the viewer's own audience
    /// record in a webinar.
    participants: Vec<&'a Participant>,
    breakouts: Vec<BreakoutJson<'a>>,
    /// Webinar attendees, waiting or admitted.
    audience: u64,
}

#[derive(Debug, Serialize)]
struct BreakoutJson<'a> {
    breakout_id: &'a BreakoutId,
    name: &'a str,
}

fn meeting_json(view: &MeetingView) -> MeetingJson<'_> {
    let m = &view.meeting;
    MeetingJson {
        meeting_id: m.id(),
        title: m.title(),
        kind: m.kind(),
        state: if m.is_open() { "open" } else { "ended" },
        waiting_room: m.waiting_room(),
        recording: m.recording(),
        participants: m
            .participants()
            .values()
            .chain(view.attendee.as_ref())
            .filter(|p| p.is_present())
            .collect(),
        breakouts: m
            .breakouts()
            .iter()
            .map(|(id, b)| BreakoutJson {
                breakout_id: id,
                name: &b.name,
            })
            .collect(),
        audience: view.audience,
    }
}

/// A server message.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Reply<'a> {
    Joined {
        participant_id: &'a ParticipantId,
        join_token: &'a str,
        join_token_expires_at_unix_ms: u64,
        role: Role,
        presence: Presence,
        meeting: MeetingJson<'a>,
        forwarder_id: Option<String>,
        forwarder_address: Option<String>,
        resumed: bool,
    },
    PublishAnswer {
        sdp: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
    },
    SubscribeOffer {
        sdp: &'a str,
        revision: u64,
    },
    Event {
        sequence: i64,
        event: &'a MeetingEvent,
    },
    Snapshot {
        sequence: i64,
        meeting: MeetingJson<'a>,
    },
    Ok {
        request: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        breakout_ids: Option<&'a [BreakoutId]>,
    },
    Error {
        code: &'static str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        request: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
    },
}

/// A refused request: its code and a message that names no secret.
#[derive(Debug)]
struct Refusal {
    code: Code,
    message: String,
}

impl Refusal {
    fn new(code: Code, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

impl From<ServiceError> for Refusal {
    fn from(e: ServiceError) -> Self {
        if e.code() == Code::Internal {
            tracing::error!(error = %e, "internal error");
        }
        Refusal::new(e.code(), e.to_string())
    }
}

impl From<NegotiationError> for Refusal {
    fn from(e: NegotiationError) -> Self {
        Refusal::new(e.code(), e.to_string())
    }
}

impl From<crate::domain::DomainError> for Refusal {
    fn from(e: crate::domain::DomainError) -> Self {
        ServiceError::from(e).into()
    }
}

/// `GET /v1/meetings/{id}/ws`: 404 before the upgrade if there is no such meeting.
pub(super) async fn upgrade(
    State(api): State<WebApi>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let route = "GET /v1/meetings/{id}/ws";
    let id = match meeting_id(&id) {
        Ok(id) => id,
        Err(e) => {
            api.inner.metrics.request(route, e.status);
            return e.into_response();
        }
    };
    if let Err(e) = api.inner.service.get(&id).await {
        let e = ApiError::from(e);
        api.inner.metrics.request(route, e.status);
        return e.into_response();
    }
    api.inner
        .metrics
        .request(route, StatusCode::SWITCHING_PROTOCOLS);
    let region = headers
        .get("x-fanout-region")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let hard_limit = api.inner.config.max_message_bytes.saturating_mul(4);
    let span = tracing::info_span!("ws", meeting = %id, participant = tracing::field::Empty);
    ws.max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .on_upgrade(move |socket| session(api, id, region, socket).instrument(span))
}

/// The outgoing half: a bounded queue drained by a writer task.
struct Outbox {
    tx: mpsc::Sender<Message>,
    api: WebApi,
    /// The queue was full once: the session ends.
    slow: bool,
}

impl Outbox {
    /// Queues `reply`; false if the socket is gone or the browser is too slow (the session
    /// must end).
    async fn send(&mut self, reply: &Reply<'_>) -> bool {
        let text = match serde_json::to_string(reply) {
            Ok(text) => text,
            Err(e) => {
                // Unreachable: every field serialises (strings, numbers, derived types).
                warn!(error = %e, "reply not serialisable");
                return true;
            }
        };
        self.frame(Message::Text(Utf8Bytes::from(text))).await
    }

    /// Queues a frame, waiting at most [`WebConfig::slow_timeout`](super::WebConfig) for
    /// room: only this session waits, and a browser that stays that far behind is
    /// disconnected.
    async fn frame(&mut self, message: Message) -> bool {
        if self.slow {
            return false;
        }
        let timeout = self.api.inner.config.slow_timeout;
        match self.tx.send_timeout(message, timeout).await {
            Ok(()) => {
                self.api.inner.metrics.message_out();
                true
            }
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                warn!("browser does not read its messages: closing the socket");
                self.slow = true;
                false
            }
            Err(mpsc::error::SendTimeoutError::Closed(_)) => false,
        }
    }

    async fn error(
        &mut self,
        r: &Refusal,
        request: Option<&'static str>,
        id: Option<&Value>,
    ) -> bool {
        self.send(&Reply::Error {
            code: code_name(r.code),
            message: &r.message,
            request,
            id,
        })
        .await
    }

    /// A close frame, if there is room for it.
    fn close(&mut self, code: u16, reason: &'static str) {
        let _ = self.tx.try_send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })));
    }
}

/// How a session ended, and so what happens to the participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Never joined: nothing to do.
    NotJoined,
    /// Left (by `leave`), or is gone anyway (denied, meeting ended, left elsewhere).
    Gone,
    /// The socket went away: leave after the grace period unless resumed.
    Dropped,
    /// The process is stopping: leave now.
    Stopping,
    /// A `join` with the token on another socket took the participant over.
    Superseded,
}

/// One parsed client message.
struct Incoming {
    request: Request,
    kind: &'static str,
    id: Option<Value>,
}

/// Parses a text message; on failure, the refusal and whatever of `type` and `id` was
/// readable.
fn parse(text: &str) -> Result<Incoming, (Refusal, Option<&'static str>, Option<Value>)> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        (
            Refusal::new(Code::InvalidArgument, format!("not JSON: {e}")),
            None,
            None,
        )
    })?;
    let Value::Object(mut map) = value else {
        return Err((
            Refusal::new(Code::InvalidArgument, "a message is a JSON object"),
            None,
            None,
        ));
    };
    let id = map.remove("id");
    let kind = match map.get("type") {
        Some(Value::String(t)) => REQUEST_TYPES.iter().copied().find(|k| k == t),
        _ => return Err((Refusal::new(Code::InvalidArgument, "no `type`"), None, id)),
    };
    let Some(kind) = kind else {
        return Err((
            Refusal::new(Code::InvalidArgument, "unknown message type"),
            None,
            id,
        ));
    };
    match serde_json::from_value::<Request>(Value::Object(map)) {
        Ok(request) => Ok(Incoming { request, kind, id }),
        Err(e) => Err((
            Refusal::new(Code::InvalidArgument, format!("{kind}: {e}")),
            Some(kind),
            id,
        )),
    }
}

fn participant_id(text: &str) -> Result<ParticipantId, Refusal> {
    ParticipantId::new(text)
        .map_err(|e| Refusal::new(Code::InvalidArgument, format!("participant_id: {e}")))
}

fn passcode(field: &str, text: Option<String>) -> Result<Option<Passcode>, Refusal> {
    text.map(|t| {
        Passcode::new(t).map_err(|e| Refusal::new(Code::InvalidArgument, format!("{field}: {e}")))
    })
    .transpose()
}

/// A joined participant's session.
struct Joined {
    peer: WebrtcPeer,
    token: String,
    updates: BoxStream<'static, Result<MeetingUpdate, ServiceError>>,
    /// This session's hold on the participant ([`Slot`]).
    generation: u64,
    /// Fires when another socket resumes the participant.
    kicked: oneshot::Receiver<()>,
}

async fn session(api: WebApi, meeting: MeetingId, region: Option<String>, socket: WebSocket) {
    api.inner.metrics.socket_opened();
    let (mut sink, stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(api.inner.config.send_queue);
    let writer = tokio::spawn(
        async move {
            while let Some(message) = rx.recv().await {
                let closing = matches!(message, Message::Close(_));
                if sink.send(message).await.is_err() || closing {
                    break;
                }
            }
            let _ = sink.close().await;
        }
        .in_current_span(),
    );
    let mut out = Outbox {
        tx,
        api: api.clone(),
        slow: false,
    };
    let mut session = Session {
        api: api.clone(),
        meeting,
        stream,
        last_heard: Instant::now(),
    };
    let (end, joined) = session.run(&mut out, region).await;
    let slow = out.slow;
    drop(out);
    // The writer ends with the queue; a slow browser's pending messages are not waited for.
    if slow {
        writer.abort();
    } else if tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .is_err()
    {
        debug!("socket did not take its close frame in time");
    }
    if let Some(joined) = joined {
        finish(&api, end, joined.peer, joined.generation).await;
    }
    // After `finish`: a stopping process waits for open sockets, and so for their leaves.
    api.inner.metrics.socket_closed(slow);
}

/// Who holds a participant: the session with this generation, live or (its socket gone)
/// waiting out the grace period before leaving.
#[derive(Debug)]
pub(crate) struct Slot {
    generation: u64,
    state: SlotState,
}

#[derive(Debug)]
enum SlotState {
    /// A socket is open; sending on `kick` closes it (a resume on another socket).
    Live { kick: oneshot::Sender<()> },
    /// The socket closed; this task leaves when the grace is over.
    Leaving { task: tokio::task::AbortHandle },
}

static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

fn lock_peers(api: &WebApi) -> std::sync::MutexGuard<'_, HashMap<ParticipantId, Slot>> {
    api.inner
        .peers
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Makes a new session the holder of `who`: an older socket of theirs is closed, a
/// pending leave cancelled. Returns the session's generation and its kick receiver.
fn take_over(api: &WebApi, who: &ParticipantId) -> (u64, oneshot::Receiver<()>) {
    let generation = NEXT_GENERATION.fetch_add(1, Ordering::Relaxed);
    let (kick, kicked) = oneshot::channel();
    let previous = lock_peers(api).insert(
        who.clone(),
        Slot {
            generation,
            state: SlotState::Live { kick },
        },
    );
    match previous.map(|p| p.state) {
        Some(SlotState::Live { kick }) => {
            let _ = kick.send(());
        }
        Some(SlotState::Leaving { task }) => task.abort(),
        None => {}
    }
    (generation, kicked)
}

/// Drops `who`'s slot if session `generation` still holds it.
fn release_slot(api: &WebApi, who: &ParticipantId, generation: u64) {
    let mut peers = lock_peers(api);
    if peers.get(who).is_some_and(|s| s.generation == generation) {
        peers.remove(who);
    }
}

/// What happens to a participant whose socket ended.
async fn finish(api: &WebApi, end: End, peer: WebrtcPeer, generation: u64) {
    match end {
        End::NotJoined | End::Superseded => {}
        End::Gone => {
            release_slot(api, &peer.participant, generation);
            api.inner.negotiator.release(&peer).await;
        }
        End::Stopping => {
            release_slot(api, &peer.participant, generation);
            leave(api, &peer).await;
        }
        End::Dropped => {
            let grace = api.inner.config.resume_grace;
            let mut peers = lock_peers(api);
            let Some(slot) = peers.get_mut(&peer.participant) else {
                return;
            };
            if slot.generation != generation {
                // A resume took over already: nothing to do.
                return;
            }
            let api2 = api.clone();
            let task = tokio::spawn(
                async move {
                    tokio::time::sleep(grace).await;
                    // Leave only if no resume took the slot meanwhile. A resume aborts this
                    // task only while it sleeps: the slot is gone before the leave starts.
                    let mine = {
                        let mut peers = lock_peers(&api2);
                        let mine = peers.get(&peer.participant).is_some_and(|s| {
                            s.generation == generation
                                && matches!(s.state, SlotState::Leaving { .. })
                        });
                        if mine {
                            peers.remove(&peer.participant);
                        }
                        mine
                    };
                    if mine {
                        info!("not resumed within {grace:?}: leaving");
                        leave(&api2, &peer).await;
                    }
                }
                .in_current_span(),
            );
            // Under the lock: the task cannot look before its slot says `Leaving`.
            slot.state = SlotState::Leaving {
                task: task.abort_handle(),
            };
        }
    }
}

async fn leave(api: &WebApi, peer: &WebrtcPeer) {
    // Retried on contention and store unavailability: a participant whose leave is lost
    // would stay in the meeting until it ends.
    for attempt in 1..=5u32 {
        match api.inner.service.leave(&peer.caller, now()).await {
            Ok(()) => break,
            // Already gone (denied, ended, left through another face): nothing to undo.
            Err(e) if e.code() == Code::FailedPrecondition || e.code() == Code::NotFound => break,
            Err(e)
                if (e.code() == Code::Aborted || e.code() == Code::Unavailable) && attempt < 5 =>
            {
                debug!(error = %e, attempt, "leave failed; retrying");
                tokio::time::sleep(Duration::from_millis(200) * attempt).await;
            }
            Err(e) => {
                warn!(error = %e, "leave after the socket closed failed");
                break;
            }
        }
    }
    api.inner.negotiator.release(peer).await;
}

struct Session {
    api: WebApi,
    meeting: MeetingId,
    stream: SplitStream<WebSocket>,
    /// Any frame from the browser (a pong included) counts as a sign of life.
    last_heard: Instant,
}

/// What a received frame turned out to be.
enum Frame {
    Text(Utf8Bytes),
    /// Closed, failed, or over the hard size limit.
    Gone,
    /// Ping, pong, or binary (answered with an error by the caller).
    Other {
        binary: bool,
    },
}

impl Session {
    async fn recv(&mut self) -> Frame {
        match self.stream.next().await {
            Some(Ok(message)) => {
                self.last_heard = Instant::now();
                match message {
                    Message::Text(text) => Frame::Text(text),
                    Message::Binary(_) => Frame::Other { binary: true },
                    Message::Ping(_) | Message::Pong(_) => Frame::Other { binary: false },
                    Message::Close(_) => Frame::Gone,
                }
            }
            Some(Err(e)) => {
                debug!(error = %e, "socket read failed");
                Frame::Gone
            }
            None => Frame::Gone,
        }
    }

    async fn run(&mut self, out: &mut Outbox, region: Option<String>) -> (End, Option<Joined>) {
        let Some(mut joined) = self.join_phase(out, region).await else {
            return (End::NotJoined, None);
        };
        let end = self.joined_phase(out, &mut joined).await;
        (end, Some(joined))
    }

    /// Until a successful `join`: `None` if the socket ended first.
    async fn join_phase(&mut self, out: &mut Outbox, region: Option<String>) -> Option<Joined> {
        let deadline = Instant::now() + self.api.inner.config.join_timeout;
        let mut stopping = self.api.inner.stopping.clone();
        loop {
            let frame = tokio::select! {
                frame = self.recv() => frame,
                () = tokio::time::sleep_until(deadline) => {
                    out.close(CLOSE_POLICY, "no join in time");
                    return None;
                }
                () = stopped(&mut stopping) => {
                    out.close(CLOSE_RESTART, "control plane stopping");
                    return None;
                }
            };
            let text = match frame {
                Frame::Text(text) => text,
                Frame::Gone => return None,
                Frame::Other { binary: false } => continue,
                Frame::Other { binary: true } => {
                    self.refuse_binary(out).await;
                    continue;
                }
            };
            if !self.size_ok(out, &text).await {
                continue;
            }
            let incoming = match parse(&text) {
                Ok(incoming) => incoming,
                Err((refusal, kind, id)) => {
                    self.count(kind.unwrap_or("invalid"), Some(refusal.code));
                    out.error(&refusal, kind, id.as_ref()).await;
                    continue;
                }
            };
            let Incoming { request, kind, id } = incoming;
            let result = match request {
                Request::Join {
                    display_name,
                    passcode,
                    host_key,
                    join_token,
                    audio_muted,
                    video_muted,
                } => {
                    self.join(
                        out,
                        JoinArgs {
                            display_name,
                            passcode,
                            host_key,
                            join_token,
                            audio_muted,
                            video_muted,
                            region: region.clone(),
                        },
                    )
                    .await
                }
                Request::Ping {} => {
                    self.count(kind, None);
                    out.send(&Reply::Pong { id: id.as_ref() }).await;
                    continue;
                }
                _ => Err(Refusal::new(
                    Code::FailedPrecondition,
                    "join first: the first message is `join`",
                )),
            };
            match result {
                Ok(joined) => {
                    self.count(kind, None);
                    return Some(joined);
                }
                Err(refusal) => {
                    self.count(kind, Some(refusal.code));
                    debug!(request = kind, code = code_name(refusal.code), "refused");
                    if !out.error(&refusal, Some(kind), id.as_ref()).await {
                        return None;
                    }
                }
            }
        }
    }

    async fn join(&mut self, out: &mut Outbox, args: JoinArgs) -> Result<Joined, Refusal> {
        let service = &self.api.inner.service;
        let (token, expires_at, placement, resumed) = match args.join_token {
            Some(token) => {
                let crate::service::meetings::Caller::Participant(claims) =
                    service.authenticate(&token, now())?
                else {
                    // `authenticate` verifies join tokens only.
                    return Err(Refusal::new(Code::Unauthenticated, "not a join token"));
                };
                if claims.meeting != self.meeting {
                    return Err(Refusal::new(
                        Code::Unauthenticated,
                        "the join token is for another meeting",
                    ));
                }
                let placement = service.placement(&self.meeting).await?;
                (token, claims.expires_at, placement, true)
            }
            None => {
                let input = JoinInput {
                    display_name: args.display_name.unwrap_or_default(),
                    passcode: passcode("passcode", args.passcode)?,
                    host_key: passcode("host_key", args.host_key)?,
                    region: args.region,
                    audio_muted: args.audio_muted,
                    video_muted: args.video_muted,
                    srtp_profiles: Vec::new(),
                    browser: true,
                };
                let joined = service.join(&self.meeting, input, now()).await?;
                (
                    joined.token,
                    joined.expires_at,
                    Some(joined.placement),
                    false,
                )
            }
        };
        let caller = service.authenticate(&token, now())?;
        let crate::service::meetings::Caller::Participant(claims) = caller.clone() else {
            return Err(Refusal::new(Code::Unauthenticated, "not a join token"));
        };
        let peer = WebrtcPeer::new(claims);
        // From here this socket holds the participant (closing an older socket of theirs,
        // cancelling a pending leave); undone if the join fails below.
        let (generation, kicked) = take_over(&self.api, &peer.participant);
        // The feed starts with a snapshot at least as new as the join: `joined` carries it,
        // and every change after it comes as an event.
        let started = async {
            let mut updates = service.watch(&caller, &self.meeting, None).await?;
            match updates.next().await {
                Some(Ok(MeetingUpdate::Snapshot { revision, view })) => {
                    Ok((updates, revision, view))
                }
                Some(Err(e)) => Err(e),
                _ => Err(ServiceError::Contention(
                    "the event feed did not start".into(),
                )),
            }
        }
        .await;
        let (updates, revision, view) = match started {
            Ok(started) => started,
            Err(e) => {
                release_slot(&self.api, &peer.participant, generation);
                if !resumed {
                    // Joined but cannot follow the meeting: undo, so nothing changed.
                    let _ = service.leave(&caller, now()).await;
                }
                return Err(e.into());
            }
        };
        let me = view
            .meeting
            .participant(&peer.participant)
            .or(view.attendee.as_ref())
            .filter(|p| p.id == peer.participant && p.is_present())
            .ok_or_else(|| {
                release_slot(&self.api, &peer.participant, generation);
                Refusal::from(crate::domain::DomainError::ParticipantLeft(
                    peer.participant.clone(),
                ))
            })?;
        tracing::Span::current().record("participant", tracing::field::display(&peer.participant));
        info!(resumed, role = ?me.role, presence = ?me.presence, "joined over WebSocket");
        out.send(&Reply::Joined {
            participant_id: &peer.participant,
            join_token: &token,
            join_token_expires_at_unix_ms: expires_at.0,
            role: me.role,
            presence: me.presence,
            meeting: meeting_json(&view),
            forwarder_id: placement.as_ref().map(|p| p.forwarder.to_string()),
            forwarder_address: placement.map(|p| p.address),
            resumed,
        })
        .await;
        debug!(sequence = revision, "event feed started");
        Ok(Joined {
            peer,
            token,
            updates,
            generation,
            kicked,
        })
    }

    async fn joined_phase(&mut self, out: &mut Outbox, joined: &mut Joined) -> End {
        let negotiator = self.api.inner.negotiator.clone();
        let mut offers = match negotiator.subscribe_offers(&joined.peer).await {
            Ok(offers) => Some(offers),
            Err(e) => {
                out.error(&Refusal::from(e), None, None).await;
                None
            }
        };
        let interval = self.api.inner.config.ping_interval;
        let mut ping = tokio::time::interval_at(Instant::now() + interval, interval);
        let mut stopping = self.api.inner.stopping.clone();
        loop {
            tokio::select! {
                frame = self.recv() => {
                    let text = match frame {
                        Frame::Text(text) => text,
                        Frame::Gone => return End::Dropped,
                        Frame::Other { binary: false } => continue,
                        Frame::Other { binary: true } => {
                            self.refuse_binary(out).await;
                            continue;
                        }
                    };
                    if !self.size_ok(out, &text).await {
                        continue;
                    }
                    if let Some(end) = self.handle(out, &joined.peer, &joined.token, &text).await {
                        return end;
                    }
                }
                update = joined.updates.next() => {
                    if let Some(end) = self.forward(out, &joined.peer.participant, update).await {
                        return end;
                    }
                }
                offer = next_offer(&mut offers) => match offer {
                    Some(Ok(SubscribeOffer { revision, sdp })) => {
                        debug!(revision, "subscribe offer");
                        out.send(&Reply::SubscribeOffer { sdp: &sdp, revision }).await;
                    }
                    Some(Err(e)) => {
                        warn!(error = %e, "no subscribe offer");
                        out.error(&Refusal::from(e), None, None).await;
                    }
                    None => offers = None,
                },
                _ = &mut joined.kicked => {
                    info!("resumed on another socket: closing this one");
                    out.close(CLOSE_RESUMED, "resumed on another socket");
                    return End::Superseded;
                }
                _ = ping.tick() => {
                    if self.last_heard.elapsed() > interval * 2 {
                        info!("no sign of life for two ping intervals: closing");
                        out.close(CLOSE_GOING_AWAY, "ping timeout");
                        return End::Dropped;
                    }
                    out.frame(Message::Ping(Default::default())).await;
                }
                () = stopped(&mut stopping) => {
                    out.close(CLOSE_RESTART, "control plane stopping");
                    return End::Stopping;
                }
            }
            if out.slow {
                return End::Dropped;
            }
            if out.tx.is_closed() {
                // The writer failed: the socket is gone.
                return End::Dropped;
            }
        }
    }

    /// Sends one item of the event feed; `Some` ends the session.
    async fn forward(
        &mut self,
        out: &mut Outbox,
        me: &ParticipantId,
        update: Option<Result<MeetingUpdate, ServiceError>>,
    ) -> Option<End> {
        match update {
            Some(Ok(MeetingUpdate::Event { revision, event })) => {
                out.send(&Reply::Event {
                    sequence: revision,
                    event: &event,
                })
                .await;
                let gone = match &event {
                    MeetingEvent::MeetingEnded { .. } => Some("meeting ended"),
                    MeetingEvent::Denied { participant, .. } if participant == me => Some("denied"),
                    MeetingEvent::UserLeft { participant } if participant == me => Some("left"),
                    _ => None,
                };
                gone.map(|reason| {
                    info!(reason, "participant gone: closing");
                    out.close(CLOSE_NORMAL, reason);
                    End::Gone
                })
            }
            Some(Ok(MeetingUpdate::Snapshot { revision, view })) => {
                out.send(&Reply::Snapshot {
                    sequence: revision,
                    meeting: meeting_json(&view),
                })
                .await;
                let present = view
                    .meeting
                    .participant(me)
                    .or(view.attendee.as_ref())
                    .is_some_and(|p| &p.id == me && p.is_present());
                (!present || !view.meeting.is_open()).then(|| {
                    out.close(CLOSE_NORMAL, "no longer in the meeting");
                    End::Gone
                })
            }
            Some(Err(e)) => {
                warn!(error = %e, "event feed failed: closing (the page resumes)");
                out.error(&Refusal::from(e), None, None).await;
                out.close(CLOSE_ERROR, "event feed failed");
                Some(End::Dropped)
            }
            None => {
                // The feed ends after MeetingEnded (handled above) or on a store failure.
                out.close(CLOSE_ERROR, "event feed ended");
                Some(End::Dropped)
            }
        }
    }

    /// Handles one request after the join; `Some` ends the session.
    async fn handle(
        &mut self,
        out: &mut Outbox,
        peer: &WebrtcPeer,
        token: &str,
        text: &str,
    ) -> Option<End> {
        let Incoming { request, kind, id } = match parse(text) {
            Ok(incoming) => incoming,
            Err((refusal, kind, id)) => {
                self.count(kind.unwrap_or("invalid"), Some(refusal.code));
                out.error(&refusal, kind, id.as_ref()).await;
                return None;
            }
        };
        let outcome = self.dispatch(out, peer, token, request, id.as_ref()).await;
        match outcome {
            Ok(Done::Quiet) => {
                self.count(kind, None);
                None
            }
            Ok(Done::Ack(breakout_ids)) => {
                self.count(kind, None);
                if id.is_some() {
                    out.send(&Reply::Ok {
                        request: kind,
                        id: id.as_ref(),
                        breakout_ids: breakout_ids.as_deref(),
                    })
                    .await;
                }
                None
            }
            Ok(Done::Left) => {
                self.count(kind, None);
                if id.is_some() {
                    out.send(&Reply::Ok {
                        request: kind,
                        id: id.as_ref(),
                        breakout_ids: None,
                    })
                    .await;
                }
                info!("left");
                out.close(CLOSE_NORMAL, "left");
                Some(End::Gone)
            }
            Err(refusal) => {
                self.count(kind, Some(refusal.code));
                debug!(request = kind, code = code_name(refusal.code), "refused");
                out.error(&refusal, Some(kind), id.as_ref()).await;
                None
            }
        }
    }

    async fn dispatch(
        &mut self,
        out: &mut Outbox,
        peer: &WebrtcPeer,
        token: &str,
        request: Request,
        id: Option<&Value>,
    ) -> Result<Done, Refusal> {
        let api = &self.api.inner;
        let service = &api.service;
        let m = &self.meeting;
        // Every message is authenticated anew: the token may have expired since the join.
        let caller = service.authenticate(token, now())?;
        let t = now();
        match request {
            Request::Join { .. } => {
                return Err(Refusal::new(
                    Code::FailedPrecondition,
                    "already joined on this socket",
                ))
            }
            Request::PublishOffer { sdp } => {
                let answer = api.negotiator.publish_offer(peer, &sdp).await?;
                out.send(&Reply::PublishAnswer { sdp: &answer, id }).await;
                return Ok(Done::Quiet);
            }
            Request::SubscribeAnswer { sdp, revision } => {
                api.negotiator
                    .subscribe_answer(peer, revision, &sdp)
                    .await?;
            }
            Request::IceRestart { connection } => {
                api.negotiator.ice_restart(peer, connection).await?;
            }
            Request::SetMute {
                audio_muted,
                video_muted,
            } => {
                let change = MuteChange {
                    audio: audio_muted,
                    video: video_muted,
                };
                service
                    .set_mute(&caller, m, &peer.participant, change, t)
                    .await?;
            }
            Request::MuteParticipant {
                participant_id: target,
                audio_muted,
                video_muted,
            } => {
                let target = participant_id(&target)?;
                let change = MuteChange {
                    audio: audio_muted,
                    video: video_muted,
                };
                service.set_mute(&caller, m, &target, change, t).await?;
            }
            Request::Screenshare {
                active: true,
                participant_id: None,
            } => service.start_screen_share(&caller, m, t).await?,
            Request::Screenshare {
                active: true,
                participant_id: Some(_),
            } => {
                return Err(Refusal::new(
                    Code::InvalidArgument,
                    "screenshare: a share is started by the sharer (no participant_id)",
                ))
            }
            Request::Screenshare {
                active: false,
                participant_id: target,
            } => {
                let target = match target {
                    Some(t) => participant_id(&t)?,
                    None => peer.participant.clone(),
                };
                service.stop_screen_share(&caller, m, &target, t).await?;
            }
            Request::Admit { participant_id: p } => {
                service.admit(&caller, m, &participant_id(&p)?, t).await?;
            }
            Request::Deny { participant_id: p } => {
                service.deny(&caller, m, &participant_id(&p)?, t).await?;
            }
            Request::CreateBreakouts { names } => {
                let ids = service.create_breakouts(&caller, m, names, t).await?;
                return Ok(Done::Ack(Some(ids)));
            }
            Request::MoveToBreakout {
                participant_id: p,
                breakout_id,
            } => {
                let to = breakout_id
                    .map(|b| {
                        BreakoutId::new(b).map_err(|e| {
                            Refusal::new(Code::InvalidArgument, format!("breakout_id: {e}"))
                        })
                    })
                    .transpose()?;
                service
                    .move_to_breakout(&caller, m, &participant_id(&p)?, to, t)
                    .await?;
            }
            Request::CloseBreakouts {} => service.close_breakouts(&caller, m, t).await?,
            Request::SetRecording { active } => {
                service.set_recording(&caller, m, active, t).await?;
            }
            Request::Ping {} => {
                out.send(&Reply::Pong { id }).await;
                return Ok(Done::Quiet);
            }
            Request::Leave {} => {
                service.leave(&caller, t).await?;
                return Ok(Done::Left);
            }
        }
        Ok(Done::Ack(None))
    }

    async fn size_ok(&self, out: &mut Outbox, text: &str) -> bool {
        let max = self.api.inner.config.max_message_bytes;
        if text.len() <= max {
            return true;
        }
        self.count("invalid", Some(Code::ResourceExhausted));
        out.error(
            &Refusal::new(
                Code::ResourceExhausted,
                format!("message of {} bytes; at most {max}", text.len()),
            ),
            None,
            None,
        )
        .await;
        false
    }

    async fn refuse_binary(&self, out: &mut Outbox) {
        self.count("invalid", Some(Code::InvalidArgument));
        out.error(
            &Refusal::new(Code::InvalidArgument, "messages are JSON text, not binary"),
            None,
            None,
        )
        .await;
    }

    fn count(&self, kind: &str, code: Option<Code>) {
        self.api
            .inner
            .metrics
            .message_in(kind, code.map_or("OK", code_name));
    }
}

/// Resolves when the process starts stopping (never if the signal's sender is gone).
async fn stopped(stopping: &mut tokio::sync::watch::Receiver<bool>) {
    if stopping.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The next subscribe offer, or never when there is no offer stream.
async fn next_offer(
    offers: &mut Option<BoxStream<'static, Result<SubscribeOffer, NegotiationError>>>,
) -> Option<Result<SubscribeOffer, NegotiationError>> {
    match offers {
        Some(offers) => offers.next().await,
        None => std::future::pending().await,
    }
}

/// A request done.
enum Done {
    /// Its answer was sent already (or needs none).
    Quiet,
    /// `ok` if the request had an `id` (with created breakouts).
    Ack(Option<Vec<BreakoutId>>),
    /// The participant left: close.
    Left,
}

struct JoinArgs {
    display_name: Option<String>,
    passcode: Option<String>,
    host_key: Option<String>,
    join_token: Option<String>,
    audio_muted: bool,
    video_muted: bool,
    region: Option<String>,
}
