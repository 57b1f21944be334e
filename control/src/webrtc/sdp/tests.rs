//! Offers and answers of real browsers (fixtures/: a Chrome offer with audio, simulcast
//! camera, screen share and a data channel; a Firefox 99 offer with simulcast), and the
//! properties JSEP (RFC 9429) asks of our answers and offers.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

const CHROME_OFFER: &str = include_str!("fixtures/chrome_offer.sdp");
const FIREFOX_OFFER: &str = include_str!("fixtures/firefox_offer.sdp");

const LOCAL_UFRAG: &str = "Fq3wX9kZ";
const LOCAL_PWD: &str = "aB3dE5fG7hJ9kL1mN3pQ5rS7";
const FORWARDER_FP: &str = "sha-256 0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9:0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9";
const CHROME_FP: &str = "sha-256 33:C9:9E:47:E5:2A:14:04:F8:F7:79:BE:4A:87:C4:B8:47:D6:57:0B:54:0A:40:8B:84:15:1E:C0:C9:6F:B9:64";
const CANDIDATE: &str = "a=candidate:1 1 udp 2130706431 203.0.113.7 50000 typ host";

fn params() -> AnswerParams {
    AnswerParams {
        ice: IceCredentials::new(LOCAL_UFRAG, LOCAL_PWD).unwrap(),
        fingerprint: Fingerprint::parse(FORWARDER_FP).unwrap(),
        candidate: "203.0.113.7:50000".parse().unwrap(),
        ice_lite: true,
        session_id: 42,
        session_version: 1,
        kinds: BTreeMap::new(),
    }
}

fn crlf(text: &str) -> String {
    text.replace('\n', "\r\n")
}

fn answer(offer: &str) -> (SessionDescription, String, NegotiatedPublish) {
    let offer = PublishOffer::from_sdp(offer).unwrap();
    let (text, negotiated) = answer_publish(&offer, &params());
    let parsed = SessionDescription::parse(&text).unwrap();
    (parsed, text, negotiated)
}

fn values<'a>(media: &'a MediaDescription, name: &'a str) -> Vec<&'a str> {
    media.attribute_values(name).collect()
}

/// What every accepted m-section of a publish answer carries (RFC 9429 §5.3.1 with
/// docs/webrtc.md's roles).
fn assert_accepted_transport(media: &MediaDescription) {
    assert_eq!(media.port, 50000);
    assert_eq!(media.protocol, "UDP/TLS/RTP/SAVPF");
    assert_eq!(media.lines[0].value, "IN IP4 203.0.113.7");
    assert!(media.has_attribute("recvonly"));
    for direction in ["sendrecv", "sendonly", "inactive"] {
        assert!(!media.has_attribute(direction));
    }
    assert_eq!(media.attribute("setup"), Some("passive"));
    assert_eq!(media.attribute("ice-ufrag"), Some(LOCAL_UFRAG));
    assert_eq!(media.attribute("ice-pwd"), Some(LOCAL_PWD));
    assert_eq!(media.attribute("fingerprint"), Some(FORWARDER_FP));
    assert_eq!(
        values(media, "candidate"),
        [CANDIDATE.strip_prefix("a=candidate:").unwrap()]
    );
    assert!(media.has_attribute("end-of-candidates"));
    assert!(media.has_attribute("rtcp-mux"));
    // One codec, and for video its RTX (RFC 4588) when offered: one rtpmap each, every
    // rtcp-fb about the codec, the RTX fmtp naming the codec and nothing else.
    let pt = &media.formats[0];
    assert_eq!(values(media, "rtpmap").len(), media.formats.len());
    for value in values(media, "rtcp-fb") {
        assert!(value.starts_with(&format!("{pt} ")), "rtcp-fb:{value}");
    }
    match &media.formats[1..] {
        [] => {}
        [rtx] => {
            assert!(values(media, "rtpmap").contains(&format!("{rtx} rtx/90000").as_str()));
            assert!(values(media, "fmtp").contains(&format!("{rtx} apt={pt}").as_str()));
        }
        more => panic!("formats beyond the codec and its RTX: {more:?}"),
    }
    for value in values(media, "fmtp") {
        assert!(
            media
                .formats
                .iter()
                .any(|f| value.starts_with(&format!("{f} "))),
            "fmtp:{value}"
        );
    }
}

