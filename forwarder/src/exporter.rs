//! The Prometheus endpoint: a small HTTP/1.1 server on its own thread that answers
//! `GET /metrics` (and `GET /healthz`), and `POST` requests of an optional [`Control`]
//! (the standalone forwarder's `POST /v1/subscriptions/max-layers`).
//!
//! The counters belong to the core, which lives on the driver thread and is never shared.
//! A scrape therefore asks the driver for a fresh rendering through [`MetricsExchange`]
//! and waits for it: the forwarding path stays lock-free and renders only when scraped.
//! With several shards, each is asked, and their renderings are merged into one
//! exposition where every sample carries a `shard` label.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use tracing::{debug, warn};

/// Hands metric renderings from the driver thread to scrapers.
#[derive(Debug, Default)]
pub struct MetricsExchange {
    state: Mutex<Exchange>,
    rendered: Condvar,
}

#[derive(Debug, Default)]
struct Exchange {
    requested: u64,
    served: u64,
    text: String,
}

/// Something that wakes the driver so it calls [`MetricsExchange::serve`].
pub trait Wake: Send + Sync {
    fn wake(&self);
}

impl MetricsExchange {
    /// Scraper side: ask for a rendering, wake the driver, wait up to `timeout`.
    pub fn request(&self, wake: &dyn Wake, timeout: Duration) -> Option<String> {
        let ticket = self.ask(wake);
        self.wait(ticket, timeout)
    }

    /// Ask for a rendering and wake the driver; [`wait`](Self::wait) with the ticket.
    fn ask(&self, wake: &dyn Wake) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.requested += 1;
        let ticket = state.requested;
        drop(state);
        wake.wake();
        ticket
    }

    fn wait(&self, ticket: u64, timeout: Duration) -> Option<String> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (state, result) = self
            .rendered
            .wait_timeout_while(state, timeout, |s| s.served < ticket)
            .unwrap_or_else(PoisonError::into_inner);
        (!result.timed_out()).then(|| state.text.clone())
    }

    /// Driver side: render if a scraper is waiting. Cheap when nobody is.
    pub fn serve(&self, render: impl FnOnce(&mut String)) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.served == state.requested {
            return;
        }
        state.text.clear();
        render(&mut state.text);
        state.served = state.requested;
        drop(state);
        self.rendered.notify_all();
    }
}

/// Answers `POST` requests: run-time control next to the metrics.
pub trait Control: Send + Sync {
    /// `POST path?query` (the query as sent, still percent-encoded): the HTTP status code
    /// and a plain-text body.
    fn post(&self, path: &str, query: &str) -> (u16, String);
}

/// One driver thread's metrics: where its renderings arrive and how to wake it.
#[derive(Clone)]
pub struct MetricsSource {
    pub exchange: Arc<MetricsExchange>,
    pub wake: Arc<dyn Wake>,
}

impl std::fmt::Debug for MetricsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsSource").finish_non_exhaustive()
    }
}

/// Metrics of the whole process rather than of a shard (the XDP guard's kernel counters):
/// rendered once per scrape, after the shards'.
pub trait ProcessMetrics: Send + Sync {
    fn write_metrics(&self, out: &mut String);
}

/// Start the HTTP server on `address` for one driver. Returns the bound address (useful
/// with port 0).
pub fn spawn(
    address: SocketAddr,
    exchange: Arc<MetricsExchange>,
    wake: Arc<dyn Wake>,
) -> io::Result<SocketAddr> {
    spawn_with_control(
        address,
        vec![MetricsSource { exchange, wake }],
        None,
        Vec::new(),
    )
}

/// [`spawn`] for the shards of `sources` (shard `i` is `sources[i]`) and the `process`
/// metrics, also answering `POST` requests with `control`.
pub fn spawn_with_control(
    address: SocketAddr,
    sources: Vec<MetricsSource>,
    control: Option<Arc<dyn Control>>,
    process: Vec<Arc<dyn ProcessMetrics>>,
) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(address)?;
    let bound = listener.local_addr()?;
    thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        let control = control.as_deref();
                        if let Err(e) = answer(stream, &sources, &process, control) {
                            debug!(error = %e, "metrics request failed");
                        }
                    }
                    Err(e) => warn!(error = %e, "metrics listener error"),
                }
            }
        })?;
    Ok(bound)
}

fn answer(
    stream: TcpStream,
    sources: &[MetricsSource],
    process: &[Arc<dyn ProcessMetrics>],
    control: Option<&dyn Control>,
) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Skip the headers: nothing in them changes the answer.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => match scrape(sources) {
            Ok(mut text) => {
                for metrics in process {
                    metrics.write_metrics(&mut text);
                }
                ("200 OK", "text/plain; version=0.0.4; charset=utf-8", text)
            }
            Err(shard) => (
                "503 Service Unavailable",
                "text/plain",
                format!("forwarding thread (shard {shard}) did not answer in time\n"),
            ),
        },
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_owned()),
        ("GET", _) => ("404 Not Found", "text/plain", "try /metrics\n".to_owned()),
        ("POST", target) if control.is_some() => {
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let (code, mut body) = control.map_or((404, String::new()), |c| c.post(path, query));
            if !body.ends_with('\n') {
                body.push('\n');
            }
            (status_line(code), "text/plain", body)
        }
        _ => ("405 Method Not Allowed", "text/plain", String::new()),
    };
    let mut stream = &stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

/// Every source's rendering, merged; or the first shard that did not answer.
fn scrape(sources: &[MetricsSource]) -> Result<String, usize> {
    // Ask them all first, so the shards render in parallel.
    let tickets: Vec<u64> = sources
        .iter()
        .map(|s| s.exchange.ask(s.wake.as_ref()))
        .collect();
    let mut renderings = Vec::with_capacity(sources.len());
    for (shard, (source, ticket)) in sources.iter().zip(tickets).enumerate() {
        let text = source
            .exchange
            .wait(ticket, Duration::from_secs(2))
            .ok_or(shard)?;
        renderings.push(text);
    }
    Ok(merge_shards(renderings))
}

