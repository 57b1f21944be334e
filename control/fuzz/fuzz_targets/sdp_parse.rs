//! SDP from browsers (the publish offer and the subscribe answer arrive over the
//! WebSocket): `SessionDescription::parse` on arbitrary text never panics and what it
//! accepts writes back to text that parses to the same description; an accepted publish
//! offer is answered with a description that parses, keeps every m-section in order with
//! its mid, and bundles exactly the accepted mids; `SubscribeAnswer::from_sdp` never
//! panics.
#![no_main]

use std::collections::BTreeMap;

use fanout_control::webrtc::sdp::{
    answer_publish, AnswerParams, Attributes, Fingerprint, IceCredentials, PublishOffer,
    SessionDescription, SubscribeAnswer,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = SubscribeAnswer::from_sdp(text);
    let Ok(sdp) = SessionDescription::parse(text) else {
        return;
    };
    let again = SessionDescription::parse(&sdp.to_sdp()).expect("what we write parses");
    assert_eq!(again, sdp);
    let Ok(offer) = PublishOffer::from_description(&sdp) else {
        return;
    };
    let params = AnswerParams {
        ice: IceCredentials::new("Fq3wX9kZ", "aB3dE5fG7hJ9kL1mN3pQ5rS7").expect("valid"),
        fingerprint: Fingerprint::parse(
            "sha-256 0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9:\
             0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9",
        )
        .expect("valid"),
        candidate: "192.0.2.1:50000".parse().expect("valid"),
        ice_lite: true,
        session_id: 1,
        session_version: 1,
        kinds: BTreeMap::new(),
    };
    let (answer, negotiated) = answer_publish(&offer, &params);
    let answer = SessionDescription::parse(&answer).expect("our answer parses");
    assert_eq!(answer.media.len(), offer.sections.len());
    for (answered, offered) in answer.media.iter().zip(&offer.sections) {
        assert_eq!(answered.attribute("mid"), offered.mid.as_deref());
    }
    let mids: Vec<&str> = negotiated.tracks.iter().map(|t| t.mid.as_str()).collect();
    match answer.attribute("group") {
        Some(group) => assert_eq!(group, format!("BUNDLE {}", mids.join(" "))),
        None => assert!(mids.is_empty()),
    }
});
