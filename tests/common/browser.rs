//! Headless Chromium in a network namespace, driven over the Chrome DevTools Protocol, for
//! end-to-end tests with a real browser.
//!
//! Chromium offers no ICE host candidate on loopback, so a browser runs in a network
//! namespace joined to the root namespace (where the forwarder and the control plane
//! listen) by a veth pair: a [`BrowserNetwork`], which is [`topology`]'s veth pair seen
//! from the browser's side (same subnets, sweeping of stale namespaces and teardown).
//! The browser reaches the root namespace at [`BrowserNetwork::host_ip`]; its own ICE host
//! candidate is [`BrowserNetwork::browser_ip`].
//!
//! * [`Browser::launch`] starts `ip netns exec NS chromium --headless=new ...` with a fresh
//!   profile, fake camera, microphone and screen ([`BROWSER_FLAGS`]), reads the DevTools
//!   WebSocket address from its stderr and connects to it from a thread that entered the
//!   namespace (the debugging port listens on the namespace's loopback). Dropping the
//!   [`Browser`] kills Chromium's whole process group and removes the profile, also when
//!   the test panics, and then prints the command, the log file and every page's console.
//! * [`Browser::new_page`] opens a tab (`Target.createTarget`, attached with a flattened
//!   session): [`Page::navigate`], [`Page::eval`] (`Runtime.evaluate` awaiting promises;
//!   a thrown exception is the Rust error), [`Page::console`] (console calls, uncaught
//!   exceptions and browser log entries, as text).
//! * [`wait_for`] polls a JavaScript predicate, [`inbound_rtp_stats`] and
//!   [`wait_for_inbound_rtp`] read a peer connection's `inbound-rtp` counters per kind, and
//!   [`selected_candidate_pair`] its nominated ICE pair.
//!
//! Every step has a deadline ([`BrowserOptions::timeout`], 30 s by default), so a hung
//! Chromium fails a test instead of hanging it. Two participants are two [`Browser`]s
//! (two profiles); one browser may have several pages.
//!
//! Pages served over plain HTTP from [`BrowserNetwork::host_ip`] are not a secure context,
//! where `navigator.mediaDevices` does not exist: list their origins in
//! [`BrowserOptions::secure_origins`].
//!
//! Environment knobs: `FANOUT_CHROMIUM` (the Chromium binary; default `chromium` on the
//! PATH), `FANOUT_KEEP_TEMP` (keep the profile directory).
//!
//! [`topology`]: crate::topology

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use fanout_forwarder::driver::os::enter_network_namespace;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::process::{tail, Proc};
use crate::topology::ForwarderNetwork;

/// The flags every browser gets, besides `--user-data-dir` and the secure origins.
pub const BROWSER_FLAGS: &[&str] = &[
    "--headless=new",
    // As root (CI), Chromium refuses to start with its sandbox.
    "--no-sandbox",
    "--disable-gpu",
    // Camera, microphone and screen share are granted without a prompt...
    "--use-fake-ui-for-media-stream",
    // ...and are synthetic: a test pattern with a timer, a beep, and a fake screen
    // (getDisplayMedia returns `screen:-3:0`, 800x600, in headless mode too).
    "--use-fake-device-for-media-stream",
    // The DevTools port, printed on stderr; it listens on the namespace's loopback.
    "--remote-debugging-port=0",
    "--no-first-run",
    "--no-default-browser-check",
    "--autoplay-policy=no-user-gesture-required",
    // Host candidates carry the address, not an mDNS name, also on a page that has no
    // media permission (a receive-only participant): a namespace has no mDNS responder.
    // Pages that captured media already get addresses.
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    // Pages in background tabs keep their timers and media going.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    // A small /dev/shm (containers) crashes renderers.
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--disable-component-update",
    "--disable-sync",
    "--password-store=basic",
    "--mute-audio",
];

/// How often [`wait_for`] re-evaluates its predicate: a poll interval, not a delay.
const POLL: Duration = Duration::from_millis(50);
/// Console lines of a page kept (the last ones).
const CONSOLE_LINES: usize = 2000;
/// Console lines of a page shown in an error.
const CONSOLE_TAIL: usize = 40;

/// The namespace a browser runs in, joined to the root namespace by a veth pair: the veth
/// pair of [`topology`](crate::topology), whose namespace side is the browser's. Dropping
/// it removes the pair and the namespace (and kills what still runs there). Needs root.
#[derive(Debug)]
pub struct BrowserNetwork {
    veth: ForwarderNetwork,
    namespace: String,
}

impl BrowserNetwork {
    /// A fresh namespace and veth pair on a private /30.
    pub fn create() -> Result<BrowserNetwork> {
        let veth = ForwarderNetwork::veth(false)?;
        let namespace = veth
            .namespace()
            .context("a veth network has a namespace")?
            .to_owned();
        Ok(BrowserNetwork { veth, namespace })
    }

