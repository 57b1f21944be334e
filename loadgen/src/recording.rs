//! Recording during a run (`record = true` in the scenario; docs/recording.md).
//!
//! The run starts a recording (`StartRecording`, as the operator) for every recorded
//! meeting once it is created, and stops it (`StopRecording`) after the media ended. With
//! `--local` the deployment also runs one `fanout-recorder run` beside each forwarder
//! ([`crate::local`]), so the run can say whether the recording kept up: every packet the
//! forwarders' taps saw should reach a recorder and end up in an uploaded chunk. The
//! figures come from both sides' own counters, read once the recorders have closed and
//! uploaded their last chunks:
//!
//! * forwarder: `fanout_recording_packets_total` (queued for the recorder),
//!   `fanout_recording_dropped_packets_total` (the queue was full),
//!   `fanout_recording_unencodable_packets_total`, and the driver's
//!   `fanout_driver_recording_sent_total` / `fanout_driver_recording_dropped_total`
//!   (handed to, or refused by, the recorder's socket);
//! * recorder: `fanout_recorder_packets_total` (accepted), bytes, chunks closed and
//!   uploaded, and what it lost or left in its spool;
//! * the store: the chunk objects of each recording, counted in the local directory.
//!
//! A recording is lossy when the recorders accepted fewer packets than the taps saw:
//! [`RecordingReport::loss`].

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::forwarder_metrics::ForwarderSnapshot;

/// A recording the run started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartedRecording {
    /// The meeting's id in the control plane.
    pub meeting: String,
    /// What `StartRecording` answered: the recording's id (its chunks are stored under
    /// `recordings/{id}/`).
    pub recording_id: String,
    /// Chunk objects of this recording in the local store, and their bytes (`--local`;
    /// `None` against a deployment whose store this run cannot see).
    pub stored_chunks: Option<u64>,
    pub stored_bytes: Option<u64>,
}

/// A forwarder's recording counters at the end of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ForwarderTap {
    pub forwarder: String,
    /// Packets of recorded meetings queued for the recorder.
    pub packets: u64,
    /// Packets of recorded meetings not queued: the queue was full.
    pub queue_dropped: u64,
    /// Packets the tap format could not carry.
    pub unencodable: u64,
    /// Tap messages (packets and End markers) handed to the recorder's socket ...
    pub sent: u64,
    /// ... and lost there: the socket was full or the recorder absent.
    pub socket_dropped: u64,
}

impl ForwarderTap {
    /// The recording counters out of a forwarder's summed metrics.
    pub fn from_snapshot(snapshot: &ForwarderSnapshot) -> ForwarderTap {
        let n = |key: &str| snapshot.get(key) as u64;
        ForwarderTap {
            forwarder: snapshot.id.clone(),
            packets: n("fanout_recording_packets_total"),
            queue_dropped: n("fanout_recording_dropped_packets_total"),
            unencodable: n("fanout_recording_unencodable_packets_total"),
            sent: n("fanout_driver_recording_sent_total"),
            socket_dropped: n("fanout_driver_recording_dropped_total"),
        }
    }

    /// Packets of recorded meetings the forwarder saw: queued, dropped or unencodable.
    pub fn tapped(&self) -> u64 {
        self.packets + self.queue_dropped + self.unencodable
    }
}

/// What one local recorder counted at the end of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecorderFigures {
    /// The forwarder it sits beside (also its instance name in chunk keys).
    pub forwarder: String,
    pub datagrams: u64,
    /// Tap packets accepted.
    pub packets: u64,
    pub received_bytes: u64,
    /// Datagrams dropped as malformed (any reason).
    pub malformed: u64,
    /// Packets accepted but lost: their chunk file could not be written.
    pub unwritten_packets: u64,
    pub chunks_opened: u64,
    pub chunks_uploaded: u64,
    pub uploaded_bytes: u64,
    /// Chunks given up (unreadable, or not stored by shutdown).
    pub chunks_failed: u64,
    /// Still open, and closed but not yet stored, when read: 0 once settled.
    pub open_recordings: u64,
    pub spool_backlog: u64,
    /// Cores it used over the measured part of the run.
    pub cpu_cores: Option<f64>,
}

