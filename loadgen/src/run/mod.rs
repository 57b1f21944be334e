//! A run: meetings created and participants joined through the control plane, media
//! played by the [`engine`](crate::engine), forwarder moves followed, churn and failures
//! injected, and everything measured gathered into [`RunResults`].
//!
//! Time line: participants join at the scenario's rate (hosts and presenters first, then
//! everyone else round-robin over the meetings, as an event's audience arrives); the
//! *steady state* begins when the last join returned, and lasts `duration_s`; one-way
//! latency is measured over it, after `warmup_s` (joins have their own figures). Failure
//! times (`at_s`) count from the start of the steady state. At the end, publishers fall
//! silent first and receivers get a moment to repair what is still in flight, so the
//! end of the run is not counted as loss.
//!
//! A run may be spread over several processes ([`parts`]): each plays a share of the
//! participants, and the one the user started merges what the others measured.
//!
//! Recorded meetings ([`crate::recording`]): the process that created the meetings starts
//! their recordings right after creating them (before anyone joins, so the recordings
//! hold everything), and stops them once every part has finished, after the media
//! drained; with a local deployment it then waits for the recorders to store their last
//! chunks and reads what both sides counted.

pub mod parts;
mod roster;
pub(crate) mod setup;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, Mutex as AsyncMutex, Semaphore};
use tracing::{debug, info, warn};

use crate::control::{ControlClient, JoinRequest, MeetingNews, NewMeeting};
use crate::engine::{Clock, Engine, ParticipantKey};
use crate::forwarder_metrics::ForwarderSnapshot;
use crate::local::LocalDeployment;
use crate::recording::{self, ForwarderTap, RecordingReport, StartedRecording};
use crate::report::{FailureResult, ParticipantResult, Progress, RunResults};
use crate::scenario::{Expanded, FailureSpec, FailureTarget, Kill, Role, Scenario};
use crate::Micros;

use parts::{Children, Launcher, Part, Shared};
use roster::Roster;

/// Where the run goes.
#[derive(Debug)]
pub enum Target {
    /// A deployment this run started (`--local`); failures can be injected into it.
    Local(LocalDeployment),
    /// An existing deployment's control plane(s).
    Remote {
        control_urls: Vec<String>,
        operator_token: String,
    },
}

/// How the run behaves, beyond the scenario.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Engine worker threads.
    pub threads: usize,
    /// Print a progress line this often (none: quiet).
    pub progress_every: Option<Duration>,
    /// Serve Prometheus metrics of the run here.
    pub metrics: Option<std::net::SocketAddr>,
}

/// Which processes play the run (`run --processes`; see [`parts`]).
#[derive(Debug, Clone)]
pub enum Processes {
    /// This one alone.
    One,
    /// This one plays part 0 and starts children for the other `count - 1` parts.
    Parent { count: usize, launcher: Launcher },
    /// A child started by a parent: plays `part` in the parent's meetings.
    Child { part: Part, shared: Shared },
}

/// How long a parent waits for its children after its own part ended, at least (and
/// half as long again as they have run: a child whose joins lagged ends later, and one
/// killed loses its whole part).
const CHILDREN_GRACE: Duration = Duration::from_secs(60);

/// How long publishers stay silent before the receivers are read at the end: long enough
/// for the last retransmissions (NACK retries span about a second).
const DRAIN: Duration = Duration::from_millis(1500);

/// How long local recorders get, after the recordings stopped, to close and store their
/// last chunks: a chunk closes on the forwarder's End message or at its deadline (4 s by
/// default), and a local-directory upload takes milliseconds.
const RECORDERS_SETTLE: Duration = Duration::from_secs(20);

/// Run `scenario` against `target`. The target is handed back (a local deployment is torn
/// down by its owner).
pub async fn run(
    scenario: &Scenario,
    target: Target,
    options: &RunOptions,
) -> Result<(RunResults, Target)> {
    run_spread(scenario, target, options, Processes::One).await
}

