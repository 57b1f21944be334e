//! Prometheus metrics of a control instance: calls and their latency per gRPC method and
//! status, and the size of what it follows (live forwarders). A tower layer around the
//! gRPC server counts; a small HTTP server renders on `GET /metrics`.
//!
//! The status of a failed call is read from the response headers (tonic answers errors as
//! "trailers-only" responses); a call whose headers carry no `grpc-status` is counted as
//! OK, which is what a unary success is (its status comes in the trailers).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::service::forwarders::LiveForwarders;

#[derive(Debug, Default)]
struct Calls {
    /// (method, status code name) → (count, seconds).
    by_method: BTreeMap<(String, String), (u64, f64)>,
}

/// The counters one instance keeps.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    calls: Arc<Mutex<Calls>>,
}

impl Metrics {
    fn record(&self, method: &str, code: &str, seconds: f64) {
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = calls
            .by_method
            .entry((method.to_owned(), code.to_owned()))
            .or_default();
        entry.0 += 1;
        entry.1 += seconds;
    }

    /// The Prometheus text exposition.
    pub fn render(&self, live: Option<&LiveForwarders>) -> String {
        let mut out = String::new();
        let calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = writeln!(
            out,
            "# HELP fanout_control_calls_total gRPC calls answered, by method and status\n\
             # TYPE fanout_control_calls_total counter"
        );
        for ((method, code), (count, _)) in &calls.by_method {
            let _ = writeln!(
                out,
                "fanout_control_calls_total{{method=\"{method}\",code=\"{code}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP fanout_control_call_seconds_total Time to answer gRPC calls (to the \
             response headers), by method and status\n\
             # TYPE fanout_control_call_seconds_total counter"
        );
        for ((method, code), (_, seconds)) in &calls.by_method {
            let _ = writeln!(
                out,
                "fanout_control_call_seconds_total{{method=\"{method}\",code=\"{code}\"}} {seconds}"
            );
        }
        if let Some(live) = live {
            let _ = writeln!(
                out,
                "# HELP fanout_control_live_forwarders Forwarders whose lease is alive\n\
                 # TYPE fanout_control_live_forwarders gauge\n\
                 fanout_control_live_forwarders {}",
                live.snapshot().len()
            );
        }
        out
    }

    /// Serve `GET /metrics` (and `/healthz`) on `address`; returns the bound address.
    pub async fn serve(
        self,
        address: SocketAddr,
        live: LiveForwarders,
    ) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let bound = listener.local_addr()?;
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let (metrics, live) = (self.clone(), live.clone());
                tokio::spawn(async move {
                    let mut request = [0u8; 1024];
                    let n = stream.read(&mut request).await.unwrap_or(0);
                    let line = String::from_utf8_lossy(&request[..n]);
                    let (status, body) = if line.starts_with("GET /metrics") {
                        ("200 OK", metrics.render(Some(&live)))
                    } else if line.starts_with("GET /healthz") {
                        ("200 OK", "ok\n".to_owned())
                    } else {
                        ("404 Not Found", "try /metrics\n".to_owned())
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(body.as_bytes()).await;
                });
            }
        });
        Ok(bound)
    }
}

/// The tower layer that counts every call of the gRPC server.
#[derive(Debug, Clone)]
pub struct MetricsLayer(pub Metrics);

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = Counted<S>;
    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Counted<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, R> tower::Service<http::Request<B>> for Counted<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // `/package.Service/Method` → `Service/Method`.
        let path = request.uri().path();
        let method = path
            .trim_start_matches('/')
            .rsplit_once('.')
            .map_or(path, |(_, m)| m)
            .to_owned();
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or("Ok".to_owned(), |c| format!("{:?}", tonic::Code::from(c))),
                Err(_) => "TransportError".to_owned(),
            };
            metrics.record(&method, &code, started.elapsed().as_secs_f64());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_calls_by_method_and_code() {
        let m = Metrics::default();
        m.record("Meetings/JoinMeeting", "Ok", 0.5);
        m.record("Meetings/JoinMeeting", "Ok", 0.25);
        m.record("Meetings/JoinMeeting", "NotFound", 0.1);
        let text = m.render(None);
        assert!(text
            .contains("fanout_control_calls_total{method=\"Meetings/JoinMeeting\",code=\"Ok\"} 2"));
        assert!(text.contains(
            "fanout_control_call_seconds_total{method=\"Meetings/JoinMeeting\",code=\"Ok\"} 0.75"
        ));
        assert!(text.contains("code=\"NotFound\"} 1"));
    }
}