/// One exposition from the shards' renderings: each family once, its `# HELP` and
/// `# TYPE` first, then its samples from every shard, each labelled `shard="i"` (the
/// text format wants a family's samples together). One shard's rendering passes as is.
fn merge_shards(mut renderings: Vec<String>) -> String {
    if renderings.len() == 1 {
        return renderings.pop().unwrap_or_default();
    }
    struct Family<'a> {
        help: Option<&'a str>,
        kind: Option<&'a str>,
        samples: Vec<String>,
    }
    let mut order: Vec<&str> = Vec::new();
    let mut families: std::collections::HashMap<&str, Family<'_>> = Default::default();
    for (shard, text) in renderings.iter().enumerate() {
        for line in text.lines() {
            let (name, header) = if let Some(rest) = line.strip_prefix("# HELP ") {
                (rest.split(' ').next().unwrap_or(rest), Some(true))
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                (rest.split(' ').next().unwrap_or(rest), Some(false))
            } else if line.is_empty() || line.starts_with('#') {
                continue;
            } else {
                (line.split(['{', ' ']).next().unwrap_or(line), None)
            };
            let family = families.entry(name).or_insert_with(|| {
                order.push(name);
                Family {
                    help: None,
                    kind: None,
                    samples: Vec::new(),
                }
            });
            match header {
                Some(true) => {
                    family.help.get_or_insert(line);
                }
                Some(false) => {
                    family.kind.get_or_insert(line);
                }
                None => {
                    let rest = &line[name.len()..];
                    family.samples.push(match rest.strip_prefix('{') {
                        Some(labels) => format!("{name}{{shard=\"{shard}\",{labels}"),
                        None => format!("{name}{{shard=\"{shard}\"}}{rest}"),
                    });
                }
            }
        }
    }
    let mut out = String::new();
    for name in order {
        let family = &families[name];
        for line in family.help.iter().chain(&family.kind) {
            out.push_str(line);
            out.push('\n');
        }
        for sample in &family.samples {
            out.push_str(sample);
            out.push('\n');
        }
    }
    out
}

fn status_line(code: u16) -> &'static str {
    match code {
        200 => "200 OK",
        400 => "400 Bad Request",
        404 => "404 Not Found",
        409 => "409 Conflict",
        503 => "503 Service Unavailable",
        _ => "500 Internal Server Error",
    }
}

/// The value of `name` in a URL query (`a=1&b=x%2Fy`), percent-decoded, `+` as space.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key)? == name).then(|| percent_decode(value))?
    })
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A driver stand-in: a thread that serves the exchange whenever woken.
    struct Driver {
        exchange: Arc<MetricsExchange>,
        woken: AtomicBool,
    }

    impl Wake for Driver {
        fn wake(&self) {
            self.woken.store(true, Ordering::SeqCst);
            self.exchange.serve(|s| s.push_str("fanout_up 1\n"));
        }
    }

    #[test]
    fn serves_a_fresh_rendering_per_scrape() {
        let exchange = Arc::new(MetricsExchange::default());
        let driver = Arc::new(Driver {
            exchange: exchange.clone(),
            woken: AtomicBool::new(false),
        });
        let addr = spawn("127.0.0.1:0".parse().unwrap(), exchange, driver.clone()).unwrap();
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(response.ends_with("fanout_up 1\n"), "{response}");
        assert!(driver.woken.load(Ordering::SeqCst));
    }

    #[test]
    fn shards_merge_into_one_labelled_exposition() {
        let shard = |legs: u32, drops: u32| {
            format!(
                "# HELP fanout_legs Legs\n# TYPE fanout_legs gauge\nfanout_legs {legs}\n\
                 # HELP fanout_drops_total Drops\n# TYPE fanout_drops_total counter\n\
                 fanout_drops_total{{reason=\"auth\"}} {drops}\n"
            )
        };
        let merged = merge_shards(vec![shard(3, 1), shard(5, 0)]);
        assert_eq!(
            merged,
            "# HELP fanout_legs Legs\n# TYPE fanout_legs gauge\n\
             fanout_legs{shard=\"0\"} 3\nfanout_legs{shard=\"1\"} 5\n\
             # HELP fanout_drops_total Drops\n# TYPE fanout_drops_total counter\n\
             fanout_drops_total{shard=\"0\",reason=\"auth\"} 1\n\
             fanout_drops_total{shard=\"1\",reason=\"auth\"} 0\n"
        );
        assert_eq!(merge_shards(vec![shard(3, 1)]), shard(3, 1));
    }

    #[test]
    fn query_parameters_are_percent_decoded() {
        let q = "meeting=a%2Fb&participant=bob+smith&index=0&flag";
        assert_eq!(query_param(q, "meeting").as_deref(), Some("a/b"));
        assert_eq!(query_param(q, "participant").as_deref(), Some("bob smith"));
        assert_eq!(query_param(q, "index").as_deref(), Some("0"));
        assert_eq!(query_param(q, "flag").as_deref(), Some(""));
        assert_eq!(query_param(q, "encoding"), None);
        assert_eq!(query_param("x=%zz", "x"), None);
    }

    #[test]
    fn times_out_when_the_driver_does_not_answer() {
        struct Deaf;
        impl Wake for Deaf {
            fn wake(&self) {}
        }
        let exchange = MetricsExchange::default();
        assert_eq!(exchange.request(&Deaf, Duration::from_millis(10)), None);
    }
}