    /// The namespace, for [`Browser::launch`].
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The browser's address: its ICE host candidate.
    pub fn browser_ip(&self) -> IpAddr {
        self.veth.forwarder_ip()
    }

    /// The root namespace's address on the pair, where the browser reaches the servers
    /// (HTTP, the forwarder's UDP port): servers listen on it (or on 0.0.0.0).
    pub fn host_ip(&self) -> IpAddr {
        self.veth.peer_ip()
    }

    /// Loses `percent` of the UDP datagrams the browsers send to `ports` on the way out of
    /// their namespace, at random (an nftables rule: this kernel has no netem, see
    /// shared/PLATFORM.md). Gone with the namespace.
    pub fn lose_outbound_udp(&self, percent: u8, ports: RangeInclusive<u16>) -> Result<()> {
        let rule = format!(
            "table inet fanout_loss {{\n chain out {{\n  type filter hook output priority 0\n  \
             udp dport {}-{} numgen random mod 100 < {percent} drop\n }}\n}}\n",
            ports.start(),
            ports.end()
        );
        let output = Command::new("ip")
            .args(["netns", "exec", &self.namespace, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .expect("stdin is piped")
                    .write_all(rule.as_bytes())?;
                child.wait_with_output()
            })
            .context("running nft (scripts/install-deps.sh installs nftables)")?;
        if !output.status.success() {
            bail!(
                "nft refused the loss rule: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

/// Whether `nft` (nftables) is installed, for [`BrowserNetwork::lose_outbound_udp`].
pub fn nft_available() -> bool {
    Command::new("nft")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the Chromium binary ([`chromium_program`]) is installed.
pub fn chromium_available() -> bool {
    let program = chromium_program();
    if program.components().count() > 1 {
        return program.is_file();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join(&program).is_file())
}

/// `FANOUT_CHROMIUM`, or `chromium`.
pub fn chromium_program() -> PathBuf {
    std::env::var_os("FANOUT_CHROMIUM")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from("chromium"), PathBuf::from)
}

/// Whether the tests run as root (namespaces need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// How to start a browser.
#[derive(Debug, Clone)]
pub struct BrowserOptions {
    /// Origins (`http://10.214.0.1:8080`) treated as secure contexts, where
    /// getUserMedia and getDisplayMedia exist
    /// (`--unsafely-treat-insecure-origin-as-secure`).
    pub secure_origins: Vec<String>,
    /// More command-line flags, after [`BROWSER_FLAGS`].
    pub extra_args: Vec<String>,
    /// Deadline of each step: start-up, connecting, each DevTools call, a navigation.
    pub timeout: Duration,
}

impl Default for BrowserOptions {
    fn default() -> BrowserOptions {
        BrowserOptions {
            secure_origins: Vec::new(),
            extra_args: Vec::new(),
            timeout: Duration::from_secs(30),
        }
    }
}

/// Numbers the browsers of this process (log file names).
static NEXT_BROWSER: AtomicU32 = AtomicU32::new(0);

/// A headless Chromium in a network namespace, with a DevTools connection. Killed (its
/// whole process group) and its profile removed on drop.
pub struct Browser {
    shared: Arc<Shared>,
    profile: Option<tempfile::TempDir>,
}

/// What a browser and its pages share.
struct Shared {
    /// `ip netns exec NS chromium ...`: the process group leader once it execs.
    proc: Mutex<Proc>,
    pid: u32,
    command_line: String,
    log_path: PathBuf,
    timeout: Duration,
    cdp: Cdp,
}

impl fmt::Debug for Browser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Browser")
            .field("pid", &self.shared.pid)
            .field("command", &self.shared.command_line)
            .field("log", &self.shared.log_path)
            .finish()
    }
}

impl Browser {
    /// Starts Chromium in network namespace `netns` (an `ip netns` name, such as
    /// [`BrowserNetwork::namespace`]) and connects to its DevTools endpoint. Must be called
    /// within a Tokio runtime (the connection's tasks run there).
    pub async fn launch(netns: &str, opts: BrowserOptions) -> Result<Browser> {
        let ns_path = Path::new("/run/netns").join(netns);
        if !ns_path.exists() {
            bail!(
                "network namespace {netns} does not exist ({})",
                ns_path.display()
            );
        }
        let program = chromium_program();
        if !chromium_available() {
            bail!(
                "Chromium ({}) is not installed: run the repository's scripts/install-deps.sh \
                 (Debian's `chromium` package)",
                program.display()
            );
        }
        let n = NEXT_BROWSER.fetch_add(1, Ordering::Relaxed);
        let profile = tempfile::Builder::new()
            .prefix("fanout-chromium-")
            .tempdir()
            .context("cannot create a profile directory")?;
        let log_path =
            std::env::temp_dir().join(format!("fanout-chromium-{}-{n}.log", std::process::id()));
        let mut args: Vec<String> = BROWSER_FLAGS.iter().map(|&a| a.to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        if !opts.secure_origins.is_empty() {
            args.push(format!(
                "--unsafely-treat-insecure-origin-as-secure={}",
                opts.secure_origins.join(",")
            ));
        }
        args.extend(opts.extra_args.iter().cloned());
        args.push("about:blank".to_owned());

        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", netns])
            .arg(&program)
            .args(&args);
        // A group of its own: Drop kills Chromium with every process it forked.
        command.process_group(0);
        let command_line = format!(
            "ip netns exec {netns} {} {}",
            program.display(),
            args.join(" ")
        );
        let proc = Proc::spawn(format!("chromium-{n}"), command)?;
        let pid = proc.pid();
        let proc = Mutex::new(proc);

        // From here on a failure kills the browser: a Browser without a connection yet.
        let fail = |what: anyhow::Error, proc: &Mutex<Proc>| -> anyhow::Error {
            let mut proc = proc.lock().unwrap_or_else(PoisonError::into_inner);
            kill_group(pid);
            proc.kill();
            let stderr = proc.stderr();
            let _ = std::fs::write(&log_path, &stderr);
            what.context(format!(
                "chromium did not start: {command_line}\nlog: {}\nstderr:\n{}",
                log_path.display(),
                tail(&stderr)
            ))
        };
        let ws_url = match devtools_url(&proc, opts.timeout).await {
            Ok(url) => url,
            Err(e) => return Err(fail(e, &proc)),
        };
        let cdp = match Cdp::connect(netns, &ws_url, opts.timeout).await {
            Ok(cdp) => cdp,
            Err(e) => return Err(fail(e, &proc)),
        };
        let browser = Browser {
            shared: Arc::new(Shared {
                proc,
                pid,
                command_line,
                log_path,
                timeout: opts.timeout,
                cdp,
            }),
            profile: Some(profile),
        };
        browser
            .shared
            .call(None, "Browser.getVersion", json!({}), opts.timeout)
            .await?;
        Ok(browser)
    }

    /// Opens a new tab on `about:blank`.
    pub async fn new_page(&self) -> Result<Page> {
        let shared = &self.shared;
        let timeout = shared.timeout;
        let target = shared
            .call(
                None,
                "Target.createTarget",
                json!({"url": "about:blank"}),
                timeout,
            )
            .await?;
        let target_id = str_field(&target, "targetId")?;
        let attached = shared
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
                timeout,
            )
            .await?;
        let session = str_field(&attached, "sessionId")?;
        let console = shared.cdp.register(&session);
        for method in ["Runtime.enable", "Log.enable", "Page.enable"] {
            shared
                .call(Some(&session), method, json!({}), timeout)
                .await?;
        }
        Ok(Page {
            shared: self.shared.clone(),
            session,
            target_id,
            console,
        })
    }

    /// The command that started the browser.
    pub fn command_line(&self) -> &str {
        &self.shared.command_line
    }

    /// Where [`Browser::write_log`] writes Chromium's stderr.
    pub fn log_path(&self) -> &Path {
        &self.shared.log_path
    }

    /// Writes Chromium's stderr so far to [`Browser::log_path`].
    pub fn write_log(&self) -> Result<&Path> {
        self.shared.write_log()?;
        Ok(&self.shared.log_path)
    }

    /// The command, the log file (written now) and every page's console.
    pub fn diagnostics(&self) -> String {
        self.shared.diagnostics(None)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.shared.diagnostics(None));
        }
        self.shared.cdp.shutdown();
        kill_group(self.shared.pid);
        self.shared
            .proc
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .kill();
        if let Some(profile) = self.profile.take() {
            if std::env::var_os("FANOUT_KEEP_TEMP").is_some() {
                let kept = profile.keep();
                eprintln!("browser: profile kept in {}", kept.display());
            }
        }
    }
}

