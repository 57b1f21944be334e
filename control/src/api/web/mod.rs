//! The web face of the control plane (docs/webrtc.md, "Signaling"): a REST and WebSocket
//! API over the same [`MeetingService`] as the gRPC face, and the join page browsers load.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/meetings` | create a meeting (operator bearer token), 201 + JSON |
//! | `GET /v1/meetings/{id}/join` | what the page needs to join: title, kind, passcode needed, waiting room |
//! | `GET /v1/meetings/{id}/ws` | the participant's WebSocket ([`ws`]) |
//! | `POST`/`DELETE /v1/meetings/{id}/recording` | start or stop recording (operator or host) |
//! | `GET /v1/meetings/{id}/recordings` | the meeting's recordings, newest first (operator or host) |
//! | `GET /v1/recordings/{id}` | one recording (operator or a host of its meeting) |
//! | `GET /v1/recordings/{id}/file` | a READY recording's WebM, streamed (same callers) |
//! | `GET /m/{id}` | the join page; its script and style under `/web/` ([`page`]) |
//!
//! All of it shares one listener with gRPC ([`serve`]): tonic's services are an
//! [`axum::Router`] already, so the web routes are merged into it, and the accept loop
//! here serves HTTP/1.1 (with upgrades, for WebSocket) and HTTP/2 (gRPC) on one port, over
//! TLS when configured (ALPN `h2` and `http/1.1`).
//!
//! Errors are JSON `{"code": "<gRPC code name>", "message": "..."}` with the HTTP status
//! of the code ([`http_status`]); the message is a [`ServiceError`]'s text, which never
//! holds a secret.

pub mod page;
pub mod rest;
mod serve;
pub mod ws;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

pub use serve::{serve, serve_metrics, tls_acceptor};

use super::Secret;
use crate::domain::ParticipantId;
use crate::service::meetings::MeetingService;
use crate::service::recordings::RecordingService;
use crate::service::webrtc::WebrtcNegotiator;
use crate::service::{Code, ServiceError};

/// Tuning of the web face.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Base of the join URLs `POST /v1/meetings` returns (`https://meet.example.com`);
    /// `None`: the request's `Host`, with `https` when the port has TLS.
    pub public_url: Option<String>,
    /// A participant whose WebSocket closed without `leave` stays in the meeting this long
    /// for a `join` with its `join_token` to resume it (a reload, a network change), then
    /// leaves.
    pub resume_grace: Duration,
    /// Largest REST request body.
    pub max_body_bytes: usize,
    /// Largest WebSocket message answered: a larger one gets an `error` and the socket
    /// stays open. Four times this is a protocol error that closes the socket.
    pub max_message_bytes: usize,
    /// Messages queued for one socket.
    pub send_queue: usize,
    /// How long a session waits for room in its full queue before disconnecting the
    /// browser (a slow reader never holds up anyone else: each session has its own feed).
    pub slow_timeout: Duration,
    /// A ping this often; a socket silent for two intervals is closed.
    pub ping_interval: Duration,
    /// Time from the upgrade to a successful `join`.
    pub join_timeout: Duration,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            public_url: None,
            resume_grace: Duration::from_secs(15),
            max_body_bytes: 64 * 1024,
            max_message_bytes: 64 * 1024,
            send_queue: 256,
            slow_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            join_timeout: Duration::from_secs(60),
        }
    }
}

/// What every web handler shares.
#[derive(Debug, Clone)]
pub struct WebApi {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) service: Arc<MeetingService>,
    /// Recording reads and downloads (`None`: those routes answer FAILED_PRECONDITION).
    pub(crate) recordings: Option<Arc<RecordingService>>,
    pub(crate) operator: Option<Secret>,
    pub(crate) negotiator: Arc<dyn WebrtcNegotiator>,
    pub(crate) config: WebConfig,
    /// The port has TLS: join URLs are `https`.
    pub(crate) tls: bool,
    pub(crate) metrics: WebMetrics,
    /// Each participant with a socket here, or whose socket closed less than
    /// [`WebConfig::resume_grace`] ago: a resume takes the slot over (closing the old
    /// socket, or cancelling the leave).
    pub(crate) peers: Mutex<HashMap<ParticipantId, ws::Slot>>,
    /// Flips to true when the process stops: sessions close (code 1012) and leave.
    pub(crate) stopping: tokio::sync::watch::Receiver<bool>,
}

impl WebApi {
    /// The web face over `service`; `negotiator` answers the WebRTC messages
    /// ([`BrowserNegotiator`](crate::service::meetings::BrowserNegotiator) in production,
    /// [`NoWebrtc`](crate::service::webrtc::NoWebrtc) where browsers are not served). `tls`:
    /// the port has TLS. `stopping` flips to true when the process stops. `recordings`
    /// serves the recording routes.
    pub fn new(
        service: Arc<MeetingService>,
        recordings: Option<Arc<RecordingService>>,
        operator: Option<Secret>,
        negotiator: Arc<dyn WebrtcNegotiator>,
        config: WebConfig,
        tls: bool,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        WebApi {
            inner: Arc::new(Inner {
                service,
                recordings,
                operator,
                negotiator,
                config,
                tls,
                metrics: WebMetrics::default(),
                peers: Mutex::new(HashMap::new()),
                stopping,
            }),
        }
    }