#[test]
fn chrome_offer_is_read() {
    let offer = PublishOffer::from_sdp(CHROME_OFFER).unwrap();
    assert_eq!(offer.ice.ufrag, "bIQJ");
    assert_eq!(offer.ice.pwd, "OQKiPkYpIOfGNxR1KUMNgo+N");
    assert_eq!(offer.fingerprint.as_str(), CHROME_FP);
    assert_eq!(offer.setup, Setup::ActPass);
    assert_eq!(offer.bundle, ["0", "1", "2", "3"]);
    assert_eq!(offer.sections.len(), 4);
    let camera = &offer.sections[1];
    assert_eq!(camera.kind, Some(MediaKind::Video));
    assert_eq!(camera.direction, Direction::SendOnly);
    assert_eq!(camera.codecs.len(), 13);
    let rtx = camera.codecs.iter().find(|c| c.payload_type == 97).unwrap();
    assert_eq!(rtx.apt, Some(96));
    let rids: Vec<&str> = camera.rids.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(rids, ["q", "h", "f"]);
    assert_eq!(camera.extmaps.len(), 13);
    assert_eq!(offer.sections[3].kind, None);
    // The same text with CRLF line ends reads the same.
    assert_eq!(PublishOffer::from_sdp(&crlf(CHROME_OFFER)).unwrap(), offer);
}

#[test]
fn chrome_offer_is_answered_as_jsep_requires() {
    let (sdp, text, negotiated) = answer(CHROME_OFFER);
    assert!(text.ends_with("\r\n") && !text.replace("\r\n", "").contains('\n'));
    assert!(sdp.has_attribute("ice-lite"));
    assert_eq!(sdp.attribute("group"), Some("BUNDLE 0 1 2"));
    assert_eq!(sdp.lines[1].value, "- 42 1 IN IP4 0.0.0.0");
    // Every offered m-section is answered, in order, with its mid and media.
    let mids: Vec<_> = sdp
        .media
        .iter()
        .map(|m| m.attribute("mid").unwrap())
        .collect();
    assert_eq!(mids, ["0", "1", "2", "3"]);
    let kinds: Vec<_> = sdp.media.iter().map(|m| m.media.as_str()).collect();
    assert_eq!(kinds, ["audio", "video", "video", "application"]);

    let audio = &sdp.media[0];
    assert_accepted_transport(audio);
    assert_eq!(audio.formats, ["111"]);
    assert_eq!(audio.attribute("rtpmap"), Some("111 opus/48000/2"));
    assert_eq!(
        audio.attribute("fmtp"),
        Some("111 minptime=10;useinbandfec=1")
    );
    assert_eq!(values(audio, "rtcp-fb"), ["111 transport-cc"]);
    assert_eq!(
        values(audio, "extmap"),
        [
            "1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
            "2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
            "3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
            "4 urn:ietf:params:rtp-hdrext:sdes:mid",
        ]
    );
    assert!(audio.has_attribute("rtcp-rsize"));
    assert!(!audio.has_attribute("simulcast"));

    let camera = &sdp.media[1];
    assert_accepted_transport(camera);
    assert_eq!(camera.formats, ["96", "97"]);
    assert_eq!(values(camera, "rtpmap"), ["96 VP8/90000", "97 rtx/90000"]);
    assert_eq!(
        values(camera, "rtcp-fb"),
        [
            "96 goog-remb",
            "96 transport-cc",
            "96 ccm fir",
            "96 nack",
            "96 nack pli"
        ]
    );
    assert_eq!(values(camera, "fmtp"), ["97 apt=96"]);
    // Header extensions the forwarder uses, with Chrome's ids; not the dependency
    // descriptor, video-layers-allocation, toffset, orientation, playout-delay, ...
    assert_eq!(
        values(camera, "extmap"),
        [
            "2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
            "3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
            "4 urn:ietf:params:rtp-hdrext:sdes:mid",
            "10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
            "11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
        ]
    );
    assert_eq!(values(camera, "rid"), ["q recv", "h recv", "f recv"]);
    assert_eq!(camera.attribute("simulcast"), Some("recv q;h;f"));
    assert!(!text.contains("a=ssrc"), "the answerer sends nothing");

    let screen = &sdp.media[2];
    assert_accepted_transport(screen);
    assert_eq!(screen.formats, ["96", "97"]);
    assert!(!screen.has_attribute("rid") && !screen.has_attribute("simulcast"));

    let data = &sdp.media[3];
    assert_eq!(data.port, 0);
    assert_eq!(data.protocol, "UDP/DTLS/SCTP");
    assert_eq!(data.formats, ["webrtc-datachannel"]);
    assert_eq!(data.attributes, [Attribute::new("mid", "3")]);

    assert_eq!(negotiated.remote_ice.ufrag, "bIQJ");
    assert_eq!(negotiated.remote_fingerprint.as_str(), CHROME_FP);
    assert_eq!(negotiated.tracks.len(), 3);
    let [mic, cam, screen] = &negotiated.tracks[..] else {
        unreachable!()
    };
    assert_eq!((mic.mid.as_str(), mic.kind), ("0", TrackKind::Audio));
    assert_eq!(mic.codec.payload_type, 111);
    assert_eq!(mic.codec.channels, Some(2));
    assert_eq!(mic.ssrcs, [1_923_158_012]);
    assert_eq!(mic.extensions.audio_level, Some(1));
    assert_eq!(mic.extensions.mid, Some(4));
    assert_eq!(mic.extensions.rid, None);
    assert!(mic.receiving);
    assert_eq!(
        mic.msid.as_ref().unwrap().track.as_deref(),
        Some("4dd21ddd-75b9-4ed5-b7dd-a92ef83c5774")
    );
    assert_eq!((cam.mid.as_str(), cam.kind), ("1", TrackKind::Camera));
    assert_eq!(cam.codec.name, "VP8");
    assert_eq!(cam.codec.rtx_payload_type, Some(97));
    assert_eq!(mic.codec.rtx_payload_type, None);
    assert_eq!(cam.codec.clock_rate, 90_000);
    assert_eq!(cam.rids, ["q", "h", "f"]);
    assert!(cam.ssrcs.is_empty());
    assert_eq!(
        cam.extensions,
        ExtensionIds {
            mid: Some(4),
            rid: Some(10),
            repaired_rid: Some(11),
            audio_level: None,
            transport_cc: Some(3),
            abs_send_time: Some(2),
        }
    );
    assert_eq!((screen.mid.as_str(), screen.kind), ("2", TrackKind::Screen));
    // The RTX SSRC of the FID group is not a media SSRC.
    assert_eq!(screen.ssrcs, [2_843_129_455]);
    assert!(screen.rids.is_empty());
    assert_eq!(negotiated.rejected.len(), 1);
    assert_eq!(negotiated.rejected[0].mid.as_deref(), Some("3"));
    assert!(negotiated.rejected[0].reason.contains("application"));
}