/// SIGKILL to process group `pgid` (Chromium and every process it forked).
fn kill_group(pgid: u32) {
    if let Ok(pgid) = libc::pid_t::try_from(pgid) {
        // SAFETY: kill(2) takes plain integers. The group is led by our own child, which
        // is not reaped yet when this is called, so its id cannot have been recycled.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
}

/// Waits for "DevTools listening on ws://..." on Chromium's stderr.
async fn devtools_url(proc: &Mutex<Proc>, timeout: Duration) -> Result<String> {
    const PREFIX: &str = "DevTools listening on ";
    let deadline = Instant::now() + timeout;
    loop {
        {
            let mut proc = proc.lock().unwrap_or_else(PoisonError::into_inner);
            let stderr = proc.stderr();
            if let Some(line) = stderr.lines().find_map(|l| l.strip_prefix(PREFIX)) {
                return Ok(line.trim().to_owned());
            }
            if let Some(status) = proc.try_status() {
                bail!("chromium exited ({status}) before printing its DevTools address");
            }
        }
        if Instant::now() >= deadline {
            bail!("chromium did not print its DevTools address within {timeout:?}");
        }
        // Polling the captured stderr: the wait ends as soon as the line is there.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Shared {
    async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value> {
        let result = self.cdp.call(session, method, params, timeout).await;
        if result.is_err() {
            let mut proc = self.proc.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(status) = proc.try_status() {
                return result.with_context(|| format!("chromium has exited ({status})"));
            }
        }
        result
    }

    fn write_log(&self) -> Result<()> {
        let stderr = self
            .proc
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stderr();
        std::fs::write(&self.log_path, stderr)
            .with_context(|| format!("cannot write {}", self.log_path.display()))
    }

    /// The command, the log (written now), and the console of `session` (of every page
    /// if `None`).
    fn diagnostics(&self, session: Option<&str>) -> String {
        let log = match self.write_log() {
            Ok(()) => self.log_path.display().to_string(),
            Err(e) => format!("(not written: {e:#})"),
        };
        let mut text = format!(
            "chromium (pid {}): {}\nchromium log: {log}",
            self.pid, self.command_line
        );
        for (name, lines) in self.cdp.consoles(session) {
            let skip = lines.len().saturating_sub(CONSOLE_TAIL);
            text.push_str(&format!(
                "\nconsole of page {name} ({} lines{}):",
                lines.len(),
                if skip > 0 { ", the last ones" } else { "" }
            ));
            for line in &lines[skip..] {
                text.push_str("\n  ");
                text.push_str(line);
            }
        }
        text
    }
}

/// One tab of a [`Browser`].
pub struct Page {
    shared: Arc<Shared>,
    session: String,
    target_id: String,
    console: Arc<Mutex<Vec<String>>>,
}

impl fmt::Debug for Page {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Page")
            .field("target_id", &self.target_id)
            .field("session", &self.session)
            .finish()
    }
}

impl Page {
    /// Navigates to `url` and waits until the document has loaded (`readyState` is
    /// `complete`). Fails with Chromium's error text (`net::ERR_CONNECTION_REFUSED`, ...).
    pub async fn navigate(&self, url: &str) -> Result<()> {
        let timeout = self.shared.timeout;
        let result = self
            .call("Page.navigate", json!({"url": url}), timeout)
            .await?;
        if let Some(error) = result
            .get("errorText")
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty())
        {
            bail!("navigating to {url}: {error}\n{}", self.diagnostics());
        }
        wait_for(self, "document.readyState === 'complete'", timeout)
            .await
            .with_context(|| format!("{url} did not finish loading"))?;
        Ok(())
    }

    /// Evaluates `js` in the page (awaiting it if it is a promise, with a user gesture so
    /// that APIs needing one work) and returns its value as JSON (`undefined` is `null`).
    /// A thrown exception or a rejected promise is an error with its text.
    pub async fn eval(&self, js: &str) -> Result<Value> {
        self.eval_within(js, self.shared.timeout).await
    }

    async fn eval_within(&self, js: &str, timeout: Duration) -> Result<Value> {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({
                    "expression": js,
                    "awaitPromise": true,
                    "returnByValue": true,
                    "userGesture": true,
                }),
                timeout,
            )
            .await
            .with_context(|| format!("evaluating {}", abbreviate(js)))?;
        if let Some(details) = result.get("exceptionDetails") {
            bail!(
                "evaluating {}: {}\n{}",
                abbreviate(js),
                exception_text(details),
                self.diagnostics()
            );
        }
        Ok(result
            .get("result")
            .and_then(|r| r.get("value"))
            .cloned()
            .unwrap_or(Value::Null))
    }

    /// What the page logged so far: `console.*` calls, uncaught exceptions, and the
    /// browser's log entries (network errors, ...), one line each.
    pub fn console(&self) -> Vec<String> {
        self.console
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The command, the log file (written now) and this page's console.
    pub fn diagnostics(&self) -> String {
        self.shared.diagnostics(Some(&self.session))
    }

    /// A DevTools method on this page's session.
    pub async fn call(&self, method: &str, params: Value, timeout: Duration) -> Result<Value> {
        self.shared
            .call(Some(&self.session), method, params, timeout)
            .await
    }
}

