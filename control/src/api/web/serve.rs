//! One listener for gRPC, REST, WebSocket and the page.
//!
//! tonic's own server cannot do this: it serves connections without HTTP/1.1 upgrades, so
//! a WebSocket handshake would never complete. hyper-util's `auto` builder speaks HTTP/1.1
//! (with upgrades) and HTTP/2 (prior knowledge, or ALPN `h2` under TLS) on one port, and
//! tonic's services are an axum router like ours.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::header::{CONNECTION, CONTENT_TYPE};
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::WebMetrics;
use crate::api::metrics::Metrics;
use crate::service::forwarders::LiveForwarders;
use crate::service::recordings::RecordingService;

/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests get to finish once `shutdown` resolves.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS acceptor for `cert` (PEM chain) and `key` (PEM), offering `h2` and `http/1.1`.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("bad certificate in {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read a private key from {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("bad TLS certificate or key")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` on `listener` (over TLS with `tls`) until `shutdown` resolves, then lets
/// requests in flight finish (at most [`DRAIN_TIMEOUT`]). Upgraded connections
/// (WebSockets) are not waited for: their sessions watch the stop signal themselves.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let result = match tls {
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
                    watcher.watch(conn).await
                }
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(conn).await
                }
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("requests still in flight after {DRAIN_TIMEOUT:?}; stopping anyway");
    }
    Ok(())
}

#[derive(Clone)]
struct MetricsState {
    calls: Metrics,
    web: WebMetrics,
    live: LiveForwarders,
    recordings: Option<Arc<RecordingService>>,
}

/// Serves `GET /metrics` (gRPC calls, the web face, live forwarders, recordings and
/// stitching jobs) and `GET /healthz` on `address`; returns the bound address.
pub async fn serve_metrics(
    address: SocketAddr,
    calls: Metrics,
    web: WebMetrics,
    live: LiveForwarders,
    recordings: Option<Arc<RecordingService>>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|State(s): State<MetricsState>| async move {
                let mut text = s.calls.render(Some(&s.live));
                text.push_str(&s.web.render());
                if let Some(recordings) = &s.recordings {
                    // A count of one prefix (etcd's count_only): cheap at scrape rates. A
                    // store that does not answer leaves the gauge out rather than the page.
                    let outstanding = recordings.outstanding_jobs().await.ok();
                    text.push_str(&recordings.metrics().render(outstanding));
                }
                (
                    [
                        (CONTENT_TYPE, "text/plain; version=0.0.4"),
                        // Scrapers that read to the end of the stream (as the old server
                        // let them) must not wait for a keep-alive to time out.
                        (CONNECTION, "close"),
                    ],
                    text,
                )
            }),
        )
        .route(
            "/healthz",
            get(|| async { ([(CONNECTION, "close")], "ok\n") }),
        )
        .with_state(MetricsState {
            calls,
            web,
            live,
            recordings,
        });
    tokio::spawn(async move {
        if let Err(e) = serve(listener, app, None, std::future::pending()).await {
            warn!(error = %e, "the metrics server stopped");
        }
    });
    info!("metrics at http://{bound}/metrics");
    Ok(bound)
}
