//! What the forwarders' own Prometheus metrics say: read from each forwarder of a local
//! deployment at the end of a run (the report's `deployment` section), and during a run to
//! find a leaf of a webinar's relay tree (`kill = "relay"`).
//!
//! The load generator measures what participants see; the forwarders' counters say where
//! the work was done: which forwarder answered the NACKs, how many keyframe requests
//! reached the origin after each relay coalesced its viewers', how many relay links each
//! end holds. A forwarder's series are summed per family, keeping only the labels that
//! say *what* was counted (`direction` of a relay link end, `kind` rtp/rtcp), not *where*
//! (meeting, leg, link), so a snapshot stays small whatever the forwarder's size.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Labels kept when series are summed (see the module docs).
const KEPT_LABELS: [&str; 2] = ["direction", "kind"];
/// Gauges worth summing; every counter (`*_total`) is summed too. (The same reader serves
/// a local deployment's recorders: whether one has settled is in its last two gauges.)
const SUMMED_GAUGES: [&str; 7] = [
    "fanout_meetings",
    "fanout_legs",
    "fanout_tracks",
    "fanout_subscriptions",
    "fanout_relay_link_tracks",
    "fanout_recorder_open_recordings",
    "fanout_recorder_spool_backlog",
];
/// Relay link ends held, per direction: counted from the series of this per-link gauge.
const LINK_SERIES: &str = "fanout_relay_link_tracks";
/// Where the link-end counts go in a snapshot.
const LINK_ENDS: &str = "fanout_relay_links";
/// A scrape that takes longer than this has failed (a forwarder is local).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest exposition read (a forwarder with thousands of legs writes a few MB).
const MAX_BODY: u64 = 64 << 20;

/// One forwarder's metrics, summed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct ForwarderSnapshot {
    pub id: String,
    pub region: String,
    /// Killed during the run: no metrics.
    pub killed: bool,
    /// Family name (with the kept labels, e.g. `fanout_relay_links{direction="upstream"}`)
    /// to the sum of its series.
    pub metrics: BTreeMap<String, f64>,
    /// Cores the forwarder process used over the measured part of the run (user and
    /// system time from /proc over wall time; `None` if it could not be read).
    #[serde(default)]
    pub cpu_cores: Option<f64>,
}

impl ForwarderSnapshot {
    /// A summed value, 0 when absent.
    pub fn get(&self, key: &str) -> f64 {
        self.metrics.get(key).copied().unwrap_or(0.0)
    }

    /// Relay link ends of `direction` (`"upstream"`: fed by a parent; `"downstream"`:
    /// feeding a child).
    pub fn relay_links(&self, direction: &str) -> f64 {
        self.get(&format!("{LINK_ENDS}{{direction=\"{direction}\"}}"))
    }

    /// Runs relay nodes and feeds no other forwarder: a leaf of a relay tree.
    pub fn is_leaf_relay(&self) -> bool {
        !self.killed && self.relay_links("upstream") > 0.0 && self.relay_links("downstream") == 0.0
    }
}

/// Fetches `http://host:port/metrics` (HTTP/1.0: the body ends with the connection).
pub async fn scrape(url: &str) -> Result<String> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("not an http:// URL: {url}"))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, "metrics"));
    let fetch = async {
        let mut stream = TcpStream::connect(authority)
            .await
            .with_context(|| format!("cannot connect to {authority}"))?;
        stream
            .write_all(format!("GET /{path} HTTP/1.0\r\nHost: {authority}\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        stream.take(MAX_BODY).read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(SCRAPE_TIMEOUT, fetch)
        .await
        .with_context(|| format!("{url} did not answer within {SCRAPE_TIMEOUT:?}"))??;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{url}: no HTTP header"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("{url}: {status}");
    }
    Ok(body.to_owned())
}

/// Sums a Prometheus text exposition as the module docs describe.
pub fn summarize(exposition: &str) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    for line in exposition.lines() {
        let Some(sample) = Sample::parse(line) else {
            continue;
        };
        let key = sample.key();
        if sample.name == LINK_SERIES {
            if let Some(direction) = sample.label("direction") {
                *sums
                    .entry(format!("{LINK_ENDS}{{direction=\"{direction}\"}}"))
                    .or_insert(0.0) += 1.0;
            }
        }
        if sample.name.ends_with("_total") || SUMMED_GAUGES.contains(&sample.name) {
            *sums.entry(key).or_insert(0.0) += sample.value;
        }
    }
    sums
}

