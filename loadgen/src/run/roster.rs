//! Who is in the run: every planned participant, what the control plane gave it, and what
//! it measured over all its sessions (a participant that leaves and rejoins is one row).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::control::Joined;
use crate::engine::{ParticipantKey, ParticipantOutcome};
use crate::stats::{PublisherStats, ReceiverStats};
use crate::Micros;

/// One participant's row.
#[derive(Debug, Default)]
pub struct Row {
    /// Its current session, while it is joined.
    pub joined: Option<Joined>,
    /// The first join's latency, in milliseconds; rejoins are measured in `rejoin_ms`.
    pub join_ms: Option<f64>,
    pub rejoin_ms: Vec<f64>,
    pub join_error: Option<String>,
    pub rejoins: u32,
    pub receiver: Option<ReceiverStats>,
    pub publisher: Option<PublisherStats>,
    pub connected_us: Micros,
    /// When the control plane last moved it to another forwarder (FORWARDER_CHANGED).
    pub moved_at: Option<Micros>,
    /// The forwarder that served it last (it stays after the participant left).
    pub forwarder: Option<String>,
    /// Times the control plane moved it to another forwarder.
    pub moves: u32,
}

impl Row {
    /// Fold in what one session measured.
    pub fn settle(&mut self, outcome: &ParticipantOutcome) {
        match &mut self.receiver {
            Some(receiver) => receiver.merge(&outcome.receiver),
            None => self.receiver = Some(outcome.receiver),
        }
        match (&mut self.publisher, &outcome.publisher) {
            (Some(total), Some(session)) => total.merge(session),
            (None, Some(session)) => self.publisher = Some(*session),
            _ => {}
        }
        self.connected_us += outcome.connected_us;
    }
}

/// All rows, and the index from the control plane's participant ids to them (for
/// FORWARDER_CHANGED, which names participants).
#[derive(Debug, Default)]
pub struct Roster {
    inner: Mutex<RosterInner>,
}

#[derive(Debug, Default)]
pub struct RosterInner {
    pub rows: Vec<Row>,
    pub by_participant_id: HashMap<String, ParticipantKey>,
}

impl Roster {
    pub fn new(participants: usize) -> Roster {
        Roster {
            inner: Mutex::new(RosterInner {
                rows: (0..participants).map(|_| Row::default()).collect(),
                by_participant_id: HashMap::new(),
            }),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, RosterInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl RosterInner {
    pub fn row(&mut self, key: ParticipantKey) -> &mut Row {
        &mut self.rows[key.0 as usize]
    }

    /// A session began.
    pub fn joined(&mut self, key: ParticipantKey, joined: Joined) {
        self.by_participant_id
            .insert(joined.participant_id.clone(), key);
        let row = self.row(key);
        let ms = joined.latency.as_secs_f64() * 1e3;
        if row.join_ms.is_none() {
            row.join_ms = Some(ms);
        } else {
            row.rejoin_ms.push(ms);
            row.rejoins += 1;
        }
        row.forwarder = Some(joined.forwarder_id.clone());
        row.joined = Some(joined);
    }

    /// A session ended; returns the join token to leave with.
    pub fn left(&mut self, key: ParticipantKey) -> Option<Joined> {
        let joined = self.row(key).joined.take()?;
        self.by_participant_id.remove(&joined.participant_id);
        Some(joined)
    }

    /// Participants currently on `forwarder_id`.
    pub fn on_forwarder(&self, forwarder_id: &str) -> Vec<ParticipantKey> {
        self.rows
            .iter()
            .enumerate()
            .filter(|(_, row)| {
                row.joined
                    .as_ref()
                    .is_some_and(|j| j.forwarder_id == forwarder_id)
            })
            .map(|(index, _)| ParticipantKey(index as u64))
            .collect()
    }

    /// Of the forwarders `eligible` accepts, the one serving the most joined participants.
    pub fn busiest_forwarder_of(&self, eligible: impl Fn(&str) -> bool) -> Option<String> {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for joined in self.rows.iter().filter_map(|r| r.joined.as_ref()) {
            if eligible(&joined.forwarder_id) {
                *counts.entry(joined.forwarder_id.as_str()).or_default() += 1;
            }
        }
        counts
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
            .map(|(id, _)| id.to_owned())
    }
}