/// The first line of `js`, shortened for error messages.
fn abbreviate(js: &str) -> String {
    let js = js.trim();
    let first = js.lines().next().unwrap_or("");
    let mut short: String = first.chars().take(120).collect();
    if short.len() < js.len() {
        short.push_str(" ...");
    }
    format!("`{short}`")
}

/// Text of a `Runtime.ExceptionDetails`: the exception's description (with its stack),
/// or the details' own text.
fn exception_text(details: &Value) -> String {
    let exception = details.get("exception");
    let description = exception
        .and_then(|e| e.get("description"))
        .and_then(Value::as_str)
        .or_else(|| {
            exception
                .and_then(|e| e.get("value"))
                .and_then(Value::as_str)
        });
    match description {
        Some(d) => d.to_owned(),
        None => details
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or("an exception")
            .to_owned(),
    }
}

/// Whether `value` is truthy in JavaScript.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// Evaluates `js_predicate` every 50 ms until it is truthy (it may be a promise), and
/// returns that value. Fails after `timeout` with the last value or error and the page's
/// console. Errors while evaluating (a navigation replacing the document) are retried.
pub async fn wait_for(page: &Page, js_predicate: &str, timeout: Duration) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    let mut last: Result<Value> = Ok(Value::Null);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            let last = match last {
                Ok(value) => format!("last value {value}"),
                Err(e) => format!("last error: {e:#}"),
            };
            bail!(
                "{} was not true within {timeout:?} ({last})\n{}",
                abbreviate(js_predicate),
                page.diagnostics()
            );
        }
        last = page
            .eval_within(js_predicate, remaining.max(Duration::from_millis(100)))
            .await;
        if let Ok(value) = &last {
            if truthy(value) {
                return Ok(value.clone());
            }
        }
        // A crashed or exited browser will not make the predicate true.
        if let Some(status) = page
            .shared
            .proc
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .try_status()
        {
            bail!(
                "chromium exited ({status}) while waiting for {}\n{}",
                abbreviate(js_predicate),
                page.diagnostics()
            );
        }
        tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// Counters of the `inbound-rtp` streams of one kind, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtpCounters {
    /// How many `inbound-rtp` stats of that kind there are.
    pub streams: u64,
    pub frames_decoded: u64,
    pub packets_received: u64,
    pub bytes_received: u64,
}

