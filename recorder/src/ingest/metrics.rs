//! The ingest daemon's counters, shared by the receive loop and the uploads, and their
//! Prometheus rendering (served by the forwarder's exporter as process metrics).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use fanout_forwarder::exporter::ProcessMetrics;

use super::CloseReason;

/// Counters and gauges of one `fanout-recorder run`. Relaxed atomics: each is read on its
/// own, a scrape needs no consistent snapshot across them.
#[derive(Debug, Default)]
pub struct IngestMetrics {
    /// Datagrams read from the socket, well-formed or not.
    pub datagrams: AtomicU64,
    /// Bytes of those datagrams.
    pub bytes: AtomicU64,
    /// Packet messages accepted.
    pub packets: AtomicU64,
    /// End messages accepted.
    pub ends: AtomicU64,
    /// Packets accepted but not written: their chunk file could not be created or written.
    pub unwritten: AtomicU64,
    pub chunks_opened: AtomicU64,
    chunks_closed: [AtomicU64; CloseReason::ALL.len()],
    /// Chunks a previous run left in the spool, queued for upload at start.
    pub chunks_recovered: AtomicU64,
    pub chunks_uploaded: AtomicU64,
    pub uploaded_bytes: AtomicU64,
    /// Upload attempts that failed and were tried again.
    pub upload_retries: AtomicU64,
    /// Chunks given up on in this run: unreadable, or still not stored when the daemon
    /// stopped (those stay in the spool for the next run).
    pub chunks_failed: AtomicU64,
    /// Gauge: chunks closed (or recovered) and not yet stored.
    pub spool_backlog: AtomicU64,
    /// Gauge: recordings with an open chunk.
    pub open_recordings: AtomicU64,
    /// Seals stored: recordings whose chunks from this recorder are all in the store.
    pub seals_stored: AtomicU64,
    /// Gauge: seals asked for (a recording ended) and not yet stored: waiting for the
    /// recording's chunks, or being stored.
    pub seals_waiting: AtomicU64,
    /// Malformed datagrams by reason. Behind a lock: only bad input takes it.
    malformed: Mutex<BTreeMap<&'static str, u64>>,
}

impl IngestMetrics {
    pub fn count_malformed(&self, reason: &'static str) {
        let mut malformed = self
            .malformed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *malformed.entry(reason).or_default() += 1;
    }

    /// Malformed datagrams, all reasons.
    pub fn malformed_total(&self) -> u64 {
        let malformed = self
            .malformed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        malformed.values().sum()
    }

    pub fn count_closed(&self, reason: CloseReason) {
        let index = CloseReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or_default();
        self.chunks_closed[index].fetch_add(1, Ordering::Relaxed);
    }

    pub fn chunks_closed_total(&self) -> u64 {
        self.chunks_closed
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Lower a gauge without wrapping below zero.
    pub fn decrement(gauge: &AtomicU64) {
        let _ = gauge.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(1))
        });
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, value: &AtomicU64) {
    let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
}

impl ProcessMetrics for IngestMetrics {
    fn write_metrics(&self, out: &mut String) {
        let simple: [(&str, &str, &str, &AtomicU64); 14] = [
            ("fanout_recorder_datagrams_total", "counter", "Datagrams received on the tap socket.", &self.datagrams),
            ("fanout_recorder_received_bytes_total", "counter", "Bytes of the datagrams received.", &self.bytes),
            ("fanout_recorder_packets_total", "counter", "Tapped RTP packets accepted.", &self.packets),
            ("fanout_recorder_ends_total", "counter", "End messages accepted.", &self.ends),
            ("fanout_recorder_unwritten_packets_total", "counter", "Packets accepted but lost: their chunk file could not be created or written.", &self.unwritten),
            ("fanout_recorder_chunks_opened_total", "counter", "Chunks opened.", &self.chunks_opened),
            ("fanout_recorder_chunks_recovered_total", "counter", "Chunks a previous run left in the spool, queued for upload at start.", &self.chunks_recovered),
            ("fanout_recorder_chunks_uploaded_total", "counter", "Chunks stored and removed from the spool.", &self.chunks_uploaded),
            ("fanout_recorder_uploaded_bytes_total", "counter", "Bytes of the chunks stored.", &self.uploaded_bytes),
            ("fanout_recorder_upload_retries_total", "counter", "Chunk and seal uploads that failed and were tried again.", &self.upload_retries),
            ("fanout_recorder_chunks_failed_total", "counter", "Chunks given up on in this run (unreadable, or not stored by shutdown: left in the spool).", &self.chunks_failed),
            ("fanout_recorder_spool_backlog", "gauge", "Closed chunks waiting in the spool to be stored.", &self.spool_backlog),
            ("fanout_recorder_seals_stored_total", "counter", "Ended recordings sealed: every chunk of theirs from this recorder stored.", &self.seals_stored),
            ("fanout_recorder_seals_waiting", "gauge", "Ended recordings not yet sealed: their chunks are still being stored.", &self.seals_waiting),
        ];
        for (name, kind, help, value) in simple {
            family(out, name, kind, help);
            sample(out, name, value);
        }
        let name = "fanout_recorder_open_recordings";
        family(out, name, "gauge", "Recordings with an open chunk.");
        sample(out, name, &self.open_recordings);
        let name = "fanout_recorder_chunks_closed_total";
        family(out, name, "counter", "Chunks closed, by reason.");
        for (reason, count) in CloseReason::ALL.iter().zip(&self.chunks_closed) {
            let _ = writeln!(
                out,
                "{name}{{reason=\"{}\"}} {}",
                reason.label(),
                count.load(Ordering::Relaxed)
            );
        }
        let name = "fanout_recorder_malformed_total";
        family(
            out,
            name,
            "counter",
            "Datagrams dropped as malformed, by reason.",
        );
        let malformed = self
            .malformed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (reason, count) in malformed.iter() {
            let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {count}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_its_values() {
        let metrics = IngestMetrics::default();
        metrics.packets.fetch_add(7, Ordering::Relaxed);
        metrics.count_malformed("bad_magic");
        metrics.count_malformed("bad_magic");
        metrics.count_malformed("truncated");
        metrics.count_closed(CloseReason::End);
        metrics.spool_backlog.fetch_add(1, Ordering::Relaxed);
        IngestMetrics::decrement(&metrics.spool_backlog);
        IngestMetrics::decrement(&metrics.spool_backlog);
        let mut text = String::new();
        metrics.write_metrics(&mut text);
        for line in [
            "fanout_recorder_packets_total 7",
            "fanout_recorder_malformed_total{reason=\"bad_magic\"} 2",
            "fanout_recorder_malformed_total{reason=\"truncated\"} 1",
            "fanout_recorder_chunks_closed_total{reason=\"end\"} 1",
            "fanout_recorder_chunks_closed_total{reason=\"deadline\"} 0",
            "fanout_recorder_spool_backlog 0",
            "# TYPE fanout_recorder_open_recordings gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert_eq!(metrics.malformed_total(), 3);
        assert_eq!(metrics.chunks_closed_total(), 1);
    }
}
