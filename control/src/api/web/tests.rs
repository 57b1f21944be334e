//! The web face over a real listener on 127.0.0.1:0, a memory store and a fixed placer:
//! REST with hyper's HTTP/1.1 client, WebSockets with tokio-tungstenite, gRPC with tonic,
//! all on the one port. Every wait is for a message, with a timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::*;
use crate::api::meetings::MeetingsApi;
use crate::api::pb;
use crate::api::recordings::RecordingsApi;
use crate::domain::{MeetingId, PasscodeCost, TokenKey};
use crate::service::meetings::{MeetingService, MeetingsConfig};
use crate::service::recordings::{RecordingService, RecordingsConfig};
use crate::service::webrtc::NoWebrtc;
use crate::store::MemoryStore;
use crate::testing::OneForwarderPlacer;

mod recordings;

const OPERATOR: &str = "operator-token-for-tests";
const WAIT: Duration = Duration::from_secs(5);

struct Server {
    addr: SocketAddr,
    service: Arc<MeetingService>,
    recordings: Arc<RecordingService>,
    /// The recording store downloads read (a local directory, removed on drop).
    files: fanout_recorder::store::RecordingStore,
    _files_dir: tempfile::TempDir,
    web: WebApi,
    stop: tokio::sync::watch::Sender<bool>,
}

async fn server_with(config: WebConfig) -> Server {
    let store: Arc<dyn crate::store::Store> = Arc::new(MemoryStore::new());
    let service = Arc::new(MeetingService::new(
        store.clone(),
        TokenKey::generate().unwrap(),
        Arc::new(OneForwarderPlacer::default()),
        MeetingsConfig {
            passcode_cost: PasscodeCost::INSECURE_FOR_TESTS,
            // These tests run on the wall clock: a stopped recording's job is due at once.
            recording_settle: Duration::ZERO,
            ..MeetingsConfig::default()
        },
    ));
    let files_dir = tempfile::tempdir().unwrap();
    let files = fanout_recorder::store::RecordingStore::local(files_dir.path()).unwrap();
    let recordings = Arc::new(
        RecordingService::new(
            store.clone(),
            RecordingsConfig::default(),
            service.recording_metrics().clone(),
        )
        .with_files(files.clone()),
    );
    let operator = Some(Secret::new(OPERATOR));
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let web = WebApi::new(
        service.clone(),
        Some(recordings.clone()),
        operator.clone(),
        Arc::new(NoWebrtc),
        config,
        false,
        stopping,
    );
    let mut routes = tonic::service::Routes::new(
        MeetingsApi::new(service.clone(), operator.clone()).into_server(),
    );
    routes = routes.add_service(
        RecordingsApi::new(service.clone(), recordings.clone(), operator).into_server(),
    );
    let grpc = routes.prepare().into_axum_router();
    let app = grpc.merge(web.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, app, None, std::future::pending()));
    Server {
        addr,
        service,
        recordings,
        files,
        _files_dir: files_dir,
        web,
        stop,
    }
}

async fn server() -> Server {
    server_with(WebConfig::default()).await
}

/// One HTTP/1.1 request: status, headers, body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, hyper::HeaderMap, Vec<u8>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("{addr}"))
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .expect("no response in time")
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body.to_vec())
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {}", String::from_utf8_lossy(body));
    })
}

