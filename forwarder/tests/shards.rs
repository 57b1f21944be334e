//! Multi-core sharding, end to end with the `fanout-forwarder` process and real UDP:
//! two meetings at their own ports run on two shards (threads pinned to distinct CPUs
//! where the machine has two); each meeting's subscriber gets its own meeting's media,
//! re-encrypted, from its meeting's port and nothing else; the metrics endpoint merges
//! the shards with a `shard` label that shows each meeting counted on its own shard; and
//! SIGTERM stops every shard cleanly. Run under every driver this kernel has.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use fanout_forwarder::driver::uring;
use fanout_forwarder::rtp::RtpHeader;
use fanout_forwarder::srtp::{MasterKey, SrtpContext, SrtpProfile};

const PROFILE: SrtpProfile = SrtpProfile::AeadAes128Gcm;
const PACKETS: u16 = 200;

fn drivers() -> Vec<&'static str> {
    let mut drivers = vec!["mio"];
    match uring::probe() {
        Ok(()) => drivers.push("uring"),
        Err(reason) => eprintln!("SKIPPED for io_uring: io_uring unavailable: {reason}"),
    }
    drivers
}

/// A loopback port whose successor is free too (RTP and the default RTCP port).
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = rtp.local_addr().unwrap().port();
        if port < u16::MAX && UdpSocket::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no free pair of UDP ports on loopback");
}

/// One meeting: alice publishes one track, bob subscribes to it from `bob`'s socket.
struct Meeting {
    id: &'static str,
    port: u16,
    ssrc: u32,
    alice: UdpSocket,
    alice_key: MasterKey,
    bob: UdpSocket,
    bob_key: MasterKey,
}

impl Meeting {
    fn new(id: &'static str, ssrc: u32) -> Meeting {
        let bob = UdpSocket::bind("127.0.0.1:0").unwrap();
        bob.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Meeting {
            id,
            port: free_port_pair(),
            ssrc,
            alice: UdpSocket::bind("127.0.0.1:0").unwrap(),
            alice_key: MasterKey::generate(PROFILE),
            bob,
            bob_key: MasterKey::generate(PROFILE),
        }
    }

    fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn toml(&self) -> String {
        let key = || MasterKey::generate(PROFILE).to_inline();
        let mut t = String::new();
        let _ = write!(
            t,
            r#"
[[meeting]]
id = "{id}"
listen = "127.0.0.1:{port}"

[[meeting.participant]]
id = "alice"

[[meeting.participant.leg]]
name = "main"
profile = "{profile}"
receive_key = "{alice_key}"
send_key = "{alice_send}"
rtcp_mux = true

[[meeting.participant.track]]
name = "camera"
kind = "video"
leg = "main"
ssrc = {ssrc}

[[meeting.participant]]
id = "bob"

[[meeting.participant.leg]]
name = "main"
profile = "{profile}"
receive_key = "{bob_receive}"
send_key = "{bob_key}"
remote = "{bob}"
rtcp_mux = true

[[meeting.participant.subscription]]
track = "alice/camera"
leg = "main"
"#,
            id = self.id,
            port = self.port,
            profile = PROFILE.name(),
            alice_key = self.alice_key.to_inline(),
            alice_send = key(),
            ssrc = self.ssrc,
            bob_receive = key(),
            bob_key = self.bob_key.to_inline(),
            bob = self.bob.local_addr().unwrap(),
        );
        t
    }

    /// Publish [`PACKETS`] packets to the meeting's port; bob must receive every one, from
    /// that port, in order, decrypted with his key, and carrying alice's SSRC.
    fn publish_and_check(&self) {
        let mut sender = SrtpContext::new(&self.alice_key);
        let mut receiver = SrtpContext::new(&self.bob_key);
        let mut buf = [0u8; 2048];
        for seq in 0..PACKETS {
            let mut p = vec![0u8; 12 + 1000 + 16];
            p[0] = 0x80;
            p[1] = 96;
            p[2..4].copy_from_slice(&seq.to_be_bytes());
            p[4..8].copy_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
            p[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
            p[12..1012].fill(seq as u8);
            let len = sender.protect_rtp(&mut p, 1012).unwrap();
            self.alice.send_to(&p[..len], self.address()).unwrap();
            // One at a time: no reliance on socket buffer sizes, no sleeps.
            let (n, from) = loop {
                match self.bob.recv_from(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    other => {
                        break other.unwrap_or_else(|e| {
                            panic!("{}: packet {seq} within 5 s: {e}", self.id)
                        })
                    }
                }
            };
            assert_eq!(
                from,
                self.address(),
                "{}: sent from the meeting's port",
                self.id
            );
            let len = receiver.unprotect_rtp(&mut buf[..n]).unwrap();
            let header = RtpHeader::parse(&buf[..len]).unwrap();
            assert_eq!(
                header.ssrc.0, self.ssrc,
                "{}: its own meeting's media",
                self.id
            );
            assert_eq!(
                header.sequence.0, seq,
                "{}: in order, exactly once",
                self.id
            );
        }
    }
}

struct Process {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: String,
}

impl Process {
    fn start(config: &std::path::Path, driver: &str) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fanout-forwarder"))
            .arg("--config")
            .arg(config)
            .args(["--metrics", "127.0.0.1:0", "--shards", "2", "--io", driver])
            .args(["--log", "info", "--progress-interval", "0"])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Process {
            child,
            lines,
            log: String::new(),
        }
    }