/// [`run`], spread over `processes`. A child's results hold its own part's participants
/// only; a parent's hold everyone's.
pub async fn run_spread(
    scenario: &Scenario,
    target: Target,
    options: &RunOptions,
    processes: Processes,
) -> Result<(RunResults, Target)> {
    let expanded = scenario.expand();
    let part = match &processes {
        Processes::One => Part::WHOLE,
        Processes::Parent { count, .. } => Part {
            index: 0,
            count: *count,
        },
        Processes::Child { part, .. } => *part,
    };
    if !scenario.failures.is_empty() && part.count > 1 {
        bail!(
            "[[failures]] need a single load-generator process (--processes 1): who a \
             failure hit is known only to the process playing them"
        );
    }
    let (control_urls, operator_token) = match &target {
        Target::Local(deployment) => (
            deployment.control_urls.clone(),
            deployment.operator_token.clone(),
        ),
        Target::Remote {
            control_urls,
            operator_token,
        } => (control_urls.clone(), operator_token.clone()),
    };
    if !scenario.failures.is_empty() && !matches!(target, Target::Local(_)) {
        bail!(
            "failure injection needs --local (this run cannot kill another deployment's processes)"
        );
    }
    let mut clients = Vec::new();
    for url in &control_urls {
        clients.push(ControlClient::connect(url, &operator_token).await?);
    }
    let clients = Arc::new(Clients {
        all: clients,
        next: AtomicUsize::new(0),
    });
    let profile = scenario.srtp_profile;
    let (meeting_ids, host_keys) = match &processes {
        Processes::Child { shared, .. } => {
            if shared.meeting_ids.len() != expanded.meetings.len()
                || shared.host_keys.len() != expanded.meetings.len()
            {
                bail!(
                    "the parent process created {} meetings; the scenario has {}",
                    shared.meeting_ids.len(),
                    expanded.meetings.len()
                );
            }
            (shared.meeting_ids.clone(), shared.host_keys.clone())
        }
        _ => {
            let run_id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
            let meeting_ids: Vec<String> = expanded
                .meetings
                .iter()
                .map(|m| format!("{}-{run_id}-{}", id_safe(&scenario.name), m.id))
                .collect();
            let host_keys: Vec<String> = expanded
                .meetings
                .iter()
                .map(|_| format!("{:032x}", rand::random::<u128>()))
                .collect();
            (meeting_ids, host_keys)
        }
    };

    // Meetings first, concurrently (a child's parent made them).
    let started = Instant::now();
    let mut creations = tokio::task::JoinSet::new();
    let create: &[crate::scenario::PlannedMeeting] = match &processes {
        Processes::Child { .. } => &[],
        _ => &expanded.meetings,
    };
    for (index, meeting) in create.iter().enumerate() {
        let client = clients.pick();
        let new = NewMeeting {
            id: meeting_ids[index].clone(),
            webinar: meeting.webinar,
            title: format!("{} {}", scenario.name, meeting.id),
            passcode: meeting.passcode.clone(),
            // Only a webinar's stage needs one (it is hashed like a password: costly).
            host_key: meeting.webinar.then(|| host_keys[index].clone()),
            // Room for a few rejoins whose leave has not landed yet, within what the
            // control plane allows a room of this kind (a 1,000-participant meeting is
            // exactly at the meeting cap).
            max_participants: (meeting.participants.len() as u32 + 16).min(if meeting.webinar {
                fanout_control::domain::MAX_WEBINAR_PARTICIPANTS
            } else {
                fanout_control::domain::MAX_MEETING_PARTICIPANTS
            }),
        };
        creations.spawn(async move { client.create_meeting(&new).await });
        while creations.len() >= 32 {
            if let Some(created) = creations.join_next().await {
                created.context("meeting creation task")??;
            }
        }
    }
    while let Some(created) = creations.join_next().await {
        created.context("meeting creation task")??;
    }
    if !create.is_empty() {
        info!(
            meetings = expanded.meetings.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "meetings created"
        );
    }
    // Recordings start before the joins, so that they hold every packet; the scenario
    // asked for them, so a recording that cannot start ends the run.
    let mut recordings = Vec::new();
    for (index, meeting) in create.iter().enumerate() {
        if !meeting.record {
            continue;
        }
        let id = &meeting_ids[index];
        let recording_id = clients.pick().start_recording(id).await?;
        info!(meeting = %id, recording = %recording_id, "recording started");
        recordings.push(StartedRecording {
            meeting: id.clone(),
            recording_id,
            stored_chunks: None,
            stored_bytes: None,
        });
    }
    let region_sockets = match (&processes, &target) {
        (Processes::Child { shared, .. }, _) if !shared.namespaces.is_empty() => Some(Arc::new(
            crate::netns::RegionSockets::enter(&shared.namespaces)?,
        )),
        (_, Target::Local(deployment)) => deployment.region_sockets(),
        _ => None,
    };
    // One time base for all processes of the run.
    let clock = match &processes {
        Processes::Child { shared, .. } => Clock::from_monotonic_epoch_ns(shared.clock_epoch_ns),
        _ => Clock::start(),
    };
    // The other parts start now, into the meetings just made.
    let children = match &processes {
        Processes::Parent { count, launcher } => {
            let shared = Shared {
                clock_epoch_ns: clock.monotonic_epoch_ns(),
                meeting_ids: meeting_ids.clone(),
                host_keys: host_keys.clone(),
                namespaces: region_sockets
                    .as_ref()
                    .map(|s| s.namespaces())
                    .unwrap_or_default(),
            };
            Some(Children::spawn(
                launcher,
                *count,
                &shared,
                &control_urls,
                &operator_token,
            )?)
        }
        _ => None,
    };
    let children_started = Instant::now();

    let engine = Arc::new(Engine::start(options.threads, clock)?);
    let participants = flatten(&expanded);
    let roster = Arc::new(Roster::new(participants.len()));
    let context = Arc::new(RunContext {
        scenario: scenario.clone(),
        expanded,
        participants,
        meeting_ids,
        host_keys,
        profile,
        engine: Arc::clone(&engine),
        roster: Arc::clone(&roster),
        clients: Arc::clone(&clients),
        clock,
        forwarders: match &target {
            Target::Local(deployment) => deployment.forwarders.len(),
            Target::Remote { .. } => 0,
        },
        region_sockets,
        part,
        joined: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
    });

    // Watch every meeting, to follow forwarder moves.
    let (news_tx, news_rx) = mpsc::unbounded_channel();
    let mut background = tokio::task::JoinSet::new();
    for id in &context.meeting_ids {
        let client = clients.pick();
        let news = news_tx.clone();
        let id = id.clone();
        background.spawn(async move { client.watch(id, news).await });
    }
    drop(news_tx);
    background.spawn(follow_moves(Arc::clone(&context), news_rx));
    if let Some(every) = options.progress_every {
        background.spawn(show_progress(Arc::clone(&context), every));
    }
    let _metrics = match options.metrics {
        Some(addr) => {
            let (_, task) = crate::metrics::serve(addr, metrics_renderer(&context)).await?;
            Some(AbortOnDrop(task))
        }
        None => None,
    };

    // Joins, at the scenario's rate and concurrency. SIGINT or SIGTERM cut the run short
    // at any point; what was measured is still reported.
    let mut interrupted = false;
    tokio::select! {
        () = join_everyone(&context) => {}
        () = shutdown_signal() => {
            warn!("interrupted while joining: ending the run");
            interrupted = true;
        }
    }
    let steady_from = clock.now();
    let joined = context.joined.load(Ordering::Relaxed);
    info!(
        joined,
        planned = context.planned(),
        elapsed_s = started.elapsed().as_secs_f64(),
        "joins done; steady state"
    );

    // The deployment's processes whose CPU the report gives, over the measured window
    // (after the warm-up).
    let (forwarder_pids, recorder_pids) = match &target {
        Target::Local(deployment) => (
            deployment.forwarder_processes(),
            deployment.recorder_processes(),
        ),
        Target::Remote { .. } => (Vec::new(), Vec::new()),
    };
    let mut cpu_from = CpuSample::take(&forwarder_pids, &recorder_pids);

    // Steady state: churn and failures run beside it.
    let target = Arc::new(AsyncMutex::new(target));
    let mut injected = tokio::task::JoinSet::new();
    for failure in &scenario.failures {
        injected.spawn(inject_failure(
            Arc::clone(&context),
            Arc::clone(&target),
            failure.clone(),
            steady_from,
        ));
    }
    if scenario
        .churn
        .leave_rejoin_per_min
        .per_minute(context.participants.len())
        > 0.0
    {
        background.spawn(churn(Arc::clone(&context)));
    }
    if !interrupted {
        let warmup = Duration::from_secs_f64(scenario.warmup_s());
        let measured = Duration::from_secs_f64(scenario.duration_s - scenario.warmup_s());
        let steady = async {
            tokio::time::sleep(warmup).await;
            if let Err(e) = engine.reset_latency() {
                warn!("{e:#}");
            }
            cpu_from = CpuSample::take(&forwarder_pids, &recorder_pids);
            tokio::time::sleep(measured).await;
        };
        tokio::select! {
            () = steady => {}
            () = shutdown_signal() => {
                warn!("interrupted: ending the run early");
                interrupted = true;
            }
        }
    }
    if interrupted {
        if let Some(children) = &children {
            children.terminate();
        }
    }

    // The end: stop churn and failures, let retransmissions settle, collect.
    context.stopping.store(true, Ordering::Relaxed);
    injected.abort_all();
    let mut failures = Vec::new();
    while let Some(done) = injected.join_next().await {
        match done {
            Ok(Ok(failure)) => failures.push(failure),
            Ok(Err(e)) => warn!("failure injection failed: {e:#}"),
            Err(e) if e.is_cancelled() => {}
            Err(e) => warn!("failure injection task: {e}"),
        }
    }
    let ended_at = clock.now();
    let cpu = CpuSample::take(&forwarder_pids, &recorder_pids).cores_since(&cpu_from);
    // Before the meetings end: a relay link's counters go with the link.
    let mut deployment = match &*target.lock().await {
        Target::Local(deployment) => deployment.snapshots().await,
        Target::Remote { .. } => Vec::new(),
    };
    for snapshot in &mut deployment {
        snapshot.cpu_cores = cpu.forwarders.get(&snapshot.id).copied();
    }
    engine.stop_publishing()?;
    tokio::time::sleep(DRAIN).await;
    background.shutdown().await;
    let measured = engine.finish().await?;
    {
        let mut roster = roster.lock();
        for outcome in &measured.participants {
            roster.row(outcome.key).settle(outcome);
        }
    }
    // The other parts end about when this one does; the meetings stay until they have.
    let handed_back = match children {
        Some(children) => {
            let timeout = if interrupted {
                CHILDREN_GRACE
            } else {
                CHILDREN_GRACE + children_started.elapsed() / 2
            };
            info!(
                processes = part.count,
                "waiting for the other load-generator processes"
            );
            children.wait(timeout).await
        }
        None => Vec::new(),
    };
    // Every part is done sending: the recordings can stop (before the meetings end,
    // which would stop them too, but without saying so to this run).
    let recording = if recordings.is_empty() {
        None
    } else {
        stop_recordings(&context, &recordings).await;
        let target = target.lock().await;
        Some(match &*target {
            Target::Local(deployment) => recording_figures(deployment, recordings, &cpu).await,
            Target::Remote { .. } => RecordingReport::new(recordings, None, Vec::new(), Vec::new()),
        })
    };
    if !matches!(processes, Processes::Child { .. }) {
        end_meetings(&context).await;
    }

    let failures = failures.into_iter().map(|f| f.result(&context)).collect();
    let mut results = collect(&context, measured.latency, failures, steady_from, ended_at);
    results.deployment = deployment;
    results.recording = recording;
    for (part, handed) in handed_back {
        match handed.and_then(|handed| parts::merge(&mut results, handed)) {
            Ok(()) => {}
            Err(e) => parts::lost(&mut results, part, &format!("{e:#}")),
        }
    }
    let target = Arc::try_unwrap(target)
        .map_err(|_| anyhow::anyhow!("the deployment is still shared at the end of the run"))?
        .into_inner();
    Ok((results, target))
}