async fn create(addr: SocketAddr, body: Value) -> String {
    let (status, _, body) = http(
        addr,
        "POST",
        "/v1/meetings",
        Some(OPERATOR),
        &body.to_string(),
    )
    .await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    json_of(&body)["meeting_id"].as_str().unwrap().to_owned()
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Client {
    ws: Ws,
}

impl Client {
    async fn connect(addr: SocketAddr, meeting: &str) -> Client {
        let url = format!("ws://{addr}/v1/meetings/{meeting}/ws");
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Client { ws }
    }

    async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    async fn send_text(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// The next JSON message (control frames skipped); `None` when the socket closed.
    async fn next(&mut self) -> Option<Value> {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no message in time");
            match frame {
                Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    async fn recv(&mut self) -> Value {
        self.next().await.expect("socket closed")
    }

    /// Skips messages until one of `type` (and for `event`, of event type `event`).
    async fn expect(&mut self, kind: &str, event: Option<&str>) -> Value {
        loop {
            let m = self.recv().await;
            if m["type"] == kind && event.is_none_or(|e| m["event"]["type"] == e) {
                return m;
            }
            if m["type"] == "error" && kind != "error" {
                panic!("unexpected error: {m}");
            }
        }
    }

    async fn join(addr: SocketAddr, meeting: &str, name: &str) -> (Client, Value) {
        let mut c = Client::connect(addr, meeting).await;
        c.send(json!({"type": "join", "display_name": name})).await;
        let joined = c.expect("joined", None).await;
        (c, joined)
    }
}

#[tokio::test]
async fn create_meeting_needs_the_operator_and_valid_json() {
    let s = server().await;
    let body = json!({"title": "Standup"}).to_string();
    let (status, _, b) = http(s.addr, "POST", "/v1/meetings", None, &body).await;
    assert_eq!(status, 401);
    assert_eq!(json_of(&b)["code"], "UNAUTHENTICATED");
    let (status, _, _) = http(s.addr, "POST", "/v1/meetings", Some("wrong-token"), &body).await;
    assert_eq!(status, 401);

    for bad in [
        r#"{"title":"#,
        r#"{"title":"x","passcod":"123456"}"#,
        r#"{"title":""}"#,
    ] {
        let (status, _, b) = http(s.addr, "POST", "/v1/meetings", Some(OPERATOR), bad).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(json_of(&b)["code"], "INVALID_ARGUMENT");
    }
    assert!(
        s.service.list(None, 10).await.unwrap().is_empty(),
        "state unchanged"
    );

    let big = json!({"title": "x".repeat(100_000)}).to_string();
    let (status, _, _) = http(s.addr, "POST", "/v1/meetings", Some(OPERATOR), &big).await;
    assert_eq!(status, 413);

    let (status, headers, b) = http(
        s.addr,
        "POST",
        "/v1/meetings",
        Some(OPERATOR),
        &json!({"meeting_id": "standup", "title": "Standup", "kind": "webinar", "waiting_room": true})
            .to_string(),
    )
    .await;
    assert_eq!(status, 201);
    let v = json_of(&b);
    assert_eq!(v["meeting_id"], "standup");
    assert_eq!(v["kind"], "webinar");
    let url = format!("http://{}/m/standup", s.addr);
    assert_eq!(v["join_url"], url);
    assert_eq!(headers["location"], url.as_str());

    let (status, _, b) = http(
        s.addr,
        "POST",
        "/v1/meetings",
        Some(OPERATOR),
        &json!({"meeting_id": "standup", "title": "Again"}).to_string(),
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(json_of(&b)["code"], "ALREADY_EXISTS");
}

#[tokio::test]
async fn join_info_says_what_a_page_needs_and_no_secret() {
    let s = server().await;
    let id = create(
        s.addr,
        json!({"title": "Board", "passcode": "hunter22", "host_key": "hostkey99", "waiting_room": true}),
    )
    .await;
    let (status, _, b) = http(s.addr, "GET", &format!("/v1/meetings/{id}/join"), None, "").await;
    assert_eq!(status, 200);
    let v = json_of(&b);
    assert_eq!(v["title"], "Board");
    assert_eq!(v["passcode_required"], true);
    assert_eq!(v["waiting_room"], true);
    assert_eq!(v["kind"], "meeting");
    let text = String::from_utf8_lossy(&b);
    assert!(
        !text.contains("hunter22") && !text.contains("argon2"),
        "{text}"
    );

    let (status, _, b) = http(s.addr, "GET", "/v1/meetings/nope/join", None, "").await;
    assert_eq!(
        (status, json_of(&b)["code"].clone()),
        (404, json!("NOT_FOUND"))
    );
    let (status, _, _) = http(s.addr, "GET", "/v1/meetings/bad%20id/join", None, "").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_their_types() {
    let s = server().await;
    let (status, headers, body) = http(s.addr, "GET", "/m/some-meeting", None, "").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert!(headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    let html = String::from_utf8(body).unwrap();
    assert!(html.contains("/web/app.js") && html.contains("/web/style.css"));
    let (status, headers, body) = http(s.addr, "GET", "/web/app.js", None, "").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/javascript; charset=utf-8");
    assert!(String::from_utf8(body)
        .unwrap()
        .contains("RTCPeerConnection"));
    let (_, headers, _) = http(s.addr, "GET", "/web/style.css", None, "").await;
    assert_eq!(headers["content-type"], "text/css; charset=utf-8");
}

#[tokio::test]
async fn grpc_shares_the_port() {
    let s = server().await;
    let id = create(s.addr, json!({"title": "Both faces"})).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = pb::meetings_client::MeetingsClient::new(channel);
    let mut request = tonic::Request::new(pb::GetMeetingRequest {
        meeting_id: id.clone(),
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {OPERATOR}").parse().unwrap(),
    );
    let meeting = client.get_meeting(request).await.unwrap().into_inner();
    assert_eq!(meeting.meeting.unwrap().title, "Both faces");
}

#[tokio::test]
async fn joins_events_and_mute_reach_the_others() {
    let s = server().await;
    let id = create(s.addr, json!({"title": "Team"})).await;
    let (mut alice, joined) = Client::join(s.addr, &id, "Alice").await;
    assert_eq!(joined["role"], "host", "the first joiner hosts: {joined}");
    assert_eq!(joined["presence"], "admitted");
    assert_eq!(joined["meeting"]["title"], "Team");
    assert_eq!(joined["forwarder_address"], "192.0.2.1:40000");
    assert!(joined["join_token"].as_str().is_some_and(|t| !t.is_empty()));
    let alice_id = joined["participant_id"].as_str().unwrap().to_owned();

    let (mut bob, joined) = Client::join(s.addr, &id, "Bob").await;
    assert_eq!(joined["role"], "panelist");
    let mut names: Vec<&str> = joined["meeting"]["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["display_name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["Alice", "Bob"]);
    let bob_id = joined["participant_id"].as_str().unwrap().to_owned();

    let e = alice.expect("event", Some("USER_JOINED")).await;
    assert_eq!(e["event"]["participant"], bob_id.as_str());
    assert_eq!(e["event"]["display_name"], "Bob");

    bob.send(json!({"type": "set_mute", "audio_muted": true, "id": 7}))
        .await;
    let ok = bob.expect("ok", None).await;
    assert_eq!(
        (ok["request"].clone(), ok["id"].clone()),
        (json!("set_mute"), json!(7))
    );
    let e = alice.expect("event", Some("MUTE_CHANGED")).await;
    assert_eq!(e["event"]["participant"], bob_id.as_str());
    assert_eq!(e["event"]["audio_muted"], true);
    assert_eq!(e["event"]["video_muted"], false);

    // A host mutes another; a panelist may not.
    bob.send(json!({"type": "mute_participant", "participant_id": alice_id, "video_muted": true}))
        .await;
    let err = bob.expect("error", None).await;
    assert_eq!(err["code"], "PERMISSION_DENIED");
    assert_eq!(err["request"], "mute_participant");
    alice
        .send(json!({"type": "mute_participant", "participant_id": bob_id, "video_muted": true}))
        .await;
    let e = bob.expect("event", Some("MUTE_CHANGED")).await;
    assert_eq!(e["event"]["video_muted"], true);
    assert_eq!(e["event"]["by"]["participant"], alice_id.as_str());

    // Breakouts: create, move.
    alice
        .send(json!({"type": "create_breakouts", "names": ["Room A"], "id": "b"}))
        .await;
    let ok = alice.expect("ok", None).await;
    let room = ok["breakout_ids"][0].as_str().unwrap().to_owned();
    alice
        .send(json!({"type": "move_to_breakout", "participant_id": bob_id, "breakout_id": room}))
        .await;
    let e = bob.expect("event", Some("BREAKOUT_MOVED")).await;
    assert_eq!(e["event"]["to"], room.as_str());

    // Leave closes the socket; the others see USER_LEFT.
    bob.send(json!({"type": "leave"})).await;
    while bob.next().await.is_some() {}
    let e = alice.expect("event", Some("USER_LEFT")).await;
    assert_eq!(e["event"]["participant"], bob_id.as_str());
    assert!(s
        .web
        .metrics()
        .render()
        .contains("type=\"set_mute\",code=\"OK\"} 1"));
}

#[tokio::test]
async fn bad_messages_get_errors_and_the_socket_stays_usable() {
    let s = server_with(WebConfig {
        max_message_bytes: 1024,
        ..WebConfig::default()
    })
    .await;
    let id = create(s.addr, json!({"title": "Robust"})).await;
    let mut c = Client::connect(s.addr, &id).await;
    c.send(json!({"type": "set_mute", "audio_muted": true}))
        .await;
    assert_eq!(c.expect("error", None).await["code"], "FAILED_PRECONDITION");
    let (mut other, _) = Client::join(s.addr, &id, "Other").await;
    c.send(json!({"type": "join", "display_name": "Me"})).await;
    let me = c.expect("joined", None).await["participant_id"].clone();

    for bad in [
        "not json".to_owned(),
        "[1,2]".to_owned(),
        json!({"no": "type"}).to_string(),
        json!({"type": "launch_rockets"}).to_string(),
        json!({"type": "set_mute", "audio_muted": "yes"}).to_string(),
        json!({"type": "admit", "participant_id": "x", "extra": 1}).to_string(),
        json!({"type": "admit", "participant_id": "no such one!"}).to_string(),
        json!({"type": "set_mute", "audio_muted": true, "pad": "x".repeat(2000)}).to_string(),
    ] {
        c.send_text(bad.clone()).await;
        let err = c.expect("error", None).await;
        let code = err["code"].as_str().unwrap();
        assert!(
            code == "INVALID_ARGUMENT" || code == "RESOURCE_EXHAUSTED",
            "{bad} → {err}"
        );
    }
    c.ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(c.expect("error", None).await["code"], "INVALID_ARGUMENT");
    c.send(json!({"type": "join", "display_name": "Again"}))
        .await;
    assert_eq!(c.expect("error", None).await["code"], "FAILED_PRECONDITION");

    // Still usable, and nothing changed meanwhile: the next event is this mute.
    c.send(json!({"type": "ping", "id": 1})).await;
    assert_eq!(c.expect("pong", None).await["id"], 1);
    c.send(json!({"type": "set_mute", "video_muted": true}))
        .await;
    let e = other.expect("event", Some("USER_JOINED")).await;
    assert_eq!(e["event"]["participant"], me);
    let e = other.recv().await;
    assert_eq!(e["event"]["type"], "MUTE_CHANGED", "{e}");
    assert_eq!(e["event"]["participant"], me);
}

#[tokio::test]
async fn a_wrong_passcode_is_permission_denied_and_the_socket_may_retry() {
    let s = server().await;
    let id = create(
        s.addr,
        json!({"title": "Locked", "passcode": "open-sesame"}),
    )
    .await;
    let mut c = Client::connect(s.addr, &id).await;
    c.send(json!({"type": "join", "display_name": "Eve", "passcode": "guess-123"}))
        .await;
    let err = c.expect("error", None).await;
    assert_eq!(err["code"], "PERMISSION_DENIED");
    assert_eq!(err["request"], "join");
    assert!(!err.to_string().contains("guess-123"));
    c.send(json!({"type": "join", "display_name": "Eve"})).await;
    assert_eq!(c.expect("error", None).await["code"], "PERMISSION_DENIED");
    c.send(json!({"type": "join", "display_name": "Eve", "passcode": "open-sesame"}))
        .await;
    assert_eq!(c.expect("joined", None).await["presence"], "admitted");
}

#[tokio::test]
async fn the_waiting_room_holds_guests_until_a_host_admits() {
    let s = server().await;
    let id = create(s.addr, json!({"title": "Lobby", "waiting_room": true})).await;
    let (mut host, joined) = Client::join(s.addr, &id, "Host").await;
    assert_eq!(joined["role"], "host");
    let (mut guest, joined) = Client::join(s.addr, &id, "Guest").await;
    assert_eq!(joined["presence"], "waiting");
    let guest_id = joined["participant_id"].clone();
    // A waiting participant can do nothing but wait (or leave).
    guest
        .send(json!({"type": "set_mute", "audio_muted": true}))
        .await;
    assert_eq!(
        guest.expect("error", None).await["code"],
        "FAILED_PRECONDITION"
    );

    let e = host.expect("event", Some("WAITING")).await;
    assert_eq!(e["event"]["participant"], guest_id);
    assert_eq!(e["event"]["display_name"], "Guest");
    host.send(json!({"type": "admit", "participant_id": guest_id}))
        .await;
    let e = guest.expect("event", Some("ADMITTED")).await;
    assert_eq!(e["event"]["participant"], guest_id);
    guest.expect("event", Some("USER_JOINED")).await;
    guest
        .send(json!({"type": "set_mute", "audio_muted": true, "id": 1}))
        .await;
    guest.expect("ok", None).await;

    // A second guest is denied: their socket closes.
    let (mut late, joined) = Client::join(s.addr, &id, "Late").await;
    let late_id = joined["participant_id"].clone();
    host.expect("event", Some("WAITING")).await;
    host.send(json!({"type": "deny", "participant_id": late_id}))
        .await;
    late.expect("event", Some("DENIED")).await;
    assert!(
        late.next().await.is_none(),
        "a denied guest's socket closes"
    );
}

#[tokio::test]
async fn webrtc_messages_get_failed_precondition_from_the_default_negotiator() {
    let s = server().await;
    let id = create(s.addr, json!({"title": "Video"})).await;
    let (mut c, _) = Client::join(s.addr, &id, "Cam").await;
    c.send(json!({"type": "publish_offer", "sdp": "v=0\r\n", "id": 3}))
        .await;
    let err = c.expect("error", None).await;
    assert_eq!(err["code"], "FAILED_PRECONDITION");
    assert_eq!(err["request"], "publish_offer");
    assert_eq!(err["id"], 3);
    assert!(err["message"].as_str().unwrap().contains("not available"));
    c.send(json!({"type": "ice_restart", "connection": "subscribe"}))
        .await;
    assert_eq!(c.expect("error", None).await["code"], "FAILED_PRECONDITION");
    c.send(json!({"type": "subscribe_answer", "sdp": "v=0\r\n", "revision": 1}))
        .await;
    assert_eq!(c.expect("error", None).await["code"], "FAILED_PRECONDITION");
}

#[tokio::test]
async fn a_dropped_socket_resumes_with_its_token_or_leaves_after_the_grace() {
    let s = server_with(WebConfig {
        resume_grace: Duration::from_millis(300),
        ..WebConfig::default()
    })
    .await;
    let id = create(s.addr, json!({"title": "Flaky"})).await;
    let (mut watcher, _) = Client::join(s.addr, &id, "Watcher").await;
    let (flaky, joined) = Client::join(s.addr, &id, "Flaky").await;
    let token = joined["join_token"].as_str().unwrap().to_owned();
    let flaky_id = joined["participant_id"].clone();
    watcher.expect("event", Some("USER_JOINED")).await;

    // Dropped, then resumed on a new socket: same participant, no USER_LEFT.
    drop(flaky);
    let mut again = Client::connect(s.addr, &id).await;
    again
        .send(json!({"type": "join", "join_token": token}))
        .await;
    let resumed = again.expect("joined", None).await;
    assert_eq!(resumed["participant_id"], flaky_id);
    assert_eq!(resumed["resumed"], true);
    again
        .send(json!({"type": "set_mute", "audio_muted": true}))
        .await;
    let e = watcher.recv().await;
    assert_eq!(
        e["event"]["type"], "MUTE_CHANGED",
        "no USER_LEFT before: {e}"
    );

    // Dropped for good: USER_LEFT once the grace is over, and the token resumes no more.
    drop(again);
    let e = watcher.expect("event", Some("USER_LEFT")).await;
    assert_eq!(e["event"]["participant"], flaky_id);
    let mut late = Client::connect(s.addr, &id).await;
    late.send(json!({"type": "join", "join_token": token}))
        .await;
    assert_eq!(
        late.expect("error", None).await["code"],
        "FAILED_PRECONDITION"
    );
}

#[tokio::test]
async fn a_browser_that_does_not_read_is_disconnected() {
    let s = server_with(WebConfig {
        send_queue: 8,
        slow_timeout: Duration::from_millis(300),
        resume_grace: Duration::from_millis(100),
        ..WebConfig::default()
    })
    .await;
    let id = create(s.addr, json!({"title": "Slow"})).await;
    let mid = MeetingId::new(id.clone()).unwrap();
    // A client with a small receive buffer that never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(s.addr).await.unwrap();
    let url = format!("ws://{}/v1/meetings/{id}/ws", s.addr);
    let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp))
        .await
        .unwrap();
    let mut slow = Client { ws };
    slow.send(json!({"type": "join", "display_name": "Slow"}))
        .await;
    let slow_id = slow.expect("joined", None).await["participant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (mut other, joined) = Client::join(s.addr, &id, "Other").await;
    let other_id = joined["participant_id"].as_str().unwrap().to_owned();
    // `other` reads everything: only `slow` falls behind.
    tokio::spawn(async move { while other.ws.next().await.is_some() {} });

    // Events pile up for `slow` (active speaker flipping) until its queue is full.
    let speakers = [
        crate::domain::ParticipantId::new(slow_id.clone()).unwrap(),
        crate::domain::ParticipantId::new(other_id).unwrap(),
    ];
    let operator = crate::service::meetings::Caller::Operator;
    let mut closed = false;
    for i in 0..50_000 {
        s.service
            .set_active_speaker(&operator, &mid, &speakers[i % 2], rest::now())
            .await
            .unwrap();
        if i % 64 == 0 && s.web.metrics().render().contains("ws_slow_closed_total 1") {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "a browser that never reads is disconnected: {}",
        s.web.metrics().render()
    );
    // It leaves after the grace period: the feed of a watcher shows it.
    let mut feed = s.service.watch(&operator, &mid, None).await.unwrap();
    loop {
        let update = tokio::time::timeout(WAIT, feed.next())
            .await
            .expect("no USER_LEFT in time")
            .unwrap()
            .unwrap();
        match update {
            crate::service::meetings::MeetingUpdate::Snapshot { view, .. } => {
                let p = view.meeting.participant(&speakers[0]).unwrap();
                if !p.is_present() {
                    break;
                }
            }
            crate::service::meetings::MeetingUpdate::Event { event, .. } => {
                if event
                    == (crate::domain::MeetingEvent::UserLeft {
                        participant: speakers[0].clone(),
                    })
                {
                    break;
                }
            }
        }
    }
}

#[tokio::test]
async fn stopping_closes_sockets_and_their_participants_leave() {
    let s = server().await;
    let id = create(s.addr, json!({"title": "Closing time"})).await;
    let (mut a, _) = Client::join(s.addr, &id, "A").await;
    let (mut b, _) = Client::join(s.addr, &id, "B").await;
    s.stop.send(true).unwrap();
    for c in [&mut a, &mut b] {
        loop {
            match tokio::time::timeout(WAIT, c.ws.next())
                .await
                .expect("closed in time")
            {
                Some(Ok(Message::Close(Some(frame)))) => {
                    assert_eq!(u16::from(frame.code), 1012);
                    break;
                }
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }
    // Leaves happen before the sessions count as closed.
    let deadline = tokio::time::Instant::now() + WAIT;
    while s.web.metrics().sockets_open() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sessions never ended"
        );
        tokio::task::yield_now().await;
    }
    let view = s.service.get(&MeetingId::new(id).unwrap()).await.unwrap();
    assert!(view
        .meeting
        .participants()
        .values()
        .all(|p| !p.is_present()));
}

#[tokio::test]
async fn ws_to_an_unknown_meeting_is_404() {
    let s = server().await;
    let err = tokio_tungstenite::connect_async(format!("ws://{}/v1/meetings/nope/ws", s.addr))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(r) => assert_eq!(r.status(), 404),
        e => panic!("{e}"),
    }
}

#[tokio::test]
async fn recording_starts_and_stops_over_rest_and_websocket() {
    let s = server().await;
    let id = create(s.addr, json!({"title": "Recorded"})).await;
    let (mut host, joined) = Client::join(s.addr, &id, "Host").await;
    let host_token = joined["join_token"].as_str().unwrap().to_owned();
    let (_guest, joined) = Client::join(s.addr, &id, "Guest").await;
    let guest_token = joined["join_token"].as_str().unwrap().to_owned();
    let path = format!("/v1/meetings/{id}/recording");

    // Who may not: nobody unauthenticated, no panelist; a bad or unknown meeting id.
    let (status, _, _) = http(s.addr, "POST", &path, None, "").await;
    assert_eq!(status, 401);
    let (status, _, b) = http(s.addr, "POST", &path, Some(&guest_token), "").await;
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&b));
    let (status, _, _) = http(
        s.addr,
        "POST",
        "/v1/meetings/a%20b/recording",
        Some(OPERATOR),
        "",
    )
    .await;
    assert_eq!(status, 400);
    let (status, _, _) = http(
        s.addr,
        "POST",
        "/v1/meetings/nope/recording",
        Some(OPERATOR),
        "",
    )
    .await;
    assert_eq!(status, 404);

    // The host starts (a second start answers the same recording); everyone is told.
    let (status, _, b) = http(s.addr, "POST", &path, Some(&host_token), "").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
    let started = json_of(&b);
    assert_eq!(started["recording"], true);
    let recording = started["recording_id"].as_str().unwrap().to_owned();
    let e = host.expect("event", Some("RECORDING_STARTED")).await;
    assert_eq!(e["event"]["recording"], recording.as_str());
    let (_, _, b) = http(s.addr, "POST", &path, Some(OPERATOR), "").await;
    assert_eq!(json_of(&b)["recording_id"], recording.as_str());

    // The operator stops; the host starts a new recording over its WebSocket.
    let (status, _, b) = http(s.addr, "DELETE", &path, Some(OPERATOR), "").await;
    assert_eq!(status, 200);
    assert_eq!(json_of(&b), json!({"recording": false}));
    let e = host.expect("event", Some("RECORDING_STOPPED")).await;
    assert_eq!(e["event"]["recording"], recording.as_str());
    host.send(json!({"type": "set_recording", "active": true}))
        .await;
    let e = host.expect("event", Some("RECORDING_STARTED")).await;
    let second = e["event"]["recording"].as_str().unwrap();
    assert_ne!(second, recording, "a new recording");
}