    /// Read the log until a line contains `marker`; returns that line.
    fn wait_for(&mut self, marker: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("no `{marker}` in the log:\n{}", self.log));
            self.log.push_str(&line);
            self.log.push('\n');
            if line.contains(marker) {
                return line;
            }
        }
    }

    /// (thread name, the CPUs it may run on) of every thread of the process.
    fn threads(&self) -> Vec<(String, String)> {
        let tasks = format!("/proc/{}/task", self.child.id());
        std::fs::read_dir(tasks)
            .unwrap()
            .filter_map(Result::ok)
            .map(|task| {
                let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
                let status =
                    std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
                let cpus = status
                    .lines()
                    .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                    .unwrap_or("")
                    .trim()
                    .to_owned();
                (comm.trim().to_owned(), cpus)
            })
            .collect()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scrape(address: SocketAddr) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// The `shard` label of the sample of `name` whose line also contains `with`.
fn shard_of(metrics: &str, name: &str, with: &str) -> String {
    let line = metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(with))
        .unwrap_or_else(|| panic!("no {name} sample with {with}:\n{metrics}"));
    let at = line.find("shard=\"").expect("a shard label") + "shard=\"".len();
    line[at..at + line[at..].find('"').unwrap()].to_owned()
}

fn sum_of(metrics: &str, name: &str, shard: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{shard=\"{shard}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn two_meetings_on_two_shards(driver: &str) {
    let meetings = [Meeting::new("m1", 0x1111), Meeting::new("m2", 0x2222)];
    let dir = std::env::temp_dir().join(format!("fanout-shards-{}-{driver}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("forwarder.toml");
    let mut text = format!("[forwarder]\nlisten = \"127.0.0.1:{}\"\n", free_port_pair());
    for meeting in &meetings {
        text.push_str(&meeting.toml());
    }
    std::fs::write(&config, text).unwrap();

    let mut forwarder = Process::start(&config, driver);
    let line = forwarder.wait_for("metrics at http://");
    let rest = &line[line.find("metrics at http://").unwrap() + "metrics at http://".len()..];
    let metrics: SocketAddr = rest[..rest.find("/metrics").unwrap()].parse().unwrap();

    for meeting in &meetings {
        meeting.publish_and_check();
    }

    let text = scrape(metrics);
    let leg = "fanout_leg_packets_received_total";
    let (m1, m2) = (
        shard_of(&text, leg, "meeting=\"m1\""),
        shard_of(&text, leg, "meeting=\"m2\""),
    );
    assert_ne!(m1, m2, "each meeting on its own shard:\n{text}");
    // Each shard's driver saw its own meeting's packets: the kernel steered by port.
    for shard in [&m1, &m2] {
        let received = sum_of(&text, "fanout_driver_datagrams_received_total", shard);
        assert!(
            received >= u64::from(PACKETS),
            "shard {shard} received {received}:\n{text}"
        );
    }

    let threads = forwarder.threads();
    let shard_cpus: Vec<&String> = threads
        .iter()
        .filter(|(name, _)| name.starts_with("shard-"))
        .map(|(_, cpus)| cpus)
        .collect();
    assert_eq!(shard_cpus.len(), 2, "two shard threads: {threads:?}");
    if fanout_forwarder::driver::allowed_cpus().len() >= 2 {
        assert!(
            shard_cpus.iter().all(|c| c.parse::<usize>().is_ok()) && shard_cpus[0] != shard_cpus[1],
            "each shard pinned to its own CPU: {threads:?}"
        );
    } else {
        eprintln!("one CPU only: shard pinning to distinct CPUs not checked");
    }

    // SIGTERM, as an operator or systemd would send it.
    let status = Command::new("kill")
        .args(["-TERM", &forwarder.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    forwarder.wait_for("stopped cleanly");
    let exit = forwarder.child.wait().unwrap();
    assert!(exit.success(), "exit status {exit}:\n{}", forwarder.log);
    assert_eq!(
        forwarder.log.matches("shard stopped").count(),
        2,
        "{}",
        forwarder.log
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_meetings_run_on_two_pinned_shards() {
    for driver in drivers() {
        two_meetings_on_two_shards(driver);
    }
}
