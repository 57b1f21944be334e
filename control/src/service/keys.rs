//! The keyspace (docs/control-plane.md): every key the control plane writes, built here
//! and nowhere else. Keys are relative to the store's root (an `EtcdStore` adds its own
//! prefix, `/fanout/` by default). Ids are validated by the domain to `[A-Za-z0-9._-]`, so
//! they cannot contain the `/` that separates segments.

use crate::domain::{ForwarderId, MeetingId, ParticipantId, RecordingId};

/// The layout's version: a later layout can live beside this one during a migration.
const V: &str = "v1";

/// Every meeting document: `v1/meetings/`.
pub fn meetings() -> String {
    format!("{V}/meetings/")
}

/// A meeting and its stage.
pub fn meeting(meeting: &MeetingId) -> String {
    format!("{V}/meetings/{meeting}")
}

/// Every attendee of a webinar.
pub fn audience(meeting: &MeetingId) -> String {
    format!("{V}/audience/{meeting}/")
}

/// One attendee of a webinar.
pub fn attendee(meeting: &MeetingId, participant: &ParticipantId) -> String {
    format!("{V}/audience/{meeting}/{participant}")
}

/// Every participant's media transport (SRTP keys) of a meeting.
pub fn transports(meeting: &MeetingId) -> String {
    format!("{V}/transports/{meeting}/")
}

/// A participant's media transport: the SRTP keys the join handed out, which the
/// forwarder running the meeting needs too.
pub fn transport(meeting: &MeetingId, participant: &ParticipantId) -> String {
    format!("{V}/transports/{meeting}/{participant}")
}

/// Who sees an event: everyone, or hosts and the participant it is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventScope {
    Stage,
    Audience,
}

impl EventScope {
    fn segment(self) -> &'static str {
        match self {
            EventScope::Stage => "stage",
            EventScope::Audience => "audience",
        }
    }
}

/// Every event of a meeting (both scopes).
pub fn events(meeting: &MeetingId) -> String {
    format!("{V}/events/{meeting}/")
}

/// Events of one scope.
pub fn events_in(meeting: &MeetingId, scope: EventScope) -> String {
    format!("{V}/events/{meeting}/{}/", scope.segment())
}

/// One event; `id` is unique per event (a random id: the store's revision orders them).
pub fn event(meeting: &MeetingId, scope: EventScope, id: &str) -> String {
    format!("{V}/events/{meeting}/{}/{id}", scope.segment())
}

/// Every registered forwarder.
pub fn forwarders() -> String {
    format!("{V}/forwarders/")
}

/// A forwarder's registration (attached to its lease).
pub fn forwarder(forwarder: &ForwarderId) -> String {
    format!("{V}/forwarders/{forwarder}")
}

/// Every forwarder's last heartbeat.
pub fn loads() -> String {
    format!("{V}/load/")
}

/// A forwarder's last heartbeat (attached to its lease).
pub fn load(forwarder: &ForwarderId) -> String {
    format!("{V}/load/{forwarder}")
}

/// Every placement.
pub fn placements() -> String {
    format!("{V}/placements/")
}

/// Where a meeting runs.
pub fn placement(meeting: &MeetingId) -> String {
    format!("{V}/placements/{meeting}")
}

/// Every port given out on a forwarder.
pub fn ports(forwarder: &ForwarderId) -> String {
    format!("{V}/ports/{forwarder}/")
}

/// A port of a forwarder, claimed by one meeting: created (compare-absent) in the same
/// transaction as the placement that uses it, so two meetings can never get the same port.
pub fn port(forwarder: &ForwarderId, port: u16) -> String {
    format!("{V}/ports/{forwarder}/{port}")
}

/// Every relay of a webinar's tree.
pub fn relays(meeting: &MeetingId) -> String {
    format!("{V}/relays/{meeting}/")
}

/// Every relay of every webinar (failover follows them all).
pub fn all_relays() -> String {
    format!("{V}/relays/")
}

/// One relay node of a webinar's tree, by its node id (`super::relays::RelayId`), which
/// stays the same when failover moves the node to another forwarder: viewers and child
/// relays are assigned to the node, not to a forwarder.
pub fn relay(meeting: &MeetingId, relay: &str) -> String {
    format!("{V}/relays/{meeting}/{relay}")
}

/// Every viewer assignment of a webinar, on all its relays.
pub fn relay_viewers(meeting: &MeetingId) -> String {
    format!("{V}/relay_viewers/{meeting}/")
}

/// The viewers assigned to one relay node (what its forwarder serves).
pub fn relay_viewers_of(meeting: &MeetingId, relay: &str) -> String {
    format!("{V}/relay_viewers/{meeting}/{relay}/")
}

/// One viewer's assignment to a relay node: created in the transaction that claims its
/// seat ([`relay_seat`]), deleted with the seat.
pub fn relay_viewer(meeting: &MeetingId, relay: &str, participant: &ParticipantId) -> String {
    format!("{V}/relay_viewers/{meeting}/{relay}/{participant}")
}