/// One line of an exposition: `name{label="value",...} number`.
#[derive(Debug, PartialEq)]
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, &'a str)>,
    value: f64,
}

impl<'a> Sample<'a> {
    /// `None` for comments, blank lines and lines it cannot read (label values with
    /// escaped quotes are read up to the escape: only the kept labels matter, and theirs
    /// are plain words).
    fn parse(line: &'a str) -> Option<Sample<'a>> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let (series, value) = line.rsplit_once(' ')?;
        let value: f64 = value.parse().ok()?;
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter_map(|pair| {
                let (key, value) = pair.split_once("=\"")?;
                Some((key.trim(), value.trim_end_matches('"')))
            })
            .collect();
        Some(Sample {
            name,
            labels,
            value,
        })
    }

    fn label(&self, key: &str) -> Option<&'a str> {
        self.labels.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    /// The family name with the kept labels.
    fn key(&self) -> String {
        let kept: Vec<String> = KEPT_LABELS
            .iter()
            .filter_map(|k| self.label(k).map(|v| format!("{k}=\"{v}\"")))
            .collect();
        if kept.is_empty() {
            self.name.to_owned()
        } else {
            format!("{}{{{}}}", self.name, kept.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = r#"# HELP fanout_legs Legs configured
# TYPE fanout_legs gauge
fanout_legs 3
fanout_leg_nack_requests_received_total{meeting="m/us-0",participant="p1",leg="1"} 5
fanout_leg_nack_requests_received_total{meeting="m/us-0",participant="p2",leg="2"} 7
fanout_leg_round_trip_seconds{meeting="m/us-0",participant="p1",leg="1"} 0.02
fanout_relay_link_tracks{meeting="m/us-0",link="us-0",direction="upstream"} 5
fanout_relay_link_tracks{meeting="m/us-0",link="us-1",direction="downstream"} 5
fanout_relay_link_tracks{meeting="m/us-0",link="us-2",direction="downstream"} 5
fanout_relay_link_packets_sent_total{meeting="m/us-0",link="us-1",direction="downstream",kind="rtp"} 100
fanout_relay_link_packets_sent_total{meeting="m/us-0",link="us-2",direction="downstream",kind="rtp"} 50
fanout_relay_link_packets_sent_total{meeting="m/us-0",link="us-2",direction="downstream",kind="rtcp"} 4
"#;

    #[test]
    fn sums_counters_and_chosen_gauges_by_kept_labels() {
        let s = summarize(EXPOSITION);
        assert_eq!(s["fanout_legs"], 3.0);
        assert_eq!(s["fanout_leg_nack_requests_received_total"], 12.0);
        assert!(!s.contains_key("fanout_leg_round_trip_seconds"));
        assert_eq!(
            s["fanout_relay_link_packets_sent_total{direction=\"downstream\",kind=\"rtp\"}"],
            150.0
        );
        assert_eq!(
            s["fanout_relay_link_packets_sent_total{direction=\"downstream\",kind=\"rtcp\"}"],
            4.0
        );
        assert_eq!(
            s["fanout_relay_link_tracks{direction=\"downstream\"}"],
            10.0
        );
    }

    #[test]
    fn leaf_relays_are_fed_and_feed_nobody() {
        let snapshot = |exposition: &str| ForwarderSnapshot {
            metrics: summarize(exposition),
            ..ForwarderSnapshot::default()
        };
        let ingress = snapshot(EXPOSITION);
        assert_eq!(ingress.relay_links("upstream"), 1.0);
        assert_eq!(ingress.relay_links("downstream"), 2.0);
        assert!(!ingress.is_leaf_relay());
        let leaf = snapshot(
            "fanout_relay_link_tracks{meeting=\"m/us-1\",link=\"us-1\",direction=\"upstream\"} 5\n",
        );
        assert!(leaf.is_leaf_relay());
        let origin = snapshot(
            "fanout_relay_link_tracks{meeting=\"m\",link=\"us-0\",direction=\"downstream\"} 5\n",
        );
        assert!(!origin.is_leaf_relay());
        assert!(!snapshot("fanout_legs 4\n").is_leaf_relay());
    }

    #[test]
    fn unreadable_lines_are_skipped() {
        let s = summarize("garbage\nfanout_x_total{a=\"b\" 3\nfanout_y_total NaNx\n{} 1\n");
        assert!(s.is_empty(), "{s:?}");
    }
}
