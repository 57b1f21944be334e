//! `fanout-loadgen run --local` end to end: the real binary starts a control plane on the
//! memory store and forwarder processes, joins simulated participants through gRPC, plays
//! SRTP media through user-space impairments, and writes its JSON report. The tests check
//! the report's numbers against what the scenario injected.

use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use fanout_tests::forwarder::{deployment_binary_dir, loadgen_binary, recorder_binary};
use fanout_tests::process::Proc;
use fanout_tests::report::number;
use serde_json::Value;

const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// What a run left: its exit code, JSON report, standard output (the human report) and
/// per-participant lines.
struct Run {
    code: i32,
    report: Value,
    stdout: String,
    participants: Vec<Value>,
}

/// Run `fanout-loadgen run` on `scenario` (TOML text) with extra arguments.
fn loadgen(scenario: &str, extra: &[&str]) -> Result<Run> {
    loadgen_watching(scenario, extra, |_| Ok(()))
}

/// [`loadgen`], calling `during` on the running process.
fn loadgen_watching(
    scenario: &str,
    extra: &[&str],
    during: impl FnOnce(&mut Proc) -> Result<()>,
) -> Result<Run> {
    // One run at a time: each is a whole deployment measuring latency and loss, and two
    // at once on a small machine measure each other.
    static ONE_RUN_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_RUN_AT_A_TIME
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    // Built before the run, so the run finds them next to itself.
    let bin_dir = deployment_binary_dir()?;
    let dir = tempfile::tempdir()?;
    let scenario_path = dir.path().join("scenario.toml");
    std::fs::write(&scenario_path, scenario)?;
    let report_path = dir.path().join("report.json");
    let participants_path = dir.path().join("participants.jsonl");
    let mut command = Command::new(loadgen_binary()?);
    command
        .arg("run")
        .arg(&scenario_path)
        .arg("--local")
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--json")
        .arg(&report_path)
        .arg("--participants")
        .arg(&participants_path)
        .args(["--progress-interval", "1"])
        .args(extra);
    let mut proc = Proc::spawn("fanout-loadgen", command)?;
    during(&mut proc)?;
    let status = proc.wait_timeout(RUN_TIMEOUT)?;
    let code = status.code().unwrap_or(-1);
    let stderr = proc.stderr();
    let text = std::fs::read_to_string(&report_path).with_context(|| {
        format!(
            "no JSON report (exit {code}); stderr:\n{}",
            fanout_tests::process::tail(&stderr)
        )
    })?;
    let report: Value = serde_json::from_str(&text)?;
    let participants = std::fs::read_to_string(&participants_path)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    Ok(Run {
        code,
        report,
        stdout: proc.stdout(),
        participants,
    })
}

