//! What the control-plane tests share: a `fanout-control` process on a real etcd, killed
//! on drop; the deployment's credentials; bearer metadata; and a forwarder that is only
//! its Register and Heartbeat calls (stopping its heartbeats is its death).

#![allow(dead_code)] // each test file uses its own subset

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fanout_control::api::pb;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Request;

/// Write the deployment secret, the operator and enrolment tokens and `control.toml`
/// (with `config`) into `dir`, where [`Control::start`] reads them.
pub fn credentials(dir: &Path, config: &str) {
    std::fs::write(dir.join("secret"), "deployment-secret-for-tests-0123456789").unwrap();
    std::fs::write(dir.join("operator"), OPERATOR).unwrap();
    std::fs::write(dir.join("enrolment"), ENROLMENT).unwrap();
    std::fs::write(dir.join("control.toml"), config).unwrap();
}

pub const OPERATOR: &str = "operator-token-for-tests-0123456789";
pub const ENROLMENT: &str = "enrolment-token-for-tests-0123456789";

/// A `fanout-control` process, killed on drop.
pub struct Control {
    pub child: Child,
    pub address: SocketAddr,
    pub metrics: SocketAddr,
}

impl Control {
    pub fn start(dir: &Path, etcd: &str, name: &str) -> Control {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fanout-control"))
            .args(["--store", "etcd", "--etcd", etcd, "--listen", "127.0.0.1:0"])
            .args(["--metrics", "127.0.0.1:0"])
            .arg("--secret-file")
            .arg(dir.join("secret"))
            .arg("--operator-token-file")
            .arg(dir.join("operator"))
            .arg("--enrolment-token-file")
            .arg(dir.join("enrolment"))
            .arg("--config")
            .arg(dir.join("control.toml"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fanout-control starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let name = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                for marker in ["metrics at http://", "listening on "] {
                    if let Some(at) = line.find(marker) {
                        let rest = &line[at + marker.len()..];
                        let word = rest.split_whitespace().next().unwrap_or("");
                        let _ = tx.send(word.trim_end_matches("/metrics").to_owned());
                    }
                }
                if std::env::var_os("CONTROL_LOG").is_some() {
                    eprintln!("[{name}] {line}");
                }
            }
        });
        // Owned (and killed on drop) before anything below can panic.
        let unset = SocketAddr::from(([0, 0, 0, 0], 0));
        let mut control = Control {
            child,
            address: unset,
            metrics: unset,
        };
        let next = || -> SocketAddr {
            rx.recv_timeout(Duration::from_secs(30))
                .expect("fanout-control logs its addresses")
                .parse()
                .unwrap()
        };
        // The metrics line comes first (the server binds its port last).
        control.metrics = next();
        control.address = next();
        control
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.address))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn with_bearer<T>(message: T, credential: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {credential}")).unwrap(),
    );
    request
}

/// A registered forwarder whose heartbeats run until `stop`.
pub struct FakeForwarder {
    pub session: String,
    pub alive: Arc<AtomicBool>,
}

pub async fn register(
    channel: Channel,
    id: &str,
    region: &str,
    ports: (u32, u32),
    max_legs: u32,
) -> FakeForwarder {
    let mut client = pb::forwarders_client::ForwardersClient::new(channel);
    let response = client
        .register(with_bearer(
            pb::RegisterRequest {
                forwarder_id: id.into(),
                media_ip: "127.0.0.1".into(),
                port_range_start: ports.0,
                port_range_end: ports.1,
                region: region.into(),
                max_legs,
                ..Default::default()
            },
            ENROLMENT,
        ))
        .await
        .expect("register")
        .into_inner();
    let alive = Arc::new(AtomicBool::new(true));
    let (session, flag, id) = (response.session_token.clone(), alive.clone(), id.to_owned());
    let interval = Duration::from_millis(response.heartbeat_interval_ms);
    tokio::spawn(async move {
        while flag.load(Ordering::SeqCst) {
            let _ = client
                .heartbeat(with_bearer(
                    pb::HeartbeatRequest {
                        forwarder_id: id.clone(),
                        ..Default::default()
                    },
                    &session,
                ))
                .await;
            tokio::time::sleep(interval).await;
        }
    });
    FakeForwarder {
        session: response.session_token,
        alive,
    }
}