/// The `inbound-rtp` counters of a peer connection, per kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InboundRtp {
    pub audio: RtpCounters,
    pub video: RtpCounters,
}

/// The `inbound-rtp` counters of the `RTCPeerConnection` the JavaScript expression `pc_var` (a global
/// name, or a path like `fanout.sub`) gives in
/// the page, from `getStats()`.
pub async fn inbound_rtp_stats(page: &Page, pc_var: &str) -> Result<InboundRtp> {
    let js = format!(
        "(async () => {{
            const pc = ({expr});
            if (!(pc instanceof RTCPeerConnection))
                throw new Error({name} + ' is not an RTCPeerConnection');
            const out = {{}};
            for (const kind of ['audio', 'video'])
                out[kind] = {{streams: 0, framesDecoded: 0, packetsReceived: 0, bytesReceived: 0}};
            (await pc.getStats()).forEach(s => {{
                if (s.type !== 'inbound-rtp' || !out[s.kind]) return;
                const k = out[s.kind];
                k.streams += 1;
                k.framesDecoded += s.framesDecoded || 0;
                k.packetsReceived += s.packetsReceived || 0;
                k.bytesReceived += s.bytesReceived || 0;
            }});
            return out;
        }})()",
        name = Value::from(pc_var),
        expr = pc_var
    );
    let value = page.eval(&js).await?;
    let kind = |kind: &str| -> Result<RtpCounters> {
        let counters = value
            .get(kind)
            .with_context(|| format!("no {kind} in {value}"))?;
        let number = |field: &str| -> Result<u64> {
            counters
                .get(field)
                .and_then(Value::as_u64)
                .with_context(|| format!("no {field} in {counters}"))
        };
        Ok(RtpCounters {
            streams: number("streams")?,
            frames_decoded: number("framesDecoded")?,
            packets_received: number("packetsReceived")?,
            bytes_received: number("bytesReceived")?,
        })
    };
    Ok(InboundRtp {
        audio: kind("audio")?,
        video: kind("video")?,
    })
}

