//! The hook between the WebSocket signaling of browsers (`api::web`, docs/webrtc.md) and
//! the WebRTC transport: SDP offers and answers of a participant's two peer connections,
//! and ICE restarts.
//!
//! The WebSocket layer authenticates each message (the participant's join), then calls one
//! method of a [`WebrtcNegotiator`] with the participant as a [`WebrtcPeer`]. The
//! negotiator owns the SDP and the per-leg state (ICE credentials, DTLS fingerprints,
//! m-sections and their revisions); the natural home of that state is the store, keyed by
//! [`WebrtcPeer::meeting`] and [`WebrtcPeer::participant`], so that any control instance
//! can serve the participant's next message.
//!
//! `fanout-control` uses [`BrowserNegotiator`](super::meetings::BrowserNegotiator), whose
//! state lives in the store. [`NoWebrtc`] refuses every offer with `FAILED_PRECONDITION`
//! and offers nothing: for tests of the signaling alone, and deployments that serve no
//! browsers; joining, events and every meeting operation work over the WebSocket without
//! it.

use std::fmt;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use super::meetings::Caller;
use super::{Code, ServiceError};
use crate::domain::{JoinClaims, MeetingId, ParticipantId};

/// One browser participant, authenticated by its join (token verified on every message).
#[derive(Debug, Clone)]
pub struct WebrtcPeer {
    pub meeting: MeetingId,
    pub participant: ParticipantId,
    /// The caller to pass to [`super::meetings::MeetingService`] (its token's claims).
    pub caller: Caller,
}

impl WebrtcPeer {
    /// The peer its verified join token speaks for.
    pub fn new(claims: JoinClaims) -> Self {
        WebrtcPeer {
            meeting: claims.meeting.clone(),
            participant: claims.participant.clone(),
            caller: Caller::Participant(claims),
        }
    }
}

/// Which of a browser's two peer connections (docs/webrtc.md, "Two peer connections").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Connection {
    /// `webrtc-pub`: the browser offers what it sends.
    Publish,
    /// `webrtc-sub`: the control plane offers what the browser receives.
    Subscribe,
}

/// An offer of the subscribe connection. `revision` increases with every offer to one
/// participant; the browser's answer names it, so an answer to an offer that a newer one
/// replaced is recognised and refused.
#[derive(Clone, PartialEq, Eq)]
pub struct SubscribeOffer {
    pub revision: u64,
    pub sdp: String,
}

impl fmt::Debug for SubscribeOffer {
    // SDP carries ICE passwords: never in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscribeOffer")
            .field("revision", &self.revision)
            .field("sdp", &format_args!("<{} bytes>", self.sdp.len()))
            .finish()
    }
}

/// Why a negotiation step failed. Nothing was changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NegotiationError {
    /// A meeting operation or the store failed (its own code).
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// This control plane cannot negotiate WebRTC (see [`NoWebrtc`]).
    #[error("{0}")]
    Unavailable(&'static str),
    /// The SDP is unusable (no BUNDLE, no DTLS fingerprint, an unsupported codec set...).
    /// The text must not quote the SDP (it holds ICE passwords).
    #[error("invalid SDP: {0}")]
    InvalidSdp(String),
    /// An answer to an offer a newer one replaced, or an answer with nothing offered.
    #[error("stale subscribe answer: revision {got}, current {current}")]
    StaleRevision { got: u64, current: u64 },
}

impl NegotiationError {
    /// The gRPC-named code the signaling sends in its `error` message.
    pub fn code(&self) -> Code {
        match self {
            NegotiationError::Service(e) => e.code(),
            NegotiationError::Unavailable(_) => Code::FailedPrecondition,
            NegotiationError::InvalidSdp(_) => Code::InvalidArgument,
            NegotiationError::StaleRevision { .. } => Code::FailedPrecondition,
        }
    }
}

/// The message of [`NoWebrtc`]'s refusals.
pub const NOT_AVAILABLE: &str = "WebRTC transport not available on this control plane";