#[test]
fn firefox_offer_is_answered_as_jsep_requires() {
    let offer = PublishOffer::from_sdp(FIREFOX_OFFER).unwrap();
    // Firefox writes the fingerprint at session level only.
    assert_eq!(
        offer.fingerprint.as_str(),
        "sha-256 44:84:41:8F:B7:A3:B7:37:BA:00:26:5E:B1:D6:AB:D0:56:56:CF:53:F2:05:DB:99:DE:D4:1C:63:A4:68:58:EA"
    );
    assert_eq!(offer.ice.ufrag, "e163e2b8");
    let (sdp, _, negotiated) = answer(FIREFOX_OFFER);
    assert!(sdp.has_attribute("ice-lite"));
    assert_eq!(sdp.attribute("group"), Some("BUNDLE 0 1"));

    let audio = &sdp.media[0];
    assert_accepted_transport(audio);
    assert_eq!(audio.formats, ["109"]);
    assert_eq!(audio.attribute("rtpmap"), Some("109 opus/48000/2"));
    assert_eq!(
        audio.attribute("fmtp"),
        Some("109 maxplaybackrate=48000;stereo=1;useinbandfec=1")
    );
    // csrc-audio-level is `/recvonly` from Firefox: of no use to a receiver.
    assert_eq!(
        values(audio, "extmap"),
        [
            "1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
            "3 urn:ietf:params:rtp-hdrext:sdes:mid",
        ]
    );

    let video = &sdp.media[1];
    assert_accepted_transport(video);
    assert_eq!(video.formats, ["120", "124"]);
    assert_eq!(values(video, "rtpmap"), ["120 VP8/90000", "124 rtx/90000"]);
    assert_eq!(
        values(video, "fmtp"),
        ["120 max-fs=12288;max-fr=60", "124 apt=120"]
    );
    // `a=extmap:8/sendonly` is answered `/recvonly` (RFC 8285 §6).
    assert_eq!(
        values(video, "extmap"),
        [
            "3 urn:ietf:params:rtp-hdrext:sdes:mid",
            "4 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
            "7 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
            "8/recvonly urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
            "9/recvonly urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
        ]
    );
    assert_eq!(
        values(video, "rid"),
        ["high recv", "medium recv", "low recv"]
    );
    assert_eq!(video.attribute("simulcast"), Some("recv high;medium;low"));

    let video_track = &negotiated.tracks[1];
    assert_eq!(video_track.kind, TrackKind::Camera);
    assert_eq!(video_track.codec.payload_type, 120);
    // Simulcast order as offered (Firefox lists highest first).
    assert_eq!(video_track.rids, ["high", "medium", "low"]);
    assert!(video_track.ssrcs.is_empty());
    assert_eq!(video_track.extensions.rid, Some(8));
    assert_eq!(negotiated.tracks[0].ssrcs, [357_877_601]);
    assert!(negotiated.rejected.is_empty());
}

#[test]
fn answers_reparse_as_descriptions_equal_to_themselves() {
    for offer in [CHROME_OFFER, FIREFOX_OFFER] {
        let (sdp, text, _) = answer(offer);
        assert_eq!(sdp.to_sdp(), text);
    }
}