fn scrape(address: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

/// Two meetings of four (two publish audio and video) through 2 % loss each way, NACK
/// on: the receivers see the loss before retransmission and repair nearly all of it.
#[test]
fn injected_loss_is_repaired_by_retransmission() {
    let scenario = r#"
name = "lossy-test"
duration_s = 10
seed = 7

[[meetings]]
count = 2
participants = 4
publishers = 2

[media.video]
simulcast = [{ bitrate_kbps = 400, fps = 15 }]

[receivers]
nack = true

[[impairments]]
region = "*"
direction = "both"
loss = 0.02
delay_ms = 10
"#;
    let Run {
        code,
        report,
        stdout,
        participants,
    } = loadgen(scenario, &[]).unwrap();
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(number(&report, "participants"), 8.0);
    // Every participant's own figures agree with the totals.
    assert_eq!(participants.len(), 8);
    let packets: f64 = participants
        .iter()
        .map(|p| number(p, "receiver.packets"))
        .sum();
    assert_eq!(packets, number(&report, "packets_received"));
    assert_eq!(number(&report, "join_failures"), 0.0);
    assert_eq!(
        number(&report, "participants_without_media"),
        0.0,
        "{report:#}"
    );
    // 2 % up and 2 % down compound to about 4 % before retransmission...
    let before = number(&report, "loss_before_rtx");
    assert!(
        (0.015..0.08).contains(&before),
        "loss before rtx {before}: {report:#}"
    );
    // ... and retransmission repairs all but a trace.
    let after = number(&report, "loss_after_rtx");
    assert!(after < 0.001, "loss after rtx {after}: {report:#}");
    // Audio is not retransmitted: its loss is what the path lost.
    let audio = number(&report, "audio_loss");
    assert!(
        (0.015..0.08).contains(&audio),
        "audio loss {audio}: {report:#}"
    );
    assert!(number(&report, "nacks_sent") > 0.0);
    assert_eq!(number(&report, "invalid"), 0.0, "{report:#}");
    // 10 ms each way through the forwarder: latency at least the delay, well under 100 ms.
    let p50 = number(&report, "latency_ms.p50");
    assert!(
        (10.0..100.0).contains(&p50),
        "p50 latency {p50}: {report:#}"
    );
    // The human report went to standard output.
    assert!(stdout.contains("loss"), "{stdout}");
}

/// The shipped smoke scenario runs clean, its live metrics can be scraped, and a
/// `--fail-if` condition that holds makes the exit code 2 (for pipelines) while still
/// writing the report.
#[test]
fn smoke_scenario_runs_clean_with_metrics_and_fail_if_sets_the_exit_code() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../loadgen/scenarios/smoke.toml");
    let scenario = std::fs::read_to_string(&path).unwrap();
    let Run { code, report, .. } = loadgen_watching(
        &scenario,
        &[
            "--set",
            "duration_s=5",
            "--fail-if",
            "p99_latency_ms >= 0",
            "--metrics",
            "127.0.0.1:0",
        ],
        |proc| {
            let address =
                proc.wait_stderr(Duration::from_secs(60), "the metrics address", |text| {
                    let rest = text.split_once("metrics at http://")?.1;
                    Some(rest.split_once("/metrics")?.0.to_owned())
                })?;
            proc.wait_stderr(Duration::from_secs(60), "the end of the joins", |text| {
                text.contains("joins done").then_some(())
            })?;
            let metrics = scrape(&address);
            assert!(
                metrics.contains("fanout_loadgen_participants_joined 14"),
                "{metrics}"
            );
            assert!(
                metrics.contains("fanout_loadgen_packets_sent_total "),
                "{metrics}"
            );
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(code, 2, "a --fail-if that holds exits 2: {report:#}");
    assert_eq!(
        number(&report, "participants_without_media"),
        0.0,
        "{report:#}"
    );
    assert_eq!(number(&report, "loss_after_rtx"), 0.0, "{report:#}");
    assert!(number(&report, "packets_received") > 0.0);
    for key in [
        "scenario",
        "participants",
        "duration_s",
        "join_ms",
        "latency_ms",
        "loss_before_rtx",
        "loss_after_rtx",
        "jitter_ms_p99",
        "freezes_per_min",
        "participants_without_media",
    ] {
        assert!(report.get(key).is_some(), "report lacks {key}: {report:#}");
    }
}

/// `record = true`: the load generator starts a recording for each recorded meeting, the
/// local deployment runs a `fanout-recorder` beside the forwarder, and the report shows
/// what the forwarder tapped reaching the recorder and stored chunks of the recordings it
/// names, with every packet accounted for. A meeting that opts out is not tapped.
#[test]
fn a_recorded_run_reaches_the_recorder_and_the_store() {
    // `run --local` looks for the recorder next to the other binaries.
    let recorder = recorder_binary().unwrap();
    let bin_dir = deployment_binary_dir().unwrap();
    assert_eq!(recorder.parent(), Some(bin_dir.as_path()));
    let store = tempfile::tempdir().unwrap();
    let scenario = r#"
name = "recorded"
duration_s = 6
record = true

# Two recorded meetings of ten: two on camera, one talking.
[[meetings]]
count = 2
participants = 10
publishers = 2
audio_publishers = 1

# Not recorded: both publish.
[[meetings]]
participants = 2
record = false

[media.video]
simulcast = [{ bitrate_kbps = 100, fps = 10 }, { bitrate_kbps = 300, fps = 15 }]
"#;
    let store_arg = store.path().to_str().unwrap();
    let Run {
        code,
        report,
        stdout,
        participants,
    } = loadgen(
        scenario,
        &[
            "--recordings-dir",
            store_arg,
            // Not `> 0`: a recorder descheduled for a few tens of milliseconds on a busy
            // machine loses packets at its socket (a Unix datagram socket queues only
            // net.unix.max_dgram_qlen datagrams, 10 by default), and the report must say
            // so; the accounting below holds either way.
            "--fail-if",
            "recording_loss > 0.05",
        ],
    )
    .unwrap();
    assert_eq!(
        code, 0,
        "at most 5% of the recording lost: {report:#}\n{stdout}"
    );
    assert_eq!(number(&report, "participants_without_media"), 0.0);
    let recording = &report["recording"];
    let recordings = recording["recordings"].as_array().unwrap();
    assert_eq!(recordings.len(), 2, "{recording:#}");

    let mut recorded_meetings = Vec::new();
    let mut stored_chunks = 0.0;
    let mut stored_bytes = 0.0;
    for started in recordings {
        let meeting = started["meeting"].as_str().unwrap();
        assert!(
            meeting.ends_with("-m-0001") || meeting.ends_with("-m-0002"),
            "{meeting}"
        );
        recorded_meetings.push(meeting.to_owned());
        let id = started["recording_id"].as_str().unwrap();
        assert!(!id.is_empty());
        assert!(
            stdout.contains(id),
            "the human report names {id}:\n{stdout}"
        );
        // The chunks the report counted are in the store, under the recording's id.
        let chunks = std::fs::read_dir(store.path().join("recordings").join(id).join("chunks"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "chunk")
            })
            .count();
        assert!(chunks >= 1, "{started:#}");
        assert_eq!(number(started, "stored_chunks"), chunks as f64);
        stored_chunks += number(started, "stored_chunks");
        stored_bytes += number(started, "stored_bytes");
    }
    assert_ne!(
        recordings[0]["recording_id"], recordings[1]["recording_id"],
        "one recording per meeting"
    );

    // What the recorded meetings' publishers sent is what the forwarder tapped (no loss
    // here, so nothing was retransmitted), and what the recorder did not get is what the
    // forwarder counted as dropped.
    let sent: f64 = participants
        .iter()
        .filter(|p| recorded_meetings.iter().any(|m| p["meeting"] == m.as_str()))
        .filter(|p| !p["publisher"].is_null())
        .map(|p| number(p, "publisher.packets"))
        .sum();
    let sent_by_all = number(&report, "publishers.packets");
    let tapped = number(recording, "tapped_packets");
    assert!(sent > 0.0 && sent < sent_by_all, "{sent} of {sent_by_all}");
    assert!(
        tapped <= sent && tapped >= 0.95 * sent,
        "tapped {tapped} of {sent} sent in the recorded meetings: {recording:#}"
    );
    let recorded = number(recording, "recorded_packets");
    let lost = number(recording, "lost_packets");
    assert_eq!(recorded + lost, tapped, "{recording:#}");
    assert!(recorded >= 0.95 * tapped, "{recording:#}");

    // One recorder, beside the one forwarder: its own counters agree.
    let recorders = recording["recorders"].as_array().unwrap();
    assert_eq!(recorders.len(), 1, "{recording:#}");
    let recorder = &recorders[0];
    assert_eq!(number(recorder, "packets"), recorded);
    assert_eq!(number(recorder, "unwritten_packets"), 0.0);
    assert_eq!(number(recorder, "malformed"), 0.0);
    assert!(number(recorder, "received_bytes") > 0.0);
    assert_eq!(
        number(recorder, "open_recordings"),
        0.0,
        "settled: {recorder:#}"
    );
    assert_eq!(
        number(recorder, "spool_backlog"),
        0.0,
        "settled: {recorder:#}"
    );
    assert_eq!(number(recorder, "chunks_failed"), 0.0);
    assert_eq!(number(recorder, "chunks_uploaded"), stored_chunks);
    assert_eq!(number(recorder, "uploaded_bytes"), stored_bytes);
    let forwarder = &recording["forwarders"][0];
    assert_eq!(
        number(forwarder, "queue_dropped") + number(forwarder, "socket_dropped"),
        lost,
        "every lost packet is one the forwarder counted: {recording:#}"
    );
    // The recorder read every datagram the forwarder handed over: the packets, and the
    // End of each recording unless its socket was full then too.
    let datagrams = number(recorder, "datagrams");
    assert_eq!(datagrams, number(forwarder, "sent"), "{recording:#}");
    assert!(
        datagrams >= recorded && datagrams <= recorded + 2.0,
        "{recording:#}"
    );
    assert!(stdout.contains("\nRecording\n"), "{stdout}");
}

/// Killing the busiest forwarder mid-run: the control plane moves its meetings (the
/// participants follow FORWARDER_CHANGED), every affected participant gets media back, and
/// the report says how long the gap was.
#[test]
fn a_killed_forwarder_is_reported_with_its_recovery() {
    let scenario = r#"
name = "failover-test"
duration_s = 12
seed = 3

[[meetings]]
count = 4
participants = 3

[[failures]]
at_s = 3
kill = "forwarder"

[local]
forwarders = 2
lease_ttl_ms = 1500
"#;
    let Run { code, report, .. } = loadgen(scenario, &[]).unwrap();
    assert_eq!(code, 0);
    let failure = &report["failures"][0];
    assert!(
        failure["what"]
            .as_str()
            .unwrap()
            .starts_with("kill forwarder"),
        "{report:#}"
    );
    let affected = number(failure, "affected");
    assert!(affected > 0.0, "{report:#}");
    assert_eq!(number(failure, "recovered"), affected, "{report:#}");
    // Detection takes the lease (1.5 s); the move and the first packets a little more.
    let recovery = number(failure, "recovery_ms.max");
    assert!(
        (500.0..8_000.0).contains(&recovery),
        "recovery {recovery} ms: {report:#}"
    );
    assert!(number(failure, "gap_ms.max") >= 500.0, "{report:#}");
    assert_eq!(
        number(&report, "participants_without_media"),
        0.0,
        "{report:#}"
    );
}

/// A forwarder's summed counter from the report's `deployment` section (0 if absent).
fn counter(forwarder: &Value, key: &str) -> f64 {
    forwarder["metrics"][key].as_f64().unwrap_or(0.0)
}

/// The camera encoding a viewer got the most packets of.
fn main_layer(participant: &Value) -> usize {
    let by_encoding = participant["receiver"]["camera_packets_by_encoding"]
        .as_array()
        .expect("camera packets by encoding");
    (0..by_encoding.len())
        .max_by_key(|&i| (by_encoding[i].as_u64().unwrap_or(0), std::cmp::Reverse(i)))
        .unwrap_or(0)
}

/// The repository's webinar-relays scenario: 2,000 viewers on a three-level relay tree
/// (origin, a regional ingress, edge relays) with 1 % loss on their downlinks, three
/// downlink estimates, and a leaf relay killed mid-run. Media reaches every viewer, each
/// relay picks layers per viewer, the relays answer the NACKs (the origin is asked for
/// nothing: nothing is lost between forwarders), keyframe requests are coalesced on the
/// way up, and only the killed relay's viewers see a gap, which ends within 5 s of its
/// lease expiring.
#[test]
fn webinar_through_a_three_level_relay_tree() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../loadgen/scenarios/webinar-relays.toml");
    let scenario = std::fs::read_to_string(&path).unwrap();
    let Run {
        code,
        report,
        stdout,
        participants,
    } = loadgen(&scenario, &[]).unwrap();
    assert_eq!(code, 0, "{stdout}");
    let n = |path: &str| number(&report, path);

    // Delivery.
    assert_eq!(n("joined"), 2001.0, "{stdout}");
    assert_eq!(n("participants_without_media"), 0.0, "{stdout}");
    assert_eq!(n("invalid"), 0.0, "{stdout}");
    assert!(n("loss_before_rtx") > 0.005, "1 % is injected: {stdout}");
    assert!(n("loss_after_rtx") < 0.005, "repaired: {stdout}");

    // The tree: the origin feeds two ingress relays, which feed edge relays.
    let deployment = report["deployment"].as_array().expect("deployment");
    let links = |f: &Value, direction: &str| {
        counter(
            f,
            &format!("fanout_relay_links{{direction=\"{direction}\"}}"),
        )
    };
    let origin = deployment
        .iter()
        .find(|f| links(f, "upstream") == 0.0 && links(f, "downstream") > 0.0)
        .unwrap_or_else(|| panic!("no origin: {stdout}"));
    let relays: Vec<&Value> = deployment
        .iter()
        .filter(|f| f["killed"] == false && links(f, "upstream") > 0.0)
        .collect();
    assert!(
        relays.iter().any(|f| links(f, "downstream") > 0.0),
        "an ingress (fed and feeding): {stdout}"
    );
    assert!(
        relays.iter().any(|f| links(f, "downstream") == 0.0),
        "an edge relay: {stdout}"
    );

    // NACKs are answered below the origin: the relays resend from their caches, and no
    // repair comes from above them (nothing is lost between forwarders on loopback).
    // Known residual: some viewer NACKs that a relay cannot map to a packet it holds
    // still travel up and are asked of the origin, which cannot answer them either (its
    // retransmissions stay 0); issue 8's notes have the investigation.
    let nacked: f64 = participants
        .iter()
        .map(|p| p["receiver"]["nacked_packets"].as_f64().unwrap())
        .sum();
    let origin_asked = counter(
        origin,
        "fanout_relay_link_nack_requests_received_total{direction=\"downstream\"}",
    );
    let origin_resent = counter(origin, "fanout_leg_retransmitted_packets_total");
    let relays_resent: f64 = relays
        .iter()
        .map(|f| counter(f, "fanout_leg_retransmitted_packets_total"))
        .sum();
    assert!(nacked > 1000.0, "{stdout}");
    assert!(
        relays_resent >= nacked * 0.5,
        "the relays resent {relays_resent} of {nacked}: {stdout}"
    );
    assert_eq!(origin_resent, 0.0, "{stdout}");
    assert_eq!(n("publishers.retransmissions"), 0.0, "{stdout}");
    assert!(
        origin_asked < nacked / 3.0,
        "the origin was asked for {origin_asked} of {nacked} NACKed packets: {stdout}"
    );

    // Keyframe requests are coalesced on the way up: at most one per stream per 300 ms
    // reaches the presenter, however many viewers and relays ask.
    // (Leg counters cover relay links too: a link end is a leg.)
    let requests_at_relays: f64 = relays
        .iter()
        .map(|f| counter(f, "fanout_leg_keyframe_requests_received_total"))
        .sum();
    let origin_sent = counter(origin, "fanout_leg_keyframe_requests_sent_total");
    let streams = 4.0; // three camera encodings and the screen share
    let seconds = 60.0; // the run, joins and drain included, generously
    assert!(
        origin_sent <= streams * seconds / 0.3,
        "{origin_sent} keyframe requests to the presenter: {stdout}"
    );
    assert!(
        n("publishers.keyframes_requested") <= origin_sent,
        "{stdout}"
    );
    assert!(
        requests_at_relays > 2.0 * origin_sent,
        "{requests_at_relays} requests at the relays, {origin_sent} to the presenter: {stdout}"
    );

    // Layers per viewer, chosen by each relay from each viewer's estimate: those
    // announcing 1 Mbit/s get the highest encoding, those announcing 20 kbit/s never do
    // (they get the lowest encoding, or the middle one at its base temporal layer, which
    // costs about as little: the ladder is (encoding, temporal layer)), and get far fewer
    // camera packets. Viewers moved by the relay kill started over at the top on their
    // new relay before their first estimate: left out.
    let viewers: Vec<&Value> = participants
        .iter()
        .filter(|p| p["role"] == "viewer")
        .collect();
    assert_eq!(viewers.len(), 2000);
    let staying = |kbps: u64| {
        viewers
            .iter()
            .filter(move |v| v["moves"] == 0 && v["remb_kbps"].as_u64() == Some(kbps))
    };
    for v in staying(1000) {
        assert_eq!(main_layer(v), 2, "{v:#}");
    }
    for v in staying(20) {
        assert!(main_layer(v) < 2, "{v:#}");
    }
    let camera_packets = |kbps: u64| {
        let packets: Vec<f64> = staying(kbps)
            .map(|v| {
                let by_encoding = v["receiver"]["camera_packets_by_encoding"].as_array();
                by_encoding.map_or(0.0, |e| e.iter().filter_map(Value::as_f64).sum())
            })
            .collect();
        packets.iter().sum::<f64>() / packets.len().max(1) as f64
    };
    assert!(
        camera_packets(20) < camera_packets(1000) / 2.0,
        "camera packets per viewer: {} at 20 kbit/s, {} at 1 Mbit/s",
        camera_packets(20),
        camera_packets(1000)
    );
    assert!(
        staying(150).any(|v| main_layer(v) == 1),
        "some 150 kbit/s viewers get the middle layer"
    );

    // The leaf relay killed at 12 s: its viewers were moved and resumed within 5 s of
    // its lease expiring (3 s); nobody else saw a gap.
    let failure = &report["failures"][0];
    let affected = failure["affected"].as_f64().unwrap();
    assert!(affected >= 100.0, "{stdout}");
    assert_eq!(failure["recovered"].as_f64(), Some(affected), "{stdout}");
    assert!(
        failure["recovery_ms"]["max"].as_f64().unwrap() <= 3000.0 + 5000.0,
        "{stdout}"
    );
    let moved = viewers.iter().filter(|v| v["moves"] == 1).count();
    assert_eq!(moved as f64, affected, "{stdout}");
    for v in viewers.iter().filter(|v| v["moves"] == 0) {
        let gap_ms = v["receiver"]["longest_gap_us"].as_f64().unwrap() / 1e3;
        assert!(gap_ms < 1500.0, "a viewer of another relay: {v:#}");
    }
}

