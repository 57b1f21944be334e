//! TLS on the gRPC port: `fanout-control --tls-cert --tls-key` serves gRPC (health here)
//! to a client that trusts the certificate, and nothing to a plaintext client.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig};

#[tokio::test]
async fn serves_grpc_over_tls_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let (ca, cert, key) = (path("ca.pem"), path("cert.pem"), path("key.pem"));
    std::fs::write(
        path("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    // A CA, and a server certificate it signs (webpki refuses a CA as the server's own).
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for args in [
        [
            &["req", "-x509"][..],
            &ec,
            &["-days", "2", "-subj", "/CN=fanout-test-ca"],
        ]
        .concat(),
        [&["req"][..], &ec, &["-subj", "/CN=localhost"]].concat(),
    ] {
        let is_ca = args.contains(&"-x509");
        let made = Command::new("openssl")
            .args(&args)
            .arg("-keyout")
            .arg(if is_ca { path("ca.key") } else { key.clone() })
            .arg("-out")
            .arg(if is_ca { ca.clone() } else { path("leaf.csr") })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl is installed (scripts/install-deps.sh)");
        assert!(made.success(), "openssl {args:?}");
    }
    let signed = Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial", "-in"])
        .arg(path("leaf.csr"))
        .arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(path("ca.key"))
        .arg("-extfile")
        .arg(path("leaf.ext"))
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(signed.success(), "openssl signed the server certificate");

    let child = Command::new(env!("CARGO_BIN_EXE_fanout-control"))
        .args(["--store", "memory", "--listen", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Killed on drop, also when an assertion below fails.
    let mut child = KillOnDrop(child);
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.find("listening on ") {
                let rest = &line[at + "listening on ".len()..];
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
            }
        }
    });
    let address = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("it listens");

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&ca).unwrap()))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{address}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("a TLS connection");
    let answer = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "fanout.control.v1.Meetings".into(),
        })
        .await
        .expect("health over TLS")
        .into_inner();
    assert_eq!(
        answer.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Plaintext HTTP/2 gets no answer from a TLS port.
    let plain = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect()
        .await;
    if let Ok(channel) = plain {
        let refused = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await;
        assert!(
            refused.is_err(),
            "plaintext must not be served: {refused:?}"
        );
    }
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