/// Every seat of every webinar's relays (each control instance follows them to pick free
/// seats without asking).
pub fn all_relay_seats() -> String {
    format!("{V}/relay_seats/")
}

/// Every seat of a webinar's relays.
pub fn relay_seats(meeting: &MeetingId) -> String {
    format!("{V}/relay_seats/{meeting}/")
}

/// The seats of one relay node.
pub fn relay_seats_of(meeting: &MeetingId, relay: &str) -> String {
    format!("{V}/relay_seats/{meeting}/{relay}/")
}

/// Seat `seat` (below `max_viewers_per_relay`) of a relay node: created compare-absent in
/// the transaction that creates the viewer's assignment, deleted with it. The seat numbers
/// bound a node's viewers exactly, with no counter shared by the joins.
pub fn relay_seat(meeting: &MeetingId, relay: &str, seat: u32) -> String {
    format!("{V}/relay_seats/{meeting}/{relay}/{seat}")
}

/// One recording: its state, claim, attempts and output (`service::recordings`). Created
/// in the transaction that starts the recording, and never attached to a lease: it
/// outlives the meeting, the forwarder and any control instance.
pub fn recording(recording: &RecordingId) -> String {
    format!("{V}/recordings/{recording}")
}

/// Every recording of a meeting, by id ([`meeting_recording`]).
pub fn meeting_recordings(meeting: &MeetingId) -> String {
    format!("{V}/meeting_recordings/{meeting}/")
}

/// The index entry of one recording under its meeting, written with the record: a
/// meeting's recordings are listed without scanning every recording of the deployment.
pub fn meeting_recording(meeting: &MeetingId, recording: &RecordingId) -> String {
    format!("{V}/meeting_recordings/{meeting}/{recording}")
}

/// Every stitching job not yet done.
pub fn stitch_jobs() -> String {
    format!("{V}/stitch_jobs/")
}

/// The stitching job of a recording, present from its stop until it is READY or FAILED,
/// with the time it may next be claimed: workers scan only the jobs outstanding, not every
/// recording ever made.
pub fn stitch_job(recording: &RecordingId) -> String {
    format!("{V}/stitch_jobs/{recording}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_contain_their_keys_and_nothing_else() {
        let m = MeetingId::new("m1").unwrap();
        let m10 = MeetingId::new("m10").unwrap();
        let p = ParticipantId::new("p").unwrap();
        assert!(meeting(&m).starts_with(&meetings()));
        assert!(attendee(&m, &p).starts_with(&audience(&m)));
        assert!(transport(&m, &p).starts_with(&transports(&m)));
        // A prefix ends with `/`: meeting m1's audience is not m10's.
        assert!(!attendee(&m10, &p).starts_with(&audience(&m)));
        for scope in [EventScope::Stage, EventScope::Audience] {
            let key = event(&m, scope, "x");
            assert!(key.starts_with(&events_in(&m, scope)));
            assert!(key.starts_with(&events(&m)));
            assert!(!event(&m10, scope, "x").starts_with(&events(&m)));
        }
        let f = ForwarderId::new("f").unwrap();
        assert!(forwarder(&f).starts_with(&forwarders()));
        assert!(load(&f).starts_with(&loads()));
        assert!(placement(&m).starts_with(&placements()));
        assert!(relay(&m, "eu-0").starts_with(&relays(&m)));
        assert!(relays(&m).starts_with(&all_relays()));
        assert!(relay_viewer(&m, "eu-0", &p).starts_with(&relay_viewers_of(&m, "eu-0")));
        assert!(relay_viewers_of(&m, "eu-0").starts_with(&relay_viewers(&m)));
        // Node eu-0's viewers are not node eu-00's.
        assert!(!relay_viewer(&m, "eu-00", &p).starts_with(&relay_viewers_of(&m, "eu-0")));
        assert!(relay_seat(&m, "eu-0", 7).starts_with(&relay_seats_of(&m, "eu-0")));
        assert!(relay_seats_of(&m, "eu-0").starts_with(&relay_seats(&m)));
        assert!(relay_seats(&m).starts_with(&all_relay_seats()));
        assert!(!relay_seat(&m, "eu-00", 7).starts_with(&relay_seats_of(&m, "eu-0")));
        assert!(port(&f, 5).starts_with(&ports(&f)));
        let f1 = ForwarderId::new("f1").unwrap();
        assert!(!port(&f1, 5).starts_with(&ports(&f)));
        let r = RecordingId::new("r").unwrap();
        assert!(meeting_recording(&m, &r).starts_with(&meeting_recordings(&m)));
        assert!(!meeting_recording(&m10, &r).starts_with(&meeting_recordings(&m)));
        assert!(stitch_job(&r).starts_with(&stitch_jobs()));
        // Records, the meeting index and jobs are three separate prefixes.
        assert!(!recording(&r).starts_with(&stitch_jobs()));
        assert!(!meeting_recording(&m, &r).starts_with(&format!("{V}/recordings/")));
    }
}