    /// Counters of the web face, for `/metrics`.
    pub fn metrics(&self) -> WebMetrics {
        self.inner.metrics.clone()
    }

    /// The routes of the table in the module docs.
    pub fn router(&self) -> axum::Router {
        use axum::routing::{get, post};
        axum::Router::new()
            .route("/v1/meetings", post(rest::create_meeting))
            .route("/v1/meetings/{id}/join", get(rest::join_info))
            .route(
                "/v1/meetings/{id}/recording",
                post(rest::start_recording).delete(rest::stop_recording),
            )
            .route("/v1/meetings/{id}/recordings", get(rest::list_recordings))
            .route("/v1/recordings/{id}", get(rest::get_recording))
            .route("/v1/recordings/{id}/file", get(rest::recording_file))
            .route("/v1/meetings/{id}/ws", get(ws::upgrade))
            .route("/m/{id}", get(page::join_page))
            .route("/web/app.js", get(page::script))
            .route("/web/style.css", get(page::style))
            .with_state(self.clone())
    }
}

/// The gRPC code name (`PERMISSION_DENIED`) of a code, as in `error` messages.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::NotFound => "NOT_FOUND",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::Unauthenticated => "UNAUTHENTICATED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::Aborted => "ABORTED",
        Code::Unavailable => "UNAVAILABLE",
        Code::Internal => "INTERNAL",
    }
}

/// The HTTP status of a code (the usual gRPC-to-HTTP mapping).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A failed REST request: `{"code", "message"}` with the code's HTTP status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError {
            status: http_status(code),
            code: code_name(code),
            message: message.into(),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let code = e.code();
        if code == Code::Internal {
            tracing::error!(error = %e, "internal error");
        }
        ApiError::new(code, e.to_string())
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code,
            message: &self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

/// Counters of the web face (Prometheus text in [`WebMetrics::render`]).
#[derive(Debug, Clone, Default)]
pub struct WebMetrics {
    inner: Arc<MetricsInner>,
}

#[derive(Debug, Default)]
struct MetricsInner {
    sockets_open: AtomicI64,
    sockets_total: AtomicU64,
    /// Sockets closed because their send queue was full.
    sockets_slow: AtomicU64,
    messages_out: AtomicU64,
    /// (message type or "invalid", outcome "ok"/error code) → count.
    messages_in: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// (route, HTTP status) → count.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
}

impl WebMetrics {
    pub(crate) fn socket_opened(&self) {
        self.inner.sockets_open.fetch_add(1, Ordering::Relaxed);
        self.inner.sockets_total.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn socket_closed(&self, slow: bool) {
        self.inner.sockets_open.fetch_sub(1, Ordering::Relaxed);
        if slow {
            self.inner.sockets_slow.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn message_out(&self) {
        self.inner.messages_out.fetch_add(1, Ordering::Relaxed);
    }

    /// `kind` is a known message type or "invalid": never client text (bounded labels).
    pub(crate) fn message_in(&self, kind: &str, outcome: &'static str) {
        let mut m = self
            .inner
            .messages_in
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *m.entry((kind.to_owned(), outcome)).or_default() += 1;
    }

    pub(crate) fn request(&self, route: &'static str, status: StatusCode) {
        let mut m = self
            .inner
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *m.entry((route, status.as_u16())).or_default() += 1;
    }

    /// Sockets open now.
    pub fn sockets_open(&self) -> i64 {
        self.inner.sockets_open.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let i = &self.inner;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP fanout_control_ws_sockets Browser WebSocket sessions open\n\
             # TYPE fanout_control_ws_sockets gauge\n\
             fanout_control_ws_sockets {}\n\
             # HELP fanout_control_ws_sockets_total Browser WebSocket sessions opened\n\
             # TYPE fanout_control_ws_sockets_total counter\n\
             fanout_control_ws_sockets_total {}\n\
             # HELP fanout_control_ws_slow_closed_total Sessions closed because the browser \
             did not read its messages\n\
             # TYPE fanout_control_ws_slow_closed_total counter\n\
             fanout_control_ws_slow_closed_total {}\n\
             # HELP fanout_control_ws_messages_sent_total WebSocket messages queued to browsers\n\
             # TYPE fanout_control_ws_messages_sent_total counter\n\
             fanout_control_ws_messages_sent_total {}",
            i.sockets_open.load(Ordering::Relaxed),
            i.sockets_total.load(Ordering::Relaxed),
            i.sockets_slow.load(Ordering::Relaxed),
            i.messages_out.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP fanout_control_ws_messages_received_total WebSocket messages from browsers, \
             by type and outcome\n\
             # TYPE fanout_control_ws_messages_received_total counter"
        );
        let received = i.messages_in.lock().unwrap_or_else(PoisonError::into_inner);
        for ((kind, outcome), n) in received.iter() {
            let _ = writeln!(
                out,
                "fanout_control_ws_messages_received_total{{type=\"{kind}\",code=\"{outcome}\"}} {n}"
            );
        }
        drop(received);
        let _ = writeln!(
            out,
            "# HELP fanout_control_http_requests_total REST and page requests, by route and \
             status\n\
             # TYPE fanout_control_http_requests_total counter"
        );
        let requests = i.requests.lock().unwrap_or_else(PoisonError::into_inner);
        for ((route, status), n) in requests.iter() {
            let _ = writeln!(
                out,
                "fanout_control_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out
    }
}
