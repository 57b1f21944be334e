//! Self-test of the browser harness (`common/browser.rs`): headless Chromium in a network
//! namespace loads a page served from the root namespace over the veth pair, and two
//! `RTCPeerConnection`s of that page send each other media (fake camera and microphone,
//! then a fake screen share); the harness reads the receiving side's stats.
//!
//! Needs root (network namespaces) and Chromium; skips loudly without them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fanout_tests::browser::{
    chromium_available, inbound_rtp_stats, is_root, selected_candidate_pair, wait_for,
    wait_for_inbound_rtp, Browser, BrowserNetwork, BrowserOptions, Page,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// Bound on one whole test: a hung Chromium fails it instead of hanging CI.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on one step or wait inside a test.
const WAIT: Duration = Duration::from_secs(20);

/// The test page: `start(kind)` gets the camera and microphone (`camera`) or the screen
/// (`screen`), and sends them from `pc1` to `pc2`, both in this page, exchanging the SDP and
/// the candidates in JavaScript. The received tracks play in a `<video>`.
const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>fanout browser harness</title></head>
<body><video id="remote" autoplay playsinline muted></video>
<script>
async function start(kind) {
  const stream = kind === 'screen'
    ? await navigator.mediaDevices.getDisplayMedia({video: true, audio: false})
    : await navigator.mediaDevices.getUserMedia({video: true, audio: true});
  const pc1 = window.pc1 = new RTCPeerConnection();
  const pc2 = window.pc2 = new RTCPeerConnection();
  pc1.onicecandidate = e => { if (e.candidate) pc2.addIceCandidate(e.candidate); };
  pc2.onicecandidate = e => { if (e.candidate) pc1.addIceCandidate(e.candidate); };
  pc2.ontrack = e => { document.getElementById('remote').srcObject = e.streams[0]; };
  pc2.onconnectionstatechange = () => console.log('pc2 ' + pc2.connectionState);
  for (const track of stream.getTracks()) pc1.addTrack(track, stream);
  const offer = await pc1.createOffer();
  await pc1.setLocalDescription(offer);
  await pc2.setRemoteDescription(offer);
  const answer = await pc2.createAnswer();
  await pc2.setLocalDescription(answer);
  await pc1.setRemoteDescription(answer);
  return stream.getTracks().map(t => t.kind + ':' + t.label);
}
</script></body></html>"#;