impl RecorderFigures {
    /// The figures out of a recorder's summed metrics.
    pub fn from_snapshot(forwarder: &str, snapshot: &ForwarderSnapshot) -> RecorderFigures {
        let n = |key: &str| snapshot.get(key) as u64;
        RecorderFigures {
            forwarder: forwarder.to_owned(),
            datagrams: n("fanout_recorder_datagrams_total"),
            packets: n("fanout_recorder_packets_total"),
            received_bytes: n("fanout_recorder_received_bytes_total"),
            malformed: n("fanout_recorder_malformed_total"),
            unwritten_packets: n("fanout_recorder_unwritten_packets_total"),
            chunks_opened: n("fanout_recorder_chunks_opened_total"),
            chunks_uploaded: n("fanout_recorder_chunks_uploaded_total"),
            uploaded_bytes: n("fanout_recorder_uploaded_bytes_total"),
            chunks_failed: n("fanout_recorder_chunks_failed_total"),
            open_recordings: n("fanout_recorder_open_recordings"),
            spool_backlog: n("fanout_recorder_spool_backlog"),
            cpu_cores: None,
        }
    }

    /// Nothing open and nothing waiting for the store.
    pub fn settled(&self) -> bool {
        self.open_recordings == 0 && self.spool_backlog == 0
    }
}

/// Everything about the run's recordings (the report's `recording`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordingReport {
    pub recordings: Vec<StartedRecording>,
    /// The local recorders' store (`--local`): `fanout-recorder stitch --store DIR
    /// --recording ID` makes a recording's file from it.
    pub store: Option<String>,
    /// Per forwarder and per recorder (`--local`; empty otherwise).
    pub forwarders: Vec<ForwarderTap>,
    pub recorders: Vec<RecorderFigures>,
    /// Packets of recorded meetings the forwarders saw, and those the recorders
    /// accepted and wrote (`--local`; 0 otherwise).
    pub tapped_packets: u64,
    pub recorded_packets: u64,
    /// Tapped packets that did not reach a chunk: dropped in a forwarder's queue or at
    /// the recorder's socket, malformed, or unwritten.
    pub lost_packets: u64,
    /// `lost_packets` as a fraction of `tapped_packets` (0 without local figures).
    pub loss: f64,
    pub chunks_uploaded: u64,
    pub uploaded_bytes: u64,
}

impl RecordingReport {
    /// Totals over the per-process figures.
    pub fn new(
        recordings: Vec<StartedRecording>,
        store: Option<String>,
        forwarders: Vec<ForwarderTap>,
        recorders: Vec<RecorderFigures>,
    ) -> RecordingReport {
        let tapped_packets: u64 = forwarders.iter().map(ForwarderTap::tapped).sum();
        let written: u64 = recorders
            .iter()
            .map(|r| r.packets.saturating_sub(r.unwritten_packets))
            .sum();
        // A recorder cannot accept more than was tapped, unless its counters outlived a
        // forwarder's (a killed forwarder reports nothing): never report negative loss.
        let recorded_packets = written.min(tapped_packets);
        let lost_packets = tapped_packets - recorded_packets;
        RecordingReport {
            loss: if tapped_packets == 0 {
                0.0
            } else {
                lost_packets as f64 / tapped_packets as f64
            },
            chunks_uploaded: recorders.iter().map(|r| r.chunks_uploaded).sum(),
            uploaded_bytes: recorders.iter().map(|r| r.uploaded_bytes).sum(),
            tapped_packets,
            recorded_packets,
            lost_packets,
            recordings,
            store,
            forwarders,
            recorders,
        }
    }
}