/// `name` reduced to what a meeting id may hold.
fn id_safe(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    if safe.is_empty() {
        "run".into()
    } else {
        safe
    }
}

/// Whether SIGINT or SIGTERM came, once [`listen_for_shutdown`] listens.
static SHUTDOWN: std::sync::OnceLock<tokio::sync::watch::Receiver<bool>> =
    std::sync::OnceLock::new();

/// Listen for SIGINT and SIGTERM from now on, for the rest of the process, so that
/// [`shutdown_signal`] sees a signal that came before it was awaited: between the start of
/// a local deployment and the run, between the joins and the steady state, or while the
/// region networks were being made (blocking). Without a listener, SIGINT and SIGTERM kill
/// the process and nothing it started is removed. Call inside the runtime.
pub fn listen_for_shutdown() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let (signalled, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            signalled.send_replace(true);
        }
    });
    let _ = SHUTDOWN.set(shutdown);
    Ok(())
}

/// Whether SIGINT or SIGTERM came since [`listen_for_shutdown`] (false before it listens).
pub fn shutdown_requested() -> bool {
    SHUTDOWN.get().is_some_and(|shutdown| *shutdown.borrow())
}

/// SIGINT or SIGTERM (once one came, at once).
pub async fn shutdown_signal() {
    if let Some(shutdown) = SHUTDOWN.get() {
        let mut shutdown = shutdown.clone();
        if shutdown.wait_for(|signalled| *signalled).await.is_err() {
            std::future::pending::<()>().await;
        }
        return;
    }
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).ok();
    let term = async {
        match &mut terminate {
            Some(term) => {
                term.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// The control instances, used round-robin (a killed one is skipped by retrying the next).
struct Clients {
    all: Vec<ControlClient>,
    next: AtomicUsize,
}

impl Clients {
    fn pick(&self) -> ControlClient {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.all.len();
        self.all[index].clone()
    }
}

/// One planned participant, flattened: its meeting and its plan.
#[derive(Debug, Clone)]
struct Seat {
    meeting: usize,
    /// Its index in the meeting's plan.
    index: usize,
    participant: crate::scenario::PlannedParticipant,
}

impl Seat {
    /// Hosts join with the meeting's host key: a webinar's presenters.
    fn is_host(&self) -> bool {
        self.participant.role == Role::Presenter
    }
}

/// Everything the run's tasks share.
struct RunContext {
    scenario: Scenario,
    expanded: Expanded,
    participants: Vec<Seat>,
    meeting_ids: Vec<String>,
    host_keys: Vec<String>,
    profile: fanout_forwarder::srtp::SrtpProfile,
    engine: Arc<Engine>,
    roster: Arc<Roster>,
    clients: Arc<Clients>,
    clock: Clock,
    /// Forwarders of a local deployment (0: unknown, a remote one).
    forwarders: usize,
    /// Where participants' sockets are made when each region has its own network
    /// namespace (`[local] netns`); otherwise the engine binds them here.
    region_sockets: Option<Arc<crate::netns::RegionSockets>>,
    /// The participants this process plays.
    part: Part,
    joined: AtomicUsize,
    stopping: AtomicBool,
}

impl RunContext {
    /// Participants this process plays.
    fn planned(&self) -> usize {
        self.part.size(self.participants.len())
    }
}

/// Participants in join order: hosts and presenters first (a webinar's stage is set
/// before its audience arrives), then everyone else round-robin over the meetings.
fn flatten(expanded: &Expanded) -> Vec<Seat> {
    let mut stage = Vec::new();
    let mut queues: Vec<std::collections::VecDeque<Seat>> = Vec::new();
    for (meeting, planned) in expanded.meetings.iter().enumerate() {
        let mut queue = std::collections::VecDeque::new();
        for (index, participant) in planned.participants.iter().enumerate() {
            let seat = Seat {
                meeting,
                index,
                participant: participant.clone(),
            };
            if seat.is_host() {
                stage.push(seat);
            } else {
                queue.push_back(seat);
            }
        }
        queues.push(queue);
    }
    let mut order = stage;
    loop {
        let before = order.len();
        for queue in &mut queues {
            if let Some(seat) = queue.pop_front() {
                order.push(seat);
            }
        }
        if order.len() == before {
            return order;
        }
    }
}

/// Join this process's participants; each of a run's processes joins at its share of the
/// scenario's rate and concurrency, so that together they keep to them.
async fn join_everyone(context: &Arc<RunContext>) {
    let join = &context.scenario.join;
    let processes = context.part.count as f64;
    let interval = Duration::from_secs_f64(processes / join.rate_per_s.max(0.001));
    let concurrency = (join.concurrency as usize / context.part.count).max(1);
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut next = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for index in (0..context.participants.len()).filter(|&i| context.part.plays(i)) {
        tokio::time::sleep_until(next).await;
        next += interval;
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        if context.participants[index].is_host() {
            // The stage joins first and alone: the first join places a webinar's origin
            // near the joiner, and a viewer's join racing the presenter's would put it in
            // the viewer's region.
            join_recorded(context, index).await;
            drop(permit);
            continue;
        }
        let context = Arc::clone(context);
        tasks.spawn(async move {
            join_recorded(&context, index).await;
            drop(permit);
        });
        // Reap finished tasks as we go so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// [`join_one`], its failure recorded in the participant's row.
async fn join_recorded(context: &RunContext, index: usize) {
    let key = ParticipantKey(index as u64);
    if let Err(e) = join_one(context, key).await {
        debug!(participant = index, "join failed: {e:#}");
        context.roster.lock().row(key).join_error = Some(format!("{e:#}"));
    }
}

/// Join one participant through the control plane and start its media. A control
/// instance that is down is skipped for the next one.
async fn join_one(context: &RunContext, key: ParticipantKey) -> Result<()> {
    let seat = &context.participants[key.0 as usize];
    let meeting = &context.expanded.meetings[seat.meeting];
    let request = JoinRequest {
        meeting: context.meeting_ids[seat.meeting].clone(),
        display_name: seat.participant.name.clone(),
        region: seat.participant.region.clone(),
        passcode: meeting.passcode.clone(),
        host_key: seat
            .is_host()
            .then(|| context.host_keys[seat.meeting].clone()),
        profile: context.profile,
        audio: seat.participant.audio,
        camera: seat.participant.camera,
        screen: seat.participant.screen,
    };
    let mut last_error = None;
    for _ in 0..context.clients.all.len() {
        match context.clients.pick().join(&request).await {
            Ok(joined) => {
                let streams = meeting
                    .participants
                    .iter()
                    .enumerate()
                    .filter(|(index, _)| *index != seat.index)
                    .map(|(_, p)| {
                        usize::from(p.audio) + usize::from(p.camera) + usize::from(p.screen)
                    })
                    .sum();
                let mut setup = setup::participant(
                    &context.scenario,
                    &seat.participant,
                    streams,
                    key,
                    &joined,
                )?;
                match &context.region_sockets {
                    Some(sockets) => {
                        // In its own region's namespace, whichever region serves it.
                        let socket = sockets.bind(&seat.participant.region).await?;
                        setup.bind = socket.local_addr()?.ip();
                        context.engine.add_on(setup, socket)?;
                    }
                    None => {
                        context.engine.add(setup)?;
                    }
                }
                context.roster.lock().joined(key, joined);
                context.joined.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no control plane to join through")))
}

/// Follow FORWARDER_CHANGED: point the named participants (or, for an event naming
/// nobody, everyone on the meeting's stage) at their new forwarder.
async fn follow_moves(
    context: Arc<RunContext>,
    mut news: mpsc::UnboundedReceiver<(String, MeetingNews)>,
) {
    let meeting_index: HashMap<String, usize> = context
        .meeting_ids
        .iter()
        .enumerate()
        .map(|(index, id)| (id.clone(), index))
        .collect();
    while let Some((meeting, item)) = news.recv().await {
        let MeetingNews::ForwarderChanged {
            participant,
            forwarder_id,
            address,
        } = item
        else {
            if let MeetingNews::Ended(why) = item {
                debug!(%meeting, "watch ended: {why}");
            }
            continue;
        };
        let Some(&index) = meeting_index.get(&meeting) else {
            continue;
        };
        let now = context.clock.now();
        let keys: Vec<ParticipantKey> = {
            let roster = context.roster.lock();
            match &participant {
                Some(id) => roster
                    .by_participant_id
                    .get(id)
                    .copied()
                    .into_iter()
                    .collect(),
                None => (0..context.participants.len())
                    .map(|i| ParticipantKey(i as u64))
                    .filter(|key| {
                        let seat = &context.participants[key.0 as usize];
                        // A webinar's audience is on relays: a meeting-wide move concerns
                        // the stage only.
                        seat.meeting == index
                            && (!context.expanded.meetings[index].webinar || seat.is_host())
                    })
                    .collect(),
            }
        };
        let mut roster = context.roster.lock();
        for key in keys {
            let row = roster.row(key);
            let Some(joined) = row.joined.as_mut() else {
                continue;
            };
            joined.forwarder_id = forwarder_id.clone();
            joined.forwarder = address;
            row.moved_at = Some(now);
            row.forwarder = Some(forwarder_id.clone());
            row.moves += 1;
            if let Err(e) = context.engine.move_to(key, address) {
                warn!("cannot move a participant: {e:#}");
            }
        }
        info!(%meeting, forwarder = %forwarder_id, %address, "forwarder changed");
    }
}

/// Live progress on the terminal (stderr), one line at a time.
async fn show_progress(context: Arc<RunContext>, every: Duration) {
    let progress = Arc::clone(context.engine.progress());
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let line = Progress {
            elapsed_s: context.clock.now() as f64 / 1e6,
            joined: context.joined.load(Ordering::Relaxed),
            target: context.planned(),
            packets_out: progress.packets_out.load(Ordering::Relaxed),
            packets_in: progress.packets_in.load(Ordering::Relaxed),
            latency_p99_ms: progress.window_p99_us() as f64 / 1e3,
            loss: progress.loss(),
            rejected: progress.rejected.load(Ordering::Relaxed),
        }
        .line();
        eprintln!("{line}");
    }
}

/// The run's live figures in the Prometheus exposition format.
fn metrics_renderer(context: &Arc<RunContext>) -> crate::metrics::Render {
    use crate::metrics::sample;
    let context = Arc::clone(context);
    Arc::new(move || {
        let progress = context.engine.progress();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
        let mut out = String::new();
        sample(
            &mut out,
            "fanout_loadgen_participants_planned",
            "gauge",
            "Participants this process plays (all the scenario plans, in one process)",
            context.planned() as f64,
        );
        sample(
            &mut out,
            "fanout_loadgen_participants_joined",
            "gauge",
            "Participants joined now",
            context.joined.load(Ordering::Relaxed) as f64,
        );
        sample(
            &mut out,
            "fanout_loadgen_packets_sent_total",
            "counter",
            "Datagrams the participants sent",
            load(&progress.packets_out),
        );
        sample(
            &mut out,
            "fanout_loadgen_packets_received_total",
            "counter",
            "Media packets the participants received and authenticated",
            load(&progress.packets_in),
        );
        sample(
            &mut out,
            "fanout_loadgen_datagrams_rejected_total",
            "counter",
            "Datagrams that failed SRTP or came from a stranger",
            load(&progress.rejected),
        );
        sample(
            &mut out,
            "fanout_loadgen_latency_p99_seconds",
            "gauge",
            "One-way media latency p99 over the last second (worst worker)",
            progress.window_p99_us() as f64 / 1e6,
        );
        sample(
            &mut out,
            "fanout_loadgen_video_loss_before_rtx_ratio",
            "gauge",
            "Video loss before retransmission so far",
            progress.loss(),
        );
        out
    })
}

/// Aborts a task when dropped: the metrics server ends with the run.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Leave and rejoin: every `60 / leave_rejoin_per_min` seconds a random participant (not
/// a host: the stage stays) leaves, and rejoins `rejoin_after_s` later.
async fn churn(context: Arc<RunContext>) {
    let churn = &context.scenario.churn;
    // Each process churns its share.
    let every = Duration::from_secs_f64(
        60.0 * context.part.count as f64
            / churn
                .leave_rejoin_per_min
                .per_minute(context.participants.len()),
    );
    let away = Duration::from_secs_f64(churn.rejoin_after_s);
    let mut rng = StdRng::seed_from_u64(context.scenario.seed ^ 0xc4);
    let mut ticker = tokio::time::interval(every);
    // Owned here, so that the end of the run (which aborts this task) stops them too.
    let mut leaving = tokio::task::JoinSet::new();
    ticker.tick().await;
    loop {
        ticker.tick().await;
        while leaving.try_join_next().is_some() {}
        if context.stopping.load(Ordering::Relaxed) {
            return;
        }
        let candidates: Vec<ParticipantKey> = {
            let roster = context.roster.lock();
            roster
                .rows
                .iter()
                .enumerate()
                .filter(|(i, row)| row.joined.is_some() && !context.participants[*i].is_host())
                .map(|(i, _)| ParticipantKey(i as u64))
                .collect()
        };
        if candidates.is_empty() {
            continue;
        }
        let key = candidates[rng.gen_range(0..candidates.len())];
        let context = Arc::clone(&context);
        leaving.spawn(async move {
            if let Err(e) = leave_and_rejoin(&context, key, away).await {
                warn!(participant = key.0, "churn: {e:#}");
            }
        });
    }
}

async fn leave_and_rejoin(context: &RunContext, key: ParticipantKey, away: Duration) -> Result<()> {
    let Some(joined) = context.roster.lock().left(key) else {
        return Ok(());
    };
    if let Some(outcome) = context.engine.remove(key).await? {
        context.roster.lock().row(key).settle(&outcome);
    }
    context.joined.fetch_sub(1, Ordering::Relaxed);
    let meeting = &context.meeting_ids[context.participants[key.0 as usize].meeting];
    context
        .clients
        .pick()
        .leave(meeting, &joined.join_token)
        .await?;
    tokio::time::sleep(away).await;
    if context.stopping.load(Ordering::Relaxed) {
        return Ok(());
    }
    join_one(context, key).await
}

/// A failure that was injected, and whom it hit.
struct Injected {
    at: Micros,
    at_s: f64,
    what: String,
    affected: Vec<ParticipantKey>,
}

impl Injected {
    /// What the affected participants saw: the media gap around the failure and when
    /// media came back.
    fn result(&self, context: &RunContext) -> FailureResult {
        let roster = context.roster.lock();
        let mut gap_ms = Vec::new();
        let mut recovery_ms = Vec::new();
        let mut affected = 0;
        for key in &self.affected {
            if !expects_media(context, *key) {
                continue;
            }
            let row = &roster.rows[key.0 as usize];
            let Some(receiver) = &row.receiver else {
                continue;
            };
            if receiver.first_media_at.is_none_or(|first| first > self.at) {
                // It had no media before the failure: nothing to lose.
                continue;
            }
            affected += 1;
            // The gap this failure caused is the longest one that spans the failure time
            // (media may stop up to a packet interval before the kill is observed).
            let gap_end = receiver.longest_gap_from + receiver.longest_gap_us;
            let spans = receiver.longest_gap_from <= self.at + 1_000_000 && gap_end >= self.at;
            let recovered_at = if spans {
                gap_ms.push(receiver.longest_gap_us as f64 / 1e3);
                receiver
                    .last_media_at
                    .filter(|&last| last >= gap_end)
                    .map(|_| gap_end)
            } else {
                // Media never stopped for long around the failure.
                gap_ms.push(0.0);
                receiver
                    .last_media_at
                    .filter(|&last| last > self.at)
                    .map(|_| self.at)
            };
            if let Some(at) = recovered_at {
                recovery_ms.push(at.saturating_sub(self.at) as f64 / 1e3);
            }
        }
        FailureResult {
            at_s: self.at_s,
            what: self.what.clone(),
            affected,
            recovered: recovery_ms.len(),
            recovery_ms,
            gap_ms,
        }
    }
}

async fn inject_failure(
    context: Arc<RunContext>,
    target: Arc<AsyncMutex<Target>>,
    failure: FailureSpec,
    steady_from: Micros,
) -> Result<Injected> {
    let at = steady_from + (failure.at_s * 1e6) as Micros;
    let wait = at.saturating_sub(context.clock.now());
    tokio::time::sleep(Duration::from_micros(wait)).await;
    let mut target = target.lock().await;
    let Target::Local(deployment) = &mut *target else {
        bail!("failure injection needs a local deployment");
    };
    match failure.kill {
        Kill::Forwarder | Kill::Relay => {
            let id = match (&failure.target, failure.kill) {
                (Some(target), _) => resolve_forwarder(deployment, target)?,
                (None, Kill::Relay) => {
                    let leaves: Vec<String> = deployment
                        .snapshots()
                        .await
                        .into_iter()
                        .filter(ForwarderSnapshot::is_leaf_relay)
                        .map(|s| s.id)
                        .collect();
                    context
                        .roster
                        .lock()
                        .busiest_forwarder_of(|id| leaves.iter().any(|leaf| leaf == id))
                        .context("no forwarder is a leaf relay serving anyone")?
                }
                (None, _) => context
                    .roster
                    .lock()
                    .busiest_forwarder_of(|_| true)
                    .context("no forwarder serves anyone to kill")?,
            };
            let affected = context.roster.lock().on_forwarder(&id);
            let at = context.clock.now();
            deployment.kill_forwarder(&id).await?;
            info!(forwarder = %id, affected = affected.len(), "killed a forwarder");
            Ok(Injected {
                at,
                at_s: failure.at_s,
                what: format!("kill forwarder {id}"),
                affected,
            })
        }
        Kill::Control => {
            // Default: the last instance, which the forwarders do not use (they talk to
            // the first): joins fail over to the others, media must not notice.
            let index = match &failure.target {
                Some(FailureTarget::Index(index)) => *index,
                Some(FailureTarget::Id(id)) => {
                    bail!("a control instance is named by its index, not {id:?}")
                }
                None => deployment.control_urls.len().saturating_sub(1),
            };
            let at = context.clock.now();
            deployment.kill_control(index).await?;
            info!(control = index, "killed a control instance");
            // Media does not go through the control plane: everyone joined is watched for
            // a gap anyway.
            let affected = (0..context.participants.len())
                .map(|i| ParticipantKey(i as u64))
                .collect();
            Ok(Injected {
                at,
                at_s: failure.at_s,
                what: format!("kill control instance {index}"),
                affected,
            })
        }
    }
}

/// A forwarder named by id, or by its index in the deployment.
fn resolve_forwarder(deployment: &LocalDeployment, target: &FailureTarget) -> Result<String> {
    let found = match target {
        FailureTarget::Id(id) => deployment.forwarders.iter().find(|f| &f.id == id),
        FailureTarget::Index(index) => deployment.forwarders.get(*index),
    };
    found
        .map(|f| f.id.clone())
        .with_context(|| format!("no local forwarder {target:?}"))
}

/// Whether someone else in the participant's meeting publishes (a lone publisher
/// expects nothing).
fn expects_media(context: &RunContext, key: ParticipantKey) -> bool {
    let seat = &context.participants[key.0 as usize];
    context.expanded.meetings[seat.meeting].expects_media(seat.index)
}

/// Stop the run's recordings (best effort: a failure is logged, and the recording then
/// stops when its meeting ends).
async fn stop_recordings(context: &RunContext, recordings: &[StartedRecording]) {
    for started in recordings {
        match context
            .clients
            .pick()
            .stop_recording(&started.meeting)
            .await
        {
            Ok(()) => info!(
                meeting = %started.meeting,
                recording = %started.recording_id,
                "recording stopped"
            ),
            Err(e) => warn!("{e:#}"),
        }
    }
}

/// What a local deployment's recorders and forwarders counted of the recordings, once the
/// recorders have stored their last chunks, and what the store holds of each recording.
async fn recording_figures(
    deployment: &LocalDeployment,
    mut recordings: Vec<StartedRecording>,
    cpu: &CpuCores,
) -> RecordingReport {
    let mut recorders = deployment.settle_recorders(RECORDERS_SETTLE).await;
    for recorder in &mut recorders {
        recorder.cpu_cores = cpu.recorders.get(&recorder.forwarder).copied();
    }
    // Read again now that nothing is recorded any more: the counters are final.
    let forwarders = deployment
        .snapshots()
        .await
        .iter()
        .filter(|s| !s.killed)
        .map(ForwarderTap::from_snapshot)
        .collect();
    let store = deployment.recording_store();
    if let Some(store) = store {
        for started in &mut recordings {
            let (chunks, bytes) = recording::stored_chunks(store, &started.recording_id);
            started.stored_chunks = Some(chunks);
            started.stored_bytes = Some(bytes);
        }
    }
    RecordingReport::new(
        recordings,
        store.map(|s| s.display().to_string()),
        forwarders,
        recorders,
    )
}

/// CPU time of the deployment's processes at one moment.
/// The shortest window over which processes' CPU use is reported.
const MIN_CPU_WINDOW: Duration = Duration::from_secs(1);

struct CpuSample {
    at: Instant,
    forwarders: HashMap<String, f64>,
    recorders: HashMap<String, f64>,
}

/// Cores each process used between two samples.
#[derive(Debug, Default)]
struct CpuCores {
    forwarders: HashMap<String, f64>,
    recorders: HashMap<String, f64>,
}

impl CpuSample {
    fn take(forwarders: &[(String, u32)], recorders: &[(String, u32)]) -> CpuSample {
        let read = |processes: &[(String, u32)]| {
            processes
                .iter()
                .filter_map(|(id, pid)| Some((id.clone(), crate::local::cpu_seconds(*pid)?)))
                .collect()
        };
        CpuSample {
            at: Instant::now(),
            forwarders: read(forwarders),
            recorders: read(recorders),
        }
    }

    /// Cores used since `earlier`, for the processes read both times (a forwarder killed
    /// in between has no figure), and none at all over a window under
    /// [`MIN_CPU_WINDOW`]: the kernel counts CPU time in ticks (10 ms), so a run
    /// interrupted before its media began would show a process at thousands of percent.
    fn cores_since(&self, earlier: &CpuSample) -> CpuCores {
        let seconds = self.at.duration_since(earlier.at).as_secs_f64();
        let cores = |now: &HashMap<String, f64>, then: &HashMap<String, f64>| {
            if seconds < MIN_CPU_WINDOW.as_secs_f64() {
                return HashMap::new();
            }
            now.iter()
                .filter_map(|(id, cpu)| {
                    let before = then.get(id)?;
                    Some((
                        id.clone(),
                        ((cpu - before) / seconds * 1000.0).round() / 1000.0,
                    ))
                })
                .collect()
        };
        CpuCores {
            forwarders: cores(&self.forwarders, &earlier.forwarders),
            recorders: cores(&self.recorders, &earlier.recorders),
        }
    }
}

/// End every meeting the run created (best effort: the report does not depend on it).
async fn end_meetings(context: &Arc<RunContext>) {
    let mut tasks = tokio::task::JoinSet::new();
    for id in &context.meeting_ids {
        let client = context.clients.pick();
        let id = id.clone();
        tasks.spawn(async move {
            if let Err(e) = client.end_meeting(&id).await {
                debug!("{e:#}");
            }
        });
        while tasks.len() >= 32 {
            tasks.join_next().await;
        }
    }
    while tasks.join_next().await.is_some() {}
}

fn collect(
    context: &RunContext,
    latency: hdrhistogram::Histogram<u64>,
    failures: Vec<FailureResult>,
    steady_from: Micros,
    ended_at: Micros,
) -> RunResults {
    let mut roster = context.roster.lock();
    let participants = context
        .participants
        .iter()
        .enumerate()
        .map(|(index, seat)| {
            let key = ParticipantKey(index as u64);
            let expects_media = expects_media(context, key);
            let row = roster.row(key);
            ParticipantResult {
                name: seat.participant.name.clone(),
                meeting: context.meeting_ids[seat.meeting].clone(),
                region: seat.participant.region.clone(),
                role: seat.participant.role,
                join_ms: row.join_ms,
                join_error: row.join_error.take(),
                forwarder: row.forwarder.take(),
                remb_kbps: setup::remb_kbps(&context.scenario, key),
                expects_media,
                receiver: row.receiver.unwrap_or_default(),
                publisher: row.publisher,
                rejoins: row.rejoins,
                moves: row.moves,
                media_time_us: row.connected_us,
                part: context.part.index,
            }
        })
        .collect();
    RunResults {
        scenario: context.scenario.name.clone(),
        started_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .saturating_sub(ended_at / 1_000_000),
        duration_us: ended_at.saturating_sub(steady_from),
        participants,
        failures,
        latency,
        forwarders: context.forwarders,
        controls: context.clients.all.len(),
        deployment: Vec::new(),
        recording: None,
        processes: context.part.count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: Instant, forwarder_seconds: f64) -> CpuSample {
        CpuSample {
            at,
            forwarders: [("fwd".to_string(), forwarder_seconds)].into(),
            recorders: HashMap::new(),
        }
    }

    #[test]
    fn cpu_is_cores_over_the_window_and_nothing_over_a_window_too_short() {
        let start = Instant::now();
        let before = sample(start, 10.0);
        let after = sample(start + Duration::from_secs(4), 12.0);
        assert_eq!(after.cores_since(&before).forwarders["fwd"], 0.5);
        // An interrupted run: a tick of CPU over a few milliseconds is no figure.
        let interrupted = sample(start + Duration::from_millis(3), 10.01);
        assert!(interrupted.cores_since(&before).forwarders.is_empty());
    }
}