/// Polls [`inbound_rtp_stats`] every 50 ms until `done` accepts them; those stats.
pub async fn wait_for_inbound_rtp(
    page: &Page,
    pc_var: &str,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&InboundRtp) -> bool,
) -> Result<InboundRtp> {
    let deadline = Instant::now() + timeout;
    loop {
        let stats = inbound_rtp_stats(page, pc_var).await?;
        if done(&stats) {
            return Ok(stats);
        }
        if Instant::now() >= deadline {
            bail!(
                "{pc_var}: {what} not seen within {timeout:?}; last inbound-rtp stats: \
                 {stats:?}\n{}",
                page.diagnostics()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One video encoding a peer connection sends (a simulcast layer), from `getStats()`
/// (`outbound-rtp`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundEncoding {
    /// The RID of the simulcast layer (`q`, `h`, `f`); empty without simulcast.
    pub rid: String,
    pub frames_encoded: u64,
    pub bytes_sent: u64,
    pub frame_width: u64,
    pub frame_height: u64,
    /// Why the encoder holds back (`none`, `bandwidth`, `cpu`, `other`).
    pub quality_limitation_reason: String,
}

/// What a sending peer connection says of its send-side bandwidth estimate and its video
/// encodings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SendStats {
    /// `availableOutgoingBitrate` of the selected candidate pair in bit/s: the sender's
    /// bandwidth estimate. 0 before there is one.
    pub available_outgoing_bitrate: f64,
    pub video: Vec<OutboundEncoding>,
}

impl SendStats {
    /// The encoding with RID `rid` (all zero if the sender has none).
    pub fn encoding(&self, rid: &str) -> OutboundEncoding {
        self.video
            .iter()
            .find(|e| e.rid == rid)
            .cloned()
            .unwrap_or_default()
    }
}

/// The [`SendStats`] of the `RTCPeerConnection` the JavaScript expression `pc_var` gives.
pub async fn send_stats(page: &Page, pc_var: &str) -> Result<SendStats> {
    let js = format!(
        "(async () => {{
            const pc = ({expr});
            if (!(pc instanceof RTCPeerConnection))
                throw new Error({name} + ' is not an RTCPeerConnection');
            const stats = await pc.getStats();
            const out = {{available: 0, video: []}};
            stats.forEach(s => {{
                if (s.type === 'transport' && s.selectedCandidatePairId) {{
                    const pair = stats.get(s.selectedCandidatePairId);
                    out.available = (pair && pair.availableOutgoingBitrate) || 0;
                }}
                if (s.type === 'outbound-rtp' && s.kind === 'video')
                    out.video.push({{rid: s.rid || '', framesEncoded: s.framesEncoded || 0,
                        bytesSent: s.bytesSent || 0, frameWidth: s.frameWidth || 0,
                        frameHeight: s.frameHeight || 0,
                        reason: s.qualityLimitationReason || ''}});
            }});
            return out;
        }})()",
        name = Value::from(pc_var),
        expr = pc_var
    );
    let value = page.eval(&js).await?;
    let number = |v: &Value, field: &str| -> Result<u64> {
        v.get(field)
            .and_then(Value::as_u64)
            .with_context(|| format!("no {field} in {v}"))
    };
    let video = value
        .get("video")
        .and_then(Value::as_array)
        .with_context(|| format!("no video in {value}"))?
        .iter()
        .map(|e| {
            Ok(OutboundEncoding {
                rid: str_field(e, "rid")?,
                frames_encoded: number(e, "framesEncoded")?,
                bytes_sent: number(e, "bytesSent")?,
                frame_width: number(e, "frameWidth")?,
                frame_height: number(e, "frameHeight")?,
                quality_limitation_reason: str_field(e, "reason")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(SendStats {
        available_outgoing_bitrate: value
            .get("available")
            .and_then(Value::as_f64)
            .with_context(|| format!("no available in {value}"))?,
        video,
    })
}

/// One end of an ICE candidate pair, from `getStats()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub address: String,
    pub port: u16,
    /// `host`, `srflx`, `prflx` or `relay`.
    pub candidate_type: String,
    /// `udp` or `tcp`.
    pub protocol: String,
}

/// The candidate pair a peer connection's transport uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidatePair {
    pub local: Candidate,
    pub remote: Candidate,
    pub state: String,
    pub nominated: bool,
}

/// The selected candidate pair of the first transport of `pc_var` that has one (`None`
/// before ICE selects a pair).
pub async fn selected_candidate_pair(page: &Page, pc_var: &str) -> Result<Option<CandidatePair>> {
    let js = format!(
        "(async () => {{
            const pc = ({expr});
            if (!(pc instanceof RTCPeerConnection))
                throw new Error({name} + ' is not an RTCPeerConnection');
            const stats = await pc.getStats();
            let pair = null;
            stats.forEach(s => {{
                if (!pair && s.type === 'transport' && s.selectedCandidatePairId)
                    pair = stats.get(s.selectedCandidatePairId);
            }});
            if (!pair) return null;
            const end = id => {{
                const c = stats.get(id) || {{}};
                return {{address: c.address || c.ip || '', port: c.port || 0,
                         candidateType: c.candidateType || '', protocol: c.protocol || ''}};
            }};
            return {{local: end(pair.localCandidateId), remote: end(pair.remoteCandidateId),
                     state: pair.state, nominated: !!pair.nominated}};
        }})()",
        name = Value::from(pc_var),
        expr = pc_var
    );
    let value = page.eval(&js).await?;
    if value.is_null() {
        return Ok(None);
    }
    let candidate = |end: &str| -> Result<Candidate> {
        let c = value
            .get(end)
            .with_context(|| format!("no {end} in {value}"))?;
        Ok(Candidate {
            address: str_field(c, "address")?,
            port: c
                .get("port")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
                .with_context(|| format!("bad port in {c}"))?,
            candidate_type: str_field(c, "candidateType")?,
            protocol: str_field(c, "protocol")?,
        })
    };
    Ok(Some(CandidatePair {
        local: candidate("local")?,
        remote: candidate("remote")?,
        state: str_field(&value, "state")?,
        nominated: value
            .get("nominated")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    }))
}