/// Replaces the first line starting with `from` (or removes it when `to` is empty).
fn edit(text: &str, from: &str, to: &str) -> String {
    let mut done = false;
    text.lines()
        .filter_map(|line| {
            if !done && line.starts_with(from) {
                done = true;
                (!to.is_empty()).then(|| to.to_owned())
            } else {
                Some(line.to_owned())
            }
        })
        .map(|line| line + "\n")
        .collect()
}

/// Replaces (or removes) every line starting with `from`.
fn edit_all(text: &str, from: &str, to: &str) -> String {
    text.lines()
        .filter_map(|line| {
            if line.starts_with(from) {
                (!to.is_empty()).then(|| to.to_owned())
            } else {
                Some(line.to_owned())
            }
        })
        .map(|line| line + "\n")
        .collect()
}

#[test]
fn missing_or_wrong_transport_is_an_error_that_names_the_place() {
    let cases = [
        (
            edit_all(CHROME_OFFER, "a=setup:", "a=setup:passive"),
            "m-section 0 (mid 0): a=setup:passive in an offer",
        ),
        (
            edit_all(CHROME_OFFER, "a=ice-ufrag:", ""),
            "m-section 0 (mid 0): missing a=ice-ufrag",
        ),
        (
            edit_all(FIREFOX_OFFER, "a=fingerprint:", ""),
            "m-section 0 (mid 0): missing a=fingerprint",
        ),
        (
            edit(
                FIREFOX_OFFER,
                "a=fingerprint:",
                "a=fingerprint:sha-256 AB:CD",
            ),
            "session level: invalid a=fingerprint: \"sha-256 AB:CD\"",
        ),
        (
            edit(CHROME_OFFER, "a=group:BUNDLE", ""),
            "session level: missing a=group:BUNDLE",
        ),
        (
            CHROME_OFFER.replacen("5edceb321cfc\na=rtcp-mux\n", "5edceb321cfc\n", 1),
            "m-section 1 (mid 1): missing a=rtcp-mux",
        ),
        (
            edit(CHROME_OFFER, "a=mid:1", ""),
            "m-section 1: missing a=mid",
        ),
        (
            edit(CHROME_OFFER, "a=mid:1", "a=mid:0"),
            "m-section 1 (mid 0): invalid a=mid (used twice): \"0\"",
        ),
        (
            edit(CHROME_OFFER, "a=rtpmap:96", "a=rtpmap:96 VP8"),
            "m-section 1 (mid 1): invalid a=rtpmap: \"96 VP8\"",
        ),
        (
            edit(CHROME_OFFER, "a=simulcast:", "a=simulcast:send q;x;f"),
            "",
        ),
    ];
    for (text, expected) in cases {
        match PublishOffer::from_sdp(&text) {
            Err(error) => {
                let message = error.to_string();
                assert!(message.starts_with(expected), "{message}");
            }
            Ok(offer) => {
                // A simulcast stream without its a=rid line: the m-section is rejected.
                assert!(expected.is_empty());
                let (_, negotiated) = answer_publish(&offer, &params());
                assert_eq!(negotiated.rejected[0].mid.as_deref(), Some("1"));
                assert!(negotiated.rejected[0].reason.contains("`x`"));
            }
        }
    }
}

#[test]
fn the_pwd_is_never_echoed_in_errors() {
    let text = edit_all(CHROME_OFFER, "a=ice-pwd:", "a=ice-pwd:short secret");
    let message = PublishOffer::from_sdp(&text).unwrap_err().to_string();
    assert!(
        message.contains("a=ice-pwd") && !message.contains("secret"),
        "{message}"
    );
}

#[test]
fn active_setup_is_accepted_and_answered_passive() {
    let text = edit_all(CHROME_OFFER, "a=setup:", "a=setup:active");
    let (sdp, _, _) = answer(&text);
    assert!(sdp.media[..3]
        .iter()
        .all(|m| m.attribute("setup") == Some("passive")));
}

/// The camera m-section of the Chrome offer offering only the given payload types.
fn camera_offering(formats: &str) -> String {
    edit(
        CHROME_OFFER,
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97 98",
        &format!("m=video 9 UDP/TLS/RTP/SAVPF {formats}"),
    )
}

