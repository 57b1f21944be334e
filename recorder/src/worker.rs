//! The stitch worker (`fanout-recorder stitch --control URL`): claims stitching jobs from
//! the control plane's `Recordings` service, runs them ([`crate::job`]), reports progress
//! (which renews the claim) and the outcome. Any number of workers may run; the control
//! plane gives each job to one claim at a time and retries failed ones.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tracing::{info, warn};

use fanout_forwarder::exporter::ProcessMetrics;

use crate::job;
use crate::stitch::StitchOptions;
use crate::store::RecordingStore;

/// Generated client of `fanout.control.v1` (control/proto/): only `Recordings` is used.
#[allow(clippy::all, missing_debug_implementations, unreachable_pub, dead_code)]
pub mod pb {
    tonic::include_proto!("fanout.control.v1");
}

/// How often progress is reported (and the claim renewed) while a job runs.
const REPORT_INTERVAL: Duration = Duration::from_secs(2);

/// What a worker needs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// `http(s)://host:port` of `fanout-control`.
    pub control: String,
    /// The operator credential (`Bearer`).
    pub credential: String,
    /// This worker's name, in the control plane's views and logs.
    pub name: String,
    /// How long to wait before asking again when no job is due.
    pub poll_interval: Duration,
    /// Where jobs fetch chunks and write their output before upload; each job gets a
    /// fresh directory inside, removed afterwards.
    pub scratch: PathBuf,
    pub options: StitchOptions,
}

/// Counters of a worker, for its metrics.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub claimed: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub claims_lost: AtomicU64,
}

impl ProcessMetrics for WorkerStats {
    fn write_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        for (name, help, value) in [
            (
                "fanout_stitch_jobs_claimed_total",
                "Stitching jobs claimed",
                &self.claimed,
            ),
            (
                "fanout_stitch_jobs_succeeded_total",
                "Stitching jobs whose file was uploaded",
                &self.succeeded,
            ),
            (
                "fanout_stitch_jobs_failed_total",
                "Stitching attempts that failed (the control plane retries them)",
                &self.failed,
            ),
            (
                "fanout_stitch_claims_lost_total",
                "Jobs whose claim expired while running (another worker took them)",
                &self.claims_lost,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
    }
}

type Client = pb::recordings_client::RecordingsClient<Channel>;

fn authorized<T>(credential: &str, message: T) -> Result<Request<T>> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {credential}"))
            .context("the credential is not valid in a header")?,
    );
    Ok(request)
}

/// Run jobs until `stop` is set (checked between jobs and while idle).
pub async fn run(
    config: WorkerConfig,
    store: RecordingStore,
    stats: Arc<WorkerStats>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let channel = Channel::from_shared(config.control.clone())
        .context("the control plane URL")?
        .connect_lazy();
    let mut client = Client::new(channel);
    info!(control = %config.control, worker = %config.name, "stitch worker started");
    while !stop.load(Ordering::Relaxed) {
        let claimed = client
            .claim_stitch_job(authorized(
                &config.credential,
                pb::ClaimStitchJobRequest {
                    worker: config.name.clone(),
                },
            )?)
            .await;
        let job = match claimed {
            Ok(response) => response.into_inner().job,
            Err(status) => {
                warn!(code = ?status.code(), message = status.message(), "cannot claim a job");
                None
            }
        };
        let Some(job) = job else {
            idle(&stop, config.poll_interval).await;
            continue;
        };
        stats.claimed.fetch_add(1, Ordering::Relaxed);
        run_one(&mut client, &config, &store, &stats, job).await?;
    }
    info!("stitch worker stopped");
    Ok(())
}

/// Wait `interval`, waking early when stopped.
async fn idle(stop: &AtomicBool, interval: Duration) {
    let deadline = Instant::now() + interval;
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100).min(interval)).await;
    }
}

async fn run_one(
    client: &mut Client,
    config: &WorkerConfig,
    store: &RecordingStore,
    stats: &WorkerStats,
    job: pb::StitchJob,
) -> Result<()> {
    info!(recording = %job.recording_id, attempt = job.attempt, "stitching");
    let scratch = config
        .scratch
        .join(format!("{}-{}", job.recording_id, job.claim));
    tokio::fs::create_dir_all(&scratch)
        .await
        .with_context(|| format!("creating {}", scratch.display()))?;
    // Progress goes to the control plane every REPORT_INTERVAL from a task of its own,
    // so a slow report never slows the job; a lost claim is noticed there.
    let (progress_tx, progress_rx) = tokio::sync::watch::channel(0.0f64);
    let lost = Arc::new(AtomicBool::new(false));
    let reporter = tokio::spawn(report_progress(
        client.clone(),
        config.credential.clone(),
        job.clone(),
        progress_rx,
        lost.clone(),
    ));
    let outcome = job::run(
        store,
        &job.recording_id,
        &config.options,
        &scratch,
        &mut |fraction| {
            let _ = progress_tx.send(fraction);
        },
    )
    .await;
    drop(progress_tx);
    let _ = reporter.await;
    let _ = tokio::fs::remove_dir_all(&scratch).await;
    if lost.load(Ordering::Relaxed) {
        // Another worker has the job now: what this one did is not reported.
        stats.claims_lost.fetch_add(1, Ordering::Relaxed);
        warn!(recording = %job.recording_id, "the claim was lost; the result is not reported");
        return Ok(());
    }
    let request = match &outcome {
        Ok(done) => {
            stats.succeeded.fetch_add(1, Ordering::Relaxed);
            pb::CompleteStitchJobRequest {
                recording_id: job.recording_id.clone(),
                claim: job.claim.clone(),
                error: String::new(),
                output_key: crate::store::output_key(&job.recording_id),
                output_bytes: done.output_bytes,
                duration_ms: done.report.duration_micros / 1000,
            }
        }
        Err(e) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            warn!(recording = %job.recording_id, error = %format!("{e:#}"), "stitching failed");
            pb::CompleteStitchJobRequest {
                recording_id: job.recording_id.clone(),
                claim: job.claim.clone(),
                error: format!("{e:#}"),
                ..Default::default()
            }
        }
    };
    match client
        .complete_stitch_job(authorized(&config.credential, request)?)
        .await
    {
        Ok(response) => info!(
            recording = %job.recording_id,
            state = ?response.into_inner().state(),
            "job reported"
        ),
        Err(status) => warn!(
            recording = %job.recording_id,
            code = ?status.code(),
            message = status.message(),
            "the job's outcome was not accepted"
        ),
    }
    Ok(())
}

async fn report_progress(
    mut client: Client,
    credential: String,
    job: pb::StitchJob,
    mut progress: tokio::sync::watch::Receiver<f64>,
    lost: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(REPORT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Changes only mark the value; the tick sends the latest, at most once per
        // interval. The job dropping its sender ends the loop.
        tokio::select! {
            _ = tick.tick() => {}
            changed = progress.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        }
        let fraction = *progress.borrow();
        let Ok(request) = authorized(
            &credential,
            pb::ReportStitchProgressRequest {
                recording_id: job.recording_id.clone(),
                claim: job.claim.clone(),
                progress: fraction,
            },
        ) else {
            return;
        };
        match client.report_stitch_progress(request).await {
            Ok(_) => {}
            Err(status) if status.code() == Code::FailedPrecondition => {
                lost.store(true, Ordering::Relaxed);
                return;
            }
            Err(status) => {
                warn!(code = ?status.code(), message = status.message(), "progress not reported");
            }
        }
    }
}