fn str_field(value: &Value, field: &str) -> Result<String> {
    value
        .get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("no string {field} in {value}"))
}

/// An answer to a DevTools call: its result, or its error's text.
type Answer = std::result::Result<Value, String>;

/// A Chrome DevTools Protocol connection: calls matched to answers by id, and the console
/// of each attached session collected from events.
struct Cdp {
    out: mpsc::UnboundedSender<String>,
    state: Arc<Mutex<CdpState>>,
    next_id: AtomicU64,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Default)]
struct CdpState {
    pending: HashMap<u64, oneshot::Sender<Answer>>,
    /// Console lines by session id, in the order the pages were opened.
    consoles: Vec<(String, Arc<Mutex<Vec<String>>>)>,
    /// Why the connection ended, once it has.
    closed: Option<String>,
}

impl Cdp {
    /// Connects to `ws_url` (on the loopback of namespace `netns`).
    async fn connect(netns: &str, ws_url: &str, timeout: Duration) -> Result<Cdp> {
        let authority = ws_url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .with_context(|| format!("unexpected DevTools address {ws_url}"))?;
        let address: SocketAddr = authority
            .parse()
            .with_context(|| format!("unexpected DevTools address {ws_url}"))?;
        let stream = connect_in_namespace(netns, address, timeout).await?;
        let (ws, _) =
            tokio::time::timeout(timeout, tokio_tungstenite::client_async(ws_url, stream))
                .await
                .map_err(|_| {
                    anyhow!("WebSocket handshake with {ws_url}: no answer within {timeout:?}")
                })?
                .with_context(|| format!("WebSocket handshake with {ws_url}"))?;
        let (mut sink, mut stream) = ws.split();
        let state = Arc::new(Mutex::new(CdpState::default()));
        let (out, mut outgoing) = mpsc::unbounded_channel::<String>();
        let writer = tokio::spawn(async move {
            while let Some(text) = outgoing.recv().await {
                if sink.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let reader_state = state.clone();
        let reader = tokio::spawn(async move {
            let reason = loop {
                match stream.next().await {
                    Some(Ok(Message::Text(text))) => dispatch(&reader_state, text.as_str()),
                    Some(Ok(Message::Close(frame))) => {
                        break format!("closed by chromium ({frame:?})")
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break format!("read error: {e}"),
                    None => break "closed".to_owned(),
                }
            };
            let mut state = reader_state.lock().unwrap_or_else(PoisonError::into_inner);
            state.closed = Some(reason.clone());
            for (_, waiter) in state.pending.drain() {
                let _ = waiter.send(Err(format!("DevTools connection {reason}")));
            }
        });
        Ok(Cdp {
            out,
            state,
            next_id: AtomicU64::new(1),
            tasks: vec![writer, reader],
        })
    }

    async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(reason) = &state.closed {
                bail!("{method}: DevTools connection {reason}");
            }
            state.pending.insert(id, tx);
        }
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = Value::from(session);
        }
        if self.out.send(message.to_string()).is_err() {
            self.forget(id);
            bail!("{method}: DevTools connection closed");
        }
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => {
                self.forget(id);
                bail!("{method}: no answer from chromium within {timeout:?}")
            }
            Ok(Err(_)) => bail!("{method}: DevTools connection closed"),
            Ok(Ok(Err(error))) => bail!("{method}: {error}"),
            Ok(Ok(Ok(result))) => Ok(result),
        }
    }