#[test]
fn video_codec_preference_is_vp8_vp9_h264_keeping_the_browser_pt() {
    let cases = [
        ("102 96 98", "96 VP8/90000", None),
        ("102 98 100", "98 VP9/90000", Some("98 profile-id=0")),
        (
            "45 100 102 103",
            "102 H264/90000",
            Some("102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"),
        ),
    ];
    for (formats, rtpmap, fmtp) in cases {
        let (sdp, _, negotiated) = answer(&camera_offering(formats));
        let camera = &sdp.media[1];
        assert_eq!(camera.attribute("rtpmap"), Some(rtpmap), "{formats}");
        assert_eq!(camera.attribute("fmtp"), fmtp, "{formats}");
        // Only the chosen codec's RTX, and only when offered in the m= line.
        let pt = rtpmap.split(' ').next().unwrap();
        let rtx = negotiated.tracks[1].codec.rtx_payload_type;
        let expected_rtx = match pt {
            "96" | "98" => None, // 97 and 99 are not in these m= lines
            _ => Some(103),
        };
        assert_eq!(rtx, expected_rtx, "{formats}");
        let mut expected_formats = vec![pt.to_owned()];
        expected_formats.extend(rtx.map(|r| r.to_string()));
        assert_eq!(camera.formats, expected_formats);
        assert_eq!(
            negotiated.tracks[1].codec.payload_type.to_string(),
            camera.formats[0]
        );
    }
    // VP9 profile 2, AV1 and RTX alone: nothing to accept, the m-section gets port 0 and
    // leaves the BUNDLE group.
    let (sdp, _, negotiated) = answer(&camera_offering("100 45 97"));
    assert_eq!(sdp.media[1].port, 0);
    assert_eq!(sdp.media[1].formats, ["100", "45", "97"]);
    assert_eq!(sdp.attribute("group"), Some("BUNDLE 0 2"));
    assert!(negotiated.rejected[0].reason.contains("no supported codec"));
    assert_eq!(
        negotiated.tracks[1].kind,
        TrackKind::Camera,
        "first accepted video"
    );
}

#[test]
fn h264_needs_packetization_mode_1_and_a_known_profile() {
    let offer = |fmtp: &str| {
        let text = edit(
            &camera_offering("102"),
            "a=fmtp:102 level-asymmetry-allowed",
            &format!("a=fmtp:102 {fmtp}"),
        );
        answer(&text).0.media[1].port != 0
    };
    assert!(offer(
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
    ));
    assert!(offer("packetization-mode=1;profile-level-id=42001f"));
    assert!(offer("packetization-mode=1;profile-level-id=4d001f"));
    assert!(offer("packetization-mode=1;profile-level-id=42E034"));
    assert!(!offer("profile-level-id=42e01f"));
    assert!(!offer("packetization-mode=0;profile-level-id=42e01f"));
    assert!(!offer("packetization-mode=1;profile-level-id=640c1f"));
    assert!(!offer("packetization-mode=1"));
}

#[test]
fn simulcast_order_pauses_and_pt_restrictions_are_mirrored() {
    let text = edit(CHROME_OFFER, "a=simulcast:", "a=simulcast:send f;~h;q");
    let (sdp, _, negotiated) = answer(&text);
    assert_eq!(sdp.media[1].attribute("simulcast"), Some("recv f;~h;q"));
    assert_eq!(values(&sdp.media[1], "rid"), ["f recv", "h recv", "q recv"]);
    assert_eq!(negotiated.tracks[1].rids, ["f", "h", "q"]);

    // A rid restricted to H.264 cannot be received once VP8 is chosen.
    let text = edit(CHROME_OFFER, "a=rid:h send", "a=rid:h send pt=102");
    let (sdp, _, negotiated) = answer(&text);
    assert_eq!(sdp.media[1].attribute("simulcast"), Some("recv q;f"));
    assert_eq!(negotiated.tracks[1].rids, ["q", "f"]);

    // Without the RID header extension the forwarder cannot tell encodings apart: no
    // simulcast in the answer, the browser sends one encoding.
    let text = edit(CHROME_OFFER, "a=extmap:10 ", "");
    let (sdp, _, negotiated) = answer(&text);
    assert!(!sdp.media[1].has_attribute("simulcast"));
    assert!(!sdp.media[1].has_attribute("rid"));
    assert!(negotiated.tracks[1].rids.is_empty());
}