/// Serves [`PAGE`] over HTTP/1.0 on `ip` (any port) until dropped.
struct PageServer {
    address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl PageServer {
    async fn start(ip: std::net::IpAddr) -> PageServer {
        let listener = TcpListener::bind((ip, 0))
            .await
            .expect("bind the page server");
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    // Read the request head; what it asks for does not matter.
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let (status, body) = if request.starts_with(b"GET / ") {
                        ("200 OK", PAGE)
                    } else {
                        ("404 Not Found", "not found")
                    };
                    let response = format!(
                        "HTTP/1.0 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        PageServer { address, task }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.address)
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether this machine can run the tests; says loudly why not.
fn can_run(test: &str) -> bool {
    if !is_root() {
        eprintln!(
            "\n**** SKIPPED {test}: not root (the browser runs in a network namespace) ****\n"
        );
        return false;
    }
    if !chromium_available() {
        eprintln!(
            "\n**** SKIPPED {test}: Chromium is not installed (scripts/install-deps.sh \
             installs Debian's `chromium`) ****\n"
        );
        return false;
    }
    true
}

/// A browser in a fresh namespace, on the test page.
struct Setup {
    // Dropped in this order: the page, the browser, the server, the namespace.
    page: Page,
    browser: Browser,
    _server: PageServer,
    network: BrowserNetwork,
}

async fn setup() -> Setup {
    let network = BrowserNetwork::create().expect("a namespace for the browser");
    let server = PageServer::start(network.host_ip()).await;
    let browser = Browser::launch(
        network.namespace(),
        BrowserOptions {
            secure_origins: vec![format!("http://{}", server.address)],
            // Each step fails (with the browser's diagnostics) well before the test's
            // own deadline.
            timeout: WAIT,
            ..BrowserOptions::default()
        },
    )
    .await
    .expect("launch chromium");
    let page = browser.new_page().await.expect("open a page");
    page.navigate(&server.url()).await.expect("load the page");
    Setup {
        page,
        browser,
        _server: server,
        network,
    }
}

/// Sends `kind` (`camera` or `screen`) from pc1 to pc2 and checks what pc2 receives.
async fn media_flows(kind: &str, audio: bool) {
    let started = Instant::now();
    let setup = setup().await;
    let page = &setup.page;
    eprintln!(
        "browser up and page loaded in {:?} ({})",
        started.elapsed(),
        setup.browser.command_line()
    );
    let tracks = page
        .eval(&format!("start('{kind}')"))
        .await
        .unwrap_or_else(|e| panic!("start('{kind}'): {e:#}"));
    eprintln!("tracks sent: {tracks}");

    wait_for(page, "pc2.connectionState === 'connected'", WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let receiving = |s: &fanout_tests::browser::InboundRtp| {
        s.video.frames_decoded > 0 && (!audio || s.audio.packets_received > 0)
    };
    let first = wait_for_inbound_rtp(page, "pc2", WAIT, "media received", receiving)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("first read after {:?}: {first:?}", started.elapsed());
    let second = wait_for_inbound_rtp(page, "pc2", WAIT, "counters growing", |s| {
        s.video.frames_decoded > first.video.frames_decoded
            && s.video.bytes_received > first.video.bytes_received
            && (!audio || s.audio.packets_received > first.audio.packets_received)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("second read after {:?}: {second:?}", started.elapsed());
    assert_eq!(second.video.streams, 1);
    assert!(second.video.frames_decoded > first.video.frames_decoded);
    if audio {
        assert_eq!(second.audio.streams, 1);
        assert!(second.audio.packets_received > first.audio.packets_received);
    } else {
        assert_eq!(second.audio.streams, 0);
    }

    // The pair carries the namespace's veth address on both ends: not loopback.
    let pair = selected_candidate_pair(page, "pc2")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
        .expect("pc2 has a selected candidate pair");
    eprintln!("selected pair: {pair:?}");
    let browser_ip = setup.network.browser_ip().to_string();
    assert_eq!(pair.local.address, browser_ip, "{pair:?}");
    assert_eq!(pair.remote.address, browser_ip, "{pair:?}");
    assert_eq!(pair.local.candidate_type, "host", "{pair:?}");
    assert_eq!(
        (pair.local.protocol.as_str(), pair.remote.protocol.as_str()),
        ("udp", "udp"),
        "{pair:?}"
    );
    let again = inbound_rtp_stats(page, "pc2").await.unwrap();
    assert!(again.video.frames_decoded >= second.video.frames_decoded);
    eprintln!("{kind}: passed in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_and_microphone_flow_between_two_peer_connections() {
    if !can_run("camera_and_microphone_flow_between_two_peer_connections") {
        return;
    }
    tokio::time::timeout(TEST_TIMEOUT, media_flows("camera", true))
        .await
        .expect("the test did not finish within its time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screen_share_flows_between_two_peer_connections() {
    if !can_run("screen_share_flows_between_two_peer_connections") {
        return;
    }
    tokio::time::timeout(TEST_TIMEOUT, media_flows("screen", false))
        .await
        .expect("the test did not finish within its time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_errors_carry_the_exception_and_the_console() {
    if !can_run("page_errors_carry_the_exception_and_the_console") {
        return;
    }
    let run = async {
        let setup = setup().await;
        let page = &setup.page;
        assert_eq!(page.eval("1 + 2").await.unwrap(), serde_json::json!(3));
        assert_eq!(
            page.eval("Promise.resolve({a: [1, 'x']})").await.unwrap(),
            serde_json::json!({"a": [1, "x"]})
        );
        let error = page
            .eval("console.log('before the throw'); throw new Error('kaboom')")
            .await
            .expect_err("a throw is an error");
        let text = format!("{error:#}");
        assert!(text.contains("kaboom"), "{text}");
        assert!(text.contains("before the throw"), "{text}");
        let error = page
            .eval("new Promise((_, reject) => setTimeout(() => reject(new TypeError('late')), 10))")
            .await
            .expect_err("a rejection is an error");
        assert!(
            format!("{error:#}").contains("TypeError: late"),
            "{error:#}"
        );
        // A second page of the same browser, and a wait that times out.
        let second = setup.browser.new_page().await.unwrap();
        second.eval("console.warn('second page')").await.unwrap();
        let error = wait_for(&second, "false", Duration::from_millis(300))
            .await
            .expect_err("never true");
        assert!(format!("{error:#}").contains("second page"), "{error:#}");
        assert!(!page.console().iter().any(|l| l.contains("second page")));
    };
    tokio::time::timeout(TEST_TIMEOUT, run)
        .await
        .expect("the test did not finish within its time");
}