    fn forget(&self, id: u64) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pending
            .remove(&id);
    }

    /// Starts collecting the console of `session`.
    fn register(&self, session: &str) -> Arc<Mutex<Vec<String>>> {
        let console = Arc::new(Mutex::new(Vec::new()));
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .consoles
            .push((session.to_owned(), console.clone()));
        console
    }

    /// The console lines of `session` (of every session if `None`), by page number.
    fn consoles(&self, session: Option<&str>) -> Vec<(String, Vec<String>)> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state
            .consoles
            .iter()
            .enumerate()
            .filter(|(_, (s, _))| session.is_none_or(|wanted| wanted == s))
            .map(|(i, (_, lines))| {
                let lines = lines.lock().unwrap_or_else(PoisonError::into_inner).clone();
                (format!("#{i}"), lines)
            })
            .collect()
    }

    fn shutdown(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for Cdp {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Handles one message from Chromium: an answer, or an event.
fn dispatch(state: &Mutex<CdpState>, text: &str) {
    let Ok(message) = serde_json::from_str::<Value>(text) else {
        return;
    };
    let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(id) = message.get("id").and_then(Value::as_u64) {
        if let Some(waiter) = state.pending.remove(&id) {
            let answer = match message.get("error") {
                Some(error) => Err(match (error.get("message"), error.get("data")) {
                    (Some(m), Some(d)) => format!("{} ({})", json_text(m), json_text(d)),
                    (Some(m), None) => json_text(m),
                    _ => error.to_string(),
                }),
                None => Ok(message.get("result").cloned().unwrap_or(Value::Null)),
            };
            let _ = waiter.send(answer);
        }
        return;
    }
    let (Some(method), Some(session)) = (
        message.get("method").and_then(Value::as_str),
        message.get("sessionId").and_then(Value::as_str),
    ) else {
        return;
    };
    let params = message.get("params").cloned().unwrap_or(Value::Null);
    let line = match method {
        "Runtime.consoleAPICalled" => {
            let kind = params.get("type").and_then(Value::as_str).unwrap_or("log");
            let args: Vec<String> = params
                .get("args")
                .and_then(Value::as_array)
                .map(|args| args.iter().map(remote_object_text).collect())
                .unwrap_or_default();
            format!("console.{kind}: {}", args.join(" "))
        }
        "Runtime.exceptionThrown" => format!(
            "uncaught: {}",
            params
                .get("exceptionDetails")
                .map_or_else(|| "?".to_owned(), exception_text)
        ),
        "Log.entryAdded" => {
            let entry = params.get("entry").cloned().unwrap_or(Value::Null);
            let field = |f: &str| entry.get(f).and_then(Value::as_str).unwrap_or("");
            let url = field("url");
            format!(
                "log.{} ({}): {}{}",
                field("level"),
                field("source"),
                field("text"),
                if url.is_empty() {
                    String::new()
                } else {
                    format!(" [{url}]")
                }
            )
        }
        "Inspector.targetCrashed" => "the page crashed".to_owned(),
        "Inspector.detached" => format!(
            "detached: {}",
            params.get("reason").and_then(Value::as_str).unwrap_or("?")
        ),
        _ => return,
    };
    if let Some((_, console)) = state.consoles.iter().find(|(s, _)| s == session) {
        let mut console = console.lock().unwrap_or_else(PoisonError::into_inner);
        if console.len() >= CONSOLE_LINES {
            console.remove(0);
        }
        console.push(line);
    }
}

/// A string as is, anything else as JSON.
fn json_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A console argument (`Runtime.RemoteObject`) as text.
fn remote_object_text(object: &Value) -> String {
    if let Some(value) = object.get("value") {
        return json_text(value);
    }
    for field in ["unserializableValue", "description"] {
        if let Some(text) = object.get(field).and_then(Value::as_str) {
            return text.to_owned();
        }
    }
    object
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_owned()
}

/// A TCP connection to `address` in network namespace `netns`, made on a thread of its own
/// that enters the namespace (setns changes the calling thread only; a socket keeps the
/// namespace it was made in). Not on Tokio's blocking pool: its threads are reused.
async fn connect_in_namespace(
    netns: &str,
    address: SocketAddr,
    timeout: Duration,
) -> Result<tokio::net::TcpStream> {
    let path = Path::new("/run/netns").join(netns);
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("browser-netns".to_owned())
        .spawn(move || {
            let connected = (|| -> Result<std::net::TcpStream> {
                let ns = File::open(&path).with_context(|| format!("{}", path.display()))?;
                enter_network_namespace(&ns)
                    .with_context(|| format!("cannot enter namespace {}", path.display()))?;
                let stream = std::net::TcpStream::connect_timeout(&address, timeout)
                    .with_context(|| format!("cannot connect to DevTools at {address}"))?;
                stream.set_nodelay(true)?;
                stream.set_nonblocking(true)?;
                Ok(stream)
            })();
            let _ = tx.send(connected);
        })
        .context("cannot start a thread")?;
    let stream = tokio::time::timeout(timeout + Duration::from_secs(1), rx)
        .await
        .map_err(|_| anyhow!("connecting to DevTools at {address}: timed out"))?
        .map_err(|_| anyhow!("the namespace thread ended without an answer"))??;
    Ok(tokio::net::TcpStream::from_std(stream)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truthiness_is_javascripts() {
        for value in [json!(true), json!(1), json!("x"), json!({}), json!([])] {
            assert!(truthy(&value), "{value}");
        }
        for value in [json!(false), json!(0), json!(""), Value::Null] {
            assert!(!truthy(&value), "{value}");
        }
    }

    #[test]
    fn console_events_become_lines() {
        let state = Mutex::new(CdpState::default());
        let console = Arc::new(Mutex::new(Vec::new()));
        state
            .lock()
            .unwrap()
            .consoles
            .push(("S".to_owned(), console.clone()));
        dispatch(
            &state,
            r#"{"method":"Runtime.consoleAPICalled","sessionId":"S","params":{"type":"error",
                "args":[{"type":"string","value":"boom"},{"type":"number","value":3},
                {"type":"object","description":"Object"}]}}"#,
        );
        dispatch(
            &state,
            r#"{"method":"Runtime.consoleAPICalled","sessionId":"other","params":{"type":"log",
                "args":[]}}"#,
        );
        assert_eq!(*console.lock().unwrap(), ["console.error: boom 3 Object"]);
    }
}