#[test]
fn extension_ids_beyond_one_byte_headers_are_not_accepted() {
    let text = edit(
        CHROME_OFFER,
        "a=extmap:10 ",
        "a=extmap:15 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    );
    let (_, _, negotiated) = answer(&text);
    assert_eq!(negotiated.tracks[1].extensions.rid, None);

    // Without the transport-wide-cc extension, no transport-cc feedback either.
    let text = edit_all(CHROME_OFFER, "a=extmap:3 ", "");
    let (sdp, _, negotiated) = answer(&text);
    assert_eq!(negotiated.tracks[1].extensions.transport_cc, None);
    assert_eq!(
        values(&sdp.media[1], "rtcp-fb"),
        ["96 goog-remb", "96 ccm fir", "96 nack", "96 nack pli"]
    );
    assert!(values(&sdp.media[0], "rtcp-fb").is_empty());
}

#[test]
fn stopped_and_bundle_only_sections() {
    // Port 0 without bundle-only: stopped by the browser, answered with port 0.
    let text = edit(
        CHROME_OFFER,
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103",
        "m=video 0 UDP/TLS/RTP/SAVPF 96 97 102 103",
    );
    let (sdp, _, negotiated) = answer(&text);
    assert_eq!(sdp.media[2].port, 0);
    assert_eq!(sdp.attribute("group"), Some("BUNDLE 0 1"));
    assert!(negotiated.rejected[0].reason.contains("stopped"));

    // Port 0 with bundle-only (Firefox's max-bundle): part of the group, accepted.
    let text = edit(
        FIREFOX_OFFER,
        "m=video 9 UDP/TLS/RTP/SAVPF",
        "m=video 0 UDP/TLS/RTP/SAVPF 120 124 121 125 126 127 97 98\na=bundle-only",
    );
    let (sdp, _, negotiated) = answer(&text);
    assert_eq!(sdp.media[1].port, 50000);
    assert_eq!(negotiated.tracks.len(), 2);

    // A live m-section outside the BUNDLE group would need a transport of its own.
    let text = edit(CHROME_OFFER, "a=group:BUNDLE", "a=group:BUNDLE 0 1 3");
    let (sdp, _, negotiated) = answer(&text);
    assert_eq!(sdp.media[2].port, 0);
    assert_eq!(negotiated.rejected[0].reason, "not in the BUNDLE group");
}

#[test]
fn a_track_no_longer_sent_is_answered_inactive() {
    // Chrome turns a transceiver whose track was removed into recvonly.
    let text = CHROME_OFFER.replacen(
        "a=sendonly\na=msid:2bcd08db-9e74-421c-a679-f505bbe3b7d8 9f1c",
        "a=recvonly\na=msid:2bcd08db-9e74-421c-a679-f505bbe3b7d8 9f1c",
        1,
    );
    let (sdp, _, negotiated) = answer(&text);
    assert!(sdp.media[2].has_attribute("inactive"));
    assert!(!sdp.media[2].has_attribute("recvonly"));
    assert!(!negotiated.tracks[2].receiving);
    assert!(negotiated.tracks[1].receiving);
}

#[test]
fn the_caller_can_say_which_video_is_the_screen() {
    let offer = PublishOffer::from_sdp(CHROME_OFFER).unwrap();
    let mut params = params();
    params.kinds.insert("1".into(), TrackKind::Screen);
    let (_, negotiated) = answer_publish(&offer, &params);
    assert_eq!(negotiated.tracks[1].kind, TrackKind::Screen);
    // The other video is then the first by the default rule.
    assert_eq!(negotiated.tracks[2].kind, TrackKind::Camera);
}

#[test]
fn ipv6_candidate() {
    let offer = PublishOffer::from_sdp(FIREFOX_OFFER).unwrap();
    let mut params = params();
    params.candidate = "[2001:db8::7]:50002".parse().unwrap();
    let (text, _) = answer_publish(&offer, &params);
    assert!(text.contains("c=IN IP6 2001:db8::7\r\n"));
    assert!(text.contains("a=candidate:1 1 udp 2130706431 2001:db8::7 50002 typ host\r\n"));
    assert!(text.contains("m=audio 50002 UDP/TLS/RTP/SAVPF 109\r\n"));
}

fn subscribe_params() -> SubscribeParams {
    let track = |mid: &str, codec, ssrc, track_id: &str| {
        SubscribeSlot::Track(SubscribeTrack {
            mid: mid.into(),
            codec,
            ssrc,
            cname: "p-alice".into(),
            stream_id: "p-alice".into(),
            track_id: track_id.into(),
        })
    };
    SubscribeParams {
        ice: IceCredentials::new(LOCAL_UFRAG, LOCAL_PWD).unwrap(),
        fingerprint: Fingerprint::parse(FORWARDER_FP).unwrap(),
        candidate: "203.0.113.7:50000".parse().unwrap(),
        ice_lite: true,
        session_id: 7,
        session_version: 3,
        transport_cc: false,
        slots: vec![
            track("0", SubscribeCodec::Opus, 1111, "alice-mic"),
            SubscribeSlot::Stopped {
                mid: "1".into(),
                kind: MediaKind::Video,
            },
            track("2", SubscribeCodec::Vp8, 2222, "alice-cam"),
            track("3", SubscribeCodec::H264, 3333, "alice-screen"),
        ],
    }
}

#[test]
fn subscribe_offer_is_what_jsep_and_docs_webrtc_ask() {
    let text = offer_subscribe(&subscribe_params()).unwrap();
    let sdp = SessionDescription::parse(&text).unwrap();
    assert_eq!(sdp.to_sdp(), text);
    assert_eq!(sdp.lines[1].value, "- 7 3 IN IP4 0.0.0.0");
    assert!(sdp.has_attribute("ice-lite"));
    // Stopped slots stay, out of the BUNDLE group.
    assert_eq!(sdp.attribute("group"), Some("BUNDLE 0 2 3"));
    let mids: Vec<_> = sdp
        .media
        .iter()
        .map(|m| m.attribute("mid").unwrap())
        .collect();
    assert_eq!(mids, ["0", "1", "2", "3"]);

    let stopped = &sdp.media[1];
    assert_eq!((stopped.media.as_str(), stopped.port), ("video", 0));
    assert!(stopped.has_attribute("inactive"));
    assert!(!stopped.has_attribute("ice-ufrag"));

    for (index, pt, rtpmap) in [
        (0, "111", "111 opus/48000/2"),
        (2, "96", "96 VP8/90000"),
        (3, "102", "102 H264/90000"),
    ] {
        let media = &sdp.media[index];
        assert_eq!(media.port, 50000);
        assert_eq!(media.formats, [pt]);
        assert!(media.has_attribute("sendonly"));
        assert_eq!(media.attribute("setup"), Some("actpass"));
        assert_eq!(media.attribute("ice-ufrag"), Some(LOCAL_UFRAG));
        assert_eq!(media.attribute("fingerprint"), Some(FORWARDER_FP));
        assert!(media.has_attribute("rtcp-mux"));
        assert_eq!(media.attribute("rtpmap"), Some(rtpmap));
        assert_eq!(values(media, "candidate").len(), 1);
        assert!(media.has_attribute("end-of-candidates"));
    }
    let audio = &sdp.media[0];
    assert_eq!(
        values(audio, "extmap"),
        [
            "1 urn:ietf:params:rtp-hdrext:sdes:mid",
            "2 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        ]
    );
    assert!(values(audio, "rtcp-fb").is_empty());
    assert_eq!(audio.attribute("msid"), Some("p-alice alice-mic"));
    assert_eq!(
        values(audio, "ssrc"),
        ["1111 cname:p-alice", "1111 msid:p-alice alice-mic"]
    );
    let camera = &sdp.media[2];
    assert_eq!(
        values(camera, "extmap"),
        ["1 urn:ietf:params:rtp-hdrext:sdes:mid"]
    );
    assert_eq!(
        values(camera, "rtcp-fb"),
        ["96 nack", "96 nack pli", "96 ccm fir"]
    );
    assert_eq!(
        sdp.media[3].attribute("fmtp"),
        Some("102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f")
    );

    let mut with_cc = subscribe_params();
    with_cc.transport_cc = true;
    let sdp = SessionDescription::parse(&offer_subscribe(&with_cc).unwrap()).unwrap();
    assert!(values(&sdp.media[2], "rtcp-fb").contains(&"96 transport-cc"));
    assert!(values(&sdp.media[2], "extmap")
        .contains(&"3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"));
}

#[test]
fn subscribe_offer_refuses_text_that_breaks_sdp() {
    let mut params = subscribe_params();
    if let SubscribeSlot::Track(track) = &mut params.slots[0] {
        track.cname = "two words".into();
    }
    assert!(offer_subscribe(&params)
        .unwrap_err()
        .to_string()
        .contains("cname"));
    let mut params = subscribe_params();
    params.slots.push(SubscribeSlot::Stopped {
        mid: "2".into(),
        kind: MediaKind::Audio,
    });
    assert!(offer_subscribe(&params)
        .unwrap_err()
        .to_string()
        .contains("used twice"));
}

/// Chrome's answer to our subscribe offer, as Chrome writes answers (transport
/// attributes in each m-section, port 9, rejected m-section kept with port 0).
fn chrome_subscribe_answer(setup: &str) -> String {
    let transport = format!(
        "c=IN IP4 0.0.0.0\na=rtcp:9 IN IP4 0.0.0.0\na=ice-ufrag:x9Qe\n\
         a=ice-pwd:fVb8Pf0V2o1bXy5Yy9VhCwtA\na=ice-options:trickle\n\
         a=fingerprint:{CHROME_FP}\na=setup:{setup}\n"
    );
    format!(
        "v=0\no=- 4611731400430051336 2 IN IP4 127.0.0.1\ns=-\nt=0 0\n\
         a=group:BUNDLE 0 2\na=msid-semantic: WMS\n\
         m=audio 9 UDP/TLS/RTP/SAVPF 111\n{transport}a=mid:0\n\
         a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\na=recvonly\na=rtcp-mux\n\
         a=rtpmap:111 opus/48000/2\na=fmtp:111 minptime=10;useinbandfec=1\n\
         m=video 0 UDP/TLS/RTP/SAVPF 96\nc=IN IP4 0.0.0.0\na=mid:1\na=inactive\n\
         m=video 9 UDP/TLS/RTP/SAVPF 96\n{transport}a=mid:2\na=recvonly\na=rtcp-mux\n\
         a=rtpmap:96 VP8/90000\na=rtcp-fb:96 nack\n\
         m=video 0 UDP/TLS/RTP/SAVPF 102\nc=IN IP4 0.0.0.0\na=mid:3\n"
    )
}

#[test]
fn subscribe_answer_is_read() {
    let answer = SubscribeAnswer::from_sdp(&chrome_subscribe_answer("active")).unwrap();
    assert_eq!(answer.ice.ufrag, "x9Qe");
    assert_eq!(answer.fingerprint.as_str(), CHROME_FP);
    let accepted: Vec<_> = answer.sections.iter().map(|s| s.accepted).collect();
    assert_eq!(accepted, [true, false, true, false]);
    assert_eq!(answer.receiving_mids().collect::<Vec<_>>(), ["0", "2"]);
    assert_eq!(answer.sections[1].direction, Direction::Inactive);

    for setup in ["passive", "actpass"] {
        let error = SubscribeAnswer::from_sdp(&chrome_subscribe_answer(setup)).unwrap_err();
        assert!(matches!(error, SdpError::Unsupported { .. }), "{error}");
        assert!(error.to_string().contains("must answer active"));
    }
    let no_fingerprint = edit_all(&chrome_subscribe_answer("active"), "a=fingerprint", "");
    assert_eq!(
        SubscribeAnswer::from_sdp(&no_fingerprint)
            .unwrap_err()
            .to_string(),
        "m-section 0 (mid 0): missing a=fingerprint"
    );
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics_the_interpreters(text in "(?s).{0,600}") {
        if let Ok(offer) = PublishOffer::from_sdp(&text) {
            let _ = answer_publish(&offer, &params());
        }
        let _ = SubscribeAnswer::from_sdp(&text);
    }

    /// Real offers with lines dropped or cut: never a panic, and whatever is accepted
    /// is answered with a description that parses, has one m-section per offered one,
    /// in order, and a BUNDLE group of exactly the accepted mids.
    #[test]
    fn damaged_browser_offers_never_panic_and_answers_stay_valid(
        firefox in any::<bool>(),
        drops in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        cut in any::<prop::sample::Index>(),
        cut_at in 0usize..40,
    ) {
        let source = if firefox { FIREFOX_OFFER } else { CHROME_OFFER };
        let mut lines: Vec<String> = source.lines().map(str::to_owned).collect();
        for drop in drops {
            if lines.len() > 1 {
                let index = drop.index(lines.len() - 1) + 1;
                lines.remove(index);
            }
        }
        let index = cut.index(lines.len());
        let keep = lines[index].len().min(cut_at.max(1));
        lines[index].truncate(keep);
        let text = lines.join("\n");
        if let Ok(offer) = PublishOffer::from_sdp(&text) {
            let (answer, negotiated) = answer_publish(&offer, &params());
            let answer = SessionDescription::parse(&answer).unwrap();
            prop_assert_eq!(answer.media.len(), offer.sections.len());
            for (answered, offered) in answer.media.iter().zip(&offer.sections) {
                prop_assert_eq!(answered.attribute("mid"), offered.mid.as_deref());
            }
            let mids: Vec<&str> = negotiated.tracks.iter().map(|t| t.mid.as_str()).collect();
            if mids.is_empty() {
                prop_assert!(answer.attribute("group").is_none());
            } else {
                prop_assert_eq!(answer.attribute("group").unwrap(), format!("BUNDLE {}", mids.join(" ")));
            }
        }
    }
}

#[test]
fn rtx_is_accepted_only_where_the_forwarder_can_tell_what_it_repairs() {
    // Without the repaired-RID extension, a simulcast camera's RTX streams cannot be told
    // apart: no RTX, the browser resends on the media SSRCs. The screen share (one
    // encoding, named by its MID) keeps RTX.
    let text = edit(
        CHROME_OFFER,
        "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
        "",
    );
    let (sdp, _, negotiated) = answer(&text);
    assert_eq!(sdp.media[1].formats, ["96"]);
    assert_eq!(negotiated.tracks[1].codec.rtx_payload_type, None);
    assert_eq!(sdp.media[2].formats, ["96", "97"]);
    assert_eq!(negotiated.tracks[2].codec.rtx_payload_type, Some(97));
    // Without the MID extension nothing is bound at all, RTX included.
    let text = edit_all(
        CHROME_OFFER,
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        "",
    );
    let (sdp, _, negotiated) = answer(&text);
    assert!(negotiated
        .tracks
        .iter()
        .all(|t| t.codec.rtx_payload_type.is_none()));
    assert!(sdp
        .media
        .iter()
        .all(|m| !m.formats.contains(&"97".to_owned())));
}