/// Chunk objects of `recording` in a local-directory store, and their bytes
/// (`recordings/{id}/chunks/*.chunk`, the layout of `fanout_recorder::store`).
pub fn stored_chunks(store: &Path, recording: &str) -> (u64, u64) {
    let dir = store.join("recordings").join(recording).join("chunks");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "chunk"))
        .filter_map(|e| e.metadata().ok())
        .fold((0, 0), |(n, bytes), m| (n + 1, bytes + m.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forwarder_metrics::summarize;

    fn snapshot(id: &str, exposition: &str) -> ForwarderSnapshot {
        ForwarderSnapshot {
            id: id.into(),
            metrics: summarize(exposition),
            ..ForwarderSnapshot::default()
        }
    }

    #[test]
    fn a_lossless_recording() {
        let forwarder = ForwarderTap::from_snapshot(&snapshot(
            "fwd-0",
            "fanout_recording_packets_total 1000\nfanout_recording_dropped_packets_total 0\n\
             fanout_driver_recording_sent_total 1001\nfanout_driver_recording_dropped_total 0\n",
        ));
        assert_eq!(forwarder.tapped(), 1000);
        let recorder = RecorderFigures::from_snapshot(
            "fwd-0",
            &snapshot(
                "rec",
                "fanout_recorder_packets_total 1000\nfanout_recorder_chunks_uploaded_total 3\n\
                 fanout_recorder_uploaded_bytes_total 90000\nfanout_recorder_spool_backlog 0\n\
                 fanout_recorder_open_recordings 0\n\
                 fanout_recorder_malformed_total{reason=\"bad_magic\"} 0\n",
            ),
        );
        assert!(recorder.settled());
        let report = RecordingReport::new(Vec::new(), None, vec![forwarder], vec![recorder]);
        assert_eq!(report.tapped_packets, 1000);
        assert_eq!(report.recorded_packets, 1000);
        assert_eq!(report.lost_packets, 0);
        assert_eq!(report.loss, 0.0);
        assert_eq!(report.chunks_uploaded, 3);
        assert_eq!(report.uploaded_bytes, 90000);
    }

    #[test]
    fn drops_on_either_side_are_loss() {
        let forwarders = vec![
            ForwarderTap {
                forwarder: "a".into(),
                packets: 900,
                queue_dropped: 100,
                sent: 850,
                socket_dropped: 50,
                ..ForwarderTap::default()
            },
            ForwarderTap {
                forwarder: "b".into(),
                packets: 1000,
                ..ForwarderTap::default()
            },
        ];
        let recorders = vec![
            RecorderFigures {
                forwarder: "a".into(),
                packets: 850,
                unwritten_packets: 10,
                ..RecorderFigures::default()
            },
            RecorderFigures {
                forwarder: "b".into(),
                packets: 1000,
                open_recordings: 1,
                ..RecorderFigures::default()
            },
        ];
        assert!(!recorders[1].settled());
        let report = RecordingReport::new(Vec::new(), None, forwarders, recorders);
        assert_eq!(report.tapped_packets, 2000);
        assert_eq!(report.recorded_packets, 1840);
        assert_eq!(report.lost_packets, 160);
        assert!((report.loss - 0.08).abs() < 1e-12);
    }

    #[test]
    fn no_local_figures_no_loss() {
        let report = RecordingReport::new(
            vec![StartedRecording {
                meeting: "m".into(),
                recording_id: "r".into(),
                stored_chunks: None,
                stored_bytes: None,
            }],
            None,
            Vec::new(),
            Vec::new(),
        );
        assert_eq!(report.loss, 0.0);
        assert_eq!(report.lost_packets, 0);
    }

    #[test]
    fn counts_chunk_objects_only() {
        let dir = tempfile::tempdir().unwrap();
        let chunks = dir.path().join("recordings/rec-1/chunks");
        std::fs::create_dir_all(&chunks).unwrap();
        std::fs::write(chunks.join("fwd-0-0000000001.chunk"), [0u8; 100]).unwrap();
        std::fs::write(chunks.join("fwd-0-0000000002.chunk"), [0u8; 50]).unwrap();
        // object_store's temporary upload files are not chunks.
        std::fs::write(chunks.join("fwd-0-0000000003.chunk#1"), [0u8; 7]).unwrap();
        assert_eq!(stored_chunks(dir.path(), "rec-1"), (2, 150));
        assert_eq!(stored_chunks(dir.path(), "absent"), (0, 0));
    }
}