/// What the WebSocket signaling calls for WebRTC. Each method is one client message of
/// docs/webrtc.md; the peer has been authenticated (token verified, meeting matched), but
/// whether they are still in the meeting, admitted, or allowed to publish is the
/// negotiator's to check (a waiting participant or a webinar attendee publishes nothing).
///
/// Every method has a default that refuses with [`NegotiationError::Unavailable`], so an
/// implementation states only what it supports.
pub trait WebrtcNegotiator: Send + Sync + fmt::Debug {
    /// `publish_offer`: the browser's offer for its publish connection; returns the answer
    /// (`publish_answer`). A new offer on the same connection (a screen share added or
    /// removed, an ICE restart) replaces the previous description.
    fn publish_offer<'a>(
        &'a self,
        peer: &'a WebrtcPeer,
        sdp: &'a str,
    ) -> BoxFuture<'a, Result<String, NegotiationError>> {
        let _ = (peer, sdp);
        Box::pin(async { Err(NegotiationError::Unavailable(NOT_AVAILABLE)) })
    }

    /// `subscribe_answer`: the browser's answer to subscribe offer `revision`.
    fn subscribe_answer<'a>(
        &'a self,
        peer: &'a WebrtcPeer,
        revision: u64,
        sdp: &'a str,
    ) -> BoxFuture<'a, Result<(), NegotiationError>> {
        let _ = (peer, revision, sdp);
        Box::pin(async { Err(NegotiationError::Unavailable(NOT_AVAILABLE)) })
    }

    /// `ice_restart`: new ICE credentials for one leg. For [`Connection::Publish`] the
    /// browser follows with a `publish_offer` made with `iceRestart: true`, answered with
    /// the new credentials; for [`Connection::Subscribe`] the negotiator sends a new offer
    /// through [`WebrtcNegotiator::subscribe_offers`].
    fn ice_restart<'a>(
        &'a self,
        peer: &'a WebrtcPeer,
        connection: Connection,
    ) -> BoxFuture<'a, Result<(), NegotiationError>> {
        let _ = (peer, connection);
        Box::pin(async { Err(NegotiationError::Unavailable(NOT_AVAILABLE)) })
    }

    /// The subscribe offers for `peer`, from now on, for as long as its WebSocket lives
    /// (called once per socket, after the join; a resumed socket calls it again and must
    /// get the current offer if its answer is outstanding). The stream ending means no
    /// more offers; an error item is sent to the browser as an `error` message.
    fn subscribe_offers<'a>(
        &'a self,
        peer: &'a WebrtcPeer,
    ) -> BoxFuture<
        'a,
        Result<BoxStream<'static, Result<SubscribeOffer, NegotiationError>>, NegotiationError>,
    > {
        let _ = peer;
        Box::pin(async {
            let none: BoxStream<'static, _> = Box::pin(futures::stream::empty());
            Ok(none)
        })
    }

    /// The participant is gone (left, denied, or its socket closed for good): drop its
    /// WebRTC state. Best effort; the default has none to drop.
    fn release<'a>(&'a self, peer: &'a WebrtcPeer) -> BoxFuture<'a, ()> {
        let _ = peer;
        Box::pin(async {})
    }
}

/// The negotiator of a control plane without the WebRTC transport: every offer and ICE
/// restart is refused with `FAILED_PRECONDITION` ([`NOT_AVAILABLE`]), nothing is offered.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoWebrtc;

impl WebrtcNegotiator for NoWebrtc {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Role, UnixMillis};

    fn peer() -> WebrtcPeer {
        WebrtcPeer::new(JoinClaims {
            meeting: MeetingId::new("m").unwrap(),
            participant: ParticipantId::new("p").unwrap(),
            role: Role::Panelist,
            expires_at: UnixMillis(u64::MAX),
        })
    }

    #[tokio::test]
    async fn no_webrtc_refuses_with_failed_precondition() {
        let n = NoWebrtc;
        let e = n.publish_offer(&peer(), "v=0").await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert_eq!(e.to_string(), NOT_AVAILABLE);
        let e = n.ice_restart(&peer(), Connection::Subscribe).await;
        assert_eq!(e.unwrap_err().code(), Code::FailedPrecondition);
        let mut offers = n.subscribe_offers(&peer()).await.unwrap();
        assert!(futures::StreamExt::next(&mut offers).await.is_none());
    }

    #[test]
    fn offers_keep_sdp_out_of_debug() {
        let o = SubscribeOffer {
            revision: 3,
            sdp: "a=ice-pwd:secretsecretsecret".into(),
        };
        assert!(!format!("{o:?}").contains("secret"));
    }
}