/// One run over three load-generator processes (`--processes 3`, as the descriptor limit
/// forces for 50,000 viewers): the parent plays a third of the participants and starts
/// two children for the rest; the report is still one run's.
#[test]
fn a_webinar_played_by_three_processes_is_one_run() {
    let scenario = r#"
        name = "webinar-three-processes"
        duration_s = 15
        seed = 3

        [join]
        rate_per_s = 100
        concurrency = 32

        [[webinars]]
        presenters = 1
        presenter_region = "us-east"
        regions = { us-east = 30, eu-west = 30 }

        [local]
        forwarders = 4
        max_viewers_per_relay = 100
    "#;
    let Run {
        code,
        report,
        stdout,
        participants,
    } = loadgen(scenario, &["--processes", "3"]).unwrap();
    assert_eq!(code, 0, "{stdout}");
    let n = |path: &str| number(&report, path);
    assert_eq!(n("participants"), 61.0, "{stdout}");
    assert_eq!(n("joined"), 61.0, "{stdout}");
    assert_eq!(n("participants_without_media"), 0.0, "{stdout}");
    assert_eq!(n("invalid"), 0.0, "{stdout}");
    assert!(n("latency_samples") > 10_000.0, "{stdout}");
    assert_eq!(n("processes"), 3.0, "{stdout}");
    assert!(
        stdout.contains("played by 3 load-generator processes"),
        "{stdout}"
    );
    assert_eq!(participants.len(), 61);
    let mut by_part = [0usize; 3];
    for (index, p) in participants.iter().enumerate() {
        let part = p["part"].as_u64().unwrap() as usize;
        assert_eq!(part, index % 3, "{p:#}");
        by_part[part] += 1;
        assert!(p["join_ms"].is_number(), "{p:#}");
        if p["role"] == "viewer" {
            assert!(p["receiver"]["packets"].as_u64().unwrap() > 100, "{p:#}");
        }
    }
    assert_eq!(by_part, [21, 20, 20]);
}
