//! Helpers of the recorder's integration tests: the real `fanout-recorder` binary as a
//! child process, a real S3-compatible server (moto), tap packets, and reading the store.
//!
//! Every wait polls for an event (a log line, a metric, an object) against a deadline;
//! nothing sleeps a fixed time to let something happen.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fanout_forwarder::recording::{self, MediaCodec, MAX_MESSAGE_LEN};
use fanout_forwarder::sfu::TrackKind;
use fanout_recorder::chunk::{read_chunk, Chunk, ChunkRecord};
use fanout_recorder::store::{ChunkKey, RecordingStore, StoreConfig};

/// How long any single wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Poll `check` until it returns `Some`, failing the test with `what` after `DEADLINE`.
pub fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One packet as the test sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentPacket {
    pub recording_id: String,
    pub record: ChunkRecord,
}

/// The `index`-th packet of a recording: two participants, three kinds of tracks, RTP
/// of varied sizes whose bytes depend on the recording and the index, so any mix-up or
/// corruption shows.
pub fn packet(recording_id: &str, index: u32) -> SentPacket {
    let participant = ["alice", "bob"][index as usize % 2];
    let (track, codec, clock_rate) = match index % 3 {
        0 => (TrackKind::Audio, MediaCodec::Opus, 48_000),
        1 => (TrackKind::Video, MediaCodec::Vp8, 90_000),
        _ => (TrackKind::Screen, MediaCodec::H264, 90_000),
    };
    let salt = recording_id
        .bytes()
        .fold(0u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
    let mut rtp = vec![0x80, 96 + (index % 3) as u8];
    rtp.extend_from_slice(&(index as u16).to_be_bytes());
    rtp.extend_from_slice(&(index * 960).to_be_bytes());
    rtp.extend_from_slice(&[salt, 0, 0, (index % 6) as u8]);
    let payload = 20 + (index as usize * 37) % 1150;
    rtp.extend((0..payload).map(|k| (k as u8).wrapping_add(index as u8) ^ salt));
    SentPacket {
        recording_id: recording_id.to_owned(),
        record: ChunkRecord {
            meeting_id: format!("meeting-of-{recording_id}"),
            participant_id: participant.to_owned(),
            track,
            encoding: (index % 3) as u8,
            codec,
            clock_rate,
            arrival_us: 1_790_000_000_000_000 + u64::from(index) * 1_000,
            rtp,
        },
    }
}

/// Sends tap datagrams, encoded by the forwarder's own encoder, to a recorder's socket.
pub struct TapSender {
    socket: UnixDatagram,
    path: PathBuf,
    buffer: Vec<u8>,
}

impl TapSender {
    pub fn new(path: &Path) -> TapSender {
        TapSender {
            socket: UnixDatagram::unbound().unwrap(),
            path: path.to_owned(),
            buffer: vec![0; MAX_MESSAGE_LEN],
        }
    }

    pub fn packet(&mut self, sent: &SentPacket) {
        let tap = sent.record.as_tap(&sent.recording_id);
        let len = recording::encode_packet(&tap, &mut self.buffer).unwrap();
        self.raw(&self.buffer[..len]);
    }

    pub fn end(&mut self, recording_id: &str) {
        let len = recording::encode_end(recording_id, &mut self.buffer).unwrap();
        self.raw(&self.buffer[..len]);
    }

    /// Any bytes. Blocks while the recorder's queue is full, so nothing is dropped on
    /// the way.
    pub fn raw(&self, datagram: &[u8]) {
        self.socket.send_to(datagram, &self.path).unwrap();
    }
}

/// A running `fanout-recorder run`, its log lines echoed to the test's output.
pub struct Recorder {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    pub metrics: SocketAddr,
}

impl Recorder {
    /// Start `fanout-recorder run` with `args` (and metrics on a free port) and wait until
    /// it is ready to receive.
    pub fn start(args: &[String], env: &[(&str, &str)]) -> Recorder {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fanout-recorder"));
        command
            .arg("run")
            .args(args)
            .args(["--metrics", "127.0.0.1:0", "--progress-interval", "1"])
            .env("RUST_LOG", "info,fanout_recorder=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("cannot start fanout-recorder");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[recorder] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut recorder = Recorder {
            child,
            lines,
            seen: Vec::new(),
            metrics: "0.0.0.0:0".parse().unwrap(),
        };
        let line = recorder.wait_for_line("metrics at http://");
        let address = line
            .split("metrics at http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .expect("metrics address in the log");
        recorder.metrics = address.parse().unwrap();
        // Logged before the metrics line: the socket is bound.
        assert!(recorder.seen.iter().any(|l| l.contains("recorder ready")));
        recorder
    }

    /// The first log line (from the start) containing `text`.
    pub fn wait_for_line(&mut self, text: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(line) = self.seen.iter().find(|l| l.contains(text)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "no log line with {text:?} (exit: {:?})",
                    self.child.try_wait()
                ),
            }
        }
    }

    /// The value of one sample (`name` or `name{labels}`), 0 if absent.
    pub fn metric(&self, sample: &str) -> u64 {
        let text = http_get(self.metrics, "/metrics");
        text.lines()
            .find_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                (name == sample).then(|| value.parse::<f64>().ok())?
            })
            .map_or(0, |v| v as u64)
    }

    pub fn wait_metric(&self, sample: &str, at_least: u64) -> u64 {
        wait_for(&format!("{sample} >= {at_least}"), || {
            let value = self.metric(sample);
            (value >= at_least).then_some(value)
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with the pid of a child this test started and has not reaped.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    /// Wait for the process to exit.
    pub fn wait_exit(mut self) -> ExitStatus {
        let status = wait_for("the recorder to exit", || self.child.try_wait().unwrap());
        // Drain the log so the echo thread ends.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(line);
        }
        status
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The chunk files in a spool directory (its lock file aside).
pub fn spooled_chunks(spool: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().is_some_and(|n| n != ".lock"))
        .collect()
}

/// A plain HTTP/1.1 GET; the body.
pub fn http_get(address: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// Every chunk of a recording in the store, in key order, decoded.
pub fn stored_chunks(
    runtime: &tokio::runtime::Runtime,
    store: &RecordingStore,
    recording_id: &str,
) -> Vec<(ChunkKey, Chunk)> {
    let keys = runtime.block_on(store.list_chunks(recording_id)).unwrap();
    keys.into_iter()
        .map(|key| {
            let bytes = runtime.block_on(store.get_chunk(&key)).unwrap();
            let chunk = read_chunk(&bytes).unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(chunk.header.recording_id, recording_id, "{key}");
            assert_eq!(chunk.header.instance, key.instance, "{key}");
            assert_eq!(chunk.header.seq, key.seq, "{key}");
            (key, chunk)
        })
        .collect()
}

/// The records of a recording's chunks, in order, as packets.
pub fn stored_packets(chunks: &[(ChunkKey, Chunk)]) -> Vec<SentPacket> {
    chunks
        .iter()
        .flat_map(|(_, chunk)| {
            chunk.records.iter().map(|record| SentPacket {
                recording_id: chunk.header.recording_id.clone(),
                record: record.clone(),
            })
        })
        .collect()
}

/// A moto S3 server on a free loopback port with a fresh, empty bucket; stopped on drop.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
    pub bucket: String,
    log: PathBuf,
}

/// The credentials the tests give moto (it accepts any).
pub const ACCESS_KEY: &str = "fanout-test";
pub const SECRET_KEY: &str = "fanout-test-secret";

impl S3Server {
    /// Start moto, installing it first if it is missing (scripts/install-deps.sh
    /// s3-server). `None` only when it cannot be installed here; the caller skips loudly.
    /// Under CI (`CI` set) that fails the test instead: CI must run against S3.
    pub fn start(data_dir: &Path) -> Option<S3Server> {
        let Some(program) = moto_server() else {
            let message =
                "no S3 server: `scripts/install-deps.sh s3-server` could not install moto";
            assert!(std::env::var_os("CI").is_none(), "{message}");
            eprintln!("\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                       !!! SKIPPED: {message}\n\
                       !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n");
            return None;
        };
        std::fs::create_dir_all(data_dir).unwrap();
        // moto keeps objects in memory: a fresh process is a fresh store. A port taken
        // between choosing and binding it makes moto exit; try another.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let log = data_dir.join(format!("moto-{port}.log"));
            let child = Command::new(&program)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .current_dir(data_dir)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
                .spawn()
                .expect("cannot start moto_server");
            let mut server = S3Server {
                child,
                endpoint: format!("http://127.0.0.1:{port}"),
                bucket: "fanout-recordings".into(),
                log,
            };
            if server.wait_ready(port) {
                let status = raw_http(port, &format!("PUT /{} HTTP/1.1", server.bucket));
                assert!(status.contains(" 200 "), "create bucket: {status}");
                return Some(server);
            }
        }
        panic!("moto_server did not start on any of 5 ports");
    }

    /// True once moto answers; false if it exited (its port was taken).
    fn wait_ready(&mut self, port: u16) -> bool {
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok()
                && raw_http(port, "GET / HTTP/1.1").contains(" 200 ")
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "moto_server not ready after {DEADLINE:?}; see {}",
            self.log.display()
        );
    }

    /// The store config for this server's bucket; the secret goes through a file, as in
    /// production.
    pub fn store_config(&self, dir: &Path) -> StoreConfig {
        let secret = dir.join("s3-secret");
        std::fs::write(&secret, SECRET_KEY).unwrap();
        StoreConfig {
            url: format!("s3://{}", self.bucket),
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key_file: Some(secret),
            allow_http: None,
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request without a body; the status line.
fn raw_http(port: u16, request_line: &str) -> String {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let request =
        format!("{request_line}\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut response = String::new();
    let _ = BufReader::new(stream).read_line(&mut response);
    response
}

/// moto's server program: FANOUT_MOTO_SERVER, else the virtualenv install-deps.sh makes
/// (installed now if missing).
fn moto_server() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FANOUT_MOTO_SERVER") {
        return Some(PathBuf::from(path));
    }
    let venv = std::env::var_os("FANOUT_MOTO_VENV")
        .map_or_else(|| PathBuf::from("/opt/fanout/moto"), PathBuf::from);
    let program = venv.join("bin/moto_server");
    if !program.exists() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-deps.sh");
        eprintln!(
            "moto_server missing: running {} s3-server",
            script.display()
        );
        let status = Command::new("bash")
            .arg(&script)
            .arg("s3-server")
            .stdin(Stdio::null())
            .status();
        eprintln!("install-deps.sh s3-server: {status:?}");
    }
    program.exists().then_some(program)
}
